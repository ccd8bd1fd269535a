"""The `segjax` commands: each parses its flags into settings and options, then makes one
library call. No JAX import at module level (the process is set up first)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from segjax import runtime
from segjax.cli import common, flags
from segjax.config import InferenceOptions, RunOptions
from segjax.errors import UserError
from segjax.files import check_output_file, check_output_folder

# ---------------------------------------------------------------------------- train


def train_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_config_flags(parser)
    group = parser.add_argument_group("this command")
    group.add_argument(
        "--fold",
        metavar="I|all",
        help="with --folds K: the fold that validates (0..K-1), or all: train the K folds one "
        "after another into runs/<name>/fold-<I>/ and tune their ensemble out of fold "
        "(--resume skips finished folds; --time-budget is for all folds together)",
    )
    group.add_argument("--run-dir", help="run folder (default runs/<name>)")
    group.add_argument("--name", help="run name (default <arch>-<date>-<time>)")
    flags.add_option_flags(group, RunOptions)
    group.add_argument(
        "--deterministic",
        action="store_true",
        help="GPU: deterministic reductions and convolutions, so that --resume is bitwise "
        "equal to never stopping there too (slower; CPU runs are deterministic anyway)",
    )
    common.distributed_flags(parser)
    common.process_flags(parser)


def fold_number(args: argparse.Namespace) -> int | None:
    """--fold I as a number (None for all or no --fold); --fold and --folds come together."""
    if (args.fold is None) != (args.folds is None) and not args.resume:
        raise UserError("--folds K and --fold I|all come together (--fold all trains every fold)")
    if args.fold in (None, "all"):
        return None
    try:
        return int(args.fold)
    except ValueError:
        raise UserError(f"--fold {args.fold}: expected a fold number or all") from None


def train(args: argparse.Namespace) -> None:
    from segjax import parallel, workflows
    from segjax.runs import run_folder

    started = float(os.environ["SEGJAX_START"].partition(":")[2])
    options = flags.option_values(args, RunOptions, started=started)  # checked before any work
    common.initialize_distributed(args)
    fold_all = args.fold == "all"
    if args.resume:
        run_dir = (
            Path(args.run_dir)
            if args.run_dir
            else (
                run_folder.RUNS_ROOT / args.name
                if args.name
                else run_folder.newest_run(folds=fold_all)
            )
        )
        config = run_folder.resume_config(run_dir, flags.given_fields(args))
        fold_all = fold_all or run_folder.is_folds(run_dir)
        fold = fold_number(args)
        if fold is not None and fold != config.data.fold:
            raise UserError(f"{run_dir} validates on fold {config.data.fold}, not {args.fold}")
    else:
        config = flags.train_config(args)  # numbers checked before anything else
        asked = {name for _, name in flags.given_fields(args)}
        config = parallel.fit_batches(config, asked)  # presets split over any device count
        fold = fold_number(args)
        if fold is not None:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, fold=fold))
        run_dir = (
            Path(args.run_dir)
            if args.run_dir
            else run_folder.new_run_dir(run_folder.RUNS_ROOT, args.name, config.model.arch)
        )
        config = dataclasses.replace(config, name=run_dir.name)
    print(f"run folder: {run_dir}")
    if fold_all:
        workflows.train_folds_and_tune(config, run_dir, options)
    else:
        workflows.train_and_tune(config, run_dir, options)


# ---------------------------------------------------------------------------- submit


def submit_arguments(parser: argparse.ArgumentParser) -> None:
    common.runs_flag(parser, several=True)
    parser.add_argument("--data-dir", help="data folder with test/images (default: the run's)")
    parser.add_argument("--out", help="output CSV (default <run or k-fold folder>/submission.csv)")
    parser.add_argument(
        "--order",
        choices=["F", "C"],
        default="F",
        help="RLE pixel order: F column-major (competition, default), C row-major",
    )
    flags.add_option_flags(parser, InferenceOptions, title="prediction")
    common.distributed_flags(parser)
    common.process_flags(parser)


def submit(args: argparse.Namespace) -> None:
    from segjax.inference.submission import make_submission

    common.initialize_distributed(args)
    options = flags.option_values(args, InferenceOptions)
    report = make_submission(
        args.run_dir, options, data_dir=args.data_dir, out=args.out, order=args.order
    )
    print(
        f"wrote {report.path}: {report.rows} rows, {report.empty_fraction:.1%} empty masks "
        f"({report.runs}, threshold {report.postprocess.threshold}, TTA "
        f"{'on' if report.tta else 'off'}, post-processing: {report.postprocess})"
    )


# ---------------------------------------------------------------------------- evaluate


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    common.runs_flag(parser, several=True)
    parser.add_argument("--split", choices=["val", "test"], default="val", help="default val")
    parser.add_argument("--out-dir", help="where to write the JSON and PNG (default: the run)")
    names = ("checkpoint", "batch_size", "threshold")
    flags.add_option_flags(parser, InferenceOptions, names, title="prediction")
    common.process_flags(parser)


def evaluate(args: argparse.Namespace) -> None:
    from segjax.inference.analysis import evaluate_run, format_report

    options = flags.option_values(args, InferenceOptions)
    report = evaluate_run(args.run_dir, options, split=args.split, out_dir=args.out_dir)
    print(format_report(report))
    out = Path(report["out_dir"])
    print(f"wrote {out / f'evaluation_{args.split}.json'} and {out / f'worst_{args.split}.png'}")


# ---------------------------------------------------------------------------- predict


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    common.runs_flag(parser, several=False)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, help="folder for the masks")
    parser.add_argument("--overlay", action="store_true", help="also <stem>_overlay.png")
    parser.add_argument("--probs", action="store_true", help="also <stem>_prob.png (8-bit)")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    flags.add_option_flags(parser, InferenceOptions, title="prediction")
    common.process_flags(parser)


def predict(args: argparse.Namespace) -> int:
    from segjax.inference import masks
    from segjax.runs import run_folder

    options = flags.option_values(args, InferenceOptions)
    outputs = masks.Outputs(check_output_folder(args.out), args.overlay, args.probs)
    run_dir = Path(args.run_dir) if args.run_dir else run_folder.newest_run()
    report = masks.predict_files(run_dir, args.inputs, outputs, options, force=args.force)
    print(f"wrote {report.written} masks to {report.out}")
    return masks.report_failures(report)


# ---------------------------------------------------------------------------- export


def export_arguments(parser: argparse.ArgumentParser) -> None:
    common.runs_flag(parser, several=False)
    parser.add_argument(
        "--format",
        choices=["jax", "onnx"],
        default="jax",
        help="jax: jax.export's serialised function (runs where jax runs); onnx: an ONNX model "
        "for onnxruntime and web pages, checked against segjax (pip install 'segjax[onnx]')",
    )
    parser.add_argument(
        "--out", required=True, help="output file, e.g. model.jaxexport or model.onnx"
    )
    parser.add_argument(
        "--batch", type=int, metavar="N", help="onnx: a fixed batch size (default: any)"
    )
    names = ("checkpoint", "tta", "threshold")
    flags.add_option_flags(parser, InferenceOptions, names, title="prediction")
    common.process_flags(parser)


def export(args: argparse.Namespace) -> None:
    from segjax.inference.export import export_run
    from segjax.runs import run_folder

    options = flags.option_values(args, InferenceOptions)
    check_output_file(
        args.out, example="model.onnx" if args.format == "onnx" else "model.jaxexport"
    )
    if args.batch is not None and (args.format != "onnx" or args.batch < 1):
        raise UserError("--batch N: a positive batch size, with --format onnx")
    run_dir = Path(args.run_dir) if args.run_dir else run_folder.newest_run()
    if args.format == "onnx":
        from segjax.inference.onnx_export import export_onnx

        record = export_onnx(run_dir, args.out, options, batch=args.batch)
        print(
            f"wrote {args.out} and {args.out}.json: {record['input']}; TTA "
            f"{'on' if record['tta'] else 'off'}, threshold "
            f"{record['postprocess']['threshold']}; {record['checked']}"
        )
        return
    record = export_run(run_dir, args.out, options)
    print(
        f"wrote {args.out} and {args.out}.json: {record['image_size'][0]}x"
        f"{record['image_size'][1]} input, platforms {', '.join(record['platforms'])}, "
        f"TTA {'on' if record['tta'] else 'off'}, threshold "
        f"{record['postprocess']['threshold']}"
    )


# ---------------------------------------------------------------------------- info


def info_arguments(parser: argparse.ArgumentParser) -> None:
    common.process_flags(parser)


def info(args: argparse.Namespace) -> None:
    from importlib.metadata import version

    import jax

    from segjax.train.console import devices

    print(f"segjax {version('segjax')}, jax {jax.__version__}, jaxlib {version('jaxlib')}")
    print(f"devices: {devices()}")
    print(f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(none)'}")
    print(f"compilation cache: {runtime.compile_cache_state()}")
    print(f"cache: {runtime.cache_dir()} (demo data, decoded arrays, compiled programs)")


COMMANDS = {
    "train": common.Command(
        "train a model into runs/<name>/, then tune its post-processing",
        "Train a UNet-family segmentation model into runs/<name>/ (config.json, run.json, "
        "checkpoints, metrics.jsonl, previews, curves.png, tuned.json). Without --data-dir it "
        "trains on a synthetic demo dataset with a smaller, faster preset.",
        train_arguments,
        train,
        hugepages=True,
    ),
    "submit": common.Command(
        "write a validated Kaggle submission CSV",
        "Predict every test image and write a validated Kaggle submission CSV. Several runs or "
        "a k-fold folder: their probabilities are averaged at each image's size, then one "
        "threshold and post-processing (tuned out of fold for k-fold runs, on the validation "
        "images they share otherwise).",
        submit_arguments,
        submit,
    ),
    "evaluate": common.Command(
        "score a run on its validation or held-out split",
        "Dice, IoU, precision, recall, accuracy and confusion matrix of a run on its "
        "validation or held-out test split at the images' original size, with and without "
        "post-processing and flip TTA, plus a PNG of the 8 worst images. Several runs or a "
        "k-fold folder: their mean probability (on val: out of fold for k-fold runs).",
        evaluate_arguments,
        evaluate,
    ),
    "predict": common.Command(
        "masks for image files or folders",
        "Predict masks for image files or folders (any size; L, RGB, RGBA, P; PNG, JPEG, ...): "
        "<out>/<stem>.png, 0/255, at each image's original size, with the run's tuned "
        "threshold, post-processing and TTA (as submit).",
        predict_arguments,
        predict,
    ),
    "export": common.Command(
        "a run's prediction function for jax (jax.export) or ONNX runtimes",
        "Serialise a run's prediction function (uint8 images at the training size -> "
        "probabilities; normalisation and TTA as tuned inside; batch size free), plus a JSON of "
        "what a caller needs (threshold, post-processing, how to resize back). --format jax: "
        "jax.export for CPU, CUDA and TPU where it lowers (tools/run_exported.py runs it with "
        "only jax, numpy and flatbuffers); --format onnx: an ONNX model for onnxruntime "
        "(Python, C++, mobile, the browser: examples/web/), checked against segjax.",
        export_arguments,
        export,
    ),
    "info": common.Command(
        "the devices, versions and caches segjax would use here",
        "Print the devices JAX sees (platform, kind, count), the versions of segjax, jax and "
        "jaxlib, segjax's XLA flags and where it caches demo data, decoded arrays and "
        "compiled programs.",
        info_arguments,
        info,
    ),
}


def parser_of(name: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command (`segjax <name>`, or a script's `prog`)."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=prog, description=command.description)
    command.add_arguments(parser)
    return parser


def run(
    name: str, argv: list[str] | None = None, prog: str | None = None, own_process: bool = False
) -> None:
    """Parse `argv` (default: this process's arguments) for command `name`, set the process up
    (XLA flags, compilation cache; huge pages by a restart when the process is the command's
    own), run the command, exit with its status."""
    # A time budget counts from here: the start is kept through the huge-pages re-exec (same
    # process id), and not inherited by another process.
    pid, _, _ = os.environ.get("SEGJAX_START", "").partition(":")
    if pid != str(os.getpid()):
        os.environ["SEGJAX_START"] = f"{os.getpid()}:{time.time()!r}"
    command = COMMANDS[name]
    own_process = own_process or argv is None
    args = parser_of(name, prog).parse_args(sys.argv[1:] if argv is None else argv)
    fast = not args.default_xla_flags
    if command.hugepages and fast and own_process:
        runtime.reexec_with_hugepages()
    runtime.configure(fast_cpu=fast, deterministic=getattr(args, "deterministic", False))
    with common.user_errors():
        status = command.run(args)
    if status is not None:  # a command with an exit status of its own (predict)
        sys.exit(status)
