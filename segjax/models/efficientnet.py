"""EfficientNet-Lite0..4 and EfficientNet-B0..B7 as encoders (features at strides 2..32), as the
PyTorch definitions whose ImageNet weights `segjax.models.pretrained` loads (the
`efficientnet-lite-pytorch` package and timm), and their classifiers for the weight checks."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.convolutions import DepthwiseConv
from segjax.models.encoders import batch_norm
from segjax.models.layers import param_dtype


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
        norm = functools.partial(batch_norm, train, self.bn_frozen, *self.bn, self.dtype)
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
        norm = functools.partial(batch_norm, train, frozen, *bn, self.dtype)
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
        y = batch_norm(False, False, *bn, self.dtype, "head_bn")(y)
        y = ENCODER_ACTIVATIONS["relu6" if self.lite else "silu"](y)
        return nn.Dense(self.classes, dtype=self.dtype, param_dtype=pdtype, name="fc")(
            jnp.mean(y, axis=(1, 2))
        )
