"""Threshold and morphology of one probability map, sizes relative to the image."""

from __future__ import annotations

import numpy as np
import pytest

from segjax import metrics
from segjax.inference import postprocess
from segjax.inference.postprocess import PostProcess


def test_opening_small_components_and_holes():
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


def test_the_mask_rule_is_probability_at_or_above_the_threshold():
    prob = np.array([0.49999997, 0.5, 0.7], np.float32)
    np.testing.assert_array_equal(metrics.to_mask(prob), [False, True, True])
    np.testing.assert_array_equal(postprocess.apply(prob[None], PostProcess(0.7))[0], [0, 0, 1])
