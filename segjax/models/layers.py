"""Building blocks shared by the UNet family: conv blocks, up-convolutions, attention gates."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=0.01),
}
DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "float64": jnp.float64,
}


def param_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Parameters stay float32 under bfloat16 or float16 compute (float64 only for gradient
    checks)."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def center_crop(x_BxHxWxC: jax.Array, height: int, width: int) -> jax.Array:
    """The central height x width window (the 2015 UNet's skip cropping)."""
    top = (x_BxHxWxC.shape[1] - height) // 2
    left = (x_BxHxWxC.shape[2] - width) // 2
    return x_BxHxWxC[:, top : top + height, left : left + width]


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 (an odd last row or column is dropped, as VALID pooling).

    The same values as `nn.max_pool(x, (2, 2), strides=(2, 2))`, written as a reshape and a max:
    its gradient is an elementwise mask, where XLA:CPU turns `nn.max_pool`'s select-and-scatter
    gradient into a scatter that took twice as long. Tied maxima share the gradient (with ReLU
    before the pooling, ties are zeros, whose gradient ReLU discards).
    """
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def depth_to_space(x_BxHxWx4C: jax.Array) -> jax.Array:
    """[B, H, W, 2*2*C] -> [B, 2H, 2W, C], channel index (a, b, c) going to pixel (2i+a, 2j+b)."""
    b, h, w, c4 = x_BxHxWx4C.shape
    x = x_BxHxWx4C.reshape(b, h, w, 2, 2, c4 // 4)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c4 // 4)


class UpConv(nn.Module):
    """2x2 stride-2 up-convolution as a 1x1 convolution to 4x the channels + depth-to-space.

    The same function and parameter count as `nn.ConvTranspose(features, (2, 2), strides=(2, 2))`
    (kernel [1, 1, C, 2*2*F] holds the transposed kernel [2, 2, C, F]; the bias is shared over the
    four positions), but its gradient avoids XLA:CPU's slow transposed-convolution path.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pdtype = param_dtype(self.dtype)
        y = nn.Conv(
            4 * self.features,
            (1, 1),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=pdtype,
            name="kernel4",
        )(x)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), pdtype)
        return depth_to_space(y) + bias.astype(self.dtype).reshape(1, 1, 1, -1)


class ResizeUp(nn.Module):
    """Bilinear 2x upsampling + 1x1 convolution (done first, at low resolution: they commute)."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Conv(self.features, (1, 1), dtype=self.dtype, param_dtype=param_dtype(self.dtype))(x)
        b, h, w, c = y.shape
        return jax.image.resize(y, (b, 2 * h, 2 * w, c), "bilinear").astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """The conv blocks' options: one value, passed whole to the scratch encoder, to every
    decoder and to each `ConvBlock`. Widths are `features * 2^level` at stride 2^level."""

    features: int = 32
    convs: int = 2  # 3x3 convolutions per block (4: --double-conv)
    padding: str = "SAME"  # VALID: the 2015 paper's valid convolutions
    batch_norm: bool = True
    dropout: float = 0.0
    dropout_deep_only: bool = False  # dropout only in the two deepest levels
    activation: str = "relu"
    residual: bool = False
    dtype: Any = jnp.float32  # the compute dtype; parameters stay float32 (`param_dtype`)

    def at_level(self, level: int, levels: int) -> BlockOptions:
        """The options of the block at `level` of a network with `levels` poolings."""
        deep = level >= levels - 1 or not self.dropout_deep_only
        return dataclasses.replace(
            self, features=self.features * 2**level, dropout=self.dropout if deep else 0.0
        )


class ConvBlock(nn.Module):
    """`convs` 3x3 convolutions of `features` channels, each + BatchNorm + activation; optional
    residual; dropout last."""

    options: BlockOptions

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        o = self.options
        act = ACTIVATIONS[o.activation]
        pdtype = param_dtype(o.dtype)
        conv = functools.partial(nn.Conv, dtype=o.dtype, param_dtype=pdtype)
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            dtype=o.dtype,
            param_dtype=pdtype,
        )
        shortcut = x
        for i in range(o.convs):
            x = conv(o.features, (3, 3), padding=o.padding, use_bias=not o.batch_norm)(x)
            if o.batch_norm:
                x = norm()(x)
            if not (o.residual and i == o.convs - 1):
                x = act(x)
        if o.residual:
            if shortcut.shape[-1] != o.features:
                shortcut = conv(o.features, (1, 1), use_bias=not o.batch_norm)(shortcut)
                if o.batch_norm:
                    shortcut = norm()(shortcut)
            x = act(x + center_crop(shortcut, x.shape[1], x.shape[2]))
        if o.dropout > 0:
            x = nn.Dropout(o.dropout, deterministic=not train)(x)
        return x


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): the skip scaled by a learned [0, 1] map.

    The gating signal is the upsampled decoder feature at the skip's resolution.
    """

    features: int
    batch_norm: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, gate: jax.Array, skip: jax.Array, *, train: bool) -> jax.Array:
        pdtype = param_dtype(self.dtype)

        def project(x, features, name):
            x = nn.Conv(features, (1, 1), dtype=self.dtype, param_dtype=pdtype, name=name)(x)
            if self.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    dtype=self.dtype,
                    param_dtype=pdtype,
                    name=name + "_bn",
                )(x)
            return x

        joint = nn.relu(
            project(gate, self.features, "w_gate") + project(skip, self.features, "w_skip")
        )
        alpha = nn.sigmoid(project(joint, 1, "psi"))
        return skip * alpha


def upsample_nearest(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x nearest-neighbour upsampling."""
    return jnp.repeat(jnp.repeat(x_BxHxWxC, 2, axis=1), 2, axis=2)


class NearestUp(nn.Module):
    """2x nearest-neighbour upsampling, channels unchanged (the block after it mixes them)."""

    features: int  # unused: the same signature as the other upsamplers
    dtype: jnp.dtype = jnp.float32

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample_nearest(x)


UPSAMPLERS = {"transpose": UpConv, "resize": ResizeUp, "nearest": NearestUp}
