"""Data parallel over several (CPU) devices, bfloat16 compute: same results, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from segjax import parallel, predict, train
from segjax.config import replace

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, json; sys.path.insert(0, sys.argv[1])
import tests.conftest
import jax, numpy as np
from segjax.config import Config
from segjax import train, predict
config = Config.from_dict(json.loads(sys.argv[2]))
assert jax.device_count() == int(sys.argv[4]), jax.devices()
train.fit(config, sys.argv[3], progress=False)
loaded = predict.load_run(sys.argv[3], "latest")
_, splits = train.load_splits(loaded.config)
probs = predict.predict_all(loaded, splits.arrays.images[splits.val], 4, tta=True)
leaves = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_leaves_with_path(loaded.variables)}
np.savez(sys.argv[3] + ".npz", probs=probs, **leaves)
"""


def run_on_devices(config, run_dir: Path, devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(ROOT),
            json.dumps(config.to_dict()),
            str(run_dir),
            str(devices),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(str(run_dir) + ".npz"))


def test_four_devices_train_and_predict_like_one(tiny_config, tmp_path):
    config = replace(tiny_config, train={"epochs": 1})
    one = run_on_devices(config, tmp_path / "one", 1)
    four = run_on_devices(config, tmp_path / "four", 4)
    assert one.keys() == four.keys()
    for name in one:
        # BatchNorm statistics are those of the global batch, so only summation order differs.
        np.testing.assert_allclose(four[name], one[name], rtol=2e-3, atol=2e-4, err_msg=name)
    assert np.mean((four["probs"] > 0.5) == (one["probs"] > 0.5)) > 0.999


def test_batch_not_divisible_by_the_devices_is_a_clear_error(tiny_config, tmp_path):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tests.conftest;"
        "from segjax import parallel; parallel.check_batch_size(6)"
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode != 0
    assert "--batch-size 6 does not split over 4 devices: use a multiple of 4" in result.stderr


def test_bf16_training_converges_with_float32_parameters(tiny_config):
    bf16 = {"aug": "none", "schedule": "constant", "lr": 1e-2, "precision": "bf16"}
    config = replace(tiny_config, model={"dtype": "bfloat16", "features": 8}, train=bf16)
    config, splits = train.load_splits(config)
    idx = splits.train[:4]
    mesh = parallel.create_mesh()
    batch = parallel.shard_batch(
        {"image": splits.arrays.images[idx], "mask": splits.arrays.masks[idx]}, mesh, 4
    )
    steps = train.create_steps(config, mesh)
    state = train.create_train_state(config, jax.random.key(0), 10)
    losses = []
    for _ in range(60):
        state, out = steps.train(state, batch, jax.random.key(1))
        losses.append(float(out["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    assert {str(x.dtype) for x in jax.tree.leaves(state.params)} == {"float32"}
    predict_fn = predict.create_predict_fn(config, mesh, tta=False)
    probs = predict_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])
    assert probs.dtype == np.float32


@pytest.mark.parametrize("devices", [1])
def test_mesh_covers_all_devices(devices):
    mesh = parallel.create_mesh()
    assert mesh.devices.size == jax.device_count() >= devices


DIST_CHILD = """
import sys, json; sys.path.insert(0, sys.argv[1])
import tests.conftest
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[5], num_processes=2,
                           process_id=int(sys.argv[4]))
from segjax.config import Config
from segjax import train
from segjax.train import fit
config = Config.from_dict(json.loads(sys.argv[2]))
fit(config, sys.argv[3], progress=False)
from segjax import checkpoint
manager = checkpoint.create_manager(sys.argv[3] + "/checkpoints", read_only=True)
template = train.create_train_state(config, jax.random.key(0), 1)
state, meta = checkpoint.restore(manager, manager.latest_step(), template)
leaves = {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0)) for k, v in
          jax.tree_util.tree_leaves_with_path(state.params)}
np.savez(sys.argv[3] + f".{sys.argv[4]}.npz", **leaves)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_jax_distributed_train_and_agree(tiny_config, tmp_path):
    config = replace(tiny_config, train={"epochs": 1})
    run_dir = tmp_path / "dist"
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DIST_CHILD,
                str(ROOT),
                json.dumps(config.to_dict()),
                str(run_dir),
                str(i),
                address,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    first, second = (dict(np.load(f"{run_dir}.{i}.npz")) for i in range(2))
    assert first.keys() == second.keys() and first
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    single = run_on_devices(config, tmp_path / "single", 2)
    for name in first:
        key = "['params']" + name
        np.testing.assert_allclose(first[name], single[key], rtol=2e-3, atol=2e-4, err_msg=name)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # process 0 only
