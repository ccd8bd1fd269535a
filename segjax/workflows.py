"""What `segjax train` does, as library calls: train then tune; every fold, then the ensemble.

Above both training and inference (it uses the one and then the other); the command line calls
these, and so can a notebook.
"""

from __future__ import annotations

from pathlib import Path

from segjax.config import Config, RunOptions
from segjax.inference import ensemble
from segjax.train import folds, loop, run_folder


def train_and_tune(config: Config, run_dir: str | Path, options: RunOptions = RunOptions()):
    """Train (or resume) into run_dir, then tune threshold and post-processing on validation.

    Tuning waits until the run is over: its last epoch reached, stopped early, or the time
    budget spent; a run stopped by a signal or by `stop_at_epoch` is tuned when it ends.
    Returns the last metrics row.
    """
    run_dir = Path(run_dir)
    row = loop.fit(config, run_dir, options)
    epochs = run_folder.read_facts(run_dir).epochs
    paused = bool(options.stop_at_epoch) and options.stop_at_epoch < epochs
    if row.get("stopped"):
        pass  # fit said how to continue
    elif row and paused and row["epoch"] == options.stop_at_epoch:
        print(f"stopped after epoch {options.stop_at_epoch}; continue with --resume", flush=True)
    elif options.tune:
        tuned = ensemble.tune_run(run_dir)
        pp = tuned["postprocess"]
        print(
            f"tuned on {tuned['val_images']} validation images (checkpoint {tuned['checkpoint']}): "
            f"threshold {pp['threshold']}, opening {pp['open_radius']}, min area "
            f"{pp['min_area']}, fill holes {pp['fill_holes']}, TTA {tuned['tta']}; mean Dice "
            f"{tuned['dice_at_0.5']:.4f} at 0.5 -> {tuned['dice_tuned']:.4f}",
            flush=True,
        )
    return row


def train_folds_and_tune(config: Config, folder: str | Path, options: RunOptions = RunOptions()):
    """Every fold of `config.data.folds` (each trained and tuned), then the ensemble's
    threshold and post-processing tuned on the out-of-fold predictions (<folder>/tuned.json).
    Returns the finished folds."""
    folder = Path(folder)
    done = folds.train_folds(config, folder, train_and_tune, options)
    if options.tune and len(done) == config.data.folds:
        params, report = ensemble.tune_and_keep(ensemble.load([folder]))
        print(
            f"ensemble of {len(done)} folds tuned on {report['val_images']} out-of-fold images: "
            f"threshold {params.threshold}, mean Dice {report['dice_at_0.5']:.4f} at 0.5 -> "
            f"{report['dice_tuned']:.4f}",
            flush=True,
        )
    return done
