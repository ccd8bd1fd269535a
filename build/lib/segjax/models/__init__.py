"""The model family: an encoder (ENCODERS) and a decoder (ARCHS), built from the config alone."""

from __future__ import annotations

import functools

import flax.linen as nn

from segjax.config import ModelConfig
from segjax.errors import UserError
from segjax.models.decoders import NestedDecoder, UNetDecoder
from segjax.models.encoders import ENCODERS
from segjax.models.layers import DTYPES
from segjax.models.unet import EncoderDecoder

# --arch: the decoder and how it treats the encoder (valid padding, residual blocks).
ARCHS = {
    "unet": UNetDecoder,
    "unet-valid": functools.partial(UNetDecoder, padding="VALID"),
    "attn": functools.partial(UNetDecoder, attention=True),
    "resunet": functools.partial(UNetDecoder, residual=True),
    "unetpp": NestedDecoder,
}
PRETRAINED = tuple(name for name in ENCODERS if name != "scratch")


def _encoder(config: ModelConfig) -> nn.Module:
    dtype = DTYPES[config.dtype]
    if config.encoder == "scratch":
        return ENCODERS["scratch"](
            features=config.features,
            depth=config.depth,
            padding="VALID" if config.arch == "unet-valid" else "SAME",
            batch_norm=config.batch_norm,
            dropout=config.dropout,
            dropout_deep_only=config.dropout_deep_only,
            convs=4 if config.double_conv else 2,
            activation=config.activation,
            residual=config.arch == "resunet",
            dtype=dtype,
            name="encoder",
        )
    return ENCODERS[config.encoder](
        bn_frozen=config.encoder_bn == "frozen", dtype=dtype, name="encoder"
    )


def create_model(config: ModelConfig) -> nn.Module:
    """Build the module from its config alone."""
    check_model(config)
    options = dict(
        features=config.features,
        batch_norm=config.batch_norm,
        dropout=config.dropout,
        dropout_deep_only=config.dropout_deep_only,
        convs=4 if config.double_conv else 2,
        activation=config.activation,
        upsample=config.upsample,
        dtype=DTYPES[config.dtype],
        name="decoder",
    )
    if config.arch == "unetpp":
        options["deep_supervision"] = config.deep_supervision
    decoder = ARCHS[config.arch](**options)
    return EncoderDecoder(_encoder(config), decoder, overlap_tile=config.arch == "unet-valid")


def check_model(config: ModelConfig) -> None:
    """Combinations that cannot be built are errors that say what to change."""
    if config.arch not in ARCHS:
        raise UserError(f"unknown arch {config.arch!r}; choose one of {', '.join(ARCHS)}")
    if config.encoder not in ENCODERS:
        raise UserError(f"unknown encoder {config.encoder!r}; choose one of {', '.join(ENCODERS)}")
    if config.encoder != "scratch" and config.arch in ("unet-valid", "unetpp"):
        raise UserError(
            f"--arch {config.arch} takes only --encoder scratch (its encoder is part of the "
            f"design); with --encoder {config.encoder} use --arch unet, attn or resunet"
        )


def total_stride(config: ModelConfig) -> int:
    """What the input size is padded to a multiple of, and the smallest size that works."""
    return 2**config.depth if config.encoder == "scratch" else 32


def upgrade_layout(variables: dict, arch: str) -> dict:
    """Variables of segjax 0.1's models (one flat module) in today's encoder/decoder tree.

    The encoder blocks (`down*`, `bottleneck`; UNet++'s `x*_0`) move under `encoder`, the rest
    under `decoder`; the values do not change.
    """

    def split(tree: dict) -> dict:
        if "encoder" in tree or not tree:
            return tree
        out: dict = {"encoder": {}, "decoder": {}}
        depth = sum(name.startswith("x") and name.endswith("_0") for name in tree) - 1
        for name, value in tree.items():
            if arch == "unetpp" and name.startswith("x") and name.endswith("_0"):
                level = int(name[1:-2])
                out["encoder"]["bottleneck" if level == depth else f"down{level}"] = value
            elif name.startswith("down") or name == "bottleneck":
                out["encoder"][name] = value
            else:
                out["decoder"][name] = value
        return out

    return {collection: split(dict(tree)) for collection, tree in variables.items()}


def legacy_layout(variables: dict, arch: str) -> dict:
    """The inverse of `upgrade_layout`: today's tree in segjax 0.1's flat module names."""

    def flatten(tree: dict) -> dict:
        if "encoder" not in tree:
            return tree
        out = dict(tree["decoder"])
        depth = sum(name.startswith("down") for name in tree["encoder"])
        for name, value in tree["encoder"].items():
            if arch == "unetpp":
                level = depth if name == "bottleneck" else int(name[len("down") :])
                name = f"x{level}_0"
            out[name] = value
        return out

    return {collection: flatten(dict(tree)) for collection, tree in variables.items()}
