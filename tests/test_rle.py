"""RLE: the worked example, round trips in both orders, edge cases, post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from segjax.inference import rle

EXAMPLE = np.array([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]])


def test_design_example_column_major():
    assert rle.encode(EXAMPLE) == "3 1 6 2 9 3 14 1 16 1 20 1"
    np.testing.assert_array_equal(rle.decode("3 1 6 2 9 3 14 1 16 1 20 1", (4, 5)), EXAMPLE)


def test_row_major_order():
    assert rle.encode(EXAMPLE, order="C") == "3 1 7 3 11 3 19 2"
    np.testing.assert_array_equal(rle.decode("3 1 7 3 11 3 19 2", (4, 5), order="C"), EXAMPLE)


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (31, 3), (101, 57)])
def test_random_round_trips(order, shape):
    rng = np.random.default_rng(hash(shape) % 1000)
    for density in (0.05, 0.5, 0.95):
        mask = rng.random(shape) < density
        np.testing.assert_array_equal(rle.decode(rle.encode(mask, order), shape, order), mask)


def test_empty_full_first_and_last_pixel():
    shape = (5, 3)
    assert rle.encode(np.zeros(shape)) == ""
    np.testing.assert_array_equal(rle.decode("", shape), np.zeros(shape, bool))
    assert rle.encode(np.ones(shape)) == "1 15"
    first, last = np.zeros(shape, bool), np.zeros(shape, bool)
    first[0, 0], last[-1, -1] = True, True
    assert rle.encode(first) == "1 1" and rle.encode(last) == "15 1"
    corner = np.zeros(shape, bool)
    corner[-1, 0] = True  # column-major: the bottom of the first column is pixel 5
    assert rle.encode(corner) == "5 1" and rle.encode(corner, "C") == "13 1"


@pytest.mark.parametrize(
    "bad,message",
    [
        ("1 2 3", "odd number"),
        ("0 1", "positive"),
        ("14 3", "past the image"),
        ("5 3 6 1", "overlap"),
        ("a b", "not a list of integers"),
    ],
)
def test_decode_rejects_bad_runs(bad, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(bad, (5, 3))
