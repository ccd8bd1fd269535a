"""Pure jnp augmentations `(key, image, mask) -> (image, mask)`, vmapped inside the train step.

Images are float [H, W, C] in [0, 1]; masks float [H, W] in {0, 1}. Geometry moves both with
one sampling grid (bilinear for the image, nearest for the mask, so the mask stays binary).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

# Ranges per level: scale (log-uniform), rotation (degrees), shift (fraction of the size),
# brightness/contrast/saturation factors 1 +- x, hue turn (fraction of a circle), noise std.
LEVELS = {
    "none": None,
    "basic": dict(scale=(0.8, 1.25), rotate=10.0, shift=0.1, colour=False),
    "strong": dict(
        scale=(0.75, 1.33),
        rotate=15.0,
        shift=0.15,
        colour=True,
        brightness=0.25,
        contrast=0.25,
        saturation=0.3,
        hue=0.04,
        noise=0.03,
    ),
}


def hflip(image: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    return image[:, ::-1], mask[:, ::-1]


def affine(image, mask, scale, angle, shift_yx) -> tuple[jax.Array, jax.Array]:
    """Zoom by `scale` and rotate by `angle` radians about the centre, then shift (pixels).

    Out-of-image samples are mirrored (image and mask alike), so no black corners appear.
    """
    h, w = mask.shape
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    cy, cx = (h - 1) / 2, (w - 1) / 2
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    dy, dx = (ys - cy) / scale, (xs - cx) / scale
    src_y = cy + cos * dy - sin * dx - shift_yx[0]
    src_x = cx + sin * dy + cos * dx - shift_yx[1]
    sample = lambda plane, order: map_coordinates(plane, [src_y, src_x], order=order, mode="mirror")
    warped = jax.vmap(lambda c: sample(c, 1), in_axes=2, out_axes=2)(image)
    return warped, sample(mask, 0)


def _grayscale(image: jax.Array) -> jax.Array:
    return image @ jnp.array([[0.299], [0.587], [0.114]])


def rotate_hue(image: jax.Array, turn: jax.Array) -> jax.Array:
    """Rotate the chroma plane (YIQ) by `turn` of a full circle; luma unchanged."""
    to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = jnp.cos(2 * jnp.pi * turn), jnp.sin(2 * jnp.pi * turn)
    rotate = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = jnp.linalg.inv(to_yiq) @ rotate @ to_yiq
    return image @ matrix.T


def colour_jitter(key, image, brightness, contrast, saturation, hue) -> jax.Array:
    kb, kc, ks, kh = jax.random.split(key, 4)
    uniform = lambda k, r: jax.random.uniform(k, minval=1 - r, maxval=1 + r)
    image = image * uniform(kb, brightness)
    mean = jnp.mean(_grayscale(image) if image.shape[-1] == 3 else image)
    image = mean + (image - mean) * uniform(kc, contrast)
    if image.shape[-1] == 3:  # saturation and hue need colour
        gray = _grayscale(image)
        image = gray + (image - gray) * uniform(ks, saturation)
        image = rotate_hue(image, jax.random.uniform(kh, minval=-hue, maxval=hue))
    return jnp.clip(image, 0.0, 1.0)


def augment(key: jax.Array, image: jax.Array, mask: jax.Array, level: str):
    """One example's random flip, zoom/crop, rotation and (level "strong") colour and noise."""
    params = LEVELS[level]
    if params is None:
        return image, mask
    k_flip, k_scale, k_rot, k_shift, k_colour, k_noise = jax.random.split(key, 6)
    flipped = hflip(image, mask)
    do_flip = jax.random.bernoulli(k_flip)
    image, mask = jnp.where(do_flip, flipped[0], image), jnp.where(do_flip, flipped[1], mask)
    low, high = jnp.log(jnp.array(params["scale"]))
    scale = jnp.exp(jax.random.uniform(k_scale, minval=low, maxval=high))
    angle = jnp.deg2rad(jax.random.uniform(k_rot, minval=-1, maxval=1) * params["rotate"])
    size = jnp.array(mask.shape, dtype=jnp.float32)
    shift = jax.random.uniform(k_shift, (2,), minval=-1, maxval=1) * params["shift"] * size
    image, mask = affine(image, mask, scale, angle, shift)
    if params["colour"]:
        image = colour_jitter(
            k_colour,
            image,
            params["brightness"],
            params["contrast"],
            params["saturation"],
            params["hue"],
        )
        k_sigma, k_pixels = jax.random.split(k_noise)
        sigma = jax.random.uniform(k_sigma, maxval=params["noise"])
        image = jnp.clip(image + sigma * jax.random.normal(k_pixels, image.shape), 0.0, 1.0)
    return image, mask


def normalize(image: jax.Array, mean, std) -> jax.Array:
    """(image - mean) / std per channel; an empty mean means no normalisation."""
    if not mean:
        return image
    shape = (1,) * (image.ndim - 1) + (-1,)
    mean = jnp.asarray(mean, image.dtype).reshape(shape)
    return (image - mean) / jnp.asarray(std, image.dtype).reshape(shape)


def resize_batch(images, masks, size: tuple[int, int]):
    """Progressive resizing: an augmented batch [B, H, W, C] and its masks [B, H, W, ...] at a
    smaller (h, w), antialiased; the masks stay {0, 1} (area above one half)."""
    b, c = images.shape[0], images.shape[-1]
    images = jax.image.resize(images, (b, *size, c), "linear", antialias=True)
    small = jax.image.resize(masks, (b, *size, *masks.shape[3:]), "linear", antialias=True)
    return images, (small >= 0.5).astype(masks.dtype)


def prepare_batch(key, images_u8, masks_u8, level: str, mean, std):
    """uint8 batch -> augmented, normalised float32 images and {0, 1} float32 masks."""
    images = images_u8.astype(jnp.float32) / 255.0
    masks = masks_u8.astype(jnp.float32)
    keys = jax.random.split(key, images.shape[0])
    images, masks = jax.vmap(lambda k, x, m: augment(k, x, m, level))(keys, images, masks)
    return normalize(images, mean, std), masks
