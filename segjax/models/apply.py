"""A model on uint8 images in evaluation mode: the one rule that validation, tuning, previews,
evaluation and the submission share (normalise, apply, sigmoid; flip TTA averages)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from segjax.data.augment import normalize


def logits(apply_fn, variables, images_u8: jax.Array, mean, std) -> jax.Array:
    """float32 logits [B, H, W, 1] of uint8 images [B, H, W, C]."""
    images = normalize(images_u8.astype(jnp.float32) / 255.0, mean, std)
    return apply_fn(variables, images, train=False).astype(jnp.float32)


def probabilities(apply_fn, variables, images_u8: jax.Array, mean, std) -> jax.Array:
    """float32 person probabilities [B, H, W] of uint8 images [B, H, W, C]."""
    return jax.nn.sigmoid(logits(apply_fn, variables, images_u8, mean, std)[..., 0])


def predict_probs(variables, images_u8, *, apply_fn, mean, std, tta: bool) -> jax.Array:
    """Probabilities [B, H, W] at the input's size; flip TTA averages the image's and its
    mirror's probabilities."""
    probs = probabilities(apply_fn, variables, images_u8, mean, std)
    if tta:
        flipped = probabilities(apply_fn, variables, images_u8[:, :, ::-1], mean, std)
        probs = 0.5 * (probs + flipped[:, :, ::-1])
    return probs
