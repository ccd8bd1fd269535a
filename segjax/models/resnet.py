"""ResNet-18/34/50/101 as encoders (features at strides 2..32), as torchvision's and timm's
definitions whose ImageNet weights `segjax.models.pretrained` loads, and their classifiers for
the weight checks."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.convolutions import GroupedConv
from segjax.models.encoders import batch_norm
from segjax.models.layers import param_dtype
from segjax.models.strided import conv_general


def block_conv(dtype) -> Callable[..., nn.Conv]:
    """A block's convolution: no bias (BatchNorm follows); strided, its input gradient by
    phases on CPU (`conv_general`)."""
    return functools.partial(
        nn.Conv,
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype(dtype),
        conv_general_dilated=conv_general,
    )


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convolutions with BatchNorm, a projected shortcut on change."""

    features: int
    stride: int = 1
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        norm = functools.partial(batch_norm, train, self.bn_frozen, 0.9, 1e-5, self.dtype)
        conv = block_conv(self.dtype)
        y = conv(self.features, (3, 3), self.stride, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = norm("bn2")(conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y))
        if self.stride != 1 or x.shape[-1] != self.features:
            x = norm("downsample_bn")(
                conv(self.features, (1, 1), self.stride, name="downsample")(x)
            )
        return nn.relu(y + x)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torchvision's stem pooling (3x3, stride 2, padding 1) as the max of nine strided views:
    the same values as `nn.max_pool`, with an elementwise gradient (no XLA:CPU scatter)."""
    _, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    taps = [
        padded[:, i : i + 2 * (oh - 1) + 1 : 2, j : j + 2 * (ow - 1) + 1 : 2]
        for i in range(3)
        for j in range(3)
    ]
    return functools.reduce(jnp.maximum, taps)


class Bottleneck(nn.Module):
    """ResNet-50/101 and ResNeXt block: 1x1 reduce, 3x3 (strided, grouped for ResNeXt), 1x1
    expand to 4x, each with BatchNorm; a projected shortcut on change (torchvision/timm)."""

    features: int  # the block's output is 4x this
    stride: int = 1
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32
    groups: int = 1
    base_width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        norm = functools.partial(batch_norm, train, self.bn_frozen, 0.9, 1e-5, self.dtype)
        conv = block_conv(self.dtype)
        width = self.features * self.base_width // 64 * self.groups
        out = 4 * self.features
        y = nn.relu(norm("bn1")(conv(width, (1, 1), name="conv1")(x)))
        if self.groups == 1:
            y = conv(width, (3, 3), self.stride, padding=((1, 1), (1, 1)), name="conv2")(y)
        else:
            y = GroupedConv(width, 3, self.stride, self.groups, self.dtype, name="conv2")(y)
        y = nn.relu(norm("bn2")(y))
        y = norm("bn3")(conv(out, (1, 1), name="conv3")(y))
        if self.stride != 1 or x.shape[-1] != out:
            x = norm("downsample_bn")(conv(out, (1, 1), self.stride, name="downsample")(x))
        return nn.relu(y + x)


class ResNet(nn.Module):
    """ResNet-18/34 (basic blocks), ResNet-50/101 and ResNeXt (bottlenecks) in the
    torchvision/timm layout as an encoder: features at strides 2 (after the stem convolution)
    and 4, 8, 16, 32 (after each stage)."""

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32
    bottleneck: bool = False
    groups: int = 1
    base_width: int = 64

    stride = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array | None]:
        x = nn.Conv(
            64,
            (7, 7),
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=param_dtype(self.dtype),
            name="conv1",
        )(x.astype(self.dtype))
        x = nn.relu(batch_norm(train, self.bn_frozen, 0.9, 1e-5, self.dtype, "bn1")(x))
        features: list[jax.Array | None] = [None, x]
        x = max_pool_3x3_s2(x)
        for stage, blocks in enumerate(self.stage_sizes):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                name = f"layer{stage + 1}_{b}"
                args = (64 * 2**stage, stride, self.bn_frozen, self.dtype)
                if self.bottleneck:
                    block = Bottleneck(*args, self.groups, self.base_width, name=name)
                else:
                    block = BasicBlock(*args, name=name)
                x = block(x, train=train)
            features.append(x)
        return features


class ResNetClassifier(nn.Module):
    """ResNet with its ImageNet head (global average pooling + dense), to check weight loading."""

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    classes: int = 1000
    dtype: jnp.dtype = jnp.float32
    bottleneck: bool = False
    groups: int = 1
    base_width: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        encoder = ResNet(
            self.stage_sizes,
            dtype=self.dtype,
            bottleneck=self.bottleneck,
            groups=self.groups,
            base_width=self.base_width,
            name="encoder",
        )
        feature = encoder(x, train=False)[-1]
        pdtype = param_dtype(self.dtype)
        dense = nn.Dense(self.classes, dtype=self.dtype, param_dtype=pdtype, name="fc")
        return dense(jnp.mean(feature, axis=(1, 2)))
