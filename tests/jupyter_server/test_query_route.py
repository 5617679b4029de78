"""POST /fedjax-room/rooms/<id>/query: a body is checked before the room is asked; a bad one is a typed 400.

The room here is a stand-in that records what reached it (a unit test of the route); test_query_real.py runs
the same route against a real demo room.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from tornado.httpclient import HTTPClientError

from fedjax_room.errors import BudgetExceededError
from fedjax_room.jupyter.server.registry import MAX_QUERY_LIST, query_keywords


class Result:
    kind, feature, epsilon, labels = "count_by_label", None, 0.5, ["0", "1"]
    total = np.array([10.0, 20.0])
    per_site = {"north": np.array([4.0, 9.0]), "south": np.array([6.0, 11.0])}

    def ci(self, level: float = 0.95):
        half = 3.0 if level > 0.9 else 1.0
        return self.total - half, self.total + half

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature": self.feature,
            "epsilon": self.epsilon,
            "labels": self.labels,
            "total": self.total,
            "per_site": self.per_site,
            "noise_std": np.array([1.5, float("nan")]),  # a NaN must reach the browser as null
        }


class QueryRoom:
    """Records each ``query`` call; raises ``fail`` if set."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail: Exception | None = None

    def query(self, kind: str, feature: str | None = None, **keywords: Any) -> Result:
        self.calls.append({"kind": kind, "feature": feature, **keywords})
        if self.fail is not None:
            raise self.fail
        return Result()

    def budget(self) -> dict[str, Any]:
        return {"north": {"epsilon_spent": 0.5, "epsilon_cap": 10.0}}


@pytest.fixture
def room(registry):
    assert registry.start_demo(2, "digits", None)["id"] == "room-1"
    stand_in = QueryRoom()
    registry.get("room-1").room = stand_in
    return stand_in


async def post(jp_fetch, body: Any, room_id: str = "room-1"):
    raw = body if isinstance(body, str) else json.dumps(body)
    response = await jp_fetch("fedjax-room", "rooms", room_id, "query", method="POST", body=raw)
    return response.code, json.loads(response.body)


async def refused(jp_fetch, body: Any, room_id: str = "room-1"):
    with pytest.raises(HTTPClientError) as info:
        await post(jp_fetch, body, room_id)
    return info.value.code, json.loads(info.value.response.body)


async def test_a_query_answers_the_result_with_its_interval(jp_fetch, room):
    code, data = await post(jp_fetch, {"kind": "count_by_label", "epsilon": 0.5, "sites": ["north"], "level": 0.5})
    assert code == 200
    assert room.calls == [{"kind": "count_by_label", "feature": None, "epsilon": 0.5, "sites": ["north"]}]
    assert data["total"] == [10.0, 20.0] and data["per_site"]["south"] == [6.0, 11.0]
    assert data["ci"] == {"level": 0.5, "lo": [9.0, 19.0], "hi": [11.0, 21.0]}
    assert data["noise_std"] == [1.5, None]


async def test_bad_bodies_are_typed_400s_and_never_reach_the_room(jp_fetch, room):
    bad = [
        ({"kind": "count", "epsilon": float("nan")}, "finite number"),  # NaN is valid Python JSON, not a number
        ({"kind": "histogram", "feature": "x", "epsilon": 1, "bins": list(range(MAX_QUERY_LIST + 1))}, "at most"),
        ({"kind": "mean", "feature": "x", "epsilon": 1, "bounds": [0, float("inf")]}, "finite"),
        ({"kind": "mean", "feature": "x", "epsilon": 1, "bounds": "0,1"}, "list"),
        ({"kind": "count", "epsilon": True}, "finite number"),
        ({"kind": "count"}, "'epsilon' is required"),
        ({"epsilon": 1}, "'kind' is required"),
        ({"kind": "count", "epsilon": 1, "sql": "DROP TABLE"}, "unknown query field"),
        ({"kind": "count", "epsilon": 1, "secure": "yes"}, "true or false"),
        ({"kind": "count", "epsilon": 1, "keys": [{"a": 1}], "by": "sex"}, "strings or whole numbers"),
        ({"kind": "count", "epsilon": 1, "level": 1.0}, "confidence level"),
        ({"query": "count epsilon=1", "kind": "count"}, "not both"),
        ({"query": "x" * 5000}, "at most"),
        ([1, 2], "JSON object"),
        ("not json", "not JSON"),
    ]
    for body, message in bad:
        code, error = await refused(jp_fetch, body)
        assert code == 400 and error["code"] == "config", (body, error)
        assert message in error["message"] and "\n" not in error["message"], (body, error)
    assert room.calls == []
    code, error = await refused(jp_fetch, {"kind": "count", "epsilon": 1}, room_id="room-9")
    assert code == 404


async def test_a_refusal_is_the_rooms_typed_reason(jp_fetch, room):
    room.fail = BudgetExceededError("site north would spend epsilon 10.5 > cap 10")
    code, error = await refused(jp_fetch, {"kind": "count", "epsilon": 1})
    assert code == 400 and error == {
        "code": "budget_exceeded",
        "message": "site north would spend epsilon 10.5 > cap 10",
    }


def test_query_keywords_types_what_it_passes_on():
    keywords, level = query_keywords(
        {"kind": "mean", "feature": "age", "epsilon": 1, "bounds": [0, 100], "by": "sex", "keys": [0, "1"]}
    )
    assert keywords == {
        "kind": "mean",
        "feature": "age",
        "epsilon": 1.0,
        "bounds": [0.0, 100.0],
        "by": "sex",
        "keys": [0, "1"],
    }
    assert level == 0.95 and all(not isinstance(v, float) or math.isfinite(v) for v in keywords.values())
