"""The train and predict steps compile for a TPU v5e-8 on this CPU (libtpu, no TPU needed)."""

from __future__ import annotations

import importlib.util

import jax
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("libtpu") is None,
        reason=f'compiling for a TPU needs libtpu: pip install "jax[tpu]=={jax.__version__}"',
    ),
]


def test_the_steps_compile_for_a_v5e_8_with_memory_and_cost_per_chip():
    from benchmarks import tpu_compile

    row = tpu_compile.run("v5e:2x4", 64, 2, encoder="scratch", features=4)
    assert row["devices"] == 8 and row["batch"] == 16
    for step in ("train", "predict"):
        assert row[f"{step}_total_mb"] > 0 and row[f"{step}_flops"] > 0
        assert row[f"{step}_roofline_seconds"] > 0
