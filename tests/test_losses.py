"""Losses against hand-computed values, metrics from counts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import losses
from segjax.config import TrainConfig

LN2 = math.log(2.0)


def as_batch(logits, masks):
    logits = jnp.asarray(logits, jnp.float32)
    return logits.reshape(1, 1, -1, 1), jnp.asarray(masks, jnp.float32).reshape(1, 1, -1)


def test_bce_by_hand():
    x, y = as_batch([0.0, 0.0], [1, 0])
    assert float(losses.bce(x, y)) == pytest.approx(LN2, rel=1e-6)
    assert float(losses.bce(x, y, pos_weight=3.0)) == pytest.approx((3 * LN2 + LN2) / 2, rel=1e-6)
    x, y = as_batch([2.0, -1.0], [1, 0])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert float(losses.bce(x, y)) == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand_including_empty_masks():
    x, y = as_batch([0.0] * 4, [1, 1, 0, 0])  # p = 0.5: tp 1, fn 1, fp 1
    assert float(losses.dice(x, y)) == pytest.approx(1 - 2 / 3, rel=1e-6)
    x, y = as_batch([-30.0] * 4, [0, 0, 0, 0])  # empty truth, empty prediction: no loss
    assert float(losses.dice(x, y)) == pytest.approx(0.0, abs=1e-6)
    x, y = as_batch([0.0] * 4, [0, 0, 0, 0])  # empty truth, p = 0.5: fp 2 -> 1 / (1 + 1)
    assert float(losses.dice(x, y)) == pytest.approx(0.5, rel=1e-6)
    x, y = as_batch([30.0] * 4, [1, 1, 1, 1])
    assert float(losses.dice(x, y)) == pytest.approx(0.0, abs=1e-6)


def test_tversky_and_focal_tversky_by_hand():
    x, y = as_batch([0.0] * 4, [1, 1, 1, 0])  # tp 1.5, fn 1.5, fp 0.5
    index = (1.5 + 1) / (1.5 + 0.7 * 1.5 + 0.3 * 0.5 + 1)
    assert float(losses.tversky(x, y, 0.7, 0.3)) == pytest.approx(1 - index, rel=1e-6)
    assert float(losses.focal_tversky(x, y, 0.7, 0.3, 0.75)) == pytest.approx(
        (1 - index) ** 0.75, rel=1e-6
    )


def test_focal_by_hand():
    x, y = as_batch([0.0, 0.0], [1, 0])  # p_t = 0.5 for both: (1 - p_t)^2 = 1/4
    expected = (0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 2
    assert float(losses.focal(x, y, alpha=0.25, gamma=2.0)) == pytest.approx(expected, rel=1e-6)


def test_edge_weights_mark_a_band_around_the_boundary():
    mask = np.zeros((1, 9, 9), np.float32)
    mask[0, 3:6, 3:6] = 1
    band = np.asarray(losses.edge_weights(jnp.asarray(mask), width=1))[0]
    assert band[4, 4] == 0 and band[0, 0] == 0  # deep inside and far outside
    assert band[3, 3] == 1 and band[2, 4] == 1  # on and just outside the edge
    x = jnp.zeros((1, 9, 9, 1))
    plain = float(losses.bce(x, mask) + losses.dice(x, mask))
    assert float(losses.edge_bce_dice(x, jnp.asarray(mask), edge_weight=4.0)) > plain


@pytest.mark.parametrize("name", losses.LOSSES)
def test_every_configured_loss_is_finite_and_small_for_a_perfect_prediction(name):
    fn = losses.create_loss(TrainConfig(loss=name))
    mask = np.zeros((2, 8, 8), np.float32)
    mask[0, 2:6, 2:6] = 1
    perfect = jnp.asarray((mask * 2 - 1) * 20)[..., None]
    wrong = -perfect
    assert float(fn(perfect, jnp.asarray(mask))) < 1e-3
    assert float(fn(wrong, jnp.asarray(mask))) > float(fn(perfect, jnp.asarray(mask)))


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        losses.create_loss(TrainConfig(loss="l2"))


def _lovasz_reference(logits: np.ndarray, labels: np.ndarray) -> float:
    """The reference implementation's lovasz_hinge(per_image=True) (Berman, Rannen Triki and
    Blaschko, "The Lovasz-Softmax loss", CVPR 2018; their lovasz_losses.py), in numpy."""

    def lovasz_grad(gt_sorted):
        gts = gt_sorted.sum()
        intersection = gts - np.cumsum(gt_sorted)
        union = gts + np.cumsum(1.0 - gt_sorted)
        jaccard = 1.0 - intersection / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        return jaccard

    losses = []
    for x, y in zip(logits.reshape(len(logits), -1), labels.reshape(len(labels), -1), strict=True):
        errors = 1.0 - x * (2.0 * y - 1.0)
        perm = np.argsort(-errors, kind="stable")
        losses.append(np.dot(np.maximum(errors[perm], 0.0), lovasz_grad(y[perm])))
    return float(np.mean(losses))


def test_lovasz_hinge_equals_the_reference_implementation():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5, 7, 1)) * 2.0
    masks = (rng.random((3, 5, 7)) > 0.6).astype(np.float32)
    masks[2] = 0.0  # an image without a person
    got = float(losses.lovasz_hinge(jnp.asarray(logits, jnp.float32), jnp.asarray(masks)))
    assert got == pytest.approx(_lovasz_reference(logits, masks), rel=1e-5)
    perfect = np.where(masks[..., None] > 0, 10.0, -10.0)  # right side with a margin: no error
    assert float(losses.lovasz_hinge(jnp.asarray(perfect), jnp.asarray(masks))) == 0.0
    grads = jax.grad(lambda x: losses.lovasz_hinge(x, jnp.asarray(masks)))(jnp.asarray(logits))
    assert np.all(np.isfinite(grads)) and np.any(grads != 0)
