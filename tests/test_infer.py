"""scripts/predict.py (masks for any images) and scripts/export.py (a model without segjax)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segjax.cli import commands
from segjax.config import InferenceOptions
from segjax.data import decode, layout
from segjax.inference import rle, submission
from segjax.inference.export import export_run
from segjax.inference.run_loader import load_run
from tests.conftest import all_probs

ROOT = Path(__file__).resolve().parents[1]


def test_predict_writes_the_submissions_masks_at_each_images_size(trained_run, demo_dir, tmp_path):
    sub = submission.make_submission(
        trained_run, InferenceOptions(progress=False), out=tmp_path / "sub.csv"
    )
    rows = dict(line.split(",") for line in sub.path.read_text().splitlines()[1:])
    out = tmp_path / "masks"
    with pytest.raises(SystemExit) as exit_:
        commands.run(
            "predict",
            [
                "--run-dir",
                str(trained_run),
                str(demo_dir / "test/images"),
                "--out",
                str(out),
                "--overlay",
                "--probs",
                "--no-progress",
            ],
        )
    assert exit_.value.code == 0
    for sample in layout.discover(demo_dir).test:
        size = np.asarray(decode.read_image(sample.image)).shape[:2]
        mask = np.asarray(Image.open(out / f"{sample.image.stem}.png"))
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, rle.decode(rows[sample.id], size))
        assert Image.open(out / f"{sample.image.stem}_overlay.png").size == size[::-1]
        assert Image.open(out / f"{sample.image.stem}_prob.png").mode == "L"


def test_predict_names_bad_files_refuses_to_overwrite_and_to_mix_stems(
    trained_run, demo_dir, tmp_path, capsys
):
    inputs = tmp_path / "in"
    shutil.copytree(demo_dir / "test/images", inputs)
    (inputs / "broken.png").write_bytes(b"\\x89PNG not really")
    out = tmp_path / "out"
    argv = ["--run-dir", str(trained_run), str(inputs), "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        commands.run("predict", argv)
    assert exit_.value.code == 1  # the others were written; the broken one is named
    err = capsys.readouterr().err
    assert "skipped:" in err and "broken.png" in err
    assert len(list(out.glob("*.png"))) == 9
    with pytest.raises(SystemExit) as exit_:
        commands.run("predict", argv)
    assert exit_.value.code == 2 and "add --force" in capsys.readouterr().err
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(inputs / "5000.png", twin / "5000.jpg")
    with pytest.raises(SystemExit) as exit_:
        commands.run("predict", [*argv[:3], str(twin), "--out", str(tmp_path / "o2")])
    assert exit_.value.code == 2 and "would both write 5000.png" in capsys.readouterr().err


LOADER = """
import sys
sys.modules["segjax"] = None  # the exported model needs neither segjax nor flax
sys.modules["flax"] = None
sys.path.insert(0, sys.argv[1])
import numpy as np
import run_exported
model = run_exported.load(sys.argv[2])
np.save(sys.argv[4], run_exported.probabilities(model, np.load(sys.argv[3])))
"""


def test_the_exported_model_gives_predicts_probabilities_without_segjax(trained_run, tmp_path):
    out = tmp_path / "model.jaxexport"
    record = export_run(trained_run, out)
    assert {"cpu", "cuda"} <= set(record["platforms"])
    assert json.loads(out.with_name("model.jaxexport.json").read_text())["image_size"] == [32, 32]
    loaded = load_run(trained_run)
    from segjax.data import sources

    splits = sources.load_splits(loaded.config)
    images = np.asarray(splits.arrays.images[:5])  # five: not a multiple of any batch size
    np.save(tmp_path / "x.npy", images)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LOADER,
            str(ROOT / "tools"),
            str(out),
            str(tmp_path / "x.npy"),
            str(tmp_path / "p.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = all_probs(loaded, images, 4, tta=record["tta"])
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=0, atol=1e-6)
