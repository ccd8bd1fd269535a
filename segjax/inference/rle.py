"""Run-length encoding of binary masks: 1-indexed `start length` pairs, vectorized numpy."""

from __future__ import annotations

import numpy as np


def encode(mask_HxW: np.ndarray, order: str = "F") -> str:
    """Runs of a mask flattened column-major ("F", the competition's) or row-major ("C").

    An empty mask gives the empty string.
    """
    flat = np.asarray(mask_HxW, dtype=bool).ravel(order=order)
    padded = np.concatenate([[False], flat, [False]])
    # 1-indexed pixel positions where a run starts, and one past where it ends.
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    edges[1::2] -= edges[::2]
    return " ".join(map(str, edges.tolist()))


def parse(rle: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts (1-indexed) and lengths of an RLE string, checked against an image of n_pixels."""
    try:
        numbers = np.array(rle.split(), dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"not a list of integers: {rle[:40]!r}") from err
    if len(numbers) % 2:
        raise ValueError("odd number of values: expected start length pairs")
    starts, lengths = numbers[0::2], numbers[1::2]
    if len(starts) and (starts.min() < 1 or lengths.min() < 1):
        raise ValueError("starts and lengths must be positive")
    ends = starts + lengths - 1
    if len(starts) and ends.max() > n_pixels:
        raise ValueError(f"a run ends at pixel {ends.max()}, past the image's {n_pixels} pixels")
    if np.any(starts[1:] <= ends[:-1]):
        raise ValueError("runs overlap or are not in increasing order")
    return starts, lengths


def decode(rle: str, shape: tuple[int, int], order: str = "F") -> np.ndarray:
    """The bool mask of `shape` (height, width) that `encode` turned into `rle`."""
    n = shape[0] * shape[1]
    starts, lengths = parse(rle, n)
    steps = np.zeros(n + 1, dtype=np.int32)
    np.add.at(steps, starts - 1, 1)
    np.add.at(steps, starts - 1 + lengths, -1)
    return (np.cumsum(steps[:n]) > 0).reshape(shape, order=order)
