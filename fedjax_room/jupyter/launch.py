"""The launch form: pick a model and DP settings, press a button, watch the run.

:class:`LaunchForm` is an ipywidgets box whose Python object is the model: its validated traitlets
(``family``, ``hidden``, ``rounds``, ``target_epsilon``, ``delta``, ``clip_norm``, ``aggregator``,
``secure_aggregation``) are linked both ways to the controls. :meth:`LaunchForm.spec` builds the
declarative model spec with :mod:`fedjax_room.models`; :meth:`LaunchForm.launch` (the button) calls
``room.train`` — nothing else — and opens a :class:`~fedjax_room.jupyter.dashboard.RunDashboard`.

The input shape and number of classes come from the sites' schema (``room.sites()``) unless given.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import traitlets

from fedjax_room.analyst.views import records
from fedjax_room.errors import ConfigError, FedRoomError
from fedjax_room.jupyter.args import AGGREGATORS
from fedjax_room.jupyter.dashboard import RunDashboard, field
from fedjax_room.models import ModelSpec, cnn, logistic, mlp

__all__ = ["FAMILIES", "LaunchForm", "parse_sizes", "schema_shape"]

FAMILIES = ("logistic", "mlp", "cnn")


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"64, 32"`` -> ``(64, 32)``; raises :class:`ConfigError` on anything but positive integers."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"layer sizes must be comma-separated positive integers, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise ConfigError(f"layer sizes must be positive, got {text!r}")
    return sizes


def schema_shape(sites: Any) -> tuple[tuple[int, ...], int] | None:
    """(input_shape, num_classes) from the first site whose schema declares them, else None."""
    for row in records(sites, key="name"):
        schema = row.get("schema")
        if not isinstance(schema, Mapping):
            continue
        shape = schema.get("feature_shape") or ([len(schema["features"])] if schema.get("features") else None)
        classes = schema.get("classes")
        if shape and classes:
            return tuple(int(s) for s in shape), len(classes)
    return None


class LaunchForm(widgets.VBox):
    """A form that starts a run on ``room`` and shows its live dashboard below."""

    family = traitlets.Enum(FAMILIES, default_value="mlp")
    hidden = traitlets.Unicode("64")
    conv = traitlets.Unicode("16, 32")
    rounds = traitlets.Int(5)
    target_epsilon = traitlets.Float(3.0)
    delta = traitlets.Float(1e-5)
    clip_norm = traitlets.Float(1.0)
    aggregator = traitlets.Enum(AGGREGATORS, default_value="fedavg")
    secure_aggregation = traitlets.Bool(False)
    message = traitlets.Unicode("")

    def __init__(
        self,
        room: Any,
        *,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        on_launch: Callable[[Any, RunDashboard], None] | None = None,
        train_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.room = room
        self.on_launch = on_launch
        self.train_options = dict(train_options or {})
        self.run: Any = None
        self.dashboard: RunDashboard | None = None
        if input_shape is None or num_classes is None:
            found = schema_shape(room.sites())
            if found is None:
                raise ConfigError(
                    "the sites do not declare a feature shape and classes; pass input_shape= and num_classes="
                )
            input_shape, num_classes = input_shape or found[0], num_classes or found[1]
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        c = {
            "family": widgets.Dropdown(options=FAMILIES, description="model"),
            "hidden": widgets.Text(description="hidden", placeholder="e.g. 64, 32"),
            "conv": widgets.Text(description="conv", placeholder="channels, e.g. 16, 32"),
            "rounds": widgets.BoundedIntText(min=1, max=10_000, description="rounds"),
            "target_epsilon": widgets.BoundedFloatText(min=0.01, max=100.0, step=0.5, description="target ε"),
            "delta": widgets.BoundedFloatText(min=1e-12, max=0.1, step=1e-6, description="δ"),
            "clip_norm": widgets.BoundedFloatText(min=1e-4, max=1e4, step=0.1, description="clip norm"),
            "aggregator": widgets.Dropdown(options=AGGREGATORS, description="aggregator"),
            "secure_aggregation": widgets.Checkbox(description="secure aggregation", indent=True),
        }
        self.controls = c
        self.button = widgets.Button(description="Start run", button_style="primary", icon="play")
        self.button.on_click(lambda _button: self._click())
        self._message = widgets.HTML()
        self.output = widgets.Output()
        super().__init__(
            children=[
                widgets.HTML(
                    f"<b>New run</b> — input {html.escape(str(list(self.input_shape)))}, {self.num_classes} classes"
                ),
                widgets.HBox([c["family"], c["hidden"], c["conv"]]),
                widgets.HBox([c["rounds"], c["aggregator"], c["secure_aggregation"]]),
                widgets.HBox([c["target_epsilon"], c["delta"], c["clip_norm"]]),
                widgets.HBox([self.button, self._message]),
                self.output,
            ],
            **kwargs,
        )
        self._links = [widgets.link((self, name), (control, "value")) for name, control in c.items()]
        self._sync_visibility()

    @traitlets.validate("rounds")
    def _valid_rounds(self, proposal: Any) -> int:
        if proposal["value"] < 1:
            raise traitlets.TraitError(f"rounds must be at least 1, got {proposal['value']}")
        return proposal["value"]

    @traitlets.validate("target_epsilon", "clip_norm")
    def _valid_positive(self, proposal: Any) -> float:
        if not proposal["value"] > 0:
            raise traitlets.TraitError(f"{proposal['trait'].name} must be positive, got {proposal['value']}")
        return proposal["value"]

    @traitlets.validate("delta")
    def _valid_delta(self, proposal: Any) -> float:
        if not 0 < proposal["value"] < 1:
            raise traitlets.TraitError(f"delta must be strictly between 0 and 1, got {proposal['value']}")
        return proposal["value"]

    @traitlets.validate("hidden", "conv")
    def _valid_sizes(self, proposal: Any) -> str:
        try:
            parse_sizes(proposal["value"])
        except ConfigError as exc:
            raise traitlets.TraitError(exc.message) from None
        return proposal["value"]

    @traitlets.observe("family")
    def _on_family(self, _change: Any) -> None:
        self._sync_visibility()

    @traitlets.observe("message")
    def _on_message(self, change: Any) -> None:
        self._message.value = html.escape(change["new"])

    def _sync_visibility(self) -> None:
        self.controls["hidden"].layout.display = None if self.family in ("mlp", "cnn") else "none"
        self.controls["conv"].layout.display = None if self.family == "cnn" else "none"

    def spec(self) -> ModelSpec:
        """The declarative model spec the form describes."""
        hidden = parse_sizes(self.hidden)
        if self.family == "logistic":
            return logistic(self.input_shape, self.num_classes)
        if self.family == "mlp":
            return mlp(self.input_shape, self.num_classes, hidden=hidden or (64,))
        if len(self.input_shape) != 3:
            raise ConfigError(
                f"a cnn needs (height, width, channels) inputs but the sites' data has shape {list(self.input_shape)};"
                " choose mlp or logistic"
            )
        conv = tuple((c, 3, 1) for c in parse_sizes(self.conv)) or ((16, 3, 1),)
        return cnn(self.input_shape, self.num_classes, conv=conv, dense=hidden)

    def train_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``room.train`` (form values over ``train_options``)."""
        return {
            **self.train_options,
            "rounds": self.rounds,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "clip_norm": self.clip_norm,
            "aggregator": self.aggregator,
            "secure_aggregation": self.secure_aggregation,
        }

    def launch(self) -> Any:
        """Start the run (``room.train``), open its dashboard in the form's output area; returns the Run."""
        spec = self.spec()
        kwargs = self.train_kwargs()
        run = self.room.train(spec, **kwargs)
        dashboard = RunDashboard(
            run_id=str(field(run, "id", "")),
            rounds=self.rounds,
            target_epsilon=self.target_epsilon,
        )
        dashboard.attach(run)
        self.run, self.dashboard = run, dashboard
        self.output.clear_output()
        with self.output:
            from IPython.display import display

            display(dashboard)
        self.message = f"started run {field(run, 'id', '')}"
        if self.on_launch is not None:
            self.on_launch(run, dashboard)
        return run

    def _click(self) -> None:
        self.button.disabled = True
        try:
            self.launch()
        except (FedRoomError, traitlets.TraitError) as exc:
            self.message = f"error: {getattr(exc, 'message', None) or exc}"
        finally:
            self.button.disabled = False
