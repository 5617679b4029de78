"""Code and markup injection: every room string is checked at decode, and generated code holds it as a literal.

A coordinator (or a site, through the coordinator) controls run ids, site names, reasons, messages and the
strings inside schemas and summaries. The attack of issue 14 section 3 put a newline and Python into a run id,
which the dashboard notebook wrote raw into a comment line; the sidebar runs every cell.
"""

from __future__ import annotations

import ast
import html
import types
import typing

import msgspec
import pytest

from fedjax_room.analyst import views as display
from fedjax_room.errors import ProtocolError
from fedjax_room.jupyter.server.notebook import dashboard_notebook, dashboard_source
from fedjax_room.protocol import messages as m
from fedjax_room.protocol.codec import pack
from fedjax_room.protocol.fields import is_id

CODE = "run-1\nimport os; os.system('touch /tmp/pwned')  # "
MARKUP = "<script>alert(1)</script>"
PAYLOADS = [CODE, "x'); __import__('os').system('id'); ('", MARKUP, "run 1", "\x1b[2Jrun", "", "a" * 65, "é"]


def frame(cls: type, **fields) -> bytes:
    """A frame as a hostile peer would write it: packed directly, no encode-side checks."""
    body = {"v": m.VERSION, "t": cls.TYPE}
    for f in msgspec.structs.fields(cls):
        if f.name in fields:
            body[f.name] = fields[f.name]
        elif f.required:
            body[f.name] = {
                str: "ok",
                int: 1,
                float: 1.0,
                bytes: b"",
                dict: {},
                list: [],
                bool: False,
            }[_base(cls, f.name)]
    return pack(body)


def _base(cls: type, name: str) -> type:
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


ID_FIELDS = [
    (cls, f.name)
    for cls in m.MESSAGE_TYPES.values()
    for f in msgspec.structs.fields(cls)
    if f.name in ("run_id", "room_id") or (cls.TYPE in ("hello", "welcome") and f.name == "name")
]
WORD_FIELDS = [
    (cls, f.name)
    for cls in m.MESSAGE_TYPES.values()
    for f in msgspec.structs.fields(cls)
    if f.name in ("role", "code", "phase", "status", "kind") or (cls.TYPE == "error" and f.name == "reason")
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(("cls", "field"), ID_FIELDS, ids=[f"{c.TYPE}.{f}" for c, f in ID_FIELDS])
def test_every_id_field_refuses_injection(cls, field, payload):
    data = frame(cls, **{field: payload})
    optional_empty = payload == "" and (cls.TYPE, field) == ("hello", "name")
    if optional_empty:
        assert getattr(m.decode(data), field) == ""
        return
    with pytest.raises(ProtocolError, match=field):
        m.decode(data)


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if p])
@pytest.mark.parametrize(("cls", "field"), WORD_FIELDS, ids=[f"{c.TYPE}.{f}" for c, f in WORD_FIELDS])
def test_every_word_field_refuses_injection(cls, field, payload):
    with pytest.raises(ProtocolError, match=field):
        m.decode(frame(cls, **{field: payload}))


def test_valid_names_still_pass():
    for good in ("run-1", "site-a", "site_b.2", "0a1b2c3d4e5f6a7b", "A" * 64):
        assert is_id(good)
        assert m.decode(frame(m.RunEnd, run_id=good, status="finished", message="done")).run_id == good


def test_free_text_is_bounded_and_loses_control_characters():
    msg = m.decode(frame(m.Error, code="protocol", message="bad\x1b[31m thing\r\x00\nsecond line\x07"))
    assert msg.message == "bad[31m thing\nsecond line"
    with pytest.raises(ProtocolError, match="message"):
        m.decode(frame(m.Error, code="protocol", message="x" * 5000))


def test_nested_strings_are_cleaned_and_record_names_checked():
    schema = {"features": ["age\x1b[0m", "mean radius"], "label": "y\r", "classes": ["a\x00", "b"]}
    status = m.decode(frame(m.SiteStatus, schema=schema, record_count="~500\x08", policy={}, ledger={}))
    assert status.schema == {"features": ["age[0m", "mean radius"], "label": "y", "classes": ["a", "b"]}
    assert status.record_count == "~500"
    for payload in (CODE, MARKUP, "a b"):
        with pytest.raises(ProtocolError, match="runs_reply"):
            m.decode(frame(m.RunsReply, req=1, runs=[{"id": payload, "status": "finished", "waiting": []}]))
        with pytest.raises(ProtocolError, match="runs_reply"):
            m.decode(frame(m.RunsReply, req=1, runs=[{"id": "run-1", "waiting": [payload]}]))
        with pytest.raises(ProtocolError, match="sites_reply"):
            m.decode(frame(m.SitesReply, req=1, sites=[{"name": payload, "schema": {}}]))
        with pytest.raises(ProtocolError, match="run_event"):
            m.decode(frame(m.RunEvent, run_id="run-1", kind="refusal", data={"site": payload, "reason": "x"}))
        with pytest.raises(ProtocolError, match="run_snapshot"):
            m.decode(frame(m.RunSnapshot, req=1, run={"id": "run-1", "sites": [payload]}))
    with pytest.raises(ProtocolError, match="nest"):
        deep: dict = {}
        for _ in range(40):
            deep = {"x": deep}
        m.decode(frame(m.RunAccept, run_id="run-1", plan=deep))


def _cell_calls(source: str) -> tuple[list[ast.stmt], ast.Call, ast.Call]:
    tree = ast.parse(source)
    kinds = [ast.Import, ast.ImportFrom, ast.Assign, ast.Assign, ast.Expr]
    assert [type(s) for s in tree.body] == kinds, ast.dump(tree)
    imp, imp_from, attach, assign, expr = tree.body
    assert [a.name for a in imp.names] == ["fedjax_room"]
    assert imp_from.module == "fedjax_room.jupyter.server.notebook"
    assert [a.name for a in imp_from.names] == ["show_dashboard"]
    assert isinstance(expr.value, ast.Name) and expr.value.id == "dashboard"
    room_call, call = attach.value, assign.value
    assert isinstance(room_call, ast.Call) and ast.unparse(room_call.func) == "fedjax_room.attach"
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "show_dashboard"
    assert [ast.unparse(a) for a in call.args] == ["room"]
    for arg in [*room_call.args, *(k.value for k in call.keywords)]:
        assert isinstance(arg, ast.Constant), ast.dump(arg)  # only literals: nothing is evaluated
    return tree.body, room_call, call


@pytest.mark.parametrize("payload", [CODE, "x'); __import__('os').system('id'); ('", "a\rb", "run 1", MARKUP])
def test_notebook_refuses_a_hostile_run_id_or_room_id(payload):
    with pytest.raises(ProtocolError, match="run id"):
        dashboard_notebook("0123456789abcdef", payload)
    with pytest.raises(ProtocolError, match="room id"):
        dashboard_notebook(payload, "run-1")


@pytest.mark.parametrize(
    "label", ["Room ws://127.0.0.1:8765", "Room ws://h:1/\nimport os; os.system('id')  #", "x'); os.system('id'); ('"]
)
@pytest.mark.parametrize("room_id", ["room-1", "0123456789abcdef"])
@pytest.mark.parametrize("run_id", [None, "run-7"])
def test_notebook_cell_holds_room_strings_only_as_literals(label, room_id, run_id):
    nb = dashboard_notebook(room_id, run_id, label=label)
    source = nb["cells"][0]["source"]
    compile(source, "<cell>", "exec")  # it is valid Python
    _, room_call, call = _cell_calls(source)
    assert [a.value for a in room_call.args] == [room_id]
    assert [k.value.value for k in call.keywords] == ([run_id] if run_id else [])
    comment = source.splitlines()[0]
    assert comment.startswith("# Clean Room:") and len(source.splitlines()) == 7
    assert "key" not in source  # the notebook attaches by id: no key path is written into it


def test_the_generated_cell_runs_no_injected_code(tmp_path, monkeypatch):
    """Execute the cell with a stand-in room and dashboard: only those calls happen, with the strings as given."""
    import fedjax_room
    import fedjax_room.jupyter.server.notebook as nbmod

    calls = []
    monkeypatch.setattr(fedjax_room, "attach", lambda *a, **k: calls.append(("attach", a, k)) or "room")
    monkeypatch.setattr(nbmod, "show_dashboard", lambda *a, **k: calls.append(("show", a, k)) or "dash")
    marker = tmp_path / "pwned"
    label = f"Room ws://h:1/\nopen({str(marker)!r}, 'w').close()  #'); open({str(marker)!r}, 'w').close(); ('"
    source = dashboard_source("room-1", "run-1", label=label)
    namespace: dict = {}
    exec(compile(source, "<cell>", "exec"), namespace)
    assert not marker.exists() and namespace["dashboard"] == "dash"
    assert calls == [("attach", ("room-1",), {}), ("show", ("room",), {"run": "run-1"})]


def test_views_escape_every_room_string():
    """Whatever passes decode is still escaped when shown (HTML) in the analyst's notebook."""
    evil = MARKUP + '"><img src=x onerror=alert(1)>'
    sites = [{"name": evil, "schema": {"features": [evil], "label": evil, "classes": [evil]}, "status": evil}]
    runs = [{"id": evil, "status": evil, "rounds_done": 1, "rounds": 2}]
    refusals = [{"site": evil, "reason": evil, "message": evil, "round": 1}]
    audit = [{"index": 0, "time": evil, "writer": evil, "kind": evil, "fields": {"reason": evil}}]
    for out in (
        display.sites_html(sites),
        display.runs_html(runs),
        display.refusals_html(refusals),
        display.audit_html(audit),
    ):
        assert "<script>" not in out and "<img" not in out
        assert html.escape("<script>") in out


def test_a_name_the_protocol_would_refuse_cannot_be_enrolled(tmp_path):
    from fedjax_room.coordinator.store import Store
    from fedjax_room.errors import ConfigError

    store = Store.open(tmp_path)
    try:
        for bad in (CODE, MARKUP, "-site", "sïte", "a b", "a" * 65):
            with pytest.raises(ConfigError, match="ASCII"):
                store.enroll(bad, "site", b"k" * 32, "fp")
        store.enroll("site-a.1_x", "site", b"k" * 32, "fp")
    finally:
        store.close()


def test_the_analysts_audit_tail_and_a_tune_result_escape_what_the_coordinator_sent():
    """The audit tail without chain index (the analyst's view since hidden tuning trials) and the best trial that
    `%%room tune` binds and shows are the coordinator's words: escaped, whichever columns the view keeps."""
    from fedjax_room.analyst.tune import TuneResult
    from fedjax_room.jupyter.display import Table

    evil = MARKUP + '"><img src=x onerror=alert(1)>'
    tail = [{"time": evil, "writer": evil, "kind": evil, "fields": {"reason": evil}}]
    forged = [{"index": evil, "time": 1.0, "writer": "coordinator", "kind": "run_requested", "fields": {}}]
    best = TuneResult(
        session=1,
        trials=2,
        shape=1.0,
        metric=evil,
        value=0.9,
        config={"local_optimizer": evil, evil: 1},
        run=types.SimpleNamespace(id=evil),  # type: ignore[arg-type]
    )
    for out in (display.audit_html(tail), display.audit_html(forged), best._repr_html_()):
        assert "<script>" not in out and "<img" not in out
        assert html.escape("<script>") in out
    assert ">index<" not in display.audit_html(tail)  # no blank column to fill in later
    assert evil in Table(tail, "audit").to_text()  # plain text: shown as it is, nothing interprets it


@pytest.mark.parametrize("value", ["1e999", "-1e999", "NaN", "Infinity"])
def test_a_tune_search_of_non_finite_numbers_is_refused_before_the_room_is_asked(value):
    """`%%room tune --search learning_rate=1e999:...`: JSON turns it into inf (or NaN); the session is refused on
    the analyst's side, one line, and nothing is sent (room.tune checks it before its one request)."""
    from fedjax_room.analyst.tune import tune
    from fedjax_room.errors import ConfigError
    from fedjax_room.jupyter.args import parse_tune_line
    from fedjax_room.models import logistic

    parsed = parse_tune_line(f"--trials 2 --search learning_rate=0.1:{value}")
    asked: list[object] = []
    room = types.SimpleNamespace(_ask=lambda *a, **k: asked.append(a), run=lambda run_id: None)
    with pytest.raises(ConfigError, match="range of learning_rate") as info:
        tune(room, logistic([64], 10), parsed.space, trials=parsed.trials)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and asked == []
