"""Error analysis of a run on its validation or held-out test split, at the original image size."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from segjax import metrics, viz
from segjax.config import InferenceOptions, check
from segjax.data import sources
from segjax.data.decode import Arrays
from segjax.errors import UserError
from segjax.files import check_output_folder, write_text
from segjax.inference import ensemble, postprocess
from segjax.inference.postprocess import PostProcess

SETTINGS = tuple((tta, pp) for tta in (False, True) for pp in (False, True))


def setting_name(tta: bool, postprocess: bool) -> str:
    return f"tta={'on' if tta else 'off'} postprocess={'on' if postprocess else 'off'}"


class Scoring(NamedTuple):
    """The images of a split, ready to score at their original size."""

    group: ensemble.Ensemble
    arrays: Arrays  # the first run's labelled images (the ids)
    indices: np.ndarray  # the split's images
    covers: np.ndarray  # [runs, images]: which run predicts which image
    images: list[np.ndarray]  # each run's images of the split, at its training size
    truths: list[np.ndarray]  # their masks at the original size


def _prepare(runs, options: InferenceOptions, split: str) -> Scoring:
    paths = [runs] if isinstance(runs, str | os.PathLike) else runs
    group = ensemble.load(paths, options.checkpoint, options.tta)
    arrays = ensemble.decode(group, sources.load_labelled)
    indices, covers = ensemble.split_of(group, arrays[0], split)
    if not len(indices):
        raise UserError(
            f"{group.home or 'the runs'}: no {split!r} split (train with --test-fraction for "
            "'test')"
        )
    first = group.members[0].loaded
    truths = sources.original_masks(first.config.data, [arrays[0].ids[i] for i in indices])
    images = [a.images[indices] for a in arrays]
    return Scoring(group, arrays[0], indices, covers, images, truths)


def _counts(index, prob, truths, post: PostProcess, use_pp: bool) -> np.ndarray:
    pred = postprocess.apply(prob, post, use_pp)
    return metrics.confusion_counts_np(pred, truths[index])


def _score(scoring: Scoring, post: PostProcess, batch_size, settings=SETTINGS) -> dict:
    """Per-image confusion counts [N, 4] at the original size for each (TTA, post-processing)
    setting; one prediction pass per TTA setting."""
    sizes = [t.shape for t in scoring.truths]
    counts: dict[tuple[bool, bool], list] = {s: [] for s in settings}
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for tta in sorted({tta for tta, _ in settings}):
            group = ensemble.with_tta(scoring.group, tta)
            chunks = ensemble.mean_probs(
                group, scoring.images, sizes, scoring.covers, batch_size, pool=pool
            )
            for part, probs in chunks:
                for use_pp in [pp for t, pp in settings if t == tta]:
                    one = functools.partial(
                        _counts, truths=scoring.truths, post=post, use_pp=use_pp
                    )
                    counts[(tta, use_pp)] += pool.map(one, part, probs)
    return {s: np.stack(c) for s, c in counts.items()}


def tuned_mean_dice(
    runs, options: InferenceOptions = InferenceOptions(), split: str = "val"
) -> float:
    """The mean per-image Dice at the images' original size (what a leaderboard scores), with
    the tuned threshold, post-processing and TTA."""
    scoring = _prepare(runs, options, split)
    post = ensemble.postprocess(scoring.group, options.threshold, options.postprocess)
    tta = all(m.tta for m in scoring.group.members)
    counts = _score(scoring, post, options.batch_size, settings=((tta, True),))
    return float(metrics.per_image_dice(counts[(tta, True)]).mean())


def per_image_table(scoring: Scoring, counts: dict) -> pd.DataFrame:
    """One row per image: id, original height and width, then Dice, IoU, precision and recall
    for each setting (columns suffixed _tta_on_pp_off, ...)."""
    table = pd.DataFrame(
        {
            "id": [scoring.arrays.ids[i] for i in scoring.indices],
            "height": [t.shape[0] for t in scoring.truths],
            "width": [t.shape[1] for t in scoring.truths],
        }
    )
    for (tta, pp), c in counts.items():
        tag = f"tta_{'on' if tta else 'off'}_pp_{'on' if pp else 'off'}"
        precision, recall = metrics.per_image_precision_recall(c)
        table[f"dice_{tag}"] = metrics.per_image_dice(c)
        table[f"iou_{tag}"] = metrics.per_image_iou(c)
        table[f"precision_{tag}"] = precision
        table[f"recall_{tag}"] = recall
    return table


def evaluate_run(
    runs: str | os.PathLike | Sequence[str | os.PathLike] | None,
    options: InferenceOptions = InferenceOptions(),
    *,
    split: str = "val",
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """Metrics with and without post-processing and flip TTA at the images' original size; a
    per-image table; the worst 8 images as a PNG.

    `runs` is one run, a k-fold folder or a list of runs (their mean probability; on 'val',
    each image by the runs that validate it: out of fold for folds). Writes
    <out_dir>/evaluation_<split>.json, evaluation_<split>.csv (the per-image table) and
    worst_<split>.png (default: the run). Returns the JSON's content, with the per-image table
    as a pandas DataFrame under "per_image". The worst images are the worst with the tuned TTA
    (unless `options.tta` says otherwise) and post-processing.
    """
    check(options)
    if out_dir is not None:
        check_output_folder(out_dir, "--out-dir")
    scoring = _prepare(runs, options, split)
    group, indices = scoring.group, scoring.indices
    if out_dir is None and group.home is None:
        raise UserError("several runs: say where the evaluation goes with --out-dir")
    out_dir = Path(out_dir) if out_dir else group.home
    post = ensemble.postprocess(group, options.threshold)
    counts = _score(scoring, post, options.batch_size)
    results = {}
    for (tta, pp), c in counts.items():
        tp, fp, fn, tn = (int(v) for v in c.sum(axis=0))
        confusion = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
        results[setting_name(tta, pp)] = {**metrics.summarize(c), "confusion": confusion}
    table = per_image_table(scoring, counts)
    tta = all(m.tta for m in group.members)
    dice = metrics.per_image_dice(counts[(tta, True)])
    worst = np.argsort(dice, kind="stable")[:8]
    captions = [f"{scoring.arrays.ids[indices[w]]} Dice {dice[w]:.3f}" for w in worst]
    first = group.members[0].loaded
    size = tuple(first.config.data.image_size)  # drawn at the (first) run's training size
    chunks = ensemble.mean_probs(
        ensemble.with_tta(group, tta),
        [i[worst] for i in scoring.images],
        [size] * len(worst),
        scoring.covers[:, worst],
        options.batch_size,
    )
    probs = [p for _, part in chunks for p in part]
    out_dir.mkdir(parents=True, exist_ok=True)
    worst_png = out_dir / f"worst_{split}.png"
    _draw_worst(scoring.arrays, indices[worst], probs, post, captions, worst_png)
    report = {
        "split": split,
        "images": len(indices),
        "checkpoint": first.step,
        "runs": ensemble.summary(group),
        "postprocess": post.__dict__,
        "tta": tta,
        "results": results,
        "worst": dict(zip(captions, [float(dice[w]) for w in worst], strict=True)),
    }
    write_text(out_dir / f"evaluation_{split}.json", json.dumps(report, indent=2) + "\n")
    write_text(out_dir / f"evaluation_{split}.csv", table.to_csv(index=False))
    return {**report, "per_image": table, "out_dir": str(out_dir)}


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
