"""Run folders: a folder with a run needs --resume or --overwrite; what a resume may change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from segjax.config import Config, RunFacts, replace
from segjax.errors import UserError
from segjax.runs import metrics_log, run_folder
from tools.migrate_run import _migrate_config


def fake_run(folder):
    """A run folder as training leaves it, plus a file of the user's own."""
    (folder / "checkpoints/3").mkdir(parents=True)
    (folder / "previews").mkdir()
    (folder / "previews/epoch_001.png").write_bytes(b"png")
    for name in ("metrics.jsonl", "tuned.json", "submission.csv", "curves.png"):
        (folder / name).write_text("x")
    run_folder.write_run(folder, Config(), RunFacts())
    (folder / "my_notes.txt").write_text("keep me")
    return folder


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    folder = fake_run(tmp_path / "exp")
    with pytest.raises(
        UserError, match=r"exp already holds a trained run: add --resume .*--overwrite"
    ):
        run_folder.claim(folder, resume=False, overwrite=False)
    run_folder.claim(folder, resume=True, overwrite=False)  # continuing is fine
    run_folder.claim(tmp_path / "new", resume=False, overwrite=False)  # so is a new folder
    with pytest.raises(UserError, match="pick one"):
        run_folder.claim(folder, resume=True, overwrite=True)


def test_overwrite_removes_what_segjax_wrote_and_nothing_else(tmp_path, capsys):
    folder = fake_run(tmp_path / "exp")
    run_folder.claim(folder, resume=False, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["my_notes.txt"]
    said = capsys.readouterr().out
    assert said.startswith("--overwrite: removed config.json, run.json, metrics.jsonl, checkpoints")
    assert "submission.csv" in said and str(folder) in said


def test_resume_refuses_flags_that_change_the_run_and_names_them(tmp_path):
    folder = fake_run(tmp_path / "exp")
    same = {
        ("train", "lr"): ("--lr", Config().train.lr),
        ("model", "arch"): ("--arch", "unet"),
        ("data", "image_size"): ("--image-size", (256, 256)),
    }
    assert run_folder.resume_config(folder, same) == Config()  # the original command + --resume
    longer = run_folder.resume_config(folder, {("train", "epochs"): ("--epochs", 50), **same})
    assert longer.train.epochs == 50
    changed = {("train", "lr"): ("--lr", 1e-4), ("model", "arch"): ("--arch", "attn")}
    with pytest.raises(UserError) as err:
        run_folder.resume_config(folder, changed)
    assert "--lr 0.0001 (the run has 0.001)" in str(err.value)
    assert "--arch attn (the run has unet)" in str(err.value)
    with pytest.raises(UserError, match="nothing to resume"):
        run_folder.resume_config(tmp_path / "missing", {})


def test_settings_and_facts_are_kept_apart_and_old_run_folders_load_once_migrated(tmp_path):
    config = Config()
    facts = RunFacts(
        mean=(0.5,) * 3, std=(0.2,) * 3, dtype="bfloat16", epochs=7, encoder_source="x"
    )
    run_folder.write_run(tmp_path, config, facts)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "mean" not in saved["data"] and "dtype" not in saved["model"]  # the user's settings
    assert run_folder.read_run(tmp_path) == (config, facts)
    # A run folder from before run.json: the facts lived in config.json, the plan in its epochs.
    saved["data"].update(mean=[0.5] * 3, std=[0.2] * 3)
    saved["model"].update(dtype="bfloat16", encoder_source="x")
    saved["train"]["epochs"] = 7
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "run.json").unlink()
    with pytest.raises(UserError, match="convert it with python tools/migrate_run.py"):
        run_folder.read_run(tmp_path)
    assert _migrate_config(tmp_path) == facts  # what tools/migrate_run.py does first
    old_config, old_facts = run_folder.read_run(tmp_path)
    assert old_facts == facts and old_config == replace(config, train={"epochs": 7})


def test_the_newest_run_is_the_newest_that_holds_a_checkpoint(tmp_path):
    trained = fake_run(tmp_path / "trained")
    untrained = tmp_path / "untrained"  # config.json only: stopped before its first epoch
    untrained.mkdir()
    run_folder.save_config(Config(), untrained / "config.json")
    assert run_folder.newest_run(tmp_path) == trained
    shutil.rmtree(trained)
    with pytest.raises(
        UserError, match=r"no trained runs under .* \(untrained holds no checkpoint"
    ):
        run_folder.newest_run(tmp_path)


def _events(run_dir: Path) -> list:
    """The `Event` messages of a run's TensorBoard files (length-prefixed records)."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4  # the length, its CRC, the record, its CRC
    return events


@pytest.mark.slow
def test_the_tensorboard_log_holds_every_epochs_scalars_and_preview(trained_run):
    """The conftest's run trained with --log tensorboard: each epoch's rows of metrics.jsonl
    are in the event file at the epoch's last step, with the step time and the preview."""
    pytest.importorskip("tensorboardX")
    rows = metrics_log.read_metrics(trained_run / "metrics.jsonl")
    scalars, images = {}, set()
    for event in _events(trained_run):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
            elif value.HasField("image"):
                images.add((value.tag, event.step))
    steps = [row["step"] for row in rows]
    for key, tag in (("train_loss", "loss/train"), ("val_mean_dice", "dice/validation_mean")):
        assert [s for s, _ in scalars[tag]] == steps
        assert [v for _, v in scalars[tag]] == pytest.approx([row[key] for row in rows])
    assert [s for s, _ in scalars["time/seconds_per_step"]] == steps
    assert images == {("preview", step) for step in steps}
