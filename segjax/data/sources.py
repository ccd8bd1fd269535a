"""Where images come from (a competition-layout folder, the synthetic demo, a TFDS dataset), the
run's split of them, and the normalisation statistics."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from segjax import runtime
from segjax.config import Config, DataConfig
from segjax.data import decode, layout, sampling, tfds
from segjax.data.synthetic import demo_data_dir
from segjax.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what ImageNet-pretrained encoders were trained on
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_tfds(config: DataConfig) -> bool:
    return config.data_dir.startswith(tfds.PREFIX)


def data_root(config: DataConfig) -> Path:
    return Path(config.data_dir) if config.data_dir else demo_data_dir()


def cache_folder(config: DataConfig) -> Path | None:
    """Where decoded arrays are cached: "auto" is $SEGJAX_CACHE/arrays, "" is nowhere."""
    if config.cache_dir == "auto":
        return runtime.cache_dir() / "arrays"
    return Path(config.cache_dir) if config.cache_dir else None


def load_labelled(config: DataConfig) -> decode.Arrays:
    """Every labelled image at the training size."""
    if is_tfds(config):
        name = config.data_dir[len(tfds.PREFIX) :]
        return tfds.load(name, tfds.SPLITS["train"], config.image_size, config.grayscale)
    found = layout.discover(data_root(config))
    return decode.load(found.train, config.image_size, config.grayscale, cache_folder(config))


def load_test(config: DataConfig, data_dir: str | Path | None = None) -> decode.Arrays:
    """The unlabelled test images in submission row order."""
    source = str(data_dir) if data_dir else config.data_dir
    if source.startswith(tfds.PREFIX):
        name = source[len(tfds.PREFIX) :]
        split = tfds.SPLITS["test"]
        return tfds.load(name, split, config.image_size, config.grayscale, labelled=False)
    root = Path(source) if source else demo_data_dir()
    found = layout.discover(root)
    if not found.test:
        raise DataError(f"{root}: no test/images folder, nothing to submit")
    return decode.load(found.test, config.image_size, config.grayscale, cache_folder(config))


def original_masks(config: DataConfig, ids) -> list[np.ndarray]:
    """Labelled masks at their original size, for evaluation as the leaderboard scores."""
    if is_tfds(config):
        return tfds.original_masks(config.data_dir[len(tfds.PREFIX) :], ids)
    samples = {s.id: s for s in layout.discover(data_root(config)).train}
    return [decode.read_mask(samples[i].mask) for i in ids]


class Splits(NamedTuple):
    arrays: decode.Arrays  # every labelled image, decoded at the training size
    train: np.ndarray  # indices into arrays
    val: np.ndarray
    test: np.ndarray


def normalization(config: Config, train_images: np.ndarray) -> tuple[tuple, tuple]:
    """(mean, std) per channel in [0, 1] units, as `config.data.normalize` asks."""
    d = config.data
    mode = d.normalize
    if mode == "auto":  # a pretrained encoder expects the statistics it was trained with
        mode = "dataset" if config.model.encoder == "scratch" else "imagenet"
    if mode == "dataset":
        return decode.channel_stats(train_images)
    if mode == "imagenet":
        if d.grayscale:
            return (float(sum(IMAGENET_MEAN) / 3),), (float(sum(IMAGENET_STD) / 3),)
        return IMAGENET_MEAN, IMAGENET_STD
    return (), ()


def split(d: DataConfig, n: int) -> dict[str, np.ndarray]:
    """The run's 'train', 'val' and 'test' indices of its n labelled images."""
    return sampling.split(n, d.split_seed, d.val_fraction, d.test_fraction, d.folds, d.fold)


def with_extra(splits: Splits, extra: decode.Arrays) -> Splits:
    """The splits with `extra` labelled images (pseudo-labels) appended, for training only."""
    a, n = splits.arrays, len(splits.arrays.ids)
    arrays = decode.Arrays(
        a.ids + tuple(extra.ids),
        np.concatenate([a.images, extra.images]),
        np.concatenate([a.masks, extra.masks]),
        np.concatenate([a.sizes, extra.sizes]),
    )
    train = np.concatenate([splits.train, n + np.arange(len(extra.ids))])
    return splits._replace(arrays=arrays, train=train)


def load_splits(config: Config) -> Splits:
    """Decode the labelled images and split them."""
    arrays = load_labelled(config.data)
    parts = split(config.data, len(arrays.ids))
    if len(parts["train"]) < config.train.batch_size:
        raise DataError(
            f"{len(parts['train'])} training images: fewer than one batch "
            f"({config.train.batch_size}); lower --batch-size"
        )
    return Splits(arrays, parts["train"], parts["val"], parts["test"])
