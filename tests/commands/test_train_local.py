import json

import pytest

from fedjax_room.cli import main

# Measured (seeds 0, 1, 2; 15 epochs, defaults): DP test accuracy 0.936 / 0.930 / 0.933 at epsilon 3,
# non-private baseline 0.969 / 0.978 / 0.972.
DP_FLOOR = 0.90
BASELINE_FLOOR = 0.95


@pytest.mark.slow
def test_train_local_digits_reaches_floor_within_budget(capsys):
    rc = main(["train-local", "--dataset", "digits", "--target-epsilon", "3", "--epochs", "15", "--seed", "0",
               "--json"])  # fmt: skip
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["epsilon"] <= 3.0 and data["epsilon"] > 2.97
    assert data["test_accuracy"] >= DP_FLOOR
    assert data["baseline_accuracy"] >= BASELINE_FLOOR
    assert data["model"] == "mlp" and data["steps"] == round(15 / data["sampling_rate"])
    assert data["num_train"] + data["num_test"] == 1797


def test_train_local_text_output_small(capsys):
    rc = main(["train-local", "--dataset", "breast_cancer", "--model", "logistic", "--epochs", "2",
               "--target-epsilon", "2", "--delta", "1e-3", "--no-baseline"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "DP test accuracy" in captured.out and "epsilon spent" in captured.out
    assert "baseline" not in captured.out


@pytest.mark.slow
def test_train_local_cnn_reshapes_digits(capsys):
    rc = main(["train-local", "--dataset", "digits", "--model", "cnn", "--epochs", "1", "--no-baseline", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "cnn" and data["epsilon"] <= 3.0


def test_train_local_errors(capsys, tmp_path):
    assert main(["train-local", "--dataset", "nonexistent.csv", "--epochs", "1"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["train-local", "--dataset", "breast_cancer", "--model", "cnn", "--epochs", "1"]) == 2
    assert "not a square" in capsys.readouterr().err
    assert main(["train-local", "--dataset", "digits", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_train_local_from_file(tmp_path, capsys):
    from fedjax_room.data import load_builtin, save_dataset

    path = tmp_path / "bc.parquet"
    save_dataset(load_builtin("breast_cancer"), path)
    rc = main(["train-local", "--dataset", str(path), "--model", "logistic", "--epochs", "1", "--delta", "1e-3",
               "--no-baseline", "--json"])  # fmt: skip
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_train"] + data["num_test"] == 569 and data["epsilon"] <= 3.0
