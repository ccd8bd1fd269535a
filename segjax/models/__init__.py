"""The UNet family: one explicit table from `--arch` names to constructors."""

from __future__ import annotations

import flax.linen as nn

from segjax.config import ModelConfig
from segjax.models.layers import DTYPES
from segjax.models.unet import AttentionUNet, ResUNet, UNet, UNetValid
from segjax.models.unetpp import UNetPlusPlus

ARCHS = {
    "unet": UNet,
    "unet-valid": UNetValid,
    "attn": AttentionUNet,
    "resunet": ResUNet,
    "unetpp": UNetPlusPlus,
}


def create_model(config: ModelConfig) -> nn.Module:
    """Build the module from its config alone."""
    if config.arch not in ARCHS:
        raise ValueError(f"unknown arch {config.arch!r}; choose one of {', '.join(ARCHS)}")
    kwargs = dict(
        features=config.features,
        depth=config.depth,
        batch_norm=config.batch_norm,
        dropout=config.dropout,
        dropout_deep_only=config.dropout_deep_only,
        convs=4 if config.double_conv else 2,
        activation=config.activation,
        upsample=config.upsample,
        dtype=DTYPES[config.dtype],
    )
    if config.arch == "unetpp":
        kwargs["deep_supervision"] = config.deep_supervision
    return ARCHS[config.arch](**kwargs)


def output_size(config: ModelConfig, height: int, width: int) -> tuple[int, int]:
    """The logits' spatial size for an input of height x width (smaller only for unet-valid)."""
    if config.arch != "unet-valid":
        return height, width
    shrink = 2 * (4 if config.double_conv else 2)  # each valid 3x3 conv loses 2 pixels
    sizes = []
    for size in (height, width):
        for _ in range(config.depth):
            size = (size - shrink) // 2
        size -= shrink
        for _ in range(config.depth):
            size = 2 * size - shrink
        if size < 1:
            raise ValueError(
                f"input {height}x{width} is too small for unet-valid at depth {config.depth}"
            )
        sizes.append(size)
    return tuple(sizes)  # type: ignore[return-value]


def valid_input_size(config: ModelConfig, height: int, width: int) -> tuple[int, int]:
    """The smallest input whose logits cover height x width (mirror-padding for unet-valid)."""
    result = []
    for axis, size in enumerate((height, width)):
        need = size
        while output_size(config, *(need, need))[axis] < size:
            need += 1
        result.append(need)
    return tuple(result)  # type: ignore[return-value]
