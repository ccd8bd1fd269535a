"""Decode images and masks with Pillow to uint8 at the training size, once; cache them as .npy."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from segjax.data.layout import Sample
from segjax.errors import DataError, DataWarning
from segjax.files import write_atomic

JPEG_EXTENSIONS = (".jpg", ".jpeg")
CACHE_VERSION = 1


class Arrays(NamedTuple):
    """Decoded images at the training size, and what the submission needs to undo the resize."""

    ids: tuple[str, ...]
    images: np.ndarray  # uint8 [N, H, W, C]
    masks: np.ndarray | None  # uint8 [N, H, W] in {0, 1}; None for unlabelled images
    sizes: np.ndarray  # int32 [N, 2]: original (height, width)


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so truncated files fail here with their name
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable or truncated image ({err})") from err
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer images (I;16, I) scaled to 8 bits."""
    if image.mode.startswith("I"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    return image


def read_image(path: Path, grayscale: bool = False) -> Image.Image:
    """Any of L, RGB, RGBA, P, 16-bit: to RGB (or L when grayscale)."""
    return to_mode(_open(path), grayscale)


def to_mode(image: Image.Image, grayscale: bool = False) -> Image.Image:
    """An opened image of any mode as RGB (or L when grayscale), 16-bit scaled to 8."""
    return _to_8bit(image).convert("L" if grayscale else "RGB")


def read_mask(path: Path) -> np.ndarray:
    """uint8 {0, 1} [H, W]: person = channel 0 > 0 (palette masks: palette index > 0).

    JPEG masks are lossy (a 0/255 edge comes back as 0..255): person = channel 0 > 127.
    """
    mask = _to_8bit(_open(path))
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array[..., 0]
    cut = 127 if path.suffix.lower() in JPEG_EXTENSIONS else 0
    return (array > cut).astype(np.uint8)


def resize_image(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An RGB or L image at the training size (height, width), bilinear: uint8 [H, W, C]."""
    resized = np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return resized[..., None] if resized.ndim == 2 else resized


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A {0, 1} mask at (height, width), nearest neighbour, so it stays binary."""
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))


def _load_one(sample: Sample, size: tuple[int, int], grayscale: bool):
    image = read_image(sample.image, grayscale)
    original = (image.height, image.width)
    resized = resize_image(image, size)
    if sample.mask is None:
        return resized, None, original
    mask = read_mask(sample.mask)
    if mask.shape != original:
        raise DataError(
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
            f"{sample.image.name} is {original[1]}x{original[0]}"
        )
    return resized, resize_mask(mask, size), original


def _cache_key(samples: Sequence[Sample], size: tuple[int, int], grayscale: bool) -> str:
    """Changes when a file is added, removed, replaced or resized, or the decode mode changes."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, list(size), grayscale]).encode())
    for s in samples:
        for path in (s.image, s.mask):
            if path is not None:
                stat = path.stat()
                digest.update(f"{s.id}|{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:
        np.save(f, array)


def save_arrays(path: str | os.PathLike, arrays: Arrays) -> None:
    """Arrays as one .npz (no pickles), written atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(
                f,
                ids=np.asarray(arrays.ids, dtype=str),
                images=arrays.images,
                masks=arrays.masks,
                sizes=arrays.sizes,
            )

    write_atomic(path, write)


def load_arrays(path: str | os.PathLike) -> Arrays:
    """Arrays saved by `save_arrays` (pickles refused)."""
    with np.load(path, allow_pickle=False) as saved:
        ids = tuple(str(i) for i in saved["ids"])
        return Arrays(ids, saved["images"], saved["masks"], saved["sizes"])


def load(
    samples: Sequence[Sample],
    size: tuple[int, int],
    grayscale: bool = False,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Arrays:
    """Decode every sample once (thread pool) to uint8 at `size`; reuse a matching .npy cache."""
    if not samples:
        raise DataError("no images to load")
    labelled = samples[0].mask is not None
    ids = tuple(s.id for s in samples)
    paths = None
    if cache_dir:
        key = _cache_key(samples, size, grayscale)
        folder = Path(cache_dir)
        paths = {n: folder / f"{key}-{n}.npy" for n in ("images", "masks", "sizes")}
        if all(p.exists() for n, p in paths.items() if labelled or n != "masks"):
            masks = np.load(paths["masks"], mmap_mode="r") if labelled else None
            return Arrays(
                ids, np.load(paths["images"], mmap_mode="r"), masks, np.load(paths["sizes"])
            )
    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        decoded = list(pool.map(lambda s: _load_one(s, size, grayscale), samples))
    images = np.stack([d[0] for d in decoded])
    masks = np.stack([d[1] for d in decoded]) if labelled else None
    sizes = np.asarray([d[2] for d in decoded], dtype=np.int32)
    if paths is not None:
        try:
            paths["images"].parent.mkdir(parents=True, exist_ok=True)
            for name, array in (("images", images), ("masks", masks), ("sizes", sizes)):
                if array is not None:
                    write_atomic(paths[name], lambda tmp, a=array: _save_npy(tmp, a))
        except OSError as err:  # a read-only cache costs a decode next time, nothing else
            warnings.warn(
                f"{paths['images'].parent}: cannot cache decoded images there "
                f"({err.strerror or err}); set --cache-dir or SEGJAX_CACHE to a writable folder",
                DataWarning,
                stacklevel=2,
            )
    return Arrays(ids, images, masks, sizes)


def channel_stats(images: np.ndarray, chunk: int = 64) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (chunked: memory-mapped input)."""
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        squares += (block**2).sum(axis=(0, 1, 2))
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
