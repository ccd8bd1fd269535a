"""Encoders: an image in, its features at strides 1, 2, 4, ... out (None where an encoder has none).

`ScratchEncoder` is the UNet's own contracting path; `EfficientNetLite` and `ResNet` follow the
ImageNet classifiers whose weights `segjax.models.pretrained` loads (the PyTorch definitions of the
`efficientnet-lite-pytorch` package and of torchvision).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import ConvBlock, DepthwiseConv, level_block, max_pool_2x2, param_dtype


class ScratchEncoder(nn.Module):
    """The UNet contracting path: a conv block per level, 2x2 max pooling in between.

    Returns depth + 1 features at strides 1 .. 2^depth (the last is the bottleneck).
    """

    features: int = 32
    depth: int = 4
    padding: str = "SAME"
    batch_norm: bool = True
    dropout: float = 0.0
    dropout_deep_only: bool = False
    convs: int = 2
    activation: str = "relu"
    residual: bool = False
    dtype: jnp.dtype = jnp.float32

    @property
    def stride(self) -> int:
        return 2**self.depth

    def block(self, level: int, name: str) -> ConvBlock:
        """The conv block of `level` (depth = bottleneck)."""
        return level_block(self, level, self.depth, name)

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


def lite_blocks(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """Every MBConv block of an EfficientNet-Lite: (kernel, stride, expansion, in, out).

    Lite keeps the stem, the first and the last stage unscaled (as the reference code does).
    """
    blocks = []
    last = len(LITE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(LITE_STAGES):
        cin = 32 if i == 0 else round_filters(cin, width)
        cout = round_filters(cout, width)
        repeats = repeats if i in (0, last) else int(math.ceil(depth * repeats))
        for r in range(repeats):
            blocks.append((kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
    return blocks


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise k x k, 1x1 project (ReLU6, no SE)."""

    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        norm = functools.partial(_batch_norm, train, self.bn_frozen, 0.99, 1e-3, self.dtype)
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=param_dtype(self.dtype)
        )
        y = x
        if self.expand != 1:
            y = conv(self.cin * self.expand, (1, 1), name="expand_conv")(y)
            y = nn.relu6(norm("expand_bn")(y))
        y = DepthwiseConv(self.kernel, self.stride, self.dtype, name="depthwise_conv")(y)
        y = nn.relu6(norm("depthwise_bn")(y))
        y = norm("project_bn")(conv(self.cout, (1, 1), name="project_conv")(y))
        if self.stride == 1 and self.cin == self.cout:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (ReLU6, no squeeze-excite) as an encoder.

    Features at strides 2, 4, 8, 16 and 32: the last block's output at each stride. The
    classifier head lives in `EfficientNetLiteClassifier`.
    """

    width: float = 1.0
    depth: float = 1.0
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32

    stride = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array | None]:
        norm = functools.partial(_batch_norm, train, self.bn_frozen, 0.99, 1e-3, self.dtype)
        x = nn.Conv(
            32,
            (3, 3),
            strides=2,
            padding="SAME",  # TensorFlow's SAME, as the reference's static padding
            use_bias=False,
            dtype=self.dtype,
            param_dtype=param_dtype(self.dtype),
            name="stem_conv",
        )(x.astype(self.dtype))
        x = nn.relu6(norm("stem_bn")(x))
        features: list[jax.Array | None] = [None]  # nothing at stride 1
        for i, spec in enumerate(lite_blocks(self.width, self.depth)):
            if spec[1] == 2:  # the last output at each stride is that stride's feature
                features.append(x)
            x = MBConv(*spec, bn_frozen=self.bn_frozen, dtype=self.dtype, name=f"block{i}")(
                x, train=train
            )
        return [*features, x]


class EfficientNetLiteClassifier(nn.Module):
    """The full ImageNet classifier (encoder + 1x1 conv to 1280 + pooling + dense), used to check
    that pretrained weights load right."""

    width: float = 1.0
    depth: float = 1.0
    classes: int = 1000
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feature = EfficientNetLite(self.width, self.depth, dtype=self.dtype, name="encoder")(
            x, train=False
        )[-1]
        pdtype = param_dtype(self.dtype)
        y = nn.Conv(1280, (1, 1), use_bias=False, dtype=self.dtype, param_dtype=pdtype)(feature)
        y = nn.relu6(_batch_norm(False, False, 0.99, 1e-3, self.dtype, "head_bn")(y))
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


class ResNet(nn.Module):
    """ResNet-18/34 (torchvision layout) as an encoder: features at strides 2 (after the stem
    convolution) and 4, 8, 16, 32 (after each stage)."""

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    bn_frozen: bool = False
    dtype: jnp.dtype = jnp.float32

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
                x = BasicBlock(
                    64 * 2**stage, stride, self.bn_frozen, self.dtype, name=f"layer{stage + 1}_{b}"
                )(x, train=train)
            features.append(x)
        return features


class ResNetClassifier(nn.Module):
    """ResNet with its ImageNet head (global average pooling + dense), to check weight loading."""

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    classes: int = 1000
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feature = ResNet(self.stage_sizes, dtype=self.dtype, name="encoder")(x, train=False)[-1]
        pdtype = param_dtype(self.dtype)
        dense = nn.Dense(self.classes, dtype=self.dtype, param_dtype=pdtype, name="fc")
        return dense(jnp.mean(feature, axis=(1, 2)))
