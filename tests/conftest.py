"""Shared fixtures: a tiny synthetic dataset and a tiny config; JAX set up for strict tests."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SEGJAX_CACHE", str(ROOT / ".cache" / "test"))
from segjax import runtime  # noqa: E402

runtime.configure()  # the CLI's XLA flags and the persistent compilation cache, before JAX starts

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")  # catch [B,H,W] vs [B,H,W,1] mix-ups

from segjax.config import Config, DataConfig, ModelConfig, RunOptions, TrainConfig  # noqa: E402
from segjax.data import synthetic  # noqa: E402

CCP = ROOT.parent / "shared" / "data" / "ccp_person"
# Fixtures that train a run: every test using one belongs to the slow tier.
TRAINING_FIXTURES = {"trained_run", "straight_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


TINY_SIZES = ((40, 40), (36, 48), (48, 36))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """40 labelled and 9 test images, small and of several sizes, in the competition layout."""
    root = tmp_path_factory.mktemp("data") / "demo"
    return synthetic.generate(root, n_train=40, n_test=9, seed=3, sizes=TINY_SIZES)


def make_tiny_config(data_dir: Path | str, **train) -> Config:
    """A model and images small enough that a step compiles in seconds."""
    return Config(
        name="tiny",
        data=DataConfig(data_dir=str(data_dir), image_size=(32, 32), val_fraction=0.2),
        model=ModelConfig(
            arch="unet", encoder="scratch", features=4, depth=2, upsample="transpose"
        ),
        train=dataclasses.replace(
            TrainConfig(batch_size=4, eval_batch_size=4, epochs=2, lr=3e-3, preview_count=2),
            **train,
        ),
    )


@pytest.fixture
def tiny_config(demo_dir) -> Config:
    return make_tiny_config(demo_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_dir) -> Path:
    """One tiny run, trained and tuned once for every test that reads a finished run."""
    from segjax import workflows

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    workflows.train_and_tune(make_tiny_config(demo_dir), run_dir, RunOptions(progress=False))
    return run_dir


def ccp_or_skip() -> Path:
    if not (CCP / "images").is_dir():
        pytest.skip(f"real-photo data not found at {CCP} (it ships beside the repository only)")
    return CCP


@contextlib.contextmanager
def count_traces():
    """Within: how many times each function is traced (so compiled), by name."""
    traced: collections.Counter = collections.Counter()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traced[kwargs.get("fun_name")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield traced
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
