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
from segjax.errors import UserError
from segjax.inference import submission
from segjax.inference.run_loader import load_run
from segjax.models.builder import create_model
from segjax.runs import checkpoint, run_folder
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
    # The stored logits were computed on another CPU: float32 results depend on the vector
    # width (the order of each convolution's sum), so they are compared with a tolerance, not
    # bitwise. Float32's unit roundoff is 6e-8; these logits (|x| <= 0.65) pass through about
    # ten convolutions of at most 9*16 = 144 products each, and a reordered sum moves an output
    # by a few units of roundoff per layer: 3.6e-7 was the largest difference seen between an
    # AVX-512 and an AVX2 CPU. 1e-5 is 25 times that, and 1000 times smaller than what one
    # misplaced weight does (a wrong mapping moves the logits by 1e-2 or more).
    logits = model.apply(new, x, train=False)
    np.testing.assert_allclose(logits, stored[arch + "|logits"], rtol=0, atol=1e-5)


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
    # Not as it is: the folder has no run.json, and the error names the tool that converts it.
    with pytest.raises(UserError, match="convert it with python tools/migrate_run.py"):
        load_run(old)
    assert (
        migrate(old)
        == checkpoint.create_manager(trained_run / "checkpoints", read_only=True).all_steps()
    )
    assert (old / "checkpoints-0.1").is_dir()
    assert run_folder.read_run(old) == run_folder.read_run(trained_run)
    # Bitwise on purpose: both sides are this process's own run (trained by the conftest here,
    # then converted), so the migration must copy every weight exactly; no stored float is read.
    a, b = load_run(trained_run), load_run(old)
    assert a.step == b.step
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    quiet = InferenceOptions(progress=False)
    first = submission.make_submission(trained_run, quiet, out=tmp_path / "a.csv")
    second = submission.make_submission(old, quiet, out=tmp_path / "b.csv")
    assert first.path.read_bytes() == second.path.read_bytes()
