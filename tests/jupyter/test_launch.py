import pytest
import traitlets

from fedjax_room.errors import ConfigError
from fedjax_room.jupyter.dashboard import RunDashboard
from fedjax_room.jupyter.launch import LaunchForm, parse_sizes, schema_shape
from fedjax_room.protocol.config import RunConfig


def test_parse_sizes():
    assert parse_sizes("64, 32") == (64, 32) and parse_sizes("") == () and parse_sizes("8 4;2") == (8, 4, 2)
    for bad in ("a", "0", "-3", "1.5"):
        with pytest.raises(ConfigError):
            parse_sizes(bad)


def test_schema_shape(fakes):
    assert schema_shape(fakes.FakeRoom().sites()) == ((64,), 10)
    assert schema_shape([{"name": "x", "schema": {}}]) is None


def test_controls_and_traits_are_linked(fake_room):
    form = LaunchForm(fake_room)
    assert form.controls["rounds"].value == RunConfig().rounds and form.controls["target_epsilon"].value == "3.0"
    form.controls["rounds"].value = 9
    assert form.rounds == 9
    form.aggregator = "mean"
    assert form.controls["aggregator"].value == "mean"
    form.family = "logistic"
    assert form.controls["hidden"].layout.display == "none" and form.controls["conv"].layout.display == "none"
    form.family = "mlp"
    assert form.controls["hidden"].layout.display is None


@pytest.mark.parametrize(
    "name, value",
    [
        ("rounds", 0),
        ("target_epsilon", 0.0),
        ("delta", 1.0),
        ("delta", 0.0),
        ("clip_norm", -1.0),
        ("hidden", "a,b"),
        ("family", "rnn"),
        ("aggregator", "mode"),
        ("exclude_below", 1.5),
        ("min_sites", 0),
        ("seed", -1),
    ],
)
def test_traits_are_validated(fake_room, name, value):
    form = LaunchForm(fake_room)
    with pytest.raises(traitlets.TraitError):
        setattr(form, name, value)


def test_button_starts_a_run_and_opens_a_dashboard(fake_room):
    launched = []
    form = LaunchForm(
        fake_room, on_launch=lambda run, dash: launched.append((run, dash)), train_options={"local_steps": 3}
    )
    form.family, form.hidden, form.rounds = "mlp", "32, 16", 4
    # secure aggregation is on by default (RunConfig): turning it off is a change, so it is sent
    form.target_epsilon, form.delta, form.secure_aggregation, form.aggregator = 2.0, 1e-6, False, "mean"
    form.button.click()
    spec, kwargs = fake_room.trained[-1]
    assert spec.family == "mlp" and [layer.get("features") for layer in spec.layers if layer["type"] == "dense"] == [
        32,
        16,
        10,
    ]
    assert kwargs == {  # given (train_options) or changed; clip_norm left at RunConfig's default is not sent
        "rounds": 4,
        "target_epsilon": 2.0,
        "delta": 1e-6,
        "local_steps": 3,
        "aggregator": "mean",
        "secure_aggregation": False,
    }
    run, dash = launched[0]
    assert form.run is run and isinstance(dash, RunDashboard) and dash.rounds_total == 4
    assert "started run run-1" in form._message.value
    run.finish()
    assert dash.wait(5) and dash.status == "finished"


def test_errors_show_in_the_form(fake_room, budget_error):
    form = LaunchForm(fake_room)
    fake_room.refuse_with = budget_error
    form.button.click()
    assert "error: site alpha would spend" in form._message.value and not form.button.disabled
    form.family = "cnn"  # the sites' data is flat: a cnn cannot be built
    fake_room.refuse_with = None
    form.button.click()
    assert "cnn needs (height, width, channels)" in form._message.value


def test_cnn_and_logistic_specs(fake_room):
    form = LaunchForm(fake_room, input_shape=(8, 8, 1), num_classes=10)
    form.family, form.conv, form.hidden = "cnn", "4, 8", "16"
    spec = form.spec()
    assert spec.family == "cnn" and [layer["features"] for layer in spec.layers if layer["type"] == "conv"] == [4, 8]
    form.family = "logistic"
    assert form.spec().param_count() == 64 * 10 + 10
    form.family = "scatter"  # the hidden widths (still "16", not shown) are not used: a linear head
    spec = form.spec()
    assert spec.family == "scatter" and spec.layers[0]["type"] == "scattering" and len(spec.layers) == 2
    assert spec.param_count() == 9 * 16 * 10 + 10  # J = 1 on 8 x 8: 9 channels of 4 x 4


def test_needs_a_shape(fakes):
    room = fakes.FakeRoom()
    room.sites = lambda: []
    with pytest.raises(ConfigError, match="input_shape"):
        LaunchForm(room)


def test_form_has_exactly_runconfigs_options_with_its_defaults(fake_room):
    """Generated from RunConfig: a trait and a control per field, each starting at RunConfig's default."""
    from fedjax_room.protocol.config import RunConfig, run_options

    form = LaunchForm(fake_room)
    names = [o.name for o in run_options()]
    assert set(form.controls) - {"family", "hidden", "conv"} == set(names)
    assert {n: getattr(form, n) for n in names} == RunConfig().to_dict()
    assert form.train_kwargs() == {}  # nothing given: RunConfig decides
    form.controls["exclude_below"].value = "0.4"  # a nullable option is a text box; empty is unset
    form.controls["secagg_range"].value = 2.0
    assert form.exclude_below == 0.4 and form.train_kwargs() == {"exclude_below": 0.4, "secagg_range": 2.0}
    form.controls["exclude_below"].value = "2"
    assert form.exclude_below == 0.4 and "exclude_below" in form._message.value
    form.controls["exclude_below"].value = ""
    assert form.exclude_below is None
    form.noise_multiplier = 1.5  # the default target gives way, as in Room.train
    assert RunConfig.from_dict(form.train_kwargs()).target_epsilon is None


def test_train_options_are_initial_values_and_always_sent(fake_room):
    form = LaunchForm(fake_room, train_options={"rounds": 5, "site_clip_norm": 0.5})
    assert form.site_clip_norm == 0.5 and form.controls["site_clip_norm"].value == 0.5
    assert form.train_kwargs() == {"rounds": 5, "site_clip_norm": 0.5}
    with pytest.raises(ConfigError, match="not run options"):
        LaunchForm(fake_room, train_options={"round": 3})
    with pytest.raises(ConfigError, match="rounds"):
        LaunchForm(fake_room, train_options={"rounds": 0})
