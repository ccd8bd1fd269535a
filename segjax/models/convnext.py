"""ConvNeXt (Liu et al. 2022) in timm's layout, as an encoder.

A 4x4 stride-4 stem, then four stages (a LayerNorm and a 2x2 stride-2 convolution between
them) of blocks: 7x7 depthwise convolution, LayerNorm, a 4x MLP with exact GELU, a learned
per-channel scale ("layer scale"), a residual. No BatchNorm, so nothing in `batch_stats`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.convolutions import DepthwiseConv
from segjax.models.layers import param_dtype
from segjax.models.strided import conv_general


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
    """timm's LayerNorm2d / LayerNorm over channels (eps 1e-6), statistics in float32."""
    return nn.LayerNorm(
        epsilon=1e-6,
        dtype=dtype,
        param_dtype=param_dtype(dtype),
        use_fast_variance=False,
        force_float32_reductions=dtype != jnp.float64,
        name=name,
    )


class ConvNeXtBlock(nn.Module):
    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pdtype = param_dtype(self.dtype)
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=pdtype)
        y = DepthwiseConv(7, 1, self.dtype, "SYMMETRIC", use_bias=True, name="conv_dw")(x)
        y = _layer_norm(self.dtype, "norm")(y)
        y = dense(4 * self.dim, name="fc1")(y)
        y = dense(self.dim, name="fc2")(nn.gelu(y, approximate=False))
        gamma = self.param("gamma", nn.initializers.constant(1e-6), (self.dim,), pdtype)
        return x + y * gamma.astype(self.dtype).reshape(1, 1, 1, -1)


class ConvNeXt(nn.Module):
    """Features at strides 4, 8, 16 and 32 (after each stage); none at 1 and 2.

    `bn_frozen` is accepted for the encoders' common signature: ConvNeXt has no BatchNorm
    (its registry entry says so, and `--encoder-bn frozen` is refused). No stochastic depth.
    """

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32

    stride = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array | None]:
        del train  # no BatchNorm, no dropout
        conv = functools.partial(  # strided: the input gradient by phases on CPU
            nn.Conv,
            dtype=self.dtype,
            param_dtype=param_dtype(self.dtype),
            conv_general_dilated=conv_general,
        )
        x = conv(self.dims[0], (4, 4), strides=4, padding="VALID", name="stem_conv")(
            x.astype(self.dtype)
        )
        x = _layer_norm(self.dtype, "stem_norm")(x)
        features: list[jax.Array | None] = [None, None]
        for stage, (depth, dim) in enumerate(zip(self.depths, self.dims, strict=True)):
            if stage > 0:
                x = _layer_norm(self.dtype, f"stage{stage}_down_norm")(x)
                x = conv(dim, (2, 2), strides=2, padding="VALID", name=f"stage{stage}_down")(x)
            for b in range(depth):
                x = ConvNeXtBlock(dim, self.dtype, name=f"stage{stage}_block{b}")(x)
            features.append(x)
        return features


class ConvNeXtClassifier(nn.Module):
    """ConvNeXt with timm's head (global average pooling, LayerNorm, dense), to check that
    weights load right."""

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    classes: int = 1000
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        encoder = ConvNeXt(self.depths, self.dims, dtype=self.dtype, name="encoder")
        y = _layer_norm(self.dtype, "head_norm")(jnp.mean(encoder(x, train=False)[-1], (1, 2)))
        pdtype = param_dtype(self.dtype)
        return nn.Dense(self.classes, dtype=self.dtype, param_dtype=pdtype, name="fc")(y)
