"""What a DP exploration query returns (:class:`QueryResult`), and the one-line form of a query (:func:`parse_query`).

``room.query("histogram", "pixel_3", bins=[0, 4, 8, 16], epsilon=1)`` sends a
:class:`~fedjax_room.protocol.query_spec.QuerySpec`; each site answers with a discrete-Laplace-noised vector
(or, under secure aggregation, only their noised sum reaches the coordinator). The result holds the values per
site and summed (``total``), the standard deviation of the noise of each total entry (``noise_std``) and a
confidence interval for each (``ci``). Every number in it is a post-processing of the noised releases: nothing
here reads data. See ``docs/queries.md``.
"""

from __future__ import annotations

import html
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedjax_room.errors import ConfigError
from fedjax_room.protocol.query_spec import (
    KINDS,
    QuerySpec,
    ci_halfwidth,
    entry_halfwidth,
    finish,
    layout,
    noise_variance,
    quantile_ci,
)

__all__ = ["QueryResult", "parse_query"]


def _labels(spec: QuerySpec, classes: Sequence[str]) -> list[str]:
    kind = spec.kind
    if spec.keys is not None:
        return [str(k) for k in spec.keys]
    if kind == "count_by_label":
        return [str(c) for c in classes]
    if kind == "histogram":
        assert spec.bins is not None
        return [f"[{a:g}, {b:g})" for a, b in zip(spec.bins, spec.bins[1:], strict=False)]
    if kind == "missing":
        return ["missing", "present"]
    if kind == "quantiles":
        assert spec.quantiles is not None
        return [f"q{q:g}" for q in spec.quantiles]
    return [kind]


class QueryResult:
    """A released query: ``per_site`` (empty under secure aggregation) and ``total`` values, their ``labels``
    (bin edges, class names, keys or quantile levels), ``noise_std`` of each total entry and :meth:`ci`."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        try:
            self.spec = QuerySpec.from_dict(dict(data["query"]))
            self.classes = [str(c) for c in data.get("classes") or []]
            self.query_id = str(data.get("query_id", ""))
            self.secure = bool(data.get("secure", False))
            self.sites = [str(s) for s in data.get("sites") or []]
            self.refused: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in (data.get("refused") or {}).items()}
            self.noise_shares = float(data.get("noise_shares", 1.0))
            n_classes = max(1, len(self.classes))
            size = sum(b.size for b in layout(self.spec, classes=n_classes))
            self._raw_total = np.asarray(data["total"], np.float64)
            self._raw_sites = {str(s): np.asarray(v, np.float64) for s, v in (data.get("per_site") or {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the room sent a malformed query result: {exc}") from None
        if self._raw_total.shape != (size,) or any(v.shape != (size,) for v in self._raw_sites.values()):
            raise ConfigError("the room sent a query result of the wrong length")
        self._classes_n = n_classes
        self.kind = self.spec.kind
        self.feature = self.spec.feature
        self.epsilon = self.spec.epsilon
        self.labels = _labels(self.spec, self.classes)
        self.total = finish(self.spec, self._raw_total, n_classes)
        self.per_site: dict[str, np.ndarray] = {s: finish(self.spec, v, n_classes) for s, v in self._raw_sites.items()}
        #: the standard deviation of the noise of each total (a mean's or quantile's: its 95% interval's over 2 x 1.96)
        self.noise_std = self._noise_std()

    def _noise_std(self) -> np.ndarray:
        if self.kind in ("count", "count_by_label", "histogram", "missing"):
            return np.asarray(np.sqrt(self._variance(self.noise_shares)), np.float64)
        if self.kind == "sum":
            return np.asarray(np.sqrt(self._variance(self.noise_shares)) / self.spec.fixed_scale, np.float64)
        lo, hi = self.ci(0.95)
        return np.asarray((hi - lo) / (2 * 1.959963984540054), np.float64)

    # ------------------------------------------------------------------ intervals

    def _variance(self, shares: float) -> np.ndarray:
        return noise_variance(self.spec, self._classes_n, shares)

    def _interval(self, raw: np.ndarray, shares: float, level: float) -> tuple[np.ndarray, np.ndarray]:
        spec, var = self.spec, self._variance(shares)
        values = finish(spec, raw, self._classes_n)
        if spec.kind in ("count", "count_by_label", "histogram", "missing"):
            half = entry_halfwidth(spec, self._classes_n, shares, level)  # exact: the noise is on the integers
            return values - half, values + half
        if spec.kind == "sum":
            half = entry_halfwidth(spec, self._classes_n, shares, level) / spec.fixed_scale
            return values - half, values + half
        if spec.kind == "quantiles":
            return quantile_ci(spec, raw, var, level)
        # mean = middle + S / (scale N): the delta method over the noised sum and count
        assert spec.bounds is not None
        g = spec.groups
        s, n = raw[:g], raw[g:]
        var_s, var_n = var[:g], var[g:]
        n_pos = np.maximum(n, 1.0)
        offset = s / spec.fixed_scale / n_pos
        sd = np.sqrt(var_s / spec.fixed_scale**2 + offset**2 * var_n) / n_pos
        half = ci_halfwidth(sd**2, level)
        return np.clip(values - half, *spec.bounds), np.clip(values + half, *spec.bounds)

    def ci(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` arrays: a ``level`` confidence interval for each ``total`` entry (over the noise)."""
        return self._interval(self._raw_total, self.noise_shares, level)

    def site_ci(self, site: str, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The same for one site's own answer (plain queries)."""
        if site not in self._raw_sites:
            raise ConfigError(f"no per-site answer of {site!r} (secure queries release only the sum)")
        return self._interval(self._raw_sites[site], 1.0, level)

    # ------------------------------------------------------------------ views

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the query, labels, totals with their intervals, per-site values and refusals."""
        lo, hi = self.ci(0.95)
        return {
            "query_id": self.query_id,
            "kind": self.kind,
            "feature": self.feature,
            "epsilon": self.epsilon,
            "secure": self.secure,
            "query": self.spec.to_dict(),
            "labels": list(self.labels),
            "sites": list(self.sites),
            "total": [float(v) for v in self.total],
            "noise_std": [float(v) for v in self.noise_std],
            "ci95": [[float(a), float(b)] for a, b in zip(lo, hi, strict=True)],
            "per_site": {s: [float(v) for v in vals] for s, vals in self.per_site.items()},
            "refused": {s: dict(r) for s, r in self.refused.items()},
        }

    def to_table(self) -> list[dict[str, Any]]:
        """One row per label: the total, its 95% interval, and each site's value."""
        lo, hi = self.ci(0.95)
        rows = []
        for i, label in enumerate(self.labels):
            row: dict[str, Any] = {
                "label": label,
                "total": float(self.total[i]),
                "ci_low": float(lo[i]),
                "ci_high": float(hi[i]),
            }
            for s, vals in self.per_site.items():
                row[s] = float(vals[i])
            rows.append(row)
        return rows

    def _title(self) -> str:
        what = self.kind + (f"({self.feature})" if self.feature else "")
        if self.spec.by:
            what += f" by {self.spec.by}"
        mode = "secure sum" if self.secure else "per site and summed"
        return f"{what}, epsilon {self.epsilon:g} per site, {mode} over {', '.join(self.sites) or 'no site'}"

    def _repr_html_(self) -> str:
        lo, hi = self.ci(0.95)
        sites = list(self.per_site)
        head = "".join(f"<th>{html.escape(s)}</th>" for s in sites)
        body = []
        for i, label in enumerate(self.labels):
            cells = "".join(f"<td>{_fmt(self.per_site[s][i])}</td>" for s in sites)
            body.append(
                f"<tr><td>{html.escape(label)}</td>{cells}<td><b>{_fmt(self.total[i])}</b></td>"
                f"<td>[{_fmt(lo[i])}, {_fmt(hi[i])}]</td></tr>"
            )
        refused = "".join(
            f"<li>{html.escape(s)}: {html.escape(str(r.get('reason', '')))} — {html.escape(str(r.get('message', '')))}"
            "</li>"
            for s, r in sorted(self.refused.items())
        )
        return (
            f"<div class='fedjax-room-query'><p>{html.escape(self._title())}</p><table><thead><tr><th></th>{head}"
            f"<th>total</th><th>95% CI</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
            + (f"<p>refused:</p><ul>{refused}</ul>" if refused else "")
            + "</div>"
        )

    def __repr__(self) -> str:
        lo, hi = self.ci(0.95)
        lines = [self._title()]
        for i, label in enumerate(self.labels):
            lines.append(f"  {label}: {_fmt(self.total[i])}  [{_fmt(lo[i])}, {_fmt(hi[i])}]")
        for s, r in sorted(self.refused.items()):
            lines.append(f"  refused by {s}: {r.get('reason')}")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


# ---------------------------------------------------------------------------------- the one-line form

_LISTS = ("bins", "bounds", "quantiles", "keys", "sites")
_NUMBERS = ("epsilon", "timeout")
_ALIASES = {"eps": "epsilon", "group_by": "by", "levels": "quantiles", "q": "quantiles"}


def _value(text: str) -> str | int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_query(text: str) -> dict[str, Any]:
    """The keyword arguments of ``Room.query`` from one line, e.g.
    ``histogram pixel_3 bins=0,4,8,16 epsilon=1`` or
    ``mean age bounds=0,100 epsilon=1 by=sex keys=0,1 sites=site-a,site-b secure``.

    The first word is the kind (``count by label`` is ``count_by_label``), an optional second word the feature;
    then ``name=value`` settings (lists comma-separated) and the flag ``secure``. Raises
    :class:`~fedjax_room.errors.ConfigError` saying what is wrong; the query itself is checked by ``Room.query``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("a query line starts with its kind, e.g. `count_by_label epsilon=0.5`")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"cannot read the query line: {exc}") from None
    if len(words) >= 3 and words[0] == "count" and words[1] == "by" and words[2] == "label":
        words = ["count_by_label", *words[3:]]
    kind = words[0].replace("-", "_")
    if kind not in KINDS:
        raise ConfigError(f"unknown query kind {kind!r}; choose one of {', '.join(KINDS)}")
    out: dict[str, Any] = {"kind": kind}
    rest = words[1:]
    if rest and "=" not in rest[0] and rest[0] != "secure":
        out["feature"] = rest.pop(0)
    for word in rest:
        if word == "secure":
            out["secure"] = True
            continue
        name, sep, value = word.partition("=")
        name = _ALIASES.get(name, name)
        if not sep or not name:
            raise ConfigError(f"expected name=value, got {word!r}")
        if name in out:
            raise ConfigError(f"{name} is given twice")
        if name in _LISTS:
            items = [v for v in value.split(",") if v != ""]
            if not items:
                raise ConfigError(f"{name} needs comma-separated values, e.g. {name}=0,1")
            parsed = [_value(v) for v in items]
            if name == "sites":
                parsed = [str(v) for v in items]
            elif name in ("bins", "bounds", "quantiles") and not all(isinstance(v, int | float) for v in parsed):
                raise ConfigError(f"{name} must be numbers, got {value!r}")
            out[name] = parsed
        elif name in _NUMBERS:
            number = _value(value)
            if not isinstance(number, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            out[name] = number
        elif name == "secure":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"secure must be true or false, got {value!r}")
            out["secure"] = value.lower() in ("true", "1", "yes")
        elif name in ("feature", "by"):
            out[name] = value
        else:
            raise ConfigError(
                f"unknown query setting {name!r}; known: feature, epsilon, bins, bounds, quantiles, by, keys, "
                "sites, secure, timeout"
            )
    return out
