"""The comparison table of the course project, re-run on real photos: definitions, runner, table.

Every experiment is one `scripts/train.py` command on ../shared/data/ccp_person (or any
labelled folder) followed by `scripts/evaluate.py --split test`; the table is read back from the
run folders (config, timing and evaluation files), never typed by hand.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = "../shared/data/ccp_person"
# CPU-friendly settings: about 10 minutes a run on 2 cores. 80/10/10 split as in the course.
BASE = [
    "--image-size",
    "128x96",
    "--features",
    "16",
    "--epochs",
    "15",
    "--batch-size",
    "8",
    "--lr",
    "2e-3",
    "--val-fraction",
    "0.1",
    "--test-fraction",
    "0.1",
    "--split-seed",
    "0",
    "--seed",
    "0",
    "--no-progress",
]

# name -> (what it tests, flags on top of BASE). The baseline is UNet, RGB, BatchNorm, no
# dropout, basic augmentation, BCE + Dice, warm-up + cosine.
EXPERIMENTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("UNet, RGB, BatchNorm, basic aug, BCE+Dice, cosine", []),
    "grayscale": ("grayscale input", ["--grayscale"]),
    # Valid convolutions lose 44 px per side at depth 3, restored by mirror padding (overlap
    # tile): the network computes on about 216x184 to cover the 128x96 image.
    "unet-valid": (
        "2015 UNet, valid convolutions + overlap tile, depth 3",
        ["--arch", "unet-valid", "--depth", "3"],
    ),
    "no-bn": ("no BatchNorm", ["--no-batch-norm"]),
    "dropout": ("dropout 0.3 in every block", ["--dropout", "0.3"]),
    "dropout-deep": (
        "dropout 0.3, deepest levels only",
        ["--dropout", "0.3", "--dropout-deep-only"],
    ),
    "no-bn-dropout": ("no BatchNorm, dropout 0.3", ["--no-batch-norm", "--dropout", "0.3"]),
    "loss-bce": ("BCE loss", ["--loss", "bce"]),
    "loss-focal-tversky": ("focal Tversky loss", ["--loss", "focal_tversky"]),
    "aug-none": ("no augmentation", ["--aug", "none"]),
    "aug-strong": ("strong augmentation (+ colour jitter, noise)", ["--aug", "strong"]),
    "attn": ("Attention UNet", ["--arch", "attn"]),
    "resunet": ("residual blocks", ["--arch", "resunet"]),
    "double-conv": ("double conv (4 per block)", ["--double-conv"]),
    "unetpp": ("UNet++", ["--arch", "unetpp"]),
    "schedule-constant": ("constant learning rate", ["--schedule", "constant"]),
    "schedule-plateau": ("reduce on plateau", ["--schedule", "plateau"]),
}
# Fine-tuning the best run with focal Tversky at a lower rate (the seed's plan): derived below.
FINETUNE = ("finetune-focal-tversky", "best run + 5 epochs focal Tversky at lr 2e-4")


def train_command(
    name: str, data_dir: str = DATA, runs_root: str = "runs/experiments"
) -> list[str]:
    """The experiment's command line (argparse keeps the last of a repeated flag)."""
    if name == FINETUNE[0]:
        best = best_experiment(runs_root)
        flags = [
            *EXPERIMENTS[best][1],
            "--loss",
            "focal_tversky",
            "--lr",
            "2e-4",
            "--epochs",
            "5",
            "--warmup-epochs",
            "0",
            "--init-from",
            f"{runs_root}/{best}",
        ]
    else:
        flags = EXPERIMENTS[name][1]
    return [
        "python",
        "scripts/train.py",
        "--data-dir",
        data_dir,
        *BASE,
        *flags,
        "--run-dir",
        f"{runs_root}/{name}",
    ]


def evaluate_command(name: str, runs_root: str = "runs/experiments") -> list[str]:
    return ["python", "scripts/evaluate.py", "--run-dir", f"{runs_root}/{name}", "--split", "test"]


def run(name: str, data_dir: str = DATA, runs_root: str = "runs/experiments") -> None:
    """Train and evaluate one experiment; a finished one is skipped, a stopped one resumed."""
    run_dir = ROOT / runs_root / name
    if (ROOT / RESULTS / name / "evaluation_test.json").exists():
        print(f"{name}: done already (results in {RESULTS}/{name})")
        return
    if name == FINETUNE[0]:  # fine-tuning needs the best run's checkpoint, here
        best = best_experiment(runs_root)
        if not (ROOT / runs_root / best / "checkpoints").exists():
            subprocess.run(
                [sys.executable, *train_command(best, data_dir, runs_root)[1:]],
                cwd=ROOT,
                check=True,
            )
    command = train_command(name, data_dir, runs_root)
    if (run_dir / "checkpoints").exists():
        command = [
            "python",
            "scripts/train.py",
            "--resume",
            "--run-dir",
            f"{runs_root}/{name}",
            "--no-progress",
        ]
    for cmd in (command, evaluate_command(name, runs_root)):
        print("$ " + shlex.join(cmd), flush=True)
        subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True)
    keep_results(run_dir, name)


KEPT = ("config.json", "metrics.jsonl", "timing.jsonl", "tuned.json", "evaluation_test.json")
RESULTS = "docs/experiments"  # small result files, committed, so the table outlives run folders


def keep_results(run_dir: Path, name: str) -> None:
    """Copy a finished run's small JSON files (not its checkpoints) into docs/experiments/."""
    target = ROOT / RESULTS / name
    target.mkdir(parents=True, exist_ok=True)
    for file in KEPT:
        if (run_dir / file).exists():
            (target / file).write_text((run_dir / file).read_text())


def _read(run_dir: Path) -> dict | None:
    path = run_dir / "evaluation_test.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    timing = [json.loads(x) for x in (run_dir / "timing.jsonl").read_text().splitlines() if x]
    tuned = (
        json.loads((run_dir / "tuned.json").read_text())
        if (run_dir / "tuned.json").exists()
        else {}
    )
    return {
        "report": report,
        "epochs": len(timing),
        "minutes": sum(t["train_seconds"] for t in timing) / 60,
        "tuned": tuned,
    }


def best_experiment(runs_root: str = "runs/experiments") -> str:
    """The finished experiment with the best held-out mean Dice (raw predictions)."""
    scores = {}
    for name in EXPERIMENTS:
        row = _read(ROOT / RESULTS / name)
        if row:
            scores[name] = row["report"]["results"]["tta=off postprocess=off"]["dice"]
    if not scores:
        raise FileNotFoundError(f"no finished experiments under {RESULTS}")
    return max(scores, key=scores.get)


def table(runs_root: str = "runs/experiments", data_dir: str = DATA) -> str:
    """Markdown: held-out mean and global Dice per experiment, raw and with tuned TTA + PP."""
    lines = [
        "# Experiments on real photos",
        "",
        "Generated by `python scripts/experiments.py --table docs/experiments.md` from the "
        "result files each run leaves in `docs/experiments/<name>/`; do not edit by hand. "
        "Data: `../shared/data/ccp_person` (803 street photos), "
        "split 80/10/10 with `--split-seed 0`; scores on the 80 held-out photos at their "
        "original size (`scripts/evaluate.py --split test`). Shared settings: "
        f"`{shlex.join(BASE)}`.",
        "",
        "| experiment | what | held-out mean Dice | held-out global Dice | + tuned TTA and "
        "post-processing | epochs | train minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    names = [*EXPERIMENTS, FINETUNE[0]]
    for name in names:
        row = _read(ROOT / RESULTS / name)
        what = FINETUNE[1] if name == FINETUNE[0] else EXPERIMENTS[name][0]
        if row is None:
            lines.append(f"| {name} | {what} | not run | | | | |")
            continue
        results = row["report"]["results"]
        raw = results["tta=off postprocess=off"]
        key = f"tta={'on' if row['tuned'].get('tta') else 'off'} postprocess=on"
        lines.append(
            f"| {name} | {what} | {raw['dice']:.4f} | {raw['global_dice']:.4f} | "
            f"{results[key]['dice']:.4f} | {row['epochs']} | {row['minutes']:.1f} |"
        )
    commands = [f"    {shlex.join(train_command(n, data_dir, runs_root))}" for n in EXPERIMENTS]
    return (
        "\n".join(lines) + "\n\nCommands (each followed by `python scripts/evaluate.py "
        "--run-dir runs/experiments/<name> --split test`):\n\n" + "\n".join(commands) + "\n"
    )
