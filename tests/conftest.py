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


@pytest.hookimpl(optionalhook=True)  # known only where pytest-xdist is installed
def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): a worker per core, at most four: each worker is a JAX
    process of its own, and many tests start processes of their own. The cores this process
    may run on, where the system says (a container's CPU set), else all of them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 4))


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
    options = RunOptions(progress=False, log="tensorboard")
    workflows.train_and_tune(make_tiny_config(demo_dir), run_dir, options)
    return run_dir


def ccp_or_skip() -> Path:
    if not (CCP / "images").is_dir():
        pytest.skip(f"real-photo data not found at {CCP} (it ships beside the repository only)")
    return CCP


@contextlib.contextmanager
def count_traces():
    """Within: how many times each function is traced (so compiled), by name.

    Read from jax's own "Finished tracing <name> for jit" debug log (jax 0.5: "Finished
    tracing + transforming <name> for pjit"), which every supported version writes.
    """
    import logging
    import re

    traced: collections.Counter = collections.Counter()
    pattern = re.compile(r"Finished tracing (?:\+ transforming )?(\S+) for p?jit")

    class Counter(logging.Handler):
        def emit(self, record):
            found = pattern.match(record.getMessage())
            if found:
                traced[found.group(1)] += 1

    logger, handler = logging.getLogger("jax._src.dispatch"), Counter(logging.DEBUG)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield traced
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def floor_versions() -> dict[str, str]:
    """pyproject.toml's floors: every `name>=version` dependency, as {name: version}."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition(">=")
        floors[name.strip()] = version.strip()
    return floors


def make_venv(path: Path, python: str | None = None) -> Path:
    """A fresh virtual environment (of `python`, default this one); returns its python."""
    import subprocess
    import sys

    subprocess.run([python or sys.executable, "-m", "venv", str(path)], check=True)
    # The pip a venv starts with may be old: its resolver took minutes where today's takes
    # seconds (pip 23.0 on Python 3.10, resolving the floors).
    upgrade = [path / "bin" / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip"]
    subprocess.run(upgrade, check=True)
    return path / "bin" / "python"


def on_devices(batch: dict, mesh) -> dict:
    """A host batch on the mesh, by the loop's own path (`parallel.gather_batch`)."""
    import numpy as np

    from segjax import parallel

    return parallel.gather_batch(batch, np.arange(len(batch["image"])), mesh)


def all_probs(loaded, images, batch_size: int, tta: bool):
    """Probabilities [N, H, W] of a whole array of images, by prediction's own path
    (`predictor.iterate_probs`, batch by batch)."""
    import numpy as np

    from segjax.inference import predictor

    parts = sorted(predictor.iterate_probs(loaded, images, batch_size, tta), key=lambda p: p[0][0])
    return np.concatenate([probs for _, probs in parts])
