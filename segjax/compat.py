"""What moved between the jax/flax/orbax versions segjax supports (jax 0.5.2 .. 0.10), in one
place: callers import these names instead of testing versions themselves.

The oldest versions are the floors in pyproject.toml (the jax that Kaggle's GPU image shipped
from June to December 2025); tests/test_floors.py installs exactly those and trains.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.monitoring
from jax.sharding import Mesh

if not hasattr(jax.monitoring, "record_scalar"):
    # orbax-checkpoint 0.11.24 and newer report a scalar through jax.monitoring.record_scalar,
    # which jax 0.6 added; their metadata still admits jax 0.5, so pip pairs them. With no
    # listener of scalars in jax 0.5, recording one is nothing to do.
    jax.monitoring.record_scalar = lambda event, value, **kwargs: None


def make_mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> Mesh:
    """A device mesh whose axes the compiler shards automatically (jax's `AxisType.Auto`, the
    only behaviour before jax 0.6, which has no axis types)."""
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:
        return jax.make_mesh(shape, names)
    return jax.make_mesh(shape, names, axis_types=(axis_type.Auto,) * len(shape))


def enable_x64(enabled: bool = True) -> contextlib.AbstractContextManager:
    """A context in which jnp arrays may be float64 (`jax.enable_x64` from jax 0.7; before it,
    `jax.experimental.enable_x64`)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(enabled)
    from jax.experimental import disable_x64
    from jax.experimental import enable_x64 as enable

    return enable() if enabled else disable_x64()


def named_partial(fn, /, **bound):
    """`functools.partial(fn, **bound)` that keeps `fn`'s name: jax before 0.6 names a jitted
    partial "<unnamed wrapped function>" in its logs, compilation-cache keys and profiles."""
    return functools.update_wrapper(functools.partial(fn, **bound), fn)
