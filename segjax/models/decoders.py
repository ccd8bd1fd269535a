"""Decoders: an encoder's features (strides 1, 2, 4, ...; None where absent) in, logits out.

`UNetDecoder` upsamples level by level, joining the skip of each level (optionally through an
attention gate); `NestedDecoder` is UNet++'s grid of nested skips.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import (
    UPSAMPLERS,
    AttentionGate,
    BlockOptions,
    ConvBlock,
    center_crop,
    param_dtype,
)


class Decoder(nn.Module):
    """What the decoders share: their blocks' options and the upsampling."""

    blocks: BlockOptions = BlockOptions()
    upsample: str = "transpose"

    def block(self, level: int, levels: int, name: str) -> ConvBlock:
        """The conv block at `level` of a network with `levels` poolings."""
        return ConvBlock(self.blocks.at_level(level, levels), name=name)

    def up(self, level: int, name: str) -> nn.Module:
        b = self.blocks
        return UPSAMPLERS[self.upsample](b.features * 2**level, b.dtype, name=name)

    def head(self, x: jax.Array, name: str = "head") -> jax.Array:
        """One float32 logit per pixel."""
        pdtype = param_dtype(self.blocks.dtype)
        return nn.Conv(1, (1, 1), dtype=pdtype, param_dtype=pdtype, name=name)(x)


class UNetDecoder(Decoder):
    """From the deepest feature up: upsample, join the skip of that level, a conv block.

    Levels without a skip (a pretrained encoder has nothing at stride 1) upsample and convolve.
    """

    attention: bool = False

    @nn.compact
    def __call__(self, features: list[jax.Array | None], *, train: bool) -> jax.Array:
        levels = len(features) - 1
        x = features[-1]
        for level in reversed(range(levels)):
            x = self.up(level, f"up{level}")(x)
            skip = features[level]
            if skip is not None:
                skip = center_crop(skip, x.shape[1], x.shape[2])
                if self.attention:
                    gate = AttentionGate(
                        self.blocks.features * 2 ** max(level - 1, 0),
                        self.blocks.batch_norm,
                        self.blocks.dtype,
                        name=f"gate{level}",
                    )
                    skip = gate(x, skip, train=train)
                x = jnp.concatenate([skip, x], axis=-1)
            x = self.block(level, levels, f"dec{level}")(x, train=train)
        return self.head(x)


class NestedDecoder(Decoder):
    """UNet++ (Zhou et al. 2018): node X[i][j] (level i, column j) sees X[i][0..j-1] and the
    upsampled X[i+1][j-1]; column 0 is the encoder's features.

    Deep supervision averages the logits of the heads on X[0][1..depth] (in training and
    evaluation); without it the single head sits on X[0][depth].
    """

    deep_supervision: bool = False

    @nn.compact
    def __call__(self, features: list[jax.Array | None], *, train: bool) -> jax.Array:
        depth = len(features) - 1
        nodes = [[f] for f in features]
        # Fill the columns left to right: X[i][j] needs X[i+1][j-1] from the previous column.
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                up = self.up(i, f"up{i}_{j}")(nodes[i + 1][j - 1])
                inputs = jnp.concatenate([*nodes[i][:j], up], axis=-1)
                nodes[i].append(self.block(i, depth, f"x{i}_{j}")(inputs, train=train))
        if self.deep_supervision:
            heads = [self.head(nodes[0][j], f"head{j}") for j in range(1, depth + 1)]
            return jnp.mean(jnp.stack(heads), axis=0)
        return self.head(nodes[0][depth], f"head{depth}")
