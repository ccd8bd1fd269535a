"""Run folders: naming, finding the newest, claiming one for a run, and what a resume may change."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

from segjax.config import Config, RunFacts, check
from segjax.errors import UserError
from segjax.fields import show
from segjax.files import write_text

RUNS_ROOT = Path("runs")
CONFIG_FILE = "config.json"  # the user's settings: the model is rebuilt from them
FACTS_FILE = "run.json"  # what the run found: normalisation, compute dtype, weights, epochs
FOLDS_FILE = "folds.json"  # marks a k-fold folder: runs/<name>/fold-<I>/ are its runs
PSEUDO_FILE = "pseudo_labels.npz"  # --pseudo-label: the labelled test images it trains on
# Everything segjax writes into a run folder (--overwrite removes these and nothing else).
RUN_FILES = (
    CONFIG_FILE,
    FACTS_FILE,
    "metrics.jsonl",
    "timing.jsonl",
    "checkpoints",
    "previews",
    "tb",  # --log tensorboard
    "curves.png",
    "tuned.json",
    "submission.csv",
    "evaluation_val.json",
    "evaluation_test.json",
    "evaluation_val.csv",
    "evaluation_test.csv",
    "worst_val.png",
    "worst_test.png",
    FOLDS_FILE,
    PSEUDO_FILE,
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
    """The most recently modified run folder under root that holds a checkpoint; with `folds`,
    k-fold folders (folds.json) with a trained fold count too."""
    root = Path(root)
    marks = (CONFIG_FILE, FOLDS_FILE) if folds else (CONFIG_FILE,)
    found = [p for mark in marks for p in root.glob(f"*/{mark}")] if root.is_dir() else []
    trained = [
        p
        for p in found
        if has_checkpoints(p.parent)
        or (p.name == FOLDS_FILE and any(has_checkpoints(f) for f in p.parent.glob("fold-*")))
    ]
    if not trained:
        names = sorted(p.parent.name for p in found)
        untrained = f" ({', '.join(names)} {'holds' if len(names) == 1 else 'hold'} no checkpoint)"
        raise UserError(
            f"no trained runs under {root.absolute()}{untrained if found else ''}: train one "
            "first (segjax train), or pass --run-dir"
        )
    return max(trained, key=lambda p: p.stat().st_mtime).parent


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


def claim(folder: Path, *, resume: bool, overwrite: bool, folds: bool = False) -> None:
    """A new run may use this folder unless it holds one: that needs `resume` (continue) or
    `overwrite` (clear the folder, and its fold folders, first; says what it removed).

    `folds`: the folder is for k-fold runs, so its folds.json and fold-<I>/ count as a run.
    """
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite starts it again: pick one")
    fold_dirs = sorted(folder.glob("fold-*")) if folds and folder.is_dir() else []
    if overwrite:
        removed = clear(folder) if folder.is_dir() else []
        for fold in fold_dirs:
            removed += [f"{fold.name}/{name}" for name in clear(fold)]
            if not any(fold.iterdir()):
                fold.rmdir()
        if removed:
            print(f"--overwrite: removed {', '.join(removed)} from {folder}", flush=True)
        return
    if folds:
        held = is_folds(folder) or any(has_checkpoints(f) for f in fold_dirs)
        what, them = "k-fold runs", "them"
    else:
        held, what, them = has_checkpoints(folder), "a trained run", "it"
    if not resume and held:
        raise UserError(
            f"{folder} already holds {what}: add --resume to continue {them}, or --overwrite "
            f"to delete {'their' if folds else 'its'} files and train again (or choose another "
            "--name)"
        )
    if folds and (folder / CONFIG_FILE).exists():
        raise UserError(f"{folder} holds a single run: choose another --name for k-fold runs")


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write config.json atomically (temporary name, then rename)."""
    write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")


def load_config(path: str | os.PathLike, raw: dict[str, Any] | None = None) -> Config:
    """config.json (or `raw`, its content already read) as a Config; errors name the file."""
    path = Path(path)
    try:
        return Config.from_dict(json.loads(path.read_text()) if raw is None else raw)
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as err:
        raise UserError(f"{path}: not a segjax config ({err})") from err


def write_run(run_dir: Path, config: Config, facts: RunFacts) -> None:
    """config.json (the user's settings) and run.json (what the run found), atomically."""
    save_config(config, run_dir / CONFIG_FILE)
    write_text(run_dir / FACTS_FILE, json.dumps(facts.to_dict(), indent=2) + "\n")


def read_run(run_dir: str | os.PathLike) -> tuple[Config, RunFacts]:
    """A run's settings (config.json) and what it found (run.json); errors name the file."""
    run_dir = Path(run_dir)
    path, facts_path = run_dir / CONFIG_FILE, run_dir / FACTS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no config.json (not a segjax run folder); check --run-dir")
    if not facts_path.is_file():
        raise UserError(
            f"{run_dir}: no run.json, so segjax 0.1 wrote this run: convert it with "
            f"python tools/migrate_run.py {run_dir}"
        )
    config = load_config(path)
    try:
        return config, RunFacts.from_dict(json.loads(facts_path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{facts_path}: not a segjax run record ({err})") from err


def read_facts(run_dir: Path) -> RunFacts:
    return read_run(run_dir)[1]


def resume_config(run_dir: Path, given: dict[tuple[str, str], tuple[str, Any]]) -> Config:
    """The run's saved config with the settings a resume may change taken from the command line.

    `given` maps (section, field) to (flag, resolved value) for the flags the user typed. A flag
    whose value equals the saved one is fine (the original command with --resume appended
    works); one that would change the model, data, split, loss or optimizer is an error.
    """
    if is_folds(run_dir):
        config = load_config(run_dir / FOLDS_FILE, load_folds(run_dir)["config"])
    elif (run_dir / CONFIG_FILE).exists():
        config = read_run(run_dir)[0]
    else:
        raise UserError(f"{run_dir}: no config.json, so nothing to resume; train without --resume")
    changes: dict[str, dict[str, Any]] = {}
    refused = []
    for (section, field), (flag, value) in given.items():
        saved = getattr(getattr(config, section), field)
        if (section, field) in RESUMABLE:
            changes.setdefault(section, {})[field] = value
        elif value != saved:
            refused.append(f"{flag} {show(value)} (the run has {show(saved)})")
    if refused:
        raise UserError(
            f"--resume continues {run_dir} with its own settings, and these flags would change "
            f"them: {'; '.join(refused)}. Drop them, or start a new run with another --name"
        )
    sections = {k: dataclasses.replace(getattr(config, k), **v) for k, v in changes.items()}
    config = dataclasses.replace(config, **sections)
    check(config)
    return config
