"""``fedjax_room.dp`` exports its public API like optax does, without importing JAX for the accountant alone."""

import importlib
import subprocess
import sys

import pytest

import fedjax_room.dp as dp

# The modules whose whole __all__ is re-exported by the package (float_bounds and fast_clipping are the
# clipping machinery and keep their names to themselves).
PUBLIC_MODULES = ("accounting", "clipping", "noise", "optimizer", "sampling")


@pytest.mark.parametrize("name", dp.__all__)
def test_every_exported_name_imports_and_is_the_defining_object(name):
    namespace: dict[str, object] = {}
    exec(f"from fedjax_room.dp import {name}", namespace)
    value = namespace[name]
    owners = [m for m in PUBLIC_MODULES if name in importlib.import_module(f"fedjax_room.dp.{m}").__all__]
    assert len(owners) == 1, f"{name} is defined by {owners}"
    assert value is getattr(importlib.import_module(f"fedjax_room.dp.{owners[0]}"), name)


def test_the_names_users_reach_for_are_there():
    for name in (
        "clipped_grad",
        "per_example_grads",
        "dpsgd",
        "make_dp_train_step",
        "gaussian_noise",
        "epsilon",
        "calibrate_noise",
        "dpsgd_event",
        "Accountant",
        "poisson_sample",
    ):
        assert name in dp.__all__
        assert callable(getattr(dp, name))


def test_all_is_exactly_the_public_modules_all():
    expected = {n for m in PUBLIC_MODULES for n in importlib.import_module(f"fedjax_room.dp.{m}").__all__}
    assert sorted(dp.__all__) == sorted(expected)
    assert len(dp.__all__) == len(set(dp.__all__))
    assert set(dp.__all__) <= set(dir(dp))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        dp.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from fedjax_room.dp import no_such_name", {})


def test_the_exports_work_end_to_end():
    eps = dp.epsilon(noise_multiplier=1.1, sampling_rate=0.01, steps=100, delta=1e-5)
    sigma = dp.calibrate_noise(target_epsilon=eps, delta=1e-5, sampling_rate=0.01, steps=100)
    assert sigma == pytest.approx(1.1, rel=0.02)


def test_the_accountant_alone_does_not_import_jax():
    # The site ledger and the `privacy` command import only fedjax_room.dp.accounting; the package's
    # exports are resolved on first use, so they do not pay for JAX and Flax.
    code = "import sys, fedjax_room.dp.accounting; print(sorted({'jax', 'flax', 'optax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
