"""The analyst's side of a demo room gets the analyst API and its own test split, never a site's rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedjax_room.data import Dataset, Schema, save_dataset
from fedjax_room.sim.demo import AnalystDemo, EmbeddedRoom


def _embedded(tmp_path: Path) -> EmbeddedRoom:
    tmp_path.mkdir(parents=True, exist_ok=True)
    schema = Schema(features=("x0", "x1"), feature_shape=(2,), label="y", classes=(0, 1))
    save_dataset(Dataset(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]), schema), tmp_path / "central_test.npz")
    for name in ("site-a", "site-b"):  # what the sites hold, as start_room lays it out
        folder = tmp_path / "sites" / name
        folder.mkdir(parents=True)
        save_dataset(Dataset(np.ones((3, 2), np.float32), np.array([1, 1, 0]), schema), folder / "train.npz")
    return EmbeddedRoom(
        url="ws://127.0.0.1:1",
        analyst_key=tmp_path / "keys" / "analyst.key",
        state_dir=tmp_path,
        site_names=["site-a", "site-b"],
        dataset="digits",
    )


def test_the_analyst_view_holds_no_way_to_the_sites_data(tmp_path):
    view = _embedded(tmp_path).for_analyst()
    assert isinstance(view, AnalystDemo)
    assert not any(hasattr(view, name) for name in ("site_dir", "pooled_train", "state_dir", "processes"))
    # it holds plain values only (no EmbeddedRoom behind it to reach the sites' folders through)
    values = [getattr(view, f.name) for f in dataclasses.fields(view)]
    assert all(isinstance(v, str | Path | tuple) for v in values)
    assert not any(isinstance(v, Path) and "sites" in v.parts for v in values)
    test = view.central_test()  # the analyst's own labelled data: the split no site holds
    assert len(test) == 4 and view.site_names == ("site-a", "site-b")


def test_current_demo_hands_out_the_analyst_view(tmp_path, monkeypatch):
    import fedjax_room.jupyter as jupyter

    class Magics:
        embedded = _embedded(tmp_path)

    monkeypatch.setattr(jupyter, "_magics", Magics())
    demo = jupyter.current_demo()
    assert isinstance(demo, AnalystDemo) and demo.url == "ws://127.0.0.1:1"


def test_stopping_a_room_removes_only_a_state_directory_it_made(tmp_path):
    kept = _embedded(tmp_path / "given")
    kept.stop()
    assert (tmp_path / "given" / "central_test.npz").exists()  # a state_dir someone gave is theirs
    made = dataclasses.replace(_embedded(tmp_path / "made"), temporary=True)
    made.stop()
    assert not (tmp_path / "made").exists()  # start_room's own temporary directory: nothing left behind
