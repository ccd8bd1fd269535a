"""TrainState, the jitted train and eval steps, and the training loop with exact resume."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from segjax import (
    augment,
    checkpoint,
    data,
    losses,
    metrics,
    parallel,
    predict,
    pretrained,
    runs,
    sources,
    viz,
    writer,
)
from segjax.config import Config, TrainConfig, save_config
from segjax.errors import UserError
from segjax.models import create_model, total_stride


class TrainState(train_state.TrainState):
    batch_stats: Any
    plateau: Any  # optax reduce_on_plateau state; only moves with schedule "plateau"


# ---------------------------------------------------------------------------- optimisation


def create_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate per step (for "plateau" the base rate; the plateau scale is applied on top)."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule in ("constant", "plateau"):
        return optax.constant_schedule(config.lr)
    if config.schedule == "cosine":
        warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
        return optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, total, config.lr * 0.01)
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, config.lr)
    raise ValueError(f"unknown schedule {config.schedule!r}")


def create_plateau(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    return optax.contrib.reduce_on_plateau(
        factor=config.plateau_factor, patience=config.plateau_patience
    )


def create_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam or AdamW with the learning rate kept in the state (inject_hyperparams).

    The encoder's updates are scaled by `encoder_lr_mult` and zeroed for the first
    `freeze_encoder_epochs`: a multiplier indexed by the step, so nothing recompiles when the
    encoder thaws and Adam's moments keep accumulating meanwhile.
    """
    schedule = create_schedule(config, steps_per_epoch)
    learning_rate = config.lr if config.schedule == "plateau" else schedule
    if config.optimizer == "adam":
        base = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    elif config.optimizer == "adamw":
        base = optax.inject_hyperparams(optax.adamw)(
            learning_rate=learning_rate, weight_decay=config.weight_decay
        )
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    if config.encoder_lr_mult == 1.0 and config.freeze_encoder_epochs == 0:
        return base
    frozen = config.freeze_encoder_epochs * steps_per_epoch
    mult = config.encoder_lr_mult
    encoder = optax.scale_by_schedule(lambda count: jnp.where(count < frozen, 0.0, mult))
    labels = lambda params: {
        name: jax.tree.map(lambda _, n=name: "encoder" if n == "encoder" else "decoder", tree)
        for name, tree in params.items()
    }
    transforms = {"encoder": encoder, "decoder": optax.identity()}
    return optax.chain(base, optax.multi_transform(transforms, labels))


def _hyperparams(opt_state) -> dict:
    """The injected hyperparameters (first in the chain when the encoder has its own scale)."""
    return opt_state.hyperparams if hasattr(opt_state, "hyperparams") else opt_state[0].hyperparams


def _with_learning_rate(opt_state, rate: jax.Array):
    if hasattr(opt_state, "hyperparams"):
        return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": rate})
    return (_with_learning_rate(opt_state[0], rate), *opt_state[1:])


def learning_rate(state: TrainState) -> float:
    return float(_hyperparams(state.opt_state)["learning_rate"])


def step_plateau(state: TrainState, config: TrainConfig, val_loss: float) -> TrainState:
    """After a validation: feed the plateau tracker; under "plateau" set the rate it implies."""
    if config.schedule != "plateau":
        return state
    _, plateau = create_plateau(config).update(
        updates=jnp.zeros(()), state=state.plateau, value=jnp.asarray(val_loss)
    )
    rate = jnp.asarray(config.lr * plateau.scale, jnp.float32)
    return state.replace(plateau=plateau, opt_state=_with_learning_rate(state.opt_state, rate))


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
    tx = create_optimizer(config.train, steps_per_epoch)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        plateau=create_plateau(config.train).init(variables["params"]),
    )


# ---------------------------------------------------------------------------- steps


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, loss_fn, level, mean, std):
    """One update on an augmented batch; randomness from fold_in(rng, step): resumable."""
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
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


def create_steps(config: Config, mesh) -> Steps:
    """jit the steps with the batch sharded over the mesh and the state replicated."""
    loss_fn = losses.create_loss(config.train)
    norm = dict(mean=config.data.mean, std=config.data.std)
    rep, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
    train = functools.partial(train_step, loss_fn=loss_fn, level=config.train.aug, **norm)
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


def _preview(state, splits: sources.Splits, config: Config, mesh, run_dir: Path, epoch: int):
    """Every process predicts (the computation spans all devices); process 0 draws.

    Predicts with the function `scripts/submit.py` uses (compiled once per run), without TTA.
    """
    idx = splits.val[: config.train.preview_count]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    loaded = predict.Loaded(config, variables, epoch, run_dir)
    probs = predict.predict_all(
        loaded, splits.arrays.images[idx], config.train.eval_batch_size, tta=False, mesh=mesh
    )
    if jax.process_index() == 0:
        path = run_dir / f"previews/epoch_{epoch:03d}.png"
        viz.save_preview(splits.arrays.images[idx], splits.arrays.masks[idx], probs, path)


def fit(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at_epoch: int | None = None,
    progress: bool = True,
):
    """Train (or resume) into run_dir; return the last metrics row.

    A folder that holds checkpoints needs `resume` (continue) or `overwrite` (start again).
    `stop_at_epoch` ends this process's work after that epoch (the schedule still spans all
    `config.train.epochs`); a later `resume=True` call continues.

    Resuming from the latest checkpoint gives the same parameters and metrics rows as a run
    that never stopped: the state, the data position and the early-stopping record are restored,
    and randomness is a function of (seed, step) and the batch order of (seed, epoch).
    """
    run_dir = Path(run_dir)
    tc = config.train
    parallel.check_batch_size(tc.batch_size)
    parallel.check_batch_size(tc.eval_batch_size, "--eval-batch-size")
    check_image_size(config)
    lead = jax.process_index() == 0
    if lead:
        runs.claim(run_dir, resume=resume, overwrite=overwrite)
    mesh = parallel.create_mesh()
    config, splits = sources.load_splits(config)
    if not len(splits.val):
        raise data.DataError("the validation split is empty: raise --val-fraction")
    spe = data.steps_per_epoch(len(splits.train), tc.batch_size)
    steps = create_steps(config, mesh)
    rng = jax.random.key(tc.seed)
    state = jax.device_put(
        create_train_state(config, jax.random.fold_in(rng, 0), spe), parallel.replicated(mesh)
    )
    manager = checkpoint.create_manager(run_dir / "checkpoints")
    record = {"epoch": 0, "position": [0, 0], "best_dice": -1.0, "best_epoch": 0, "bad_epochs": 0}
    metrics_path = run_dir / "metrics.jsonl"
    rows: list[dict] = []
    if resume and manager.latest_step() is not None:
        state, meta, step, skipped = checkpoint.restore_newest_readable(manager, state)
        for reason in skipped:
            print(f"warning: {reason}; resuming from epoch {step}", flush=True)
        record = {k: meta[k] for k in record}
        rows = writer.trim_metrics(metrics_path, record["epoch"]) if lead else []
        _report_schedule_change(meta["config"]["train"], tc, int(state.step), spe)
    else:
        state, config = load_pretrained(state, config, mesh)
        if tc.init_from:  # a resumed fine-tune reads its weights from its own checkpoint
            state = _init_from(state, tc.init_from, mesh)
        if lead:
            metrics_path.unlink(missing_ok=True)
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.json")
    train_rng = jax.random.fold_in(rng, 1)
    last_row: dict[str, Any] = rows[-1] if rows else {}
    start_epoch, start_index = record["position"]
    try:
        for epoch in range(start_epoch, min(tc.epochs, stop_at_epoch or tc.epochs)):
            if tc.early_stop and record["bad_epochs"] >= tc.early_stop:
                break
            state, train_loss, seconds = _train_epoch(
                steps,
                state,
                splits,
                tc,
                epoch,
                start_index,
                mesh,
                train_rng,
                manager,
                progress and lead,
            )
            images, start_index = (spe - start_index) * tc.batch_size, 0
            val = evaluate(steps, state, splits.arrays, splits.val, tc.eval_batch_size, mesh)
            row = {
                "epoch": epoch + 1,
                "step": int(state.step),
                "lr": learning_rate(state),
                "train_loss": train_loss,
                **{f"val_{k}": v for k, v in val.items()},
            }
            state = step_plateau(state, tc, val["loss"])
            if val["mean_dice"] > record["best_dice"]:
                record.update(best_dice=val["mean_dice"], best_epoch=epoch + 1, bad_epochs=0)
            else:
                record["bad_epochs"] += 1
            record.update(epoch=epoch + 1, position=[epoch + 1, 0])
            meta = {**record, "metrics": row, "config": config.to_dict()}
            checkpoint.save(manager, epoch + 1, state, meta)
            draw = (epoch + 1) % tc.preview_every == 0 or epoch + 1 == tc.epochs
            if draw:
                _preview(state, splits, config, mesh, run_dir, epoch + 1)
            if lead:
                rows.append(row)
                _log_epoch(run_dir, rows, seconds, images, curves=draw)
                _report(row, record, seconds)
            last_row = row
    finally:
        checkpoint.seal(manager)
        manager.close()
    return last_row


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


def _report_schedule_change(saved: dict, tc: TrainConfig, step: int, spe: int) -> None:
    """One line when a resume changes the schedule's length (--epochs), so the rate moves."""
    if saved["epochs"] == tc.epochs or tc.schedule in ("constant", "plateau"):
        return
    old = create_schedule(dataclasses.replace(tc, epochs=saved["epochs"]), spe)(step)
    new = create_schedule(tc, spe)(step)
    print(
        f"resuming at step {step} with --epochs {tc.epochs} (was {saved['epochs']}): the "
        f"{tc.schedule} schedule now spans {tc.epochs} epochs, so the learning rate continues "
        f"at {float(new):.3g} instead of {float(old):.3g} and ends with epoch {tc.epochs}",
        flush=True,
    )


def _train_epoch(steps, state, splits, tc, epoch, start_index, mesh, rng, manager, show):
    """One epoch of updates from batch `start_index` on; returns (state, mean loss, seconds)."""
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
    with parallel.Prefetcher(batches, make) as feed:
        for index, batch in feed:
            state, out = steps.train(state, batch, rng)
            step_losses.append(out["loss"])
            if index % 10 == 0 and len(step_losses) > 1:  # one step late: already computed
                _check_finite(float(step_losses[-2]), epoch, index, manager)
                bar.set_postfix(loss=f"{float(step_losses[-2]):.4f}")
            bar.update(tc.batch_size)
    bar.close()
    loss = float(np.mean(jax.device_get(step_losses))) if step_losses else float("nan")
    _check_finite(loss, epoch, spe, manager)
    return state, loss, time.perf_counter() - tic


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
) -> dict:
    """Train (or resume) into run_dir, then tune threshold and post-processing on validation.

    Tuning waits until the run is over: its last epoch reached, or stopped early.
    """
    row = fit(
        config,
        run_dir,
        resume=resume,
        overwrite=overwrite,
        stop_at_epoch=stop_at_epoch,
        progress=progress,
    )
    paused = bool(stop_at_epoch) and stop_at_epoch < config.train.epochs
    if row and paused and row["epoch"] == stop_at_epoch:
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
