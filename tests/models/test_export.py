"""Model files: export -> load predicts identically in both formats; a hostile file gets a typed error."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import zipfile

import numpy as np
import pytest

from fedjax_room.errors import ConfigError, DataError, ModelFileError, ModelSpecError
from fedjax_room.models import cnn, export_model, init_params, load, logistic, make_predict_fn, mlp, param_shapes
from fedjax_room.models.export import FORMAT, HEADER_KEY, LoadedModel
from fedjax_room.protocol.limits import RunLimits
from fedjax_room.tree import flatten_tree

jax = pytest.importorskip("jax")


def _model(spec, seed=0):
    return spec, init_params(spec, jax.random.PRNGKey(seed))


@pytest.mark.parametrize("suffix", [".msgpack", ".npz"])
@pytest.mark.parametrize(
    "spec", [logistic([6], 2), mlp([4, 3], 5, hidden=(7,)), cnn([8, 8, 1], 3, conv=((4, 3, 1),), dense=(5,))]
)
def test_round_trip_predicts_identically(tmp_path, spec, suffix):
    spec, params = _model(spec)
    x = np.random.default_rng(1).normal(size=(33, *spec.input_shape)).astype(np.float32)
    want = np.asarray(make_predict_fn(spec)(params, x))
    path = export_model(tmp_path / f"model{suffix}", spec, params, metadata={"run_id": "run-1", "epsilon": {"a": 1.5}})
    loaded = load(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.spec == spec and loaded.metadata == {"run_id": "run-1", "epsilon": {"a": 1.5}}
    assert np.array_equal(loaded.logits(x), want)  # bit for bit: the same float32 parameters, the same module
    assert np.array_equal(loaded.predict(x), want.argmax(1))
    proba = loaded.predict_proba(x)
    assert proba.shape == (33, spec.num_classes) and np.allclose(proba.sum(1), 1.0)
    assert np.array_equal(proba.argmax(1), want.argmax(1))
    flat = flatten_tree(loaded.params)
    assert {k: v.shape for k, v in flat.items()} == param_shapes(spec)
    assert not list(tmp_path.glob(".*partial"))  # written aside, then renamed into place


def test_param_shapes_are_the_modules(tmp_path):
    spec, params = _model(cnn([8, 8, 2], 4, conv=((3, 3, 1), (5, 3, 2)), dense=(6,)))
    assert param_shapes(spec) == {k: v.shape for k, v in flatten_tree(params).items()}


def test_defaults_are_the_analysts_run_limits():
    defaults = {k: p.default for k, p in inspect.signature(load).parameters.items()}
    limits = RunLimits()
    assert defaults["max_params"] == limits.max_params
    assert defaults["max_layers"] == limits.max_layers
    assert defaults["max_activations"] == limits.max_activations


def test_export_refuses_parameters_that_do_not_fit(tmp_path):
    spec, params = _model(logistic([6], 2))
    with pytest.raises(ModelFileError, match="shape"):
        export_model(tmp_path / "m.npz", spec, {"dense_0": {"kernel": np.zeros((5, 2)), "bias": np.zeros(2)}})
    with pytest.raises(ConfigError, match="suffix"):
        export_model(tmp_path / "m.pkl", spec, params)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ hostile files


def _npz(path, header, arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **{HEADER_KEY: np.frombuffer(json.dumps(header).encode(), np.uint8)}, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def _header(spec, **extra):
    return {"format": FORMAT, "version": 1, "spec": spec.to_json(), "metadata": {}, **extra}


def _good_arrays(spec):
    return {f"params/{k}": np.zeros(v, np.float32) for k, v in param_shapes(spec).items()}


def test_a_good_handmade_npz_loads(tmp_path):
    spec = logistic([6], 2)
    assert load(_npz(tmp_path / "m.npz", _header(spec), _good_arrays(spec))).spec == spec


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda h, a: a.update({"params/dense_0/kernel": np.zeros((5, 2), np.float32)}), ModelFileError, "shape"),
        (lambda h, a: a.pop("params/dense_0/bias"), ModelFileError, "missing"),
        (lambda h, a: a.update({"params/dense_9/kernel": np.zeros(2, np.float32)}), ModelFileError, "unexpected"),
        (lambda h, a: a.update({"other": np.zeros(2)}), ModelFileError, "unexpected array"),
        (lambda h, a: a.update({"params/dense_0/bias": np.zeros(2, np.int32)}), ModelFileError, "floating"),
        (lambda h, a: a.update({"params/dense_0/bias": np.array([np.nan, 0], np.float32)}), ModelFileError, "NaN"),
        (lambda h, a: h.update({"format": "something-else"}), ModelFileError, "not a fedjax-room model"),
        (lambda h, a: h.update({"version": 99}), ModelFileError, "version"),
        (lambda h, a: h.update({"spec": "{not json"}), ModelFileError, "not JSON"),
        (lambda h, a: h.update({"spec_hash": "0" * 64}), ModelFileError, "spec_hash"),
        (lambda h, a: h.update({"spec": json.dumps({"family": "mlp"})}), ModelSpecError, "input_shape"),
        (
            lambda h, a: h.update({"spec": mlp([64], 2, hidden=(4096, 4096)).to_json()}),  # 17M parameters
            ModelSpecError,
            "parameters, over the bound",
        ),
        (
            lambda h, a: h.update(
                {"spec": json.dumps({**logistic([6], 2).to_dict(), "layers": [{"type": "flatten"}] * 70})}
            ),
            ModelSpecError,
            "70 layers",
        ),
    ],
)
def test_hostile_npz_gets_a_typed_error(tmp_path, change, error, match):
    spec = logistic([6], 2)
    header, arrays = _header(spec), _good_arrays(spec)
    change(header, arrays)
    with pytest.raises(error, match=match):
        load(_npz(tmp_path / "m.npz", header, arrays))


def test_pickled_npz_is_refused_without_unpickling(tmp_path):
    spec = logistic([6], 2)
    arrays = {**_good_arrays(spec), "params/dense_0/bias": np.array([object(), object()], dtype=object)}
    path = _npz(tmp_path / "m.npz", _header(spec), arrays)
    with pytest.raises(ModelFileError, match="pickled"):
        load(path)


def test_oversized_files_are_refused_before_reading(tmp_path):
    spec, params = _model(logistic([6], 2))
    path = export_model(tmp_path / "m.msgpack", spec, params)
    with pytest.raises(ModelFileError, match="over the bound"):
        load(path, max_bytes=path.stat().st_size - 1)


def test_a_zip_bomb_is_refused(tmp_path):
    spec = logistic([6], 2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{HEADER_KEY}.npy", b"\0" * (8 << 20))  # 8 MiB of zeros: a few KiB on disk
    path = tmp_path / "bomb.npz"
    path.write_bytes(buffer.getvalue())
    assert path.stat().st_size < 100_000
    with pytest.raises(ModelFileError, match="unpack"):
        load(path, max_bytes=1 << 20)
    del spec


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x01garbage", b"\xc1" * 100, b"\x91" * 5000 + b"\xc0", b"PK\x03\x04broken"],
    ids=["empty", "garbage", "reserved", "deep", "broken-zip"],
)
@pytest.mark.parametrize("suffix", [".msgpack", ".npz"])
def test_malformed_bytes_get_a_typed_error(tmp_path, data, suffix):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(data)
    with pytest.raises(ModelFileError):
        load(path)


def test_msgpack_with_wrong_shapes_and_types(tmp_path):
    from flax import serialization

    spec = logistic([6], 2)
    base = {"format": FORMAT, "version": 1, "spec": spec.to_json(), "metadata": {}}
    bad_shape = {**base, "params": {"dense_0": {"kernel": np.zeros((6, 3), np.float32), "bias": np.zeros(2)}}}
    (tmp_path / "a.msgpack").write_bytes(serialization.msgpack_serialize(bad_shape))
    with pytest.raises(ModelFileError, match="shape"):
        load(tmp_path / "a.msgpack")
    text_leaf = {**base, "params": {"dense_0": {"kernel": "x", "bias": np.zeros(2)}}}
    (tmp_path / "b.msgpack").write_bytes(serialization.msgpack_serialize(text_leaf))
    with pytest.raises(ModelFileError, match="floating"):
        load(tmp_path / "b.msgpack")
    (tmp_path / "c.msgpack").write_bytes(serialization.msgpack_serialize([1, 2, 3]))
    with pytest.raises(ModelFileError, match="header"):
        load(tmp_path / "c.msgpack")
    (tmp_path / "d.msgpack").write_bytes(serialization.msgpack_serialize({**base, "params": 3}))
    with pytest.raises(ModelFileError, match="parameter tree"):
        load(tmp_path / "d.msgpack")


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        load(tmp_path / "absent.npz")
    with pytest.raises(ConfigError, match="suffix"):
        load(tmp_path / "model.pickle")


def test_model_file_error_is_a_data_error():
    assert issubclass(ModelFileError, DataError) and ModelFileError("x").to_dict()["code"] == "model_file"


def test_loaded_model_checks_input_shape(tmp_path):
    spec, params = _model(logistic([6], 2))
    loaded = load(export_model(tmp_path / "m.npz", spec, params))
    with pytest.raises(ConfigError, match="input_shape"):
        loaded.predict(np.zeros((3, 5)))
    assert loaded.predict(np.zeros((0, 6))).shape == (0,)
    assert dataclasses.is_dataclass(loaded.spec)
