"""What moved between the jax/flax/orbax versions segjax supports (jax 0.5.2 .. 0.10), in one
place: callers import these names instead of testing versions themselves.

The oldest versions are the floors in pyproject.toml (the jax that Kaggle's GPU image shipped
from June to December 2025); tests/test_floors.py installs exactly those and trains.
"""

from __future__ import annotations

import contextlib

import jax
from jax.sharding import Mesh


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
