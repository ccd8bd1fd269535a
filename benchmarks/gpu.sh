#!/usr/bin/env bash
# segjax on a GPU machine, beside PyTorch: run from a checkout's root with the machine's own
# JAX and PyTorch. Rows land in $OUT/results.jsonl as they finish; the whole log in $OUT/log.
# The PyTorch EfficientNet-Lite0 peer needs efficientnet-lite-pytorch: carried as a wheel in
# .whl/ where the machine has no network (pip download --no-deps efficientnet-lite-pytorch);
# the timm:resnet50 row needs timm the same way (pip download --no-deps timm).
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/log"
python3 benchmarks/gpu_bench.py --out "$OUT" --budget "${BUDGET:-400}" "$@" 2>&1 | tee -a "$OUT/log"
