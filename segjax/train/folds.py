"""k-fold training: every fold into <folder>/fold-<I>/, one after another, resumable."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax

from segjax.config import Config, RunOptions
from segjax.errors import UserError
from segjax.files import write_text
from segjax.runs import run_folder
from segjax.train.budget import ENSEMBLE_RESERVE
from segjax.train.progress import Fit


def _save_record(folder: Path, config: Config, done: list[int]) -> None:
    if jax.process_index() == 0:
        record = {"folds": config.data.folds, "done": sorted(done), "config": config.to_dict()}
        write_text(folder / run_folder.FOLDS_FILE, json.dumps(record, indent=2) + "\n")


def train_folds(
    config: Config,
    folder: Path,
    train_one: Callable[[Config, Path, RunOptions], Fit],
    options: RunOptions = RunOptions(),
    *,
    clock=time.time,
) -> list[int]:
    """Train every fold of `config.data.folds` with `train_one(config, run_dir, options)` (a
    fold's training and tuning), one after another. Returns the finished folds.

    With `options.resume`, finished folds are skipped and a stopped one continues. A time
    budget is for all folds together: each fold gets an equal share of what is left, less
    ENSEMBLE_RESERVE of the budget for the ensemble's tuning.
    """
    k = config.data.folds
    if k < 2:
        raise UserError("--fold all needs --folds K with K >= 2")
    if options.stop_at_epoch:
        raise UserError("--stop-at-epoch is for one run; with --fold all use --time-budget")
    started = clock() if options.started is None else options.started
    run_folder.claim(folder, resume=options.resume, overwrite=options.overwrite, folds=True)
    resumed = options.resume and run_folder.is_folds(folder)
    done = list(run_folder.load_folds(folder)["done"]) if resumed else []
    run_folder.writable(folder)
    _save_record(folder, config, done)
    budget = options.time_budget
    deadline = started + 60.0 * budget * (1 - ENSEMBLE_RESERVE) if budget else None
    for fold in range(k):
        if fold in done:
            print(f"fold {fold} of {k}: finished before, skipped", flush=True)
            continue
        run_dir = run_folder.fold_dir(folder, fold)
        again = options.resume and run_folder.has_checkpoints(run_dir)
        share = None
        if deadline is not None:
            share = max(deadline - clock(), 0.0) / 60.0 / (k - len(done))
        print(f"fold {fold} of {k} -> {run_dir}" + (" (resumed)" if again else ""), flush=True)
        fold_config = dataclasses.replace(
            config,
            name=f"{folder.name}/{run_dir.name}",
            data=dataclasses.replace(config.data, fold=fold),
        )
        fold_options = dataclasses.replace(
            options, resume=again, overwrite=False, time_budget=share, started=clock()
        )
        config_of_fold = run_folder.resume_config(run_dir, {}) if again else fold_config
        if train_one(config_of_fold, run_dir, fold_options).ended.paused:
            print(
                f"continue the folds with: segjax train --fold all --resume --run-dir {folder}",
                flush=True,
            )
            return done
        done.append(fold)
        _save_record(folder, config, done)
    return done
