"""Run the comparison experiments on real photos and regenerate their table (see --help)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout's tool, not installed
from tools import experiments  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--list", action="store_true", help="print every experiment's command")
    parser.add_argument(
        "--run",
        nargs="+",
        metavar="NAME",
        help="train + evaluate these experiments ('all' for every one, then "
        "the fine-tuning run); finished ones are skipped, stopped ones resumed",
    )
    parser.add_argument("--table", metavar="FILE", help="write the markdown table to FILE")
    parser.add_argument("--data-dir", default=experiments.DATA, help="labelled photo folder")
    parser.add_argument("--runs-root", default="runs/experiments", help="where the runs go")
    args = parser.parse_args()
    if args.list:
        for name in experiments.EXPERIMENTS:
            print(" ".join(experiments.train_command(name, args.data_dir, args.runs_root)))
    if args.run:
        known = [*experiments.EXPERIMENTS, experiments.FINETUNE[0]]
        names = known if args.run == ["all"] else args.run
        unknown = [name for name in names if name not in known]
        if unknown:
            parser.error(f"unknown experiment {', '.join(unknown)}; see --list")
        for name in names:
            experiments.run(name, args.data_dir, args.runs_root)
    if args.table:
        kept = experiments.keep_best_previews(args.runs_root)
        print(f"kept {', '.join(kept) or 'no previews'} of the best run")
        Path(args.table).write_text(experiments.table(args.runs_root, args.data_dir))
        print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
