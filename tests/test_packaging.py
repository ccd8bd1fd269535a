"""The package as a wheel: what an offline install (a Kaggle notebook) gets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

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
    assert "segjax/models/encoders.py" in names and "segjax/weights.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "benchmarks/", "docs/"))]
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps"]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the fresh venv
    done = subprocess.run([*pip, str(wheel)], capture_output=True, text=True, env=clean)
    assert done.returncode == 0, done.stderr[-2000:]
    installed = list(env.glob("lib/python*/site-packages/segjax"))
    assert installed and (installed[0] / "cli.py").exists()
    assert (installed[0] / "models" / "encoders.py").exists()
