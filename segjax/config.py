"""Frozen dataclasses: the one source of defaults, saved to and rebuilt from config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from segjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data_dir: str = ""  # competition-layout folder, "" = the synthetic demo, "tfds:NAME" = TFDS
    image_size: tuple[int, int] = (256, 256)  # training size, (height, width) in pixels
    grayscale: bool = False  # decode images as one channel instead of RGB
    val_fraction: float = 0.1  # share of labelled images held out for validation
    test_fraction: float = 0.0  # share held out as a local test split (never trained on)
    split_seed: int = 0  # seed of the train/val/test split (independent of the training seed)
    cache_dir: str = ""  # where decoded arrays are cached as .npy ("" = no cache)
    # "auto" (imagenet for a pretrained encoder, else dataset), "dataset" (mean/std of the
    # training images), "imagenet" or "none"
    normalize: str = "auto"
    mean: tuple[float, ...] = ()  # per-channel mean in [0, 1], filled in from the training images
    std: tuple[float, ...] = ()  # per-channel std in [0, 1], filled in from the training images

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = "unet"  # the decoder: a key of segjax.models.ARCHS
    encoder: str = "efficientnet-lite0"  # a key of segjax.models.ENCODERS ("scratch": UNet's own)
    encoder_weights: str = "imagenet"  # pretrained encoders: "imagenet", "none" or a file path
    encoder_bn: str = (
        "train"  # pretrained encoders' BatchNorm: "train" or "frozen" (ImageNet stats)
    )
    encoder_source: str = ""  # filled in when a run starts: the weights file read, its sha256
    features: int = 16  # channels at full resolution, doubled at every level down
    depth: int = 4  # number of 2x2 poolings of the scratch encoder (pretrained encoders: 5)
    batch_norm: bool = True  # BatchNorm after every convolution
    dropout: float = 0.0  # dropout rate at the end of a block
    dropout_deep_only: bool = False  # dropout only in the two deepest levels (encoder and decoder)
    double_conv: bool = False  # four 3x3 convolutions per block instead of two
    activation: str = "relu"  # "relu" or "leaky_relu" (slope 0.01)
    # "nearest" (2x, the block after it mixes channels), "transpose" (2x2 stride-2
    # up-convolution) or "resize" (bilinear + 1x1)
    upsample: str = "nearest"
    dtype: str = (
        "float32"  # compute dtype: "float32", "bfloat16" (params stay float32) or "float64"
    )
    deep_supervision: bool = False  # unetpp only: average the logits of all its heads


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 8  # global batch, split over all devices
    eval_batch_size: int = 16  # evaluation and prediction batch (last one padded)
    epochs: int = 30
    lr: float = 1e-3  # peak learning rate
    optimizer: str = "adam"  # "adam" or "adamw"
    weight_decay: float = 1e-4  # adamw only (decoupled)
    schedule: str = "cosine"  # "constant", "cosine" (warmup + cosine), "onecycle" or "plateau"
    warmup_epochs: float = 1.0  # linear warm-up length for "cosine"
    plateau_factor: float = 0.5  # "plateau": multiply the rate by this when validation stalls
    plateau_patience: int = 3  # "plateau": epochs without improvement of validation loss
    loss: str = "bce_dice"  # a key of segjax.losses.LOSSES
    pos_weight: float = 1.0  # weight of person pixels in BCE terms
    focal_gamma: float = 2.0  # focal loss exponent
    focal_alpha: float = 0.25  # focal loss weight of person pixels (negative: none)
    tversky_alpha: float = 0.7  # Tversky weight of false negatives
    tversky_beta: float = 0.3  # Tversky weight of false positives
    tversky_gamma: float = 0.75  # focal Tversky exponent
    edge_weight: float = 4.0  # "edge_bce_dice": extra BCE weight of pixels near the mask boundary
    aug: str = "basic"  # "none", "basic" (flip, scale/crop, rotation) or "strong" (+ colour, noise)
    seed: int = 0  # model init, augmentation, dropout and batch order
    early_stop: int = 0  # stop after this many epochs without a better validation Dice (0 = off)
    precision: str = "fp32"  # "fp32" or "bf16" (sets ModelConfig.dtype)
    preview_count: int = 8  # validation images drawn in previews/epoch_NNN.png
    preview_every: int = 1  # previews and curves.png every N epochs (and after the last)
    init_from: str = ""  # start from this run folder's best weights (fine-tuning), "" = fresh
    freeze_encoder_epochs: int = 0  # pretrained encoder frozen (its updates zeroed) this long
    encoder_lr_mult: float = 1.0  # the encoder's learning rate as a fraction of --lr


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "run"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @classmethod
    def demo(cls) -> Config:
        """The synthetic demo's preset: a small scratch UNet that trains in minutes on a CPU."""
        return cls(
            data=DataConfig(image_size=(96, 96)),
            model=ModelConfig(encoder="scratch", features=16, upsample="transpose"),
            train=TrainConfig(epochs=20, batch_size=4, lr=2e-3),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Rebuild from a dict; unknown keys are an error, missing keys take the defaults."""
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in sections:
                kwargs[key] = _build(sections[key], value)
            elif key == "name":
                kwargs[key] = value
            else:
                raise ValueError(f"unknown config key {key!r}")
        return cls(**kwargs)


# Fields that older versions wrote to config.json and that no longer exist: ignored on load.
RETIRED = {"TrainConfig": {"distributed"}}


def _build(cls: type, raw: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    raw = {k: v for k, v in raw.items() if k not in RETIRED.get(cls.__name__, ())}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    # JSON has no tuples: turn lists back into tuples so configs compare and hash equal.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """`replace(config, train={"lr": 1e-4})`: a copy with some fields of some sections changed."""
    changes = {k: dataclasses.replace(getattr(config, k), **v) for k, v in sections.items()}
    return dataclasses.replace(config, **changes)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write config.json atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as err:
        raise UserError(f"{path}: not a segjax config ({err})") from err


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '256x192' -> (256, 192) as (height, width)."""
    parts = text.lower().split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"image size {text!r}: expected N or HxW, e.g. 256 or 256x192")
    return sizes  # type: ignore[return-value]
