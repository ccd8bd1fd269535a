"""The competition's files: find and pair images with masks, list the test images in row order."""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import warnings
from pathlib import Path

from segjax.errors import DataError, DataWarning

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# What operating systems and notebooks leave in folders: skipped without a word.
JUNK = {".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints", "__MACOSX"}


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


def list_images(folder: Path) -> dict[str, Path]:
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
    images, masks = list_images(image_dir), list_images(mask_dir)
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
    files = {p.name: p for p in list_images(test_dir).values()}
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
