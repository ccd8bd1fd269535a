"""The Kaggle file: one row per test image in stable order, written atomically, then validated."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
from tqdm.auto import tqdm

from segjax.config import InferenceOptions, check
from segjax.data import sources
from segjax.errors import UserError
from segjax.files import check_output_file, write_text
from segjax.inference import ensemble, postprocess, rle
from segjax.inference.postprocess import PostProcess

HEADER = ("id", "encoded_pixels")


@dataclasses.dataclass(frozen=True)
class Report:
    path: Path
    rows: int
    empty_fraction: float
    postprocess: PostProcess
    tta: bool  # flip TTA (for several runs: every run's)
    checkpoint: int  # the (first) run's checkpoint
    runs: str = ""  # what was averaged: "checkpoint 7", or "5 runs averaged (...)"


def write_csv(path: str | os.PathLike, ids: Sequence[str], rles: Sequence[str]) -> None:
    """Write under a temporary name, then rename: a reader never sees half a file."""
    path = Path(path)
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(HEADER)
    out.writerows(zip(ids, rles, strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buffer.getvalue())


def validate(
    path: str | os.PathLike, ids: Sequence[str], sizes: Sequence[tuple[int, int]]
) -> float:
    """Check header, ids (set, count, order) and that every RLE decodes inside its image.

    Returns the fraction of empty masks; raises ValueError naming the first problem.
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != HEADER:
        raise ValueError(f"{path}: header must be {','.join(HEADER)}")
    body = rows[1:]
    if len(body) != len(ids):
        raise ValueError(f"{path}: {len(body)} rows, expected one per test image ({len(ids)})")
    size_of = dict(zip(ids, sizes, strict=True))
    empty = 0
    for line, (row, expected) in enumerate(zip(body, ids, strict=True), start=2):
        if len(row) != 2:
            raise ValueError(f"{path}:{line}: expected 2 fields, got {len(row)}")
        if row[0] not in size_of:
            raise ValueError(f"{path}:{line}: unknown id {row[0]!r}")
        if row[0] != expected:
            raise ValueError(f"{path}:{line}: id {row[0]!r} out of order (expected {expected!r})")
        h, w = size_of[row[0]]
        try:
            rle.parse(row[1], int(h) * int(w))
        except ValueError as err:
            raise ValueError(f"{path}:{line}: id {row[0]}: bad RLE for {w}x{h}: {err}") from err
        empty += row[1].strip() == ""
    return empty / max(1, len(body))


def make_submission(
    runs: str | os.PathLike | Sequence[str | os.PathLike] | None,
    options: InferenceOptions = InferenceOptions(),
    *,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    order: str = "F",
) -> Report:
    """Predict every test image of the data folder and write <run>/submission.csv.

    `runs` is one run, a k-fold folder, or a list of runs (see `segjax.inference.ensemble`;
    None: the newest run or k-fold folder): their probabilities are averaged at each image's
    original size, then one threshold and post-processing apply. Defaults come from the runs:
    their data folder, best checkpoint, TTA and tuning.
    """
    check(options)
    if out is not None:
        check_output_file(out)
    paths = [runs] if isinstance(runs, str | os.PathLike) else runs
    group = ensemble.load(paths, options.checkpoint, options.tta, options)
    if out is None and group.home is None:
        raise UserError("several runs: say where the submission goes with --out")
    path = Path(out) if out else group.home / "submission.csv"
    arrays = ensemble.decode(group, lambda d: sources.load_test(d, data_dir))
    post = ensemble.postprocess(group, options.threshold, options.postprocess)
    rles = _encode_all(group, arrays, options, post, order)
    ids, sizes = arrays[0].ids, [tuple(s) for s in arrays[0].sizes]
    empty = sum(r == "" for r in rles) / len(rles)
    if jax.process_index() == 0:  # every process took part in predicting; one writes
        write_csv(path, ids, rles)
        empty = validate(path, ids, sizes)
    first = group.members[0]
    every = all(m.tta for m in group.members)
    return Report(path, len(rles), empty, post, every, first.loaded.step, ensemble.summary(group))


def _encode_all(group, arrays, options: InferenceOptions, post: PostProcess, order: str) -> list:
    """The RLE of every image: the runs' mean probability at its size, post-processed and
    encoded in a thread pool, chunk by chunk."""
    sizes = [tuple(s) for s in arrays[0].sizes]
    rles: list[str] = [""] * len(sizes)
    bar = tqdm(total=len(sizes), desc="predict", unit="img", disable=not options.progress)
    encode = lambda prob: rle.encode(postprocess.apply(prob, post, post.active), order)
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        images = [a.images for a in arrays]
        chunks = ensemble.mean_probs(group, images, sizes, None, options.batch_size, pool=pool)
        for part, probs in chunks:
            for i, text in zip(part, pool.map(encode, probs), strict=True):
                rles[i] = text
            bar.update(len(part))
    bar.close()
    return rles
