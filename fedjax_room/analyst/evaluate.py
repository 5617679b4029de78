"""The analyst's own evaluation of a model on labelled data the analyst holds: ``run.evaluate(data)``.

This runs in the analyst's process on the analyst's data, with the global model the room released (or a model
file, :func:`fedjax_room.models.load`); no site is asked and no privacy is spent. :func:`evaluate` returns an
:class:`Evaluation`: accuracy, mean cross-entropy loss, the confusion matrix, and for a two-class model the ROC
and precision-recall curves with their areas (ROC AUC, average precision), as tables and inline SVG plots in
Jupyter (``_repr_html_``) and as plain data (:meth:`Evaluation.to_dict`).

``data`` is any of: a pair ``(x, y)`` of arrays; an object with ``x`` and ``y`` (a ``Dataset``); a mapping
``{"x": ..., "y": ...}``; a ``.npz`` path (arrays ``x`` and ``y`` or the label named by its stored ``schema``,
as ``fedjax_room.data.save_dataset`` writes); or a ``.csv`` path (a header row, one column per feature and a
label column: ``label=`` names it, else ``label``/``y``/``target``/``class``, else the last column; a sidecar
``<file>.schema.json`` is read for the class list when present). Labels are class indices ``0..num_classes-1``,
or class values mapped through ``classes=`` (or the file's schema). Anything else raises
:class:`~fedjax_room.errors.DataError` naming what is wrong.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedjax_room.analyst.views import format_value, html_table, text_table
from fedjax_room.errors import ConfigError, DataError
from fedjax_room.models import ModelSpec

__all__ = ["MAX_DATA_BYTES", "Curve", "Evaluation", "evaluate", "labelled_data"]

#: Largest evaluation file read (the analyst's own data; a bound all the same).
MAX_DATA_BYTES = 1 << 30
_LABEL_NAMES = ("label", "y", "target", "class")


@dataclasses.dataclass(frozen=True)
class Curve:
    """A curve through the points ``(x[i], y[i])`` (ROC: false/true positive rate; PR: recall/precision)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    thresholds: tuple[float, ...]
    area: float


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured on ``n`` labelled examples (exact counts: the analyst's own data)."""

    n: int
    classes: tuple[str, ...]
    accuracy: float
    loss: float
    #: ``confusion[i][j]``: examples of true class ``i`` predicted as class ``j``
    confusion: tuple[tuple[int, ...], ...]
    #: two-class models only: the ROC curve of the positive class's probability, and its area
    roc: Curve | None = None
    #: two-class models only: the precision-recall curve, with the average precision as its area
    pr: Curve | None = None

    @property
    def roc_auc(self) -> float | None:
        """Area under the ROC curve (two classes; None otherwise or when only one class is present)."""
        return None if self.roc is None else self.roc.area

    @property
    def average_precision(self) -> float | None:
        """Average precision, the area of the precision-recall curve (two classes; None otherwise)."""
        return None if self.pr is None else self.pr.area

    @property
    def confusion_matrix(self) -> np.ndarray:
        """:attr:`confusion` as an ``int64`` array ``[true class, predicted class]``."""
        return np.asarray(self.confusion, dtype=np.int64)

    def per_class(self) -> list[dict[str, Any]]:
        """Per class: support, precision, recall (None where undefined)."""
        matrix = self.confusion_matrix
        rows = []
        for i, name in enumerate(self.classes):
            support, predicted, hit = int(matrix[i].sum()), int(matrix[:, i].sum()), int(matrix[i, i])
            rows.append(
                {
                    "class": name,
                    "support": support,
                    "precision": hit / predicted if predicted else None,
                    "recall": hit / support if support else None,
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """The headline numbers: n, accuracy, loss, and ROC AUC / average precision when two classes."""
        out: dict[str, Any] = {"examples": self.n, "accuracy": self.accuracy, "loss": self.loss}
        if self.roc is not None or self.pr is not None:
            out["roc_auc"], out["average_precision"] = self.roc_auc, self.average_precision
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (NaN as None)."""

        def plain(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        out: dict[str, Any] = {k: plain(v) for k, v in self.summary().items()}
        out["classes"] = list(self.classes)
        out["confusion"] = [list(row) for row in self.confusion]
        for name, curve in (("roc", self.roc), ("pr", self.pr)):
            if curve is not None:
                out[name] = {"x": list(curve.x), "y": list(curve.y), "area": plain(curve.area)}
        return out

    def confusion_html(self) -> str:
        """The confusion matrix as an HTML table (rows: true class, columns: predicted)."""
        rows = [
            {"true \\ predicted": name, **{other: int(v) for other, v in zip(self.classes, row, strict=True)}}
            for name, row in zip(self.classes, self.confusion, strict=True)
        ]
        return html_table(rows, ["true \\ predicted", *self.classes], caption="Confusion matrix (counts)")

    def roc_svg(self) -> str:
        """The ROC curve as an inline SVG ('' unless two classes)."""
        if self.roc is None:
            return ""
        title = f"ROC (AUC {format_value(self.roc.area)})"
        return _curve_svg(self.roc, title, "false positive rate", "true positive rate", diagonal=True)

    def pr_svg(self) -> str:
        """The precision-recall curve as an inline SVG ('' unless two classes)."""
        if self.pr is None:
            return ""
        title = f"precision-recall (AP {format_value(self.pr.area)})"
        return _curve_svg(self.pr, title, "recall", "precision")

    def _repr_html_(self) -> str:
        headline = html_table([self.summary()], caption=f"Evaluation on {self.n} labelled examples")
        per_class = html_table(self.per_class(), ["class", "support", "precision", "recall"], caption="Per class")
        plots = self.roc_svg() + self.pr_svg()
        plots_html = f'<div style="display:flex;gap:8px;flex-wrap:wrap">{plots}</div>' if plots else ""
        return f"<div>{headline}{self.confusion_html()}{per_class}{plots_html}</div>"

    def __str__(self) -> str:
        lines = [text_table([self.summary()], caption=f"Evaluation on {self.n} labelled examples")]
        rows = [
            {"true\\pred": name, **{other: int(v) for other, v in zip(self.classes, row, strict=True)}}
            for name, row in zip(self.classes, self.confusion, strict=True)
        ]
        lines.append(text_table(rows, ["true\\pred", *self.classes], caption="Confusion matrix"))
        return "\n\n".join(lines)


# ----------------------------------------------------------------------------- metrics


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def roc_curve(y: np.ndarray, score: np.ndarray) -> Curve | None:
    """ROC of binary labels ``y`` (1 positive) ranked by ``score``; None without both classes."""
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(t == 1)[last]
    fp = np.cumsum(t == 0)[last]
    tpr, fpr = np.r_[0.0, tp / pos], np.r_[0.0, fp / neg]
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return Curve(tuple(map(float, fpr)), tuple(map(float, tpr)), (math.inf, *map(float, s[last])), area)


def pr_curve(y: np.ndarray, score: np.ndarray) -> Curve | None:
    """Precision-recall of binary labels ranked by ``score``, area = average precision; None without positives."""
    pos = int((y == 1).sum())
    if pos == 0:
        return None
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(t == 1)[last]
    predicted = last + 1
    precision, recall = tp / predicted, tp / pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))  # sum_n (R_n - R_{n-1}) P_n
    return Curve(
        tuple(map(float, np.r_[0.0, recall])), tuple(map(float, np.r_[1.0, precision])), tuple(map(float, s[last])), ap
    )


def metrics(
    logits: np.ndarray, y: np.ndarray, classes: Sequence[str] | None = None, *, positive: int = 1
) -> Evaluation:
    """An :class:`Evaluation` from a model's ``logits`` ``[N, C]`` and the true class indices ``y`` ``[N]``."""
    logits = np.asarray(logits)
    y = np.asarray(y)
    if logits.ndim != 2 or y.shape != (logits.shape[0],):
        raise DataError(f"logits {list(logits.shape)} and labels {list(y.shape)} do not match")
    n, num_classes = logits.shape
    names = tuple(str(c) for c in classes) if classes is not None else tuple(str(i) for i in range(num_classes))
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names for a model of {num_classes} classes")
    predicted = logits.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    log_probs = _log_softmax(logits)
    loss = float(-log_probs[np.arange(n), y].mean()) if n else math.nan
    accuracy = float((predicted == y).mean()) if n else math.nan
    roc = pr = None
    if num_classes == 2:
        if positive not in (0, 1):
            raise ConfigError(f"positive must be class 0 or 1, got {positive!r}")
        score = np.exp(log_probs[:, positive])
        binary = (y == positive).astype(np.int64)
        roc, pr = roc_curve(binary, score), pr_curve(binary, score)
    return Evaluation(
        n=int(n),
        classes=names,
        accuracy=accuracy,
        loss=loss,
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        roc=roc,
        pr=pr,
    )


# ----------------------------------------------------------------------------- data


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise DataError(f"{path}: {size:,} bytes, over the bound of {MAX_DATA_BYTES:,} for evaluation data")
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _schema_classes(schema: Any) -> tuple[list[Any] | None, str | None]:
    if not isinstance(schema, Mapping):
        return None, None
    classes = schema.get("classes")
    label = schema.get("label")
    return (list(classes) if isinstance(classes, list) else None), (label if isinstance(label, str) else None)


def _from_npz(path: Path, label: str | None) -> tuple[Any, Any, list[Any] | None]:
    data = _read(path)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if sum(m.file_size for m in archive.infolist()) > MAX_DATA_BYTES:
                raise DataError(f"{path}: its arrays unpack to more than {MAX_DATA_BYTES:,} bytes")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except DataError:
        raise
    except Exception as exc:  # zipfile / numpy's reader raise many types on a malformed file
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {str(exc)[:200]})") from None
    classes = stored_label = None
    if "schema" in arrays and arrays["schema"].dtype.kind == "U":
        try:
            classes, stored_label = _schema_classes(json.loads(str(arrays["schema"])))
        except json.JSONDecodeError:
            pass
    key = label or (stored_label if stored_label in arrays else None) or "y"
    if "x" not in arrays or key not in arrays:
        raise DataError(f"{path}: needs arrays 'x' and {key!r}; it has {sorted(arrays)}")
    return arrays["x"], arrays[key], classes


def _from_csv(path: Path, label: str | None) -> tuple[Any, Any, list[Any] | None]:
    text = _read(path).decode("utf-8-sig", errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one example")
    header = [h.strip() for h in rows[0]]
    sidecar = path.with_name(path.name + ".schema.json")
    classes, stored_label = None, None
    if sidecar.is_file():
        try:
            classes, stored_label = _schema_classes(json.loads(_read(sidecar)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{sidecar}: not JSON ({exc})") from None
    name = label or stored_label or next((n for n in _LABEL_NAMES if n in header), header[-1])
    if name not in header:
        raise DataError(f"{path}: no label column {name!r}; the columns are {header}")
    col = header.index(name)
    features: list[list[float]] = []
    labels: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: {len(row)} values for {len(header)} columns")
        try:
            features.append([float(v) for i, v in enumerate(row) if i != col])
        except ValueError as exc:
            raise DataError(f"{path}:{line}: a feature is not a number ({exc})") from None
        labels.append(row[col].strip())
    return np.asarray(features, dtype=np.float64), np.asarray(labels), classes


def _label_indices(y: Any, num_classes: int, classes: Sequence[Any] | None, where: str) -> np.ndarray:
    values = np.asarray(y)
    if values.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D, got shape {list(values.shape)}")
    if classes is not None:
        if len(classes) != num_classes:
            raise ConfigError(f"{len(classes)} classes given for a model of {num_classes} classes")
        index = {str(c): i for i, c in enumerate(classes)}
        out = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values.tolist()):
            key = str(v)
            if key not in index and isinstance(v, float) and v.is_integer():
                key = str(int(v))
            if key not in index:
                if values.dtype.kind in "iu":  # not class values: class indices (a Dataset's y), checked below
                    break
                raise DataError(f"{where}: label {v!r} (example {i}) is not one of the classes {list(classes)}")
            out[i] = index[key]
        else:
            return out
    if values.dtype.kind in "US":  # text labels without a class list: only integer text is an index
        try:
            values = values.astype(np.float64)
        except ValueError:
            raise DataError(
                f"{where}: labels are class names ({values[0]!r}, ...); pass classes=[...] in the model's order"
            ) from None
    if values.dtype.kind == "b" or values.dtype.kind not in "iuf":
        raise DataError(f"{where}: labels must be class indices 0..{num_classes - 1}, got dtype {values.dtype}")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
        raise DataError(f"{where}: labels must be whole class indices 0..{num_classes - 1}")
    out = values.astype(np.int64)
    bad = np.nonzero((out < 0) | (out >= num_classes))[0]
    if bad.size:
        raise DataError(
            f"{where}: label {values[bad[0]]!r} (example {int(bad[0])}) is not a class index 0..{num_classes - 1}; "
            "pass classes=[...] to map class values"
        )
    return out


def labelled_data(
    data: Any,
    spec: ModelSpec | Mapping[str, Any],
    *,
    label: str | None = None,
    classes: Sequence[Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """``(x, y, class names)`` from any accepted ``data`` (see the module docstring), shaped for ``spec``."""
    model = ModelSpec.from_dict(spec)
    stored: list[Any] | None = None
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            x, y, stored = _from_npz(path, label)
        elif suffix == ".csv":
            x, y, stored = _from_csv(path, label)
        else:
            raise DataError(f"{path}: evaluation data is a .npz or .csv file (or arrays (x, y))")
        where = str(path)
    elif isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
        where = "(x, y)"
    elif isinstance(data, Mapping) and "x" in data and (label or "y") in data:
        x, y = data["x"], data[label or "y"]
        where = "data"
    elif hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
        where = type(data).__name__
        schema = getattr(data, "schema", None)
        stored = list(getattr(data, "classes", None) or getattr(schema, "classes", None) or []) or None
    else:
        raise DataError(
            f"cannot evaluate on a {type(data).__name__}: give (x, y) arrays, a dataset with .x/.y, "
            "or a .npz / .csv path"
        )
    try:
        features = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: features are not numbers ({exc})") from None
    n = features.shape[0] if features.ndim else 0
    shape = model.input_shape
    if features.ndim >= 1 and features.shape[1:] != shape and features.size == n * math.prod(shape):
        features = features.reshape((n, *shape))
    if features.ndim < 1 or features.shape[1:] != shape:
        raise DataError(
            f"{where}: features of shape {list(features.shape)} do not fit the model's input_shape {list(shape)}"
        )
    if not np.all(np.isfinite(features)):
        raise DataError(f"{where}: features hold NaN or infinite values")
    if np.asarray(y).shape[:1] != (n,):
        raise DataError(f"{where}: {n} examples but {np.asarray(y).shape[:1]} labels")
    names = classes if classes is not None else stored
    if names is not None and len(names) != model.num_classes:
        names = None if classes is None else names  # a stored list of another length is ignored
    indices = _label_indices(y, model.num_classes, names, where)
    return features, indices, [str(c) for c in names] if names is not None else None


def evaluate(
    spec: ModelSpec | Mapping[str, Any],
    params: Mapping[str, Any],
    data: Any,
    *,
    label: str | None = None,
    classes: Sequence[Any] | None = None,
    positive: int = 1,
    batch_size: int = 4096,
) -> Evaluation:
    """Evaluate the model ``spec`` with ``params`` on the analyst's labelled ``data`` (see the module docstring).

    ``positive`` is the class whose probability ranks the ROC and precision-recall curves (two classes).
    """
    from fedjax_room.models.export import LoadedModel

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    model = ModelSpec.from_dict(spec)
    x, y, names = labelled_data(data, model, label=label, classes=classes)
    logits = LoadedModel(model, params).logits(x, batch_size=batch_size)
    return metrics(logits, y, names, positive=positive)


def _curve_svg(curve: Curve, title: str, x_label: str, y_label: str, *, diagonal: bool = False) -> str:
    width, height, left, top, right, bottom = 260, 220, 40, 22, 10, 34
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + pw * min(max(v, 0.0), 1.0)

    def sy(v: float) -> float:
        return top + ph * (1 - min(max(v, 0.0), 1.0))

    points = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(curve.x, curve.y, strict=True))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(title)}" style="font-family:sans-serif;font-size:10px">',
        f'<text x="{width / 2:.0f}" y="14" text-anchor="middle" font-size="12">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>',
    ]
    if diagonal:
        parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#bbb" stroke-dasharray="4"/>')
    for v in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{left - 4}" y="{sy(v) + 3:.1f}" text-anchor="end">{v:g}</text>')
        parts.append(f'<text x="{sx(v):.1f}" y="{top + ph + 12}" text-anchor="middle">{v:g}</text>')
    parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.8" points="{points}"/>')
    parts.append(
        f'<text x="{left + pw / 2:.0f}" y="{height - 4}" text-anchor="middle" fill="#666">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="10" y="{top + ph / 2:.0f}" text-anchor="middle" fill="#666" '
        f'transform="rotate(-90 10 {top + ph / 2:.0f})">{html.escape(y_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
