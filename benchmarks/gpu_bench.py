"""segjax's train step on an accelerator, beside PyTorch's, in one run (benchmarks/gpu.sh runs it).

Rows in priority order; each is written to OUT/results.jsonl as soon as it finishes, so a run
cut short still reports what it measured. Per row: images/s, step ms, model FLOP utilisation
(XLA's forward+backward FLOP count x images/s) against the card's spec bf16 peak and against a
bf16 matmul timed in the same run, and peak device memory. `--loop` rows give the training
loop's efficiency (loop steps/s over the bare step's) on a tiny model, where host work shows.

    PYTHONPATH=. python benchmarks/gpu_bench.py --out results   # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_bench.py --smoke --out /tmp/smoke   # a quick CPU check
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s).
SPEC_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}

# (kind, arch, size, precision, batch, extra): segjax rows and their PyTorch peers, in priority
# order (a short GPU session measures the first ones). LITE0 is the default model: the
# EfficientNet-Lite0 UNet (segjax --encoder efficientnet-lite0 --features 16 --upsample
# nearest; PyTorch's `--model lite0`, the same network on the same package's definition).
LITE0 = {"encoder": "efficientnet-lite0", "features": 16}
LITE2 = {"encoder": "efficientnet-lite2", "features": 16}
ROWS = [
    ("segjax", "unet", 384, "bf16", 32, LITE0),
    ("torch", "lite0", 384, "bf16", 32, {"compile": True}),
    ("torch", "lite0", 384, "bf16", 32, {"compile": False}),
    ("depthwise", "lite0", 384, "bf16", 32, {}),
    ("segjax", "unet", 384, "fp16", 32, LITE0),
    ("torch", "lite0", 384, "fp16", 32, {"compile": True}),
    ("segjax", "unet", 384, "fp32", 32, LITE0),
    ("torch", "lite0", 384, "fp32", 32, {"compile": True}),
    ("segjax", "unet", 256, "bf16", 32, LITE0),
    ("torch", "lite0", 256, "bf16", 32, {"compile": True}),
    ("segjax", "unet", 256, "fp16", 32, LITE0),
    ("segjax", "unet", 256, "fp32", 32, LITE0),
    ("depthwise", "lite0", 384, "fp32", 32, {}),
    ("strided", "resnet50", 384, "bf16", 32, {}),
    ("loop", "unet", 64, "fp32", 8, {"features": 8, "encoder": "efficientnet-lite0"}),
    # timm's encoders (random weights: the speed is the same), PyTorch's timm model beside one
    ("segjax", "unet", 384, "bf16", 32, {"encoder": "resnet50", "features": 16}),
    ("torch", "timm:resnet50", 384, "bf16", 32, {"compile": True}),
    ("segjax", "unet", 384, "bf16", 32, {"encoder": "efficientnet-b3", "features": 16}),
    ("segjax", "unet", 384, "bf16", 32, {"encoder": "convnext-tiny", "features": 16}),
    ("segjax", "unet", 384, "bf16", 32, LITE2),
    ("segjax", "unet", 256, "bf16", 32, LITE2),
    ("segjax", "unet", 512, "bf16", 32, {}),
    ("torch", "unet", 512, "bf16", 32, {"compile": True}),
]
# The depthwise convolutions of EfficientNet-Lite0 at a 384x384 input: [stride-1 spatial size,
# channels, kernel, stride] of representative blocks.
DEPTHWISE = [(192, 96, 3, 2), (96, 144, 5, 2), (48, 240, 3, 2), (24, 480, 5, 1), (12, 1152, 3, 1)]
# ResNet-50's strided convolutions at a 384x384 input: [input spatial size, input channels,
# output channels, kernel] of the first block of stages 2-4 (the 3x3 and the 1x1 shortcut).
STRIDED = [(96, 128, 128, 3), (96, 256, 512, 1), (48, 256, 256, 3), (48, 512, 1024, 1)]
STRIDED += [(24, 512, 512, 3), (24, 1024, 2048, 1)]

DETERMINISM = """
import sys, time; sys.path.insert(0, sys.argv[1])
from segjax import runtime
runtime.configure(deterministic=sys.argv[2] == "1")
import jax, numpy as np
from benchmarks import benchmark
from segjax import parallel
from segjax.train.step import create_steps, create_train_state
config = benchmark.bench_config("unet", (int(sys.argv[3]),) * 2, 32, int(sys.argv[4]), "bf16")
facts = benchmark.bench_facts(config)
mesh = parallel.create_mesh()
steps = create_steps(config, facts, mesh, 100)
rng = np.random.default_rng(0)
h = int(sys.argv[3])
batch = parallel.gather_batch({"image": rng.integers(0, 256, (int(sys.argv[4]), h, h, 3), np.uint8),
                               "mask": rng.integers(0, 2, (int(sys.argv[4]), h, h), np.uint8)},
                              np.arange(int(sys.argv[4])), mesh)
finals, times = [], []
for _ in range(2):
    state = create_train_state(config, jax.random.key(0), 100, facts)
    for i in range(8):
        if i == 3:
            jax.block_until_ready(state.params); t = time.perf_counter()
        state, out = steps.train(state, batch, jax.random.key(1))
    jax.block_until_ready(state.params); times.append((time.perf_counter() - t) / 5)
    finals.append(jax.tree.leaves(jax.device_get(state.params)))
same = all(np.array_equal(a, b) for a, b in zip(*finals))
print(same, min(times))
"""


def versions() -> dict:
    names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "numpy")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def matmul_tflops(n: int) -> float:
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(10):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e12


def row_config(arch, size, precision, batch, extra, features: int):
    from benchmarks import benchmark

    return benchmark.bench_config(
        arch,
        (size, size),
        extra.get("features", features),
        batch,
        precision,
        "basic",
        encoder=extra.get("encoder", "scratch"),
        upsample="nearest" if extra.get("encoder") else "transpose",
    )


def segjax_row(arch, size, precision, batch, extra, steps, peaks) -> dict:
    from benchmarks import benchmark

    config = row_config(arch, size, precision, batch, extra, 32)
    gflops = benchmark.forward_backward_gflops(config, compile=False)
    r = benchmark.bench_train(config, steps=steps, gflops=gflops)
    achieved = r.achieved_gflops / 1e3  # TFLOP/s
    return {
        "img_per_s": r.img_per_s,
        "step_ms": r.step_ms,
        "gflop_per_img": r.gflops_per_img,
        "model_tflops": achieved,
        "mfu_spec": achieved / peaks["spec"] if peaks["spec"] else None,
        "mfu_matmul": achieved / peaks["matmul"],
        "data_wait": r.data_wait,
        "predict_img_per_s": r.predict_img_per_s,
        "peak_mem_mb": r.peak_mb,
        "params": r.params,
    }


def loop_row(arch, size, precision, batch, extra, steps) -> dict:
    from benchmarks import benchmark

    config = row_config(arch, size, precision, batch, extra, 8)
    return benchmark.bench_loop(config, steps=max(steps, 20))


def torch_row(arch, size, precision, batch, extra, steps, device) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "pytorch_reference.py"),
        "--model",
        arch,
        "--image-size",
        str(size),
        "--features",
        "32",
        "--batch-size",
        str(batch),
        "--steps",
        str(steps),
        "--device",
        device,
    ]
    cmd += ["--bf16"] * (precision == "bf16") + ["--fp16"] * (precision == "fp16")
    cmd += ["--compile"] * bool(extra.get("compile"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def depthwise_row(size, precision, batch, steps, smoke: bool) -> dict:
    """Each depthwise layer alone, forward and both gradients, in XLA's native grouped form, in
    segjax's shifted form and in the CPU's form (shifted taps, the kernel gradient image by
    image): milliseconds per call, medians."""
    import jax
    import jax.numpy as jnp

    from segjax.models.convolutions import depthwise_cpu, depthwise_native, depthwise_shifted

    dtype = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}[precision]
    row = {}
    for spatial, channels, k, stride in DEPTHWISE[:1] if smoke else DEPTHWISE:
        hw = spatial * size // 384
        x = jax.random.normal(jax.random.key(0), (batch, hw, hw, channels), dtype)
        w = jax.random.normal(jax.random.key(1), (k, k, 1, channels), dtype)
        forms = (("native", depthwise_native), ("shifted", depthwise_shifted))
        forms += (("cpu", lambda x, w, stride: depthwise_cpu(x, w, stride, "SAME")),)
        for name, form in forms:
            fn = functools.partial(form, stride=stride)
            label = f"{hw}x{hw}x{channels}_k{k}s{stride}_{name}"
            row.update(time_parts(fn, x, w, steps, label, ("fwd", "dx", "dw")))
    return row


def time_parts(fn, x, w, steps: int, label: str, parts) -> dict:
    """Median milliseconds of fn's forward ("fwd"), input gradient ("dx") and kernel gradient
    ("dw"), each jitted alone: {label_part_ms: ms}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    f = lambda x, w: jnp.sum(fn(x, w).astype(jnp.float32))
    calls = {
        "fwd": jax.jit(fn),
        "dx": jax.jit(jax.grad(f, argnums=0)),
        "dw": jax.jit(jax.grad(f, argnums=1)),
    }
    row = {}
    for part in parts:
        call = calls[part]
        call(x, w).block_until_ready()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            call(x, w).block_until_ready()
            times.append(time.perf_counter() - t)
        row[f"{label}_{part}_ms"] = float(np.median(times)) * 1e3
    return row


def strided_row(size, precision, batch, steps, smoke: bool) -> dict:
    """Each strided convolution of ResNet-50's stages alone, its input gradient in XLA's form
    (the output gradient dilated) and by phases (`strided.strided_cpu`, which segjax uses
    on CPU): milliseconds per call, medians. On a GPU the phases are used only if they win."""
    import jax
    import jax.numpy as jnp

    from segjax.models.strided import dense_native, strided_cpu

    dtype = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}[precision]
    row = {}
    for spatial, cin, cout, k in STRIDED[:1] if smoke else STRIDED:
        hw = spatial * size // 384
        x = jax.random.normal(jax.random.key(0), (batch, hw, hw, cin), dtype)
        w = jax.random.normal(jax.random.key(1), (k, k, cin, cout), dtype)
        pads = ((k // 2, k // 2),) * 2
        forms = {"native": dense_native, "phases": strided_cpu}
        for name, form in forms.items():
            fn = lambda x, w, form=form, pads=pads: form(x, w, (2, 2), pads)
            label = f"{hw}x{hw}x{cin}_k{k}s2_{cout}_{name}"
            row.update(time_parts(fn, x, w, steps, label, ("dx",)))
    return row


def determinism_row(size, batch) -> dict:
    """Two 8-step runs from one state, with and without --deterministic: bitwise equal? speed?"""
    row = {}
    for flag in ("0", "1"):
        done = subprocess.run(
            [sys.executable, "-c", DETERMINISM, str(ROOT), flag, str(size), str(batch)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1])
        same, seconds = done.stdout.split()[-2:]
        name = "deterministic" if flag == "1" else "default"
        row[f"{name}_bitwise_equal"] = same == "True"
        row[f"{name}_step_ms"] = float(seconds) * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.jsonl")
    parser.add_argument(
        "--budget",
        type=float,
        default=420,
        help="seconds: start no row after (the first always runs)",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check on a CPU")
    parser.add_argument("--only", nargs="*", help="row kinds to run (default: all)")
    args = parser.parse_args()
    from segjax import runtime

    runtime.configure()
    import jax

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    start = time.perf_counter()
    kind = jax.devices()[0].device_kind
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in kind), None)
    peaks = {"spec": spec, "matmul": matmul_tflops(512 if args.smoke else 8192)}
    head = {"row": "environment", "device": kind, "devices": jax.device_count(), **versions()}
    head.update(spec_bf16_tflops=spec, measured_bf16_matmul_tflops=peaks["matmul"])
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    with results.open("a") as f:
        f.write(json.dumps(head) + "\n")
    print(json.dumps(head), flush=True)
    ran = 0
    for kind_, arch, size, precision, batch, extra in ROWS:
        if args.only and kind_ not in args.only:
            continue
        if ran and time.perf_counter() - start > args.budget:
            print(f"budget spent: skipped {kind_} {arch} {size} {precision}", flush=True)
            continue
        if args.smoke:
            size, batch = min(size, 64), min(batch, 2)
            extra = {**extra, "features": 4} if kind_ != "torch" else extra
        steps = 3 if args.smoke else args.steps
        row = {"row": kind_, "arch": arch, "size": size, "precision": precision, "batch": batch}
        row.update({k: v for k, v in extra.items()})
        tic = time.perf_counter()
        try:
            if kind_ == "segjax":
                row.update(segjax_row(arch, size, precision, batch, extra, steps, peaks))
            elif kind_ == "loop":
                row.update(loop_row(arch, size, precision, batch, extra, steps))
            elif kind_ == "depthwise":
                row.update(depthwise_row(size, precision, batch, steps, args.smoke))
            elif kind_ == "strided":
                row.update(strided_row(size, precision, batch, steps, args.smoke))
            elif kind_ == "deterministic":
                row.update(determinism_row(size, batch))
            else:
                row.update(torch_row(arch, size, precision, batch, extra, steps, device))
        except Exception as err:  # one row failing (memory, a missing package) ends only it
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        row["seconds"] = time.perf_counter() - tic
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        ran += 1


if __name__ == "__main__":
    main()
