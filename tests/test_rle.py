"""RLE: the worked example, round trips in both orders, edge cases, post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from segjax import postprocess, rle
from segjax.postprocess import PostProcess

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


def test_postprocess_opening_small_components_holes_and_largest():
    mask = np.zeros((100, 100), bool)
    mask[10:60, 10:60] = True
    mask[30:35, 30:35] = False  # a hole
    mask[80, 80] = True  # a speck
    mask[70:76, 70:76] = True  # a small blob: 36 px
    prob = mask.astype(np.float32) * 0.9
    assert postprocess.apply(prob, PostProcess(0.95)).sum() == 0
    filled = postprocess.apply(prob, PostProcess(0.5, fill_holes=True))
    assert filled[32, 32] and filled[80, 80]
    no_specks = postprocess.apply(prob, PostProcess(0.5, min_area=0.001))  # < 10 px go
    assert not no_specks[80, 80] and no_specks[72, 72]
    largest = postprocess.apply(prob, PostProcess(0.5, keep_largest=True))
    assert not largest[72, 72] and largest[20, 20]
    opened = postprocess.apply(prob, PostProcess(0.5, open_radius=0.02))  # radius 2 px
    assert not opened[80, 80] and opened[20, 20]
    raw = postprocess.apply(prob, PostProcess(0.5, min_area=0.001), postprocess=False)
    np.testing.assert_array_equal(raw, mask)


def test_relative_sizes_scale_with_resolution():
    params = PostProcess(0.5, min_area=0.002)
    small = np.zeros((100, 100), bool)
    small[:4, :4] = True  # 16 px < 20 px
    big = np.kron(small, np.ones((8, 8), bool))  # the same blob at 800x800: 1024 < 1280 px
    assert postprocess.clean(small, params).sum() == 0 and postprocess.clean(big, params).sum() == 0
    small[:5, :5] = True  # 25 px > 20 px
    big = np.kron(small, np.ones((8, 8), bool))
    assert (
        postprocess.clean(small, params).sum() == 25
        and postprocess.clean(big, params).sum() == 1600
    )


@pytest.mark.parametrize("radius", [3, 8, 13])
def test_fast_opening_equals_scipy_binary_opening(radius):
    from scipy import ndimage

    rng = np.random.default_rng(radius)
    blobs = ndimage.gaussian_filter(rng.random((160, 120)), 10)
    mask = blobs > np.median(blobs)
    expected = ndimage.binary_opening(mask, structure=postprocess.disk(radius))
    np.testing.assert_array_equal(postprocess.opening(mask, radius), expected)
    assert 0 < expected.sum() < mask.sum()
