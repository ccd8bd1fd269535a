"""examples/kaggle.ipynb run as on Kaggle: segjax installed with --no-index from a wheel folder
built by tools/offline_wheels.sh into a fresh venv (JAX taken from the "image", as Kaggle's has
it), the notebook executed by a real Jupyter kernel on a read-only data folder; and what that
install holds: the library only, and the `segjax` command."""

from __future__ import annotations

import os
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest

from segjax.data import layout
from segjax.inference import submission

pytestmark = pytest.mark.slow  # builds wheels and a venv, trains, runs a kernel

ROOT = Path(__file__).resolve().parents[1]
# What the "image" (Kaggle's Docker image) provides: JAX and jaxlib, taken from this test's
# environment; everything else comes from the wheel folder.
IMAGE_PACKAGES = ("jax", "jaxlib")


def _image(tmp_path: Path) -> Path:
    """A folder holding this environment's JAX and jaxlib (links), like the image's own."""
    import jax

    site = Path(jax.__file__).resolve().parents[1]
    image = tmp_path / "image"
    image.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if any(name == p or name.startswith(f"{p}-") for p in IMAGE_PACKAGES):
            (image / entry.name).symlink_to(entry)
    return image


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    )


def test_the_kaggle_notebook_installs_offline_trains_and_submits(demo_dir, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    wheels = tmp_path / "wheels"
    built = subprocess.run(
        ["bash", str(ROOT / "tools" / "offline_wheels.sh"), str(wheels)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert not list(wheels.glob("jax-*"))
    (wheel,) = wheels.glob("segjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "segjax/models/encoders.py" in names and "segjax/cli/commands.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "benchmarks/", "docs/"))]
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    (site,) = env.glob("lib/python*/site-packages")
    (site / "kaggle_image.pth").write_text(f"{_image(tmp_path)}\n")
    work = tmp_path / "working"
    work.mkdir()
    before = _listing(demo_dir)
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the kernel's commands: the venv's only
    monkeypatch.setenv("PATH", f"{env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("SEGJAX_WHEELS", str(wheels))
    monkeypatch.setenv("SEGJAX_DATA", str(demo_dir))
    monkeypatch.setenv("SEGJAX_WORK", str(work))
    monkeypatch.setenv(
        "SEGJAX_TRAIN_FLAGS",
        "--image-size 32 --features 4 --depth 2 --batch-size 4 --eval-batch-size 4 "
        "--val-fraction 0.2 --epochs 2 --time-budget 10 --no-progress",
    )
    notebook = nbformat.read(ROOT / "examples" / "kaggle.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    out = "".join(
        o.get("text", "")
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    assert "devices: 1 cpu device" in out and "precision: fp32" in out
    assert "at the images' original size" in out and "next: segjax submit" in out
    # The submission where Kaggle looks for it, valid by segjax's own check.
    path = work / "submission.csv"
    test = layout.discover(demo_dir).test
    from PIL import Image

    sizes = [Image.open(s.image).size[::-1] for s in test]
    assert submission.validate(path, [s.id for s in test], sizes) < 1.0
    assert (work / "runs" / "segjax" / "evaluation_val.csv").exists()
    # The installed segjax is the wheel's, in the fresh venv; the data folder is untouched.
    where = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import segjax; print(segjax.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(site)), where
    assert _listing(demo_dir) == before
    # The wheel's command outside the checkout: its commands, and `python -m segjax`.
    run = lambda *argv: subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    train_help = run(str(env / "bin" / "segjax"), "train", "--help")
    assert (
        train_help.returncode == 0 and "--encoder {scratch,efficientnet-lite0" in train_help.stdout
    )
    module = run(str(env / "bin" / "python"), "-m", "segjax", "submit", "--help")
    assert module.returncode == 0 and "usage: segjax submit" in module.stdout, module.stderr
