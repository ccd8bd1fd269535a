"""The oldest versions segjax says it supports (pyproject.toml's floors, jax 0.5.2 among them),
installed exactly from the package index into a fresh venv of the oldest Python it supports
where this machine has one: a one-epoch train, a submit, and the fast tier's model tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segjax.data import layout
from segjax.inference import submission
from tests.conftest import floor_versions, make_venv
from tools.offline_wheels import find_python

pytestmark = pytest.mark.slow  # a venv from the package index, a training, a test run

ROOT = Path(__file__).resolve().parents[1]
OLDEST_PYTHON = "3.10"  # pyproject.toml's requires-python


def test_the_floor_versions_train_submit_and_pass_the_model_tests(demo_dir, tmp_path):
    python = make_venv(tmp_path / "floors", find_python(OLDEST_PYTHON) or sys.executable)
    pins = [f"{name}=={version}" for name, version in floor_versions().items()]
    pip = [python, "-m", "pip", "install", "--quiet", "--only-binary=:all:"]
    subprocess.run([*pip, *pins, "pytest"], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", ROOT], check=True)
    subprocess.run([python, "-m", "pip", "check"], check=True)
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format", "freeze"], capture_output=True, text=True
    ).stdout.lower()
    assert all(pin.lower() in listed.splitlines() for pin in pins), (pins, listed)
    # A process that looks like a fresh user's: none of this one's jax settings, caches or
    # pytest options (PYTEST_ADDOPTS may name a plugin the floors do not have).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XLA_", "JAX_", "SEGJAX", "PYTEST_"))
    }
    env["SEGJAX_CACHE"] = str(tmp_path / "cache")
    segjax = lambda *args: subprocess.run(
        [python, "-m", "segjax", *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    run_dir = tmp_path / "run"
    tiny = ["--image-size", "32", "--features", "4", "--depth", "2", "--encoder", "scratch"]
    trained = segjax(
        "train", "--data-dir", str(demo_dir), *tiny, "--epochs", "1", "--val-fraction", "0.2",
        "--no-progress", "--run-dir", str(run_dir),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    version = subprocess.run([python, "--version"], capture_output=True, text=True).stdout
    print(f"floors on {version.strip()}: {' '.join(pins)}")
    out = tmp_path / "submission.csv"
    submitted = segjax("submit", "--run-dir", str(run_dir), "--out", str(out), "--no-progress")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    from PIL import Image

    test = layout.discover(demo_dir).test
    sizes = [Image.open(s.image).size[::-1] for s in test]
    assert submission.validate(out, [s.id for s in test], sizes) < 1.0
    models = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "not slow"]
        + ["tests/test_models.py"],
        capture_output=True,
        text=True,
        env={**env, "SEGJAX_CACHE": str(tmp_path / "test-cache")},
        cwd=ROOT,
    )
    assert models.returncode == 0, models.stdout[-3000:]
