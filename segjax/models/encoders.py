"""Encoders: an image in, its features at strides 1, 2, 4, ... out (None where an encoder has none).

`ScratchEncoder` is the UNet's own contracting path; `EfficientNetLite`, `EfficientNet` and
`ResNet` follow the ImageNet classifiers whose weights `segjax.models.pretrained` loads (the
PyTorch definitions of the `efficientnet-lite-pytorch` package, of timm and of torchvision);
ConvNeXt lives in `segjax.models.convnext`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import (
    BlockOptions,
    ConvBlock,
    DepthwiseConv,
    GroupedConv,
    max_pool_2x2,
    param_dtype,
)


class ScratchEncoder(nn.Module):
    """The UNet contracting path: a conv block per level, 2x2 max pooling in between.

    Returns depth + 1 features at strides 1 .. 2^depth (the last is the bottleneck).
    """

    blocks: BlockOptions = BlockOptions()
    depth: int = 4

    @property
    def stride(self) -> int:
        return 2**self.depth

    @property
    def dtype(self):
        """The compute dtype, as the pretrained encoders have it."""
        return self.blocks.dtype

    def block(self, level: int, name: str) -> ConvBlock:
        """The conv block of `level` (depth = bottleneck)."""
        return ConvBlock(self.blocks.at_level(level, self.depth), name=name)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array | None]:
        skips = []
        for level in range(self.depth):
            x = self.block(level, f"down{level}")(x, train=train)
            skips.append(x)
            x = max_pool_2x2(x)
        return [*skips, self.block(self.depth, "bottleneck")(x, train=train)]


def _batch_norm(train: bool, frozen: bool, momentum: float, epsilon: float, dtype, name: str):
    """BatchNorm of a pretrained network: its own momentum and epsilon; `frozen` keeps the
    ImageNet statistics while training (`--encoder-bn frozen`)."""
    return nn.BatchNorm(
        use_running_average=not train or frozen,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype(dtype),
        force_float32_reductions=dtype != jnp.float64,  # float64 checks keep float64 statistics
        name=name,
    )


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding for a width multiplier."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


# EfficientNet-Lite stages: (repeats, kernel, stride, expansion, input channels, output channels).
LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def stage_blocks(width: float, depth: float, lite: bool) -> list[tuple[int, int, tuple]]:
    """(stage, index in the stage, (kernel, stride, expansion, in, out)) of every MBConv block
    of an EfficientNet:
    each stage's repeats scaled by `depth` (rounded up) and channels by `width`. Lite keeps the
    stem, the first and the last stage unscaled; timm's `efficientnet_b*` scales them all."""
    blocks = []
    last = len(LITE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(LITE_STAGES):
        fixed = lite and i in (0, last)
        cin = round_filters(cin, 1.0 if lite and i == 0 else width)
        cout = round_filters(cout, width)
        repeats = repeats if fixed else int(math.ceil(depth * repeats))
        for r in range(repeats):
            spec = (kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout)
            blocks.append((i, r, spec))
    return blocks


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise k x k, squeeze-excite (if
    `se_channels`), 1x1 project; a skip where the shape stays.

    EfficientNet-Lite: ReLU6, no squeeze-excite, TensorFlow "SAME" padding, BatchNorm eps 1e-3.
    timm's EfficientNet-B: SiLU, squeeze-excite to a quarter of the block's input channels,
    PyTorch's symmetric padding, eps 1e-5 (`EfficientNet` sets these).
    """

    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32
    activation: str = "relu6"
    se_channels: int = 0
    padding: str = "SAME"
    bn: tuple[float, float] = (0.99, 1e-3)  # BatchNorm (flax momentum, epsilon)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        norm = functools.partial(_batch_norm, train, self.bn_frozen, *self.bn, self.dtype)
        act = ENCODER_ACTIVATIONS[self.activation]
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=param_dtype(self.dtype)
        )
        y = x
        if self.expand != 1:
            y = conv(self.cin * self.expand, (1, 1), name="expand_conv")(y)
            y = act(norm("expand_bn")(y))
        y = DepthwiseConv(
            self.kernel, self.stride, self.dtype, self.padding, name="depthwise_conv"
        )(y)
        y = act(norm("depthwise_bn")(y))
        if self.se_channels:
            y = SqueezeExcite(self.se_channels, act, self.dtype, name="se")(y)
        y = norm("project_bn")(conv(self.cout, (1, 1), name="project_conv")(y))
        if self.stride == 1 and self.cin == self.cout:
            y = y + x
        return y


class SqueezeExcite(nn.Module):
    """Channel gates from the global average: 1x1 reduce (+ activation), 1x1 expand, sigmoid."""

    channels: int
    activation: Callable[[jax.Array], jax.Array]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=param_dtype(self.dtype))
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.activation(conv(self.channels, (1, 1), name="reduce")(s))
        s = conv(x.shape[-1], (1, 1), name="expand")(s)
        return x * nn.sigmoid(s)


ENCODER_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu6": nn.relu6,
    "silu": nn.silu,
}


class EfficientNet(nn.Module):
    """timm's EfficientNet-B0..B5 (`efficientnet_b*`: SiLU, squeeze-excite, PyTorch's symmetric
    padding, BatchNorm eps 1e-5; stem, first and last stage scaled too) or, with `lite`,
    EfficientNet-Lite (ReLU6, no squeeze-excite, TensorFlow's "SAME" padding as the reference's
    static padding, eps 1e-3; stem, first and last stage unscaled) as an encoder.

    Features at strides 2, 4, 8, 16 and 32: the last block's output at each stride. No
    stochastic depth. The classifier head lives in `EfficientNetClassifier`.
    """

    width: float = 1.0
    depth: float = 1.0
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32
    lite: bool = False
    frozen_stages: int = 0  # the stem and the first N stages: no gradient, BatchNorm frozen

    stride = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array | None]:
        bn = (0.99, 1e-3) if self.lite else (0.9, 1e-5)
        frozen = self.bn_frozen or self.frozen_stages > 0
        norm = functools.partial(_batch_norm, train, frozen, *bn, self.dtype)
        act = "relu6" if self.lite else "silu"
        x = nn.Conv(
            32 if self.lite else round_filters(32, self.width),
            (3, 3),
            strides=2,
            padding="SAME" if self.lite else ((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=param_dtype(self.dtype),
            name="stem_conv",
        )(x.astype(self.dtype))
        x = ENCODER_ACTIVATIONS[act](norm("stem_bn")(x))
        # A frozen part's output carries no gradient back: nothing before it is computed.
        x = jax.lax.stop_gradient(x) if self.frozen_stages else x
        features: list[jax.Array | None] = [None]  # nothing at stride 1
        for i, (stage, r, spec) in enumerate(stage_blocks(self.width, self.depth, self.lite)):
            if spec[1] == 2:  # the last output at each stride is that stride's feature
                features.append(x)
            frozen = stage < self.frozen_stages
            x = MBConv(
                *spec,
                bn_frozen=self.bn_frozen or frozen,
                dtype=self.dtype,
                activation=act,
                se_channels=0 if self.lite else max(1, round(spec[3] * 0.25)),
                padding="SAME" if self.lite else "SYMMETRIC",
                bn=bn,
                name=block_name(i, stage, r, self.lite),
            )(x, train=train)
            x = jax.lax.stop_gradient(x) if frozen else x
        return [*features, x]

    def frozen_modules(self) -> set[str]:
        """The names of the submodules whose parameters `frozen_stages` freezes."""
        if not self.frozen_stages:
            return set()
        blocks = stage_blocks(self.width, self.depth, self.lite)
        return {"stem_conv", "stem_bn"} | {
            block_name(i, stage, r, self.lite)
            for i, (stage, r, _) in enumerate(blocks)
            if stage < self.frozen_stages
        }


def block_name(index: int, stage: int, repeat: int, lite: bool) -> str:
    """An MBConv block's module name: the weight files' own numbering."""
    return f"block{index}" if lite else f"stage{stage}_block{repeat}"


class EfficientNetLite(EfficientNet):
    """EfficientNet-Lite0..4 (`EfficientNet` with `lite`)."""

    lite: bool = True


class EfficientNetClassifier(nn.Module):
    """The full ImageNet classifier (encoder, 1x1 conv to 1280 (x width for B), BatchNorm,
    activation, pooling, dense), used to check that pretrained weights load right."""

    width: float = 1.0
    depth: float = 1.0
    classes: int = 1000
    dtype: jnp.dtype = jnp.float32
    lite: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        encoder = EfficientNet(
            self.width, self.depth, dtype=self.dtype, lite=self.lite, name="encoder"
        )
        feature = encoder(x, train=False)[-1]
        pdtype = param_dtype(self.dtype)
        y = nn.Conv(
            1280 if self.lite else round_filters(1280, self.width),
            (1, 1),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=pdtype,
            name="head_conv",
        )(feature)
        bn = (0.99, 1e-3) if self.lite else (0.9, 1e-5)
        y = _batch_norm(False, False, *bn, self.dtype, "head_bn")(y)
        y = ENCODER_ACTIVATIONS["relu6" if self.lite else "silu"](y)
        return nn.Dense(self.classes, dtype=self.dtype, param_dtype=pdtype, name="fc")(
            jnp.mean(y, axis=(1, 2))
        )


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convolutions with BatchNorm, a projected shortcut on change."""

    features: int
    stride: int = 1
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        norm = functools.partial(_batch_norm, train, self.bn_frozen, 0.9, 1e-5, self.dtype)
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=param_dtype(self.dtype)
        )
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
        norm = functools.partial(_batch_norm, train, self.bn_frozen, 0.9, 1e-5, self.dtype)
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=param_dtype(self.dtype)
        )
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
        x = nn.relu(_batch_norm(train, self.bn_frozen, 0.9, 1e-5, self.dtype, "bn1")(x))
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
