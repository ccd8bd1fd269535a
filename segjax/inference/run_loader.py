"""Load a trained run for prediction: the model rebuilt from config.json, the weights of one
checkpoint; no training code, no optimizer state."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from segjax import parallel
from segjax.config import Config, RunFacts
from segjax.errors import UserError
from segjax.models.builder import create_model
from segjax.runs import checkpoint, run_folder


class Loaded(NamedTuple):
    config: Config
    facts: RunFacts  # normalisation and compute dtype the weights were trained with
    variables: dict  # {"params": ..., "batch_stats": ...}, replicated over the mesh
    step: int  # the checkpoint's epoch
    run_dir: Path
    # Another runtime's network in place of the jitted one (`segjax.inference.onnx_export
    # .attach`): an onnxruntime session with the run's tuned TTA inside.
    network: Any = None


def load_run(run_dir: str | Path, which: str = "best", mesh=None) -> Loaded:
    """Rebuild the model from the run's files alone and restore a checkpoint's variables.

    Only the parameters and BatchNorm statistics are read (the optimizer's moments are not),
    into shapes from `jax.eval_shape` of the model's init: no training state is built.
    """
    run_dir = Path(run_dir)
    if run_folder.is_folds(run_dir):
        raise UserError(
            f"{run_dir} is a k-fold folder: name one of its runs ({run_dir}/fold-0, ...); "
            "segjax submit and segjax evaluate take the folder as one ensemble"
        )
    config, facts = run_folder.read_run(run_dir)
    model = create_model(config.model, facts.dtype)
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
        variables = checkpoint.restore_variables(manager, step, template, ema=config.train.ema > 0)
    finally:
        manager.close()
    return Loaded(config, facts, variables, step, run_dir)
