import pytest

from fedjax_room.errors import ConfigError, ModelSpecError
from fedjax_room.jupyter.args import (
    COMMANDS,
    AuditArgs,
    ConnectArgs,
    DemoArgs,
    HelpArgs,
    SimpleArgs,
    TrainArgs,
    WatchArgs,
    help_text,
    parse_line,
    parse_spec_body,
    parse_train_line,
)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("", HelpArgs()),
        ("--help", HelpArgs()),
        ("-h", HelpArgs()),
        ("help demo", HelpArgs(topic="demo")),
        ("demo --help", HelpArgs(topic="demo")),
        ("train -h", HelpArgs(topic="train")),
        ("demo", DemoArgs()),
        ("demo --sites 4 --dataset breast_cancer --non-iid 0.5", DemoArgs(4, "breast_cancer", 0.5)),
        ("demo --as r2", DemoArgs(var="r2")),
        ("demo --state-dir '/tmp/my room'", DemoArgs(state_dir="/tmp/my room")),
        ("connect ws://h:1 --key 'my key.pem'", ConnectArgs("ws://h:1", "my key.pem")),
        (
            "connect ws://h:1 --key k --coordinator-key room-manifest.json",
            ConnectArgs("ws://h:1", "k", coordinator_key="room-manifest.json"),
        ),
        ("connect wss://h:1 --key k --tls-ca ca.pem", ConnectArgs("wss://h:1", "k", tls_ca="ca.pem")),
        ("sites", SimpleArgs("sites")),
        ("runs", SimpleArgs("runs")),
        ("budget", SimpleArgs("budget")),
        ("launch", SimpleArgs("launch")),
        ("stop", SimpleArgs("stop")),
        ("audit", AuditArgs()),
        ("audit --last 5", AuditArgs(last=5)),
        ("watch run-3", WatchArgs("run-3")),
        ("watch run-3 --as r3", WatchArgs("run-3", var="r3")),
    ],
)
def test_parse_line(line, expected):
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line, match",
    [
        ("fly", "unknown command 'fly'"),
        ("demo --sites 0", "positive integer"),
        ("demo --sites two", "positive integer"),
        ("demo --dataset cifar", "invalid choice"),
        ("demo --non-iid -1", "positive number"),
        ("demo --as 1x", "variable name"),
        ("demo --frobnicate", "unrecognized arguments"),
        ("connect ws://h:1", "--key"),
        ("connect --key k", "url"),
        ("audit --last 0", "positive integer"),
        ("watch", "run_id"),
        ("sites extra", "takes no arguments"),
        ("train --rounds 3", "cell magic"),
        ("demo --dataset 'unclosed", "cannot parse"),
    ],
)
def test_parse_line_errors_are_one_line(line, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_line(line)
    assert "\n" not in info.value.message


def test_parse_train_line_keeps_only_what_was_set():
    assert parse_train_line("") == TrainArgs(options={})
    parsed = parse_train_line(
        "train --rounds 3 --target-epsilon 2.5 --delta 1e-6 --clip-norm 0.5 --aggregator mean "
        "--secure-aggregation --batch-size 16 --local-steps 4 --learning-rate 0.2 --server-optimizer fedadam "
        "--server-learning-rate 0.01 --min-sites 2 --round-timeout 30 --seed 7 --as r --no-dashboard"
    )
    assert parsed.options == {
        "rounds": 3,
        "target_epsilon": 2.5,
        "delta": 1e-6,
        "clip_norm": 0.5,
        "aggregator": "mean",
        "secure_aggregation": True,
        "batch_size": 16,
        "local_steps": 4,
        "learning_rate": 0.2,
        "server_optimizer": "fedadam",
        "server_learning_rate": 0.01,
        "min_sites": 2,
        "round_timeout": 30.0,
        "seed": 7,
    }
    assert parsed.var == "r" and parsed.dashboard is False
    assert parse_train_line("--help") == HelpArgs(topic="train")
    assert parse_train_line("--noise-multiplier 1.1").options == {"noise_multiplier": 1.1}
    assert parse_train_line("--min-sites none --no-secure-aggregation").options == {
        "secure_aggregation": False,
        "min_sites": None,
    }


def test_train_magic_accepts_exactly_runconfigs_options_with_its_defaults():
    """The parser is generated from RunConfig: a flag per field, each parsing RunConfig's default back."""
    from fedjax_room.jupyter.args import _build
    from fedjax_room.protocol.config import RunConfig, run_options

    dests = {a.dest for a in _build("train")._actions} - {"var", "dashboard"}
    assert dests == {o.name for o in run_options()}
    tokens = []
    for o in run_options():
        if o.type == "bool":
            tokens.append(o.flag if o.default else "--no-" + o.flag[2:])
        else:
            tokens += [o.flag, "none" if o.default is None else str(o.default)]
    options = parse_train_line(" ".join(tokens)).options
    assert options == RunConfig().to_dict()
    assert RunConfig.from_dict(options) == RunConfig()


@pytest.mark.parametrize(
    "line, match",
    [
        ("--rounds 0", r"rounds must be an integer in \[1, 1000\]"),
        ("--rounds two", "rounds must be an integer"),
        ("--target-epsilon nan", "finite number"),
        ("--target-epsilon -3", r"outside this room's bounds \[0.01, 50\]"),
        ("--delta 1", "delta = 1 is outside"),
        ("--exclude-below 0", "exclude_below must be positive"),
        ("--server-optimizer adam", "invalid choice"),
        ("--aggregator mode", "invalid choice"),
        ("--secure-aggregation yes", "unrecognized arguments"),
        ("--round 3", "%%room train: unrecognized arguments: --round"),  # no abbreviations
    ],
)
def test_parse_train_line_errors(line, match):
    with pytest.raises(ConfigError, match=match):
        parse_train_line(line)


def test_spec_body_yaml_and_json_agree():
    yaml_body = """
    family: mlp
    input_shape: [64]
    num_classes: 10
    layers:
      - {type: dense, features: 32}
      - {type: relu}
      - {type: dense, features: 10}
    """
    json_body = (
        '{"family": "mlp", "input_shape": [64], "num_classes": 10, "layers": '
        '[{"type": "dense", "features": 32}, {"type": "relu"}, {"type": "dense", "features": 10}]}'
    )
    import textwrap

    a = parse_spec_body(textwrap.dedent(yaml_body))
    b = parse_spec_body(json_body)
    assert a == b and a.hash == b.hash and a.family == "mlp"


@pytest.mark.parametrize(
    "body, match",
    [
        ("", "needs a model spec"),
        ("   \n", "needs a model spec"),
        ("# only a comment\n", "needs a model spec"),
        ("family: [unclosed", "neither valid YAML nor JSON"),
        ("- 1\n- 2", "must be a mapping"),
        ("!!python/object:os.system {}", "neither valid YAML nor JSON"),
        ('{"family": "rnn", "input_shape": [4], "num_classes": 2, "layers": []}', "unknown model family"),
        ("family: logistic\ninput_shape: [4]\nnum_classes: 2\nlayers: [{type: dense, features: 3}]", "last layer"),
        ("family: logistic\nwhen: 2024-01-01\n", "not plain data"),
    ],
)
def test_spec_body_errors(body, match):
    with pytest.raises(ModelSpecError, match=match):
        parse_spec_body(body)


def test_help_mentions_every_command():
    text = help_text()
    for name in COMMANDS:
        assert name in text
    assert "--target-epsilon" in help_text("train") and "model spec" in help_text("train")
    assert "--sites" in help_text("demo") and "--key" in help_text("connect")
    with pytest.raises(ConfigError):
        help_text("nope")


def test_choices_are_the_rooms_own():
    from fedjax_room.data import BUILTIN_DATASETS
    from fedjax_room.jupyter.args import AGGREGATORS, DATASETS, SERVER_OPTIMIZERS
    from fedjax_room.protocol import config

    assert set(DATASETS) == set(BUILTIN_DATASETS)
    assert AGGREGATORS == config.AGGREGATORS and SERVER_OPTIMIZERS == config.SERVER_OPTIMIZERS
