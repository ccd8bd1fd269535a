"""One mesh over all devices: batches sharded on a `data` axis, everything else replicated."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from segjax.compat import make_mesh
from segjax.config import Config, replace
from segjax.errors import UserError

DATA_AXIS = "data"


def create_mesh() -> Mesh:
    # Auto axes: the compiler propagates shardings through vmap and reductions.
    return make_mesh((jax.device_count(),), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, what: str = "--batch-size") -> None:
    devices = jax.device_count()
    if batch_size % devices:
        raise UserError(
            f"{what} {batch_size} does not split over {devices} devices: "
            f"use a multiple of {devices}"
        )


def put_replicated(tree: Any, sharding: NamedSharding) -> Any:
    """A value every process holds alike, placed on a sharding that may span processes
    (`jax.device_put` accepts non-addressable devices from jax 0.6; here each process builds
    its own shards, which works on every version)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    build = lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda index: np.asarray(x)[index]
    )
    return jax.tree.map(build, tree)


def fit_batch(batch_size: int, devices: int | None = None) -> int:
    """The smallest multiple of the device count that is at least `batch_size`."""
    devices = devices or jax.device_count()
    return -(-batch_size // devices) * devices


def fit_batches(config: Config, asked: set[str] = frozenset(), devices: int | None = None):
    """The config with the batch sizes the user did not ask for (`asked`: field names) rounded
    up to a multiple of the device count, so presets train anywhere (the demo's 4 on a TPU
    v5e-8: 8). One that was asked for is kept as it is and checked where training starts."""
    train = {
        name: fit_batch(getattr(config.train, name), devices)
        for name in ("batch_size", "eval_batch_size")
        if name not in asked
    }
    return replace(config, train=train)


def gather_batch(sources: dict[str, Any], indices: np.ndarray, mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch `{k: sources[k][indices]}`, sharded on the data axis.

    Each process reads only the rows its own devices hold, as the sharding's index map says
    (`jax.make_array_from_callback`), so no block order across hosts is assumed.
    """
    sharding = data_sharded(mesh)
    indices = np.asarray(indices)

    def build(source) -> jax.Array:
        shape = (len(indices), *source.shape[1:])
        return jax.make_array_from_callback(
            shape, sharding, lambda index: np.asarray(source[indices[index[0]]])
        )

    return {k: build(v) for k, v in sources.items()}


def gather(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) sharded array as one host numpy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Prefetcher:
    """Prepare the next batches in a daemon thread, `depth` ahead of the loop that uses them.

    Iterating yields `make(item)` for each item of `items`, in order (so the batch order, and
    with it exact resume, is unchanged). An error in the thread is raised in the loop; leaving
    the loop early (break, an error, Ctrl-C) stops the thread, and `close` (or the end of a
    `with` block) joins it.
    """

    _END = object()

    def __init__(self, items: Iterable, make: Callable[[Any], Any], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items, make), daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterable, make: Callable[[Any], Any]) -> None:
        try:
            for item in items:
                if not self._put((True, make(item))):
                    return
        except BaseException as err:  # handed to the loop, raised there
            self._put((False, err))
            return
        self._put((True, self._END))

    def __iter__(self) -> Iterator:
        while True:
            ok, value = self._queue.get()
            if not ok:
                raise value
            if value is self._END:
                return
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
