"""The training loop: epochs of jitted steps, validation, checkpoints, previews; exact resume."""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from segjax import parallel
from segjax.config import Config, RunOptions
from segjax.data import sampling
from segjax.runs import checkpoint, metrics_log, run_folder, tensorboard
from segjax.train import budget as planner
from segjax.train import optim, validate
from segjax.train.console import describe, report
from segjax.train.progress import Ended, Fit, Progress
from segjax.train.start import Setup, start


def fit(
    config: Config,
    run_dir: str | Path,
    options: RunOptions = RunOptions(),
    *,
    clock=time.time,
    extra=None,
) -> Fit:
    """Train (or resume) into run_dir; return why it ended and where it stands.

    A folder that holds checkpoints needs `options.resume` (continue) or `options.overwrite`
    (start again). The options' `time_budget` and `session_limit` (minutes) count from
    `options.started` (default: now) on `clock`; `segjax.train.budget` plans the steps that
    fit and the pause. SIGINT or SIGTERM finish the current step, save a checkpoint with the
    mid-epoch position and return. `extra` (arrays, record): more training images, the
    pseudo-labels of `segjax.inference.pseudo`. Every way a call ends is an `Ended`, decided
    in one place (`why_stop`).

    Resuming from the latest checkpoint gives the same parameters and metrics rows as a run
    that never stopped: the state, the data position and the progress record are restored,
    and randomness is a function of (seed, step) and the batch order of (seed, epoch).
    """
    setup, state, progress = begin(config, Path(run_dir), options, clock, extra)
    tc, spe = setup.config.train, setup.steps_per_epoch
    rng = jax.random.fold_in(jax.random.key(tc.seed), 1)
    show = options.progress and setup.lead
    replace_step = progress.epoch + 1 if progress.batch else None  # a mid-epoch checkpoint
    longest = 0.0  # this process's longest epoch: validation, drawing, checkpoint included
    closed_s = None  # how long the last epoch took to close (validation, drawing, checkpoint)
    cut = False  # the time budget's plan ends after the epoch just closed
    logging, writer = options.log == "tensorboard" and setup.lead, None
    try:
        writer = tensorboard.Writer(setup.run_dir) if logging else None
        with stop_on_signals() as stop:
            while (ended := why_stop(setup, progress, stop, options, cut, longest)) is None:
                epoch = progress.epoch
                end = min(spe, setup.schedule_steps - epoch * spe)  # a plan may cut the last
                steps = end - progress.batch  # this call's steps (fewer after a mid-epoch stop)
                tic = clock() if setup.budget or setup.session else 0.0
                began = time.perf_counter()
                state, progress, train = train_epoch(setup, state, progress, rng, show, stop, end)
                seconds = time.perf_counter() - began
                if progress.batch < end:  # a signal came mid-epoch: `why_stop` says INTERRUPTED
                    save_stop(setup, state, progress, replace_step)
                    continue
                if setup.budget is not None:  # planned again before the checkpoint keeps it
                    trained = clock()
                    step_s = (trained - tic) / max(steps, 1)
                    small = epoch < setup.facts.small_epochs  # progressive resizing's phase
                    setup = planner.timed(setup, step_s, small, closed_s)
                    setup, state, cut = replan(setup, state, epoch * spe + end)
                state, progress = close_epoch(setup, state, progress, train, replace_step)
                replace_step = None
                if setup.budget is not None:
                    closed_s = clock() - trained
                if setup.lead:
                    log_timing(setup.run_dir, progress.epoch, seconds, steps * tc.batch_size)
                    report(progress.rows[-1], progress, seconds)
                if writer is not None:
                    preview = setup.run_dir / f"previews/epoch_{progress.epoch:03d}.png"
                    writer.epoch(progress.rows[-1], seconds / max(steps, 1), preview)
                if setup.session is not None:
                    longest = max(longest, clock() - tic)
        say_why(setup, ended, progress)
        return Fit(ended, progress)
    finally:
        checkpoint.seal(setup.manager)
        setup.manager.close()
        if writer is not None:
            writer.close()


def begin(
    config: Config, run_dir: Path, options: RunOptions, clock, extra
) -> tuple[Setup, Any, Progress]:
    """`start` and the time budget's plan, then the start block: the setup (with its plan),
    the state (with the plan's schedule) and where the run stands. A new folder is removed
    again if anything fails before the first step."""
    started = clock() if options.started is None else options.started
    new_folder, setup = not run_dir.exists(), None
    try:
        setup, state, progress = start(
            config, run_dir, resume=options.resume, overwrite=options.overwrite, extra=extra
        )
        at = progress.epoch * setup.steps_per_epoch + progress.batch
        tic = time.perf_counter()
        setup = planner.plan(setup, state, at, options, started, clock)
        planned_s = time.perf_counter() - tic
        state = with_schedule(state, setup.schedule_steps)
        if setup.lead:
            run_folder.write_run(setup.run_dir, setup.config, setup.facts)
            describe(setup, state, progress, options)
            up = setup.startup
            timed = f", timing the plan {planned_s:.1f} s" if setup.budget is not None else ""
            print(
                f"start-up: {clock() - started:.0f} s to the first step (decoding "
                f"{up['decode']:.1f} s, compiling {up['compile']:.1f} s{timed})",
                flush=True,
            )
    except BaseException:
        if setup is not None:
            setup.manager.close()
        if new_folder and jax.process_index() == 0:  # nothing half-made is left behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return setup, state, progress


def with_schedule(state, steps: int):
    """The state with a schedule `steps` long, placed as the state is: no retrace."""
    return state.replace(
        schedule_steps=parallel.put_replicated(np.int32(steps), state.schedule_steps.sharding)
    )


@contextlib.contextmanager
def stop_on_signals():
    """Within: SIGINT and SIGTERM set the yielded event instead of ending the process, so the
    loop can finish its step and save; outside, the previous handlers are back."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in handlers:
        signal.signal(sig, lambda number, frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def why_stop(setup: Setup, progress: Progress, stop, options: RunOptions, cut, longest: float):
    """Why the loop stops before its next epoch, or None to go on: the one place every reason
    is checked, in order of precedence. `stop`: set by a signal; `cut`: the time budget's plan
    ended with the last epoch; `longest`: the longest epoch so far (the session limit's);
    `options.stop_at_epoch`."""
    spe, tc, stop_at_epoch = setup.steps_per_epoch, setup.config.train, options.stop_at_epoch
    remains = progress.epoch * spe < setup.schedule_steps
    if stop.is_set():
        return Ended.INTERRUPTED
    if cut:
        return Ended.BUDGET_SPENT
    session = setup.session
    if remains and longest and session and planner.agree(int(not session.allows_another(longest))):
        return Ended.SESSION_PAUSED
    if not remains:
        return Ended.FINISHED
    if stop_at_epoch and progress.epoch >= stop_at_epoch:
        return Ended.STOPPED_AT_EPOCH
    if tc.early_stop and progress.bad_epochs >= tc.early_stop:
        return Ended.EARLY_STOPPED
    return None


def say_why(setup: Setup, ended: Ended, progress: Progress) -> None:
    """The line that says how to continue, where the run can continue (the time budget's stop
    was said when the plan made it; a mid-epoch stop by `save_stop`)."""
    if not setup.lead:
        return
    command = resume_command(setup.run_dir)
    if ended is Ended.SESSION_PAUSED:
        print(
            f"session limit: paused after epoch {progress.epoch} of {setup.epochs} (the next "
            f"would not end in time); the checkpoint is saved. Next session: {command}",
            flush=True,
        )
    elif ended is Ended.INTERRUPTED and not progress.batch:
        print(f"stopped; continue with: {command}", flush=True)


def replan(setup: Setup, state, at: int):
    """Apply the time budget's new plan at step `at` (`planner.replan`): the setup with it, the
    state with the schedule's new length, and whether to stop after this epoch; the plan is
    written to run.json and said."""
    spe, old = setup.steps_per_epoch, setup.schedule_steps
    plan = planner.replan(setup, at)
    if plan.steps == old and plan.small_epochs == setup.facts.small_epochs:
        return setup, state, False
    setup = planner.with_plan(setup, plan.steps, plan.small_epochs)
    if setup.lead:
        run_folder.write_run(setup.run_dir, setup.config, setup.facts)
    done = -(-at // spe)
    if plan.stop:
        print(
            f"time budget: stopping after epoch {done}, the next would not end in time "
            f"(the plan was {planner.describe_plan(old, spe)})",
            flush=True,
        )
    else:
        print(
            f"time budget: re-planned to {planner.describe_plan(plan.steps, spe)} (was "
            f"{planner.describe_plan(old, spe)}) from epoch {done}'s times: "
            f"{planner.describe_timing(setup)}",
            flush=True,
        )
    return setup, with_schedule(state, plan.steps), plan.stop


def close_epoch(setup: Setup, state, progress: Progress, train: dict, replace_step):
    """Validate, checkpoint, draw and log a finished epoch; the new state and progress."""
    tc, epoch = setup.config.train, progress.epoch + 1
    draw = epoch % tc.preview_every == 0 or epoch == setup.epochs
    keep = tc.preview_count if draw else 0
    val = validate.validate_split(
        setup.steps, state, setup.splits, tc.eval_batch_size, setup.mesh, keep
    )
    row = {
        "epoch": epoch,
        "step": int(state.step),
        "lr": optim.learning_rate(state),
        **train,
        **{f"val_{k}": v for k, v in val.summary.items()},
    }
    state = optim.step_plateau(state, tc, val.summary["loss"])
    progress = progress.after_epoch(row)
    save(setup, epoch, state, {**progress.to_meta(), "metrics": row}, replace_step == epoch)
    if draw:
        validate.draw(setup.splits, val.preview_probs, progress.rows, setup.run_dir, epoch)
    if setup.lead:
        metrics_log.append_metrics(setup.run_dir / "metrics.jsonl", row)
    return state, progress


def save_stop(setup: Setup, state, progress: Progress, replace_step) -> None:
    """A signal stopped the loop mid-epoch: checkpoint that position and the epoch's losses so
    far (so that the resumed epoch's mean loss is the same), and say how to continue."""
    epoch = progress.epoch + 1
    meta = {**progress.to_meta(), "metrics": {checkpoint.BEST_METRIC: -1.0}}
    save(setup, epoch, state, meta, replace_step == epoch)
    checkpoint.seal(setup.manager)
    print(
        f"stopped in epoch {epoch} after batch {progress.batch} of {setup.steps_per_epoch}; "
        f"the checkpoint is saved. Continue with: {resume_command(setup.run_dir)}",
        flush=True,
    )


def save(setup: Setup, epoch: int, state, meta: dict, replace: bool) -> None:
    """Checkpoint `epoch` with the run's settings and facts beside the progress."""
    meta = {**meta, "config": setup.config.to_dict(), "facts": setup.facts.to_dict()}
    checkpoint.save(setup.manager, epoch, state, meta, replace=replace)


def resume_command(run_dir: Path) -> str:
    return f"segjax train --resume --run-dir {run_dir}"


def train_epoch(
    setup: Setup, state, progress: Progress, rng, show: bool, stop=None, end: int | None = None
):
    """The updates of epoch `progress.epoch` from batch `progress.batch` to batch `end`
    (default: all of them); a set `stop` event ends it after the current step. Returns the
    state, the progress at the batch reached (with the epoch's step losses so far), and the
    epoch's training metrics (its mean loss; float16's skipped updates and loss scale)."""
    tc, epoch = setup.config.train, progress.epoch
    spe = end or setup.steps_per_epoch
    bar = tqdm(
        total=spe * tc.batch_size,
        initial=progress.batch * tc.batch_size,
        desc=f"epoch {epoch + 1}/{setup.epochs}",
        unit="img",
        disable=not show,
        leave=False,
        dynamic_ncols=True,
    )
    n = len(setup.splits.train)
    batches = sampling.train_batches(n, tc.batch_size, tc.seed, epoch, progress.batch)
    arrays = validate.labelled(setup.splits.arrays)
    make = lambda b: (b[0], parallel.gather_batch(arrays, setup.splits.train[b[1]], setup.mesh))
    step_losses, skipped, position = [], [], spe
    train = setup.steps.train_at(epoch < setup.facts.small_epochs)  # progressive resizing
    with parallel.Prefetcher(batches, make) as feed:
        for index, batch in feed:
            if index >= spe:  # a resume past a shortened plan's end
                break
            state, out = train(state, batch, rng)
            step_losses.append(out["loss"])
            skipped += [out["skipped"]] if "skipped" in out else []
            if index % 10 == 0 and len(step_losses) > 1:  # one step late: already computed
                check_finite(float(step_losses[-2]), epoch, index, setup.manager)
                bar.set_postfix(loss=f"{float(step_losses[-2]):.4f}")
            bar.update(tc.batch_size)
            if index + 1 >= spe:  # a plan's cut epoch ends here
                break
            if stop is not None and stop.is_set():
                position = index + 1
                break
    bar.close()
    losses = np.asarray(jax.device_get(step_losses), np.float32).reshape(-1)
    check_finite(float(np.mean(losses)) if len(losses) else 0.0, epoch, spe, setup.manager)
    progress = progress.after_steps(position, losses.tolist())
    metrics = {"train_loss": float(np.mean(np.asarray(progress.partial_losses, np.float32)))}
    if state.dynamic_scale is not None:  # float16's loss scaling at work
        skips = int(np.sum(jax.device_get(skipped))) if skipped else 0
        metrics.update(skipped_steps=skips, loss_scale=float(state.dynamic_scale.scale))
    return state, progress, metrics


def check_finite(loss: float, epoch: int, index: int, manager) -> None:
    if math.isfinite(loss):
        return
    latest = None
    if manager is not None:
        manager.wait_until_finished()
        latest = manager.latest_step()
    kept = f"the last good checkpoint is epoch {latest}" if latest else "no checkpoint was saved"
    where = f" in {manager.directory}" if manager is not None else ""
    raise FloatingPointError(
        f"non-finite training loss ({loss}) in epoch {epoch + 1}, step {index}; {kept}{where}. "
        "Lower --lr, or try --precision fp32."
    )


def log_timing(run_dir: Path, epoch: int, seconds: float, images: int) -> None:
    """timing.jsonl: the clock's view of an epoch (metrics.jsonl stays deterministic)."""
    rate = images / max(seconds, 1e-9)
    timing = {"epoch": epoch, "train_seconds": seconds, "train_img_per_s": rate}
    metrics_log.append_metrics(run_dir / "timing.jsonl", timing)
