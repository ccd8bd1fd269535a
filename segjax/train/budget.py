"""The time-budget planner: time the real steps once, then fix how many epochs fit."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from segjax import parallel
from segjax.train import validate
from segjax.train.start import Setup


class Budget(NamedTuple):
    """A deadline on `clock`, one epoch's estimate, and what must still fit after the epochs
    (the tuning, or a safety margin)."""

    deadline: float
    epoch_s: float
    reserve_s: float
    clock: Any

    def allows_another(self, longest_epoch_s: float) -> bool:
        """Whether one more epoch (as long as the estimate or the longest so far) and the
        reserve still end before the deadline."""
        needed = max(self.epoch_s, longest_epoch_s) + self.reserve_s
        return self.clock() + needed <= self.deadline


def session(minutes: float | None, started: float, clock) -> Budget | None:
    """A session limit: epochs are timed as they run (the first includes compiling), and a
    margin of 30 s and 1% of the session is kept for the last checkpoint."""
    if not minutes:
        return None
    return Budget(started + 60.0 * minutes, 0.0, 30.0 + 0.6 * minutes, clock)


class Timing(NamedTuple):
    epoch_s: float  # an epoch: its steps, a validation, the drawing and a checkpoint
    val_s: float  # one validation pass
    compile_s: float  # compiling the evaluation step (tuning compiles two predictors like it)


def plan_epochs(remaining_s: float, epoch_s: float, reserve_s: float, done: int, most: int):
    """How many epochs (those done included) fit: what is left of the budget, less the
    reserve for tuning, in whole epochs; at least one more, at most `most` (--epochs)."""
    fitting = int(max(remaining_s - reserve_s, 0.0) // max(epoch_s, 1e-9))
    return max(done + 1, min(most, done + fitting))


def tuning_reserve(timing: Timing, n_val: int) -> float:
    """Seconds kept for tuning: two predictors compiled and run over the validation images
    (with and without flip TTA), the threshold/post-processing search, and the tuned setting
    scored once more at the images' original size."""
    return 10.0 + 2.0 * timing.compile_s + 5.0 * timing.val_s + 0.15 * n_val


def plan(setup: Setup, state, done: int, minutes: float | None, started: float, clock):
    """With a budget: time the steps on a throwaway copy of the state (compiling what training
    uses anyway), fix the epoch count (every process takes process 0's), say so. Returns the
    setup with the planned epochs in its facts, and the budget (None without one)."""
    if not minutes:
        return setup, None
    timing = measure(setup, state, clock)
    reserve_s = tuning_reserve(timing, len(setup.splits.val))
    deadline = started + 60.0 * minutes
    most = setup.config.train.epochs
    epochs = plan_epochs(deadline - clock(), timing.epoch_s, reserve_s, done, most)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        epochs = int(multihost_utils.broadcast_one_to_all(np.int32(epochs)))
    print(
        f"time budget {minutes:.3g} min: {epochs} epochs planned ({timing.epoch_s:.1f} s an "
        f"epoch, {reserve_s:.0f} s kept for tuning); the schedule spans {epochs} epochs",
        flush=True,
    )
    facts = dataclasses.replace(setup.facts, epochs=epochs)
    return setup._replace(facts=facts), Budget(deadline, timing.epoch_s, reserve_s, clock)


def measure(setup: Setup, state, clock, timed_steps: int = 5) -> Timing:
    """Time the train step, a validation and an epoch's drawing; compile times excluded."""
    probe = jax.tree.map(jnp.copy, state)  # the train step donates its state
    idx = setup.splits.train[: setup.config.train.batch_size]
    batch = parallel.gather_batch(validate.labelled(setup.splits.arrays), idx, setup.mesh)
    key = jax.random.key(0)
    for _ in range(2):  # compiles, then warms up
        probe, out = setup.steps.train(probe, batch, key)
    jax.block_until_ready(out)
    tic = clock()
    for _ in range(timed_steps):
        probe, out = setup.steps.train(probe, batch, key)
    jax.block_until_ready(out)
    step_s = (clock() - tic) / timed_steps
    keep = setup.config.train.preview_count
    run = lambda: validate.validate_split(
        setup.steps, probe, setup.splits, setup.config.train.eval_batch_size, setup.mesh, keep
    )
    tic = clock()
    run()  # compiles
    first_s = clock() - tic
    tic = clock()
    probs = run().preview_probs
    val_s = clock() - tic
    with tempfile.TemporaryDirectory() as scratch:  # an epoch draws its preview and curves
        tic = clock()
        keys = ("train_loss", "val_loss", "val_mean_dice", "val_global_dice")
        rows = [{"epoch": e, **dict.fromkeys(keys, 0.5)} for e in (1, 2)]
        validate.draw(setup.splits, probs, rows, Path(scratch), 0)
        draw_s = clock() - tic
    epoch_s = setup.steps_per_epoch * step_s + val_s + draw_s + 1.0  # + a checkpoint
    return Timing(epoch_s, val_s, max(first_s - val_s, 0.0))
