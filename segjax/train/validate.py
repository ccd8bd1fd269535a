"""Validation during training: loss, Dice, IoU ... over the validation images, and the
epoch's preview drawn from the same predictions."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from segjax import metrics, parallel, viz
from segjax.data import sampling
from segjax.data.decode import Arrays
from segjax.data.sources import Splits
from segjax.train.step import Steps


class Validation(NamedTuple):
    summary: dict[str, float]  # loss, mean_dice, global_dice, mean_iou, ...
    preview_probs: np.ndarray  # probabilities [n, H, W] of the first n validation images


def labelled(arrays: Arrays) -> dict[str, np.ndarray]:
    return {"image": arrays.images, "mask": arrays.masks}


def validate(steps: Steps, state, arrays: Arrays, indices, batch_size: int, mesh, keep: int = 0):
    """Mean loss and Dice, IoU, ... over `indices` (padding never scored), and the
    probabilities of the first `keep` images for the preview.

    Batches are prepared ahead in a thread; results stay on the device until the end, and only
    the batches holding the kept images bring their probabilities back.
    """
    make = lambda b: (b[1], parallel.gather_batch(labelled(arrays), indices[b[0]], mesh))
    outs, kept = [], []
    with parallel.Prefetcher(sampling.eval_batches(len(indices), batch_size), make) as feed:
        for i, (valid, batch) in enumerate(feed):
            out = steps.eval(state, batch)
            if i * batch_size < keep:
                kept.append((valid, out["probs"]))
            outs.append((valid, out["loss"], out["counts"]))
    losses = [parallel.gather(loss)[valid] for valid, loss, _ in outs]
    counts = [parallel.gather(count)[valid] for valid, _, count in outs]
    probs = [parallel.gather(p)[valid] for valid, p in kept]
    summary = {
        "loss": float(np.mean(np.concatenate(losses))),
        **metrics.summarize(np.concatenate(counts)),
    }
    preview = np.concatenate(probs)[:keep] if probs else np.zeros((0,), np.float32)
    return Validation(summary, preview)


def validate_split(steps: Steps, state, splits: Splits, batch_size: int, mesh, keep: int = 0):
    """`validate` on the run's validation images."""
    return validate(steps, state, splits.arrays, splits.val, batch_size, mesh, keep)


def draw(splits: Splits, probs: np.ndarray, rows, folder: Path, epoch: int) -> None:
    """previews/epoch_NNN.png (image, truth, prediction of the first validation images) and
    curves.png from the metrics `rows`: process 0 only."""
    if jax.process_index() != 0:
        return
    idx = splits.val[: len(probs)]
    path = folder / f"previews/epoch_{epoch:03d}.png"
    viz.save_preview(splits.arrays.images[idx], splits.arrays.masks[idx], probs, path)
    if rows:
        viz.save_curves(rows, folder / "curves.png")
