"""k-fold training: every fold into <folder>/fold-<I>/, then the ensemble tuned out of fold."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax

from segjax import ensemble, runs, train
from segjax.config import Config
from segjax.errors import UserError
from segjax.files import write_text

ENSEMBLE_RESERVE = 0.05  # of a time budget, kept for tuning the ensemble at the end


def claim(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """The run-folder rule for a k-fold folder: holding folds needs --resume or --overwrite."""
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite starts it again: pick one")
    folds = sorted(folder.glob("fold-*")) if folder.is_dir() else []
    if overwrite:
        removed = runs.clear(folder) if folder.is_dir() else []
        for fold in folds:
            removed += [f"{fold.name}/{name}" for name in runs.clear(fold)]
            if not any(fold.iterdir()):
                fold.rmdir()
        if removed:
            print(f"--overwrite: removed {', '.join(removed)} from {folder}", flush=True)
        return
    if not resume and (runs.is_folds(folder) or any(runs.has_checkpoints(f) for f in folds)):
        raise UserError(
            f"{folder} already holds k-fold runs: add --resume to continue them, or "
            "--overwrite to delete their files and train again (or choose another --name)"
        )
    if (folder / "config.json").exists():
        raise UserError(f"{folder} holds a single run: choose another --name for k-fold runs")


def _save_record(folder: Path, config: Config, done: list[int]) -> None:
    if jax.process_index() == 0:
        record = {"folds": config.data.folds, "done": sorted(done), "config": config.to_dict()}
        write_text(folder / runs.FOLDS_FILE, json.dumps(record, indent=2) + "\n")


def train_folds(
    config: Config,
    folder: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    tune: bool = True,
    progress: bool = True,
    time_budget: float | None = None,
    started: float | None = None,
    clock=time.time,
) -> list[int]:
    """Train every fold of `config.data.folds` one after another, then tune the ensemble on
    the out-of-fold predictions (<folder>/tuned.json). Returns the finished folds.

    With `resume`, finished folds are skipped and a stopped one continues. A time budget is
    for all folds together: each fold gets an equal share of what is left, less
    ENSEMBLE_RESERVE of the budget for the ensemble's tuning.
    """
    k = config.data.folds
    if k < 2:
        raise UserError("--fold all needs --folds K with K >= 2")
    started = clock() if started is None else started
    claim(folder, resume=resume, overwrite=overwrite)
    done = list(runs.load_folds(folder)["done"]) if resume and runs.is_folds(folder) else []
    runs.writable(folder)
    _save_record(folder, config, done)
    deadline = started + 60.0 * time_budget * (1 - ENSEMBLE_RESERVE) if time_budget else None
    for fold in range(k):
        if fold in done:
            print(f"fold {fold} of {k}: finished before, skipped", flush=True)
            continue
        run_dir = runs.fold_dir(folder, fold)
        fold_config = dataclasses.replace(
            config,
            name=f"{folder.name}/{run_dir.name}",
            data=dataclasses.replace(config.data, fold=fold),
        )
        again = resume and runs.has_checkpoints(run_dir)
        share = None
        if deadline is not None:
            share = max(deadline - clock(), 0.0) / 60.0 / (k - len(done))
        print(f"fold {fold} of {k} -> {run_dir}" + (" (resumed)" if again else ""), flush=True)
        row = train.train_and_tune(
            runs.resume_config(run_dir, {}) if again else fold_config,
            run_dir,
            resume=again,
            tune=tune,
            progress=progress,
            time_budget=share,
            started=clock(),
        )
        if row.get("stopped"):
            print(
                f"continue the folds with: python scripts/train.py --fold all --resume "
                f"--run-dir {folder}",
                flush=True,
            )
            return done
        done.append(fold)
        _save_record(folder, config, done)
    if tune:
        params, report = ensemble.tune_and_keep(ensemble.load([folder]))
        print(
            f"ensemble of {k} folds tuned on {report['val_images']} out-of-fold images: "
            f"threshold {params.threshold}, mean Dice {report['dice_at_0.5']:.4f} at 0.5 -> "
            f"{report['dice_tuned']:.4f}",
            flush=True,
        )
    return done
