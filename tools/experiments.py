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

from segjax.runs import metrics_log

ROOT = Path(__file__).resolve().parents[1]
DATA = "../shared/data/ccp_person"
# CPU-friendly settings: about 10 minutes a run on 2 cores. 80/10/10 split as in the course.
BASE = [
    "--encoder",
    "scratch",
    "--upsample",
    "transpose",
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
    "baseline-seed1": ("the baseline from another seed: run-to-run noise", ["--seed", "1"]),
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
# Fine-tuning the best run with focal Tversky at a lower rate (the course project's plan).
FINETUNE = ("finetune-focal-tversky", "best run + 5 epochs focal Tversky at lr 2e-4")


def train_command(
    name: str, data_dir: str = DATA, runs_root: str = "runs/experiments"
) -> list[str]:
    """The experiment's command line (argparse keeps the last of a repeated flag)."""
    if name == FINETUNE[0]:
        best = best_experiment()
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
        best = best_experiment()
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
PREVIEWS = ("preview_best_epoch.png", "worst_test.png", "curves.png")  # kept for the best run


def keep_results(run_dir: Path, name: str) -> None:
    """Copy a finished run's small JSON files (not its checkpoints) into docs/experiments/."""
    target = ROOT / RESULTS / name
    target.mkdir(parents=True, exist_ok=True)
    for file in KEPT:
        if (run_dir / file).exists():
            (target / file).write_text((run_dir / file).read_text())


def keep_best_previews(runs_root: str = "runs/experiments") -> list[str]:
    """Keep the best experiment's images (from its run folder) and drop any other run's."""
    best = best_experiment()
    for name in EXPERIMENTS:
        if name != best:
            for file in PREVIEWS:
                (ROOT / RESULTS / name / file).unlink(missing_ok=True)
    run_dir = ROOT / runs_root / best
    return keep_previews(run_dir, best) if (run_dir / "metrics.jsonl").exists() else []


def keep_previews(run_dir: Path, name: str) -> list[str]:
    """Copy a run's images (best epoch's validation preview, worst held-out cases, curves)."""
    rows = metrics_log.read_metrics(run_dir / "metrics.jsonl")
    best = max(rows, key=lambda r: r["val_mean_dice"])["epoch"]
    sources = (run_dir / f"previews/epoch_{best:03d}.png", *(run_dir / f for f in PREVIEWS[1:]))
    kept = []
    for source, file in zip(sources, PREVIEWS, strict=True):
        if source.exists():
            (ROOT / RESULTS / name / file).write_bytes(source.read_bytes())
            kept.append(file)
    return kept


def _read(run_dir: Path) -> dict | None:
    """A finished run's held-out scores: raw, with its tuned TTA + post-processing, and timing."""
    path = run_dir / "evaluation_test.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())["results"]
    tuned = (
        json.loads((run_dir / "tuned.json").read_text())
        if (run_dir / "tuned.json").exists()
        else {}
    )
    timing = metrics_log.read_metrics(run_dir / "timing.jsonl")
    return {
        "raw": results["tta=off postprocess=off"],
        "tuned_dice": results[f"tta={'on' if tuned.get('tta') else 'off'} postprocess=on"][
            "mean_dice"
        ],
        "epochs": len(timing),
        "minutes": sum(t["train_seconds"] for t in timing) / 60,
    }


def _raw_dice(name: str) -> float | None:
    row = _read(ROOT / RESULTS / name)
    return row["raw"]["mean_dice"] if row else None


def best_experiment() -> str:
    """The finished experiment with the best held-out mean Dice (raw predictions)."""
    scores = {name: _raw_dice(name) for name in EXPERIMENTS}
    scores = {name: dice for name, dice in scores.items() if dice is not None}
    if not scores:
        raise FileNotFoundError(f"no finished experiments under {RESULTS}")
    return max(scores, key=scores.get)


# (our experiment, what it is compared with, the course project's finding, its direction:
# +1 = it found the experiment's change better, -1 = worse, 0 = no clear finding).
COURSE_FINDINGS = (
    ("grayscale", "baseline", "grayscale 0.80-0.84 vs RGB 0.83: about equal", 0),
    ("unet-valid", "baseline", "valid convolutions 0.12-0.41 vs same padding 0.80-0.84", -1),
    ("no-bn", "baseline", "no BatchNorm-only comparison", 0),
    ("dropout", "baseline", "plain 0.83 -> BatchNorm + dropout 0.89 (both added at once)", 0),
    ("no-bn-dropout", "dropout", "dropout only 0.82 vs BatchNorm + dropout 0.89", -1),
    ("dropout-deep", "dropout", "deep-only dropout was in its 0.93 Kaggle submission", +1),
    ("loss-bce", "baseline", "no BCE-only vs BCE + Dice comparison at equal settings", 0),
    ("loss-focal-tversky", "baseline", "planned, never run", 0),
    (
        "aug-none",
        "baseline",
        "augmentation hurt: 0.89 -> 0.80 (UNet), 0.88 vs 0.82 (attention)",
        +1,
    ),
    ("aug-strong", "baseline", "colour jitter was on its to-do list", 0),
    ("attn", "baseline", "Attention UNet 0.88 vs UNet 0.89 (BN + dropout)", 0),
    ("resunet", "baseline", "residual blocks were in its best Kaggle run (0.94)", +1),
    ("double-conv", "baseline", "double conv 0.913 was its best local score", +1),
    ("unetpp", "baseline", "UNet++ was not run", 0),
    ("schedule-constant", "baseline", "a scheduler was on its to-do list (it used plateau)", 0),
    ("schedule-plateau", "baseline", "it trained with ReduceLROnPlateau", 0),
)


def findings() -> list[str]:
    """Markdown lines: each held-out mean Dice difference beside the course project's finding.

    A difference no larger than the baseline's run-to-run spread (baseline vs baseline-seed1)
    is reported as within noise.
    """
    base, other = _raw_dice("baseline"), _raw_dice("baseline-seed1")
    if base is None:
        return []
    noise = abs(base - other) if other is not None else None
    spread = (
        f"{noise:.4f} held-out mean Dice; a difference no larger than that is called noise"
        if noise is not None
        else "not measured yet (run baseline-seed1)"
    )
    lines = [
        "## Against the course project's findings",
        "",
        f"Run-to-run spread (baseline with seeds 0 and 1): {spread}. The course project's "
        "figures are local test Dice at 256x256 after 80-100 epochs on the competition's own "
        "photos, as its notes report them, so compare directions, not values.",
        "",
        "| change | compared with | difference | course project | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, reference, course, direction in COURSE_FINDINGS:
        ours, theirs = _raw_dice(name), _raw_dice(reference)
        if ours is None or theirs is None:
            lines.append(f"| {name} | {reference} | not run | {course} | |")
            continue
        delta = ours - theirs
        if noise is not None and abs(delta) <= noise:
            verdict = "within noise" if direction == 0 else "not confirmed (within noise)"
        elif direction == 0:
            verdict = "better here" if delta > 0 else "worse here"
        else:
            verdict = "agrees" if delta * direction > 0 else "**contradicts**"
        lines.append(f"| {name} | {reference} | {delta:+.4f} | {course} | {verdict} |")
    plateau = metrics_log.read_metrics(ROOT / RESULTS / "schedule-plateau" / "metrics.jsonl")
    if plateau and len({row["lr"] for row in plateau}) == 1:
        lines += [
            "",
            "schedule-plateau never lowered its rate: validation loss never went "
            "`--plateau-patience` (3) epochs without improving, so it repeats "
            "schedule-constant exactly.",
        ]
    finished = [_read(ROOT / RESULTS / n) for n in EXPERIMENTS]
    gains = [r["tuned_dice"] - r["raw"]["mean_dice"] for r in finished if r]
    lines += [
        "",
        f"Tuned flip TTA and post-processing changed held-out mean Dice by {min(gains):+.4f} to "
        f"{max(gains):+.4f} over {len(gains)} runs (mean {sum(gains) / len(gains):+.4f}); "
        "the course project reported +0.02 from post-processing (0.88 -> 0.90).",
    ]
    return lines


def best_previews(name: str) -> list[str]:
    """Markdown image links to the kept previews of the best run."""
    folder = ROOT / RESULTS / name
    captions = {
        "preview_best_epoch.png": "validation photos at the best epoch (truth green, "
        "prediction red)",
        "worst_test.png": "the held-out photos it segments worst",
        "curves.png": "training curves",
    }
    return [
        f"![{name}: {captions[f]}](experiments/{name}/{f})"
        for f in PREVIEWS
        if (folder / f).exists()
    ]


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
        f"`{shlex.join(BASE)}`. The last column takes its tuned threshold, opening, minimum "
        "area and flip TTA from the validation split (`tuned.json`). Train minutes are wall "
        "time on a shared 2-core CPU, where other work sometimes ran beside a run: a rough "
        "guide, not a benchmark.",
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
        raw = row["raw"]
        lines.append(
            f"| {name} | {what} | {raw['mean_dice']:.4f} | {raw['global_dice']:.4f} | "
            f"{row['tuned_dice']:.4f} | {row['epochs']} | {row['minutes']:.1f} |"
        )
    best = best_experiment() if any(_raw_dice(n) for n in EXPERIMENTS) else None
    if best:
        lines += [
            "",
            f"Best configuration: **{best}** ({EXPERIMENTS[best][0]}), held-out mean Dice "
            f"{_raw_dice(best):.4f} raw.",
            "",
            *best_previews(best),
        ]
    lines += ["", *findings()]
    commands = [
        f"    {shlex.join(train_command(n, data_dir, runs_root))}"
        for n in [*EXPERIMENTS, FINETUNE[0]]
        if n != FINETUNE[0] or best
    ]
    return (
        "\n".join(lines) + "\n\nCommands (each followed by `python scripts/evaluate.py "
        "--run-dir runs/experiments/<name> --split test`):\n\n" + "\n".join(commands) + "\n"
    )
