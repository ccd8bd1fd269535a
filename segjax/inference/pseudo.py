"""Pseudo-labels: the data's unlabelled test images, labelled by a finished run's tuned
predictions, as extra training images for a new run (`--pseudo-label RUN`).

Only test images (the ones a submission predicts, which have no masks) are labelled, so no
validation or held-out image can be. The labelling run must share the new run's data and split,
so it never trained on the new run's validation or held-out images either.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from segjax.config import Config
from segjax.data import decode, sources
from segjax.errors import UserError
from segjax.inference import ensemble, postprocess
from segjax.runs import run_folder

SPLIT_SETTINGS = ("data_dir", "split_seed", "val_fraction", "test_fraction", "folds", "fold")


def check_teacher(teacher: Config, config: Config, source: Path) -> None:
    """The labelling run must have the new run's data and split (named setting by setting)."""
    for name in SPLIT_SETTINGS:
        theirs, ours = getattr(teacher.data, name), getattr(config.data, name)
        if theirs != ours:
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"--pseudo-label {source}: that run has {flag} {theirs!r} and this one "
                f"{ours!r}; pseudo-labels must come from a run of the same data and split (else "
                "it may have trained on this run's validation or held-out images)"
            )


def label_test(source: str | os.PathLike, config: Config) -> decode.Arrays:
    """The data's test images at `config`'s training size, with the masks the finished run
    `source` submits for them (its best checkpoint, tuned threshold, TTA and post-processing,
    at each image's original size), resized to the training size as labelled masks are."""
    source = Path(source)
    if run_folder.is_folds(source):  # a k-fold teacher: this fold's run labels this fold's
        if not config.data.folds:
            raise UserError(
                f"--pseudo-label {source} is a k-fold folder: its folds trained on every "
                "labelled image, so also on this run's validation images; name a single run, "
                "or train folds of the same split with it"
            )
        source = run_folder.fold_dir(source, config.data.fold)
    if not (source / run_folder.CONFIG_FILE).is_file():
        raise UserError(
            f"--pseudo-label {source}: not a segjax run folder (no {run_folder.CONFIG_FILE}); "
            "name a finished run, e.g. runs/<name>"
        )
    group = ensemble.load([source])
    check_teacher(group.members[0].loaded.config, config, source)
    teacher_arrays = ensemble.decode(group, sources.load_test)[0]
    teacher_data = group.members[0].loaded.config.data
    same_decode = (teacher_data.image_size, teacher_data.grayscale) == (
        config.data.image_size,
        config.data.grayscale,
    )
    ours = teacher_arrays if same_decode else sources.load_test(config.data)
    if list(ours.ids) != list(teacher_arrays.ids):
        raise UserError(f"--pseudo-label {source}: its test images differ from this run's data")
    post = ensemble.postprocess(group)
    sizes = [tuple(s) for s in ours.sizes]
    masks = np.empty(ours.images.shape[:3], np.uint8)
    for part, probs in ensemble.mean_probs(group, [teacher_arrays.images], sizes):
        for i, prob in zip(part, probs, strict=True):
            mask = postprocess.apply(prob, post, post.active).astype(np.uint8)
            masks[i] = decode.resize_mask(mask, config.data.image_size)
    return ours._replace(masks=masks)


def record(arrays: decode.Arrays, source: str | os.PathLike) -> str:
    """What the pseudo-labels were (for run.json; a resume checks it): how many, from which
    run, and the sha256 of their ids, images and masks."""
    h = hashlib.sha256()
    for part in (np.asarray(arrays.ids).astype(str), arrays.images, arrays.masks):
        h.update(np.ascontiguousarray(part).tobytes())
    return f"{len(arrays.ids)} test images labelled by {source}, sha256:{h.hexdigest()}"
