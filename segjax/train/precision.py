"""Precision per device: what `--precision auto` picks, the compute dtype of each precision, and
the dynamic loss scale that float16 training needs.

Parameters, optimizer state, losses and metrics stay float32 in every precision; only the
model's activations and convolutions compute in the lower one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from flax.training.dynamic_scale import DynamicScale

COMPUTE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# NVIDIA GPUs compute bfloat16 natively from compute capability 8.0 (A100, L4, H100, ...); the
# older ones Kaggle lends (T4 7.5, P100 6.0) and the V100 (7.0) emulate it, slower than float32,
# while their float16 is native (tensor cores on the T4 and V100).
BF16_CAPABILITY = 8.0


class Device(NamedTuple):
    """What the choice depends on: `jax.devices()[0]`'s platform and compute capability."""

    platform: str  # "cpu", "gpu", "tpu"
    compute_capability: str = ""  # NVIDIA GPUs: "7.5", "8.0", ...; "" elsewhere


def this_device() -> Device:
    import jax

    device = jax.devices()[0]
    return Device(device.platform, str(getattr(device, "compute_capability", "") or ""))


def choose(requested: str, device: Device) -> str:
    """The precision to train in: `requested` unless it is "auto", which picks float32 on a
    CPU, bfloat16 on a TPU and on NVIDIA GPUs of compute capability 8.0 or newer, and float16
    (with loss scaling) on older GPUs."""
    if requested != "auto":
        return requested
    if device.platform == "tpu":
        return "bf16"
    if device.platform == "gpu":
        try:
            capability = float(device.compute_capability)
        except ValueError:  # a GPU that does not say (ROCm): float32 is always right
            return "fp32"
        return "bf16" if capability >= BF16_CAPABILITY else "fp16"
    return "fp32"


def loss_scale(dtype: str) -> DynamicScale | None:
    """float16's dynamic loss scale (flax's, as the Flax ImageNet example's GPU path): the loss
    is multiplied by the scale before the gradient; a non-finite gradient halves the scale and
    skips the update; 2000 finite steps in a row double it (from 2^16). None for the other
    compute dtypes."""
    if dtype != "float16":
        return None
    return DynamicScale(fin_steps=jnp.zeros((), jnp.int32), scale=jnp.asarray(2.0**16, jnp.float32))
