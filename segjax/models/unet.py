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
    param_dtype,
)


def pad_to_multiple(x_BxHxWxC: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int]]:
    """Zero-pad height and width (around the centre) up to a multiple; return the offsets."""
    h, w = x_BxHxWxC.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    top, left = ph // 2, pw // 2
    padded = jnp.pad(x_BxHxWxC, ((0, 0), (top, ph - top), (left, pw - left), (0, 0)))
    return padded, (top, left)


class UNet(nn.Module):
    """Encoder-decoder with skips. NHWC in, one logit channel out (float32).

    `padding="VALID"` is the 2015 paper's network: the output is smaller than the input
    (see `segjax.models.output_size`); every other variant returns the input's size.
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
        skips = []
        for level in range(self.depth):
            x = self.block(level, f"down{level}")(x, train=train)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
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
        return logits[:, top : top + h, left : left + w] if same else logits


UNetValid = functools.partial(UNet, padding="VALID")
AttentionUNet = functools.partial(UNet, attention=True)
ResUNet = functools.partial(UNet, residual=True)
