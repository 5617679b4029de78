"""The launch form: pick a model and the run options, press a button, watch the run.

:class:`LaunchForm` is an ipywidgets box whose Python object is the model: a validated traitlet per run
option (generated from :class:`~fedjax_room.protocol.config.RunConfig`: every field, with its default and
bounds) plus the model's ``family``, ``hidden`` and ``conv``, each kept in sync both ways with its control.
The options marked ``basic`` are shown up front, the others under "more options", by group.
:meth:`LaunchForm.spec` builds the model spec for the sites' schema
(:func:`fedjax_room.models.from_schema.spec_from_schema`); :meth:`LaunchForm.launch` (the button) calls
``room.train`` with the options that were given (set in ``train_options`` or changed from RunConfig's
default) — nothing else — and opens a :class:`~fedjax_room.jupyter.dashboard.RunDashboard`.

The input shape and number of classes come from the sites' schema (``room.sites()``) unless given.
"""

from __future__ import annotations

import html
import math
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import traitlets

from fedjax_room.errors import ConfigError, FedRoomError
from fedjax_room.jupyter.dashboard import RunDashboard, field
from fedjax_room.jupyter.display import records
from fedjax_room.models import ModelSpec
from fedjax_room.models.from_schema import FAMILIES, schema_dims, spec_from_schema
from fedjax_room.protocol.config import OPTION_GROUPS, OptionSpec, run_options
from fedjax_room.protocol.options import parse_option

__all__ = ["FAMILIES", "LaunchForm", "parse_sizes", "schema_shape"]

#: The largest bound a numeric box is given (a browser's numbers are doubles; larger bounds are checked here).
_WIDGET_BOUND = 1e15
#: the families whose hidden widths the form shows and sends (a scatter model's head is linear from the form)
_HIDDEN_FAMILIES = ("mlp", "cnn")


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
        try:
            return schema_dims(row.get("schema"))
        except FedRoomError:
            continue
    return None


def _trait(option: OptionSpec) -> traitlets.TraitType[Any, Any]:
    if option.choices:
        return traitlets.Enum(option.choices, default_value=option.default)
    kind = {"int": traitlets.Int, "float": traitlets.Float, "bool": traitlets.Bool, "str": traitlets.Unicode}
    return kind[option.type](option.default, allow_none=option.nullable)


def _control(option: OptionSpec) -> widgets.Widget:
    label = option.name.replace("_", " ")
    tip = {"tooltip": option.help}
    if option.type == "bool":
        return widgets.Checkbox(description=label, indent=True, **tip)
    if option.choices:
        return widgets.Dropdown(options=option.choices, description=label, **tip)
    lo, hi = option.minimum, option.maximum
    finite = lo is not None and hi is not None and max(abs(lo), abs(hi)) <= _WIDGET_BOUND
    if option.nullable or not finite:
        return widgets.Text(description=label, placeholder="unset" if option.nullable else "", **tip)
    if option.type == "int":
        return widgets.BoundedIntText(min=int(lo or 0), max=int(hi or 0), description=label, **tip)
    step = 10 ** math.floor(math.log10(option.default)) if option.default else 0.1
    return widgets.BoundedFloatText(min=lo, max=hi, step=step, description=label, **tip)


def _as_control(control: widgets.Widget, value: Any) -> Any:
    if isinstance(control, widgets.Text):
        return "" if value is None else str(value)
    return value


def _from_control(option: OptionSpec, control: widgets.Widget, value: Any) -> Any:
    if isinstance(control, widgets.Text) and isinstance(value, str):
        return None if option.nullable and not value.strip() else parse_option(option, value)
    return value


_OPTIONS = run_options()
#: The form's run-option traits, one per RunConfig field (generated: a new field appears here by itself).
_OptionTraits = types.new_class(
    "_OptionTraits", (widgets.VBox,), {}, lambda ns: ns.update({o.name: _trait(o) for o in _OPTIONS})
)


class LaunchForm(_OptionTraits):  # type: ignore[misc, valid-type]
    """A form that starts a run on ``room`` and shows its live dashboard below.

    Besides the model traits, it has one trait per run option (``form.rounds``, ``form.exclude_below``, ...),
    validated by the option's own check; ``train_options`` set their initial values (and are always sent).
    """

    family = traitlets.Enum(FAMILIES, default_value="mlp")
    hidden = traitlets.Unicode("64")
    conv = traitlets.Unicode("16, 32")
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
        options = {o.name: o for o in _OPTIONS}
        unknown = set(train_options or {}) - set(options)
        if unknown:
            raise ConfigError(f"train_options: not run options: {', '.join(sorted(unknown))}")
        #: the options sent whatever their value (the caller's ``train_options``)
        self.given: set[str] = set(train_options or {})
        model_controls: dict[str, widgets.Widget] = {
            "family": widgets.Dropdown(options=FAMILIES, description="model"),
            "hidden": widgets.Text(description="hidden", placeholder="e.g. 64, 32"),
            "conv": widgets.Text(description="conv", placeholder="channels, e.g. 16, 32"),
        }
        option_controls = {o.name: _control(o) for o in _OPTIONS}
        self.controls: dict[str, widgets.Widget] = {**model_controls, **option_controls}
        self.button = widgets.Button(description="Start run", button_style="primary", icon="play")
        self.button.on_click(lambda _button: self._click())
        self._message = widgets.HTML()
        #: each site's planned epsilon and verdict for the run as the form stands (room.estimate; nothing spent)
        self.estimate_view = widgets.HTML()
        self._estimate_timer: threading.Timer | None = None
        self.output = widgets.Output()
        basic = [option_controls[o.name] for o in _OPTIONS if o.basic]
        groups = [
            (g, [option_controls[o.name] for o in _OPTIONS if o.group == g and not o.basic]) for g in OPTION_GROUPS
        ]
        groups = [(g, c) for g, c in groups if c]
        more = widgets.Accordion(children=[widgets.VBox(_rows(c)) for _, c in groups])
        for i, (g, _) in enumerate(groups):
            more.set_title(i, g)
        self.more = widgets.Accordion(children=[more], selected_index=None)
        self.more.set_title(0, "more options")
        super().__init__(
            children=[
                widgets.HTML(
                    f"<b>New run</b> — input {html.escape(str(list(self.input_shape)))}, {self.num_classes} classes"
                ),
                widgets.HBox(list(model_controls.values())),
                *_rows(basic),
                self.more,
                widgets.HBox([self.button, self._message]),
                self.estimate_view,
                self.output,
            ],
            **kwargs,
        )
        for name, value in (train_options or {}).items():
            try:
                setattr(self, name, value)
            except traitlets.TraitError as exc:
                raise ConfigError(f"train_options: {exc}") from None
        for name, control in self.controls.items():
            self._sync(name, control, options.get(name))
        self.observe(lambda _change: self._estimate_soon(), names=[*self.controls])

    #: seconds of quiet after a change before the form asks the sites again (the room rate-limits estimates)
    estimate_delay = 0.8

    def _estimate_soon(self) -> None:
        if self._estimate_timer is not None:
            self._estimate_timer.cancel()
        self._estimate_timer = threading.Timer(self.estimate_delay, self.refresh_estimate)
        self._estimate_timer.daemon = True
        self._estimate_timer.start()

    def refresh_estimate(self) -> Any:
        """Ask the sites what they would do with the run as the form stands (``room.estimate``, nothing spent) and
        show it under the button; returns the report (None if the room cannot estimate or the form is invalid)."""
        from fedjax_room.analyst.views import estimate_html

        estimate = getattr(self.room, "estimate", None)
        if not callable(estimate):
            return None
        try:
            report = estimate(self.spec(), **self.train_kwargs())
        except (FedRoomError, traitlets.TraitError, OSError, TimeoutError) as exc:
            self.estimate_view.value = f"<i>estimate: {html.escape(getattr(exc, 'message', None) or str(exc))}</i>"
            return None
        self.estimate_view.value = estimate_html(report)
        return report

    def _sync(self, name: str, control: widgets.Widget, option: OptionSpec | None) -> None:
        """Keep trait ``name`` and its control equal both ways; a bad value typed in shows as the form's message."""
        control.value = _as_control(control, getattr(self, name))

        def to_control(change: Any) -> None:
            control.value = _as_control(control, change["new"])

        def to_trait(change: Any) -> None:
            try:
                value = _from_control(option, control, change["new"]) if option is not None else change["new"]
                if getattr(self, name) != value:
                    setattr(self, name, value)
            except (FedRoomError, traitlets.TraitError) as exc:
                self.message = f"error: {getattr(exc, 'message', None) or exc}"

        self.observe(to_control, names=name)
        control.observe(to_trait, names="value")

    @traitlets.validate(*(o.name for o in _OPTIONS))
    def _valid_option(self, proposal: Any) -> Any:
        option = next(o for o in _OPTIONS if o.name == proposal["trait"].name)
        try:
            return option.check(proposal["value"])
        except ConfigError as exc:
            raise traitlets.TraitError(exc.message) from None

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
        self.controls["hidden"].layout.display = None if self.family in _HIDDEN_FAMILIES else "none"
        self.controls["conv"].layout.display = None if self.family == "cnn" else "none"

    def spec(self) -> ModelSpec:
        """The declarative model spec the form describes, for the sites' schema."""
        schema = {"feature_shape": list(self.input_shape), "classes": list(range(self.num_classes))}
        hidden, conv = parse_sizes(self.hidden), parse_sizes(self.conv)
        if self.family not in _HIDDEN_FAMILIES:  # the widths are shown, and used, only for these
            hidden = ()
        return spec_from_schema(schema, self.family, hidden=hidden or None, conv=conv or None)

    def train_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``room.train``: each option given (``train_options``) or changed from its
        RunConfig default. One left alone is not sent, so RunConfig decides (e.g. the default target epsilon
        gives way to a noise multiplier)."""
        return {
            o.name: getattr(self, o.name)
            for o in _OPTIONS
            if o.name in self.given or getattr(self, o.name) != o.default
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
        dashboard.room = self.room  # at the run's end it shows the budget's composition lines
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


def _rows(controls: Sequence[widgets.Widget], per_row: int = 3) -> list[widgets.HBox]:
    return [widgets.HBox(list(controls[i : i + per_row])) for i in range(0, len(controls), per_row)]
