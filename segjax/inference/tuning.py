"""Search the threshold and post-processing for the best mean Dice; tuned.json, read and written."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segjax import metrics
from segjax.errors import UserError
from segjax.files import write_text
from segjax.inference import postprocess
from segjax.inference.postprocess import PostProcess

THRESHOLDS = tuple(np.round(np.arange(0.3, 0.701, 0.05), 2).tolist())
OPEN_RADII = (0.0, 0.008, 0.016)  # fractions of the shorter side: 0, 2 and 4 px at 256
# Small components are judged against the largest one (a share of the image would also remove
# the small people of a crowded photo): 0 keeps every component.
MIN_RELATIVE = (0.0, 0.02, 0.05, 0.1, 0.2)
FILL_HOLES = (False, True)


def mean_dice(probs: np.ndarray, masks: np.ndarray, post: PostProcess, pool=None) -> float:
    """Per-image mean Dice of post-processed predictions (both empty = 1)."""

    def counts(i):
        return metrics.confusion_counts_np(postprocess.apply(probs[i], post), masks[i])

    mapper = pool.map if pool is not None else map
    return float(metrics.per_image_dice(np.stack(list(mapper(counts, range(len(probs)))))).mean())


def search(probs: np.ndarray, masks: np.ndarray, top: int = 2) -> tuple[PostProcess, dict]:
    """Thresholds first (no morphology), then morphology around the `top` best thresholds.

    Sizes are fractions of the image, so what is tuned at the training size carries over to
    the original size of the test images.
    """
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        by_threshold = {t: mean_dice(probs, masks, PostProcess(t), pool) for t in THRESHOLDS}
        best_t = sorted(by_threshold, key=lambda t: (-by_threshold[t], abs(t - 0.5)))[:top]
        results = {PostProcess(t): by_threshold[t] for t in best_t}
        for t, r, a, f in itertools.product(best_t, OPEN_RADII, MIN_RELATIVE, FILL_HOLES):
            post = PostProcess(t, r, fill_holes=f, min_relative=a)
            if post.active:
                results[post] = mean_dice(probs, masks, post, pool)
    # Ties go to the simpler setting (fewer operations), then the threshold nearest 0.5.
    best = max(
        results, key=lambda p: (round(results[p], 6), -_complexity(p), -abs(p.threshold - 0.5))
    )
    report = {
        "dice_at_0.5": by_threshold.get(0.5, float("nan")),
        "dice_by_threshold": {str(t): d for t, d in by_threshold.items()},
        "dice_tuned": results[best],
        "dice_threshold_only": max(by_threshold.values()),
    }
    return best, report


def _complexity(p: PostProcess) -> int:
    return int(p.open_radius > 0) + int(p.min_area > 0 or p.min_relative > 0) + int(p.fill_holes)


def save_tuned(path: str | os.PathLike, post: PostProcess, tta: bool, extra: dict) -> None:
    record = {"postprocess": dataclasses.asdict(post), "tta": tta, **extra}
    write_text(path, json.dumps(record, indent=2) + "\n")


def load_tuned(run_dir: str | os.PathLike) -> tuple[PostProcess, bool] | None:
    """(post-processing, TTA) from a run's tuned.json, or None when it was never tuned."""
    path = Path(run_dir) / "tuned.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        return PostProcess(**record["postprocess"]), bool(record["tta"])
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise UserError(
            f"{path}: not a segjax tuning record ({err}); tune again, or convert a run of segjax "
            "0.1 with tools/migrate_run.py"
        ) from err


def settings(run_dir, threshold: float | None = None, tta: bool | None = None):
    """(post-processing, TTA) as the run tuned them (defaults if never tuned), with the
    caller's threshold and TTA where given."""
    tuned = load_tuned(run_dir)
    post, tuned_tta = tuned if tuned else (PostProcess(), False)
    if threshold is not None:
        post = dataclasses.replace(post, threshold=threshold)
    return post, tuned_tta if tta is None else tta
