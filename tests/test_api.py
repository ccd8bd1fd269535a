"""segjax as a library: docs/api.md's example runs as written; settings are checked as their
flags are; mistakes raise segjax.errors exceptions and never exit; `import segjax` is light."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import segjax
from segjax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_import_segjax_imports_no_jax():
    code = "import sys, segjax; print('jax' in sys.modules, segjax.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.startswith("False"), done.stdout + done.stderr
    assert "train" in done.stdout and "Config" in done.stdout


def test_settings_are_checked_as_their_flags_are():
    config = segjax.Config.build({"arch": "attn"}, image_size="64x48", lr=2e-3)
    assert (config.model.arch, config.data.image_size, config.train.lr) == ("attn", (64, 48), 2e-3)
    assert config.model.encoder == "scratch"  # no data_dir: the demo preset, as the command
    assert segjax.Config.build(data_dir="d").model.encoder == "efficientnet-lite0"
    for bad, message in [
        ({"arch": "unet3"}, r"arch='unet3': choose one of unet, "),
        ({"encoder": "vgg"}, r"encoder='vgg': choose one of scratch, "),
        ({"lr": "fast"}, r"lr='fast': expected a number"),
        ({"epochs": 2.5}, r"epochs=2.5: expected int"),
        ({"lr": 0}, r"--lr 0: must be greater than 0"),
        ({"image_size": "wide"}, r"image_size='wide': image size 'wide': expected N or HxW"),
        ({"colour": "red"}, r"unknown setting colour"),
    ]:
        with pytest.raises(UserError, match=message):
            segjax.Config.build(**bad)


def test_a_mistake_raises_and_never_exits(tmp_path):
    with pytest.raises(segjax.errors.UserError, match="no config.json"):
        segjax.Run.open(tmp_path)
    with pytest.raises(UserError, match="not an image"):
        from segjax.inference.masks import _as_image

        _as_image(object(), grayscale=False)
    with pytest.raises(UserError, match="unknown option threshhold; choose from .*threshold"):
        segjax.predict(tmp_path, [], threshhold=0.4)  # named before the folder is read


@pytest.mark.slow
def test_the_example_in_docs_api_md_runs(tmp_path, trained_run):
    """The example as written, in a fresh process and folder; then `predict` on a trained run
    gives each image's mask at its own size."""
    text = (ROOT / "docs" / "api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # the run's own lines come first (the start block, each epoch, the tuning), then the prints
    (ended,) = [line for line in lines if line.startswith("Ended.")]
    assert ended.startswith(("Ended.FINISHED 2 ", "Ended.FINISHED 1 ")), done.stdout
    assert (tmp_path / "runs" / "api-demo" / "submission.csv").exists()
    assert lines[-1] == "(90, 120) uint8"
    images = [np.zeros((30, 50, 3), np.uint8), np.full((41, 23), 200, np.uint8)]
    masks = segjax.predict(trained_run, images, progress=False)
    assert [m.shape for m in masks] == [(30, 50), (41, 23)]
    assert all(set(np.unique(m)) <= {0, 1} for m in masks)
