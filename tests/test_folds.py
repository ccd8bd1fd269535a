"""k-fold splits and training, and ensembles of runs for submission and evaluation."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from segjax import errors, workflows
from segjax.config import InferenceOptions, RunOptions
from segjax.data import sampling, sources
from segjax.errors import UserError
from segjax.inference import ensemble, submission
from segjax.inference.analysis import evaluate_run
from segjax.inference.run_loader import load_run
from segjax.runs import run_folder
from segjax.train.progress import Ended
from tests.conftest import make_tiny_config


def test_folds_are_disjoint_cover_everything_outside_the_hold_out_and_are_seeded():
    n, k = 53, 5
    plain = sampling.split(n, 7, 0.1, 0.1)
    parts = [sampling.split(n, 7, 0.1, 0.1, folds=k, fold=i) for i in range(k)]
    vals = [p["val"] for p in parts]
    pool = np.setdiff1d(np.arange(n), plain["test"])
    assert np.array_equal(np.sort(np.concatenate(vals)), pool)  # each image in exactly one fold
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for p in parts:
        assert np.array_equal(p["test"], plain["test"])  # the hold-out of the same split
        assert np.array_equal(np.sort(np.concatenate([p["train"], p["val"]])), pool)
    again = sampling.split(n, 7, 0.1, 0.1, folds=k, fold=2)
    assert all(np.array_equal(again[key], parts[2][key]) for key in again)
    other = sampling.split(n, 8, 0.1, 0.1, folds=k, fold=2)
    assert not np.array_equal(other["val"], parts[2]["val"])
    for bad in ({"folds": 1, "fold": 0}, {"folds": 3, "fold": 3}):
        with pytest.raises(errors.DataError, match="need K >= 2"):
            sampling.split(n, 7, 0.1, 0.1, **bad)


def _stop_fold_1_after_one_epoch(monkeypatch):
    """The first pass's fold 1 stops as a signal would stop it, after its first epoch."""
    real = workflows.train_and_tune

    def stopping(config, run_dir, options):
        if config.data.fold == 1:
            result = real(config, run_dir, dataclasses.replace(options, stop_at_epoch=1))
            return result._replace(ended=Ended.INTERRUPTED)
        return real(config, run_dir, options)

    monkeypatch.setattr(workflows, "train_and_tune", stopping)


@pytest.mark.slow
def test_fold_all_resumes_skips_finished_folds_and_tunes_out_of_fold(
    demo_dir, tmp_path, monkeypatch
):
    config = make_tiny_config(demo_dir)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, folds=2))
    folder = tmp_path / "kfold"
    with monkeypatch.context() as patch:
        _stop_fold_1_after_one_epoch(patch)
        assert workflows.train_folds_and_tune(config, folder, RunOptions(progress=False)) == [0]
    assert run_folder.load_folds(folder)["done"] == [0] and not (folder / "tuned.json").exists()
    with pytest.raises(UserError, match="fold 1 of 2 is not trained yet"):
        ensemble.load([folder])
    with pytest.raises(UserError, match="already holds k-fold runs: add --resume"):
        workflows.train_folds_and_tune(config, folder, RunOptions(progress=False))
    fold0 = sorted(p.stat().st_mtime_ns for p in (folder / "fold-0").rglob("*"))
    assert workflows.train_folds_and_tune(
        config, folder, RunOptions(resume=True, progress=False)
    ) == [0, 1]
    assert sorted(p.stat().st_mtime_ns for p in (folder / "fold-0").rglob("*")) == fold0
    rows = [json.loads(line) for line in (folder / "fold-1/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # fold 1 continued from its first epoch
    splits = [
        sources.load_splits(run_folder.resume_config(folder / f"fold-{i}", {})) for i in (0, 1)
    ]
    assert not set(splits[0].val) & set(splits[1].val)
    tuned = json.loads((folder / "tuned.json").read_text())
    assert tuned["out_of_fold"] and tuned["val_images"] == 40  # every labelled image once

    # The newest k-fold folder is the default of submit.py and evaluate.py: one ensemble.
    monkeypatch.chdir(tmp_path)
    shutil.move(folder, tmp_path / "runs" / "kfold")
    report = submission.make_submission(None, InferenceOptions(progress=False))
    assert report.path.resolve() == tmp_path / "runs/kfold/submission.csv" and report.rows == 9
    assert report.runs.startswith("2 runs averaged")
    evaluated = evaluate_run(None, split="val")
    assert evaluated["images"] == 40 and evaluated["runs"].startswith("2 runs")
    with pytest.raises(UserError, match="is a k-fold folder: name one of its runs"):
        load_run(tmp_path / "runs/kfold")  # predict.py and export.py take one run

    removed = tmp_path / "runs/kfold"
    (removed / "notes.txt").write_text("mine")
    run_folder.claim(removed, resume=False, overwrite=True, folds=True)
    assert sorted(p.name for p in removed.iterdir()) == ["notes.txt"]


def test_an_ensemble_of_a_run_and_its_copy_equals_the_run(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    single = submission.make_submission(
        trained_run, InferenceOptions(progress=False), out=tmp_path / "one.csv"
    )
    both = submission.make_submission(
        [trained_run, copy], InferenceOptions(progress=False), out=tmp_path / "two.csv"
    )
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    assert both.postprocess == single.postprocess  # tuned again on the shared validation split
    one = evaluate_run(trained_run, out_dir=tmp_path / "e1")["results"]
    two = evaluate_run([trained_run, copy], out_dir=tmp_path / "e2")["results"]
    assert one == two

    group = ensemble.load([trained_run, copy])
    arrays = ensemble.decode(group, lambda d: sources.load_test(d))
    sizes = [tuple(s) for s in arrays[0].sizes]
    images = [a.images for a in arrays]
    whole = list(ensemble.mean_probs(group, images, sizes))
    chunked = list(ensemble.mean_probs(group, images, sizes, chunk=2))  # bounded memory
    assert len(whole) == 1 and len(chunked) == 5
    flat = [p for _, part in chunked for p in part]
    assert all(np.array_equal(a, b) for a, b in zip(whole[0][1], flat, strict=True))
    assert [p.shape for p in flat] == sizes  # at each image's original size


def test_runs_of_other_data_or_other_splits_are_refused(trained_run, tmp_path):
    def variant(name, **data_changes):
        path = tmp_path / name
        shutil.copytree(trained_run, path)
        record = json.loads((path / "config.json").read_text())
        record["data"].update(data_changes)
        (path / "config.json").write_text(json.dumps(record))
        return path

    other_data = variant("other-data", data_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(UserError, match="an ensemble's runs must share their data"):
        submission.make_submission([trained_run, other_data], out=tmp_path / "x.csv")
    other_split = variant("other-split", split_seed=5)
    with pytest.raises(UserError, match="validation images partly overlap"):
        evaluate_run([trained_run, other_split], out_dir=tmp_path / "e")
    with pytest.raises(UserError, match="say where the submission goes with --out"):
        submission.make_submission([trained_run, other_split])
    with pytest.raises(UserError, match="named twice"):
        ensemble.load([trained_run, trained_run])
