"""Train step, schedules, checkpoints, exact resume (new process), SIGKILL, early stop, NaN stop."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from segjax import errors, parallel
from segjax.config import RunOptions, TrainConfig, replace
from segjax.data import sources
from segjax.errors import UserError
from segjax.runs import checkpoint, metrics_log, run_folder
from segjax.train import budget, loop, optim, start
from segjax.train.progress import Ended
from segjax.train.step import create_steps, create_train_state
from tests.conftest import on_devices

ROOT = Path(__file__).resolve().parents[1]


def first_batch(config, n=4):
    """The run's facts (normalisation, ...) and its first n training images."""
    splits = sources.load_splits(config)
    idx = splits.train[:n]
    batch = {"image": splits.arrays.images[idx], "mask": splits.arrays.masks[idx]}
    return start.initial_facts(config, splits), batch


def test_one_step(tiny_config):
    config = replace(tiny_config, train={"schedule": "constant"})
    facts, batch = first_batch(config)
    mesh = parallel.create_mesh()
    steps = create_steps(config, facts, mesh, 10)
    state = create_train_state(config, jax.random.key(0), 10)
    before = jax.tree.map(np.array, state.params)  # a copy: the step donates the state
    state, out = steps.train(state, on_devices(batch, mesh), jax.random.key(1))
    assert int(state.step) == 1
    assert np.isfinite(float(out["loss"]))
    state, out = steps.train(state, on_devices(batch, mesh), jax.random.key(1))
    # Golden number: init, augmentation, loss and one Adam update together. If a deliberate
    # change moves it, print float(out["loss"]) here and paste the new value.
    # Regenerated once when the parameters moved under encoder/ and decoder/ (Flax seeds each
    # parameter from its path); test_models checks that old-layout weights give equal logits.
    # Computed with jax 0.10.2 on one CPU; other CPUs and the floor jax (0.5.2: 1.6971354)
    # differ in float32 rounding, which Adam's first update magnifies: it moves every parameter
    # by about the learning rate whatever its gradient's size, so a gradient at rounding level
    # (one that another summation order flips in sign) still moves its parameter fully. The
    # tolerance, 5e-4, is 4x the largest difference seen (1.3e-4) and half of what a 10%
    # larger learning rate does to this loss (1.1e-3).
    assert float(out["loss"]) == pytest.approx(1.6969159, rel=5e-4), float(out["loss"])
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.params)
    assert all(jax.tree.leaves(changed))


def test_a_train_step_makes_no_hidden_transfers(tiny_config):
    config = replace(tiny_config, train={"schedule": "constant"})
    facts, batch = first_batch(config)
    mesh = parallel.create_mesh()
    steps = create_steps(config, facts, mesh, 10)
    state = jax.device_put(
        create_train_state(config, jax.random.key(0), 10), parallel.replicated(mesh)
    )
    batch, key = on_devices(batch, mesh), jax.device_put(jax.random.key(1))
    state, out = steps.train(state, batch, key)  # compiles outside the guard
    with jax.transfer_guard("disallow"):
        state, out = steps.train(state, batch, key)
        jax.block_until_ready(out)
    assert int(state.step) == 2


@pytest.mark.slow
def test_overfitting_a_fixed_batch_drives_the_loss_down(tiny_config):
    config = replace(tiny_config, train={"aug": "none", "schedule": "constant", "lr": 1e-2})
    facts, batch = first_batch(config)
    mesh = parallel.create_mesh()
    steps = create_steps(config, facts, mesh, 10)
    state = create_train_state(config, jax.random.key(0), 10)
    batch = on_devices(batch, mesh)
    losses = []
    for _ in range(60):
        state, out = steps.train(state, batch, jax.random.key(1))
        losses.append(float(out["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def lrs(config: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    total = config.epochs * steps_per_epoch
    rate = lambda step: float(optim.learning_rate_at(config, step, total, steps_per_epoch))
    return np.array([rate(s) for s in range(total + 1)])


def test_schedules():
    base = TrainConfig(epochs=10, lr=1e-3, warmup_epochs=2)
    np.testing.assert_allclose(lrs(dataclasses.replace(base, schedule="constant"), 5), 1e-3)
    cosine = lrs(dataclasses.replace(base, schedule="cosine"), 5)
    assert cosine[0] == 0 and cosine[10] == pytest.approx(1e-3)  # linear warm-up for 2 epochs
    assert np.all(np.diff(cosine[:11]) > 0) and np.all(np.diff(cosine[10:]) <= 0)
    assert cosine[-1] == pytest.approx(1e-5, rel=1e-3)
    cycle = lrs(dataclasses.replace(base, schedule="onecycle"), 5)
    assert cycle[0] < 1e-4 and cycle.max() == pytest.approx(1e-3, rel=1e-3)
    assert 0.2 < np.argmax(cycle) / len(cycle) < 0.4 and cycle[-1] < 1e-6


def test_plateau_halves_the_rate_after_patience_epochs(tiny_config):
    config = replace(tiny_config, train={"schedule": "plateau", "plateau_patience": 2})
    state = create_train_state(config, jax.random.key(0), 10)
    rates = []
    for val_loss in [1.0, 0.9, 0.95, 0.93, 0.92, 0.91, 0.94]:
        state = optim.step_plateau(state, config.train, val_loss)
        rates.append(optim.learning_rate(state))
    # Best 0.9 at epoch 2; every second epoch without beating it halves the rate.
    np.testing.assert_allclose(rates, [3e-3, 3e-3, 3e-3, 1.5e-3, 1.5e-3, 7.5e-4, 7.5e-4], rtol=1e-5)


def test_checkpoint_round_trip(tmp_path, tiny_config):
    state = create_train_state(tiny_config, jax.random.key(0), 10)
    state = state.replace(step=jnp.asarray(7))
    manager = checkpoint.create_manager(tmp_path / "ckpt")
    meta = {"epoch": 3, "position": [3, 0], "metrics": {"val_mean_dice": 0.5}, "note": "x"}
    checkpoint.save(manager, 3, state, meta)
    manager.wait_until_finished()
    template = create_train_state(tiny_config, jax.random.key(1), 10)
    restored, restored_meta = checkpoint.restore(manager, 3, template)
    manager.close()
    assert restored_meta == meta and int(restored.step) == 7
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)


def test_keeps_the_latest_and_the_best(tmp_path, tiny_config):
    state = create_train_state(tiny_config, jax.random.key(0), 10)
    manager = checkpoint.create_manager(tmp_path / "ckpt")
    for epoch, dice in enumerate([0.2, 0.7, 0.4, 0.3], start=1):
        checkpoint.save(manager, epoch, state, {"metrics": {"val_mean_dice": dice}})
        manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [2, 4]
    assert checkpoint.resolve_step(manager, "best") == 2
    assert checkpoint.resolve_step(manager, "latest") == 4
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint '3' not in"):
        checkpoint.resolve_step(manager, "3")
    manager.close()


def test_a_save_that_orbax_declines_is_an_error(tmp_path, tiny_config):
    state = create_train_state(tiny_config, jax.random.key(0), 10)
    manager = checkpoint.create_manager(tmp_path / "ckpt")
    checkpoint.save(manager, 1, state, {"metrics": {"val_mean_dice": 0.5}})
    with pytest.raises(checkpoint.CheckpointError, match="declined to save epoch 1"):
        checkpoint.save(manager, 1, state, {"metrics": {"val_mean_dice": 0.6}})
    manager.close()


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_an_unreadable_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, tiny_config):
    state = create_train_state(tiny_config, jax.random.key(0), 10)
    manager = checkpoint.create_manager(tmp_path / "ckpt")
    for epoch, dice in ((1, 0.7), (2, 0.2)):  # epoch 1 kept as the best, 2 as the latest
        checkpoint.save(manager, epoch, state, {"epoch": epoch, "metrics": {"val_mean_dice": dice}})
    checkpoint.seal(manager)
    broken = _largest_file(tmp_path / "ckpt/2/state")
    broken.write_bytes(broken.read_bytes()[:10])
    restored, meta, step, skipped = checkpoint.restore_newest_readable(manager, state)
    assert (step, meta["epoch"]) == (1, 1) and manager.all_steps() == [1]
    assert len(skipped) == 1 and "epoch 2" in skipped[0]
    assert f"{broken} is truncated (10 of" in skipped[0]
    (tmp_path / "ckpt/1/meta/metadata").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"epoch 1 .*meta/metadata is missing"):
        checkpoint.restore_newest_readable(manager, state)
    manager.close()


def subprocess_fit(config, run_dir, resume=False, stop_at=0, wait=True):
    """Run fit in a fresh Python process (new JAX runtime, as a resumed user run would be)."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "import tests.conftest;"  # same flags and compile cache as this process
        "from segjax.config import Config, RunOptions; from segjax.train.loop import fit;"
        "options = RunOptions(resume=sys.argv[4] == '1', stop_at_epoch=int(sys.argv[5]) or None,"
        " progress=False);"
        "fit(Config.from_dict(json.loads(sys.argv[2])), sys.argv[3], options)"
    )
    args = [
        sys.executable,
        "-c",
        code,
        str(ROOT),
        json.dumps(config.to_dict()),
        str(run_dir),
        "1" if resume else "0",
        str(stop_at),
    ]
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_state(config, run_dir):
    manager = checkpoint.create_manager(Path(run_dir) / "checkpoints", read_only=True)
    facts = run_folder.read_facts(run_dir)  # the compute dtype: float16 keeps a loss scale
    template = create_train_state(config, jax.random.key(0), 1, facts)
    state, meta = checkpoint.restore(manager, manager.latest_step(), template)
    manager.close()
    return state, meta


def assert_same_run(config, run_a, run_b):
    state_a, meta_a = final_state(config, run_a)
    state_b, meta_b = final_state(config, run_b)
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
    assert meta_a == meta_b
    assert metrics_log.read_metrics(Path(run_a) / "metrics.jsonl") == metrics_log.read_metrics(
        Path(run_b) / "metrics.jsonl"
    )


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, demo_dir):
    """Four epochs without stopping (dropout on, so randomness matters too)."""
    from tests.conftest import make_tiny_config

    config = replace(make_tiny_config(demo_dir, epochs=4), model={"dropout": 0.2})
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    loop.fit(config, run_dir, RunOptions(progress=False))
    return config, run_dir


def test_resume_in_a_new_process_equals_never_stopping(straight_run, tmp_path):
    config, straight = straight_run
    run_dir = tmp_path / "resumed"
    subprocess_fit(config, run_dir, stop_at=2)
    assert len(metrics_log.read_metrics(run_dir / "metrics.jsonl")) == 2
    subprocess_fit(config, run_dir, resume=True)
    assert_same_run(config, straight, run_dir)
    assert (run_dir / "curves.png").exists() and (run_dir / "previews/epoch_004.png").exists()


def test_sigkill_mid_run_resumes_from_the_last_complete_checkpoint(straight_run, tmp_path):
    config, straight = straight_run
    run_dir = tmp_path / "killed"
    proc = subprocess_fit(config, run_dir, wait=False)
    deadline = time.time() + 300
    metrics_path = run_dir / "metrics.jsonl"
    while time.time() < deadline and len(metrics_log.read_metrics(metrics_path)) < 1:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.01)
    # Epoch 1's checkpoint may still be saving (asynchronously); epoch 2 is under way.
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(metrics_log.read_metrics(metrics_path))
    assert 1 <= done < 4, "the process finished before it could be killed"
    subprocess_fit(config, run_dir, resume=True)
    assert_same_run(config, straight, run_dir)


def test_resuming_a_run_whose_checkpoints_are_all_damaged_names_step_and_file(
    straight_run, tmp_path
):
    config, straight = straight_run
    run_dir = tmp_path / "copy"
    shutil.copytree(straight, run_dir)
    for step in (run_dir / "checkpoints").iterdir():
        if step.name.isdigit():
            _largest_file(step / "state").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"epoch \d+ in .*copy/checkpoints/\d+ "):
        loop.fit(config, run_dir, RunOptions(resume=True, progress=False))


def test_training_into_a_used_folder_without_resume_stops_before_any_work(straight_run):
    config, straight = straight_run
    before = (straight / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="already holds a trained run"):
        loop.fit(replace(config, model={"arch": "attn"}), straight, RunOptions(progress=False))
    assert (straight / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_early_stopping_fires(tmp_path, tiny_config):
    # No learning (a 1e-30 rate moves no weight) and no BatchNorm statistics: every epoch
    # scores the same, so the first is the best and the run stops after `early_stop` more,
    # whatever the machine.
    config = replace(
        tiny_config, model={"batch_norm": False}, train={"epochs": 6, "lr": 1e-30, "early_stop": 2}
    )
    last = loop.fit(config, tmp_path / "run", RunOptions(progress=False))
    rows = metrics_log.read_metrics(tmp_path / "run/metrics.jsonl")
    assert len({r["val_mean_dice"] for r in rows}) == 1
    assert len(rows) == 3 and last.row["epoch"] == 3
    assert last.ended is Ended.EARLY_STOPPED


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_config
):
    run_dir = tmp_path / "run"
    loop.fit(replace(tiny_config, train={"epochs": 1}), run_dir, RunOptions(progress=False))
    broken = replace(tiny_config, train={"epochs": 3, "loss": "bce", "pos_weight": float("nan")})
    with pytest.raises(FloatingPointError, match="last good checkpoint is epoch 1"):
        loop.fit(broken, run_dir, RunOptions(resume=True, progress=False))
    manager = checkpoint.create_manager(run_dir / "checkpoints", read_only=True)
    assert manager.all_steps() == [1]
    manager.close()
    assert len(metrics_log.read_metrics(run_dir / "metrics.jsonl")) == 1


def test_too_few_images_for_a_batch(tiny_config):
    config = replace(tiny_config, train={"batch_size": 64})
    with pytest.raises(errors.DataError, match="fewer than one batch"):
        loop.fit(config, "/nonexistent/run", RunOptions(progress=False))


@pytest.mark.slow
def test_init_from_starts_from_another_runs_best_weights(tmp_path, tiny_config):
    first = tmp_path / "first"
    loop.fit(replace(tiny_config, train={"epochs": 1}), first, RunOptions(progress=False))
    # --lr must be positive: 1e-30 moves no float32 weight of this size by a single ulp.
    tuned = replace(tiny_config, train={"epochs": 1, "lr": 1e-30, "init_from": str(first)})
    loop.fit(tuned, tmp_path / "second", RunOptions(progress=False))
    a, _ = final_state(tiny_config, first)
    b, _ = final_state(tiny_config, tmp_path / "second")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    other = replace(tuned, model={"features": 8})
    with pytest.raises(UserError, match="its model differs"):
        loop.fit(other, tmp_path / "third", RunOptions(progress=False))
    # A fine-tune resumes from its own checkpoint: the source run is no longer needed.
    shutil.rmtree(first)
    longer = replace(tuned, train={"epochs": 2})
    resumed = loop.fit(longer, tmp_path / "second", RunOptions(resume=True, progress=False))
    assert resumed.row["epoch"] == 2


@pytest.mark.slow
def test_unet_valid_trains_and_previews_whole_images(demo_dir, tmp_path):
    """Overlap-tile: training, validation and the preview all cover the whole image."""
    from tests.conftest import make_tiny_config

    config = replace(
        make_tiny_config(demo_dir, epochs=1),
        data={"image_size": (44, 52)},
        model={"arch": "unet-valid"},
    )
    row = loop.fit(config, tmp_path / "run", RunOptions(progress=False)).row
    assert np.isfinite(row["val_loss"]) and 0 <= row["val_mean_dice"] <= 1
    preview = Image.open(tmp_path / "run/previews/epoch_001.png")
    # Three 44x52 tiles per row (2 px gaps), a 14 px header, preview_count = 2 rows.
    assert preview.size == (3 * 54, 14 + 2 * 46)


@pytest.mark.slow
def test_training_traces_each_step_function_once(demo_dir, tmp_path):
    """Three epochs with validation and previews, planned by a time budget (which times the
    steps on a throwaway state first): no step is traced (so compiled) again."""
    from tests.conftest import count_traces, make_tiny_config

    with count_traces() as traced:
        config = make_tiny_config(demo_dir, epochs=3)
        loop.fit(config, tmp_path / "run", RunOptions(progress=False, time_budget=30))
    assert len(metrics_log.read_metrics(tmp_path / "run" / "metrics.jsonl")) == 3
    assert (tmp_path / "run" / "previews" / "epoch_003.png").exists()
    # The previews come from the evaluation step's probabilities: nothing else is compiled.
    assert {name: traced[name] for name in ("train_step", "eval_step", "predict_probs")} == {
        "train_step": 1,
        "eval_step": 1,
        "predict_probs": 0,
    }


def test_plan_steps_fills_the_time_and_may_cut_the_last_epoch():
    timing = budget.Timing(step_s=1.0, overhead_s=5.0, val_s=0.0, compile_s=0.0)
    # 6 epochs of 10 steps and 5 steps of a 7th: 65 steps + 7 closings x 5 s = 100 s.
    assert budget.plan_steps(100, timing, at=0, spe=10, most=1000) == 65
    assert budget.plan_steps(100, timing, at=0, spe=10, most=30) == 30  # --epochs 3 wins
    # From the middle of an epoch (a resumed stop): 65 more steps, 7 closings, at an epoch end.
    assert budget.plan_steps(100, timing, at=15, spe=10, most=1000) == 80
    assert budget.plan_steps(3, timing, at=20, spe=10, most=1000) == 20  # not one step fits
    assert budget.describe_plan(65, 10) == "7 epochs (the last 5 of 10 batches)"
    # tuning: 2 s, a compile, two and a half validations and 0.15 s an image
    assert budget.tuning_reserve(timing._replace(val_s=4.0, compile_s=6.0), 80) == 30.0
    assert budget.describe_plan(60, 10) == "6 epochs"


class StepClock:
    """A clock that moves `step` seconds each time it is read."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.slow
def test_a_run_that_falls_behind_its_budget_stops_after_the_last_epoch_that_fits(
    tiny_config, tmp_path, monkeypatch, capsys
):
    # Measured before training: 1 s a step, 2 s to close an epoch; an 18 s reserve (tuning:
    # 2 + 2.5 x 5.2 s + 0.15 x 8 images; 3% of the budget). The clock reads 10 s later each time,
    # so the plan, at t = 20 of 70, is 24 steps (3 epochs of 8). After epoch 1's steps (t = 40)
    # the re-plan, at t = 50, finds that nothing more fits: stop after this epoch, and the
    # record says where the run ended.
    timing = budget.Timing(step_s=1.0, overhead_s=2.0, val_s=5.2, compile_s=0.0)
    monkeypatch.setattr(budget, "measure", lambda setup, state, clock: timing)
    config = replace(tiny_config, train={"epochs": 6})
    result = loop.fit(
        config, tmp_path / "run", RunOptions(progress=False, time_budget=1), clock=StepClock(10)
    )
    assert result.ended is Ended.BUDGET_SPENT and result.row["epoch"] == 1
    facts = run_folder.read_facts(tmp_path / "run")
    assert (facts.epochs, facts.steps) == (1, 8)
    out = capsys.readouterr().out
    assert "time budget 1 min: 3 epochs planned" in out
    assert "stopping after epoch 1, the next would not end in time (the plan was 3 epochs)" in out


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.slow
def test_the_budget_is_planned_again_after_each_epoch_and_the_last_epoch_cut(
    tiny_config, tmp_path, monkeypatch, capsys
):
    # A 30 s budget with a 12.45 s reserve (tuning: 2 + 2.5 x 3.34 s + 0.15 x 8 images; 3% of
    # the budget): 17.55 s for training. Timed before the first step: 0.125 s a step and 1 s to
    # close an epoch, so 68 steps fit (9 epochs, the last cut after 4 of its 8 batches). The
    # steps really take 0.25 s (the clock moves as they run, and 1 s per closing), so the plan
    # made after epoch 1 is 46 steps: 6 epochs, the last cut after 6 batches. It holds from then
    # on, and the run ends at 17.5 s, on its plan.
    clock = ManualClock()
    timing = budget.Timing(step_s=0.125, overhead_s=1.0, val_s=3.34, compile_s=0.0)
    monkeypatch.setattr(budget, "measure", lambda setup, state, clock: timing)
    train_epoch, close_epoch = loop.train_epoch, loop.close_epoch

    def timed_epoch(setup, state, progress, *args):
        done = train_epoch(setup, state, progress, *args)
        clock.now += 0.25 * (done[1].batch - progress.batch)
        return done

    def timed_close(*args):
        closed = close_epoch(*args)
        clock.now += 1.0
        return closed

    monkeypatch.setattr(loop, "train_epoch", timed_epoch)
    monkeypatch.setattr(loop, "close_epoch", timed_close)
    config = replace(tiny_config, train={"epochs": 20})
    run = tmp_path / "run"
    result = loop.fit(config, run, RunOptions(progress=False, time_budget=0.5), clock=clock)
    row = result.row
    out = capsys.readouterr().out
    assert "time budget 0.5 min: 9 epochs (the last 4 of 8 batches) planned" in out
    replans = [line.split(" (was")[0] for line in out.splitlines() if "re-planned to" in line]
    assert replans == ["time budget: re-planned to 6 epochs (the last 6 of 8 batches)"]
    assert result.ended is Ended.FINISHED and (row["epoch"], row["step"]) == (6, 46)
    assert clock.now == pytest.approx(17.5)
    facts = run_folder.read_facts(run)
    assert (facts.epochs, facts.steps) == (6, 46)
    steps = [r["step"] for r in metrics_log.read_metrics(run / "metrics.jsonl")]
    assert steps == [8, 16, 24, 32, 40, 46]
    assert (run / "previews" / "epoch_006.png").exists()  # the cut epoch is the last: drawn
    # The schedule ends with the run: the last step (45) ran at the rate of a 46-step schedule.
    assert row["lr"] == pytest.approx(float(optim.learning_rate_at(config.train, 45, 46, 8)))


def test_sigterm_mid_epoch_saves_the_position_and_resume_equals_never_stopping(
    straight_run, tmp_path, monkeypatch
):
    """The signal arrives during step 11 (epoch 2, batch 3 of 8): the step finishes, the
    checkpoint holds that position, and a new process resumes to the uninterrupted result."""
    config, straight = straight_run
    create = start.create_steps

    def steps_that_signal(*args):
        steps, calls = create(*args), []

        def step(*a):
            calls.append(1)
            if len(calls) == 11:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag
            return steps.train(*a)

        return steps._replace(train=step)

    monkeypatch.setattr(start, "create_steps", steps_that_signal)
    run_dir = tmp_path / "stopped"
    handler = signal.getsignal(signal.SIGTERM)
    result = loop.fit(config, run_dir, RunOptions(progress=False))
    where = (result.progress.epoch, result.progress.batch)
    assert result.ended is Ended.INTERRUPTED and where == (1, 3) and result.row["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back
    _, meta = final_state(config, run_dir)
    assert meta["partial"] and meta["position"] == [1, 3]
    subprocess_fit(config, run_dir, resume=True)
    assert_same_run(config, straight, run_dir)


def test_a_session_limit_pauses_between_epochs_and_the_next_session_equals_never_stopping(
    straight_run, tmp_path, capsys
):
    """The clock reads 10 s later each time: epochs seem to take 10 s, and with 1.5 minutes
    (and the 30.9 s margin) a third epoch would end too late, so the session pauses after the
    second; the schedule still spans all 4 epochs, and a new process resumes to the
    uninterrupted result."""
    config, straight = straight_run
    run_dir = tmp_path / "session"
    options = RunOptions(progress=False, session_limit=1.5)
    result = loop.fit(config, run_dir, options, clock=StepClock(10))
    assert result.ended is Ended.SESSION_PAUSED and result.row["epoch"] == 2
    assert "session limit: paused after epoch 2 of 4" in capsys.readouterr().out
    assert run_folder.read_facts(run_dir).epochs == 4  # the schedule is kept
    subprocess_fit(config, run_dir, resume=True)
    assert_same_run(config, straight, run_dir)


def test_an_error_before_the_first_epoch_leaves_no_run_folder(demo_dir, tmp_path):
    from tests.conftest import make_tiny_config

    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"not a safetensors file")
    config = replace(
        make_tiny_config(demo_dir, epochs=1),
        data={"image_size": (64, 64)},
        model={"encoder": "resnet18", "encoder_weights": str(bad)},
    )
    run_dir = tmp_path / "runs" / "refused"
    with pytest.raises(UserError, match="weights.safetensors"):
        loop.fit(config, run_dir, RunOptions(progress=False))
    assert not run_dir.exists()


def test_the_moving_average_follows_the_weights_and_is_what_validation_sees(tiny_config):
    config = replace(tiny_config, train={"schedule": "constant", "ema": 0.9})
    facts, batch = first_batch(config)
    mesh = parallel.create_mesh()
    steps = create_steps(config, facts, mesh, 10)
    state = create_train_state(config, jax.random.key(0), 10, facts)
    start_params = jax.tree.map(np.array, state.params)  # a copy: the step donates the state
    state, _ = steps.train(state, on_devices(batch, mesh), jax.random.key(1))
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, start_params, state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with_ema = steps.eval(state, on_devices(batch, mesh))
    raw = steps.eval(state.replace(ema=None), on_devices(batch, mesh))
    averaged = steps.eval(
        state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"], ema=None),
        on_devices(batch, mesh),
    )
    np.testing.assert_array_equal(with_ema["probs"], averaged["probs"])
    assert not np.array_equal(with_ema["probs"], raw["probs"])


@pytest.mark.slow
def test_float16_with_ema_resumes_exactly_and_is_loaded_as_its_average(tiny_config, tmp_path):
    """float16's loss scale and the moving average are part of the state: stopping and
    resuming in a new process gives the straight run, bitwise; prediction loads the average."""
    from segjax.inference.run_loader import load_run

    config = replace(tiny_config, train={"epochs": 3, "ema": 0.9, "precision": "fp16"})
    loop.fit(config, tmp_path / "straight", RunOptions(progress=False))
    subprocess_fit(config, tmp_path / "resumed", stop_at=2)
    subprocess_fit(config, tmp_path / "resumed", resume=True)
    assert_same_run(config, tmp_path / "straight", tmp_path / "resumed")  # scale, average too
    rows = metrics_log.read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["skipped_steps"] for r in rows] == [0, 0, 0]
    state, _ = final_state(config, tmp_path / "straight")
    loaded = load_run(tmp_path / "straight", "latest")
    for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(loaded.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
