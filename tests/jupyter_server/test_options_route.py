"""GET /fedjax-room/options serves RunConfig's schema; POST .../runs accepts exactly those options."""

from __future__ import annotations

import json

from fedjax_room.data.builtin import BUILTIN_DATASETS
from fedjax_room.jupyter.server.registry import TRAIN_OPTIONS
from fedjax_room.models.from_schema import FAMILIES
from fedjax_room.protocol.config import RunConfig, options_schema, run_options


async def _json(jp_fetch, *parts, method="GET", body=None):
    kwargs = {"method": method}
    if method == "POST":
        kwargs["body"] = json.dumps(body or {})
    response = await jp_fetch("fedjax-room", *parts, **kwargs)
    return response.code, json.loads(response.body)


async def test_options_route_is_runconfigs_schema_with_the_datasets(jp_fetch, registry):
    code, doc = await _json(jp_fetch, "options")
    assert code == 200
    assert doc["options"] == json.loads(json.dumps(options_schema()["options"]))
    assert [o["name"] for o in doc["options"]] == [o.name for o in run_options()]
    assert doc["datasets"] == list(BUILTIN_DATASETS) and doc["families"] == list(FAMILIES)
    assert doc["version"] == 1 and doc["one_of"] == [["target_epsilon", "noise_multiplier"]]


async def test_runs_route_accepts_exactly_runconfigs_options_with_its_defaults(jp_fetch, registry):
    assert TRAIN_OPTIONS == {o.name: o.python_type for o in run_options()}
    await _json(jp_fetch, "rooms", "demo", method="POST", body={})
    defaults = {k: v for k, v in RunConfig().to_dict().items() if v is not None}  # null means "not given"
    code, _ = await _json(jp_fetch, "rooms", "room-1", "runs", method="POST", body={"model": "logistic", **defaults})
    assert code == 201
    fake_run = registry.get("room-1").room.runs_[-1]
    assert fake_run.kwargs == defaults
    assert RunConfig.from_dict(fake_run.kwargs) == RunConfig()
    # the options %%room train could not set before are accepted here too
    extra = {"exclude_below": 0.5, "secagg_range": 2.0, "site_clip_norm": 0.5}
    await _json(jp_fetch, "rooms", "room-1", "runs", method="POST", body={"model": "mlp", "hidden": [8], **extra})
    fake_run = registry.get("room-1").room.runs_[-1]
    assert fake_run.kwargs == extra and fake_run.spec.num_classes == 10  # from the sites' schema
