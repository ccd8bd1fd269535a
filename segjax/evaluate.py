"""Error analysis of a run on its validation or held-out test split, at the original image size."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segjax import metrics, postprocess, predict, sources, tune, viz
from segjax.errors import UserError
from segjax.files import write_text
from segjax.postprocess import PostProcess


def _counts(probs, sizes, truths, params: PostProcess, use_pp: bool) -> np.ndarray:
    def one(i):
        pred = postprocess.apply(predict.resize_prob(probs[i], sizes[i]), params, use_pp)
        return metrics.confusion_counts_np(pred, truths[i])

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(one, range(len(probs)))))


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str = "val",
    which: str = "best",
    batch_size: int | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """Metrics with and without post-processing and flip TTA; worst 8 images as a PNG.

    Writes <out_dir>/evaluation_<split>.json and <out_dir>/worst_<split>.png (default: the run).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    loaded = predict.load_run(run_dir, which)
    config, splits = sources.load_splits(loaded.config)
    indices = {"val": splits.val, "test": splits.test}[split]
    if not len(indices):
        raise UserError(
            f"{run_dir}: the run has no {split!r} split (train with --test-fraction for 'test')"
        )
    truths = sources.original_masks(config.data, [splits.arrays.ids[i] for i in indices])
    tuned = tune.load_tuned(run_dir)
    params = tuned[0] if tuned else PostProcess()
    batch = batch_size or config.train.eval_batch_size
    results, per_image = _score(loaded, splits.arrays.images[indices], truths, params, batch)
    dice, probs = per_image[f"tta={'on' if tuned and tuned[1] else 'off'} postprocess=on"]
    worst = np.argsort(dice, kind="stable")[:8]
    captions = [f"{splits.arrays.ids[indices[w]]} Dice {dice[w]:.3f}" for w in worst]
    out_dir.mkdir(parents=True, exist_ok=True)
    _draw_worst(
        splits.arrays,
        indices[worst],
        probs[worst],
        params,
        captions,
        out_dir / f"worst_{split}.png",
    )
    report = {
        "split": split,
        "images": len(indices),
        "checkpoint": loaded.step,
        "postprocess": params.__dict__,
        "results": results,
        "worst": dict(zip(captions, [float(dice[w]) for w in worst], strict=True)),
    }
    write_text(out_dir / f"evaluation_{split}.json", json.dumps(report, indent=2) + "\n")
    return report


def _score(loaded, images, truths, params: PostProcess, batch: int):
    """Metrics for the four settings (TTA, post-processing each on or off), at original size.

    Returns (results by setting, (per-image Dice, probabilities) by setting).
    """
    sizes = [t.shape for t in truths]
    results, per_image = {}, {}
    for tta in (False, True):
        probs = predict.predict_all(loaded, images, batch, tta)
        for use_pp in (False, True):
            key = f"tta={'on' if tta else 'off'} postprocess={'on' if use_pp else 'off'}"
            counts = _counts(probs, sizes, truths, params, use_pp)
            tp, fp, fn, tn = (int(v) for v in counts.sum(axis=0))
            results[key] = {
                **metrics.summarize(counts),
                "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            }
            per_image[key] = (metrics.per_image_dice(counts), probs)
    return results, per_image


def _draw_worst(arrays, indices, probs, params: PostProcess, captions, path: Path) -> None:
    """Image, truth, prediction and error map of each of the worst images, one row each."""
    rows = []
    for i, prob in zip(indices, probs, strict=True):
        image, truth = arrays.images[i], arrays.masks[i]
        pred = postprocess.apply(prob, params)
        rows.append(
            [
                viz._rgb(image),
                viz.overlay(image, truth, viz.TRUTH),
                viz.overlay(image, pred, viz.PRED),
                viz.error_map(truth, pred),
            ]
        )
    titles = ["image", "truth", "prediction", "errors (red FP, blue FN)"]
    viz.save_grid(rows, titles, path, captions)


def format_report(report: dict) -> str:
    """A small fixed-width table of the four settings."""
    lines = [
        f"{report['split']} split, {report['images']} images, checkpoint {report['checkpoint']}",
        f"{'setting':32s} {'mDice':>7s} {'gDice':>7s} {'gIoU':>7s} {'prec':>7s} {'recall':>7s} "
        f"{'acc':>7s}",
    ]
    for key, r in report["results"].items():
        lines.append(
            f"{key:32s} {r['mean_dice']:7.4f} {r['global_dice']:7.4f} {r['global_iou']:7.4f} "
            f"{r['precision']:7.4f} {r['recall']:7.4f} {r['accuracy']:7.4f}"
        )
    return "\n".join(lines)
