"""examples/kaggle.ipynb run as on Kaggle: a wheel folder built by tools/offline_wheels.py for
the oldest jax segjax supports, attached one level deeper than its name (as an uploaded folder
is), installed with --no-index into an "image" that holds exactly that jax and jaxlib (from the
package index, not this environment's), the competition found wherever it is under the input
folder, a real Jupyter kernel running in the image's environment (its one library cell
too); then a second session that finds the first one's output and
continues its run. And what that install holds: the library only, and the `segjax` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from segjax.data import layout
from segjax.inference import submission
from tests.conftest import floor_versions, make_venv

pytestmark = pytest.mark.slow  # builds wheels and a venv, trains, runs a kernel

ROOT = Path(__file__).resolve().parents[1]


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    )


def _kernel(tmp_path: Path, python: Path) -> None:
    """A Jupyter kernel named "image" that runs in the image's environment (as a Kaggle
    notebook's kernel runs in the image's Python)."""
    import json

    spec = tmp_path / "jupyter" / "kernels" / "image"
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "image", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))


def _run_notebook(tmp_path: Path) -> str:
    """Execute the notebook in a real kernel of the image; its printed output."""
    import nbclient
    import nbformat

    notebook = nbformat.read(ROOT / "examples" / "kaggle.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="image", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    return "".join(
        o.get("text", "")
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream"
    )


def test_the_kaggle_notebook_installs_offline_trains_submits_and_continues(
    demo_dir, tmp_path, monkeypatch
):
    pytest.importorskip("nbclient")
    floors = floor_versions()
    jax, jaxlib = floors["jax"], floors["jaxlib"]
    inputs = tmp_path / "input"
    # Attached datasets nest one level deeper than their names when uploaded as a folder.
    wheels = inputs / "segjax-wheels" / "segjax-wheels"
    built = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "offline_wheels.py"), str(wheels)]
        + ["--jax", jax, "--jaxlib", jaxlib, "--no-check"],  # the notebook's install checks it
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert not list(wheels.glob("jax-*")) and not list(wheels.glob("jaxlib-*"))
    (wheel,) = wheels.glob("segjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "segjax/models/encoders.py" in names and "segjax/cli/commands.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "benchmarks/", "docs/"))]
    data = inputs / "competition" / "competition"
    shutil.copytree(demo_dir, data)
    before = _listing(data)
    # The image: the floor jax and jaxlib from the package index, nothing of segjax.
    env = tmp_path / "image"
    python = make_venv(env)
    image = [f"jax=={jax}", f"jaxlib=={jaxlib}", "ipykernel"]
    subprocess.run([python, "-m", "pip", "install", "--quiet", *image], check=True)
    _kernel(tmp_path, python)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "working"
    work.mkdir()
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the kernel's commands: the venv's only
    for name in list(os.environ):  # what this process set for its own jax is not the image's
        if name.startswith(("XLA_", "JAX_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", f"{env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("SEGJAX_INPUT", str(inputs))
    monkeypatch.setenv("SEGJAX_WORK", str(work))
    monkeypatch.setenv(
        "SEGJAX_TRAIN_FLAGS",
        "--image-size 32 --features 4 --depth 2 --val-fraction 0.2 --epochs 2 --time-budget 10 "
        "--no-progress --encoder scratch",
    )
    out = _run_notebook(tmp_path)
    assert f"jax {jax}, jaxlib {jaxlib}" in out and "devices: 1 cpu device" in out
    assert f"wheels: {wheels}" in out and f"data:   {data}" in out
    assert "precision: fp32" in out and "at the images' original size" in out
    assert "unet on scratch, 2 epochs" in out and "best epoch " in out  # the library's view
    # The submission where Kaggle looks for it, valid by segjax's own check.
    path = work / "submission.csv"
    test = layout.discover(data).test
    from PIL import Image

    sizes = [Image.open(s.image).size[::-1] for s in test]
    assert submission.validate(path, [s.id for s in test], sizes) < 1.0
    (run,) = (work / "runs").iterdir()
    assert (run / "evaluation_val.csv").exists()
    # The installed segjax is the wheel's, in the image's venv; the data folder is untouched.
    where = subprocess.run(
        [python, "-c", "import jax, segjax; print(segjax.__file__, jax.__version__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    (site,) = env.glob("lib/python*/site-packages")
    assert where.stdout.startswith(str(site)) and where.stdout.split()[-1] == jax, where
    assert _listing(data) == before
    # The wheel's command outside the checkout: its commands, and `python -m segjax`.
    command = lambda *argv: subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    train_help = command(str(env / "bin" / "segjax"), "train", "--help")
    assert (
        train_help.returncode == 0 and "--encoder {scratch,efficientnet-lite0" in train_help.stdout
    )
    module = command(str(python), "-m", "segjax", "submit", "--help")
    assert module.returncode == 0 and "usage: segjax submit" in module.stdout, module.stderr

    # A second session: the first one's output attached (nested), an empty working folder.
    first = path.read_text()
    shutil.move(work, inputs / "session-1" / "session-1")
    work.mkdir()
    out = _run_notebook(tmp_path)
    assert "copied the previous session's run from" in out
    # The same flags continue the same run: here a finished one, so nothing trains again.
    assert f"run folder: {work / 'runs' / run.name}" in out
    assert "resuming at epoch 3 batch 0" in out and "epoch   1  loss" not in out
    assert (work / "submission.csv").read_text() == first
