"""Error analysis of a run on its validation or held-out test split, at the original image size."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segjax import metrics, viz
from segjax.config import InferenceOptions
from segjax.data import sources
from segjax.errors import UserError
from segjax.files import write_text
from segjax.inference import ensemble, postprocess
from segjax.inference.postprocess import PostProcess


def evaluate_run(
    runs: str | os.PathLike | Sequence[str | os.PathLike] | None,
    options: InferenceOptions = InferenceOptions(),
    *,
    split: str = "val",
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """Metrics with and without post-processing and flip TTA; worst 8 images as a PNG.

    `runs` is one run, a k-fold folder or a list of runs (their mean probability; on 'val',
    each image by the runs that validate it: out of fold for folds). Writes
    <out_dir>/evaluation_<split>.json and <out_dir>/worst_<split>.png (default: the run).
    The worst images are drawn with the tuned TTA unless `options.tta` says otherwise.
    """
    paths = [runs] if isinstance(runs, str | os.PathLike) else runs
    batch_size = options.batch_size
    group = ensemble.load(paths, options.checkpoint, options.tta)
    if out_dir is None and group.home is None:
        raise UserError("several runs: say where the evaluation goes with --out-dir")
    out_dir = Path(out_dir) if out_dir else group.home
    arrays = ensemble.decode(group, sources.load_labelled)
    indices, covers = ensemble.split_of(group, arrays[0], split)
    if not len(indices):
        raise UserError(
            f"{group.home or 'the runs'}: no {split!r} split (train with --test-fraction for "
            "'test')"
        )
    first = group.members[0].loaded
    truths = sources.original_masks(first.config.data, [arrays[0].ids[i] for i in indices])
    post = ensemble.postprocess(group, options.threshold)
    images = [a.images[indices] for a in arrays]
    results, per_image = _score(group, images, truths, covers, post, batch_size)
    tta = all(m.tta for m in group.members)
    dice = per_image[f"tta={'on' if tta else 'off'} postprocess=on"]
    worst = np.argsort(dice, kind="stable")[:8]
    captions = [f"{arrays[0].ids[indices[w]]} Dice {dice[w]:.3f}" for w in worst]
    size = tuple(first.config.data.image_size)  # drawn at the (first) run's training size
    chunks = ensemble.mean_probs(
        ensemble.with_tta(group, tta),
        [i[worst] for i in images],
        [size] * len(worst),
        covers[:, worst],
        batch_size,
    )
    probs = [p for _, part in chunks for p in part]
    out_dir.mkdir(parents=True, exist_ok=True)
    _draw_worst(arrays[0], indices[worst], probs, post, captions, out_dir / f"worst_{split}.png")
    report = {
        "split": split,
        "images": len(indices),
        "checkpoint": first.step,
        "runs": ensemble.summary(group),
        "postprocess": post.__dict__,
        "results": results,
        "worst": dict(zip(captions, [float(dice[w]) for w in worst], strict=True)),
    }
    write_text(out_dir / f"evaluation_{split}.json", json.dumps(report, indent=2) + "\n")
    return {**report, "out_dir": str(out_dir)}


def _counts(index, prob, truths, post: PostProcess, use_pp: bool) -> np.ndarray:
    pred = postprocess.apply(prob, post, use_pp)
    return metrics.confusion_counts_np(pred, truths[index])


def _score(group, images, truths, covers, post: PostProcess, batch_size):
    """Metrics for the four settings (TTA, post-processing each on or off), at original size.

    Returns (results by setting, per-image Dice by setting).
    """
    sizes = [t.shape for t in truths]
    results, per_image = {}, {}
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for tta in (False, True):
            counts: dict[bool, list] = {False: [], True: []}
            chunks = ensemble.mean_probs(
                ensemble.with_tta(group, tta), images, sizes, covers, batch_size, pool=pool
            )
            for part, probs in chunks:
                for use_pp in (False, True):
                    one = functools.partial(_counts, truths=truths, post=post, use_pp=use_pp)
                    counts[use_pp] += pool.map(one, part, probs)
            for use_pp in (False, True):
                key = f"tta={'on' if tta else 'off'} postprocess={'on' if use_pp else 'off'}"
                stacked = np.stack(counts[use_pp])
                tp, fp, fn, tn = (int(v) for v in stacked.sum(axis=0))
                results[key] = {
                    **metrics.summarize(stacked),
                    "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
                }
                per_image[key] = metrics.per_image_dice(stacked)
    return results, per_image


def _draw_worst(arrays, indices, probs, post: PostProcess, captions, path: Path) -> None:
    """Image, truth, prediction and error map of each of the worst images, one row each."""
    rows = []
    for i, prob in zip(indices, probs, strict=True):
        image, truth = arrays.images[i], arrays.masks[i]
        pred = postprocess.apply(prob, post)
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
        f"{report['split']} split, {report['images']} images, {report['runs']}",
        f"{'setting':32s} {'mDice':>7s} {'gDice':>7s} {'gIoU':>7s} {'prec':>7s} {'recall':>7s} "
        f"{'acc':>7s}",
    ]
    for key, r in report["results"].items():
        lines.append(
            f"{key:32s} {r['mean_dice']:7.4f} {r['global_dice']:7.4f} {r['global_iou']:7.4f} "
            f"{r['precision']:7.4f} {r['recall']:7.4f} {r['accuracy']:7.4f}"
        )
    return "\n".join(lines)
