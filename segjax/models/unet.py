"""UNet (same or valid padding) with optional attention gates and residual blocks."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import (
    UPSAMPLERS,
    AttentionGate,
    ConvBlock,
    center_crop,
    level_block,
    max_pool_2x2,
    param_dtype,
)


def pad_to_multiple(x_BxHxWxC: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int]]:
    """Zero-pad height and width (around the centre) up to a multiple; return the offsets."""
    h, w = x_BxHxWxC.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    top, left = ph // 2, pw // 2
    padded = jnp.pad(x_BxHxWxC, ((0, 0), (top, ph - top), (left, pw - left), (0, 0)))
    return padded, (top, left)


def valid_output_length(length: int, depth: int, convs: int) -> int:
    """The 2015 UNet's output length for an input length (each valid 3x3 conv loses 2)."""
    shrink = 2 * convs
    for _ in range(depth):
        length = (length - shrink) // 2
    length -= shrink
    for _ in range(depth):
        length = 2 * length - shrink
    return length


def valid_input_length(length: int, depth: int, convs: int) -> int:
    """The smallest input length whose valid-padded output covers `length` pixels."""
    need = length
    while valid_output_length(need, depth, convs) < length:
        need += 1
    return need


def mirror_pad(x_BxHxWxC: jax.Array, height: int, width: int) -> jax.Array:
    """Reflect-pad height and width (around the centre) up to height x width."""
    ph, pw = height - x_BxHxWxC.shape[1], width - x_BxHxWxC.shape[2]
    pads = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    return jnp.pad(x_BxHxWxC, pads, mode="reflect")


class UNet(nn.Module):
    """Encoder-decoder with skips. NHWC in, one logit channel out (float32).

    `padding="VALID"` is the 2015 paper's network: its output is smaller than its input
    (`valid_output_length`). With `overlap_tile` (the `unet-valid` arch) the input is first
    mirror-padded, as in the paper's overlap-tile strategy, so that the logits cover the whole
    input: training, validation and prediction then all see every pixel with the same padding.
    Every other variant returns the input's size directly.
    """

    features: int = 32
    depth: int = 4
    padding: str = "SAME"
    batch_norm: bool = True
    dropout: float = 0.0
    dropout_deep_only: bool = False
    convs: int = 2
    activation: str = "relu"
    upsample: str = "transpose"
    residual: bool = False
    attention: bool = False
    overlap_tile: bool = False
    dtype: jnp.dtype = jnp.float32

    def block(self, level: int, name: str) -> ConvBlock:
        return level_block(self, level, self.padding, name)

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, *, train: bool) -> jax.Array:
        same = self.padding == "SAME"
        h, w = x_BxHxWxC.shape[1:3]
        x = x_BxHxWxC.astype(self.dtype)
        if same:
            x, (top, left) = pad_to_multiple(x, 2**self.depth)
        elif self.overlap_tile:
            need = (valid_input_length(n, self.depth, self.convs) for n in (h, w))
            x = mirror_pad(x, *need)
        skips = []
        for level in range(self.depth):
            x = self.block(level, f"down{level}")(x, train=train)
            skips.append(x)
            x = max_pool_2x2(x)
        x = self.block(self.depth, "bottleneck")(x, train=train)
        for level in reversed(range(self.depth)):
            x = UPSAMPLERS[self.upsample](self.features * 2**level, self.dtype, name=f"up{level}")(
                x
            )
            skip = center_crop(skips.pop(), x.shape[1], x.shape[2])
            if self.attention:
                gate = AttentionGate(
                    self.features * 2 ** max(level - 1, 0),
                    self.batch_norm,
                    self.dtype,
                    name=f"gate{level}",
                )
                skip = gate(x, skip, train=train)
            x = self.block(level, f"dec{level}")(jnp.concatenate([skip, x], axis=-1), train=train)
        assert not skips
        logits = nn.Conv(
            1,
            (1, 1),
            dtype=param_dtype(self.dtype),
            param_dtype=param_dtype(self.dtype),
            name="head",
        )(x)
        if same:
            return logits[:, top : top + h, left : left + w]
        return center_crop(logits, h, w) if self.overlap_tile else logits


UNetValid = functools.partial(UNet, padding="VALID", overlap_tile=True)
AttentionUNet = functools.partial(UNet, attention=True)
ResUNet = functools.partial(UNet, residual=True)
