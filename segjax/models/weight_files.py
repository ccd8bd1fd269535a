"""Pretrained weights from files, without torch and without running pickled code.

PyTorch `.pth` files (the legacy stream and the zip layout) are read by a restricted unpickler
that admits only what a state dict of tensors needs: `collections.OrderedDict`,
`torch._utils._rebuild_tensor_v2` and the typed storages. Tensors become numpy arrays.
`.safetensors` files are read with the `safetensors` package's numpy loader.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from segjax.errors import UserError

# torch's typed storages and their element types.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class WeightsError(UserError):
    """A weights file that cannot be read safely or does not fit: names the file and the key."""


class _StorageType(NamedTuple):
    dtype: Any


class _Storage(NamedTuple):
    key: str
    dtype: Any


class _TensorRef(NamedTuple):
    """A tensor to cut out of its storage once the storages are read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, shape, stride, requires_grad, hooks, metadata=None):
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds nothing but dicts, tensor references and storage markers."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise WeightsError(
            f"{self.path}: refused to load {module}.{name} (only a state dict of tensors is "
            "read; this file holds other Python objects)"
        )

    def persistent_load(self, pid):
        # Legacy: ('storage', type, key, location, numel, view); zip: the same without view.
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsError(f"{self.path}: unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self.path}: storage {key} has an unknown type")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError(f"{self.path}: storage views are not supported")
        return _Storage(key, storage_type.dtype)


def _materialize(path: Path, tree: Any, storages: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(tree, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(tree).__name__}")
    out = {}
    for name, ref in tree.items():
        if not isinstance(ref, _TensorRef):
            raise WeightsError(f"{path}: {name!r} is not a tensor")
        flat = storages[ref.storage.key]
        itemsize = flat.dtype.itemsize
        needed = (
            ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True)) + 1
        )
        if min(ref.shape, default=1) > 0 and needed > flat.size:
            raise WeightsError(f"{path}: tensor {name!r} runs past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], ref.shape, [s * itemsize for s in ref.stride], writeable=False
        )
        out[str(name)] = np.array(view)  # a contiguous copy
    return out


def _load_legacy(path: Path, raw: bytes) -> dict[str, np.ndarray]:
    stream = io.BytesIO(raw)
    plain = lambda: _RestrictedUnpickler(stream, path).load()
    if plain() != LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a PyTorch weights file (no magic number)")
    plain()  # protocol version
    info = plain()
    if not (isinstance(info, dict) and info.get("little_endian", True)):
        raise WeightsError(f"{path}: big-endian files are not supported")
    tree = plain()
    keys = plain()
    seen = {}

    def collect(node):
        if isinstance(node, _TensorRef):
            seen[node.storage.key] = node.storage.dtype
        elif isinstance(node, dict):
            for value in node.values():
                collect(value)

    collect(tree)
    storages = {}
    for key in keys:
        count = int.from_bytes(stream.read(8), "little", signed=True)
        dtype = np.dtype(seen.get(key, np.uint8))
        data = stream.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise WeightsError(f"{path}: truncated (storage {key})")
        storages[key] = np.frombuffer(data, dtype.newbyteorder("<"))
    return _materialize(path, tree, storages)


def _load_zip(path: Path, archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
        raise WeightsError(f"{path}: a zip file without data.pkl (not a PyTorch weights file)")
    prefix = pickles[0][: -len("data.pkl")]
    tree = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path).load()
    refs = [v for v in tree.values() if isinstance(v, _TensorRef)] if isinstance(tree, dict) else []
    storages = {}
    for ref in refs:
        key = ref.storage.key
        if key not in storages:
            try:
                data = archive.read(f"{prefix}data/{key}")
            except KeyError as err:
                raise WeightsError(f"{path}: storage {key} is missing") from err
            storages[key] = np.frombuffer(data, np.dtype(ref.storage.dtype).newbyteorder("<"))
    return _materialize(path, tree, storages)


def read_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict file (.pth/.pt/.bin, legacy or zip) as {name: numpy array}."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise WeightsError(f"{path}: cannot read ({err.strerror or err})") from err
    try:
        if zipfile.is_zipfile(io.BytesIO(raw)):
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                return _load_zip(path, archive)
        return _load_legacy(path, raw)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as err:
        raise WeightsError(f"{path}: not a readable PyTorch state dict ({err})") from err


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        from safetensors.numpy import load_file
    except ImportError as err:  # a declared dependency: only a broken install gets here
        raise WeightsError("reading .safetensors needs the safetensors package") from err
    try:
        return dict(load_file(str(path)))
    except (OSError, ValueError, TypeError) as err:
        raise WeightsError(f"{path}: not a readable .safetensors file ({err})") from err
    except Exception as err:  # safetensors raises its own SafetensorError for bad headers
        raise WeightsError(f"{path}: not a readable .safetensors file ({err})") from err


def check_readable(path: str | os.PathLike) -> None:
    """A quick look at a weights file before anything is compiled, so that a wrong file fails
    at once: a .safetensors header that parses, or a PyTorch file's first bytes (a zip archive
    or a pickle). `read_state_dict` reads and checks the whole file later."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
        except ImportError as err:  # a declared dependency: only a broken install gets here
            raise WeightsError("reading .safetensors needs the safetensors package") from err
        try:
            with safe_open(str(path), framework="numpy"):
                return
        except Exception as err:  # safetensors raises its own SafetensorError for bad headers
            raise WeightsError(f"{path}: not a readable .safetensors file ({err})") from err
    with path.open("rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise WeightsError(
            f"{path}: not a readable PyTorch state dict (neither a zip archive nor a pickle)"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read .safetensors with safetensors, anything else as a PyTorch file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch(path)
