"""Every notebook in notebooks/ is committed clean and runs unattended under papermill.

The papermill runs need the real room (``fedjax_room.sim.demo``); their parameters are small so
the three together stay within a few minutes on two cores. Each notebook's last cells assert what it
claims (the run finished, an accuracy or average-precision floor, epsilon within the target).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

#: Small parameters per notebook (rounds, epsilon, sites, and the claim's floor).
SMALL = {
    "quickstart.ipynb": {"rounds": 2, "epsilon": 3.0, "sites": 2, "accuracy_floor": 0.6},
    "hospitals.ipynb": {"rounds": 2, "epsilon": 2.0, "sites": 4, "accuracy_floor": 0.6},
    "fraud.ipynb": {"rounds": 2, "epsilon": 3.0, "sites": 2, "average_precision_floor": 0.15},
}


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_is_listed_here():
    assert sorted(p.name for p in _notebooks()) == sorted(SMALL)


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_committed_without_outputs_and_with_parameters(path):
    book = json.loads(path.read_text())
    code = [c for c in book["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), "clear the outputs"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    names = {
        target.id
        for node in ast.parse("".join(params[0]["source"])).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert {"rounds", "epsilon", "sites"} <= names and set(SMALL[path.name]) <= names
    sources = ["".join(c["source"]) for c in code]
    assert sources[-1].strip() == "%room stop" and "assert" in sources[-2]
    assert any(s.startswith("%load_ext fedjax_room") for s in sources)
    assert book["metadata"]["kernelspec"]["name"] == "fedjax-room"  # opens on the Clean Room kernel


def _room_available() -> bool:
    try:
        return importlib.util.find_spec("fedjax_room.sim.demo") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _room_available(), reason="needs the embedded room (fedjax_room.sim.demo)")
@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs_under_papermill(name, tmp_path, monkeypatch):
    repo = str(NOTEBOOKS.parent)  # the kernel imports this checkout, installed or not
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the demo room's state (and process arguments) live here
    try:
        _execute(name, tmp_path)
    finally:
        _stop_room_processes(tmp_path)


def _stop_room_processes(tmp_path: Path) -> None:
    """End room processes this test's kernel started and left behind (a failing notebook skips `%room stop`)."""
    marker = os.path.join(str(tmp_path), "").encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"fedjax_room" in cmdline and marker in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGTERM)


def _execute(name: str, tmp_path: Path) -> None:
    import papermill

    output = tmp_path / name
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(output),
        parameters=SMALL[name],
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
        execution_timeout=300,
    )
    book = json.loads(output.read_text())
    errors = [o for c in book["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
