"""The training loop: epochs of jitted steps, validation, checkpoints, previews; exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

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
    """Train (or resume) into run_dir; return why it ended, where it stands, its last row.

    A folder that holds checkpoints needs `options.resume` (continue) or `options.overwrite`
    (start again). The options' `time_budget` and `session_limit` (minutes) count from
    `options.started` (default: now) on `clock`; `segjax.train.budget` plans the steps that
    fit and the pause. SIGINT or SIGTERM finish the current step, save a checkpoint with the
    mid-epoch position and return. `extra` (arrays, record): more training images, the
    pseudo-labels of `segjax.inference.pseudo`. Every way a call ends is an `Ended`, decided
    in one place (`Loop.ended`).

    Resuming from the latest checkpoint gives the same parameters and metrics rows as a run
    that never stopped: the state, the data position and the progress record are restored,
    and randomness is a function of (seed, step) and the batch order of (seed, epoch).
    """
    started = clock() if options.started is None else options.started
    run_dir = Path(run_dir)
    new_folder, begun = not run_dir.exists(), None
    try:
        begun = start(
            config, run_dir, resume=options.resume, overwrite=options.overwrite, extra=extra
        )
        at = begun.progress.epoch * begun.setup.steps_per_epoch + begun.progress.batch
        tic = time.perf_counter()
        setup, budget = planner.plan(
            begun.setup, begun.state, at, options.time_budget, started, clock
        )
        planned_s = time.perf_counter() - tic
    except BaseException:
        if begun is not None:
            begun.setup.manager.close()
        if new_folder and jax.process_index() == 0:  # nothing half-made is left behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    state, writer = begun.state, None
    try:
        state = with_schedule(state, setup.schedule_steps)
        if setup.lead:
            run_folder.write_run(setup.run_dir, setup.config, setup.facts)
            describe(setup, state, begun.progress, options)
            up = setup.startup
            timed = f", timing the plan {planned_s:.1f} s" if budget is not None else ""
            print(
                f"start-up: {clock() - started:.0f} s to the first step (decoding "
                f"{up.decode_s:.1f} s, compiling {up.compile_s:.1f} s{timed})",
                flush=True,
            )
        limit = planner.session(options.session_limit, started, clock)
        logging = options.log == "tensorboard" and setup.lead
        writer = tensorboard.Writer(setup.run_dir) if logging else None
        with stop_on_signals() as stop:
            show = options.progress and setup.lead
            loop = Loop(setup, stop, budget, limit, show, clock, writer)
            return loop.run(state, begun.progress, begun.rows, options.stop_at_epoch)
    finally:
        checkpoint.seal(setup.manager)
        setup.manager.close()
        if writer is not None:
            writer.close()


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


class EpochRun(NamedTuple):
    state: Any
    losses: np.ndarray  # each step's loss
    seconds: float
    batch: int  # the batches of the epoch done: all of them unless a stop came first
    skipped: int = 0  # float16: updates skipped for a non-finite gradient


class Loop(NamedTuple):
    """The epochs of one `fit` call: train, validate, checkpoint, draw, log."""

    setup: Setup
    stop: threading.Event  # set by a signal: finish the step, save, return
    budget: planner.Budget | None  # --time-budget: the epochs were planned to fit it
    session: planner.SessionLimit | None  # --session-limit: pause when the next would not fit
    show: bool  # progress bars
    clock: Any = time.time  # the budget's and the session's clock
    writer: Any = None  # --log tensorboard: segjax.runs.tensorboard.Writer

    def run(self, state, progress: Progress, rows: tuple, stop_at_epoch: int | None) -> Fit:
        """Epochs from `progress` on, until `ended` finds a reason to stop (the one exit).
        With a time budget the plan is made again after each epoch (the local `loop` then
        holds the new plan)."""
        loop, tc, spe = self, self.setup.config.train, self.setup.steps_per_epoch
        rng = jax.random.fold_in(jax.random.key(tc.seed), 1)
        replace_step = progress.epoch + 1 if progress.batch else None  # a mid-epoch checkpoint
        longest = 0.0  # this process's longest epoch: validation, drawing, checkpoint included
        timing = self.budget.timing if self.budget is not None else None  # the latest times
        cut = False  # the time budget's plan ends after the epoch just closed
        while (ended := loop.ended(progress, stop_at_epoch, cut, longest)) is None:
            epoch = progress.epoch
            end = min(spe, loop.setup.schedule_steps - epoch * spe)  # a plan may cut the last
            timed = self.budget is not None or self.session is not None
            tic = self.clock() if timed else 0.0
            done = train_epoch(loop.setup, state, progress, rng, self.show, self.stop, end)
            trained = self.clock() if self.budget is not None else 0.0
            state = done.state
            losses = np.concatenate([np.asarray(progress.partial_losses, np.float32), done.losses])
            if done.batch < end:  # a signal came mid-epoch
                progress = dataclasses.replace(
                    progress, batch=done.batch, partial_losses=tuple(losses.tolist())
                )
                loop.save_stop(state, progress, replace_step)
                continue  # the signal is set: `ended` says INTERRUPTED
            steps_done = end - progress.batch
            if self.budget is not None:  # planned again before the checkpoint, which keeps it
                small = epoch < loop.setup.facts.small_epochs  # progressive resizing's phase
                step_s = (trained - tic) / max(steps_done, 1)  # replaces its phase's estimate
                timing = timing._replace(**{"small_step_s" if small else "step_s": step_s})
                loop, state, cut = loop.replan(state, timing, epoch * spe + end)
            train = {"train_loss": float(np.mean(losses))}
            if state.dynamic_scale is not None:  # float16's loss scaling at work
                scale = float(state.dynamic_scale.scale)
                train.update(skipped_steps=done.skipped, loss_scale=scale)
            state, progress, rows = loop.close_epoch(state, progress, rows, train, replace_step)
            replace_step = None
            if timing is not None:  # this epoch's closing time, for the next plan (at least
                first = self.budget.timing.overhead_s  # the first estimate: it drew a preview)
                timing = timing._replace(overhead_s=max(self.clock() - trained, first))
            if loop.setup.lead:
                log_timing(
                    loop.setup.run_dir, progress.epoch, done.seconds, steps_done * tc.batch_size
                )
                report(rows[-1], progress, done.seconds)
            if self.writer is not None:
                preview = loop.setup.run_dir / f"previews/epoch_{progress.epoch:03d}.png"
                self.writer.epoch(rows[-1], done.seconds / max(steps_done, 1), preview)
            if self.session is not None:
                longest = max(longest, self.clock() - tic)
        loop.say_why(ended, progress)
        return Fit(ended, progress, rows[-1] if rows else {})

    def ended(self, progress: Progress, stop_at_epoch, cut: bool, longest: float):
        """Why the loop stops before its next epoch, or None to go on: the one place every
        reason is checked, in order of precedence."""
        spe, tc = self.setup.steps_per_epoch, self.setup.config.train
        remains = progress.epoch * spe < self.setup.schedule_steps
        if self.stop.is_set():
            return Ended.INTERRUPTED
        if cut:
            return Ended.BUDGET_SPENT
        session = self.session
        if (
            remains
            and longest
            and session
            and planner.agree(int(not session.allows_another(longest)))
        ):
            return Ended.SESSION_PAUSED
        if not remains:
            return Ended.FINISHED
        if stop_at_epoch and progress.epoch >= stop_at_epoch:
            return Ended.STOPPED_AT_EPOCH
        if tc.early_stop and progress.bad_epochs >= tc.early_stop:
            return Ended.EARLY_STOPPED
        return None

    def say_why(self, ended: Ended, progress: Progress) -> None:
        """The line that says how to continue, where the run can continue (the time budget's
        stop was said when the plan made it; a mid-epoch stop by `save_stop`)."""
        if not self.setup.lead:
            return
        command = resume_command(self.setup.run_dir)
        if ended is Ended.SESSION_PAUSED:
            print(
                f"session limit: paused after epoch {progress.epoch} of {self.setup.epochs} "
                "(the next would not end in time); the checkpoint is saved. Next "
                f"session: {command}",
                flush=True,
            )
        elif ended is Ended.INTERRUPTED and not progress.batch:
            print(f"stopped; continue with: {command}", flush=True)

    def replan(self, state, timing: planner.Timing, at: int):
        """Apply the time budget's new plan at step `at` (`planner.replan`): the loop with it,
        the state with the schedule's new length, and whether to stop after this epoch; the
        plan is written to run.json and said."""
        setup, spe = self.setup, self.setup.steps_per_epoch
        old = setup.schedule_steps
        plan = planner.replan(self.budget, timing, at, setup)
        if plan.steps == old and plan.small_epochs == setup.facts.small_epochs:
            return self, state, False
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
                f"{planner.describe_timing(timing, setup)}",
                flush=True,
            )
        return self._replace(setup=setup), with_schedule(state, plan.steps), plan.stop

    def close_epoch(self, state, progress: Progress, rows: tuple, train: dict, replace_step):
        """Validate, checkpoint, draw and log a finished epoch; the new state, progress, rows."""
        setup, tc = self.setup, self.setup.config.train
        epoch = progress.epoch + 1
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
        progress = progress.after_epoch(val.summary["mean_dice"])
        rows = (*rows, row)
        save(setup, epoch, state, {**progress.to_meta(), "metrics": row}, replace_step == epoch)
        if draw:
            validate.draw(setup.splits, val.preview_probs, rows, setup.run_dir, epoch)
        if setup.lead:
            metrics_log.append_metrics(setup.run_dir / "metrics.jsonl", row)
        return state, progress, rows

    def save_stop(self, state, progress: Progress, replace_step) -> None:
        """A signal stopped the loop mid-epoch: checkpoint that position and the epoch's losses
        so far (so that the resumed epoch's mean loss is the same), and say how to continue."""
        setup, epoch = self.setup, progress.epoch + 1
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
) -> EpochRun:
    """The updates of epoch `progress.epoch` from batch `progress.batch` to batch `end`
    (default: all of them); a set `stop` event ends it after the current step."""
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
    step_losses, skipped, position, tic = [], [], spe, time.perf_counter()
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
    skips = int(np.sum(jax.device_get(skipped))) if skipped else 0
    return EpochRun(state, losses, time.perf_counter() - tic, position, skips)


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
