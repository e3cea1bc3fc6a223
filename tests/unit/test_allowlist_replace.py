"""``replace`` on binary numeric VRs: the value is a number, range-checked on load."""

from __future__ import annotations

import pytest

from pixl_core.config.allowlist import Action, load_allowlist_file
from pixl_core.errors import PixlConfigError


def _load(tmp_path, entry: str):
    path = tmp_path / "list.yaml"
    path.write_text(f"attributes:\n  - {entry}\n")
    return load_allowlist_file(path)


def test_replace_on_a_us_attribute_takes_a_number(tmp_path):
    loaded = _load(tmp_path, "{attribute: PlanarConfiguration, action: replace, value: 0}")
    (rule,) = loaded.allowlist.rules.values()
    assert (rule.action, rule.value) == (Action.REPLACE, 0)


def test_replace_on_a_us_attribute_refuses_text_and_out_of_range(tmp_path):
    with pytest.raises(PixlConfigError, match="VR US takes a number"):
        _load(tmp_path, "{attribute: PlanarConfiguration, action: replace, value: abc}")
    with pytest.raises(PixlConfigError, match="out of range for VR US"):
        _load(tmp_path, "{attribute: PlanarConfiguration, action: replace, value: 70000}")
