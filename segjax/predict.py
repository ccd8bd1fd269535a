"""Load a run, predict probabilities with one jitted fixed-shape function, resize to original."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from segjax import augment, checkpoint, data, parallel, runs
from segjax.config import Config, load_config
from segjax.errors import UserError
from segjax.models import create_model, legacy_layout, upgrade_layout


class Loaded(NamedTuple):
    config: Config
    variables: dict  # {"params": ..., "batch_stats": ...}, replicated over the mesh
    step: int  # the checkpoint's epoch
    run_dir: Path


def load_run(run_dir: str | Path, which: str = "best", mesh=None) -> Loaded:
    """Rebuild the model from config.json alone and restore a checkpoint's variables.

    Only the parameters and BatchNorm statistics are read (the optimizer's moments are not),
    into shapes from `jax.eval_shape` of the model's init: no training state is built.
    """
    run_dir = Path(run_dir)
    if runs.is_folds(run_dir):
        raise UserError(
            f"{run_dir} is a k-fold folder: name one of its runs ({run_dir}/fold-0, ...); "
            "submit.py and evaluate.py take the folder as one ensemble"
        )
    if not (run_dir / "config.json").exists():
        raise UserError(f"{run_dir}: no config.json (not a segjax run folder); check --run-dir")
    config = load_config(run_dir / "config.json")
    model = create_model(config.model)
    h, w = config.data.image_size
    sample = jax.ShapeDtypeStruct((1, h, w, config.data.channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)
    rep = parallel.replicated(mesh or parallel.create_mesh())
    template = {
        name: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)
        for name, tree in (
            ("params", shapes["params"]),
            ("batch_stats", shapes.get("batch_stats", {})),
        )
    }
    manager = checkpoint.create_manager(run_dir / "checkpoints", read_only=True)
    try:
        step = checkpoint.resolve_step(manager, which)
        try:
            variables = checkpoint.restore_variables(manager, step, template)
        except checkpoint.CheckpointError:  # a run of segjax 0.1 (flat module names)?
            old = legacy_layout(template, config.model.arch)
            try:
                variables = upgrade_layout(
                    checkpoint.restore_variables(manager, step, old), config.model.arch
                )
            except checkpoint.CheckpointError:
                variables = checkpoint.restore_variables(manager, step, template)  # the error
    finally:
        manager.close()
    return Loaded(config, variables, step, run_dir)


def logits(apply_fn, variables, images_u8: jax.Array, mean, std) -> jax.Array:
    """float32 logits [B, H, W, 1] of uint8 images [B, H, W, C], in evaluation mode."""
    images = augment.normalize(images_u8.astype(jnp.float32) / 255.0, mean, std)
    return apply_fn(variables, images, train=False).astype(jnp.float32)


def probabilities(apply_fn, variables, images_u8: jax.Array, mean, std) -> jax.Array:
    """float32 person probabilities [B, H, W] of uint8 images [B, H, W, C].

    Training's validation, previews, tuning, evaluation and the submission all start here.
    """
    return jax.nn.sigmoid(logits(apply_fn, variables, images_u8, mean, std)[..., 0])


def _probs(variables, images_u8, *, model, mean, std, tta: bool) -> jax.Array:
    """Probabilities [B, H, W] at the input's size; flip TTA averages probabilities."""
    probs = probabilities(model.apply, variables, images_u8, mean, std)
    if tta:
        flipped = probabilities(model.apply, variables, images_u8[:, :, ::-1], mean, std)
        probs = 0.5 * (probs + flipped[:, :, ::-1])
    return probs


@functools.lru_cache(maxsize=16)
def create_predict_fn(config: Config, mesh, tta: bool):
    """jit (variables, uint8 images [B, H, W, C]) -> probabilities [B, H, W], batch sharded.

    Cached on (config, mesh, tta), so the training previews compile it once per run.
    """
    fn = functools.partial(
        _probs,
        model=create_model(config.model),
        mean=config.data.mean,
        std=config.data.std,
        tta=tta,
    )
    rep, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(fn, in_shardings=(rep, shard), out_shardings=shard)


def iterate_probs(
    loaded: Loaded, images_u8: np.ndarray, batch_size: int, tta: bool, mesh=None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, probabilities [b, H, W]) batch by batch, pads dropped: one compiled shape."""
    mesh = mesh or parallel.create_mesh()
    parallel.check_batch_size(batch_size)
    fn = create_predict_fn(loaded.config, mesh, tta)
    make = lambda b: (*b, parallel.gather_batch({"image": images_u8}, b[0], mesh)["image"])
    pending = None  # dispatch batch i + 1 before handing out batch i: the caller's work overlaps
    with parallel.Prefetcher(data.eval_batches(len(images_u8), batch_size), make) as feed:
        for idx, valid, batch in feed:
            probs = fn(loaded.variables, batch)
            if pending is not None:
                yield pending[0], parallel.gather(pending[2])[pending[1]]
            pending = (idx[valid], valid, probs)
    if pending is not None:
        yield pending[0], parallel.gather(pending[2])[pending[1]]


def predict_all(loaded: Loaded, images_u8: np.ndarray, batch_size: int, tta: bool, mesh=None):
    """Probabilities [N, H, W] at the training size for a whole array of images."""
    parts = list(iterate_probs(loaded, images_u8, batch_size, tta, mesh))
    return np.concatenate([p for _, p in parts]) if parts else np.zeros((0,))


def resize_prob(prob_HxW: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a probability map to (height, width), before any threshold."""
    if prob_HxW.shape == tuple(size):
        return np.asarray(prob_HxW, np.float32)
    image = Image.fromarray(np.asarray(prob_HxW, np.float32), mode="F")
    return np.asarray(image.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR))
