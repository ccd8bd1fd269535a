"""Pure segmentation losses of logits [B, H, W, 1] against {0, 1} masks [B, H, W]; scalar means."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from segjax.config import TrainConfig
from segjax.fields import register

SMOOTH = 1.0  # added to the numerator and denominator of Dice/Tversky: empty vs empty = no loss


def _flat(logits_BxHxWx1: jax.Array, masks_BxHxW: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = logits_BxHxWx1.reshape(logits_BxHxWx1.shape[0], -1).astype(jnp.float32)
    return logits, masks_BxHxW.reshape(masks_BxHxW.shape[0], -1).astype(jnp.float32)


def bce(logits, masks, pos_weight: float = 1.0, weights=None) -> jax.Array:
    """Binary cross-entropy; person pixels weighted by `pos_weight`, pixels by `weights`."""
    x, y = _flat(logits, masks)
    per_pixel = pos_weight * y * jax.nn.softplus(-x) + (1.0 - y) * jax.nn.softplus(x)
    if weights is not None:
        per_pixel = per_pixel * weights.reshape(per_pixel.shape)
    return jnp.mean(per_pixel)


def _tversky_index(logits, masks, alpha: float, beta: float) -> jax.Array:
    """Per-image (TP + s) / (TP + alpha FN + beta FP + s) on probabilities; [B]."""
    x, y = _flat(logits, masks)
    p = jax.nn.sigmoid(x)
    tp = jnp.sum(p * y, axis=1)
    fn = jnp.sum((1.0 - p) * y, axis=1)
    fp = jnp.sum(p * (1.0 - y), axis=1)
    return (tp + SMOOTH) / (tp + alpha * fn + beta * fp + SMOOTH)


def dice(logits, masks) -> jax.Array:
    """1 - soft Dice per image, averaged over the batch (Tversky with alpha = beta = 0.5)."""
    return jnp.mean(1.0 - _tversky_index(logits, masks, 0.5, 0.5))


def tversky(logits, masks, alpha: float = 0.7, beta: float = 0.3) -> jax.Array:
    return jnp.mean(1.0 - _tversky_index(logits, masks, alpha, beta))


def focal_tversky(logits, masks, alpha=0.7, beta=0.3, gamma=0.75) -> jax.Array:
    """(1 - Tversky index) ** gamma per image, averaged (Abraham & Khan 2019)."""
    return jnp.mean((1.0 - _tversky_index(logits, masks, alpha, beta)) ** gamma)


def focal(logits, masks, alpha: float | None = 0.25, gamma: float = 2.0) -> jax.Array:
    x, y = _flat(logits, masks)
    return jnp.mean(optax.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma))


def edge_weights(masks_BxHxW: jax.Array, width: int = 3) -> jax.Array:
    """1 in a band of `width` pixels around the mask boundary (dilation - erosion), else 0."""
    m = masks_BxHxW.astype(jnp.float32)[..., None]
    window, pad = (1, 2 * width + 1, 2 * width + 1, 1), "SAME"
    dilated = jax.lax.reduce_window(m, 0.0, jax.lax.max, window, (1, 1, 1, 1), pad)
    eroded = -jax.lax.reduce_window(-m, -1.0, jax.lax.max, window, (1, 1, 1, 1), pad)
    return (dilated - eroded)[..., 0]


def edge_bce_dice(logits, masks, pos_weight=1.0, edge_weight=4.0) -> jax.Array:
    """BCE with pixels near the boundary weighted 1 + edge_weight, plus Dice."""
    weights = 1.0 + edge_weight * edge_weights(masks)
    return bce(logits, masks, pos_weight, weights) + dice(logits, masks)


def _lovasz_hinge_one(logits_N: jax.Array, labels_N: jax.Array) -> jax.Array:
    """The Lovasz hinge of one image's flattened logits and {0, 1} labels (Berman et al. 2018):
    the Lovasz extension of the Jaccard loss applied to the hinge errors 1 - logit * sign."""
    errors = 1.0 - logits_N * (2.0 * labels_N - 1.0)
    order = jnp.argsort(-errors)  # the largest error first
    errors, labels = errors[order], labels_N[order]
    total = jnp.sum(labels)
    intersection = total - jnp.cumsum(labels)
    union = total + jnp.cumsum(1.0 - labels)
    jaccard = 1.0 - intersection / union
    grad = jnp.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])  # the extension's weights
    return jnp.dot(jax.nn.relu(errors), jax.lax.stop_gradient(grad))


def lovasz_hinge(logits, masks) -> jax.Array:
    """Lovasz hinge loss per image, averaged over the batch: a convex surrogate of 1 - IoU
    that weighs each pixel's error by what it costs the image's IoU."""
    x, y = _flat(logits, masks)
    return jnp.mean(jax.vmap(_lovasz_hinge_one)(x, y))


# --loss: each name builds its (logits, masks) -> scalar function from the train settings.
LOSSES: dict[str, Callable[[TrainConfig], Callable]] = {
    "bce": lambda c: functools.partial(bce, pos_weight=c.pos_weight),
    "dice": lambda c: dice,
    "bce_dice": lambda c: lambda x, y: bce(x, y, c.pos_weight) + dice(x, y),
    "focal": lambda c: functools.partial(
        focal, alpha=c.focal_alpha if c.focal_alpha >= 0 else None, gamma=c.focal_gamma
    ),
    "tversky": lambda c: functools.partial(tversky, alpha=c.tversky_alpha, beta=c.tversky_beta),
    "focal_tversky": lambda c: functools.partial(
        focal_tversky, alpha=c.tversky_alpha, beta=c.tversky_beta, gamma=c.tversky_gamma
    ),
    "edge_bce_dice": lambda c: functools.partial(
        edge_bce_dice, pos_weight=c.pos_weight, edge_weight=c.edge_weight
    ),
    "lovasz": lambda c: lovasz_hinge,
    "bce_lovasz": lambda c: lambda x, y: bce(x, y, c.pos_weight) + lovasz_hinge(x, y),
}


def create_loss(config: TrainConfig) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The configured loss as a function of (logits, masks)."""
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[config.loss](config)


register("losses", lambda: list(LOSSES))
