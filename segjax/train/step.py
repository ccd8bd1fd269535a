"""TrainState and the jitted steps: one update on an augmented batch, one evaluation batch."""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax.training import train_state

from segjax import losses, metrics, parallel
from segjax.compat import named_partial
from segjax.config import Config, RunFacts
from segjax.data import augment
from segjax.models import apply
from segjax.models.builder import create_model, frozen_encoder_modules
from segjax.train import optim, precision


class TrainState(train_state.TrainState):
    batch_stats: Any
    plateau: Any  # optax reduce_on_plateau state; only moves with schedule "plateau"
    # The schedule's length in steps, a value rather than a constant of the compiled step: a
    # time-budget plan or a resume with other --epochs changes it without a recompile.
    schedule_steps: jax.Array
    # float16's dynamic loss scale (precision.loss_scale), checkpointed with the rest; None in
    # the other precisions.
    dynamic_scale: Any = None
    # --ema: moving averages of params and batch_stats ({"params", "batch_stats"}); None off.
    ema: Any = None

    @property
    def eval_variables(self) -> dict:
        """What validation and prediction use: the moving average when there is one."""
        if self.ema is not None:
            return self.ema
        return {"params": self.params, "batch_stats": self.batch_stats}


def init_variables(config: Config, rng: jax.Array, dtype: str = "float32") -> dict:
    """The model's variables from the config and a key (under jit: faster)."""
    model = create_model(config.model, dtype)
    h, w = config.data.image_size
    sample = jnp.zeros((1, h, w, config.data.channels), jnp.float32)
    return jax.jit(lambda key: model.init({"params": key}, sample, train=False))(rng)


class StateParts(NamedTuple):
    """A train state's static parts. Two states compile to the same steps only when they
    share these very objects (a pytree's metadata compares them by identity)."""

    apply_fn: Any
    tx: Any


def state_parts(config: Config, steps_per_epoch: int, facts: RunFacts = RunFacts()):
    model = create_model(config.model, facts.dtype)
    frozen = frozen_encoder_modules(config.model)
    return StateParts(model.apply, optim.create_optimizer(config.train, steps_per_epoch, frozen))


def create_train_state(
    config: Config,
    rng: jax.Array,
    steps_per_epoch: int,
    facts: RunFacts = RunFacts(),
    parts: StateParts | None = None,
) -> TrainState:
    """A fresh train state: initialised variables, optimizer state, plateau tracker."""
    parts = parts or state_parts(config, steps_per_epoch, facts)
    variables = init_variables(config, rng, facts.dtype)
    epochs = facts.epochs or config.train.epochs
    return TrainState.create(
        apply_fn=parts.apply_fn,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=parts.tx,
        plateau=optim.create_plateau(config.train).init(variables["params"]),
        schedule_steps=jnp.asarray(epochs * steps_per_epoch, jnp.int32),
        dynamic_scale=precision.loss_scale(facts.dtype),
        # copies: the step donates its state, and a buffer cannot be donated twice
        ema=jax.tree.map(jnp.copy, _variables(variables)) if config.train.ema else None,
    )


def _variables(variables: dict) -> dict:
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def update_ema(state: TrainState, decay: float) -> TrainState:
    """Move the averages `1 - decay` of the way to the current weights and statistics."""
    if state.ema is None:
        return state
    current = {"params": state.params, "batch_stats": state.batch_stats}
    ema = jax.tree.map(lambda e, x: decay * e + (1.0 - decay) * x, state.ema, current)
    return state.replace(ema=ema)


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    loss_fn,
    level,
    mean,
    std,
    schedule,
    ema,
    size: tuple[int, int] | None = None,
):
    """One update on an augmented batch (resized to `size`, progressive resizing's smaller
    phase, when given); randomness from fold_in(rng, step): resumable."""
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    rate = schedule(state.step, state.schedule_steps, scale=state.plateau.scale)
    state = state.replace(opt_state=optim.with_learning_rate(state.opt_state, rate))
    images, masks = augment.prepare_batch(aug_rng, batch["image"], batch["mask"], level, mean, std)
    if size is not None:
        images, masks = augment.resize_batch(images, masks, size)

    def compute_loss(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = state.apply_fn(
            variables, images, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"]
        )
        return loss_fn(logits, masks), updates

    if state.dynamic_scale is None:
        (loss, updates), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
        return update_ema(state, ema), {"loss": loss}
    scaled = state.dynamic_scale.value_and_grad(compute_loss, has_aux=True)
    dynamic_scale, finite, (loss, updates), grads = scaled(state.params)
    state = _apply_if_finite(state, grads, updates, finite, dynamic_scale)
    return update_ema(state, ema), {
        "loss": loss,
        "skipped": jnp.logical_not(finite).astype(jnp.int32),
    }


def _apply_if_finite(state: TrainState, grads, updates, finite, dynamic_scale) -> TrainState:
    """float16: the update where the gradient is finite; elsewhere the state stays as it was
    (the step still counts: its batch was used), and the scale has backed off."""
    stepped = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    return stepped.replace(
        params=keep(stepped.params, state.params),
        opt_state=keep(stepped.opt_state, state.opt_state),
        batch_stats=keep(stepped.batch_stats, state.batch_stats),
        dynamic_scale=dynamic_scale,
    )


def eval_step(state: TrainState, batch: dict, *, loss_fn, mean, std) -> dict[str, jax.Array]:
    """Per-image loss, confusion counts and probabilities [B, H, W] on an unaugmented batch.

    The mask is `metrics.to_mask` of `apply.probabilities` at 0.5: the rule that evaluation and
    the submission apply, so validation Dice here equals `segjax evaluate`'s at 0.5 at the
    training size.
    """
    logits = apply.logits(state.apply_fn, state.eval_variables, batch["image"], mean, std)
    masks = batch["mask"].astype(jnp.float32)
    per_image = jax.vmap(lambda x, y: loss_fn(x[None], y[None]))(logits, masks)
    probs = jax.nn.sigmoid(logits[..., 0])
    counts = metrics.confusion_counts(metrics.to_mask(probs), masks)
    return {"loss": per_image, "counts": counts, "probs": probs}


class Steps(NamedTuple):
    train: Any  # (state, batch, rng) -> (state, metrics), state donated
    eval: Any  # (state, batch) -> per-image loss, counts and probabilities
    train_small: Any = None  # the train step at --small-size (None: no progressive resizing)

    def train_at(self, small: bool):
        """The train step of an epoch: at --small-size when `small` (and there is one)."""
        return self.train_small if small and self.train_small is not None else self.train


def create_steps(config: Config, facts: RunFacts, mesh, steps_per_epoch: int) -> Steps:
    """jit the steps with the batch sharded over the mesh and the state replicated."""
    loss_fn = losses.create_loss(config.train)
    norm = dict(mean=facts.mean, std=facts.std)
    rep, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
    schedule = functools.partial(
        optim.learning_rate_at, config.train, steps_per_epoch=steps_per_epoch
    )
    train = named_partial(
        train_step,
        loss_fn=loss_fn,
        level=config.train.aug,
        schedule=schedule,
        ema=config.train.ema,
        **norm,
    )
    evaluate = named_partial(eval_step, loss_fn=loss_fn, **norm)
    jit_train = lambda f: jax.jit(
        f, in_shardings=(rep, shard, rep), out_shardings=(rep, rep), donate_argnums=0
    )
    small = config.train.small_size
    return Steps(
        jit_train(train),
        jax.jit(evaluate, in_shardings=(rep, shard), out_shardings=shard),
        jit_train(named_partial(train, size=tuple(small))) if small else None,
    )


def compile_ahead(steps: Steps, state_shapes, config: Config, mesh, pool) -> dict:
    """Compile the steps in `pool`'s threads while the caller does other work (the model's
    init, the pretrained weights): XLA compiles several programs at once, and a jitted
    function reuses what `lower(...).compile()` made for the same shapes. Returns futures by
    step name whose `.result()` is the seconds that compilation took (or raises its error)."""
    tc, (h, w) = config.train, config.data.image_size
    rep, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep, weak_type=x.weak_type),
        state_shapes,
    )
    key = jax.random.key(0)

    def batch(size: int) -> dict:
        shape = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.uint8, sharding=shard)
        return {"image": shape(size, h, w, config.data.channels), "mask": shape(size, h, w)}

    def timed(fn, *args) -> float:
        if not hasattr(fn, "lower"):  # not a jitted function (a wrapper): nothing to compile
            return 0.0
        tic = time.perf_counter()
        fn.lower(*args).compile()
        return time.perf_counter() - tic

    jobs = {
        "train": (steps.train, state, batch(tc.batch_size), key),
        "eval": (steps.eval, state, batch(tc.eval_batch_size)),
    }
    if steps.train_small is not None:
        jobs["train_small"] = (steps.train_small, state, batch(tc.batch_size), key)
    return {name: pool.submit(timed, *job) for name, job in jobs.items()}
