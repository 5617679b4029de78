"""One default for secure aggregation everywhere (on wherever the run allows it), and one list of a run's
protections that every surface shows."""

from __future__ import annotations

import inspect

import pytest

from fedjax_room.errors import ConfigError
from fedjax_room.protocol.config import RunConfig, options_schema, protections


def test_secure_aggregation_is_on_unless_the_run_needs_each_update():
    assert RunConfig.from_dict({}).secure_aggregation is True
    assert RunConfig.from_dict({"aggregator": "mean"}).secure_aggregation is True
    assert RunConfig.from_dict({"site_noise_multiplier": 1.0}).secure_aggregation is True  # distributed DP needs it
    assert RunConfig.from_dict({"aggregator": "median"}).secure_aggregation is False  # a robust rule sees updates
    assert RunConfig.from_dict({"exclude_below": 0.5}).secure_aggregation is False
    assert RunConfig.from_dict({"secure_aggregation": False}).secure_aggregation is False  # asked for: plain
    resolved = RunConfig.from_dict({"aggregator": "krum"}).to_dict()
    assert RunConfig.from_dict(resolved).secure_aggregation is False  # resolved once, then explicit on the wire


def test_asking_for_secure_aggregation_with_a_robust_rule_is_one_typed_error():
    with pytest.raises(ConfigError, match="aggregator 'median' needs each site's update") as caught:
        RunConfig.from_dict({"aggregator": "median", "secure_aggregation": True})
    assert "turn secure aggregation off" in caught.value.message


def test_every_surface_reads_the_one_default():
    from fedjax_room.analyst.client import Room

    (option,) = [o for o in options_schema()["options"] if o["name"] == "secure_aggregation"]
    assert option["default"] is True and "unless a robust aggregator" in option["help"]  # sidebar, launch form
    assert inspect.signature(Room.train).parameters["secure_aggregation"].default is True  # room.train, %%room


def test_protections_say_what_the_coordinator_sees():
    secure = protections(RunConfig.from_dict({}))
    assert secure[0].startswith("secure aggregation") and "epsilon <= 3 per site" in secure[1]
    assert not any("anomaly" in p for p in secure)  # the coordinator sees no update to score
    plain = protections(RunConfig.from_dict({"aggregator": "median", "exclude_below": 0.5, "noise_multiplier": 2.0}))
    assert plain[0].startswith("no secure aggregation") and "noise multiplier 2" in plain[1]
    assert "robust aggregator median" in plain and "anomaly detection on every update" in plain
    assert "sites below trust 0.5 excluded" in plain
    ddp = protections(RunConfig.from_dict({"site_noise_multiplier": 1.5}))
    assert "distributed DP: site noise multiplier 1.5" in ddp
    assert protections({}) == []  # a run whose config is not known yet


def test_the_run_view_and_the_dashboard_show_them():
    from fedjax_room.analyst.events import StatusEvent
    from fedjax_room.analyst.views import run_html
    from fedjax_room.jupyter.dashboard import RunDashboard

    config = RunConfig.from_dict({"aggregator": "median"}).to_dict()
    page = run_html({"id": "run-1", "status": "finished", "config": config, "history": []})
    assert "protections: no secure aggregation" in page and "robust aggregator median" in page

    class Run:
        id, status = "run-2", "running"

        def __init__(self):
            self.config = RunConfig.from_dict({}).to_dict()

        def subscribe(self, callback, replay=False, kinds=None):
            if replay:
                callback(StatusEvent(run_id=self.id, status="running", rounds_done=0))
            return lambda: None

    dash = RunDashboard()
    dash.attach(Run())
    assert dash.protections == protections(RunConfig.from_dict({}))
    assert "protections: secure aggregation" in dash.to_html()
