"""The benchmark (benchmarks/benchmark.py, a checkout's tool): its FLOP count and its runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import benchmark
from segjax.config import replace


def test_the_flop_count_of_one_convolution_is_the_hand_computed_one():
    x = jnp.ones((1, 8, 8, 3))
    w = jnp.ones((3, 3, 3, 4))
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    # 6x6 outputs x 4 channels, each 3x3x3 multiply-adds (XLA counts no padded taps)
    assert benchmark.flops(conv, x, w) == 2 * 6 * 6 * 4 * (3 * 3 * 3)
    a, b = jnp.ones((5, 7)), jnp.ones((7, 3))
    assert benchmark.flops(jnp.dot, a, b) == 2 * 5 * 7 * 3


@pytest.mark.slow
def test_bench_train_and_the_loop_run_on_a_tiny_model():
    config = benchmark.bench_config("unet", (32, 32), features=4, batch=2, precision="fp32")
    config = replace(config, model={"depth": 2})
    result = benchmark.bench_train(config, steps=2, warmup=1)
    assert result.params == 7549  # tests/test_models.py's count of this UNet
    assert np.isfinite(result.img_per_s) and 0 <= result.data_wait < 1
    loop = benchmark.bench_loop(config, steps=4)
    assert loop["efficiency"] > 0 and "unet" in benchmark.format_results([result], peak=100.0)


def run_gpu_script(out, *kinds: str):
    """benchmarks/gpu_bench.py in smoke mode with a budget of 0 s (only the first row runs):
    the process and the rows it wrote."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_bench.py", "--smoke", "--only", *kinds]
        + ["--budget", "0", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return done, rows


@pytest.mark.slow
def test_the_gpu_script_runs_in_smoke_mode_and_writes_rows_as_they_finish(tmp_path):
    """benchmarks/gpu_bench.py, prepared for a lent GPU: its smoke mode on this CPU, with a
    budget of 0 s: the first depthwise row runs (the first always does), the rest are skipped."""
    done, rows = run_gpu_script(tmp_path, "depthwise")
    assert rows[0]["row"] == "environment" and rows[1]["row"] == "depthwise"
    forms = {key.split("_")[2] for key in rows[1] if key.endswith("_ms")}
    assert forms == {"native", "shifted", "cpu"}
    assert "budget spent: skipped depthwise" in done.stdout
    # the strided convolutions' row: XLA's input gradient and the phases, side by side
    _, (_, row) = run_gpu_script(tmp_path / "strided", "strided")
    assert row["row"] == "strided" and "error" not in row, row
    assert {key.split("_")[-3] for key in row if key.endswith("_dx_ms")} == {"native", "phases"}
