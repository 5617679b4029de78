"""``evaluate`` (what ``run.evaluate`` runs) against a hand count, on arrays, datasets, .npz and .csv files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedjax_room.analyst.evaluate import Evaluation, evaluate, labelled_data, metrics
from fedjax_room.errors import ConfigError, DataError
from fedjax_room.models import logistic

pytest.importorskip("jax")

# a 3-class "model" on 2 features whose logits are the features themselves plus a constant third class:
# class 0 wins when x0 > max(x1, 0.5), class 1 when x1 > max(x0, 0.5), class 2 otherwise
SPEC3 = logistic([2], 3)
PARAMS3 = {
    "dense_0": {"kernel": np.array([[1, 0, 0], [0, 1, 0]], np.float32), "bias": np.array([0, 0, 0.5], np.float32)}
}
X3 = np.array([[2, 0], [0, 2], [0, 0], [3, 1], [1, 3], [0.1, 0.2], [2, 1], [0, 0]], np.float32)
Y3 = np.array([0, 1, 2, 1, 1, 0, 0, 2])
# predicted:    0  1  2  0  1  2  0  2


def test_accuracy_loss_and_confusion_match_a_hand_count():
    ev = evaluate(SPEC3, PARAMS3, (X3, Y3))
    assert isinstance(ev, Evaluation) and ev.n == 8
    assert ev.accuracy == 6 / 8  # wrong: example 3 (true 1, said 0) and example 5 (true 0, said 2)
    assert ev.confusion == ((2, 0, 1), (1, 2, 0), (0, 0, 2))
    logits = X3 @ PARAMS3["dense_0"]["kernel"] + PARAMS3["dense_0"]["bias"]
    by_hand = -np.mean([logits[i, y] - math.log(np.exp(logits[i]).sum()) for i, y in enumerate(Y3)])
    assert ev.loss == pytest.approx(by_hand, rel=1e-6)
    assert ev.roc is None and ev.pr is None and ev.roc_auc is None  # curves only for two classes
    per_class = {r["class"]: r for r in ev.per_class()}
    assert per_class["0"]["precision"] == 2 / 3 and per_class["0"]["recall"] == 2 / 3
    assert per_class["2"]["precision"] == 2 / 3 and per_class["2"]["recall"] == 1.0
    html = ev._repr_html_()
    assert "Confusion matrix" in html and "<svg" not in html
    assert ev.to_dict()["confusion"] == [[2, 0, 1], [1, 2, 0], [0, 0, 2]]
    assert "Confusion matrix" in str(ev)


def test_binary_roc_and_pr_match_a_hand_count_and_sklearn():
    spec = logistic([1], 2)
    params = {"dense_0": {"kernel": np.array([[-1.0, 1.0]], np.float32), "bias": np.array([0.55, -0.55], np.float32)}}
    # score order (high to low): 0.9(1) 0.8(0) 0.7(1) 0.4(0) 0.3(1) 0.1(0)
    x = np.array([[0.9], [0.8], [0.7], [0.4], [0.3], [0.1]], np.float32)
    y = np.array([1, 0, 1, 0, 1, 0])
    ev = evaluate(spec, params, (x, y))
    # ROC points: (0,0) (0,1/3) (1/3,1/3) (1/3,2/3) (2/3,2/3) (2/3,1) (1,1): area = 1/3*1/3 + 1/3*2/3 + 1/3*1 = 2/3
    assert ev.roc_auc == pytest.approx(2 / 3)
    assert ev.roc.x == pytest.approx((0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1))
    # AP: positives at ranks 1, 3, 5 -> (1/3)(1/1 + 2/3 + 3/5)
    assert ev.average_precision == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert ev.accuracy == 4 / 6  # log-odds 2x - 1.1 > 0: says 1 for 0.9, 0.8, 0.7
    assert ev.confusion == ((2, 1), (1, 2))
    html = ev._repr_html_()
    assert html.count("<svg") == 2 and "ROC (AUC 0.6667)" in html and "<polyline" in html
    sklearn = pytest.importorskip("sklearn.metrics")
    score = 1 / (1 + np.exp(-(2 * x[:, 0] - 1.1)))  # softmax of (0.55 - x, x - 0.55): the positive class's probability
    assert ev.roc_auc == pytest.approx(sklearn.roc_auc_score(y, score))
    assert ev.average_precision == pytest.approx(sklearn.average_precision_score(y, score))
    flipped = evaluate(spec, params, (x, y), positive=0)
    assert flipped.roc_auc == pytest.approx(2 / 3)  # class 0 ranked by its own probability


def test_ties_and_one_class():
    ev = metrics(np.array([[0.0, 1.0]] * 4), np.array([1, 0, 1, 0]))
    assert ev.roc_auc == 0.5 and ev.average_precision == 0.5  # one tied score: the chance line
    only_negatives = metrics(np.array([[1.0, 0.0]] * 3), np.array([0, 0, 0]))
    assert only_negatives.roc is None and only_negatives.pr is None and only_negatives.accuracy == 1.0


def test_npz_csv_and_dataset_inputs_agree(tmp_path):
    want = evaluate(SPEC3, PARAMS3, (X3, Y3))
    np.savez(tmp_path / "eval.npz", x=X3, y=Y3)
    assert evaluate(SPEC3, PARAMS3, tmp_path / "eval.npz") == want
    assert evaluate(SPEC3, PARAMS3, {"x": X3, "y": Y3}) == want

    class Data:
        x, y, classes = X3, Y3, ("cat", "dog", "fish")

    named = evaluate(SPEC3, PARAMS3, Data())
    assert named.classes == ("cat", "dog", "fish") and named.confusion == want.confusion
    from fedjax_room.data import Dataset

    schema = {"features": ["a", "b"], "label": "kind", "classes": ["cat", "dog", "fish"]}
    dataset = evaluate(SPEC3, PARAMS3, Dataset(X3, Y3.astype(np.int32), schema))
    assert dataset.classes == ("cat", "dog", "fish") and dataset.confusion == want.confusion

    rows = ["a,b,label"] + [f"{a},{b},{['cat', 'dog', 'fish'][c]}" for (a, b), c in zip(X3, Y3, strict=True)]
    (tmp_path / "eval.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="classes="):
        evaluate(SPEC3, PARAMS3, str(tmp_path / "eval.csv"))
    from_csv = evaluate(SPEC3, PARAMS3, tmp_path / "eval.csv", classes=["cat", "dog", "fish"])
    assert from_csv.confusion == want.confusion and from_csv.accuracy == want.accuracy
    (tmp_path / "eval.csv.schema.json").write_text(json.dumps({"label": "label", "classes": ["cat", "dog", "fish"]}))
    assert evaluate(SPEC3, PARAMS3, tmp_path / "eval.csv").confusion == want.confusion  # the sidecar's class list

    stored = {"features": ["a", "b"], "feature_shape": [2], "label": "kind", "classes": ["cat", "dog", "fish"]}
    np.savez(tmp_path / "s.npz", x=X3, kind=np.array(["cat", "dog", "fish"])[Y3], schema=np.array(json.dumps(stored)))
    assert evaluate(SPEC3, PARAMS3, tmp_path / "s.npz").confusion == want.confusion


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ((X3, Y3[:5]), "labels"),
        ((X3[:, :1], Y3), "input_shape"),
        ((X3, Y3 + 5), "not a class index"),
        ((X3, Y3 - 0.5), "whole class indices"),
        ((np.full_like(X3, np.nan), Y3), "NaN"),
        (42, "cannot evaluate"),
        ("data.parquet", ".npz or .csv"),
    ],
)
def test_bad_data_gets_a_typed_error(data, match):
    with pytest.raises(DataError, match=match):
        labelled_data(data, SPEC3)


def test_bad_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        evaluate(SPEC3, PARAMS3, tmp_path / "bad.npz")
    (tmp_path / "short.csv").write_text("a,b,label\n1,2\n")
    with pytest.raises(DataError, match="2 values for 3 columns"):
        evaluate(SPEC3, PARAMS3, tmp_path / "short.csv")
    with pytest.raises(DataError, match="cannot read"):
        evaluate(SPEC3, PARAMS3, tmp_path / "absent.csv")
    with pytest.raises(ConfigError, match="2 classes given"):
        evaluate(SPEC3, PARAMS3, (X3, Y3), classes=["a", "b"])
