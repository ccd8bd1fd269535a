"""TensorFlow Datasets as a source: `--data-dir tfds:NAME` (an image and a segmentation mask).

Read through `tfds.data_source` (random access, no TensorFlow needed; `pip install -e '.[tfds]'`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from segjax.data.decode import Arrays, resize_image, resize_mask
from segjax.errors import DataError

PREFIX = "tfds:"
# Foreground rule per dataset (mask array -> bool); anything else: mask > 0.
# oxford_iiit_pet trimaps: 1 pet, 2 background, 3 pet outline.
FOREGROUND = {"oxford_iiit_pet": lambda m: (m == 1) | (m == 3)}
SPLITS = {"train": "train", "test": "test"}


def source(name: str, split: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(
            f"{PREFIX}{name}: tensorflow-datasets is not installed (pip install -e '.[tfds]')"
        ) from err
    try:
        return tfds.data_source(name, split=split)
    except Exception as err:  # tfds raises many kinds: missing data, unknown name, ...
        raise DataError(f"{PREFIX}{name} split {split!r}: {err}") from err


def example_id(example: dict, index: int) -> str:
    """The example's file name (the submission id), else its index."""
    name = example.get("file_name", f"{index:06d}")
    return name.decode() if isinstance(name, bytes) else str(name)


def example_mask(example: dict, dataset: str) -> np.ndarray:
    """The example's segmentation mask as uint8 0/1 at its original size."""
    mask = np.asarray(example["segmentation_mask"])
    foreground = FOREGROUND.get(dataset, lambda m: m > 0)
    return foreground(mask.reshape(mask.shape[:2])).astype(np.uint8)


def load(name: str, split: str, size, grayscale: bool, labelled: bool = True) -> Arrays:
    """Decode a TFDS split to the same arrays as the folder layout (ids = file names)."""
    examples = source(name, split)
    if len(examples) == 0:
        raise DataError(f"{PREFIX}{name} split {split!r} is empty")
    ids, images, masks, sizes = [], [], [], []
    for index in range(len(examples)):
        example = examples[index]
        image = np.asarray(example["image"], np.uint8)
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=2)
        picture = Image.fromarray(image[..., :3]).convert("L" if grayscale else "RGB")
        images.append(resize_image(picture, size))
        sizes.append(image.shape[:2])
        ids.append(example_id(example, index))
        if labelled:
            masks.append(resize_mask(example_mask(example, name), size))
    return Arrays(
        tuple(ids),
        np.stack(images),
        np.stack(masks) if labelled else None,
        np.asarray(sizes, np.int32),
    )


def original_masks(name: str, ids) -> list[np.ndarray]:
    """The labelled masks of `ids` at their images' original size."""
    examples = source(name, SPLITS["train"])
    wanted, by_id = set(ids), {}
    for index in range(len(examples)):
        example = examples[index]
        key = example_id(example, index)
        if key in wanted:
            image_hw = np.asarray(example["image"]).shape[:2]
            by_id[key] = resize_mask(example_mask(example, name), image_hw)
    return [by_id[i] for i in ids]
