"""Orbax checkpoints of the full train state plus JSON metadata; keeps the latest and the best."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint import checkpoint_managers as policies

from segjax import compat  # noqa: F401 (what orbax needs of jax, on older jax)
from segjax.errors import UserError
from segjax.files import write_text

BEST_METRIC = "val_mean_dice"
MANIFEST = "segjax_files.json"  # every file of a committed step and its size: names what broke


class CheckpointError(UserError):
    """A checkpoint that cannot be written or read: names the step and, where known, the file."""


def _best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


def create_manager(directory: str | os.PathLike, read_only: bool = False) -> ocp.CheckpointManager:
    """Checkpoints are numbered by completed epochs; the latest and the best val Dice survive."""
    preserve = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=1),
            policies.BestN(get_metric_fn=_best_metric, reverse=False, n=1),
        ]
    )
    absl = logging.getLogger("absl")
    level = absl.level
    if read_only:  # Orbax warns that a read-only manager will not save: expected here
        absl.setLevel(logging.ERROR)
    try:
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preserve,
            best_fn=_best_metric,  # for best_step(); preservation is the policy's job
            best_mode="max",
            read_only=read_only,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
        )
        return ocp.CheckpointManager(Path(directory).absolute(), options=options)
    finally:
        absl.setLevel(level)


def _arrays_of(state: Any) -> dict:
    """The state as a dict of what it holds: an empty part (the loss scale of a precision that
    has none) is left out, so such checkpoints have one layout whatever segjax wrote them."""
    return {k: v for k, v in serialization.to_state_dict(state).items() if v is not None}


def save(
    manager: ocp.CheckpointManager,
    epoch: int,
    state: Any,
    meta: dict[str, Any],
    replace: bool = False,
) -> None:
    """Save asynchronously (the arrays are copied before this returns, so donation is safe).

    The previous save is finished and sealed (its files listed) first; a save that Orbax
    declines, because that epoch already has a checkpoint, is an error, unless `replace`
    (a mid-epoch checkpoint of a stopped run, replaced by the epoch's own or a later stop's).
    """
    seal(manager)
    if replace and epoch in manager.all_steps():
        manager.delete(epoch)
    metrics = {BEST_METRIC: float(meta["metrics"][BEST_METRIC])}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(_arrays_of(state)),
        meta=ocp.args.JsonSave(meta),
    )
    if not manager.save(epoch, args=args, metrics=metrics):
        raise CheckpointError(
            f"{manager.directory}: Orbax declined to save epoch {epoch} (a checkpoint of that "
            "epoch already exists); resume the run with --resume, or start again with --overwrite"
        )


def seal(manager: ocp.CheckpointManager) -> None:
    """Wait for pending saves, then list each committed step's files and sizes (process 0)."""
    manager.wait_until_finished()
    if jax.process_index() != 0:
        return
    for step in manager.all_steps():
        folder = Path(manager.directory) / str(step)
        if folder.is_dir() and not (folder / MANIFEST).exists():
            files = {
                str(p.relative_to(folder)): p.stat().st_size
                for p in sorted(folder.rglob("*"))
                if p.is_file()
            }
            write_text(folder / MANIFEST, json.dumps(files))


def damage(folder: Path) -> str | None:
    """The first missing or truncated file of a sealed step folder, described; None if intact."""
    try:
        files = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is truncated ({path.stat().st_size} of {size} bytes)"
    return None


def restore(manager: ocp.CheckpointManager, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
    """Restore into the structure (and shardings) of `template`, a freshly created state.

    A step that cannot be read raises CheckpointError naming the step and the damaged file.
    """
    target = _arrays_of(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    folder = Path(manager.directory) / str(step)
    broken = damage(folder)
    try:
        if broken:
            raise CheckpointError(broken)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        empty = {k: None for k, v in serialization.to_state_dict(template).items() if v is None}
        state = serialization.from_state_dict(template, {**restored["state"], **empty})
    except Exception as err:  # Orbax and TensorStore raise many kinds for damaged files
        reason = broken or (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise CheckpointError(
            f"the checkpoint of epoch {step} in {folder} cannot be read: {reason}"
        ) from err
    return state, dict(restored["meta"])


def restore_variables(
    manager: ocp.CheckpointManager, step: int, template: dict, ema: bool = False
) -> dict:
    """Only the `params` and `batch_stats` of a step (a partial restore: no optimizer state),
    in the shapes and shardings of `template`; with `ema`, their moving averages (what a run
    with --ema validated). CheckpointError if unreadable."""
    folder = Path(manager.directory) / str(step)
    broken = damage(folder)
    item = {"ema": template} if ema else template
    args = ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
    )
    try:
        if broken:
            raise CheckpointError(broken)
        restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        restored = restored["ema"] if ema else restored
    except Exception as err:  # Orbax and TensorStore raise many kinds for damaged files
        reason = broken or (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise CheckpointError(
            f"the checkpoint of epoch {step} in {folder} cannot be read: {reason}"
        ) from err
    variables = {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})}
    # A partial restore hands back the template's own placeholders for what the checkpoint
    # lacks: a model that differs from the one saved must not load as if it fitted.
    missing = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if missing:
        raise CheckpointError(
            f"the checkpoint of epoch {step} in {folder} holds no {missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: its model "
            "differs from the one its run folder describes"
        )
    return variables


def restore_newest_readable(
    manager: ocp.CheckpointManager, template: Any
) -> tuple[Any, dict[str, Any], int, list[str]]:
    """Restore the newest step that reads; also return why newer steps were skipped.

    Unreadable newer steps are deleted (process 0), so that training can save those epochs again.
    Raises CheckpointError when no step can be read.
    """
    skipped = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, meta = restore(manager, step, template)
        except CheckpointError as err:
            skipped.append(str(err))
            continue
        for problem_step in sorted(manager.all_steps()):
            if problem_step > step and jax.process_index() == 0:
                manager.delete(problem_step)
        return state, meta, step, skipped
    raise CheckpointError(
        "; ".join(skipped) + ". No checkpoint is readable: start again with --overwrite"
    )


def resolve_step(manager: ocp.CheckpointManager, which: str) -> int:
    """'best', 'latest' or a number -> an existing checkpoint step, or a clear error."""
    steps = manager.all_steps()
    if not steps:
        raise CheckpointError(f"{manager.directory}: no checkpoints (was the run trained?)")
    if which == "latest":
        return manager.latest_step()
    if which == "best":
        best = manager.best_step()
        return best if best is not None else manager.latest_step()
    if which.isdigit() and int(which) in steps:
        return int(which)
    raise CheckpointError(
        f"checkpoint {which!r} not in {manager.directory} (have {sorted(steps)}): "
        "use best, latest or one of those epochs"
    )
