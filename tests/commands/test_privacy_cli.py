import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedjax_room.cli import main
from fedjax_room.dp.accounting import epsilon

ROOT = Path(__file__).resolve().parents[2]


def test_epsilon_text(capsys):
    rc = main(["privacy", "epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "0.7", "--steps", "120",
               "--delta", "1e-5", "--accountant", "rdp"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "epsilon = 3.239" in out and "RDP" in out


def test_epsilon_json_has_result_and_inputs(capsys):
    rc = main(["privacy", "epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "0.7", "--steps", "120",
               "--delta", "1e-5", "--json"])  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["epsilon"] == pytest.approx(2.4612381, rel=1e-3)
    assert data == {**data, "sampling_rate": 0.01, "noise_multiplier": 0.7, "steps": 120, "delta": 1e-5,
                    "accountant": "pld"}  # fmt: skip


def test_noise_json(capsys):
    rc = main(["privacy", "noise", "--target-epsilon", "3", "--delta", "1e-5", "--sampling-rate", "0.02",
               "--steps", "500", "--json"])  # fmt: skip
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target_epsilon"] == 3.0 and data["steps"] == 500 and data["accountant"] == "pld"
    eps = epsilon(noise_multiplier=data["noise_multiplier"], sampling_rate=0.02, steps=500, delta=1e-5)
    assert 2.97 <= eps <= 3.0
    assert data["epsilon"] == pytest.approx(eps)


def test_bad_input_is_one_readable_line(capsys):
    rc = main(["privacy", "epsilon", "--sampling-rate", "1.5", "--noise-multiplier", "1", "--steps", "10",
               "--delta", "1e-5"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fedjax-room: error: sampling_rate must be in (0, 1]")


def test_missing_subcommand_is_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["privacy"])
    assert info.value.code == 2


def test_real_subprocess():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedjax_room",
            "privacy",
            "noise",
            "--target-epsilon",
            "1",
            "--delta",
            "1e-5",
            "--sampling-rate",
            "0.01",
            "--steps",
            "1000",
            "--accountant",
            "rdp",
            "--json",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert 0.99 <= data["epsilon"] <= 1.0
    assert data["noise_multiplier"] > 1.0
