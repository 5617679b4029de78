"""What the analyst API returns, as plain JSON for the browser, and one-line summaries of it.

Dataclasses become dicts, NaN and infinities become ``null`` (the browser's ``JSON.parse`` rejects them),
numpy scalars become numbers; a site's schema and policy get a line each for the sidebar.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["POLICY_LABELS", "jsonable", "policy_items", "policy_summary", "schema_summary"]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (dataclasses, mappings, sequences, numpy values; NaN/inf -> None)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return jsonable(value.tolist())
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return jsonable(value.to_dict())
    if hasattr(value, "_asdict"):
        return jsonable(value._asdict())
    if hasattr(value, "__dict__") and not callable(value):
        return {k: jsonable(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def schema_summary(schema: Any) -> str:
    """One line for a site's schema: ``64 features (f0..f63) -> digit, 10 classes``."""
    schema = jsonable(schema) or {}
    if not isinstance(schema, dict):
        return str(schema)
    features = schema.get("features") or []
    shape = schema.get("feature_shape") or []
    classes = schema.get("classes") or []
    if features:
        names = ", ".join(features) if len(features) <= 4 else f"{features[0]}..{features[-1]}"
        what = f"{len(features)} features ({names})"
    elif shape:
        what = "features " + "×".join(str(s) for s in shape)
    else:
        what = "features ?"
    label = schema.get("label") or "label"
    return f"{what} -> {label}, {len(classes)} classes" if classes else f"{what} -> {label}"


#: How the sidebar names a policy setting (fedjax_room.site.policy.Policy); others: the key, spaced.
POLICY_LABELS: dict[str, str] = {
    "epsilon_cap": "ε cap",
    "delta_cap": "δ cap",
    "delta": "δ cap",
    "site_epsilon_cap": "site-level ε cap",
    "min_sites": "min sites",
    "allowed_families": "models",
    "families": "models",
    "max_params": "max parameters",
    "allowed_aggregators": "aggregators",
    "require_secure_aggregation": "secure aggregation",
    "approval": "approval",
    "approved_models": "approved models",
    "declared_train_records": "declared train records",
    "declared_heldout_records": "declared held-out records",
}


def _number(value: int | float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    return f"{value:.4g}"


def policy_items(policy: Any) -> list[list[str]]:
    """A site's policy as ``[label, value]`` pairs a person reads: ``["ε cap", "10"]``,
    ``["aggregators", "any"]``, ``["secure aggregation", "required"]``; unset settings left out."""
    from fedjax_room.protocol.config import AGGREGATORS

    policy = jsonable(policy) or {}
    if not isinstance(policy, dict):
        return [["policy", str(policy)]]
    items = []
    for key, value in policy.items():
        label = POLICY_LABELS.get(key, str(key).replace("_", " "))
        if value is None or isinstance(value, dict):
            continue
        if key == "require_secure_aggregation" and isinstance(value, bool):
            text = "required" if value else "optional"
        elif key == "approved_models" and isinstance(value, list):
            if not value:
                continue
            text = f"{len(value)} model{'s' if len(value) != 1 else ''}"
        elif key == "allowed_aggregators" and isinstance(value, list) and set(AGGREGATORS) <= set(value):
            text = "any"
        elif isinstance(value, list):
            text = ", ".join(str(v) for v in value) or "none"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, int | float):
            text = _number(value)
        else:
            text = str(value)
        items.append([label, text])
    return items


def policy_summary(policy: Any) -> str:
    """One line for a site's policy: ``ε cap: 10 · δ cap: 1e-05 · models: logistic, mlp, cnn · ...``."""
    items = policy_items(policy)
    return " · ".join(f"{label}: {value}" for label, value in items) or "—"


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {' '.join(str(message).split())}"
