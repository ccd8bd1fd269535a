"""Measure training and prediction speed and memory (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout's tool, not installed
from segjax import runtime  # noqa: E402

if __name__ == "__main__":
    fast = "--default-xla-flags" not in sys.argv  # decided before JAX starts
    if fast:
        runtime.reexec_with_hugepages()
    runtime.configure(fast_cpu=fast)
    from benchmarks import benchmark

    benchmark.main()
