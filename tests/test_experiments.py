"""The experiments table is read from run folders; commands are complete and parse."""

from __future__ import annotations

import json

from segjax import cli, experiments


def fake_run(root, name, dice, tta=False):
    run = root / name
    run.mkdir(parents=True)
    results = {
        f"tta={t} postprocess={p}": {"dice": dice + 0.01 * (p == "on"), "global_dice": dice}
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
    assert experiments.best_experiment("runs") == "attn"
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
        config = cli.train_config(cli.train_parser().parse_args(argv))
        assert config.data.test_fraction == 0.1 and config.data.val_fraction == 0.1
    valid = experiments.train_command("unet-valid")[2:]
    config = cli.train_config(cli.train_parser().parse_args(valid))
    assert config.model.arch == "unet-valid" and config.model.depth == 3
