"""--pseudo-label RUN: the test images, labelled by a finished run, join the training split."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from segjax import workflows
from segjax.config import InferenceOptions, RunOptions, replace
from segjax.data import decode, sources
from segjax.errors import UserError
from segjax.inference import pseudo, rle, submission
from segjax.runs import metrics_log, run_folder
from segjax.train import loop


def test_pseudo_labels_are_the_runs_submission_at_the_training_size(trained_run, tmp_path):
    config, _ = run_folder.read_run(trained_run)
    config = replace(config, data={"image_size": (24, 20)})  # another size than the teacher's
    arrays = pseudo.label_test(trained_run, config)
    test = sources.load_test(config.data)
    assert arrays.ids == test.ids and arrays.images.shape == (len(test.ids), 24, 20, 3)
    np.testing.assert_array_equal(arrays.images, test.images)
    out = tmp_path / "sub.csv"
    submission.make_submission(trained_run, InferenceOptions(progress=False), out=out)
    with out.open() as f:
        rows = list(csv.reader(f))[1:]
    for i, (image_id, text) in enumerate(rows):
        assert image_id == arrays.ids[i]
        submitted = rle.decode(text, tuple(test.sizes[i])).astype(np.uint8)
        np.testing.assert_array_equal(arrays.masks[i], decode.resize_mask(submitted, (24, 20)))
    assert arrays.masks.any() and not arrays.masks.all()


def test_pseudo_labels_only_from_a_run_of_the_same_data_and_split(trained_run):
    config, _ = run_folder.read_run(trained_run)
    for change in ({"split_seed": 1}, {"val_fraction": 0.3}, {"test_fraction": 0.1}):
        with pytest.raises(UserError, match="same data and split"):
            pseudo.label_test(trained_run, replace(config, data=change))


def test_a_k_fold_teacher_labels_only_for_folds_of_its_split(trained_run, tmp_path):
    config, _ = run_folder.read_run(trained_run)
    folder = tmp_path / "cv"
    folder.mkdir()
    (folder / run_folder.FOLDS_FILE).write_text('{"folds": 3, "done": [0, 1, 2]}')
    with pytest.raises(UserError, match="k-fold folder: its folds trained on every"):
        pseudo.label_test(folder, config)
    with pytest.raises(UserError, match="--pseudo-label .*nothing: not a segjax run folder"):
        pseudo.label_test(tmp_path / "nothing", config)


def test_extra_images_join_only_the_training_split(trained_run):
    config, _ = run_folder.read_run(trained_run)
    splits = sources.load_splits(config)
    extra = pseudo.label_test(trained_run, config)
    more = sources.with_extra(splits, extra)
    n = len(splits.arrays.ids)
    np.testing.assert_array_equal(more.val, splits.val)
    np.testing.assert_array_equal(more.test, splits.test)
    np.testing.assert_array_equal(more.train[len(splits.train) :], n + np.arange(len(extra.ids)))
    np.testing.assert_array_equal(more.arrays.masks[n:], extra.masks)
    assert more.arrays.ids[n:] == extra.ids


@pytest.mark.slow
def test_a_run_trains_on_its_pseudo_labels_and_resumes_only_with_the_same(trained_run, tmp_path):
    config, _ = run_folder.read_run(trained_run)
    config = replace(config, train={"epochs": 1, "pseudo_label": str(trained_run)})
    run = tmp_path / "student"
    workflows.train_and_tune(config, run, RunOptions(progress=False, tune=False))
    labelled = len(sources.load_splits(config).train)
    tests = len(sources.load_test(config.data).ids)
    batch = config.train.batch_size
    row = metrics_log.read_metrics(run / "metrics.jsonl")[0]
    assert row["step"] == (labelled + tests) // batch  # an epoch covers both
    facts = run_folder.read_facts(run)
    assert facts.pseudo_labels.startswith(f"{tests} test images labelled by {trained_run}")
    kept = decode.load_arrays(run / run_folder.PSEUDO_FILE)  # what a resume trains on
    arrays = pseudo.label_test(trained_run, config)
    assert kept.ids == arrays.ids and pseudo.record(kept, trained_run) == facts.pseudo_labels
    np.testing.assert_array_equal(kept.masks, arrays.masks)
    changed = arrays._replace(masks=1 - arrays.masks)
    record = pseudo.record(changed, trained_run)
    with pytest.raises(UserError, match="pseudo-labels differ"):
        loop.fit(config, run, RunOptions(progress=False, resume=True), extra=(changed, record))
