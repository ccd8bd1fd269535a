"""Precision per device (--precision auto) and float16 training with dynamic loss scaling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import parallel
from segjax.config import RunOptions, replace
from segjax.data import sources
from segjax.runs import metrics_log, run_folder
from segjax.train import loop, precision, start
from segjax.train.precision import Device
from segjax.train.step import create_steps, create_train_state
from tests.conftest import on_devices


@pytest.mark.parametrize(
    "device, chosen",
    [
        (Device("cpu"), "fp32"),
        (Device("tpu"), "bf16"),
        (Device("gpu", "9.0"), "bf16"),  # H100
        (Device("gpu", "8.0"), "bf16"),  # A100
        (Device("gpu", "7.5"), "fp16"),  # T4
        (Device("gpu", "7.0"), "fp16"),  # V100
        (Device("gpu", "6.0"), "fp16"),  # P100
        (Device("gpu", ""), "fp32"),  # a GPU that does not say
    ],
)
def test_auto_picks_the_fastest_precision_the_device_computes_natively(device, chosen):
    assert precision.choose("auto", device) == chosen
    assert precision.choose("fp32", device) == "fp32"  # an explicit choice stands


def _fp16_batch(tiny_config):
    config = replace(
        tiny_config,
        train={"precision": "fp16", "aug": "none", "schedule": "constant", "lr": 1e-2},
        model={"features": 8},
    )
    splits = sources.load_splits(config)
    facts = start.initial_facts(config, splits)
    mesh = parallel.create_mesh()
    idx = splits.train[:4]
    images, masks = splits.arrays.images[idx], splits.arrays.masks[idx]
    batch = on_devices({"image": images, "mask": masks}, mesh)
    return config, facts, create_steps(config, facts, mesh, 10), batch


def test_an_overflowing_gradient_halves_the_scale_and_changes_nothing_else(tiny_config):
    config, facts, steps, batch = _fp16_batch(tiny_config)
    assert facts.dtype == "float16"
    state = create_train_state(config, jax.random.key(0), 10, facts)
    huge = state.dynamic_scale.replace(scale=jnp.asarray(1e38, jnp.float32))
    state = state.replace(dynamic_scale=huge)  # float16 gradients overflow at this scale
    # Copies: the step donates the state, and a host view of a CPU buffer can see
    # the donated buffer being reused (seen with jax 0.5.2).
    before = jax.tree.map(np.array, (state.params, state.opt_state, state.batch_stats))
    state, out = steps.train(state, batch, jax.random.key(1))
    assert int(out["skipped"]) == 1 and float(state.dynamic_scale.scale) == pytest.approx(5e37)
    after = jax.device_get((state.params, state.opt_state, state.batch_stats))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.step) == 1  # the batch was used: the data order moves on


@pytest.mark.slow
def test_a_tiny_model_trains_in_float16_with_float32_parameters(tiny_config):
    config, facts, steps, batch = _fp16_batch(tiny_config)
    state = create_train_state(config, jax.random.key(0), 10, facts)
    losses, skipped = [], 0
    for _ in range(40):
        state, out = steps.train(state, batch, jax.random.key(1))
        losses.append(float(out["loss"]))
        skipped += int(out["skipped"])
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    assert skipped == 0 and float(state.dynamic_scale.scale) == 2.0**16
    assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {"float32"}


@pytest.mark.slow
def test_auto_on_a_t4_trains_in_float16_says_so_and_saves_it(
    tiny_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(precision, "this_device", lambda: Device("gpu", "7.5"))
    config = replace(tiny_config, train={"epochs": 1})
    assert config.train.precision == "auto"
    loop.fit(config, tmp_path / "run", RunOptions(progress=False))
    assert "precision: fp16 (auto): compute float16" in capsys.readouterr().out
    assert run_folder.read_facts(tmp_path / "run").dtype == "float16"
    (row,) = metrics_log.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert row["skipped_steps"] == 0 and row["loss_scale"] == 2.0**16
