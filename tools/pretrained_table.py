"""The pretrained-encoder table of docs/pretrained.md, generated from the runs' result files.

Each row is one `scripts/train.py --time-budget 12` run on ../shared/data/ccp_person (80/10/10,
`--split-seed 0`) followed by `scripts/evaluate.py --split test`; its small result files are
kept in docs/pretrained/<name>/ and the table is read back from them, never typed by hand.

    python tools/pretrained_table.py --runs runs/table --mediapipe docs/pretrained/mediapipe.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from segjax.runs import metrics_log

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOCS = ROOT / "docs" / "pretrained"
KEPT = ("config.json", "metrics.jsonl", "timing.jsonl", "tuned.json", "evaluation_test.json")
COMMON = (
    "--time-budget 12 --data-dir ../shared/data/ccp_person --image-size 192x128 --batch-size 8 "
    "--val-fraction 0.1 --test-fraction 0.1 --split-seed 0 --seed 0 --no-progress"
)
# name -> (what, the flags beside COMMON)
ROWS = {
    "scratch-unet": (
        "UNet-32 from scratch",
        "--encoder scratch --features 32 --upsample transpose",
    ),
    "lite0-unet": ("EfficientNet-Lite0 + UNet decoder (the defaults)", ""),
    "lite0-attn": ("EfficientNet-Lite0 + attention decoder", "--arch attn"),
    "lite2-unet": ("EfficientNet-Lite2 + UNet decoder", "--encoder efficientnet-lite2"),
    "lite2-attn": (
        "EfficientNet-Lite2 + attention decoder",
        "--encoder efficientnet-lite2 --arch attn",
    ),
    "lite0-unet-augnone": ("EfficientNet-Lite0 + UNet decoder, no augmentation", "--aug none"),
    "lite0-unet-256": (
        "EfficientNet-Lite0 + UNet decoder, no augmentation, 256x160",
        "--aug none --image-size 256x160",
    ),
}


def keep(runs: Path) -> None:
    for name in ROWS:
        source = runs / name
        if (source / "evaluation_test.json").exists():
            (DOCS / name).mkdir(parents=True, exist_ok=True)
            for file in KEPT:
                if (source / file).exists():
                    shutil.copy(source / file, DOCS / name / file)
            wall = _wall_seconds(runs / "times.txt", name)
            if wall is not None:
                (DOCS / name / "wall_s").write_text(f"{wall}\n")


def _wall_seconds(times: Path, name: str) -> float | None:
    """The training command's wall time from the runner's log ("<name> train_wall_s <s>")."""
    if not times.exists():
        return None
    for line in times.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == name and parts[1] == "train_wall_s":
            return float(parts[2])
    return None


def row(name: str) -> dict | None:
    folder = DOCS / name
    if not (folder / "evaluation_test.json").exists():
        return None
    results = json.loads((folder / "evaluation_test.json").read_text())["results"]
    tuned = json.loads((folder / "tuned.json").read_text())
    timing = metrics_log.read_metrics(folder / "timing.jsonl")
    metrics = metrics_log.read_metrics(folder / "metrics.jsonl")
    config = json.loads((folder / "config.json").read_text())
    wall = float((folder / "wall_s").read_text()) if (folder / "wall_s").exists() else None
    return {
        "raw": results["tta=off postprocess=off"]["mean_dice"],
        "tuned": results[f"tta={'on' if tuned['tta'] else 'off'} postprocess=on"]["mean_dice"],
        "epochs": len(metrics),
        "planned": config["train"]["epochs"],
        "img_per_s": sum(t["train_img_per_s"] for t in timing[1:]) / max(len(timing) - 1, 1),
        "minutes": wall / 60 if wall else None,
        "curve": [
            (t["train_seconds"], m["val_mean_dice"]) for t, m in zip(timing, metrics, strict=True)
        ],
    }


def minutes_to(target: float, curve) -> float | None:
    """Training minutes (epochs' own seconds) until validation mean Dice first reaches target."""
    spent = 0.0
    for seconds, dice in curve:
        spent += seconds
        if dice >= target:
            return spent / 60
    return None


def table(mediapipe: dict | None) -> str:
    rows = {name: row(name) for name in ROWS}
    lines = [
        "| run | model | held-out mean Dice | + tuned TTA and post-processing | epochs (planned) "
        "| train img/s | wall minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (what, _) in ROWS.items():
        r = rows[name]
        if r is None:
            lines.append(f"| {name} | {what} | not run | | | | |")
            continue
        minutes = f"{r['minutes']:.1f}" if r["minutes"] else ""
        lines.append(
            f"| {name} | {what} | {r['raw']:.4f} | {r['tuned']:.4f} | {r['epochs']} "
            f"({r['planned']}) | {r['img_per_s']:.1f} | {minutes} |"
        )
    if mediapipe:
        lines.append(
            f"| mediapipe | MediaPipe selfie segmentation, zero-shot (no training) | "
            f"{mediapipe['held_out_mean_dice']:.4f} | | | | |"
        )
    scratch = rows.get("scratch-unet")
    notes = []
    if scratch:
        final = scratch["curve"][-1][1] if scratch["curve"] else None
        best = max(d for _, d in scratch["curve"])
        notes.append(
            f"Time to quality: the scratch UNet's best validation mean Dice in its budget was "
            f"{best:.4f} (last epoch {final:.4f}), after {minutes_to(best, scratch['curve']):.1f} "
            "training minutes."
        )
        for name, r in rows.items():
            if r and name != "scratch-unet":
                reached = minutes_to(best, r["curve"])
                when = f"{reached:.1f} training minutes" if reached else "not within its budget"
                notes.append(f"- {name} reached it after {when}.")
    commands = [
        f"    python scripts/train.py {COMMON} {flags} --run-dir runs/table/{name}".replace(
            "  ", " "
        )
        for name, (_, flags) in ROWS.items()
    ]
    return "\n".join(
        [
            *lines,
            "",
            *notes,
            "",
            "Commands (each followed by `python scripts/evaluate.py --run-dir runs/table/<name> "
            "--split test`):",
            "",
            *commands,
        ]
    )


HEADER = """# Pretrained encoders on real photos

Generated by `python tools/pretrained_table.py --out docs/pretrained.md` from the result files
each run leaves in `docs/pretrained/<name>/`; do not edit by hand. Data:
`../shared/data/ccp_person` (803 street photos, 550 x 801-873 pixels), split 80/10/10 with
`--split-seed 0`; scores are the mean per-image Dice on the 80 held-out photos at their original
size (`scripts/evaluate.py --split test`). Every run had the same 12-minute budget on this
project's 2-core CPU (`--time-budget 12`: decoding, compiling, training, validation and tuning
together; the number of epochs is the planner's), at 192x128 unless the row says otherwise,
batch 8, Adam at 1e-3 with a cosine schedule, BCE + Dice, basic augmentation unless the row says
otherwise. "Train img/s" is the mean over epochs after the first, in the training loop. The
MediaPipe row is `benchmarks/mediapipe_reference.py` on the same 80 photos (0.9394 on all 803).
The seed-to-seed spread of these scores is about 0.003 (docs/experiments.md). The runs were
made at commit 0e7a612; the time-budget planner has since been made less conservative (it
times steps after a warm-up and keeps no 5% margin), so a re-run plans about one epoch more.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/table", help="folder of the table's runs")
    parser.add_argument(
        "--mediapipe",
        default=str(DOCS / "mediapipe.json"),
        help="benchmarks/mediapipe_reference.py's --out JSON",
    )
    parser.add_argument("--out", help="write the page here (default: print it)")
    args = parser.parse_args()
    if Path(args.runs).is_dir():
        keep(Path(args.runs))
    path = Path(args.mediapipe)
    mediapipe = json.loads(path.read_text()) if path.exists() else None
    page = HEADER + table(mediapipe) + "\n"
    if args.out:
        Path(args.out).write_text(page)
        print(f"wrote {args.out}")
    else:
        print(page)


if __name__ == "__main__":
    main()
