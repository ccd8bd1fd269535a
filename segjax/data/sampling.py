"""The seeded train/val/test split, k folds, and the batch order: pure functions of the seeds."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from segjax.errors import DataError


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
