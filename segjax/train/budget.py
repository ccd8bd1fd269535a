"""The time-budget planner: time the real steps, plan the steps that fit, re-plan each epoch.

The plan is a number of steps, not of epochs: the last epoch may stop part-way, so a run ends
close to its deadline whatever an epoch costs. After every epoch the plan is made again from
that epoch's own times (the first steps of a run are often slower than the later ones); the
schedule's length is a value in the train state, so a new plan recompiles nothing.
"""

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
from segjax.train.start import Setup, small_phase

# Fitted constants, each from measured runs on this project's CPU (2 cores):
# - the tuning reserve: 2 s + the evaluation step's compile time + 2.5 validations + 0.15 s an
#   image, fitted to the tuning times from a run's last epoch to the command's end: 31 s for
#   80 photos at 192x128, 10 s for the demo (it kept 54 s and 21 s before the fit);
TUNING_BASE_S, TUNING_VALIDATIONS, TUNING_PER_IMAGE_S = 2.0, 2.5, 0.15
# - a time budget keeps 3% for its estimates' errors (epochs vary; a run ended 0.4 s past its
#   12 minutes with 2%) and what runs before the clock starts;
BUDGET_MARGIN = 0.03
# - a session limit keeps 30 s and 1% for the last checkpoint and the process's end;
SESSION_MARGIN_S, SESSION_MARGIN = 30.0, 0.01
# - an epoch's closing beyond its validation and drawing: the checkpoint, about a second;
CHECKPOINT_S = 1.0
# - with --fold all, 5% of the budget is kept for tuning the ensemble (chosen, not fitted).
ENSEMBLE_RESERVE = 0.05


class Budget(NamedTuple):
    """A time budget: a deadline on `clock`, what must still fit after the epochs (the
    tuning), and the times the plan is made from."""

    deadline: float
    reserve_s: float
    clock: Any
    timing: Any = None  # Timing: measured before the first step, then each epoch's own
    first_overhead_s: float = 0.0  # the closing measured before the first step: a floor


class SessionLimit(NamedTuple):
    """A session limit: a deadline on `clock` and the margin kept for the last checkpoint;
    epochs are timed as they run (the first includes compiling)."""

    deadline: float
    margin_s: float
    clock: Any

    def allows_another(self, longest_epoch_s: float) -> bool:
        """Whether one more epoch as long as the longest so far ends before the deadline."""
        return self.clock() + longest_epoch_s + self.margin_s <= self.deadline


def session(minutes: float | None, started: float, clock) -> SessionLimit | None:
    if not minutes:
        return None
    margin = SESSION_MARGIN_S + SESSION_MARGIN * 60.0 * minutes
    return SessionLimit(started + 60.0 * minutes, margin, clock)


class Timing(NamedTuple):
    step_s: float  # one train step
    overhead_s: float  # what closes an epoch: a validation, the drawing and a checkpoint
    val_s: float  # one validation pass
    compile_s: float  # compiling the evaluation step (tuning compiles two predictors like it)
    small_step_s: float = 0.0  # one train step at --small-size (0: no progressive resizing)

    def epoch_s(self, steps_per_epoch: int) -> float:
        return steps_per_epoch * self.step_s + self.overhead_s


def plan_steps(available_s: float, timing: Timing, at: int, spe: int, most: int) -> int:
    """The step to end at: the most steps after step `at` that, with each epoch's closing
    overhead (a cut last epoch closes too), take at most `available_s`; never past `most`
    (--epochs). `at` when not one more step fits."""
    best, n = at, 1
    while True:
        end = (at // spe + n) * spe  # the end of the n-th epoch from here
        before = max(at, end - spe)
        if before >= most:
            return best
        room = max(available_s - n * timing.overhead_s, 0.0)
        candidate = min(end, most, at + int(room // max(timing.step_s, 1e-9)))
        if candidate <= before:  # no step of the n-th epoch fits
            return best
        best, n = candidate, n + 1


def plan_phases(available_s: float, timing: Timing, at: int, spe: int, most: int, switch: int):
    """`plan_steps` when the steps before `switch` (progressive resizing's smaller phase, an
    epoch boundary) take `timing.small_step_s` each."""
    if at >= switch or not timing.small_step_s:
        return plan_steps(available_s, timing, at, spe, most)
    small = timing._replace(step_s=timing.small_step_s)
    small_phase_s = (switch - at) * small.step_s + (switch // spe - at // spe) * small.overhead_s
    if small_phase_s > available_s or switch >= most:
        return plan_steps(available_s, small, at, spe, min(most, switch))
    return plan_steps(available_s - small_phase_s, timing, switch, spe, most)


def first_plan(available_s: float, timing: Timing, at: int, spe: int, most: int, fraction: float):
    """The steps and the smaller phase's epochs of a new plan: the share `fraction` of the
    planned epochs at --small-size (0: none). The phase's length depends on the plan and the
    plan on the phase's cheaper steps: planned at their average cost, then in two phases."""
    if not timing.small_step_s:
        return plan_steps(available_s, timing, at, spe, most), 0
    mean_s = fraction * timing.small_step_s + (1 - fraction) * timing.step_s
    rough = plan_steps(available_s, timing._replace(step_s=mean_s), at, spe, most)
    small_epochs = small_phase(fraction, -(-rough // spe))
    return plan_phases(available_s, timing, at, spe, most, small_epochs * spe), small_epochs


def tuning_reserve(timing: Timing, n_val: int) -> float:
    """Seconds kept for tuning: two predictors compiled and run over the validation images
    (with and without flip TTA), the threshold/post-processing search, and the tuned setting
    scored once more at the images' original size (the constants above)."""
    return (
        TUNING_BASE_S
        + timing.compile_s
        + TUNING_VALIDATIONS * timing.val_s
        + TUNING_PER_IMAGE_S * n_val
    )


def agree(steps: int) -> int:
    """Every process takes process 0's plan (their clocks differ)."""
    if jax.process_count() == 1:
        return steps
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(steps)))


def with_plan(setup: Setup, steps: int, small_epochs: int | None = None) -> Setup:
    """The setup with a schedule of `steps` steps (and `small_epochs` at --small-size, when
    given) in its facts (run.json)."""
    epochs = -(-steps // setup.steps_per_epoch)
    facts = dataclasses.replace(setup.facts, epochs=epochs, steps=steps)
    if small_epochs is not None:
        facts = dataclasses.replace(facts, small_epochs=small_epochs)
    return setup._replace(facts=facts)


def describe_plan(steps: int, spe: int) -> str:
    """ "9 epochs" or "9 epochs (the last 40 of 72 batches)"."""
    epochs, cut = -(-steps // spe), steps % spe
    return f"{epochs} epochs" + (f" (the last {cut} of {spe} batches)" if cut else "")


def describe_timing(setup: Setup) -> str:
    """The budget's latest times: "0.90 s a step, 3.1 s to close an epoch", with the smaller
    size's step when it has one."""
    timing = setup.budget.timing
    steps = f"{timing.step_s:.2f} s a step"
    if timing.small_step_s and setup.facts.small_epochs:
        (h, w), (H, W) = setup.config.train.small_size, setup.config.data.image_size
        steps = f"{timing.small_step_s:.2f} s a step at {h}x{w}, {timing.step_s:.2f} s at {H}x{W}"
    return f"{steps}, {timing.overhead_s:.1f} s to close an epoch"


def plan(setup: Setup, state, at: int, options, started: float, clock) -> Setup:
    """The setup with the options' session limit and time budget (minutes from `started` on
    `clock`). With a budget: time the steps on a throwaway copy of the state (compiling what
    training uses anyway), plan the steps that fit from step `at` (at least to the end of the
    current epoch) into the facts, say so."""
    setup = setup._replace(session=session(options.session_limit, started, clock))
    minutes = options.time_budget
    if not minutes:
        return setup
    tc, spe = setup.config.train, setup.steps_per_epoch
    if at >= setup.schedule_steps:  # a finished run (resumed to tune it again): nothing to plan
        return setup
    timing = measure(setup, state, clock)
    # tuning, and 3% of the budget for the estimates' errors (an epoch's time varies) and what
    # runs before the clock starts (the interpreter)
    reserve_s = tuning_reserve(timing, len(setup.splits.val)) + BUDGET_MARGIN * 60.0 * minutes
    deadline = started + 60.0 * minutes
    most = tc.epochs * spe
    available = deadline - clock() - reserve_s
    if at == 0:  # a new run: the smaller phase's length comes with the plan
        fraction = tc.small_fraction if tc.small_size else 0.0
        steps, small_epochs = first_plan(available, timing, at, spe, most, fraction)
    else:  # a resume keeps its phases
        small_epochs = setup.facts.small_epochs
        steps = plan_phases(available, timing, at, spe, most, small_epochs * spe)
    steps = agree(max(steps, min(most, (at // spe + 1) * spe)))
    small_epochs = agree(small_epochs)
    small = ""
    if small_epochs:
        h, w = tc.small_size
        small = f", the first {small_epochs} at {h}x{w} ({timing.small_step_s:.2f} s a step)"
    print(
        f"time budget {minutes:.3g} min: {describe_plan(steps, spe)} planned{small} "
        f"({timing.step_s:.2f} s a step, {timing.epoch_s(spe):.1f} s an epoch, {reserve_s:.0f} s "
        "kept for tuning); re-planned after each epoch from its own times",
        flush=True,
    )
    budget = Budget(deadline, reserve_s, clock, timing, timing.overhead_s)
    return with_plan(setup, steps, small_epochs)._replace(budget=budget)


def timed(setup: Setup, step_s: float, small: bool, closed_s: float | None) -> Setup:
    """The budget with an epoch's own times: its step time replaces its phase's estimate;
    `closed_s`, how long the previous epoch took to close, replaces that estimate (never below
    the first, which drew a preview)."""
    budget = setup.budget
    timing = budget.timing._replace(**{"small_step_s" if small else "step_s": step_s})
    if closed_s is not None:
        timing = timing._replace(overhead_s=max(closed_s, budget.first_overhead_s))
    return setup._replace(budget=budget._replace(timing=timing))


class Plan(NamedTuple):
    """A plan made again after an epoch."""

    steps: int  # the step the schedule ends at
    small_epochs: int  # progressive resizing's smaller phase, in epochs
    stop: bool  # stop after the epoch just closed: the next would not end in time


def replan(setup: Setup, at: int) -> Plan:
    """After an epoch whose validation and checkpoint are still to come (`at`: its last step):
    the plan from the budget's latest times and the clock now. A plan that would end in the
    smaller phase of progressive resizing ends that phase sooner (leaving an epoch at full
    size)."""
    budget, spe, small = setup.budget, setup.steps_per_epoch, setup.facts.small_epochs
    timing = budget.timing
    most = setup.config.train.epochs * spe
    # this epoch's closing (validation, drawing, checkpoint) is still to come
    available = budget.deadline - budget.clock() - budget.reserve_s - timing.overhead_s
    steps = agree(plan_phases(available, timing, at, spe, most, small * spe))
    done = -(-at // spe)  # epochs done, this one included
    if steps <= small * spe and small > done:
        small = agree(max(done, -(-steps // spe) - 1))
        steps = agree(plan_phases(available, timing, at, spe, most, small * spe))
    stop = steps <= at
    return Plan(at if stop else steps, small, stop)


def measure(setup: Setup, state, clock, timed_steps: int = 4) -> Timing:
    """Time the train step, a validation and an epoch's drawing; the steps are compiled
    already (`setup.startup["eval_compile"]` says how long the evaluation step's took)."""
    probe = jax.tree.map(jnp.copy, state)  # the train step donates its state
    idx = setup.splits.train[: setup.config.train.batch_size]
    batch = parallel.gather_batch(validate.labelled(setup.splits.arrays), idx, setup.mesh)
    key = jax.random.key(0)

    def time_steps(train):
        nonlocal probe
        probe, out = train(probe, batch, key)  # the first run of a program is slower
        jax.block_until_ready(out)
        tic = clock()
        for _ in range(timed_steps):
            probe, out = train(probe, batch, key)
        jax.block_until_ready(out)
        return (clock() - tic) / timed_steps

    small_s = time_steps(setup.steps.train_small) if setup.steps.train_small else 0.0
    step_s = time_steps(setup.steps.train)
    keep = setup.config.train.preview_count
    run = lambda: validate.validate_split(
        setup.steps, probe, setup.splits, setup.config.train.eval_batch_size, setup.mesh, keep
    )
    tic = clock()
    probs = run().preview_probs
    val_s = clock() - tic
    with tempfile.TemporaryDirectory() as scratch:  # an epoch draws its preview and curves
        tic = clock()
        keys = ("train_loss", "val_loss", "val_mean_dice", "val_global_dice")
        rows = [{"epoch": e, **dict.fromkeys(keys, 0.5)} for e in (1, 2)]
        validate.draw(setup.splits, probs, rows, Path(scratch), 0)
        draw_s = clock() - tic
    overhead_s = val_s + draw_s + CHECKPOINT_S
    return Timing(step_s, overhead_s, val_s, setup.startup["eval_compile"], small_s)
