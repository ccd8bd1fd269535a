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


def test_a_crowd_keeps_its_small_people_when_components_are_judged_against_the_largest():
    mask = np.zeros((400, 400), bool)
    mask[50:350, 20:120] = True  # a near person: 30,000 px
    mask[200:240, 200:215] = True  # two people far away: 600 px each, 0.4% of the image
    mask[200:240, 300:315] = True
    mask[10, 390] = mask[390, 390] = True  # specks
    prob = mask.astype(np.float32)
    relative = postprocess.apply(prob, PostProcess(0.5, min_relative=0.01))  # under 300 px go
    assert relative[220, 207] and relative[220, 307] and not relative[10, 390]
    absolute = postprocess.apply(prob, PostProcess(0.5, min_area=0.005))  # under 800 px go
    assert not absolute[220, 207]  # what an image-relative area does to the small people
    assert "under 1% of the largest removed" in str(PostProcess(0.5, min_relative=0.01))


def test_tuning_searches_the_share_of_the_largest_component():
    from segjax.inference import tuning

    rng = np.random.default_rng(0)
    masks = np.zeros((6, 64, 64), np.uint8)
    masks[:, 10:50, 10:30] = 1
    masks[:, 30:36, 45:50] = 1  # a small second person in every image: 30 px, 0.7%
    probs = np.clip(masks + rng.normal(0, 0.2, masks.shape), 0, 1).astype(np.float32)
    probs[:, 2, 60] = 0.9  # a false speck
    post, report = tuning.search(probs, masks)
    assert post.min_area == 0 and post.min_relative in tuning.MIN_RELATIVE
    assert report["dice_tuned"] >= report["dice_threshold_only"]
