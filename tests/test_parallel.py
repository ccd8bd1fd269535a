"""Data parallel over several (CPU) devices and processes, bfloat16 compute: same results.

Summation order differs between device layouts, and Adam turns a tiny gradient difference into
a visible one on a near-zero parameter, so runs are compared where order cannot move much:
metrics, each parameter leaf as a whole (relative norm), and mask agreement.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from segjax import parallel
from segjax.config import replace
from segjax.data import decode, layout, sources
from segjax.inference import predictor, rle
from segjax.train import start
from segjax.train.step import create_steps, create_train_state
from tests.conftest import on_devices

pytestmark = pytest.mark.slow  # processes, several devices

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, json; sys.path.insert(0, sys.argv[1])
import tests.conftest
import jax, numpy as np
config_json, run_dir, devices, process, address = sys.argv[2:7]
if address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=2, process_id=int(process))
assert jax.local_device_count() == int(devices), jax.devices()
from segjax.config import Config, InferenceOptions, RunOptions
from segjax.data import sources
from segjax.inference import predictor, submission
from segjax.inference.run_loader import load_run
from segjax.train import loop
from tests.conftest import all_probs
loop.fit(Config.from_dict(json.loads(config_json)), run_dir, RunOptions(progress=False))
submission.make_submission(run_dir, InferenceOptions(progress=False), out=run_dir + ".csv")
loaded = load_run(run_dir, "latest")
splits = sources.load_splits(loaded.config)
probs = all_probs(loaded, splits.arrays.images[splits.val], 4, tta=True)
leaves = {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0)) for k, v in
          jax.tree_util.tree_leaves_with_path(loaded.variables)}
np.savez(f"{run_dir}.{process}.npz", probs=probs, **leaves)
"""


def launch(config, run_dir: Path, devices: int, process: int = 0, address: str = ""):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    )
    argv = [str(ROOT), json.dumps(config.to_dict()), str(run_dir), str(devices), str(process)]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv, address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(procs) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]


def outcome(run_dir: Path, process: int = 0) -> dict:
    """What a run produced: its arrays, metrics rows and submission rows."""
    arrays = dict(np.load(f"{run_dir}.{process}.npz"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    with open(f"{run_dir}.csv", newline="") as f:
        rows = list(csv.reader(f))
    return {"arrays": arrays, "metrics": metrics, "rows": rows}


def assert_alike(a: dict, b: dict, sizes: dict[str, tuple[int, int]], config) -> None:
    """Two runs that differ only in device layout: metrics, leaves, masks and rows agree.

    A leaf's tolerance is 1% of its size plus how far Adam can move it (lr per element per
    step): a bias that starts at zero is judged by its movement, not its tiny norm.
    """
    assert a["arrays"].keys() == b["arrays"].keys()
    steps = len(a["metrics"]) * 32 // config.train.batch_size  # 32 training images
    for name in a["arrays"]:
        if name == "probs":
            continue
        x, y = a["arrays"][name].astype(np.float64), b["arrays"][name].astype(np.float64)
        reach = np.linalg.norm(y) + config.train.lr * steps * np.sqrt(y.size)
        assert np.linalg.norm(x - y) <= 1e-2 * reach, (name, np.linalg.norm(x - y) / reach)
    assert np.mean((a["arrays"]["probs"] > 0.5) == (b["arrays"]["probs"] > 0.5)) > 0.999
    for ra, rb in zip(a["metrics"], b["metrics"], strict=True):
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-3)
        assert ra["val_mean_dice"] == pytest.approx(rb["val_mean_dice"], abs=2e-3)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-3)
    assert [r[0] for r in a["rows"]] == [r[0] for r in b["rows"]]  # the same rows, in order
    equal = total = 0
    for ra, rb in zip(a["rows"][1:], b["rows"][1:], strict=True):
        ma, mb = rle.decode(ra[1], sizes[ra[0]]), rle.decode(rb[1], sizes[rb[0]])
        equal, total = equal + np.sum(ma == mb), total + ma.size
    assert equal / total >= 0.999


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory, demo_dir):
    from tests.conftest import make_tiny_config

    config = replace(make_tiny_config(demo_dir), train={"epochs": 1})
    run_dir = tmp_path_factory.mktemp("four") / "run"
    finish([launch(config, run_dir, 4)])
    sizes = {s.id: decode.read_mask(s.image).shape for s in layout.discover(demo_dir).test}
    return config, outcome(run_dir), sizes


def test_four_devices_train_and_predict_like_one(four_devices, tmp_path):
    config, four, sizes = four_devices
    finish([launch(config, tmp_path / "one", 1)])
    assert_alike(four, outcome(tmp_path / "one"), sizes, config)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_two_devices_train_and_submit_like_one_of_four(four_devices, tmp_path):
    """jax.distributed on one machine (gloo): each process feeds its own devices' rows."""
    config, four, sizes = four_devices
    run_dir = tmp_path / "dist"
    address = f"127.0.0.1:{free_port()}"
    finish([launch(config, run_dir, 2, i, address) for i in range(2)])
    first, second = (dict(np.load(f"{run_dir}.{i}.npz")) for i in range(2))
    for name in first:  # the replicated state is the same on both processes
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert_alike(outcome(run_dir), four, sizes, config)
    assert len(outcome(run_dir)["metrics"]) == 1  # process 0 alone writes metrics.jsonl


def test_gather_batch_takes_the_rows_each_device_holds():
    mesh = parallel.create_mesh()
    source = {"x": np.arange(40).reshape(10, 4)}
    batch = parallel.gather_batch(source, np.array([7, 2, 2, 9]), mesh)
    np.testing.assert_array_equal(np.asarray(batch["x"]), source["x"][[7, 2, 2, 9]])


def test_bf16_training_converges_with_float32_parameters(tiny_config):
    bf16 = {"aug": "none", "schedule": "constant", "lr": 1e-2, "precision": "bf16"}
    config = replace(tiny_config, model={"features": 8}, train=bf16)
    splits = sources.load_splits(config)
    facts = start.initial_facts(config, splits)
    assert facts.dtype == "bfloat16"
    idx = splits.train[:4]
    mesh = parallel.create_mesh()
    batch = on_devices({"image": splits.arrays.images[idx], "mask": splits.arrays.masks[idx]}, mesh)
    steps = create_steps(config, facts, mesh, 10)
    state = create_train_state(config, jax.random.key(0), 10, facts)
    losses = []
    for _ in range(60):
        state, out = steps.train(state, batch, jax.random.key(1))
        losses.append(float(out["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {"float32"}
    predict_fn = predictor.create_predict_fn(config, facts, mesh, tta=False)
    probs = predict_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])
    assert probs.dtype == np.float32
