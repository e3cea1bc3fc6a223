"""Numbers from the environment: a bad value stops with one line naming the variable."""

from __future__ import annotations

import pytest

from pixl_core.env import env_number
from pixl_core.errors import PixlConfigError


def test_unset_or_blank_gives_the_default():
    assert env_number("X", 2.5, float, environ={}) == 2.5
    assert env_number("X", 3, int, environ={"X": " "}) == 3


def test_value_is_converted():
    assert env_number("X", 1, int, environ={"X": "7"}) == 7


@pytest.mark.parametrize(
    ("value", "message"),
    [("ten", "X must be a whole number, e.g. 1"), ("0", "X must be greater than 0, e.g. 1")],
)
def test_bad_value_names_the_variable(value, message):
    with pytest.raises(PixlConfigError) as error:
        env_number("X", 1, int, environ={"X": value}, positive=True)
    assert str(error.value) == message
