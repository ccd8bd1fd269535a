"""Augmentation: jit == eager, flips are involutions, geometry keeps image and mask aligned."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.data import augment


def checkerboard(h=48, w=40, block=8):
    board = ((np.arange(h)[:, None] // block + np.arange(w)[None, :] // block) % 2).astype(
        np.float32
    )
    return jnp.asarray(np.repeat(board[..., None], 3, axis=2)), jnp.asarray(board)


def test_flip_is_an_involution_and_moves_the_mask():
    image, mask = checkerboard(w=44)
    image = image.at[:, :3].set(0.25)
    mask = mask.at[:, :3].set(1.0)
    fi, fm = augment.hflip(image, mask)
    assert float(fi[0, -1, 0]) == 0.25 and float(fm[0, -1]) == 1.0
    back = augment.hflip(fi, fm)
    np.testing.assert_array_equal(back[0], image)
    np.testing.assert_array_equal(back[1], mask)


def test_identity_affine_changes_nothing():
    image, mask = checkerboard()
    out_image, out_mask = augment.affine(image, mask, 1.0, 0.0, jnp.zeros(2))
    np.testing.assert_allclose(out_image, image, atol=1e-5)
    np.testing.assert_array_equal(out_mask, mask)


@pytest.mark.parametrize(
    "scale,angle,shift",
    [(1.25, 0.0, (0, 0)), (0.8, 0.15, (3.0, -5.0)), (1.0, -0.17, (0, 0)), (1.1, 0.1, (-6.0, 2.5))],
)
def test_geometry_keeps_a_checkerboard_and_its_mask_aligned(scale, angle, shift):
    image, mask = checkerboard()
    out_image, out_mask = augment.affine(image, mask, scale, angle, jnp.asarray(shift))
    assert set(np.unique(out_mask).tolist()) <= {0.0, 1.0}
    agree = np.mean((np.asarray(out_image[..., 0]) > 0.5) == (np.asarray(out_mask) > 0.5))
    assert agree > 0.97, agree
    assert not np.array_equal(out_mask, mask)


@pytest.mark.parametrize("level", ["basic", "strong"])
def test_random_augmentation_jit_equals_eager_and_masks_stay_binary(level):
    image, mask = checkerboard()
    key = jax.random.key(7)
    eager = augment.augment(key, image, mask, level)
    jitted = jax.jit(augment.augment, static_argnums=3)(key, image, mask, level)
    np.testing.assert_allclose(eager[0], jitted[0], atol=1e-5)
    np.testing.assert_array_equal(eager[1], jitted[1])
    assert set(np.unique(np.asarray(eager[1])).tolist()) <= {0.0, 1.0}
    assert float(eager[0].min()) >= 0.0 and float(eager[0].max()) <= 1.0


def test_basic_augmentation_keeps_alignment_for_many_keys():
    image, mask = checkerboard()
    for seed in range(8):
        out_image, out_mask = augment.augment(jax.random.key(seed), image, mask, "basic")
        agree = np.mean((np.asarray(out_image[..., 0]) > 0.5) == (np.asarray(out_mask) > 0.5))
        assert agree > 0.97, (seed, agree)


def test_colour_jitter_leaves_gray_gray_and_rotates_hue():
    gray = jnp.full((4, 4, 3), 0.4)
    np.testing.assert_allclose(augment.rotate_hue(gray, jnp.asarray(0.1)), gray, atol=1e-5)
    red = jnp.zeros((4, 4, 3)).at[..., 0].set(0.8)
    turned = augment.rotate_hue(red, jnp.asarray(1 / 3))
    assert float(turned[0, 0, 1]) > float(turned[0, 0, 0])  # red turns toward green
    np.testing.assert_allclose(augment.rotate_hue(red, jnp.asarray(1.0)), red, atol=1e-5)


def test_prepare_batch_normalises_and_is_a_function_of_the_key():
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((3, 16, 16), np.uint8)
    a = augment.prepare_batch(jax.random.key(1), images, masks, "none", (0.5,) * 3, (0.25,) * 3)
    np.testing.assert_allclose(a[0], (images / 255.0 - 0.5) / 0.25, atol=1e-5)
    b1 = augment.prepare_batch(jax.random.key(1), images, masks, "strong", (), ())
    b2 = augment.prepare_batch(jax.random.key(1), images, masks, "strong", (), ())
    b3 = augment.prepare_batch(jax.random.key(2), images, masks, "strong", (), ())
    np.testing.assert_array_equal(b1[0], b2[0])
    assert not np.allclose(b1[0], b3[0])
