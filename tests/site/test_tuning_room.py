"""``room.tune`` on a real room (LoopbackRoom: the real coordinator and site machines and agents) whose site accounts
tuning by private selection: the coordinator's drawn number of trials ends the session, the best trial is returned,
and the site's ledger holds one charge for the whole session, Papernot & Steinke's bound, and nothing per trial."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest
from dp_accounting import pld

from fedjax_room.analyst.tune import tune
from fedjax_room.data import load_builtin
from fedjax_room.dp.accounting import event_from_dict
from fedjax_room.dp.selection import selection_bound
from fedjax_room.models import logistic
from fedjax_room.protocol.tuning import TuneDraws
from fedjax_room.sim import LoopbackRoom

SPEC = logistic([64], 10)
RUN = {"rounds": 2, "local_steps": 3, "batch_size": 32, "target_epsilon": 1.0, "secure_aggregation": False}


class _Fixed(random.Random):
    def random(self) -> float:
        return 0.8  # geometric of mean 2: P(K<=2) = 0.75, P(K<=3) = 0.875: three trials


@dataclasses.dataclass
class _Run:
    id: str
    status: str
    error: Any
    history: list[Any]
    config: dict[str, Any]

    def wait(self, timeout: float | None = None) -> _Run:
        return self


class _Analyst:
    """What room.tune needs of a room (``train``), over the loopback room's analyst connection."""

    def __init__(self, room: LoopbackRoom) -> None:
        self.room = room

    def train(self, spec: Any, /, **options: Any) -> _Run:
        run_id = self.room.start(spec, options)
        snap = self.room.snapshot(run_id)
        rows = [type("Round", (), {"accuracy": r["accuracy"], "loss": r["loss"]}) for r in snap["history"]]
        return _Run(run_id, snap["status"], snap["error"], rows, snap["config"])


@pytest.mark.slow  # three trials of two rounds on one site
def test_a_private_tuning_session_is_charged_once_and_returns_the_best_trial(tmp_path):
    data = load_builtin("digits")
    train, heldout = np.array_split(np.arange(len(data)), 2)
    policy = {"epsilon_cap": 10.0, "tuning_selection": "private"}
    room = LoopbackRoom(tmp_path, {"site-a": (data.subset(train), data.subset(heldout), policy)}, seed=1)
    room.coord._tune_draws = TuneDraws(_Fixed(0))
    result = tune(_Analyst(room), SPEC, {"learning_rate": [0.1, 0.3, 1.0]}, trials=2, seed=0, **RUN)
    trials = [r.id for r in room.store.runs()]
    assert len(trials) == 3 and result.run.id in trials  # the fourth trial was refused: tune_done
    assert result.trials == 2 and result.shape == 1.0 and result.value is not None
    assert result.config["learning_rate"] in (0.1, 0.3, 1.0)
    assert any("tune_session_drawn" == r["kind"] for r in room.audit.records)
    ledger = room.sites["site-a"]["agent"].ledger
    record = ledger.session(result.session)
    assert record["mode"] == "private" and record["runs"] == trials
    bound = selection_bound(event_from_dict(record["event"]), 2.0, 1.0, 1e-5)
    assert record["charge"]["epsilon"] == pytest.approx(bound["epsilon"])
    charge = pld.privacy_loss_distribution.from_privacy_parameters(
        pld.common.DifferentialPrivacyParameters(bound["epsilon"], bound["delta"]), value_discretization_interval=1e-3
    )
    assert ledger.epsilon() == pytest.approx(charge.get_epsilon_for_delta(1e-5), rel=1e-9)  # one charge, no more
    assert {t.split("/")[0] for t in ledger.tags} == set(trials)  # every trial's release recorded ...
    assert all(e == {"type": "no_op"} for e in ledger.events)  # ... with nothing composed for it
    assert room.snapshot(result.run.id)["privacy"]["site-a"]["epsilon"] == pytest.approx(bound["epsilon"])
