"""Files appear whole or not at all: written under a temporary name beside them, then renamed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from segjax.errors import UserError


def temporary(path: Path) -> Path:
    """The hidden name a file is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` then rename `tmp` over `path`; a failed write leaves nothing behind."""
    path = Path(path)
    tmp = temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def save_png(image, path: str | os.PathLike) -> Path:
    """A Pillow image as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def check_output_file(
    path: str | os.PathLike, flag: str = "--out", example: str = "submission.csv"
) -> Path:
    """A file about to be written: not an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: a folder; give the file to write, e.g. {path / example}")
    return path


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A folder about to be written into: not an existing file, nor a file's name."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: an existing file; give a folder to write into")
    if not path.exists() and path.suffix.lower() in FILE_SUFFIXES:
        raise UserError(f"{flag} {path}: looks like a file name; give a folder to write into")
    return path


# Names with these endings are files, never the folders segjax writes into.
FILE_SUFFIXES = {".png", ".jpg", ".jpeg", ".csv", ".json", ".txt", ".npy", ".jaxexport"}
