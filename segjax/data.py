"""Find, pair, decode, cache and split the competition's files; batch order as a pure function."""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from segjax.errors import UserError
from segjax.files import write_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
# What operating systems and notebooks leave in folders: skipped without a word.
JUNK = {".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints", "__MACOSX"}
CACHE_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what ImageNet-pretrained encoders were trained on
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(UserError):
    """A problem with the user's data: the message names the file and the fault."""


class DataWarning(UserWarning):
    """Something in the user's data that segjax skipped: the message names it."""


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str  # file name with extension, as in the submission
    image: Path
    mask: Path | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    root: Path
    train: tuple[Sample, ...]  # labelled, sorted by id
    test: tuple[Sample, ...]  # unlabelled, in submission row order


class Arrays(NamedTuple):
    """Decoded images at the training size, and what the submission needs to undo the resize."""

    ids: tuple[str, ...]
    images: np.ndarray  # uint8 [N, H, W, C]
    masks: np.ndarray | None  # uint8 [N, H, W] in {0, 1}; None for unlabelled images
    sizes: np.ndarray  # int32 [N, 2]: original (height, width)


# ---------------------------------------------------------------------------- discovery


def _list_images(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by stem; two files with one stem are an error.

    System files (`JUNK`) are skipped silently; any other non-image entry is named in one warning.
    """
    by_stem: dict[str, Path] = {}
    others = []
    for path in sorted(folder.iterdir()):
        if path.name in JUNK or path.name.startswith("._"):
            continue
        if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            others.append(path.name + ("/" if path.is_dir() else ""))
            continue
        if path.stem in by_stem:
            raise DataError(
                f"{path}: two files with the stem {path.stem!r} ({by_stem[path.stem].name} and "
                f"{path.name}); keep one of them"
            )
        by_stem[path.stem] = path
    if others:
        shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
        warnings.warn(
            f"{folder}: skipped {len(others)} entries that are not images: {shown}",
            DataWarning,
            stacklevel=3,
        )
    return by_stem


def _pair(image_dir: Path, mask_dir: Path) -> tuple[Sample, ...]:
    images, masks = _list_images(image_dir), _list_images(mask_dir)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if not masks:
        raise DataError(f"{mask_dir}: no masks")
    problems = [
        f"{images[s]}: image without a mask in {mask_dir}" for s in images if s not in masks
    ]
    problems += [
        f"{masks[s]}: mask without an image in {image_dir}" for s in masks if s not in images
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise DataError(f"{len(problems)} unpaired files: {shown}")
    return tuple(Sample(images[s].name, images[s], masks[s]) for s in sorted(images))


def _submission_ids(root: Path) -> tuple[Path, list[str]] | None:
    """The ids (column headed 'id') of sample_submission.csv or test.csv, in their order."""
    for name in ("sample_submission.csv", "test.csv"):
        path = root / name
        if path.is_file():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            header = [h.strip().lower() for h in rows[0]] if rows else []
            if "id" not in header:
                shown = ",".join(rows[0]) if rows else "none"
                raise DataError(f"{path}: no column headed 'id' (header: {shown})")
            column = header.index("id")
            ids = [row[column].strip() for row in rows[1:] if len(row) > column]
            repeated = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
            if repeated:
                raise DataError(
                    f"{path}: repeated ids {', '.join(repeated[:10])}: each test image once, please"
                )
            return path, ids
    return None


def _test_samples(root: Path) -> tuple[Sample, ...]:
    test_dir = root / "test" / "images"
    if not test_dir.is_dir():
        return ()
    files = {p.name: p for p in _list_images(test_dir).values()}
    listed = _submission_ids(root)
    if listed is None:
        if not files:
            raise DataError(f"{test_dir}: no images")
        # Ids sorted as strings ("10.png" < "9.png"), never in directory-listing order.
        return tuple(Sample(i, files[i]) for i in sorted(files))
    csv_path, ids = listed
    missing = [i for i in ids if i not in files]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"{csv_path}: {len(missing)} ids have no file in {test_dir}: {shown}")
    return tuple(Sample(i, files[i]) for i in ids)


def discover(root: str | os.PathLike) -> Layout:
    """Pair train/images with train/masks (or images/ with masks/) and list test/images."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    for image_dir, mask_dir in [
        (root / "train/images", root / "train/masks"),
        (root / "images", root / "masks"),
    ]:
        if image_dir.is_dir() and mask_dir.is_dir():
            return Layout(root, _pair(image_dir, mask_dir), _test_samples(root))
    raise DataError(
        f"{root}: expected train/images + train/masks (competition layout) or images/ + masks/"
    )


# ---------------------------------------------------------------------------- decoding


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
    return _to_8bit(_open(path)).convert("L" if grayscale else "RGB")


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


def _load_one(sample: Sample, size: tuple[int, int], grayscale: bool):
    image = read_image(sample.image, grayscale)
    original = (image.height, image.width)
    resized = np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    if resized.ndim == 2:
        resized = resized[..., None]
    if sample.mask is None:
        return resized, None, original
    mask = read_mask(sample.mask)
    if mask.shape != original:
        raise DataError(
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
            f"{sample.image.name} is {original[1]}x{original[0]}"
        )
    mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
    return resized, mask, original


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


# ---------------------------------------------------------------------------- split and batches


def split(
    n: int,
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    folds: int = 0,
    fold: int = 0,
) -> dict[str, np.ndarray]:
    """Deterministic seeded split of range(n) into sorted 'train', 'val' and 'test' indices.

    With `folds` K: the test hold-out is the one the same arguments give without folds (so
    scores compare with single runs); the other images are dealt into K folds (`fold_of`),
    fold `fold` validates and the others train.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            "--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction)) if val_fraction else 0
    n_test = int(round(n * test_fraction)) if test_fraction else 0
    if val_fraction and n_val == 0:
        n_val = 1
    if n - n_val - n_test < 1:
        raise DataError(f"only {n} labelled images: too few to split")
    test = np.sort(order[n_val : n_val + n_test])
    if folds:
        if folds < 2 or not 0 <= fold < folds:
            raise DataError(f"--folds {folds} --fold {fold}: need K >= 2 and 0 <= fold < K")
        pool = np.setdiff1d(np.arange(n), test)
        if len(pool) < folds:
            raise DataError(f"only {len(pool)} labelled images outside the hold-out: < {folds}")
        which = fold_of(len(pool), seed, folds)
        return {"val": pool[which == fold], "test": test, "train": pool[which != fold]}
    return {"val": np.sort(order[:n_val]), "test": test, "train": np.sort(order[n_val + n_test :])}


def fold_of(n: int, seed: int, folds: int) -> np.ndarray:
    """The fold of each of n images: a seeded shuffle dealt round-robin (sizes differ by <= 1)."""
    which = np.empty(n, np.int64)
    which[np.random.default_rng([seed, folds]).permutation(n)] = np.arange(n) % folds
    return which


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training drops the last partial batch."""
    return n // batch_size


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(
    n: int, batch_size: int, seed: int, epoch: int, start: int = 0
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, example indices) from batch `start` on; (epoch, index) is the position."""
    order = epoch_order(n, seed, epoch)
    for index in range(start, steps_per_epoch(n, batch_size)):
        yield index, order[index * batch_size : (index + 1) * batch_size]


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, valid) in order; the last batch is padded with index 0, valid False."""
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        valid = np.ones(batch_size, dtype=bool)
        valid[len(idx) :] = False
        yield np.concatenate([idx, np.zeros(batch_size - len(idx), dtype=idx.dtype)]), valid
