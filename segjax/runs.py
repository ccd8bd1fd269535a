"""Run folders: naming, finding the newest, claiming one for a run, and what a resume may change."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

from segjax.config import Config, load_config
from segjax.errors import UserError

RUNS_ROOT = Path("runs")
FOLDS_FILE = "folds.json"  # marks a k-fold folder: runs/<name>/fold-<I>/ are its runs
# Everything segjax writes into a run folder (--overwrite removes these and nothing else).
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "timing.jsonl",
    "checkpoints",
    "previews",
    "curves.png",
    "tuned.json",
    "submission.csv",
    "evaluation_val.json",
    "evaluation_test.json",
    "worst_val.png",
    "worst_test.png",
    FOLDS_FILE,
)
# Settings a resume may change: they do not change the model, data, split, loss or optimizer.
RESUMABLE = {
    ("train", "epochs"),
    ("train", "early_stop"),
    ("train", "eval_batch_size"),
    ("train", "preview_every"),
    ("data", "cache_dir"),
}


def new_run_dir(root: str | os.PathLike, name: str | None, arch: str) -> Path:
    """runs/<name>, or runs/<arch>-<date>-<time> (suffixed -2, -3, ... if taken)."""
    root = Path(root)
    base = name or f"{arch}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    path, n = root / base, 2
    while path.exists() and not name:
        path, n = root / f"{base}-{n}", n + 1
    return path


def newest_run(root: str | os.PathLike = RUNS_ROOT, folds: bool = False) -> Path:
    """The most recently modified run folder (one holding config.json) under root; with
    `folds`, k-fold folders (holding folds.json) count too."""
    root = Path(root)
    marks = ("config.json", FOLDS_FILE) if folds else ("config.json",)
    found = [p for mark in marks for p in root.glob(f"*/{mark}")] if root.is_dir() else []
    if not found:
        raise UserError(
            f"no runs under {root.absolute()}: train one first (python scripts/train.py), "
            "or pass --run-dir"
        )
    return max(found, key=lambda p: p.stat().st_mtime).parent


def is_folds(folder: Path) -> bool:
    return (Path(folder) / FOLDS_FILE).is_file()


def fold_dir(folder: Path, fold: int) -> Path:
    return Path(folder) / f"fold-{fold}"


def load_folds(folder: Path) -> dict:
    """folds.json: {"folds": K, "done": [finished folds], "config": the folds' config}."""
    path = Path(folder) / FOLDS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a segjax folds record ({err})") from err
    missing = {"folds", "done", "config"} - set(record)
    if missing:
        raise UserError(f"{path}: not a segjax folds record (no {', '.join(sorted(missing))})")
    return record


def has_checkpoints(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def clear(run_dir: Path) -> list[str]:
    """Remove every file segjax writes in a run folder (RUN_FILES) and nothing else."""
    removed = []
    # Temporaries of a killed write: .<name>.<pid>.tmp (segjax.files)
    leftovers = [
        p.name for p in run_dir.glob(".*.tmp") if p.name[1:].rsplit(".", 2)[0] in RUN_FILES
    ]
    for name in (*RUN_FILES, *leftovers):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def writable(folder: Path) -> Path:
    """Create `folder` if needed; a place that cannot be written is an error naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".segjax-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"{folder}: cannot write here ({err.strerror or err}); choose a writable "
            "--run-dir (on Kaggle: under /kaggle/working)"
        ) from err
    return folder


def claim(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that a new run may use this folder: a folder with checkpoints needs a choice.

    `overwrite` clears the folder first (and says what it removed); `resume` continues it.
    """
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite starts it again: pick one")
    if overwrite:
        removed = clear(run_dir) if run_dir.is_dir() else []
        if removed:
            print(f"--overwrite: removed {', '.join(removed)} from {run_dir}", flush=True)
        return
    if not resume and has_checkpoints(run_dir):
        raise UserError(
            f"{run_dir} already holds a trained run: add --resume to continue it, or "
            "--overwrite to delete its files and train again (or choose another --name)"
        )


def resume_config(run_dir: Path, given: dict[tuple[str, str], tuple[str, Any]]) -> Config:
    """The run's saved config with the settings a resume may change taken from the command line.

    `given` maps (section, field) to (flag, resolved value) for the flags the user typed. A flag
    whose value equals the saved one is fine (the original command with --resume appended
    works); one that would change the model, data, split, loss or optimizer is an error.
    """
    if is_folds(run_dir):
        config = Config.from_dict(load_folds(run_dir)["config"])
    elif (run_dir / "config.json").exists():
        config = load_config(run_dir / "config.json")
    else:
        raise UserError(f"{run_dir}: no config.json, so nothing to resume; train without --resume")
    changes: dict[str, dict[str, Any]] = {}
    refused = []
    for (section, field), (flag, value) in given.items():
        saved = getattr(getattr(config, section), field)
        if (section, field) in RESUMABLE:
            changes.setdefault(section, {})[field] = value
        elif value != saved:
            refused.append(f"{flag} {_show(value)} (the run has {_show(saved)})")
    if refused:
        raise UserError(
            f"--resume continues {run_dir} with its own settings, and these flags would change "
            f"them: {'; '.join(refused)}. Drop them, or start a new run with another --name"
        )
    sections = {k: dataclasses.replace(getattr(config, k), **v) for k, v in changes.items()}
    return dataclasses.replace(config, **sections)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else str(value)
    return str(value)
