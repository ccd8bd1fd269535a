"""The package as a wheel: what an offline install (a Kaggle notebook) gets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a venv

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_offline_and_holds_the_library_only(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside it
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".*", "runs", "build", "*.egg-info")
    )
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*build, "--wheel-dir", str(wheels), str(source)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = wheels.glob("segjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "segjax/models/encoders.py" in names and "segjax/models/weight_files.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "benchmarks/", "docs/"))]
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps"]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the fresh venv
    done = subprocess.run([*pip, str(wheel)], capture_output=True, text=True, env=clean)
    assert done.returncode == 0, done.stderr[-2000:]
    (site,) = env.glob("lib/python*/site-packages")
    assert (site / "segjax" / "cli" / "commands.py").exists()
    assert (site / "segjax" / "models" / "encoders.py").exists()
    # The wheel's command, run outside the checkout, with jax and the other dependencies taken
    # from this test's environment (as a Kaggle image has them) and segjax only from the wheel.
    (site / "test_dependencies.pth").write_text(dependencies_site() + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = lambda *argv: subprocess.run(
        argv, capture_output=True, text=True, cwd=outside, env=clean, timeout=300
    )
    python = str(env / "bin" / "python")
    where = run(python, "-c", "import segjax; print(segjax.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where
    overview = run(str(env / "bin" / "segjax"), "--help")
    assert overview.returncode == 0, overview.stderr[-2000:]
    assert "train" in overview.stdout and "submit" in overview.stdout
    train_help = run(str(env / "bin" / "segjax"), "train", "--help")
    assert train_help.returncode == 0, train_help.stderr[-2000:]
    assert "--encoder {scratch,efficientnet-lite0" in train_help.stdout
    module = run(python, "-m", "segjax", "submit", "--help")
    assert module.returncode == 0 and "usage: segjax submit" in module.stdout, module.stderr


def dependencies_site() -> str:
    """This test environment's site-packages (where jax, flax, ... are installed)."""
    import jax

    return str(Path(jax.__file__).resolve().parents[1])
