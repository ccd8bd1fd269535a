"""Where images come from: a competition-layout folder, the synthetic demo, or a TFDS dataset.

`--data-dir tfds:NAME` reads a TensorFlow Datasets dataset with an image and a segmentation
mask through `tfds.data_source` (random access, no TensorFlow needed; `pip install -e '.[tfds]'`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from segjax import data, runtime
from segjax.config import Config, DataConfig
from segjax.synthetic import demo_data_dir

TFDS_PREFIX = "tfds:"
# Foreground rule per dataset (mask array -> bool); anything else: mask > 0.
# oxford_iiit_pet trimaps: 1 pet, 2 background, 3 pet outline.
FOREGROUND = {"oxford_iiit_pet": lambda m: (m == 1) | (m == 3)}
TFDS_SPLITS = {"train": "train", "test": "test"}


def is_tfds(config: DataConfig) -> bool:
    return config.data_dir.startswith(TFDS_PREFIX)


def data_root(config: DataConfig) -> Path:
    return Path(config.data_dir) if config.data_dir else demo_data_dir()


def _tfds_source(name: str, split: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise data.DataError(
            f"{TFDS_PREFIX}{name}: tensorflow-datasets is not installed (pip install -e '.[tfds]')"
        ) from err
    try:
        return tfds.data_source(name, split=split)
    except Exception as err:  # tfds raises many kinds: missing data, unknown name, ...
        raise data.DataError(f"{TFDS_PREFIX}{name} split {split!r}: {err}") from err


def _resize(array: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def _example_id(example: dict, index: int) -> str:
    """The example's file name (the submission id), else its index."""
    name = example.get("file_name", f"{index:06d}")
    return name.decode() if isinstance(name, bytes) else str(name)


def _example_mask(example: dict, dataset: str) -> np.ndarray:
    """The example's segmentation mask as uint8 0/1 at its original size."""
    mask = np.asarray(example["segmentation_mask"])
    foreground = FOREGROUND.get(dataset, lambda m: m > 0)
    return foreground(mask.reshape(mask.shape[:2])).astype(np.uint8)


def load_tfds(name: str, split: str, size, grayscale: bool, labelled: bool = True) -> data.Arrays:
    """Decode a TFDS split to the same arrays as the folder layout (ids = file names)."""
    source = _tfds_source(name, split)
    if len(source) == 0:
        raise data.DataError(f"{TFDS_PREFIX}{name} split {split!r} is empty")
    ids, images, masks, sizes = [], [], [], []
    for index in range(len(source)):
        example = source[index]
        image = np.asarray(example["image"], np.uint8)
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=2)
        picture = Image.fromarray(image[..., :3]).convert("L" if grayscale else "RGB")
        resized = np.asarray(picture.resize((size[1], size[0]), Image.Resampling.BILINEAR))
        images.append(resized[..., None] if grayscale else resized)
        sizes.append(image.shape[:2])
        ids.append(_example_id(example, index))
        if labelled:
            masks.append(_resize(_example_mask(example, name), size, Image.Resampling.NEAREST))
    return data.Arrays(
        tuple(ids),
        np.stack(images),
        np.stack(masks) if labelled else None,
        np.asarray(sizes, np.int32),
    )


def cache_folder(config: DataConfig) -> Path | None:
    """Where decoded arrays are cached: "auto" is $SEGJAX_CACHE/arrays, "" is nowhere."""
    if config.cache_dir == "auto":
        return runtime.cache_dir() / "arrays"
    return Path(config.cache_dir) if config.cache_dir else None


def load_labelled(config: DataConfig) -> data.Arrays:
    """Every labelled image at the training size."""
    if is_tfds(config):
        return load_tfds(
            config.data_dir[len(TFDS_PREFIX) :],
            TFDS_SPLITS["train"],
            config.image_size,
            config.grayscale,
        )
    layout = data.discover(data_root(config))
    return data.load(layout.train, config.image_size, config.grayscale, cache_folder(config))


def load_test(config: DataConfig, data_dir: str | Path | None = None) -> data.Arrays:
    """The unlabelled test images in submission row order."""
    source = str(data_dir) if data_dir else config.data_dir
    if source.startswith(TFDS_PREFIX):
        return load_tfds(
            source[len(TFDS_PREFIX) :],
            TFDS_SPLITS["test"],
            config.image_size,
            config.grayscale,
            labelled=False,
        )
    root = Path(source) if source else demo_data_dir()
    layout = data.discover(root)
    if not layout.test:
        raise data.DataError(f"{root}: no test/images folder, nothing to submit")
    return data.load(layout.test, config.image_size, config.grayscale, cache_folder(config))


def original_masks(config: DataConfig, ids) -> list[np.ndarray]:
    """Labelled masks at their original size, for evaluation as the leaderboard scores."""
    if is_tfds(config):
        name = config.data_dir[len(TFDS_PREFIX) :]
        source = _tfds_source(name, TFDS_SPLITS["train"])
        wanted, by_id = set(ids), {}
        for index in range(len(source)):
            example = source[index]
            key = _example_id(example, index)
            if key in wanted:
                image_hw = np.asarray(example["image"]).shape[:2]
                mask = _example_mask(example, name)
                by_id[key] = _resize(mask, image_hw, Image.Resampling.NEAREST)
        return [by_id[i] for i in ids]
    samples = {s.id: s for s in data.discover(data_root(config)).train}
    return [data.read_mask(samples[i].mask) for i in ids]


class Splits(NamedTuple):
    arrays: data.Arrays  # every labelled image, decoded at the training size
    train: np.ndarray  # indices into arrays
    val: np.ndarray
    test: np.ndarray


def normalization(config: Config, train_images: np.ndarray) -> tuple[tuple, tuple]:
    """(mean, std) per channel in [0, 1] units, as `config.data.normalize` asks."""
    d = config.data
    if d.mean:  # computed once, then kept in config.json
        return d.mean, d.std
    mode = d.normalize
    if mode == "auto":  # a pretrained encoder expects the statistics it was trained with
        mode = "dataset" if config.model.encoder == "scratch" else "imagenet"
    if mode == "dataset":
        return data.channel_stats(train_images)
    if mode == "imagenet":
        if d.grayscale:
            return (float(sum(data.IMAGENET_MEAN) / 3),), (float(sum(data.IMAGENET_STD) / 3),)
        return data.IMAGENET_MEAN, data.IMAGENET_STD
    return (), ()


def split(d: DataConfig, n: int) -> dict[str, np.ndarray]:
    """The run's 'train', 'val' and 'test' indices of its n labelled images."""
    return data.split(n, d.split_seed, d.val_fraction, d.test_fraction, d.folds, d.fold)


def load_splits(config: Config) -> tuple[Config, Splits]:
    """Decode the labelled images, split them, and fill in the normalisation statistics."""
    d = config.data
    arrays = load_labelled(d)
    parts = split(d, len(arrays.ids))
    if len(parts["train"]) < config.train.batch_size:
        raise data.DataError(
            f"{len(parts['train'])} training images: fewer than one batch "
            f"({config.train.batch_size}); lower --batch-size"
        )
    mean, std = normalization(config, arrays.images[parts["train"]])
    config = dataclasses.replace(config, data=dataclasses.replace(d, mean=mean, std=std))
    return config, Splits(arrays, parts["train"], parts["val"], parts["test"])
