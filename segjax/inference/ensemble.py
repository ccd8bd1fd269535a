"""Several runs as one model: a k-fold folder or a list of runs, and their mean probability.

A single run is an ensemble of one (its probabilities pass through unchanged), so submission
and evaluation have one path. Each image's probability is the mean of the members that cover
it, each member's probability resized to the image's size first; the means are made chunk by
chunk, so memory holds one chunk's probabilities, never one set per run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from segjax.data import sources
from segjax.data.decode import Arrays
from segjax.errors import UserError
from segjax.inference import onnx_export, predictor, tuning
from segjax.inference.postprocess import PostProcess
from segjax.inference.run_loader import Loaded, load_run
from segjax.runs import run_folder


class Member(NamedTuple):
    loaded: Loaded
    tta: bool  # flip TTA as the run tuned it, or as the caller asked


class Ensemble(NamedTuple):
    members: tuple[Member, ...]
    folder: Path | None  # the k-fold folder (run_folder.FOLDS_FILE) the members come from
    home: Path | None  # where outputs go by default: the folder, a single run, or None

    @property
    def names(self) -> list[str]:
        return [str(m.loaded.run_dir) for m in self.members]


def run_dirs(paths: Sequence[str | os.PathLike] | None) -> tuple[list[Path], Path | None]:
    """The run folders of `paths` (default: the newest run or k-fold folder), and the k-fold
    folder when `paths` is one."""
    paths = [Path(p) for p in paths] if paths else [run_folder.newest_run(folds=True)]
    if len(paths) == 1 and run_folder.is_folds(paths[0]):
        folder = paths[0]
        record = run_folder.load_folds(folder)
        missing = [i for i in range(record["folds"]) if i not in record["done"]]
        if missing:
            raise UserError(
                f"{folder}: fold {missing[0]} of {record['folds']} is not trained yet; finish "
                f"with: segjax train --fold all --resume --run-dir {folder}"
            )
        return [run_folder.fold_dir(folder, i) for i in range(record["folds"])], folder
    for path in paths:
        if run_folder.is_folds(path):
            raise UserError(f"{path} is a k-fold folder: pass it alone, not in a list of runs")
    if len(set(paths)) < len(paths):
        raise UserError("a run is named twice in --run-dir")
    return paths, None


def load(paths, which: str = "best", tta: bool | None = None, options=None) -> Ensemble:
    """Load every member's weights; their data must be the same. `options` (an
    InferenceOptions) may name another backend for the network (one run only)."""
    dirs, folder = run_dirs(paths)
    loaded = [load_run(d, which) for d in dirs]
    if options is not None and options.backend != "jax":
        if len(loaded) > 1:
            raise UserError("--backend onnxruntime predicts with one run, not an ensemble")
        tuned_tta = tuning.settings(dirs[0], None, tta)[1]
        loaded = [onnx_export.attach(loaded[0], options.onnx or None, tuned_tta)]
    first = loaded[0]
    for other in loaded[1:]:
        if other.config.data.data_dir != first.config.data.data_dir:
            raise UserError(
                f"{other.run_dir} trained on {other.config.data.data_dir or 'the demo data'!r} "
                f"and {first.run_dir} on {first.config.data.data_dir or 'the demo data'!r}: an "
                "ensemble's runs must share their data"
            )
    members = tuple(Member(m, tuning.settings(m.run_dir, None, tta)[1]) for m in loaded)
    return Ensemble(members, folder, folder or (dirs[0] if len(dirs) == 1 else None))


def with_tta(ensemble: Ensemble, tta: bool) -> Ensemble:
    return ensemble._replace(members=tuple(m._replace(tta=tta) for m in ensemble.members))


def decode(ensemble: Ensemble, read) -> list[Arrays]:
    """Each member's images at its own training size, `read(DataConfig)` once per size; the
    ids must agree (one order for every member)."""
    key = lambda m: (m.loaded.config.data.image_size, m.loaded.config.data.grayscale)
    by_key: dict = {}
    for m in ensemble.members:
        if key(m) not in by_key:
            by_key[key(m)] = read(m.loaded.config.data)
    arrays = [by_key[key(m)] for m in ensemble.members]
    for a, m in zip(arrays[1:], ensemble.members[1:], strict=True):
        if list(a.ids) != list(arrays[0].ids):
            raise UserError(f"{m.loaded.run_dir}: its images' ids differ from the other runs'")
    return arrays


def mean_probs(
    ensemble: Ensemble,
    images: Sequence[np.ndarray],
    sizes: Sequence[tuple[int, int]],
    covers: np.ndarray | None = None,
    batch_size: int | None = None,
    chunk: int = 256,
    pool: ThreadPoolExecutor | None = None,
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield (positions, probabilities at `sizes[position]`) chunk by chunk, in order.

    `images[m]` are member m's uint8 images at its training size (one row per position);
    `covers[m, i]` says whether member m predicts image i (default: every member, every image).
    """
    n = len(sizes)
    covers = np.ones((len(ensemble.members), n), bool) if covers is None else covers
    mapper = pool.map if pool is not None else map
    for start in range(0, n, chunk):
        part = np.arange(start, min(start + chunk, n))
        sums: list = [None] * len(part)
        counts = np.zeros(len(part), np.int64)
        for m, member in enumerate(ensemble.members):
            mine = part[covers[m, part]]
            if not len(mine):
                continue
            batch = batch_size or member.loaded.config.train.eval_batch_size
            for idx, probs in predictor.iterate_probs(
                member.loaded, images[m][mine], batch, member.tta
            ):
                resize = lambda ip: predictor.resize_prob(ip[1], sizes[ip[0]])
                resized = mapper(resize, zip(mine[idx], probs, strict=True))
                for slot, prob in zip(mine[idx] - start, resized, strict=True):
                    sums[slot] = prob if sums[slot] is None else sums[slot] + prob
                counts[mine[idx] - start] += 1
        if (counts == 0).any():
            raise ValueError("an image no member covers")
        yield part, [s if c == 1 else s / np.float32(c) for s, c in zip(sums, counts, strict=True)]


def split_of(ensemble: Ensemble, arrays: Arrays, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images of a split and which members cover each: (indices, covers [members, n]).

    'val': the union of the members' validation images, each covered by the members that
    validate it (out-of-fold for folds, every member when they share a split); any other
    overlap is an error. 'test': the hold-out every member shares.
    """
    parts = [sources.split(m.loaded.config.data, len(arrays.ids)) for m in ensemble.members]
    sets = [p[split] for p in parts]
    if split == "test" or len(sets) == 1:
        for s, m in zip(sets[1:], ensemble.members[1:], strict=True):
            if not np.array_equal(s, sets[0]):
                raise UserError(
                    f"{m.loaded.run_dir} holds out other {split} images than "
                    f"{ensemble.members[0].loaded.run_dir} (--split-seed, --val-fraction, "
                    "--test-fraction differ)"
                )
        return sets[0], np.ones((len(sets), len(sets[0])), bool)
    union = np.unique(np.concatenate(sets))
    shared = all(np.array_equal(s, sets[0]) for s in sets)
    disjoint = sum(len(s) for s in sets) == len(union)
    if not (shared or disjoint):
        raise UserError(
            "the runs' validation images partly overlap: an ensemble is tuned and scored on "
            "validation images all runs share, or on the out-of-fold images of k-fold runs"
        )
    return union, np.stack([np.isin(union, s) for s in sets])


def tune(group: Ensemble, batch_size: int | None = None, arrays=None) -> tuple[PostProcess, dict]:
    """Threshold and post-processing searched on the validation images' mean probabilities
    (at the first member's training size, as training validates). `arrays`: the members'
    labelled images, if decoded already."""
    arrays = arrays or decode(group, sources.load_labelled)
    indices, covers = split_of(group, arrays[0], "val")
    size = tuple(group.members[0].loaded.config.data.image_size)
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        chunks = mean_probs(
            group,
            [a.images[indices] for a in arrays],
            [size] * len(indices),
            covers,
            batch_size,
            pool=pool,
        )
        probs = np.concatenate([np.stack(p) for _, p in chunks])
    post, report = tuning.search(probs, np.asarray(arrays[0].masks[indices]))
    out_of_fold = len(group.members) > 1 and bool((covers.sum(axis=0) == 1).all())
    return post, {"val_images": len(indices), "out_of_fold": out_of_fold, **report}


def tune_run(run_dir: str | os.PathLike, which: str = "best") -> dict:
    """A run's tuning (an ensemble of one): threshold and post-processing searched with flip TTA
    off and on, the better kept in <run>/tuned.json. Returns that record."""
    group = load([run_dir], which)
    arrays = decode(group, sources.load_labelled)
    best = None
    for tta in (False, True):
        post, report = tune(with_tta(group, tta), arrays=arrays)
        if best is None or report["dice_tuned"] > best[2]["dice_tuned"] + 1e-6:
            best = (post, tta, report)
    post, tta, report = best
    report.pop("out_of_fold")
    extra = {"checkpoint": group.members[0].loaded.step, **report}
    if jax.process_index() == 0:
        tuning.save_tuned(Path(run_dir) / "tuned.json", post, tta, extra)
    return {"postprocess": dataclasses.asdict(post), "tta": tta, **extra}


def postprocess(ensemble: Ensemble, threshold: float | None = None, use: bool = True):
    """The ensemble's post-processing: a single run's tuned.json; a k-fold folder's tuned.json
    (tuned on the out-of-fold predictions; made and kept here if missing); a list of runs
    tuned now on the validation images they share."""
    if len(ensemble.members) == 1 and ensemble.folder is None:
        post = tuning.settings(ensemble.members[0].loaded.run_dir)[0]
    elif ensemble.folder is not None and (ensemble.folder / "tuned.json").exists():
        post = tuning.load_tuned(ensemble.folder)[0]
    else:
        post, _ = tune_and_keep(ensemble)
    if threshold is not None:
        post = dataclasses.replace(post, threshold=threshold)
    return post if use else PostProcess(post.threshold)


def tune_and_keep(ensemble: Ensemble) -> tuple[PostProcess, dict]:
    """`tune`; a k-fold folder keeps the result in <folder>/tuned.json (with each
    member's TTA), so later submissions and evaluations read it instead of tuning again."""
    post, report = tune(ensemble)
    if ensemble.folder is not None and jax.process_index() == 0:
        ttas = [m.tta for m in ensemble.members]
        extra = {"runs": ensemble.names, "member_tta": ttas, **report}
        tuning.save_tuned(ensemble.folder / "tuned.json", post, all(ttas), extra)
    return post, report


def summary(ensemble: Ensemble) -> str:
    """'checkpoint 7' for one run; '5 runs (checkpoints 7, 8, ...)' for several."""
    steps = [str(m.loaded.step) for m in ensemble.members]
    if len(steps) == 1:
        return f"checkpoint {steps[0]}"
    return f"{len(steps)} runs averaged (checkpoints {', '.join(steps)})"
