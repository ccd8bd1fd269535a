"""Progressive resizing (--small-size): the first epochs at a smaller size, then the full one."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.config import RunFacts, RunOptions, replace
from segjax.data import augment
from segjax.errors import UserError
from segjax.runs import metrics_log, run_folder
from segjax.train import budget, loop, start
from tests.conftest import count_traces
from tests.test_train import assert_same_run


def test_a_batch_is_resized_with_masks_that_stay_binary():
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    masks = jnp.zeros((2, 32, 32)).at[0, :, :16].set(1.0).at[1].set(1.0)
    small_images, small_masks = augment.resize_batch(images, masks, (16, 24))
    assert small_images.shape == (2, 16, 24, 3) and small_masks.shape == (2, 16, 24)
    assert set(np.unique(np.asarray(small_masks))) <= {0.0, 1.0}
    np.testing.assert_array_equal(small_masks[0, :, :12], 1.0)  # the left half stays the left
    np.testing.assert_array_equal(small_masks[0, :, 12:], 0.0)
    np.testing.assert_array_equal(small_masks[1], 1.0)
    # antialiased: a one-pixel checkerboard halves to grey, not to an aliased pattern
    checker = (jnp.indices((32, 32)).sum(0) % 2).astype(jnp.float32)
    board = jnp.broadcast_to(checker[None, :, :, None], (2, 32, 32, 3))
    halved = augment.resize_batch(board, masks, (16, 16))[0]
    np.testing.assert_allclose(halved[:, 1:-1, 1:-1], 0.5, atol=1e-5)


def test_a_small_size_must_fit_between_the_stride_and_the_image_size(tiny_config):
    for size in ((48, 32), (32, 2)):  # larger than 32x32; smaller than the stride (4)
        config = replace(tiny_config, train={"small_size": size})
        with pytest.raises(UserError, match="--small-size"):
            start.check_image_size(config)
    start.check_image_size(replace(tiny_config, train={"small_size": (16, 16)}))


def test_the_planner_counts_the_cheaper_steps_of_the_smaller_phase():
    timing = budget.Timing(step_s=1.0, overhead_s=5.0, val_s=0.0, compile_s=0.0, small_step_s=0.5)
    # 20 steps at 0.5 s + 2 closings (20 s), then 50 steps at 1 s + 5 closings (75 s).
    assert budget.plan_phases(100, timing, at=0, spe=10, most=1000, switch=20) == 70
    # A new plan: at the mean cost (0.8 s) 75 steps, 8 epochs; 40% of them is 3 small epochs,
    # and planned in two phases: 30 x 0.5 + 45 x 1 + 8 closings x 5 = 100 s.
    assert budget.first_plan(100, timing, at=0, spe=10, most=1000, fraction=0.4) == (75, 3)
    # Not even the smaller phase fits: it ends the run.
    assert budget.plan_phases(20, timing, at=0, spe=10, most=1000, switch=40) == 20
    # Without a smaller phase: the one-size plan.
    plain = timing._replace(small_step_s=0.0)
    assert budget.first_plan(100, plain, at=0, spe=10, most=1000, fraction=0.4) == (65, 0)


def test_the_smaller_phase_leaves_at_least_one_epoch_at_the_full_size():
    assert start.small_phase(0.4, 10) == 4
    assert start.small_phase(0.75, 2) == 1  # round(1.5) = 2 would leave none
    assert start.small_phase(0.4, 1) == 0


def test_a_plan_that_would_end_in_the_smaller_phase_ends_that_phase_sooner(tiny_config):
    """After epoch 2 of a plan with 4 small epochs, only 9 s are left: the small phase alone
    (20 steps x 0.5 s + 2 closings) would not fit, so it ends after epoch 3 and the run after 2
    full-size steps: 10 x 0.5 + 1 closing + 2 x 1 s + 1 closing = 9 s."""

    @flax.struct.dataclass
    class State:
        schedule_steps: jax.Array

    config = replace(tiny_config, train={"epochs": 20, "small_size": (16, 16)})
    facts = RunFacts(epochs=10, steps=100, small_epochs=4)
    timing = budget.Timing(1.0, 1.0, 0.0, 0.0, small_step_s=0.5)
    plan = budget.Budget(deadline=10.0, reserve_s=0.0, clock=lambda: 0.0, timing=timing)
    setup = start.Setup(config, facts, None, None, 10, None, None, None, False, budget=plan)
    setup, state, stop = loop.replan(setup, State(jnp.int32(100)), at=20)
    assert not stop
    got = setup.facts
    assert (got.epochs, got.steps, got.small_epochs) == (4, 32, 3)
    assert int(state.schedule_steps) == 32


@pytest.mark.slow
def test_progressive_resizing_compiles_once_per_size_and_resumes_in_either_phase(
    tiny_config, tmp_path
):
    """Four epochs, the first two at 16x16: each step traced once per size; stopped in the
    smaller phase and again in the full one, the resumed run equals the straight one."""
    config = replace(
        tiny_config, train={"epochs": 4, "small_size": (16, 16), "small_fraction": 0.5}
    )
    with count_traces() as traced:
        loop.fit(config, tmp_path / "straight", RunOptions(progress=False))
    assert traced["train_step"] == 2
    assert run_folder.read_facts(tmp_path / "straight").small_epochs == 2
    resumed = tmp_path / "resumed"
    loop.fit(config, resumed, RunOptions(progress=False, stop_at_epoch=1))
    loop.fit(config, resumed, RunOptions(progress=False, resume=True, stop_at_epoch=3))
    assert len(metrics_log.read_metrics(resumed / "metrics.jsonl")) == 3
    loop.fit(config, resumed, RunOptions(progress=False, resume=True))
    assert_same_run(config, tmp_path / "straight", resumed)
    # and the smaller phase mattered: a run at one size differs
    plain = replace(config, train={"small_size": ()})
    loop.fit(plain, tmp_path / "plain", RunOptions(progress=False, stop_at_epoch=1))
    first = lambda run: metrics_log.read_metrics(run / "metrics.jsonl")[0]["train_loss"]
    assert first(tmp_path / "plain") != first(tmp_path / "straight")
