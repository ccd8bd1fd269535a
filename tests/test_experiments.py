"""The experiments table is read from run folders; commands are complete and parse."""

from __future__ import annotations

import json

import pytest

from segjax.cli import commands, flags
from tools import experiments


def fake_run(root, name, dice, tta=False):
    run = root / name
    run.mkdir(parents=True)
    results = {
        f"tta={t} postprocess={p}": {"mean_dice": dice + 0.01 * (p == "on"), "global_dice": dice}
        for t in ("on", "off")
        for p in ("on", "off")
    }
    (run / "evaluation_test.json").write_text(json.dumps({"results": results}))
    (run / "timing.jsonl").write_text('{"train_seconds": 60}\n{"train_seconds": 90}\n')
    (run / "tuned.json").write_text(json.dumps({"tta": tta}))


def test_table_reads_run_folders_and_marks_missing_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "ROOT", tmp_path)
    fake_run(tmp_path / experiments.RESULTS, "baseline", 0.80)
    fake_run(tmp_path / experiments.RESULTS, "attn", 0.85, tta=True)
    text = experiments.table("runs")
    assert "| baseline | UNet, RGB" in text and "| 0.8000 | 0.8000 | 0.8100 | 2 | 2.5 |" in text
    assert "| grayscale | grayscale input | not run |" in text
    assert experiments.best_experiment() == "attn"
    finetune = experiments.train_command(experiments.FINETUNE[0], runs_root="runs")
    assert finetune[-6:] == [
        "--warmup-epochs",
        "0",
        "--init-from",
        "runs/attn",
        "--run-dir",
        "runs/finetune-focal-tversky",
    ]


def test_every_experiment_command_parses_into_a_config():
    for name in experiments.EXPERIMENTS:
        argv = experiments.train_command(name)[2:]
        config = flags.train_config(commands.parser_of("train").parse_args(argv))
        assert config.data.test_fraction == 0.1 and config.data.val_fraction == 0.1
    valid = experiments.train_command("unet-valid")[2:]
    config = flags.train_config(commands.parser_of("train").parse_args(valid))
    assert config.model.arch == "unet-valid" and config.model.depth == 3


def test_findings_call_differences_within_the_seed_spread_noise(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "ROOT", tmp_path)
    results = tmp_path / experiments.RESULTS
    for name, dice in [("baseline", 0.90), ("baseline-seed1", 0.905), ("aug-none", 0.92)]:
        fake_run(results, name, dice)
    fake_run(results, "grayscale", 0.903)  # inside the 0.005 spread
    fake_run(results, "unet-valid", 0.93)  # the course project found valid convolutions worse
    text = "\n".join(experiments.findings())
    assert "Run-to-run spread (baseline with seeds 0 and 1): 0.0050" in text
    assert "| grayscale | baseline | +0.0030 | grayscale" in text and "| within noise |" in text
    assert "| aug-none | baseline | +0.0200 |" in text and "| agrees |" in text
    assert "| unet-valid | baseline | +0.0300 |" in text and "| **contradicts** |" in text
    assert "| resunet | baseline | not run |" in text


def test_best_run_previews_are_kept_and_linked(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "ROOT", tmp_path)
    results = tmp_path / experiments.RESULTS
    fake_run(results, "baseline", 0.80)
    fake_run(results, "attn", 0.85)
    (results / "baseline" / "worst_test.png").write_bytes(b"old best")
    run = tmp_path / "runs" / "attn"
    (run / "previews").mkdir(parents=True)
    rows = [
        {"epoch": 1, "val_mean_dice": 0.7},
        {"epoch": 2, "val_mean_dice": 0.9},
        {"epoch": 3, "val_mean_dice": 0.8},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for epoch in (1, 2, 3):
        (run / f"previews/epoch_{epoch:03d}.png").write_bytes(f"epoch {epoch}".encode())
    (run / "worst_test.png").write_bytes(b"worst")
    assert experiments.keep_best_previews("runs") == ["preview_best_epoch.png", "worst_test.png"]
    assert (results / "attn" / "preview_best_epoch.png").read_bytes() == b"epoch 2"
    assert not (results / "baseline" / "worst_test.png").exists()
    assert "](experiments/attn/worst_test.png)" in experiments.table("runs")


def test_a_claimed_difference_inside_the_noise_is_not_confirmed(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "ROOT", tmp_path)
    results = tmp_path / experiments.RESULTS
    for name, dice in [("baseline", 0.90), ("baseline-seed1", 0.905), ("resunet", 0.902)]:
        fake_run(results, name, dice)
    text = "\n".join(experiments.findings())
    assert "| resunet | baseline | +0.0020 |" in text
    assert "| not confirmed (within noise) |" in text


@pytest.mark.slow
def test_an_unknown_experiment_name_is_a_clear_error():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "experiments.py"
    done = subprocess.run(
        [sys.executable, str(script), "--run", "baseline", "no-such-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "unknown experiment no-such-run; see --list" in done.stderr
