"""Predict probabilities with one jitted fixed-shape function, batch by batch; resize them to
each image's original size."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import numpy as np
from PIL import Image

from segjax import parallel
from segjax.compat import named_partial
from segjax.config import Config, RunFacts
from segjax.data import sampling
from segjax.inference.run_loader import Loaded
from segjax.models import apply
from segjax.models.builder import create_model


@functools.lru_cache(maxsize=16)
def create_predict_fn(config: Config, facts: RunFacts, mesh, tta: bool):
    """jit (variables, uint8 images [B, H, W, C]) -> probabilities [B, H, W], batch sharded.

    Cached on (config, facts, mesh, tta): a process compiles it once per run and TTA setting.
    """
    fn = named_partial(
        apply.predict_probs,
        apply_fn=create_model(config.model, facts.dtype).apply,
        mean=facts.mean,
        std=facts.std,
        tta=tta,
    )
    rep, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(fn, in_shardings=(rep, shard), out_shardings=shard)


def iterate_probs(
    loaded: Loaded, images_u8: np.ndarray, batch_size: int, tta: bool, mesh=None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, probabilities [b, H, W]) batch by batch, pads dropped: one compiled shape."""
    if loaded.network is not None:  # another runtime runs the network: host arrays
        yield from _network_probs(loaded.network, images_u8, batch_size)
        return
    mesh = mesh or parallel.create_mesh()
    batch_size = parallel.fit_batch(batch_size)  # padded anyway; the result does not change
    fn = create_predict_fn(loaded.config, loaded.facts, mesh, tta)
    make = lambda b: (*b, parallel.gather_batch({"image": images_u8}, b[0], mesh)["image"])
    pending = None  # dispatch batch i + 1 before handing out batch i: the caller's work overlaps
    with parallel.Prefetcher(sampling.eval_batches(len(images_u8), batch_size), make) as feed:
        for idx, valid, batch in feed:
            probs = fn(loaded.variables, batch)
            if pending is not None:
                yield pending[0], parallel.gather(pending[2])[pending[1]]
            pending = (idx[valid], valid, probs)
    if pending is not None:
        yield pending[0], parallel.gather(pending[2])[pending[1]]


def _network_probs(network, images_u8: np.ndarray, batch_size: int):
    """`iterate_probs` by an onnxruntime session (its TTA is inside the model)."""
    for start in range(0, len(images_u8), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images_u8)))
        batch = np.ascontiguousarray(images_u8[idx])
        yield idx, network.run(None, {"images": batch})[0]


def resize_prob(prob_HxW: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a probability map to (height, width), before any threshold."""
    if prob_HxW.shape == tuple(size):
        return np.asarray(prob_HxW, np.float32)
    image = Image.fromarray(np.asarray(prob_HxW, np.float32), mode="F")
    return np.asarray(image.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR))
