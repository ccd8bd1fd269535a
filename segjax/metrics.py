"""Confusion counts per image on the device; Dice, IoU and friends formed on the host."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def confusion_counts(pred_BxHxW: jax.Array, masks_BxHxW: jax.Array) -> jax.Array:
    """int32 [B, 4]: true positives, false positives, false negatives, true negatives per image."""
    p = pred_BxHxW.reshape(pred_BxHxW.shape[0], -1).astype(bool)
    y = masks_BxHxW.reshape(masks_BxHxW.shape[0], -1).astype(bool)
    counts = [p & y, p & ~y, ~p & y, ~p & ~y]
    return jnp.stack([jnp.sum(c, axis=1, dtype=jnp.int32) for c in counts], axis=1)


def confusion_counts_np(pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The host twin of `confusion_counts` for one image of any size: int64 [4]."""
    p, y = pred.astype(bool), mask.astype(bool)
    return np.array([np.sum(p & y), np.sum(p & ~y), np.sum(~p & y), np.sum(~p & ~y)])


def per_image_dice(counts_Nx4: np.ndarray) -> np.ndarray:
    """Dice of each image; an image whose truth and prediction are both empty scores 1."""
    tp, fp, fn = (counts_Nx4[:, i].astype(np.float64) for i in range(3))
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 1.0)


def per_image_iou(counts_Nx4: np.ndarray) -> np.ndarray:
    """IoU (Jaccard) of each image; both empty scores 1."""
    tp, fp, fn = (counts_Nx4[:, i].astype(np.float64) for i in range(3))
    denominator = tp + fp + fn
    return np.where(denominator > 0, tp / np.maximum(denominator, 1), 1.0)


def per_image_precision_recall(counts_Nx4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of each image; with nothing predicted (or nothing to find) the
    ratio is 1."""
    tp, fp, fn = (counts_Nx4[:, i].astype(np.float64) for i in range(3))
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return precision, np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)


def summarize(counts_Nx4: np.ndarray) -> dict[str, float]:
    """Scores named by how they average.

    `mean_*`: the mean over images of each image's score (the leaderboard's mean Dice).
    `global_*`, precision, recall, accuracy: one ratio of the counts summed over all pixels.
    """
    counts_Nx4 = np.asarray(counts_Nx4, dtype=np.int64).reshape(-1, 4)
    tp, fp, fn, tn = (float(v) for v in counts_Nx4.sum(axis=0))
    ratio = lambda a, b: a / b if b > 0 else 1.0
    mean = lambda per_image: float(per_image.mean()) if len(counts_Nx4) else float("nan")
    return {
        "mean_dice": mean(per_image_dice(counts_Nx4)),
        "global_dice": ratio(2 * tp, 2 * tp + fp + fn),
        "mean_iou": mean(per_image_iou(counts_Nx4)),
        "global_iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
    }


def to_mask(probs: jax.Array | np.ndarray, threshold: float = 0.5):
    """The one rule from probabilities to a mask: person where probability >= threshold.

    Used by training's validation metrics, tuning, evaluation, previews and the submission.
    """
    return probs >= threshold
