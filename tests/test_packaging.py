"""The package as a wheel: what an offline install (a Kaggle notebook) gets."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_offline_and_holds_the_library_only(tmp_path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*build, "--wheel-dir", str(wheels), str(ROOT)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = wheels.glob("segjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "segjax/models/encoders.py" in names and "segjax/weights.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "benchmarks/", "docs/"))]
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps"]
    done = subprocess.run([*pip, str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    show = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "show", "-f", "segjax"],
        capture_output=True,
        text=True,
    )
    assert "Name: segjax" in show.stdout and "segjax/cli.py" in show.stdout
