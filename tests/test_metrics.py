"""Confusion counts on the device, Dice and IoU on the host, named by how they average."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from segjax import metrics


def test_metrics_from_counts():
    pred = np.zeros((3, 4, 4), bool)
    truth = np.zeros((3, 4, 4), bool)
    pred[0, :2], truth[0, 1:3] = True, True  # tp 4, fp 4, fn 4
    pred[2, 0, 0] = True  # a false positive on an empty image: Dice 0
    counts = np.asarray(metrics.confusion_counts(jnp.asarray(pred), jnp.asarray(truth)))
    assert counts.tolist() == [[4, 4, 4, 4], [0, 0, 0, 16], [0, 1, 0, 15]]
    assert [
        metrics.confusion_counts_np(p, t).tolist() for p, t in zip(pred, truth, strict=False)
    ] == counts.tolist()
    np.testing.assert_allclose(metrics.per_image_dice(counts), [0.5, 1.0, 0.0])
    summary = metrics.summarize(counts)
    assert summary["mean_dice"] == pytest.approx(0.5)
    assert summary["global_dice"] == pytest.approx(8 / 17)
    assert summary["global_iou"] == pytest.approx(4 / 13)
    assert summary["precision"] == pytest.approx(4 / 9) and summary["recall"] == pytest.approx(0.5)
    assert summary["accuracy"] == pytest.approx((4 + 35) / 48)
