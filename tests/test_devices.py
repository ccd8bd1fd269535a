"""Any device count: presets fit their batches to it, the demo trains on 8 fake devices and
the defaults on 2 without a batch flag, and an asked-for batch that does not split is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segjax import parallel
from segjax.config import Config, replace

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("devices", [1, 2, 3, 8])
@pytest.mark.parametrize("preset", [Config, Config.demo], ids=["defaults", "demo"])
def test_presets_fit_their_batches_to_the_device_count(preset, devices):
    config = parallel.fit_batches(preset(), devices=devices)
    for name in ("batch_size", "eval_batch_size"):
        asked, fitted = getattr(preset().train, name), getattr(config.train, name)
        assert fitted % devices == 0 and asked <= fitted < asked + devices, (name, fitted)
    # what the user asked for is kept, whether it splits or not (start() refuses it then)
    kept = parallel.fit_batches(
        replace(preset(), train={"batch_size": 5}), {"batch_size"}, devices=devices
    )
    assert kept.train.batch_size == 5


def _train(devices: int, *flags: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    )
    command = [sys.executable, "-m", "segjax", "train", *flags]
    command += ["--epochs", "1", "--image-size", "32", "--features", "4", "--depth", "2"]
    command += ["--no-tune", "--no-progress", "--run-dir", str(tmp_path / "run")]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize(
    "devices, data, batch",
    [(8, False, "batch 8 (1 per device)"), (2, True, "batch 8 (4 per device)")],
    ids=["demo-on-8", "defaults-on-2"],
)
def test_a_run_without_a_batch_flag_trains_on_that_many_devices(
    devices, data, batch, demo_dir, tmp_path
):
    flags = ("--data-dir", str(demo_dir), "--encoder", "scratch") if data else ()
    done = _train(devices, *flags, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{devices} cpu devices" in done.stdout and batch in done.stdout, done.stdout


@pytest.mark.slow
def test_an_asked_for_batch_that_does_not_split_is_one_clear_error(tmp_path):
    done = _train(8, "--batch-size", "6", tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --batch-size 6 does not split over 8 devices: use a multiple of 8"
    )
    assert not (tmp_path / "run").exists()
