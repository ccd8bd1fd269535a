"""Build the model from its config alone: the encoder and decoder named in the registries."""

from __future__ import annotations

import flax.linen as nn

from segjax.config import ModelConfig
from segjax.errors import UserError
from segjax.models.encoder_decoder import EncoderDecoder
from segjax.models.layers import DTYPES, BlockOptions
from segjax.models.registry import ARCHS, ENCODERS


def _blocks(config: ModelConfig, dtype) -> BlockOptions:
    """The one value the scratch encoder's and every decoder's conv blocks are built from."""
    arch = ARCHS[config.arch]
    return BlockOptions(
        features=config.features,
        convs=4 if config.double_conv else 2,
        padding="VALID" if arch.valid else "SAME",
        batch_norm=config.batch_norm,
        dropout=config.dropout,
        dropout_deep_only=config.dropout_deep_only,
        activation=config.activation,
        residual=arch.residual,
        dtype=dtype,
    )


def _encoder(config: ModelConfig, dtype) -> nn.Module:
    entry = ENCODERS[config.encoder]
    if entry.stride is None:  # the UNet's own contracting path: shaped by the model options
        return entry.module(blocks=_blocks(config, dtype), depth=config.depth, name="encoder")
    stages = {"frozen_stages": config.freeze_encoder_stages} if config.freeze_encoder_stages else {}
    return entry.module(
        bn_frozen=config.encoder_bn == "frozen", dtype=dtype, name="encoder", **stages
    )


def frozen_encoder_modules(config: ModelConfig) -> set[str]:
    """The encoder's submodules that --freeze-encoder-stages freezes (their parameters get no
    update, weight decay included)."""
    if not config.freeze_encoder_stages:
        return set()
    return _encoder(config, DTYPES["float32"]).frozen_modules()


def create_model(config: ModelConfig, dtype: str = "float32") -> nn.Module:
    """The module of a model config, computing in `dtype` (parameters stay float32)."""
    check_model(config)
    arch = ARCHS[config.arch]
    options = dict(blocks=_blocks(config, DTYPES[dtype]), upsample=config.upsample, name="decoder")
    if arch.deep_supervision:
        options["deep_supervision"] = config.deep_supervision
    decoder = arch.decoder(**options)
    return EncoderDecoder(_encoder(config, DTYPES[dtype]), decoder, overlap_tile=arch.valid)


def check_model(config: ModelConfig) -> None:
    """Combinations that cannot be built are errors that say what to change."""
    if config.arch not in ARCHS:
        raise UserError(f"unknown arch {config.arch!r}; choose one of {', '.join(ARCHS)}")
    if config.encoder not in ENCODERS:
        raise UserError(f"unknown encoder {config.encoder!r}; choose one of {', '.join(ENCODERS)}")
    if config.encoder != "scratch" and ARCHS[config.arch].scratch_only:
        usable = [name for name, arch in ARCHS.items() if not arch.scratch_only]
        usable = ", ".join(usable[:-1]) + f" or {usable[-1]}"
        raise UserError(
            f"--arch {config.arch} takes only --encoder scratch (its encoder is part of the "
            f"design); with --encoder {config.encoder} use --arch {usable}"
        )
    family = ENCODERS[config.encoder].family
    if config.freeze_encoder_stages and family not in ("efficientnet", "efficientnet-lite"):
        raise UserError(
            f"--freeze-encoder-stages: --encoder {config.encoder} has no EfficientNet stages; "
            "it works with efficientnet-lite0..2 and efficientnet-b0..b5"
        )
    if config.freeze_encoder_stages > 7:
        raise UserError(
            f"--freeze-encoder-stages {config.freeze_encoder_stages}: an EfficientNet has 7 stages"
        )
    if config.encoder_bn == "frozen" and not ENCODERS[config.encoder].batch_norm:
        raise UserError(
            f"--encoder-bn frozen: --encoder {config.encoder} has no BatchNorm (it uses "
            "LayerNorm); leave --encoder-bn at train"
        )


def total_stride(config: ModelConfig) -> int:
    """What the input size is padded to a multiple of, and the smallest size that works."""
    stride = ENCODERS[config.encoder].stride
    return 2**config.depth if stride is None else stride
