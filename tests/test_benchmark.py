"""scripts/benchmark.py's measurements run end to end on a tiny model (figures never asserted)."""

from __future__ import annotations

import math

from segjax import benchmark
from segjax.config import replace


def test_bench_train_reports_every_figure():
    config = benchmark.bench_config("unet", (32, 32), features=4, batch=2, precision="fp32")
    config = replace(config, model={"depth": 2})
    result = benchmark.bench_train(config, steps=2, warmup=1)
    assert result.params == benchmark.param_count(config) > 0
    for value in (result.img_per_s, result.gflops_per_img, result.predict_img_per_s):
        assert math.isfinite(value) and value > 0
    assert 0 <= result.data_wait < 1
    assert "unet" in benchmark.format_results([result], peak=100.0)
