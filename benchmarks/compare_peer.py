"""segjax and its PyTorch peer on the same photos, split and budget, one after the other.

    python -m benchmarks.compare_peer --data-dir ../shared/data/ccp_person --time-budget 12
    python -m benchmarks.compare_peer ... --segjax-flags "--ema 0.995" --name ema

Trains `segjax train` (the defaults, plus --segjax-flags) and `benchmarks/pytorch_peer.py` for
the same minutes each, scores both on the held-out split at the images' original size with
segjax's scorer, and prints both, with the commands. Needs torch and efficientnet-lite-pytorch
for the peer (pip install torch==2.13.0 efficientnet-lite-pytorch).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run(command: list[str]) -> str:
    print("$", shlex.join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-size", default="192x128")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--time-budget", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--segjax-flags", default="", help="more flags for segjax train")
    parser.add_argument(
        "--name", default="default", help="the segjax run: runs/peer/<name>-s<seed>"
    )
    parser.add_argument("--out", default="runs/peer/results.jsonl", help="rows appended here")
    parser.add_argument("--no-peer", action="store_true", help="segjax only")
    args = parser.parse_args()
    run_dir = Path("runs/peer") / f"{args.name}-s{args.seed}"
    common = ["--data-dir", args.data_dir, "--image-size", args.image_size]
    split = ["--split-seed", str(args.split_seed), "--test-fraction", str(args.test_fraction)]
    budget = ["--time-budget", str(args.time_budget), "--seed", str(args.seed)]
    segjax = ["segjax", "train", *common, *split, *budget, "--run-dir", str(run_dir)]
    segjax += ["--no-progress", "--overwrite", *shlex.split(args.segjax_flags)]
    tic = time.time()
    log = run(segjax)
    wall = (time.time() - tic) / 60
    (run_dir / "train.log").write_text(log)  # the plans and epochs, as printed
    run(["segjax", "evaluate", "--run-dir", str(run_dir), "--split", "test"])
    results = json.loads((run_dir / "evaluation_test.json").read_text())["results"]
    tta = json.loads((run_dir / "tuned.json").read_text())["tta"]
    row = {
        "name": args.name,
        "seed": args.seed,
        "flags": args.segjax_flags,
        "segjax_test_mean_dice": results["tta=off postprocess=off"]["mean_dice"],
        "segjax_test_mean_dice_tuned": results[f"tta={'on' if tta else 'off'} postprocess=on"][
            "mean_dice"
        ],
        "segjax_epochs": len((run_dir / "metrics.jsonl").read_text().splitlines()),
        "segjax_steps": json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])[
            "step"
        ],
        "segjax_wall_minutes": wall,  # the whole train command, tuning included
    }
    if not args.no_peer:
        peer = [sys.executable, "-m", "benchmarks.pytorch_peer", *common, *split]
        peer += ["--time-budget", str(args.time_budget), "--seed", str(args.seed)]
        result = json.loads(run(peer).strip().splitlines()[-1])
        row.update({f"peer_{k}": v for k, v in result.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with Path(args.out).open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))
    print(
        f"held-out mean Dice (threshold tuned, no TTA, no post-processing): segjax "
        f"{row['segjax_test_mean_dice']:.4f}"
        + (f", PyTorch peer {row['peer_test_mean_dice']:.4f}" if not args.no_peer else "")
    )


if __name__ == "__main__":
    main()
