"""Predict, tune, submit and evaluate end to end on a tiny trained run."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segjax import errors, workflows
from segjax.config import InferenceOptions, RunOptions
from segjax.data import decode, layout
from segjax.errors import UserError
from segjax.inference import postprocess, predictor, rle, submission, tuning
from segjax.inference.postprocess import PostProcess
from segjax.inference.run_loader import load_run
from segjax.runs import run_folder
from segjax.train import loop
from tests.conftest import all_probs

ROOT = Path(__file__).resolve().parents[1]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_tuned_json_is_written_at_the_end_of_training(trained_run):
    record = json.loads((trained_run / "tuned.json").read_text())
    assert 0.3 <= record["postprocess"]["threshold"] <= 0.7
    assert record["dice_tuned"] >= record["dice_threshold_only"] - 1e-9
    assert record["dice_tuned"] >= record["dice_at_0.5"] - 1e-9
    assert record["val_images"] == 8 and isinstance(record["tta"], bool)
    assert tuning.load_tuned(trained_run)[0] == PostProcess(**record["postprocess"])


def test_batch_sizes_1_3_7_give_byte_identical_csvs(trained_run, tmp_path):
    texts = []
    for batch in (1, 3, 7):
        report = submission.make_submission(
            trained_run,
            InferenceOptions(batch_size=batch, progress=False),
            out=tmp_path / f"{batch}.csv",
        )
        assert report.rows == 9 and report.empty_fraction < 0.5  # real masks, not all empty
        texts.append((tmp_path / f"{batch}.csv").read_bytes())
    assert texts[0] == texts[1] == texts[2]


def test_submission_matches_direct_predictions_at_original_size(trained_run, demo_dir):
    report = submission.make_submission(trained_run, InferenceOptions(progress=False))
    assert report.path == trained_run / "submission.csv" and report.empty_fraction < 0.5
    rows = read_rows(report.path)
    found = layout.discover(demo_dir)
    assert rows[0] == ["id", "encoded_pixels"]
    assert [r[0] for r in rows[1:]] == [s.id for s in found.test]  # sample_submission's order
    loaded = load_run(trained_run)
    config = loaded.config
    arrays = decode.load(found.test, config.data.image_size, config.data.grayscale)
    probs = all_probs(loaded, arrays.images, 4, report.tta)
    params, _ = tuning.load_tuned(trained_run)
    for (image_id, encoded), prob, sample in zip(rows[1:], probs, found.test, strict=True):
        height, width = np.asarray(decode.read_image(sample.image)).shape[:2]
        decoded = rle.decode(encoded, (height, width))
        expected = postprocess.apply(predictor.resize_prob(prob, (height, width)), params)
        assert decoded.shape == (height, width)
        np.testing.assert_array_equal(decoded, expected, err_msg=image_id)


def test_row_order_does_not_depend_on_the_directory_listing(
    trained_run, demo_dir, tmp_path, monkeypatch
):
    first = submission.make_submission(
        trained_run, InferenceOptions(progress=False), out=tmp_path / "a.csv"
    )
    listing = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: reversed(list(listing(self))))
    second = submission.make_submission(
        trained_run, InferenceOptions(progress=False), out=tmp_path / "b.csv"
    )
    assert first.path.read_bytes() == second.path.read_bytes()
    monkeypatch.undo()
    # Without sample_submission.csv: ids sorted as strings.
    copy = tmp_path / "data"
    shutil.copytree(demo_dir, copy)
    (copy / "sample_submission.csv").unlink()
    third = submission.make_submission(
        trained_run, InferenceOptions(progress=False), data_dir=copy, out=tmp_path / "c.csv"
    )
    ids = [r[0] for r in read_rows(third.path)[1:]]
    assert ids == sorted(ids)
    by_id = {r[0]: r[1] for r in read_rows(first.path)[1:]}
    assert {r[0]: r[1] for r in read_rows(third.path)[1:]} == by_id


def test_validation_catches_count_unknown_id_and_runs_past_the_end(tmp_path):
    ids, sizes = ["a.png", "b.png"], [(4, 5), (3, 3)]
    path = tmp_path / "s.csv"
    submission.write_csv(path, ids, ["1 3", ""])
    assert submission.validate(path, ids, sizes) == 0.5
    submission.write_csv(path, ids[:1], ["1 3"])
    with pytest.raises(ValueError, match="1 rows, expected one per test image"):
        submission.validate(path, ids, sizes)
    submission.write_csv(path, ["a.png", "c.png"], ["1 3", ""])
    with pytest.raises(ValueError, match="unknown id 'c.png'"):
        submission.validate(path, ids, sizes)
    submission.write_csv(path, ids, ["1 3", "8 3"])
    with pytest.raises(ValueError, match=r"s\.csv:3: id b\.png: bad RLE .* past the image"):
        submission.validate(path, ids, sizes)
    path.write_text("ImageId,EncodedPixels\n")
    with pytest.raises(ValueError, match="header"):
        submission.validate(path, ids, sizes)


def test_threshold_and_no_postprocess_overrides(trained_run, tmp_path):
    none = submission.make_submission(
        trained_run,
        InferenceOptions(threshold=1.0, postprocess=False, progress=False),
        out=tmp_path / "n.csv",
    )
    assert none.empty_fraction == 1.0 and none.postprocess == PostProcess(1.0)
    every = submission.make_submission(
        trained_run,
        InferenceOptions(threshold=0.0, postprocess=False, progress=False),
        out=tmp_path / "e.csv",
    )
    for (image_id, encoded), size in zip(
        read_rows(every.path)[1:], _sizes(trained_run), strict=True
    ):
        assert encoded == f"1 {size[0] * size[1]}", image_id


def _sizes(run_dir):
    config = load_run(run_dir).config
    found = layout.discover(config.data.data_dir)
    return [np.asarray(decode.read_image(s.image)).shape[:2] for s in found.test]


def test_evaluate_writes_metrics_and_the_worst_cases(trained_run, tmp_path):
    from segjax.inference.analysis import evaluate_run, format_report

    report = evaluate_run(trained_run, out_dir=tmp_path)
    assert set(report["results"]) == {
        f"tta={t} postprocess={p}" for t in ("on", "off") for p in ("on", "off")
    }
    for result in report["results"].values():
        c = result["confusion"]
        assert 0 <= result["mean_dice"] <= 1 and c["tp"] + c["fp"] + c["fn"] + c["tn"] > 0
    assert (tmp_path / "worst_val.png").exists() and (tmp_path / "evaluation_val.json").exists()
    assert "tta=on postprocess=on" in format_report(report)
    with pytest.raises(UserError, match="no 'test' split"):
        evaluate_run(trained_run, split="test", out_dir=tmp_path)


def test_a_test_image_that_cannot_be_decoded_is_named_and_nothing_is_written(
    trained_run, demo_dir, tmp_path
):
    data_dir = tmp_path / "data"
    shutil.copytree(demo_dir, data_dir)
    bad = data_dir / "test/images/5003.png"
    bad.write_bytes(bad.read_bytes()[:60])
    out = tmp_path / "sub.csv"
    with pytest.raises(errors.DataError, match=r"5003\.png: unreadable or truncated"):
        submission.make_submission(
            trained_run, InferenceOptions(progress=False), data_dir=data_dir, out=out
        )
    assert list(tmp_path.glob("sub.csv*")) == []


@pytest.mark.slow
def test_validation_dice_of_training_equals_evaluation_at_one_half(tmp_path):
    """One rule from probabilities to masks: with images stored at the training size (no resize),
    training's reported validation Dice is evaluate.py's at 0.5 without post-processing."""
    from segjax.data import synthetic
    from segjax.inference.analysis import evaluate_run
    from segjax.runs import metrics_log
    from tests.conftest import make_tiny_config

    root = synthetic.generate(tmp_path / "data", n_train=30, n_test=1, seed=5, sizes=((32, 32),))
    run_dir = tmp_path / "run"
    loop.fit(make_tiny_config(root, epochs=1), run_dir, RunOptions(progress=False))
    reported = metrics_log.read_metrics(run_dir / "metrics.jsonl")[-1]
    report = evaluate_run(
        run_dir, InferenceOptions(checkpoint="latest"), split="val", out_dir=tmp_path
    )
    evaluated = report["results"]["tta=off postprocess=off"]
    assert evaluated["mean_dice"] == pytest.approx(reported["val_mean_dice"], abs=1e-6)
    assert evaluated["global_dice"] == pytest.approx(reported["val_global_dice"], abs=1e-6)
    assert 0.05 < evaluated["mean_dice"] < 1  # a real prediction, neither empty nor perfect


def test_scripts_run_from_the_command_line(trained_run, tmp_path):
    for script, extra in (
        ("submit.py", ["--out", str(tmp_path / "commands.csv")]),
        ("evaluate.py", ["--out-dir", str(tmp_path)]),
    ):
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / script), "--run-dir", str(trained_run), *extra],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "commands.csv").exists()
    assert "tta=off postprocess=off" in result.stdout


def listing(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.slow
def test_training_and_submitting_write_nothing_under_the_data_folder(demo_dir, tmp_path):
    """As on Kaggle, where /kaggle/input is read-only (tests run as root, where permission
    bits stop nothing: the folder's files, sizes and times are compared instead)."""
    from tests.conftest import make_tiny_config

    data_dir = tmp_path / "input"
    shutil.copytree(demo_dir, data_dir)
    before = listing(data_dir)
    run_dir = tmp_path / "working" / "run"
    workflows.train_and_tune(
        make_tiny_config(data_dir, epochs=1), run_dir, RunOptions(progress=False)
    )
    submission.make_submission(
        run_dir, InferenceOptions(progress=False), out=tmp_path / "working/sub.csv"
    )
    assert listing(data_dir) == before
    assert (tmp_path / "working/sub.csv").exists()


def test_an_unwritable_run_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"file/run: cannot write here .* --run-dir"):
        run_folder.writable(blocker / "run")
