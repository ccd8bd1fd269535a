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
import numpy as np
from tqdm.auto import tqdm

from segjax import postprocess, rle
from segjax.files import write_text
from segjax.postprocess import PostProcess
from segjax.predict import resize_prob

HEADER = ("id", "encoded_pixels")


@dataclasses.dataclass(frozen=True)
class Report:
    path: Path
    rows: int
    empty_fraction: float
    postprocess: PostProcess
    tta: bool
    checkpoint: int


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


def encode_one(prob: np.ndarray, size, params: PostProcess, use_pp: bool, order: str) -> str:
    return rle.encode(postprocess.apply(resize_prob(prob, size), params, use_pp), order)


def make_submission(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    which: str = "best",
    batch_size: int | None = None,
    tta: bool | None = None,
    threshold: float | None = None,
    use_postprocess: bool = True,
    order: str = "F",
    progress: bool = True,
) -> Report:
    """Predict every test image of the data folder and write <run>/submission.csv.

    Defaults come from the run: its data folder, best checkpoint and tuned.json.
    """
    from segjax import predict, sources, tune

    run_dir = Path(run_dir)
    loaded = predict.load_run(run_dir, which)
    arrays = sources.load_test(loaded.config.data, data_dir)
    params, tta = tune.settings(run_dir, threshold, tta)
    if not use_postprocess:
        params = PostProcess(params.threshold)
    batch = batch_size or loaded.config.train.eval_batch_size
    rles = _encode_all(loaded, arrays, batch, tta, params, order, progress)
    path = Path(out) if out else run_dir / "submission.csv"
    empty = sum(r == "" for r in rles) / len(rles)
    if jax.process_index() == 0:  # every process took part in predicting; one writes
        write_csv(path, arrays.ids, rles)
        empty = validate(path, arrays.ids, [tuple(s) for s in arrays.sizes])
    return Report(path, len(rles), empty, params, tta, loaded.step)


def _encode_all(loaded, arrays, batch: int, tta: bool, params, order: str, progress) -> list:
    """The RLE of every image, predicted batch by batch, encoded in a thread pool meanwhile."""
    from segjax import predict

    rles: list[str] = [""] * len(arrays.ids)
    bar = tqdm(total=len(arrays.ids), desc="predict", unit="img", disable=not progress)
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        for idx, probs in predict.iterate_probs(loaded, arrays.images, batch, tta):
            sizes = [tuple(arrays.sizes[i]) for i in idx]
            encoded = pool.map(
                lambda a: encode_one(*a, params, params.active, order),
                zip(probs, sizes, strict=True),
            )
            for i, text in zip(idx, encoded, strict=True):
                rles[i] = text
            bar.update(len(idx))
    bar.close()
    return rles
