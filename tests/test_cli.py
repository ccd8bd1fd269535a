"""Command lines: --help for every script, flags onto the config, the demo preset, resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segjax.cli import commands, flags
from segjax.config import Config
from segjax.errors import UserError
from segjax.fields import flag_of, parse_size
from segjax.runs import run_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "script",
    [
        "train.py",
        "submit.py",
        "evaluate.py",
        "predict.py",
        "export.py",
        "benchmark.py",
        "experiments.py",
    ],
)
@pytest.mark.slow
def test_help(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--" in result.stdout


def test_flags_map_onto_the_config():
    args = commands.parser_of("train").parse_args(
        [
            "--data-dir",
            "/d",
            "--image-size",
            "256x192",
            "--arch",
            "attn",
            "--features",
            "8",
            "--dropout",
            "0.3",
            "--dropout-deep-only",
            "--double-conv",
            "--no-batch-norm",
            "--loss",
            "focal_tversky",
            "--schedule",
            "plateau",
            "--epochs",
            "7",
            "--precision",
            "bf16",
            "--grayscale",
            "--aug",
            "strong",
            "--name",
            "exp",
        ]
    )
    config = flags.train_config(args)
    assert config.name == "exp" and config.data.data_dir == "/d"
    assert config.data.image_size == (256, 192) and config.data.grayscale
    m = config.model
    assert (m.arch, m.features, m.dropout, m.dropout_deep_only, m.double_conv, m.batch_norm) == (
        "attn",
        8,
        0.3,
        True,
        True,
        False,
    )
    from segjax.train.precision import COMPUTE_DTYPES  # the library applies it, not the CLI

    assert config.train.precision == "bf16" and COMPUTE_DTYPES["bf16"] == "bfloat16"
    t = config.train
    assert (t.loss, t.schedule, t.epochs, t.aug) == ("focal_tversky", "plateau", 7, "strong")


def test_without_data_dir_the_demo_preset_applies_unless_overridden():
    config = flags.train_config(commands.parser_of("train").parse_args([]))
    demo = Config.demo()
    assert config.data.data_dir == "" and config.data.image_size == demo.data.image_size
    assert config.model == demo.model and config.train.epochs == demo.train.epochs
    config = flags.train_config(commands.parser_of("train").parse_args(["--features", "24"]))
    assert config.model.features == 24
    real = flags.train_config(commands.parser_of("train").parse_args(["--data-dir", "x"]))
    assert real.data.image_size == (256, 256) and real.model == Config().model


def test_parse_size():
    assert parse_size("256") == (256, 256) and parse_size("256x192") == (256, 192)
    assert parse_size("0") == (0, 0)  # too small for any model: its checks say so
    for bad in ("", "2x3x4", "ax2"):
        with pytest.raises(ValueError, match="expected N or HxW"):
            parse_size(bad)


def test_run_folders(tmp_path):
    first = run_folder.new_run_dir(tmp_path, None, "unet")
    assert first.parent == tmp_path and first.name.startswith("unet-")
    with pytest.raises(UserError, match="no trained runs under"):
        run_folder.newest_run(tmp_path)


@pytest.mark.slow
def test_train_script_end_to_end_with_resume(demo_dir, tmp_path, monkeypatch, capsys):
    """The real command line: train 1 of 2 epochs (a process of its own), then, as the same
    command in this process: refuse a reused name and a changed flag, resume (the original
    command with --resume and a longer --epochs), submit."""
    common = [
        "--data-dir",
        str(demo_dir),
        "--image-size",
        "32",
        "--encoder",
        "scratch",  # the smallest model: this test is about the command line
        "--features",
        "4",
        "--depth",
        "2",
        "--batch-size",
        "4",
        "--eval-batch-size",
        "4",
        "--epochs",
        "2",
        "--val-fraction",
        "0.2",
        "--name",
        "cli",
        "--no-progress",
    ]
    train = [sys.executable, str(ROOT / "scripts/train.py")]
    run = lambda argv: subprocess.run(
        argv, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    first = run([*train, *common, "--stop-at-epoch", "1"])
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "cli"
    assert not (run_dir / "tuned.json").exists()  # tuning waits for the last epoch
    monkeypatch.chdir(tmp_path)
    for argv, message in [
        ([*common, "--arch", "attn"], "runs/cli already holds a trained run: add --resume"),
        (["--resume", "--name", "cli", "--lr", "0.5"], "--lr 0.5 (the run has 0.001)"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            commands.run("train", argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    commands.run("train", [*common, "--resume", "--epochs", "3"])
    second = capsys.readouterr().out
    assert "the cosine schedule now spans 3 epochs" in second
    assert "epoch   3" in second and "epoch   1 " not in second
    assert (run_dir / "tuned.json").exists()
    assert run_folder.load_config(run_dir / "config.json").train.epochs == 3
    commands.run("submit", ["--no-progress"])
    assert "submission.csv: 9 rows" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data-dir", "/nonexistent/data"], "error: /nonexistent/data: no such data folder"),
        (["--image-size", "8"], "error: --image-size 8x8 is smaller than the model's total stride"),
        (["--image-size", "a"], "error: --image-size: image size 'a': expected N or HxW"),
        (
            ["--val-fraction", "0.7", "--test-fraction", "0.5"],
            "error: --val-fraction 0.7 and --test-fraction 0.5: their sum must be less than 1",
        ),
        (["--folds", "3"], "error: --folds K and --fold I|all come together"),
        (["--folds", "3", "--fold", "one"], "error: --fold one: expected a fold number or all"),
        (["--folds", "3", "--fold", "3"], "error: --folds 3 --fold 3: need K >= 2 and 0 <= fold"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_traceback(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        commands.run("train", [*argv, "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_submit_without_runs_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        commands.run("submit", [])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: no trained runs under")


def test_flags_come_from_the_config_fields_and_their_choices_from_the_library_tables():
    import dataclasses

    from segjax.config import ModelConfig, TrainConfig, options
    from segjax.losses import LOSSES
    from segjax.models.registry import ARCHS, ENCODERS

    fields = {f.name: f for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)}
    assert flags.choices(fields["arch"]) == list(ARCHS)
    assert flags.choices(fields["encoder"]) == list(ENCODERS)
    assert flags.choices(fields["loss"]) == list(LOSSES)
    parser = commands.parser_of("train")
    help_text = parser.format_help()
    assert "(default 30; demo 20)" in help_text and "(default: None)" not in help_text
    for _, field in options():  # every setting with a flag has one, and its help
        assert flag_of(field) in help_text, field.name
    args = parser.parse_args(["--no-batch-norm", "--grayscale", "--arch", "unetpp"])
    config = flags.train_config(args)
    assert not config.model.batch_norm and config.data.grayscale and config.model.arch == "unetpp"


def test_the_cli_reference_page_is_current():
    from segjax.cli.reference import markdown

    page = ROOT / "docs" / "cli.md"
    assert page.read_text() == markdown(), "docs/cli.md is stale: run python tools/cli_reference.py"


def test_the_segjax_command_lists_and_runs_its_commands(capsys):
    from segjax.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ("train", "submit", "evaluate", "predict", "export"))
    with pytest.raises(SystemExit) as exit_:
        main(["trian"])
    assert exit_.value.code == 2 and "unknown command 'trian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["submit", "--help"])
    assert exit_.value.code == 0 and "usage: segjax submit" in capsys.readouterr().out


def _bad_values(valid) -> list:
    """Values just outside a range: below its low end, above its high end."""
    bad = []
    if valid.low is not None:
        bad.append(valid.low if valid.low_open else valid.low - 1)
    if valid.high is not None:
        bad.append(valid.high if valid.high_open else valid.high + 1)
    return bad


def _numeric_flags() -> list[tuple[str, str, object, str]]:
    """(command, flag, bad value, expected message) for every numeric flag of every command."""
    import dataclasses

    from segjax.config import InferenceOptions, RunOptions, options

    cases = []
    for name in commands.COMMANDS:
        parser = commands.parser_of(name)
        typed = {o for a in parser._actions for o in a.option_strings}
        fields = [f for _, f in options()] if name == "train" else []
        fields += dataclasses.fields(RunOptions) if name == "train" else []
        fields += dataclasses.fields(InferenceOptions)
        for field in fields:
            valid = field.metadata.get("valid")
            if valid is None or flag_of(field) not in typed:
                continue
            for value in _bad_values(valid):
                cases.append((name, flag_of(field), value, valid.refuses(value)))
    return cases


REQUIRED = {"predict": ["in.png", "--out", "masks"], "export": ["--out", "model.jaxexport"]}


@pytest.mark.parametrize("command, flag, value, why", _numeric_flags())
def test_every_numeric_flag_of_every_command_is_checked_before_any_work(
    command, flag, value, why, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    quiet = (
        ["--no-progress"] if "--no-progress" in commands.parser_of(command).format_help() else []
    )
    with pytest.raises(SystemExit) as exit_:
        commands.run(command, [flag, str(value), *REQUIRED.get(command, []), *quiet])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {flag} {value:g}: {why}\n", err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_numeric_flags_cover_every_command_that_has_one():
    covered = {(c, f) for c, f, _, _ in _numeric_flags()}
    for pair in [
        ("train", "--batch-size"),
        ("train", "--lr"),
        ("train", "--epochs"),
        ("train", "--dropout"),
        ("train", "--weight-decay"),
        ("train", "--val-fraction"),
        ("train", "--time-budget"),
        ("train", "--session-limit"),
        ("submit", "--threshold"),
        ("submit", "--batch-size"),
        ("evaluate", "--threshold"),
        ("predict", "--threshold"),
        ("export", "--threshold"),
    ]:
        assert pair in covered, pair


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("train", ["--image-size", "0"], "error: --image-size 0x0 is smaller than the model's "),
        ("train", ["--val-fraction", "0.6", "--test-fraction", "0.5"], "error: --val-fraction"),
        ("train", ["--folds", "1", "--fold", "0"], "error: --folds 1: use 0"),
        ("predict", ["in.png", "--out", "masks.png"], "error: --out masks.png: looks like a file"),
        ("predict", ["in.png", "--out", "taken.txt"], "error: --out taken.txt: an existing file"),
        (
            "submit",
            ["--out", "."],
            "error: --out .: a folder; give the file to write, e.g. submission.csv",
        ),
        ("evaluate", ["--out-dir", "taken.txt"], "error: --out-dir taken.txt: an existing file"),
    ],
)
def test_bad_sizes_and_outputs_get_one_line_and_create_nothing(
    command, argv, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.txt").write_text("mine")
    (tmp_path / "in.png").write_bytes(b"")
    (tmp_path / "runs" / "done" / "checkpoints" / "1").mkdir(parents=True)  # a "trained" run
    run_folder.save_config(Config(), tmp_path / "runs" / "done" / "config.json")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    quiet = (
        ["--no-progress"] if "--no-progress" in commands.parser_of(command).format_help() else []
    )
    with pytest.raises(SystemExit) as exit_:
        commands.run(command, [*argv, *quiet])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_switches_say_what_their_flag_does():
    help_text = " ".join(commands.parser_of("train").format_help().split())
    assert "--no-batch-norm off: BatchNorm after every convolution (on by default)" in help_text
