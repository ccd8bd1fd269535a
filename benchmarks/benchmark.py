"""Speed and memory of the train step and predict: images/s, GFLOP/s, data-wait, peak memory.

A maintainer's tool, run from a checkout (`python scripts/benchmark.py`), not part of the
installed package.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from segjax import losses, parallel
from segjax.config import Config, DataConfig, ModelConfig, RunFacts, TrainConfig
from segjax.data import decode, sources
from segjax.inference import predictor
from segjax.models.builder import create_model
from segjax.train import loop
from segjax.train.precision import COMPUTE_DTYPES, choose, this_device
from segjax.train.progress import Progress
from segjax.train.start import Setup
from segjax.train.step import create_steps, create_train_state


def bench_config(
    arch,
    size,
    features: int,
    batch: int,
    precision: str,
    aug: str = "basic",
    encoder: str = "scratch",
    upsample: str = "transpose",
):
    return Config(
        data=DataConfig(image_size=size, normalize="dataset"),
        model=ModelConfig(arch=arch, encoder=encoder, upsample=upsample, features=features),
        train=TrainConfig(batch_size=batch, eval_batch_size=batch, aug=aug, precision=precision),
    )


def bench_facts(config: Config) -> RunFacts:
    """What a run would find: fixed normalisation statistics, the precision's dtype."""
    dtype = COMPUTE_DTYPES[choose(config.train.precision, this_device())]
    return RunFacts(mean=(0.45,) * 3, std=(0.25,) * 3, dtype=dtype, epochs=config.train.epochs)


def param_count(config: Config) -> int:
    model = create_model(config.model)
    h, w = config.data.image_size
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.ones((1, h, w, 3)), train=False)
    )
    return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def flops(fn, *args, compile: bool = True) -> float:
    """XLA's count of floating-point operations of `fn(*args)` (the lowered program's estimate
    when `compile=False` or when a backend has none for the compiled one)."""
    lowered = jax.jit(fn).lower(*args)
    cost = None if compile else lowered.cost_analysis()
    cost = cost or lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def forward_backward_gflops(config: Config, compile: bool = True) -> float:
    """XLA's count of floating-point operations for forward + backward of one image."""
    model = create_model(config.model, bench_facts(config).dtype)
    h, w = config.data.image_size
    x = jnp.ones((1, h, w, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    masks = jnp.ones((1, h, w))

    def loss(params, batch_stats):
        logits, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return losses.bce(logits, masks) + losses.dice(logits, masks)

    args = (variables["params"], variables.get("batch_stats", {}))
    return flops(jax.grad(loss), *args, compile=compile) / 1e9


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul throughput of the default device (the achievable peak)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / np.median(times) / 1e9


def peak_memory_mb() -> float:
    """Peak device memory where the backend reports it (GPU/TPU), else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclasses.dataclass
class Result:
    arch: str
    params: int
    img_per_s: float
    step_ms: float
    gflops_per_img: float
    achieved_gflops: float
    data_wait: float
    predict_img_per_s: float
    peak_mb: float
    encoder: str = "scratch"

    @property
    def label(self) -> str:
        return self.arch if self.encoder == "scratch" else f"{self.arch} {self.encoder}"


def bench_train(
    config: Config, steps: int = 10, warmup: int = 2, gflops: float | None = None
) -> Result:
    """Median step time on staged batches, then the same loop feeding batches from host memory."""
    tc, facts = config.train, bench_facts(config)
    mesh = parallel.create_mesh()
    fns = create_steps(config, facts, mesh, 100)
    state = jax.device_put(
        create_train_state(config, jax.random.key(0), 100, facts), parallel.replicated(mesh)
    )
    h, w = config.data.image_size
    rng = np.random.default_rng(0)
    pool = {
        "image": rng.integers(0, 256, (4 * tc.batch_size, h, w, 3), dtype=np.uint8),
        "mask": rng.integers(0, 2, (4 * tc.batch_size, h, w), dtype=np.uint8),
    }
    key = jax.random.key(1)

    def host_batch(i):
        idx = np.arange(i * tc.batch_size, (i + 1) * tc.batch_size) % len(pool["image"])
        return parallel.gather_batch(pool, idx, mesh)

    staged = host_batch(0)
    for _ in range(warmup):
        state, out = fns.train(state, staged, key)
    jax.block_until_ready(out)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, out = fns.train(state, staged, key)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    compute = float(np.median(times))
    t = time.perf_counter()
    for i in range(steps):  # the training loop's pattern: no blocking between steps
        state, out = fns.train(state, host_batch(i), key)
    jax.block_until_ready(out)
    fed = (time.perf_counter() - t) / steps
    predict_fn = functools.partial(
        predictor.create_predict_fn(config, facts, mesh, tta=False),
        {"params": state.params, "batch_stats": state.batch_stats},
    )
    predict_fn(staged["image"]).block_until_ready()
    t = time.perf_counter()
    for _ in range(3):
        predict_fn(staged["image"]).block_until_ready()
    predict_s = (time.perf_counter() - t) / 3
    gflops = gflops if gflops is not None else forward_backward_gflops(config)
    return Result(
        arch=config.model.arch,
        params=param_count(config),
        img_per_s=tc.batch_size / compute,
        step_ms=compute * 1e3,
        gflops_per_img=gflops,
        achieved_gflops=gflops * tc.batch_size / compute,
        data_wait=max(0.0, 1.0 - compute / fed),
        predict_img_per_s=tc.batch_size / predict_s,
        peak_mb=peak_memory_mb(),
        encoder=config.model.encoder,
    )


def bench_loop(config: Config, steps: int = 30, repeats: int = 2) -> dict[str, float]:
    """Loop efficiency: the real training loop's steps/s over the bare jitted step's.

    (a) the bare train step, with the config's augmentation, on one device-resident batch;
    (b) the loop that `fit` runs (`loop.train_epoch`: gathering from decoded arrays, feeding,
    loss read-back, progress bar) over `steps` batches of in-memory images. Both run a whole
    untimed pass first (compiling, and touching every buffer they allocate: with huge pages the
    first touches are slow), then alternate `repeats` timed passes, each ending when the state
    is ready; the best pass of each is compared, so neither pays for warm-up or for a slow
    moment of a shared machine that the other escaped.
    """
    import contextlib
    import io

    tc, facts = config.train, bench_facts(config)
    mesh = parallel.create_mesh()
    fns = create_steps(config, facts, mesh, 100)
    state = jax.device_put(
        create_train_state(config, jax.random.key(0), steps, facts), parallel.replicated(mesh)
    )
    h, w = config.data.image_size
    rng = np.random.default_rng(0)
    n = steps * tc.batch_size
    arrays = decode.Arrays(
        tuple(f"{i}.png" for i in range(n)),
        rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
        rng.integers(0, 2, (n, h, w), dtype=np.uint8),
        np.full((n, 2), (h, w), np.int32),
    )
    splits = sources.Splits(arrays, np.arange(n), np.arange(0), np.arange(0))
    setup = Setup(config, facts, Path("."), splits, steps, fns, mesh, None, True)
    key = jax.random.key(1)
    labelled = {"image": arrays.images, "mask": arrays.masks}
    batch = parallel.gather_batch(labelled, np.arange(tc.batch_size), mesh)

    def bare_pass(state):
        t = time.perf_counter()
        for _ in range(steps):
            state, _ = fns.train(state, batch, key)
        jax.block_until_ready(state.params)
        return state, steps / (time.perf_counter() - t)

    def loop_pass(state, epoch: int):
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # the progress bar is drawn, not shown
            state, _, _ = loop.train_epoch(setup, state, Progress(epoch=epoch), key, True)
        jax.block_until_ready(state.params)
        return state, steps / (time.perf_counter() - t)

    state, _ = bare_pass(state)
    state, _ = loop_pass(state, 0)
    bare, looped = [], []
    for repeat in range(repeats):
        state, rate = bare_pass(state)
        bare.append(rate)
        state, rate = loop_pass(state, repeat + 1)
        looped.append(rate)
    best_bare, best_loop = max(bare), max(looped)
    return {
        "loop_steps_per_s": best_loop,
        "bare_steps_per_s": best_bare,
        "efficiency": best_loop / best_bare,
    }


def format_results(results: list[Result], peak: float | None) -> str:
    width = max(11, *(len(r.label) for r in results))
    head = (
        f"{'model':{width}s} {'params':>10s} {'img/s':>7s} {'step ms':>8s} {'GFLOP/img':>9s} "
        f"{'GFLOP/s':>8s} {'of peak':>7s} {'wait':>6s} {'pred img/s':>10s} {'peak MB':>8s}"
    )
    lines = [head]
    for r in results:
        share = f"{r.achieved_gflops / peak:7.1%}" if peak else f"{'-':>7s}"
        lines.append(
            f"{r.label:{width}s} {r.params:10,d} {r.img_per_s:7.2f} {r.step_ms:8.0f} "
            f"{r.gflops_per_img:9.1f} {r.achieved_gflops:8.1f} {share} {r.data_wait:6.1%} "
            f"{r.predict_img_per_s:10.2f} {r.peak_mb:8.0f}"
        )
    return "\n".join(lines)


def torch_model(encoder: str) -> str | None:
    """benchmarks/pytorch_reference.py's --model for segjax's unet on `encoder` (None: none)."""
    from segjax.models.registry import ENCODERS

    if encoder in ("scratch", "efficientnet-lite0"):
        return {"scratch": "unet", "efficientnet-lite0": "lite0"}[encoder]
    hub = ENCODERS[encoder].hub if encoder in ENCODERS else ""
    if hub and ENCODERS[encoder].family in ("resnet", "efficientnet"):  # strides 2..32 in timm
        return "timm:" + hub.split("/")[1].split(".")[0]
    return None


def compare_torch(
    results: list[Result], size, features: int, batch: int, steps: int, encoder: str = "scratch"
) -> str:
    """Run the PyTorch reference (eager, then torch.compile) beside segjax's `unet` on
    `encoder`: the scratch UNet; the Lite0 UNet or a timm encoder's UNet (SMP-like decoder)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pytorch_reference.py"
    unet = next((r for r in results if r.arch == "unet" and r.encoder == encoder), None)
    model = torch_model(encoder)
    if unet is None or model is None or not script.exists():
        return (
            "PyTorch comparison: needs --arch unet and --encoder scratch, efficientnet-lite0 "
            "or a ResNet/EfficientNet-B encoder (timm installed)"
        )
    lines = [f"{model + ' train step':32s} {'img/s':>7s} {'segjax / it':>11s}"]
    lines.append(f"{'segjax (JAX)':32s} {unet.img_per_s:7.2f} {1.0:11.2f}")
    for extra, label in (
        ([], "PyTorch channels_last eager"),
        (["--compile"], "PyTorch channels_last compile"),
    ):
        cmd = [
            sys.executable,
            str(script),
            "--model",
            model,
            "--image-size",
            f"{size[0]}x{size[1]}",
            "--features",
            str(features),
            "--batch-size",
            str(batch),
            "--steps",
            str(steps),
            *extra,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["failed"])[-1]
            lines.append(f"{label:32s} failed: {tail}")
            continue
        torch_ips = json.loads(done.stdout.strip().splitlines()[-1])["img_per_s"]
        lines.append(f"{label:32s} {torch_ips:7.2f} {unet.img_per_s / torch_ips:11.2f}")
    return "\n".join(lines)


def benchmark_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train-step images/s, GFLOP/s against the measured matmul peak, data-wait "
        "fraction, predict images/s and peak memory (random data, no files needed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--arch", nargs="+", default=["unet", "attn"], help="architectures")
    parser.add_argument("--image-size", default="256", help="N or HxW")
    parser.add_argument("--features", type=int, default=32, help="base features")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument(
        "--aug",
        choices=["none", "basic", "strong"],
        default="basic",
        help="augmentation inside the step",
    )
    parser.add_argument(
        "--compare-torch",
        action="store_true",
        help="also time benchmarks/pytorch_reference.py (eager and torch.compile, "
        "channels_last) on the same UNet step; needs torch installed",
    )
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="only parameter counts and forward+backward GFLOPs (no timing)",
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help="loop efficiency: the real training loop's steps/s over the bare step's (try "
        "--features 8 --image-size 64, where host work shows)",
    )
    parser.add_argument(
        "--encoder",
        nargs="+",
        default=["scratch"],
        help="encoders (see segjax train --help); --compare-torch takes the first with a "
        "PyTorch counterpart",
    )
    parser.add_argument("--upsample", default="transpose", help="transpose, resize or nearest")
    parser.add_argument(
        "--layers",
        action="store_true",
        help="per-layer truth: every convolution of the (first) model alone, forward, input "
        "and weight gradient, in each of segjax's forms and in PyTorch where installed "
        "(benchmarks/layers.py)",
    )
    parser.add_argument("--json", help="--layers: also write its rows to this JSON-lines file")
    parser.add_argument(
        "--default-xla-flags",
        action="store_true",
        help="measure without segjax's XLA:CPU flags and huge pages",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """scripts/benchmark.py (which sets XLA's flags and huge pages before JAX starts)."""
    args = benchmark_parser().parse_args(argv)
    from segjax.fields import parse_size

    benchmark = sys.modules[__name__]

    size = parse_size(args.image_size)
    print(
        f"device: {jax.devices()[0].device_kind} x {jax.device_count()}; jax {jax.__version__}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
    )
    print(f"{size[0]}x{size[1]}, base {args.features}, batch {args.batch_size}, {args.precision}")
    configs = [
        benchmark.bench_config(
            a,
            size,
            args.features,
            args.batch_size,
            args.precision,
            args.aug,
            encoder=encoder,
            upsample=args.upsample,
        )
        for encoder in args.encoder
        for a in args.arch
    ]
    if args.layers:
        from benchmarks import layers

        out = open(args.json, "w") if args.json else None  # noqa: SIM115 (rows as they finish)
        try:
            rows = layers.run(configs[0], args.batch_size, repeats=args.steps, out=out)
        finally:
            if out is not None:
                out.close()
        print(layers.summary(rows))
        return
    if args.loop:
        for config in configs:
            r = benchmark.bench_loop(config, steps=max(args.steps, 10))
            print(
                f"{config.model.arch}: loop efficiency: {r['efficiency']:.2f} (loop "
                f"{r['loop_steps_per_s']:.2f} steps/s, bare step {r['bare_steps_per_s']:.2f} "
                "steps/s)"
            )
        return
    if args.flops_only:
        for config in configs:
            print(
                f"{config.model.arch:11s} {config.model.encoder:18s} "
                f"params {benchmark.param_count(config):>11,d}  "
                f"forward+backward {benchmark.forward_backward_gflops(config):7.1f} GFLOP/image"
            )
        return
    peak = benchmark.matmul_peak_gflops()
    print(f"measured float32 matmul peak: {peak:.0f} GFLOP/s")
    results = []
    for config in configs:  # each row as it finishes (a big encoder takes minutes on a CPU)
        results.append(benchmark.bench_train(config, steps=args.steps))
        print(benchmark.format_results(results[-1:], peak).splitlines()[-1], flush=True)
    print(benchmark.format_results(results, peak))
    if args.compare_torch:
        encoder = next((e for e in args.encoder if torch_model(e)), args.encoder[0])
        print(
            benchmark.compare_torch(
                results, size, args.features, args.batch_size, args.steps, encoder
            )
        )
