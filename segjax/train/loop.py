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
    config: Config, run_dir: str | Path, options: RunOptions = RunOptions(), *, clock=time.time
) -> dict:
    """Train (or resume) into run_dir; return the last metrics row.

    A folder that holds checkpoints needs `options.resume` (continue) or `options.overwrite`
    (start again). `stop_at_epoch` ends this process's work after that epoch (the schedule still
    spans all epochs); a later resume continues. `time_budget` (minutes, counted from
    `started`, default now, on `clock`) plans the number of epochs so that training and tuning
    end within it. SIGINT or SIGTERM finish the current step, save a checkpoint with the
    mid-epoch data position and return; the row then has "stopped": [epoch, batch].

    Resuming from the latest checkpoint gives the same parameters and metrics rows as a run
    that never stopped: the state, the data position and the progress record are restored,
    and randomness is a function of (seed, step) and the batch order of (seed, epoch).
    """
    started = clock() if options.started is None else options.started
    run_dir = Path(run_dir)
    new_folder, begun = not run_dir.exists(), None
    try:
        begun = start(config, run_dir, resume=options.resume, overwrite=options.overwrite)
        setup, budget = planner.plan(
            begun.setup, begun.state, begun.progress.epoch, options.time_budget, started, clock
        )
    except BaseException:
        if begun is not None:
            begun.setup.manager.close()
        if new_folder and jax.process_index() == 0:  # nothing half-made is left behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    state = begun.state
    try:
        steps = jax.device_put(
            np.int32(setup.epochs * setup.steps_per_epoch), state.schedule_steps.sharding
        )
        state = state.replace(schedule_steps=steps)  # placed as the state: no retrace
        if setup.lead:
            run_folder.write_run(setup.run_dir, setup.config, setup.facts)
            describe(setup, state, begun.progress, options)
        limit = planner.session(options.session_limit, started, clock)
        with stop_on_signals() as stop:
            loop = Loop(setup, stop, budget, limit, options.progress and setup.lead, clock)
            return loop.run(state, begun.progress, begun.rows, options.stop_at_epoch)
    finally:
        checkpoint.seal(setup.manager)
        setup.manager.close()


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
        or "session" when a signal, the time budget or the session limit ended them early."""
        tc, epochs = self.setup.config.train, self.setup.epochs
        rng = jax.random.fold_in(jax.random.key(tc.seed), 1)
        replace_step = progress.epoch + 1 if progress.batch else None  # a mid-epoch checkpoint
        longest = 0.0  # this process's longest epoch: validation, drawing, checkpoint included
        for epoch in range(progress.epoch, min(epochs, stop_at_epoch or epochs)):
            if (tc.early_stop and progress.bad_epochs >= tc.early_stop) or self.stop.is_set():
                break  # between epochs: the last checkpoint already holds this position
            timed = self.budget is not None or self.session is not None
            tic = self.clock() if timed else 0.0
            done = train_epoch(self.setup, state, progress, rng, self.show, self.stop)
            state = done.state
            losses = np.concatenate([np.asarray(progress.partial_losses, np.float32), done.losses])
            if done.batch < self.setup.steps_per_epoch:  # a signal came mid-epoch
                progress = dataclasses.replace(
                    progress, batch=done.batch, partial_losses=tuple(losses.tolist())
                )
                return self.save_stop(state, progress, rows, replace_step)
            images = (self.setup.steps_per_epoch - progress.batch) * tc.batch_size
            train = {"train_loss": float(np.mean(losses))}
            if state.dynamic_scale is not None:  # float16's loss scaling at work
                scale = float(state.dynamic_scale.scale)
                train.update(skipped_steps=done.skipped, loss_scale=scale)
            state, progress, rows = self.close_epoch(state, progress, rows, train, replace_step)
            replace_step = None
            if self.setup.lead:
                log_timing(self.setup.run_dir, rows[-1]["epoch"], done.seconds, images)
                report(rows[-1], progress, done.seconds)
            if timed and epoch + 1 < epochs:
                longest = max(longest, self.clock() - tic)
                cut = self.out_of_time(epoch + 1, longest)
                if cut:
                    return {**rows[-1], cut: True}
        last = rows[-1] if rows else {}
        if self.stop.is_set():
            print(f"stopped; continue with: {resume_command(self.setup.run_dir)}", flush=True)
            return {**last, "stopped": [progress.epoch, progress.batch]}
        return last

    def out_of_time(self, done: int, longest: float) -> str | None:
        """ "budget" or "session" when the next epoch would end too late (and says so)."""
        epochs = self.setup.epochs
        if self.budget and not self.budget.allows_another(longest):
            print(
                f"time budget: stopping after epoch {done} of {epochs}, the next would not "
                "end in time",
                flush=True,
            )
            return "budget"
        if self.session and not self.session.allows_another(longest):
            print(
                f"session limit: paused after epoch {done} of {epochs} (the next would not end "
                f"in time); the checkpoint is saved. Next session: "
                f"{resume_command(self.setup.run_dir)}",
                flush=True,
            )
            return "session"
        return None

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


def train_epoch(setup: Setup, state, progress: Progress, rng, show: bool, stop=None) -> EpochRun:
    """The updates of epoch `progress.epoch` from batch `progress.batch` on; a set `stop`
    event ends it after the current step."""
    tc, spe, epoch = setup.config.train, setup.steps_per_epoch, progress.epoch
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
    with parallel.Prefetcher(batches, make) as feed:
        for index, batch in feed:
            state, out = setup.steps.train(state, batch, rng)
            step_losses.append(out["loss"])
            skipped += [out["skipped"]] if "skipped" in out else []
            if index % 10 == 0 and len(step_losses) > 1:  # one step late: already computed
                check_finite(float(step_losses[-2]), epoch, index, setup.manager)
                bar.set_postfix(loss=f"{float(step_losses[-2]):.4f}")
            bar.update(tc.batch_size)
            if stop is not None and stop.is_set() and index + 1 < spe:
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
