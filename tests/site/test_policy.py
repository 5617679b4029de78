"""Policy settings that are not about approval: the site-level epsilon cap."""

from __future__ import annotations

import math

import pytest

from fedjax_room.errors import PolicyError
from fedjax_room.site.policy import Policy


def test_site_epsilon_cap_is_optional_and_round_trips_through_toml(tmp_path):
    assert Policy().site_epsilon_cap is None
    assert "site_epsilon_cap" not in Policy().to_toml()  # TOML has no null: left out
    assert Policy.load(Policy().save(tmp_path / "none.toml")).site_epsilon_cap is None
    capped = Policy.from_dict({"site_epsilon_cap": 4})
    assert capped.site_epsilon_cap == 4.0 and capped.to_dict()["site_epsilon_cap"] == 4.0
    assert Policy.load(capped.save(tmp_path / "cap.toml")) == capped
    assert capped.digest != Policy().digest


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, "8", True])
def test_bad_site_epsilon_cap_is_refused(bad):
    with pytest.raises(PolicyError, match="site_epsilon_cap"):
        Policy.from_dict({"site_epsilon_cap": bad})
