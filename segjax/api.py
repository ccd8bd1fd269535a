"""segjax as a library: build a config, train, submit, evaluate, predict.

What the commands do, as calls that return values and raise `segjax.errors` exceptions (a
`UserError` for a mistake to fix, a `DataError` for a bad file); nothing here exits the
process. docs/api.md shows them in use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segjax import runtime
from segjax.config import Config, InferenceOptions, RunFacts, RunOptions, check
from segjax.errors import UserError
from segjax.inference import analysis, masks, submission
from segjax.runs import metrics_log, run_folder
from segjax.train.progress import Ended


@dataclasses.dataclass(frozen=True)
class Run:
    """A run folder, and why training ended when this process trained it (else None)."""

    run_dir: Path
    ended: Ended | None = None

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> Run:
        """A run folder that training wrote (its config.json and run.json are read now)."""
        run_folder.read_run(Path(run_dir))  # a clear error when it is not one
        return cls(Path(run_dir))

    @property
    def config(self) -> Config:
        return run_folder.read_run(self.run_dir)[0]

    @property
    def facts(self) -> RunFacts:
        return run_folder.read_run(self.run_dir)[1]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One row per finished epoch (metrics.jsonl)."""
        return metrics_log.read_metrics(self.run_dir / "metrics.jsonl")

    @property
    def best(self) -> dict[str, Any]:
        """The row of the epoch with the best validation mean Dice."""
        rows = self.metrics
        if not rows:
            raise UserError(f"{self.run_dir}: no epoch has finished yet")
        return max(rows, key=lambda row: row["val_mean_dice"])

    @property
    def tuned(self) -> dict[str, Any] | None:
        """The tuned threshold, TTA and post-processing (tuned.json), once the run is tuned."""
        path = self.run_dir / "tuned.json"
        return json.loads(path.read_text()) if path.exists() else None


def _folder(run: Run | str | os.PathLike) -> Path:
    return run.run_dir if isinstance(run, Run) else Path(run)


def _inference_options(options: dict[str, Any]) -> InferenceOptions:
    """The keyword options of submit, evaluate and predict; a wrong name is a UserError."""
    known = {f.name for f in dataclasses.fields(InferenceOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(
            f"unknown option {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    return InferenceOptions(**options)


def train(
    config: Config,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    time_budget: float | None = None,
    session_limit: float | None = None,
    stop_at_epoch: int | None = None,
    tune: bool = True,
    progress: bool = True,
    log: str = "",
) -> Run:
    """Train `config` into `run_dir` (default runs/<name or arch-date-time>), then tune its
    threshold and post-processing, as `segjax train` does; the minutes of `time_budget` and
    `session_limit` count from this call; `log="tensorboard"` also writes runs/<name>/tb/."""
    from segjax import workflows

    runtime.prepare_library()
    options = RunOptions(
        resume=resume,
        overwrite=overwrite,
        tune=tune,
        progress=progress,
        time_budget=time_budget,
        session_limit=session_limit,
        stop_at_epoch=stop_at_epoch,
        log=log,
        started=time.time(),
    )
    check(options)
    if config.data.folds:
        raise UserError("k folds train from the command line: segjax train --folds K --fold all")
    if run_dir is None:
        run_dir = run_folder.new_run_dir(run_folder.RUNS_ROOT, config.name, config.model.arch)
    run_dir = Path(run_dir)
    config = dataclasses.replace(config, name=config.name or run_dir.name)
    result = workflows.train_and_tune(config, run_dir, options)
    return Run(run_dir, result.ended)


def submit(
    run: Run | str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    order: str = "F",
    **options: Any,
) -> submission.Report:
    """Write the run's validated submission for the test images of `data_dir` (default: the
    run's data) to `out` (default <run>/submission.csv). `options`: those of `segjax submit`
    (tta, threshold, postprocess, checkpoint, batch_size, progress)."""
    runtime.prepare_library()
    settings = _inference_options(options)
    return submission.make_submission(
        _folder(run), settings, data_dir=data_dir, out=out, order=order
    )


def evaluate(run: Run | str | os.PathLike, split: str = "val", **options: Any):
    """The run's per-image scores on its validation (or held-out "test") split at the
    images' original size, as a pandas DataFrame (also written beside the run, with the
    summary and the worst images, as `segjax evaluate` writes them)."""
    runtime.prepare_library()
    if split not in ("val", "test"):
        raise UserError(f"split {split!r}: val or test")
    report = analysis.evaluate_run(_folder(run), _inference_options(options), split=split)
    return report["per_image"]


def predict(run: Run | str | os.PathLike, images: Sequence, **options: Any) -> list[np.ndarray]:
    """The masks (uint8 0/1, each at its image's original size) of image files, PIL images or
    uint8 arrays, with the run's tuned threshold, TTA and post-processing."""
    runtime.prepare_library()
    return masks.predict_masks(_folder(run), list(images), _inference_options(options))
