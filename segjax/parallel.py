"""One mesh over all devices: batches sharded on a `data` axis, everything else replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh() -> Mesh:
    # Auto axes: the compiler propagates shardings through vmap and reductions.
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, what: str = "--batch-size") -> None:
    devices = jax.device_count()
    if batch_size % devices:
        raise ValueError(
            f"{what} {batch_size} does not split over {devices} devices: "
            f"use a multiple of {devices}"
        )


def local_slice(global_batch: int) -> slice:
    """This process's rows of a global batch (every process computes the same global indices)."""
    per_process = global_batch // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, global_batch: int
) -> dict[str, jax.Array]:
    """Host arrays (this process's rows) -> global arrays sharded on the data axis."""
    sharding = data_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_batch, *v.shape[1:]))
        for k, v in batch.items()
    }


def gather(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) sharded array as one host numpy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
