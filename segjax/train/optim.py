"""The optimizer and the learning-rate schedules: Adam(W), the encoder's own rate, plateau.

The rate is a value in the optimizer state, set by each train step from `learning_rate_at`
with the schedule's length taken from the train state: a plan or a resume that changes the
length changes no compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from segjax import parallel
from segjax.config import TrainConfig


def _cosine(start, end, fraction):
    """From `start` to `end` along half a cosine as `fraction` goes 0 -> 1."""
    return end + (start - end) / 2 * (jnp.cos(jnp.pi * fraction) + 1)


def learning_rate_at(config: TrainConfig, step, total, steps_per_epoch: int, scale=1.0):
    """The rate at `step` of a schedule `total` steps long (traced values welcome).

    cosine: linear warm-up from 0, then cosine to 1% of --lr (optax's warmup_cosine_decay);
    onecycle: --lr/25 up to --lr over 30% of the steps, then down to --lr/25e4 (optax's
    cosine_onecycle); plateau: --lr times the plateau tracker's `scale`.
    """
    lr = config.lr
    step = jnp.asarray(step, jnp.float32)
    total = jnp.maximum(jnp.asarray(total, jnp.float32), 1.0)
    if config.schedule == "constant":
        return jnp.asarray(lr, jnp.float32)
    if config.schedule == "plateau":
        return jnp.asarray(lr * scale, jnp.float32)
    if config.schedule == "cosine":
        warmup = jnp.minimum(float(int(config.warmup_epochs * steps_per_epoch)), total - 1.0)
        rising = lr * step / jnp.maximum(warmup, 1.0)
        fraction = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
        return jnp.where(step < warmup, rising, _cosine(lr, lr * 0.01, fraction))
    if config.schedule == "onecycle":
        peak_at = jnp.floor(0.3 * total)
        up = _cosine(lr / 25, lr, jnp.clip(step / jnp.maximum(peak_at, 1.0), 0.0, 1.0))
        down_fraction = jnp.clip((step - peak_at) / jnp.maximum(total - peak_at, 1.0), 0.0, 1.0)
        return jnp.where(step < peak_at, up, _cosine(lr, lr / 25e4, down_fraction))
    raise ValueError(f"unknown schedule {config.schedule!r}")


def create_plateau(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    return optax.contrib.reduce_on_plateau(
        factor=config.plateau_factor, patience=config.plateau_patience
    )


def _frozen_kept(base, frozen_modules: set[str]):
    """`base`, except that the encoder's frozen submodules never move (AdamW's weight decay
    would move them even without a gradient)."""
    if not frozen_modules:
        return base

    def labels(params):
        def label(path, _):
            names = [getattr(k, "key", None) for k in path]
            frozen = names[:1] == ["encoder"] and len(names) > 1 and names[1] in frozen_modules
            return "frozen" if frozen else "trained"

        return jax.tree_util.tree_map_with_path(label, params)

    keep = optax.multi_transform(
        {"trained": optax.identity(), "frozen": optax.set_to_zero()}, labels
    )
    return optax.chain(base, keep)


def create_optimizer(
    config: TrainConfig, steps_per_epoch: int, frozen_modules: set[str] = frozenset()
) -> optax.GradientTransformation:
    """Adam or AdamW with the learning rate a value in the state (inject_hyperparams).

    The encoder's updates are scaled by `encoder_lr_mult` and zeroed for the first
    `freeze_encoder_epochs`: a multiplier indexed by the step, so nothing recompiles when the
    encoder thaws and Adam's moments keep accumulating meanwhile.
    """
    # The rate is a value in the state, set by each step from the schedule (`train_step`).
    if config.optimizer == "adam":
        base = optax.inject_hyperparams(optax.adam)(learning_rate=config.lr)
    elif config.optimizer == "adamw":
        base = optax.inject_hyperparams(optax.adamw)(
            learning_rate=config.lr, weight_decay=config.weight_decay
        )
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    base = _frozen_kept(base, frozen_modules)
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


def hyperparams(opt_state) -> dict:
    """The injected hyperparameters (first in the chain when the encoder has its own scale)."""
    return opt_state.hyperparams if hasattr(opt_state, "hyperparams") else hyperparams(opt_state[0])


def with_learning_rate(opt_state, rate: jax.Array):
    if hasattr(opt_state, "hyperparams"):
        return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": rate})
    return (with_learning_rate(opt_state[0], rate), *opt_state[1:])


def learning_rate(state) -> float:
    return float(hyperparams(state.opt_state)["learning_rate"])


def step_plateau(state, config: TrainConfig, val_loss: float):
    """After a validation: feed the plateau tracker (under "plateau", the next steps' rate)."""
    if config.schedule != "plateau":
        return state
    _, plateau = create_plateau(config).update(
        updates=jnp.zeros(()), state=state.plateau, value=jnp.asarray(val_loss)
    )
    old = hyperparams(state.opt_state)["learning_rate"]
    rate = parallel.put_replicated(
        jnp.asarray(config.lr * plateau.scale, jnp.float32), old.sharding
    )
    return state.replace(plateau=plateau, opt_state=with_learning_rate(state.opt_state, rate))
