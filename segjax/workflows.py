"""What `segjax train` does, as library calls: train then tune; every fold, then the ensemble.

Above both training and inference (it uses the one and then the other); the command line calls
these, and so can a notebook.
"""

from __future__ import annotations

from pathlib import Path

from segjax.config import Config, RunOptions
from segjax.data import decode
from segjax.inference import analysis, ensemble, pseudo
from segjax.inference.postprocess import PostProcess
from segjax.runs import metrics_log, run_folder
from segjax.train import folds, loop
from segjax.train.progress import Ended


def train_and_tune(config: Config, run_dir: str | Path, options: RunOptions = RunOptions()):
    """Train (or resume) into run_dir, then tune threshold and post-processing on validation.

    Tuning waits until the run is over: its last epoch reached, stopped early, or the time
    budget spent; a run paused (a signal, `stop_at_epoch`, the session limit) is tuned when it
    ends. Returns `fit`'s result: why it ended, where it stands, its last metrics row.
    """
    run_dir = Path(run_dir)
    extra = None
    if config.train.pseudo_label:  # a resume reads the run's own copy (checked by its record)
        kept = run_dir / run_folder.PSEUDO_FILE
        if options.resume and kept.exists():
            arrays = decode.load_arrays(kept)
        else:
            arrays = pseudo.label_test(config.train.pseudo_label, config)
        record = pseudo.record(arrays, config.train.pseudo_label)
        print(f"pseudo-labels: {record}", flush=True)
        extra = (arrays, record)
    result = loop.fit(config, run_dir, options, extra=extra)
    if result.ended is Ended.STOPPED_AT_EPOCH:
        print(f"stopped after epoch {options.stop_at_epoch}; continue with --resume", flush=True)
    elif not result.ended.paused and options.tune:  # the others said how to continue
        tune_and_report(run_dir)
    return result


def tune_and_report(run_dir: Path) -> dict:
    """Tune the finished run, then say what came out: the best epoch, the tuned validation
    Dice at the training size and at the images' original size, and the next command."""
    tuned = ensemble.tune_run(run_dir)
    config, _ = run_folder.read_run(run_dir)
    rows = metrics_log.read_metrics(run_dir / "metrics.jsonl")
    best = next(r for r in rows if r["epoch"] == tuned["checkpoint"])
    original = analysis.tuned_mean_dice(run_dir)
    h, w = config.data.image_size
    post = PostProcess(**tuned["postprocess"])
    print(
        f"best epoch {best['epoch']} of {rows[-1]['epoch']}: validation mean Dice "
        f"{best['val_mean_dice']:.4f} at {h}x{w} (the training size, threshold 0.5)\n"
        f"tuned on {tuned['val_images']} validation images: threshold {post.threshold}, TTA "
        f"{'on' if tuned['tta'] else 'off'}, post-processing: {post}\n"
        f"validation mean Dice, tuned: {tuned['dice_tuned']:.4f} at {h}x{w}; {original:.4f} at "
        "the images' original size (what a leaderboard scores)\n"
        f"next: segjax submit --run-dir {run_dir}",
        flush=True,
    )
    return {**tuned, "dice_original_size": original}


def train_folds_and_tune(config: Config, folder: str | Path, options: RunOptions = RunOptions()):
    """Every fold of `config.data.folds` (each trained and tuned), then the ensemble's
    threshold and post-processing tuned on the out-of-fold predictions (<folder>/tuned.json).
    Returns the finished folds."""
    folder = Path(folder)
    done = folds.train_folds(config, folder, train_and_tune, options)
    if options.tune and len(done) == config.data.folds:
        post, report = ensemble.tune_and_keep(ensemble.load([folder]))
        original = analysis.tuned_mean_dice([folder])
        print(
            f"ensemble of {len(done)} folds tuned on {report['val_images']} out-of-fold images: "
            f"threshold {post.threshold}, mean Dice {report['dice_at_0.5']:.4f} at 0.5 -> "
            f"{report['dice_tuned']:.4f} at the training size, {original:.4f} at the images' "
            f"original size\nnext: segjax submit --run-dir {folder}",
            flush=True,
        )
    return done
