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
