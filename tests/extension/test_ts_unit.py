"""The sidebar's TypeScript: its unit tests (jest, under jsdom) and its lint (prettier + eslint) pass.

CI runs only pytest; ``pip install -e .[dev]`` runs ``npm install`` in extension/ (hatch-jupyter-builder),
which installs jest, ts-jest, eslint and prettier from extension/package.json. Skips only when node/npm
are missing; a missing ``npm install`` fails with what to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

EXTENSION = Path(__file__).resolve().parents[2] / "extension"

if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip(
        "node and npm are needed for the extension's tests (they build the labextension)", allow_module_level=True
    )


def _npm(*args: str) -> subprocess.CompletedProcess[str]:
    bins = EXTENSION / "node_modules" / ".bin"
    if not (bins / "jest").exists() or not (bins / "eslint").exists():
        pytest.fail(f"the extension's dev dependencies are not installed: run `npm install` in {EXTENSION}")
    env = {**os.environ, "CI": "1", "FORCE_COLOR": "0"}
    return subprocess.run(
        ["npm", "run", "--silent", *args],
        cwd=EXTENSION,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_renderer_unit_tests_pass() -> None:
    done = _npm("test", "--", "--ci")
    assert done.returncode == 0, f"jest failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    assert "Tests:" in done.stderr + done.stdout and "failed" not in (done.stderr + done.stdout).split("Tests:")[1]


def test_lint_check_passes() -> None:
    done = _npm("lint:check")
    assert done.returncode == 0, f"npm run lint:check failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
