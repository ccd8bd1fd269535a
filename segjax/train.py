"""TrainState, the jitted train and eval steps, and the training loop with exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from tqdm.auto import tqdm

from segjax import (
    augment,
    checkpoint,
    data,
    losses,
    metrics,
    optim,
    parallel,
    predict,
    pretrained,
    runs,
    sources,
    viz,
    writer,
)
from segjax.config import Config, TrainConfig, load_config, save_config
from segjax.errors import UserError
from segjax.models import create_model, total_stride


class TrainState(train_state.TrainState):
    batch_stats: Any
    plateau: Any  # optax reduce_on_plateau state; only moves with schedule "plateau"
    # The schedule's length in steps, a value rather than a constant of the compiled step: a
    # time-budget plan or a resume with other --epochs changes it without a recompile.
    schedule_steps: jax.Array


def init_variables(config: Config, rng: jax.Array) -> dict:
    """The model's variables from the config and a key (under jit: faster)."""
    model = create_model(config.model)
    h, w = config.data.image_size
    sample = jnp.zeros((1, h, w, config.data.channels), jnp.float32)
    return jax.jit(lambda key: model.init({"params": key}, sample, train=False))(rng)


def create_train_state(config: Config, rng: jax.Array, steps_per_epoch: int) -> TrainState:
    """A fresh train state: initialised variables, optimizer state, plateau tracker."""
    model = create_model(config.model)
    variables = init_variables(config, rng)
    tx = optim.create_optimizer(config.train, steps_per_epoch)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        plateau=optim.create_plateau(config.train).init(variables["params"]),
        schedule_steps=jnp.asarray(config.train.epochs * steps_per_epoch, jnp.int32),
    )


# ---------------------------------------------------------------------------- steps


def train_step(
    state: TrainState, batch: dict, rng: jax.Array, *, loss_fn, level, mean, std, schedule
):
    """One update on an augmented batch; randomness from fold_in(rng, step): resumable."""
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    rate = schedule(state.step, state.schedule_steps, scale=state.plateau.scale)
    state = state.replace(opt_state=optim.with_learning_rate(state.opt_state, rate))
    images, masks = augment.prepare_batch(aug_rng, batch["image"], batch["mask"], level, mean, std)

    def compute_loss(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = state.apply_fn(
            variables, images, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"]
        )
        return loss_fn(logits, masks), updates

    (loss, updates), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    return state, {"loss": loss}


def eval_step(state: TrainState, batch: dict, *, loss_fn, mean, std) -> dict[str, jax.Array]:
    """Per-image loss and confusion counts on an unaugmented batch.

    The mask is `metrics.to_mask` of `predict.probabilities` at 0.5: the rule that evaluation and
    the submission apply, so validation Dice here equals `evaluate.py`'s at 0.5.
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = predict.logits(state.apply_fn, variables, batch["image"], mean, std)
    masks = batch["mask"].astype(jnp.float32)
    per_image = jax.vmap(lambda x, y: loss_fn(x[None], y[None]))(logits, masks)
    pred = metrics.to_mask(jax.nn.sigmoid(logits[..., 0]))  # as predict.probabilities does
    return {"loss": per_image, "counts": metrics.confusion_counts(pred, masks)}


class Steps(NamedTuple):
    train: Any  # (state, batch, rng) -> (state, metrics), state donated
    eval: Any  # (state, batch) -> per-image loss and counts


def create_steps(config: Config, mesh, steps_per_epoch: int) -> Steps:
    """jit the steps with the batch sharded over the mesh and the state replicated."""
    loss_fn = losses.create_loss(config.train)
    norm = dict(mean=config.data.mean, std=config.data.std)
    rep, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
    schedule = functools.partial(
        optim.learning_rate_at, config.train, steps_per_epoch=steps_per_epoch
    )
    train = functools.partial(
        train_step, loss_fn=loss_fn, level=config.train.aug, schedule=schedule, **norm
    )
    evaluate = functools.partial(eval_step, loss_fn=loss_fn, **norm)
    return Steps(
        jax.jit(train, in_shardings=(rep, shard, rep), out_shardings=(rep, rep), donate_argnums=0),
        jax.jit(evaluate, in_shardings=(rep, shard), out_shardings=shard),
    )


# ---------------------------------------------------------------------------- data


def _labelled(arrays: data.Arrays) -> dict[str, np.ndarray]:
    return {"image": arrays.images, "mask": arrays.masks}


def evaluate(steps: Steps, state, arrays: data.Arrays, indices, batch_size: int, mesh) -> dict:
    """Mean loss and Dice, IoU, ... over `indices` (padding never scored).

    Batches are prepared ahead in a thread; results stay on the device until the end.
    """
    make = lambda b: (b[1], parallel.gather_batch(_labelled(arrays), indices[b[0]], mesh))
    outs = []
    with parallel.Prefetcher(data.eval_batches(len(indices), batch_size), make) as feed:
        for valid, batch in feed:
            outs.append((valid, steps.eval(state, batch)))
    losses_ = [parallel.gather(out["loss"])[valid] for valid, out in outs]
    counts = [parallel.gather(out["counts"])[valid] for valid, out in outs]
    summary = metrics.summarize(np.concatenate(counts))
    return {"loss": float(np.mean(np.concatenate(losses_))), **summary}


# ---------------------------------------------------------------------------- the loop


def _preview(state, splits: sources.Splits, config: Config, mesh, run_dir: Path | None, epoch):
    """Every process predicts (the computation spans all devices); process 0 draws (unless
    `run_dir` is None: a timing run).

    Predicts with the function `scripts/submit.py` uses (compiled once per run), without TTA.
    """
    idx = splits.val[: config.train.preview_count]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    loaded = predict.Loaded(config, variables, epoch, run_dir)
    probs = predict.predict_all(
        loaded, splits.arrays.images[idx], config.train.eval_batch_size, tta=False, mesh=mesh
    )
    if jax.process_index() == 0 and run_dir is not None:
        path = run_dir / f"previews/epoch_{epoch:03d}.png"
        viz.save_preview(splits.arrays.images[idx], splits.arrays.masks[idx], probs, path)


class Setup(NamedTuple):
    """What one `fit` call works with, besides the train state."""

    config: Config  # with the normalisation statistics (and a planned epoch count) filled in
    run_dir: Path
    splits: sources.Splits
    steps_per_epoch: int
    steps: Steps
    mesh: Any
    manager: Any
    lead: bool  # process 0: writes the run folder's files


def fit(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at_epoch: int | None = None,
    progress: bool = True,
    time_budget: float | None = None,
    started: float | None = None,
    clock=time.time,
) -> dict:
    """Train (or resume) into run_dir; return the last metrics row.

    A folder that holds checkpoints needs `resume` (continue) or `overwrite` (start again).
    `stop_at_epoch` ends this process's work after that epoch (the schedule still spans all
    `config.train.epochs`); a later `resume=True` call continues. `time_budget` (minutes,
    counted from `started`, default now, on `clock`) plans the number of epochs so that
    training and tuning end within it (see `plan_epochs`). SIGINT or SIGTERM finish the
    current step, save a checkpoint with the mid-epoch data position and return; the row
    then has "stopped": [epoch, batch].

    Resuming from the latest checkpoint gives the same parameters and metrics rows as a run
    that never stopped: the state, the data position and the early-stopping record are restored,
    and randomness is a function of (seed, step) and the batch order of (seed, epoch).
    """
    started = clock() if started is None else started
    setup, state = _setup(config, Path(run_dir), resume=resume, overwrite=overwrite)
    setup, state, record, rows, partial = _start(setup, state, resume)
    setup, budget = _plan(setup, state, record, time_budget, started, clock)
    steps = jnp.asarray(setup.config.train.epochs * setup.steps_per_epoch, jnp.int32)
    # Placed as the rest of the state: a leaf on another sharding would retrace the step.
    state = state.replace(schedule_steps=jax.device_put(steps, state.schedule_steps.sharding))
    if setup.lead:
        save_config(setup.config, setup.run_dir / "config.json")
    try:
        with stop_on_signals() as stop:
            return _epochs(
                setup, state, record, rows, partial, stop_at_epoch, progress, stop, budget
            )
    finally:
        checkpoint.seal(setup.manager)
        setup.manager.close()


def with_precision(config: Config) -> Config:
    """`train.precision` "bf16" computes the model in bfloat16 (parameters stay float32)."""
    if config.train.precision == "bf16" and config.model.dtype == "float32":
        return dataclasses.replace(
            config, model=dataclasses.replace(config.model, dtype="bfloat16")
        )
    return config


def _setup(config: Config, run_dir: Path, *, resume: bool, overwrite: bool):
    """Checks, the run folder, data, the jitted steps and a fresh state."""
    config = with_precision(config)
    tc = config.train
    parallel.check_batch_size(tc.batch_size)
    parallel.check_batch_size(tc.eval_batch_size, "--eval-batch-size")
    check_image_size(config)
    lead = jax.process_index() == 0
    if lead:
        runs.claim(run_dir, resume=resume, overwrite=overwrite)
        if not resume:
            pretrained.weights_file(config.model.encoder, config.model.encoder_weights)
    mesh = parallel.create_mesh()
    config, splits = sources.load_splits(config)
    if not len(splits.val):
        raise data.DataError("the validation split is empty: raise --val-fraction")
    spe = data.steps_per_epoch(len(splits.train), tc.batch_size)
    state = jax.device_put(
        create_train_state(config, jax.random.fold_in(jax.random.key(tc.seed), 0), spe),
        parallel.replicated(mesh),
    )
    manager = checkpoint.create_manager(runs.writable(run_dir) / "checkpoints")
    steps = create_steps(config, mesh, spe)
    return Setup(config, run_dir, splits, spe, steps, mesh, manager, lead), state


def _start(setup: Setup, state: TrainState, resume: bool):
    """A fresh start (pretrained or --init-from weights), or the newest readable checkpoint.

    Returns (setup, state, record, metrics rows so far, the step of a mid-epoch checkpoint).
    """
    record = {"epoch": 0, "position": [0, 0], "best_dice": -1.0, "best_epoch": 0, "bad_epochs": 0}
    metrics_path = setup.run_dir / "metrics.jsonl"
    if resume and setup.manager.latest_step() is not None:
        state, meta, step, skipped = checkpoint.restore_newest_readable(setup.manager, state)
        for reason in skipped:
            print(f"warning: {reason}; resuming from epoch {step}", flush=True)
        record = {k: meta[k] for k in record}
        if meta.get("partial"):
            record["partial_losses"] = meta["partial_losses"]
        done = record["epoch"]
        rows = writer.trim_metrics(metrics_path, done) if setup.lead else []
        _report_schedule_change(meta["config"]["train"], setup.config.train, state, setup)
        return setup, state, record, rows, step if meta.get("partial") else None
    state, config = load_pretrained(state, setup.config, setup.mesh)
    if config.train.init_from:
        state = _init_from(state, config.train.init_from, setup.mesh)
    if setup.lead:
        metrics_path.unlink(missing_ok=True)
    return setup._replace(config=config), state, record, [], None


class Budget(NamedTuple):
    """A time budget: the deadline on `clock`, one epoch's estimate, the tuning reserve."""

    deadline: float
    epoch_s: float
    reserve_s: float
    clock: Any


def plan_epochs(remaining_s: float, epoch_s: float, reserve_s: float, done: int, most: int):
    """How many epochs (those done included) fit: what is left of the budget, less the
    reserve for tuning, in whole epochs; at least one more, at most `most` (--epochs)."""
    fitting = int(max(remaining_s - reserve_s, 0.0) // max(epoch_s, 1e-9))
    return max(done + 1, min(most, done + fitting))


def _plan(setup: Setup, state, record: dict, minutes: float | None, started: float, clock):
    """With a budget: time a few steps, a validation and a preview on a throwaway copy of the
    state (compiling what training uses anyway), fix the epoch count, broadcast it."""
    if not minutes:
        return setup, None
    tc = setup.config.train
    epoch_s, val_s = _measure(setup, state, clock)
    n_val = len(setup.splits.val)
    reserve_s = 10.0 + 3.0 * val_s + 0.05 * n_val  # tuning: two predictions and a search
    deadline = started + 60.0 * minutes
    epochs = plan_epochs(deadline - clock(), epoch_s, reserve_s, record["epoch"], tc.epochs)
    if jax.process_count() > 1:  # every process trains the plan of process 0
        from jax.experimental import multihost_utils

        epochs = int(multihost_utils.broadcast_one_to_all(np.int32(epochs)))
    print(
        f"time budget {minutes:.3g} min: {epochs} epochs planned ({epoch_s:.1f} s an epoch, "
        f"{reserve_s:.0f} s kept for tuning); the schedule spans {epochs} epochs",
        flush=True,
    )
    config = dataclasses.replace(setup.config, train=dataclasses.replace(tc, epochs=epochs))
    return setup._replace(config=config), Budget(deadline, epoch_s, reserve_s, clock)


def _measure(setup: Setup, state, clock, timed_steps: int = 5) -> tuple[float, float]:
    """(seconds an epoch, seconds a validation), compile times excluded."""
    probe = jax.tree.map(jnp.copy, state)  # the train step donates its state
    idx = setup.splits.train[: setup.config.train.batch_size]
    batch = parallel.gather_batch(_labelled(setup.splits.arrays), idx, setup.mesh)
    key = jax.random.key(0)
    for _ in range(2):  # compiles, then warms up
        probe, out = setup.steps.train(probe, batch, key)
    jax.block_until_ready(out)
    tic = clock()
    for _ in range(timed_steps):
        probe, out = setup.steps.train(probe, batch, key)
    jax.block_until_ready(out)
    step_s = (clock() - tic) / timed_steps
    val = lambda: evaluate(
        setup.steps,
        probe,
        setup.splits.arrays,
        setup.splits.val,
        setup.config.train.eval_batch_size,
        setup.mesh,
    )
    val()  # compiles
    tic = clock()
    val()
    val_s = clock() - tic
    _preview(probe, setup.splits, setup.config, setup.mesh, None, 0)  # compiles predict
    with tempfile.TemporaryDirectory() as scratch:  # an epoch draws its preview and curves
        tic = clock()
        _preview(probe, setup.splits, setup.config, setup.mesh, Path(scratch), 0)
        if setup.lead:
            keys = ("train_loss", "val_loss", "val_mean_dice", "val_global_dice")
            rows = [{"epoch": e, **dict.fromkeys(keys, 0.5)} for e in (1, 2)]
            viz.save_curves(rows, Path(scratch) / "curves.png")
        draw_s = clock() - tic
    epoch_s = setup.steps_per_epoch * step_s + val_s + draw_s + 1.0  # + a checkpoint
    return epoch_s, val_s


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


def _epochs(setup: Setup, state, record, rows, partial, stop_at_epoch, progress, stop, budget):
    """The epochs of a run: train, validate, checkpoint, draw, log; a stop or the budget ends
    them early. Returns the last metrics row (with "stopped" or "budget" when cut short)."""
    config, spe = setup.config, setup.steps_per_epoch
    tc = config.train
    train_rng = jax.random.fold_in(jax.random.key(tc.seed), 1)
    last_row: dict[str, Any] = rows[-1] if rows else {}
    start_epoch, start_index = record["position"]
    carried = np.asarray(record.pop("partial_losses", []), np.float32)  # a stopped epoch's
    for epoch in range(start_epoch, min(tc.epochs, stop_at_epoch or tc.epochs)):
        if tc.early_stop and record["bad_epochs"] >= tc.early_stop:
            break
        if stop.is_set():  # between epochs: the last checkpoint already has this position
            break
        tic = budget.clock() if budget else 0.0
        state, losses, seconds, index = _train_epoch(
            setup.steps,
            state,
            setup.splits,
            tc,
            epoch,
            start_index,
            setup.mesh,
            train_rng,
            setup.manager,
            progress and setup.lead,
            stop,
        )
        losses, carried = np.concatenate([carried, losses]), carried[:0]
        if index < spe:  # stopped by a signal mid-epoch
            return _save_stop(setup, state, record, epoch, index, partial, last_row, losses)
        train_loss = float(np.mean(losses))
        images, start_index = (spe - start_index) * tc.batch_size, 0
        state, last_row = _close_epoch(
            setup, state, record, rows, epoch, train_loss, seconds, images, partial
        )
        partial = None
        if budget and epoch + 1 < tc.epochs:
            spent = budget.clock() - tic
            if budget.clock() + max(budget.epoch_s, spent) + budget.reserve_s > budget.deadline:
                print(
                    f"time budget: stopping after epoch {epoch + 1} of {tc.epochs}, the "
                    "next would not end in time",
                    flush=True,
                )
                return {**last_row, "budget": True}
    if stop.is_set():
        print(
            f"stopped; continue with: python scripts/train.py --resume --run-dir {setup.run_dir}",
            flush=True,
        )
        return {**last_row, "stopped": list(record["position"])}
    return last_row


def _close_epoch(setup, state, record, rows, epoch, train_loss, seconds, images, partial):
    """Validate, update the record, checkpoint, draw and log one finished epoch."""
    config, tc = setup.config, setup.config.train
    val = evaluate(
        setup.steps, state, setup.splits.arrays, setup.splits.val, tc.eval_batch_size, setup.mesh
    )
    row = {
        "epoch": epoch + 1,
        "step": int(state.step),
        "lr": optim.learning_rate(state),
        "train_loss": train_loss,
        **{f"val_{k}": v for k, v in val.items()},
    }
    state = optim.step_plateau(state, tc, val["loss"])
    if val["mean_dice"] > record["best_dice"]:
        record.update(best_dice=val["mean_dice"], best_epoch=epoch + 1, bad_epochs=0)
    else:
        record["bad_epochs"] += 1
    record.update(epoch=epoch + 1, position=[epoch + 1, 0])
    meta = {**record, "metrics": row, "config": config.to_dict()}
    checkpoint.save(setup.manager, epoch + 1, state, meta, replace=partial == epoch + 1)
    draw = (epoch + 1) % tc.preview_every == 0 or epoch + 1 == tc.epochs
    if draw:
        _preview(state, setup.splits, config, setup.mesh, setup.run_dir, epoch + 1)
    if setup.lead:
        rows.append(row)
        _log_epoch(setup.run_dir, rows, seconds, images, curves=draw)
        _report(row, record, seconds)
    return state, row


def _save_stop(setup: Setup, state, record, epoch, index, partial, last_row, losses) -> dict:
    """A signal stopped the loop after batch `index` of `epoch`: checkpoint that position and
    the epoch's losses so far (so that the resumed epoch's mean loss is the same)."""
    record = {**record, "position": [epoch, index], "partial_losses": losses.tolist()}
    meta = {
        **record,
        "partial": True,
        "metrics": {"val_mean_dice": -1.0},
        "config": setup.config.to_dict(),
    }
    checkpoint.save(setup.manager, epoch + 1, state, meta, replace=partial == epoch + 1)
    checkpoint.seal(setup.manager)
    print(
        f"stopped in epoch {epoch + 1} after batch {index} of {setup.steps_per_epoch}; the "
        f"checkpoint is saved. Continue with: python scripts/train.py --resume --run-dir "
        f"{setup.run_dir}",
        flush=True,
    )
    return {**last_row, "stopped": [epoch, index]}


def check_image_size(config: Config) -> None:
    """The training size must be at least the model's total stride on each side."""
    stride = total_stride(config.model)
    h, w = config.data.image_size
    if min(h, w) < stride:
        raise UserError(
            f"--image-size {h}x{w} is smaller than the model's total stride {stride} "
            f"(2^depth{', 32 for a pretrained encoder' if stride == 32 else ''}): use at least "
            f"{stride}x{stride}, or a smaller --depth"
        )


def _report_schedule_change(saved: dict, tc: TrainConfig, state: TrainState, setup: Setup):
    """One line when a resume changes the schedule's length (--epochs), so the rate moves."""
    if saved["epochs"] == tc.epochs or tc.schedule in ("constant", "plateau"):
        return
    step, spe = int(state.step), setup.steps_per_epoch
    old = optim.learning_rate_at(tc, step, saved["epochs"] * spe, spe)
    new = optim.learning_rate_at(tc, step, tc.epochs * spe, spe)
    print(
        f"resuming at step {step} with --epochs {tc.epochs} (was {saved['epochs']}): the "
        f"{tc.schedule} schedule now spans {tc.epochs} epochs, so the learning rate continues "
        f"at {float(new):.3g} instead of {float(old):.3g} and ends with epoch {tc.epochs}",
        flush=True,
    )


def _train_epoch(steps, state, splits, tc, epoch, start_index, mesh, rng, manager, show, stop=None):
    """One epoch of updates from batch `start_index` on.

    Returns (state, each step's loss, seconds, the position reached): the position is the
    epoch's batch count unless `stop` (an event) was set, which ends the epoch after the
    current step.
    """
    spe = data.steps_per_epoch(len(splits.train), tc.batch_size)
    bar = tqdm(
        total=spe * tc.batch_size,
        initial=start_index * tc.batch_size,
        desc=f"epoch {epoch + 1}/{tc.epochs}",
        unit="img",
        disable=not show,
        leave=False,
        dynamic_ncols=True,
    )
    step_losses = []
    tic = time.perf_counter()
    batches = data.train_batches(len(splits.train), tc.batch_size, tc.seed, epoch, start_index)
    make = lambda b: (
        b[0],
        parallel.gather_batch(_labelled(splits.arrays), splits.train[b[1]], mesh),
    )
    position = spe
    with parallel.Prefetcher(batches, make) as feed:
        for index, batch in feed:
            state, out = steps.train(state, batch, rng)
            step_losses.append(out["loss"])
            if index % 10 == 0 and len(step_losses) > 1:  # one step late: already computed
                _check_finite(float(step_losses[-2]), epoch, index, manager)
                bar.set_postfix(loss=f"{float(step_losses[-2]):.4f}")
            bar.update(tc.batch_size)
            if stop is not None and stop.is_set() and index + 1 < spe:
                position = index + 1
                break
    bar.close()
    losses = np.asarray(jax.device_get(step_losses), np.float32).reshape(-1)
    _check_finite(float(np.mean(losses)) if len(losses) else 0.0, epoch, spe, manager)
    return state, losses, time.perf_counter() - tic, position


def _log_epoch(run_dir: Path, rows: list[dict], seconds: float, images: int, curves: bool):
    """metrics.jsonl (deterministic), timing.jsonl (clock), curves.png: process 0 only."""
    writer.append_metrics(run_dir / "metrics.jsonl", rows[-1])
    timing = {
        "epoch": rows[-1]["epoch"],
        "train_seconds": seconds,
        "train_img_per_s": images / max(seconds, 1e-9),
    }
    writer.append_metrics(run_dir / "timing.jsonl", timing)
    if curves:
        viz.save_curves(rows, run_dir / "curves.png")


def load_pretrained(state: TrainState, config: Config, mesh) -> tuple[TrainState, Config]:
    """Put the pretrained encoder's weights into a fresh state; record their source."""
    m = config.model
    if m.encoder == "scratch" or m.encoder_weights == "none":
        return state, config
    template = {
        "params": state.params["encoder"],
        "batch_stats": state.batch_stats["encoder"],
    }
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    loaded, source = pretrained.load_encoder(m.encoder, m.encoder_weights, template)
    loaded = jax.device_put(loaded, parallel.replicated(mesh))
    state = state.replace(
        params={**state.params, "encoder": loaded["params"]},
        batch_stats={**state.batch_stats, "encoder": loaded["batch_stats"]},
    )
    return state, dataclasses.replace(config, model=dataclasses.replace(m, encoder_source=source))


def _init_from(state: TrainState, run_dir: str, mesh) -> TrainState:
    """Fine-tuning: this run's weights and BatchNorm statistics from another run's best epoch."""
    source = predict.load_run(run_dir, "best", mesh)
    shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
    if shapes(source.variables["params"]) != shapes(state.params):
        raise UserError(f"--init-from {run_dir}: its model differs from this run's (arch/options)")
    return state.replace(
        params=source.variables["params"], batch_stats=source.variables["batch_stats"]
    )


def _check_finite(loss: float, epoch: int, index: int, manager) -> None:
    if not math.isfinite(loss):
        manager.wait_until_finished()
        latest = manager.latest_step()
        kept = (
            f"the last good checkpoint is epoch {latest}" if latest else "no checkpoint was saved"
        )
        raise FloatingPointError(
            f"non-finite training loss ({loss}) in epoch {epoch + 1}, step {index}; {kept} in "
            f"{manager.directory}. Lower --lr, or try --precision fp32."
        )


def _report(row: dict, record: dict, seconds: float) -> None:
    best = " (best)" if record["best_epoch"] == row["epoch"] else ""
    print(
        f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
        f"val mean Dice {row['val_mean_dice']:.4f}{best}  mean IoU {row['val_mean_iou']:.4f}  "
        f"lr {row['lr']:.2e}  {seconds:.1f}s",
        flush=True,
    )


def train_and_tune(
    config: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at_epoch: int | None = None,
    tune: bool = True,
    progress: bool = True,
    time_budget: float | None = None,
    started: float | None = None,
) -> dict:
    """Train (or resume) into run_dir, then tune threshold and post-processing on validation.

    Tuning waits until the run is over: its last epoch reached, stopped early, or the time
    budget spent; a run stopped by a signal or by `stop_at_epoch` is tuned when it ends.
    """
    row = fit(
        config,
        run_dir,
        resume=resume,
        overwrite=overwrite,
        stop_at_epoch=stop_at_epoch,
        progress=progress,
        time_budget=time_budget,
        started=started,
    )
    paused = (
        bool(stop_at_epoch) and stop_at_epoch < load_config(run_dir / "config.json").train.epochs
    )
    if row.get("stopped"):
        pass  # fit said how to continue
    elif row and paused and row["epoch"] == stop_at_epoch:
        print(f"stopped after epoch {stop_at_epoch}; continue with --resume", flush=True)
    elif tune:
        from segjax import tune as tuning

        tuned = tuning.tune_run(run_dir)
        pp = tuned["postprocess"]
        print(
            f"tuned on {tuned['val_images']} validation images (checkpoint {tuned['checkpoint']}): "
            f"threshold {pp['threshold']}, opening {pp['open_radius']}, min area "
            f"{pp['min_area']}, fill holes {pp['fill_holes']}, TTA {tuned['tta']}; mean Dice "
            f"{tuned['dice_at_0.5']:.4f} at 0.5 -> {tuned['dice_tuned']:.4f}",
            flush=True,
        )
    return row
