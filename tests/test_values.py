"""Type checks of configuration values (ecomgpt_jax/values.py)."""

import fractions

import numpy as np
import pytest

from ecomgpt_jax import values


@pytest.mark.parametrize("value", [0, 8, -3, 2**40, np.int32(8), np.int64(-1), np.uint8(3)])
def test_integers(value):
    assert values.is_integer(value)
    assert values.is_number(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 8.0, "8", None, [8], b"8"])
def test_not_integers(value):
    # True is an int to Python and 8.0 slices like 8: both are typos in a config.
    assert not values.is_integer(value)


@pytest.mark.parametrize(
    "value", [2e-5, 0.0, float("inf"), np.float32(0.5), fractions.Fraction(1, 3)]
)
def test_numbers(value):
    assert values.is_number(value)
    assert not values.is_integer(value)


@pytest.mark.parametrize("value", [True, "2e-5", None, 1j, np.bool_(False)])
def test_not_numbers(value):
    assert not values.is_number(value)


def test_paths():
    import pathlib

    assert values.is_path("runs/x") and values.is_path(pathlib.Path("/tmp"))
    assert values.is_path("gs://bucket/run")
    for value in (None, 5, "", True, ["runs"]):
        assert not values.is_path(value)
