"""Losses against hand-computed values, metrics from counts."""

from __future__ import annotations

import math

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
