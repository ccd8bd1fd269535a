"""What training prints: the block that says what runs, and one line per epoch."""

from __future__ import annotations

import jax

from segjax.config import RunOptions
from segjax.train.precision import COMPUTE_DTYPES
from segjax.train.progress import Progress
from segjax.train.start import Setup


def devices() -> str:
    """'1 cpu device (cpu)', '2 gpu devices (Tesla T4), 1 process', ..."""
    found = jax.devices()
    kinds = sorted({d.device_kind for d in found})
    count = len(found)
    text = f"{count} {found[0].platform} device{'s' if count > 1 else ''} ({', '.join(kinds)})"
    return text + (f", {jax.process_count()} processes" if jax.process_count() > 1 else "")


def describe(setup: Setup, state, progress: Progress, options: RunOptions) -> None:
    """One block before the first step: devices, precision, data, model, weights, plan."""
    config, facts, splits = setup.config, setup.facts, setup.splits
    tc, m = config.train, config.model
    h, w = config.data.image_size
    params = sum(x.size for x in jax.tree.leaves(state.params))
    if m.encoder == "scratch":
        weights = "trained from scratch"
    elif progress.epoch or progress.batch:
        weights = "from the checkpoint"
    else:
        weights = facts.encoder_source or f"--encoder-weights {m.encoder_weights}"
    if tc.init_from and not (progress.epoch or progress.batch):
        weights = f"{weights}; all weights from --init-from {tc.init_from}"
    chosen = {dtype: name for name, dtype in COMPUTE_DTYPES.items()}[facts.dtype]
    scaling = ", dynamic loss scale" if state.dynamic_scale is not None else ""
    plan = f"{setup.epochs} epochs, {tc.schedule} schedule"
    if progress.epoch or progress.batch:
        plan += f", resuming at epoch {progress.epoch + 1} batch {progress.batch}"
    if options.time_budget:
        plan += f", time budget {options.time_budget:g} min"
    if options.session_limit:
        plan += f", session limit {options.session_limit:g} min"
    if options.stop_at_epoch:
        plan += f", stopping after epoch {options.stop_at_epoch}"
    count = jax.device_count()
    per_device = f" ({tc.batch_size // count} per device)" if count > 1 else ""
    lines = [
        f"devices:   {devices()}",
        f"precision: {chosen}{' (auto)' if tc.precision == 'auto' else ''}: compute "
        f"{facts.dtype}, parameters float32{scaling}",
        f"images:    {len(splits.train)} train, {len(splits.val)} validation, "
        f"{len(splits.test)} held-out test, at {h}x{w}; batch {tc.batch_size}{per_device}, "
        f"{setup.steps_per_epoch} steps an epoch",
        f"model:     {m.arch} decoder on the {m.encoder} encoder, {params:,} parameters",
        f"weights:   {weights}",
        f"plan:      {plan}",
    ]
    print("\n".join(lines), flush=True)


def report(row: dict, progress: Progress, seconds: float) -> None:
    best = " (best)" if progress.best_epoch == row["epoch"] else ""
    print(
        f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
        f"val mean Dice {row['val_mean_dice']:.4f}{best}  mean IoU {row['val_mean_iou']:.4f}  "
        f"lr {row['lr']:.2e}  {seconds:.1f}s",
        flush=True,
    )
