"""Convert a run folder written by segjax 0.1 so that today's segjax loads it.

    python tools/migrate_run.py runs/old-run [more runs ...]

segjax 0.1 kept its model as one flat module (`down0`, ..., `bottleneck`, `up*`; UNet++'s
`x<i>_<j>`), recorded the validation mean Dice as `val_dice`, kept the run's derived facts
(normalisation statistics, compute dtype) in config.json and wrote `keep_largest` into
tuned.json. This rewrites the folder in place: config.json (+ run.json), tuned.json, and each
checkpoint's weights and BatchNorm statistics in today's encoder/decoder tree (the optimizer
state is not carried over: a migrated run can be submitted, evaluated, exported and used with
--init-from, not resumed). The old checkpoints are kept as checkpoints-0.1/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from segjax.config import RunFacts
from segjax.models.builder import create_model
from segjax.runs import checkpoint, run_folder


def upgrade_layout(variables: dict, arch: str) -> dict:
    """Variables of segjax 0.1's models (one flat module) in today's encoder/decoder tree.

    The encoder blocks (`down*`, `bottleneck`; UNet++'s `x*_0`) move under `encoder`, the rest
    under `decoder`; the values do not change.
    """

    def split(tree: dict) -> dict:
        if "encoder" in tree or not tree:
            return tree
        out: dict = {"encoder": {}, "decoder": {}}
        depth = sum(name.startswith("x") and name.endswith("_0") for name in tree) - 1
        for name, value in tree.items():
            if arch == "unetpp" and name.startswith("x") and name.endswith("_0"):
                level = int(name[1:-2])
                out["encoder"]["bottleneck" if level == depth else f"down{level}"] = value
            elif name.startswith("down") or name == "bottleneck":
                out["encoder"][name] = value
            else:
                out["decoder"][name] = value
        return out

    return {collection: split(dict(tree)) for collection, tree in variables.items()}


def legacy_layout(variables: dict, arch: str) -> dict:
    """The inverse of `upgrade_layout`: today's tree in segjax 0.1's flat module names."""

    def flatten(tree: dict) -> dict:
        if "encoder" not in tree:
            return tree
        out = dict(tree["decoder"])
        depth = sum(name.startswith("down") for name in tree["encoder"])
        for name, value in tree["encoder"].items():
            if arch == "unetpp":
                level = depth if name == "bottleneck" else int(name[len("down") :])
                name = f"x{level}_0"
            out[name] = value
        return out

    return {collection: flatten(dict(tree)) for collection, tree in variables.items()}


# segjax 0.1 kept these facts in config.json (and the planned epochs as its train.epochs).
FACTS_IN_CONFIG = {"data": ("mean", "std"), "model": ("encoder_source", "dtype")}


def _migrate_config(run_dir: Path) -> RunFacts:
    """config.json without the facts, which go to run.json; returns them."""
    path = run_dir / run_folder.CONFIG_FILE
    raw = json.loads(path.read_text())
    raw.setdefault("model", {}).setdefault("encoder", "scratch")  # 0.1 had only its own
    found = {}
    for section, keys in FACTS_IN_CONFIG.items():
        for key in keys:
            if key in raw.get(section, {}):
                value = raw[section].pop(key)
                found[key] = tuple(value) if isinstance(value, list) else value
    config = run_folder.load_config(path, raw)
    facts = RunFacts(**found, epochs=config.train.epochs)
    run_folder.write_run(run_dir, config, facts)
    return facts


def _migrate_tuned(run_dir: Path) -> None:
    path = run_dir / "tuned.json"
    if path.exists():
        record = json.loads(path.read_text())
        record["postprocess"].pop("keep_largest", None)  # never tuned in 0.1, always false
        path.write_text(json.dumps(record, indent=2) + "\n")


def _template(run_dir: Path) -> dict:
    config, facts = run_folder.read_run(run_dir)
    model = create_model(config.model, facts.dtype)
    h, w = config.data.image_size
    sample = jax.ShapeDtypeStruct((1, h, w, config.data.channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def _migrate_checkpoints(run_dir: Path) -> list[int]:
    config, facts = run_folder.read_run(run_dir)
    old_dir, new_dir = run_dir / "checkpoints-0.1", run_dir / "checkpoints"
    if not old_dir.exists():
        shutil.move(new_dir, old_dir)
    template = legacy_layout(_template(run_dir), config.model.arch)
    old = ocp.CheckpointManager(old_dir.absolute(), options=ocp.CheckpointManagerOptions(
        read_only=True))  # fmt: skip
    new = checkpoint.create_manager(new_dir)
    for step in old.all_steps():
        meta = dict(old.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        variables = checkpoint.restore_variables(old, step, template)
        metrics = meta.get("metrics", {})
        if checkpoint.BEST_METRIC not in metrics and "val_dice" in metrics:
            metrics[checkpoint.BEST_METRIC] = metrics.pop("val_dice")
        meta["metrics"] = metrics
        meta.setdefault("facts", facts.to_dict())  # what a resume reads the schedule from
        checkpoint.save(new, step, upgrade_layout(variables, config.model.arch), meta)
    checkpoint.seal(new)
    steps = new.all_steps()
    old.close()
    new.close()
    return steps


def migrate(run_dir: str | Path) -> list[int]:
    """Convert one 0.1 run folder in place; returns the checkpoint epochs converted."""
    run_dir = Path(run_dir)
    if not (run_dir / run_folder.CONFIG_FILE).is_file():
        raise SystemExit(f"{run_dir}: no config.json (not a segjax run folder)")
    _migrate_config(run_dir)
    _migrate_tuned(run_dir)
    return _migrate_checkpoints(run_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders of segjax 0.1")
    for run_dir in parser.parse_args(argv).runs:
        steps = migrate(run_dir)
        print(f"{run_dir}: converted checkpoints {steps}; the old ones are in checkpoints-0.1/")


if __name__ == "__main__":
    sys.exit(main())
