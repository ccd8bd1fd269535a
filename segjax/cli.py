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


def _flag(field: dataclasses.Field) -> str:
    """A config field's flag: --name, or --no-name for a switch that is on by default."""
    name = field.metadata.get("flag") or field.name.replace("_", "-")
    return f"--no-{name}" if field.default is True else f"--{name}"


def _show(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_option(parser: argparse.ArgumentParser, section: str, field: dataclasses.Field) -> None:
    """The flag of one config field, its help, allowed values and defaults from the field."""
    from segjax.config import Config

    default = getattr(getattr(Config(), section), field.name)
    demo = getattr(getattr(Config.demo(), section), field.name)
    text = field.metadata["help"]
    if isinstance(default, bool):
        parser.add_argument(
            _flag(field),
            dest=field.name,
            action="store_const",
            const=not default,
            default=None,
            help=text,
        )
        return
    shown = f"default {_show(default)!s}" + (f"; demo {_show(demo)}" if demo != default else "")
    choices = field.metadata.get("choices") or None
    kind = str if isinstance(default, tuple | str) else type(default)
    parser.add_argument(
        _flag(field),
        dest=field.name,
        type=kind,
        choices=choices,
        help=f"{text} ({shown})" if default != "" else text,
    )


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a UNet-family segmentation model into runs/<name>/ (config, "
        "checkpoints, metrics.jsonl, previews, curves.png, tuned.json). Without --data-dir it "
        "trains on a synthetic demo dataset with a smaller, faster preset.",
    )
    from segjax.config import options

    for section, field in options():
        _add_option(parser, section, field)
    parser.add_argument(
        "--fold",
        metavar="I|all",
        help="with --folds K: the fold that validates (0..K-1), or all: train the K folds one "
        "after another into runs/<name>/fold-<I>/ and tune their ensemble out of fold "
        "(--resume skips finished folds; --time-budget is for all folds together)",
    )
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
        "first update (with --epochs too, the smaller wins) and saved as --epochs; with --fold "
        "all, the budget is for all folds together",
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
    from segjax.config import options, parse_size

    given: dict[tuple[str, str], tuple[str, object]] = {}
    for section, field in options():
        value = getattr(args, field.name)
        if value is None:
            continue
        if isinstance(field.default, tuple):  # a size, N or HxW
            try:
                value = parse_size(value)
            except ValueError as err:
                raise UserError(f"{_flag(field)}: {err}") from err
        given[(section, field.name)] = (_flag(field), value)
    return given


def train_config(args: argparse.Namespace):
    """The run's Config from parsed flags: defaults, then the demo preset, then the flags."""
    from segjax.config import Config, replace

    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for (section, field), (_, value) in given_fields(args).items():
        sections[section][field] = value
    if _fold(args) is not None:
        sections["data"]["fold"] = _fold(args)
    base = Config() if args.data_dir else Config.demo()
    return dataclasses.replace(replace(base, **sections), name=args.name or "")


def _fold(args: argparse.Namespace) -> int | None:
    """--fold I as a number (None for all or no --fold); --fold and --folds come together."""
    if (args.fold is None) != (args.folds is None) and not args.resume:
        raise UserError("--folds K and --fold I|all come together (--fold all trains every fold)")
    if args.fold in (None, "all"):
        return None
    try:
        return int(args.fold)
    except ValueError:
        raise UserError(f"--fold {args.fold}: expected a fold number or all") from None


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
    from segjax import folds, runs, train

    _initialize_distributed(args)
    fold_all = args.fold == "all"
    if args.resume:
        run_dir = (
            Path(args.run_dir)
            if args.run_dir
            else (runs.RUNS_ROOT / args.name if args.name else runs.newest_run(folds=fold_all))
        )
        config = runs.resume_config(run_dir, given_fields(args))
        fold_all = fold_all or runs.is_folds(run_dir)
        if _fold(args) is not None and _fold(args) != config.data.fold:
            raise UserError(f"{run_dir} validates on fold {config.data.fold}, not {args.fold}")
    else:
        config = train_config(args)
        run_dir = (
            Path(args.run_dir)
            if args.run_dir
            else runs.new_run_dir(runs.RUNS_ROOT, args.name, config.model.arch)
        )
        config = dataclasses.replace(config, name=run_dir.name)
    print(f"run folder: {run_dir}")
    common = dict(
        resume=args.resume,
        overwrite=args.overwrite,
        tune=not args.no_tune,
        progress=not args.no_progress,
        time_budget=args.time_budget,
        started=float(os.environ["SEGJAX_START"].partition(":")[2]),
    )
    if fold_all:
        if args.stop_at_epoch:
            raise UserError("--stop-at-epoch is for one run; with --fold all use --time-budget")
        folds.train_folds(config, run_dir, **common)
    else:
        train.train_and_tune(config, run_dir, stop_at_epoch=args.stop_at_epoch, **common)


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


def _common(parser: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        parser.add_argument(
            "--run-dir",
            nargs="+",
            metavar="RUN",
            help="a run folder, a k-fold folder (train.py --fold all) or several runs, whose "
            "probabilities are averaged (default: the newest run or k-fold folder under runs/)",
        )
    else:
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
        description="Predict every test image and write a validated Kaggle submission CSV. "
        "Several runs or a k-fold folder: their probabilities are averaged at each image's "
        "size, then one threshold and post-processing (tuned out of fold for k-fold runs, on "
        "the validation images they share otherwise).",
    )
    _common(parser, several=True)
    parser.add_argument("--data-dir", help="data folder with test/images (default: the run's)")
    parser.add_argument("--out", help="output CSV (default <run or k-fold folder>/submission.csv)")
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
    from segjax.submission import make_submission

    report = make_submission(
        args.run_dir,
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
        f"({report.runs}, threshold {pp.threshold}, TTA "
        f"{'on' if report.tta else 'off'}, post-processing: {pp})"
    )


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Dice, IoU, precision, recall, accuracy and confusion matrix of a run on its "
        "validation or held-out test split, with and without post-processing and flip TTA, "
        "plus a PNG of the 8 worst images. Several runs or a k-fold folder: their mean "
        "probability (on val: out of fold for k-fold runs).",
    )
    _common(parser, several=True)
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
    from segjax.evaluate import evaluate_run, format_report

    report = evaluate_run(args.run_dir, args.split, args.checkpoint, args.batch_size, args.out_dir)
    print(format_report(report))
    out = Path(report["out_dir"])
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
