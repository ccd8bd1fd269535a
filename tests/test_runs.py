"""Run folders: a folder with a run needs --resume or --overwrite; what a resume may change."""

from __future__ import annotations

import pytest

from segjax import runs
from segjax.config import Config, save_config
from segjax.errors import UserError


def fake_run(folder):
    """A run folder as training leaves it, plus a file of the user's own."""
    (folder / "checkpoints/3").mkdir(parents=True)
    (folder / "previews").mkdir()
    (folder / "previews/epoch_001.png").write_bytes(b"png")
    for name in ("metrics.jsonl", "tuned.json", "submission.csv", "curves.png"):
        (folder / name).write_text("x")
    save_config(Config(), folder / "config.json")
    (folder / "my_notes.txt").write_text("keep me")
    return folder


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    folder = fake_run(tmp_path / "exp")
    with pytest.raises(
        UserError, match=r"exp already holds a trained run: add --resume .*--overwrite"
    ):
        runs.claim(folder, resume=False, overwrite=False)
    runs.claim(folder, resume=True, overwrite=False)  # continuing is fine
    runs.claim(tmp_path / "new", resume=False, overwrite=False)  # so is a new folder
    with pytest.raises(UserError, match="pick one"):
        runs.claim(folder, resume=True, overwrite=True)


def test_overwrite_removes_what_segjax_wrote_and_nothing_else(tmp_path, capsys):
    folder = fake_run(tmp_path / "exp")
    runs.claim(folder, resume=False, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["my_notes.txt"]
    said = capsys.readouterr().out
    assert said.startswith("--overwrite: removed config.json, metrics.jsonl, checkpoints")
    assert "submission.csv" in said and str(folder) in said


def test_resume_refuses_flags_that_change_the_run_and_names_them(tmp_path):
    folder = fake_run(tmp_path / "exp")
    same = {
        ("train", "lr"): ("--lr", Config().train.lr),
        ("model", "arch"): ("--arch", "unet"),
        ("data", "image_size"): ("--image-size", (256, 256)),
    }
    assert runs.resume_config(folder, same) == Config()  # the original command + --resume
    longer = runs.resume_config(folder, {("train", "epochs"): ("--epochs", 50), **same})
    assert longer.train.epochs == 50
    changed = {("train", "lr"): ("--lr", 1e-4), ("model", "arch"): ("--arch", "attn")}
    with pytest.raises(UserError) as err:
        runs.resume_config(folder, changed)
    assert "--lr 0.0001 (the run has 0.001)" in str(err.value)
    assert "--arch attn (the run has unet)" in str(err.value)
    with pytest.raises(UserError, match="nothing to resume"):
        runs.resume_config(tmp_path / "missing", {})
