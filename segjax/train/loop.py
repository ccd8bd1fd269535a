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
from segjax.train import budget as planner
from segjax.train import checkpoint, metrics_log, optim, run_folder, validate
from segjax.train.console import describe, report
from segjax.train.progress import Progress
from segjax.train.start import Setup, start


def fit(
    config: Config,
    run_dir: str | Path,
    options: RunOptions = RunOptions(),
    *,
    clock=time.time,
    extra=None,
) -> dict:
    """Train (or resume) into run_dir; return the last metrics row.

    A folder that holds checkpoints needs `options.resume` (continue) or `options.overwrite`
    (start again). `stop_at_epoch` ends this process's work after that epoch (the schedule still
    spans all epochs); a later resume continues. `time_budget` (minutes, counted from
    `started`, default now, on `clock`) plans the steps so that training and tuning end
    within it, and plans again after each epoch (the last epoch may stop part-way). SIGINT or
    SIGTERM finish the current step, save a checkpoint with the mid-epoch data position and
    return; the row then has "stopped": [epoch, batch]. `extra` (arrays, record): more
    training images, the pseudo-labels of `segjax.inference.pseudo`.

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
    state = begun.state
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
        with stop_on_signals() as stop:
            loop = Loop(setup, stop, budget, limit, options.progress and setup.lead, clock)
            return loop.run(state, begun.progress, begun.rows, options.stop_at_epoch)
    finally:
        checkpoint.seal(setup.manager)
        setup.manager.close()


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
    session: planner.Budget | None  # --session-limit: pause when the next epoch would not fit
    show: bool  # progress bars
    clock: Any = time.time  # the budget's and the session's clock

    def run(self, state, progress: Progress, rows: tuple, stop_at_epoch: int | None) -> dict:
        """Epochs from `progress` on; returns the last metrics row, with "stopped", "budget"
        or "session" when a signal, the time budget or the session limit ended them early.
        With a time budget the plan is made again after each epoch (`self.setup` then holds
        the new plan)."""
        loop, tc, spe = self, self.setup.config.train, self.setup.steps_per_epoch
        rng = jax.random.fold_in(jax.random.key(tc.seed), 1)
        replace_step = progress.epoch + 1 if progress.batch else None  # a mid-epoch checkpoint
        longest = 0.0  # this process's longest epoch: validation, drawing, checkpoint included
        timing = self.budget.timing if self.budget is not None else None  # the latest times
        epoch = progress.epoch
        while epoch * spe < loop.setup.schedule_steps and epoch < (stop_at_epoch or math.inf):
            if (tc.early_stop and progress.bad_epochs >= tc.early_stop) or self.stop.is_set():
                break  # between epochs: the last checkpoint already holds this position
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
                return loop.save_stop(state, progress, rows, replace_step)
            steps_done, cut = end - progress.batch, False
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
            replace_step, epoch = None, epoch + 1
            if timing is not None:  # this epoch's closing time, for the next plan (at least
                first = self.budget.timing.overhead_s  # the first estimate: it drew a preview)
                timing = timing._replace(overhead_s=max(self.clock() - trained, first))
            if loop.setup.lead:
                log_timing(loop.setup.run_dir, epoch, done.seconds, steps_done * tc.batch_size)
                report(rows[-1], progress, done.seconds)
            if cut:
                return {**rows[-1], "budget": True}
            if self.session is not None and epoch * spe < loop.setup.schedule_steps:
                longest = max(longest, self.clock() - tic)
                if planner.agree(int(not self.session.allows_another(longest))):
                    print(
                        f"session limit: paused after epoch {epoch} of {loop.setup.epochs} "
                        "(the next would not end in time); the checkpoint is saved. Next "
                        f"session: {resume_command(loop.setup.run_dir)}",
                        flush=True,
                    )
                    return {**rows[-1], "session": True}
        last = rows[-1] if rows else {}
        if self.stop.is_set():
            print(f"stopped; continue with: {resume_command(loop.setup.run_dir)}", flush=True)
            return {**last, "stopped": [progress.epoch, progress.batch]}
        return last

    def replan(self, state, timing: planner.Timing, at: int):
        """The time budget's plan made again at step `at`, the end of an epoch whose
        validation and checkpoint are still to come: the loop with the new plan, the state
        with the schedule's new length, and whether to stop after this epoch. A plan that
        would end in the smaller phase of progressive resizing ends that phase sooner."""
        setup, spe = self.setup, self.setup.steps_per_epoch
        old, small, most = (
            setup.schedule_steps,
            setup.facts.small_epochs,
            setup.config.train.epochs * spe,
        )
        budget = self.budget._replace(reserve_s=self.budget.reserve_s + timing.overhead_s)
        steps = planner.replan(budget, timing, at, spe, most, small * spe)
        done = -(-at // spe)  # epochs done, this one included
        if steps <= small * spe and small > done:
            small = planner.agree(max(done, -(-steps // spe) - 1))
            steps = planner.replan(budget, timing, at, spe, most, small * spe)
        if steps == old and small == setup.facts.small_epochs:
            return self, state, False
        stop = steps <= at
        steps = at if stop else steps
        setup = planner.with_plan(setup, steps, small)
        if setup.lead:
            run_folder.write_run(setup.run_dir, setup.config, setup.facts)
        if stop:
            print(
                f"time budget: stopping after epoch {done}, the next would not end in time "
                f"(the plan was {planner.describe_plan(old, spe)})",
                flush=True,
            )
        else:
            print(
                f"time budget: re-planned to {planner.describe_plan(steps, spe)} (was "
                f"{planner.describe_plan(old, spe)}) from epoch {done}'s times: "
                f"{planner.describe_timing(timing, setup)}",
                flush=True,
            )
        return self._replace(setup=setup), with_schedule(state, steps), stop

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

    def save_stop(self, state, progress: Progress, rows: tuple, replace_step) -> dict:
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
        return {**(rows[-1] if rows else {}), "stopped": [progress.epoch, progress.batch]}


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
