"""Run folders: naming, finding the newest, and the train-then-tune job behind scripts/train.py."""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

from segjax.config import Config, load_config

RUNS_ROOT = Path("runs")


def new_run_dir(root: str | os.PathLike, name: str | None, arch: str) -> Path:
    """runs/<name>, or runs/<arch>-<date>-<time> (suffixed -2, -3, ... if taken)."""
    root = Path(root)
    base = name or f"{arch}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    path, n = root / base, 2
    while path.exists() and not name:
        path, n = root / f"{base}-{n}", n + 1
    return path


def newest_run(root: str | os.PathLike = RUNS_ROOT) -> Path:
    """The most recently modified run folder (one holding config.json) under root."""
    root = Path(root)
    runs = [p.parent for p in root.glob("*/config.json")] if root.is_dir() else []
    if not runs:
        raise FileNotFoundError(
            f"no runs under {root.absolute()}: train one first (python scripts/train.py), "
            "or pass --run-dir"
        )
    return max(runs, key=lambda p: (p / "config.json").stat().st_mtime)


def resume_config(run_dir: Path, **train_overrides) -> Config:
    """The saved config of a run, with the few fields a resume may change (epochs, early stop)."""
    config = load_config(run_dir / "config.json")
    changes = {k: v for k, v in train_overrides.items() if v is not None}
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def train_run(
    config: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_at_epoch: int | None = None,
    tune: bool = True,
    progress: bool = True,
) -> dict:
    """Train (or resume) into run_dir, then tune threshold and post-processing on validation.

    Tuning waits until the run is over: its last epoch reached, or stopped early.
    """
    from segjax import train

    row = train.fit(config, run_dir, resume=resume, stop_at_epoch=stop_at_epoch, progress=progress)
    paused = bool(stop_at_epoch) and stop_at_epoch < config.train.epochs
    if row and paused and row["epoch"] == stop_at_epoch:
        print(f"stopped after epoch {stop_at_epoch}; continue with --resume", flush=True)
    elif tune:
        from segjax import tune as tuning

        tuned = tuning.tune_run(run_dir)
        pp = tuned["postprocess"]
        print(
            f"tuned on {tuned['val_images']} validation images (checkpoint {tuned['checkpoint']}): "
            f"threshold {pp['threshold']}, opening {pp['open_radius']}, min area "
            f"{pp['min_area']}, fill holes {pp['fill_holes']}, TTA {tuned['tta']}; mean Dice "
            f"{tuned['dice_at_0.5']:.4f} at 0.5 -> {tuned['dice_tuned']:.4f}",
            flush=True,
        )
    return row
