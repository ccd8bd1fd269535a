"""Orbax checkpoints of the full train state plus JSON metadata; keeps the latest and the best."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = "val_dice"


def create_manager(directory: str | os.PathLike, read_only: bool = False) -> ocp.CheckpointManager:
    """Checkpoints are numbered by completed epochs; the latest and the best val Dice survive."""
    preserve = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=1),
            policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1),
        ]
    )
    absl = logging.getLogger("absl")
    level = absl.level
    if read_only:  # Orbax warns that a read-only manager will not save: expected here
        absl.setLevel(logging.ERROR)
    try:
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preserve,
            best_fn=lambda m: m[BEST_METRIC],  # for best_step(); preservation is the policy's job
            best_mode="max",
            read_only=read_only,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
        )
        return ocp.CheckpointManager(Path(directory).absolute(), options=options)
    finally:
        absl.setLevel(level)


def save(manager: ocp.CheckpointManager, epoch: int, state: Any, meta: dict[str, Any]) -> None:
    """Save asynchronously (the arrays are copied before this returns, so donation is safe)."""
    metrics = {BEST_METRIC: float(meta["metrics"][BEST_METRIC])}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(serialization.to_state_dict(state)),
        meta=ocp.args.JsonSave(meta),
    )
    manager.save(epoch, args=args, metrics=metrics)


def restore(manager: ocp.CheckpointManager, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
    """Restore into the structure (and shardings) of `template`, a freshly created state."""
    target = serialization.to_state_dict(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return serialization.from_state_dict(template, restored["state"]), dict(restored["meta"])


def resolve_step(manager: ocp.CheckpointManager, which: str) -> int:
    """'best', 'latest' or a number -> an existing checkpoint step, or a clear error."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"{manager.directory}: no checkpoints")
    if which == "latest":
        return manager.latest_step()
    if which == "best":
        best = manager.best_step()
        return best if best is not None else manager.latest_step()
    if which.isdigit() and int(which) in steps:
        return int(which)
    raise ValueError(f"checkpoint {which!r} not in {manager.directory} (have {sorted(steps)})")
