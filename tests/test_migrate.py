"""tools/migrate_run.py: runs of segjax 0.1 converted so that today's segjax loads them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from segjax.config import InferenceOptions, ModelConfig
from segjax.inference import submission
from segjax.inference.run_loader import load_run
from segjax.models.builder import create_model
from segjax.train import checkpoint, run_folder
from tools.migrate_run import legacy_layout, migrate, upgrade_layout

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ["unet", "attn", "unetpp"])
def test_old_layout_weights_in_the_encoder_decoder_tree_give_the_same_logits(arch):
    """tests/data/legacy_layout.npz: variables and logits of segjax 0.1's flat modules
    (commit c4ce864), features 4, depth 2, on a fixed 20x28 input."""

    stored = np.load(ROOT / "tests" / "data" / "legacy_layout.npz")
    old: dict = {}
    for key in stored.files:
        if key.startswith(arch + "|") and not key.endswith("|logits"):
            *path, leaf = key.split("|")[1].split("/")
            node = old
            for name in path:
                node = node.setdefault(name, {})
            node[leaf] = stored[key]
    model = create_model(
        ModelConfig(arch=arch, encoder="scratch", features=4, depth=2, upsample="transpose")
    )
    x = jnp.asarray(stored["input"])
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    new = upgrade_layout(old, arch)
    assert jax.tree.structure(new) == jax.tree.structure(shapes)
    np.testing.assert_array_equal(model.apply(new, x, train=False), stored[arch + "|logits"])


def _as_segjax_0_1(run_dir: Path) -> None:
    """Rewrite a run folder the way segjax 0.1 wrote it: flat modules, val_dice, the facts in
    config.json (and no encoder setting), keep_largest in tuned.json."""
    config = json.loads((run_dir / "config.json").read_text())
    facts = json.loads((run_dir / "run.json").read_text())
    config["data"].update(mean=facts["mean"], std=facts["std"])
    config["model"].update(dtype=facts["dtype"], encoder_source="")
    del config["model"]["encoder"]
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "run.json").unlink()
    tuned = json.loads((run_dir / "tuned.json").read_text())
    tuned["postprocess"]["keep_largest"] = False
    (run_dir / "tuned.json").write_text(json.dumps(tuned))
    arch = config["model"]["arch"]
    old = checkpoint.create_manager(run_dir / "checkpoints", read_only=True)
    steps = {}
    for step in old.all_steps():
        args = ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
        restored = old.restore(step, args=args)
        state = dict(restored["state"])
        flat = legacy_layout({"params": state["params"], "batch_stats": state["batch_stats"]}, arch)
        meta = dict(restored["meta"])
        meta["metrics"] = {"val_dice": meta["metrics"].pop("val_mean_dice")}
        steps[step] = ({**state, **flat}, meta)
    old.close()
    shutil.rmtree(run_dir / "checkpoints")
    writer = ocp.CheckpointManager((run_dir / "checkpoints").absolute())
    for step, (state, meta) in steps.items():
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(meta),
        )
        writer.save(step, args=args)
    writer.wait_until_finished()
    writer.close()


def test_a_run_of_segjax_0_1_is_converted_and_submits_as_before(trained_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    _as_segjax_0_1(old)
    with pytest.raises(checkpoint.CheckpointError, match="holds no"):  # not as it is
        load_run(old)
    assert (
        migrate(old)
        == checkpoint.create_manager(trained_run / "checkpoints", read_only=True).all_steps()
    )
    assert (old / "checkpoints-0.1").is_dir()
    assert run_folder.read_run(old) == run_folder.read_run(trained_run)
    a, b = load_run(trained_run), load_run(old)
    assert a.step == b.step
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    quiet = InferenceOptions(progress=False)
    first = submission.make_submission(trained_run, quiet, out=tmp_path / "a.csv")
    second = submission.make_submission(old, quiet, out=tmp_path / "b.csv")
    assert first.path.read_bytes() == second.path.read_bytes()
