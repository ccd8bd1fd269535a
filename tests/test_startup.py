"""Start-up: the persistent compilation cache works for the command's entry points, so a
second run compiles nothing that the first one compiled."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segjax import runtime

pytestmark = pytest.mark.slow  # two training processes

ROOT = Path(__file__).resolve().parents[1]
MISS = re.compile(r"PERSISTENT COMPILATION CACHE MISS for '([^']+)' with key '([^']+)'")
HIT = re.compile(r"[Pp]ersistent compilation cache hit for '([^']+)'")


def test_a_second_run_compiles_nothing_the_first_one_compiled(demo_dir, tmp_path):
    if runtime._jaxlib_version() < runtime.CACHE_MIN_JAXLIB:
        pytest.skip("this jaxlib keeps no compilation cache (segjax.runtime.CACHE_MIN_JAXLIB)")
    # A fresh user's process: no jax settings of this one, an empty cache, jax's cache log on.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "SEGJAX"))}
    env.update(
        SEGJAX_CACHE=str(tmp_path / "cache"),
        JAX_DEBUG_LOG_MODULES="jax._src.compiler,jax._src.compilation_cache",
    )
    flags = ["--data-dir", str(demo_dir), "--image-size", "32", "--features", "4"]
    flags += ["--depth", "2", "--encoder", "scratch", "--epochs", "1", "--no-progress"]
    installed = Path(sys.executable).parent / "segjax"  # the installed command, if there is one
    second = [str(installed)] if installed.exists() else [sys.executable, "-m", "segjax"]
    entry_points = ([sys.executable, str(ROOT / "scripts" / "train.py")], [*second, "train"])
    logs = []
    for i, entry in enumerate(entry_points):
        run = [*entry, *flags, "--run-dir", str(tmp_path / f"run{i}")]
        done = subprocess.run(run, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        logs.append(done.stderr)
    first = {key: name for name, key in MISS.findall(logs[0])}
    again = {key: name for name, key in MISS.findall(logs[1])}
    assert "jit_train_step" in first.values() and "jit_eval_step" in first.values(), logs[0][-2000:]
    assert not set(first) & set(again), sorted(first[k] for k in set(first) & set(again))
    assert {"jit_train_step", "jit_eval_step"} <= set(HIT.findall(logs[1]))
    assert any((tmp_path / "cache" / "jax").iterdir())
    shutil.rmtree(tmp_path / "cache")  # the entries are many small files
