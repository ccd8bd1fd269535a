"""timm's encoders (ResNet-50/101, ResNeXt-50, EfficientNet-B0..B5, ConvNeXt-T/S) against timm.

The references come from timm's own definitions (`benchmarks/timm_reference.py`): each model's
state-dict layout and parameter count, and float64 logits on seeded random weights for one model
per family. The tests need neither torch nor timm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from segjax.compat import enable_x64
from segjax.config import ModelConfig
from segjax.errors import UserError
from segjax.models import pretrained, weight_files
from segjax.models.builder import create_model
from segjax.models.convnext import ConvNeXtClassifier
from segjax.models.efficientnet import EfficientNetClassifier
from segjax.models.registry import ENCODERS
from segjax.models.resnet import ResNetClassifier
from tests.test_pretrained import draw

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = json.loads((DATA / "timm_reference.json").read_text())["models"]
HEADS = ("fc.", "classifier.", "conv_head.", "bn2.", "head.")  # timm's classifier heads

CLASSIFIERS = {
    "resnet50": lambda: ResNetClassifier((3, 4, 6, 3), bottleneck=True, dtype=jnp.float64),
    "resnext50-32x4d": lambda: ResNetClassifier(
        (3, 4, 6, 3), bottleneck=True, groups=32, base_width=4, dtype=jnp.float64
    ),
    "efficientnet-b0": lambda: EfficientNetClassifier(1.0, 1.0, dtype=jnp.float64),
    "convnext-tiny": lambda: ConvNeXtClassifier((3, 3, 9, 3), dtype=jnp.float64),
}


class Reads(dict):
    """A state dict that remembers which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def encoder_shapes(encoder: str) -> dict:
    model = create_model(ModelConfig(encoder=encoder, features=4))
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    return {k: v["encoder"] for k, v in shapes.items() if "encoder" in v}


@pytest.mark.parametrize(
    "encoder",
    [e if e in CLASSIFIERS else pytest.param(e, marks=pytest.mark.slow) for e in sorted(REFERENCE)],
)
def test_every_timm_tensor_maps_onto_the_encoder_and_the_parameter_counts_equal(encoder):
    """Each timm tensor outside the head fills exactly one encoder leaf of the same shape."""
    ref = REFERENCE[encoder]
    template = encoder_shapes(encoder)
    count = sum(leaf.size for leaf in jax.tree.leaves(template["params"]))
    assert count == ref["encoder_params"]
    zero = np.zeros((), np.float32)
    state = Reads({k: np.broadcast_to(zero, shape) for k, shape in ref["layout"].items()})
    pretrained.map_state_dict(state, template, ENCODERS[encoder].family, "model.safetensors")
    unread = {
        k for k in set(state) - state.read if not k.endswith("num_batches_tracked")
    }  # timm keeps a BatchNorm counter that segjax does not need
    assert all(k.startswith(HEADS) for k in unread), sorted(unread)[:5]
    assert len(state.read) == len(jax.tree.leaves(template))


SLOW = pytest.mark.slow  # float64 compiles of 25-28M-parameter classifiers: 4-10 s each


@pytest.mark.parametrize(
    "encoder", [e if e == "resnet50" else pytest.param(e, marks=SLOW) for e in sorted(CLASSIFIERS)]
)
def test_timm_weights_from_a_hub_folder_reproduce_timms_logits(encoder, tmp_path):
    """Seeded weights in timm's layout, saved as the Hub's model.safetensors with a "model."
    prefix and a classifier head, give timm's float64 logits."""
    ref = REFERENCE[encoder]
    state = {f"model.{k}": draw(k, tuple(s)) for k, s in ref["layout"].items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    path = pretrained.weights_file(encoder, str(tmp_path))
    assert path == tmp_path / "model.safetensors"
    x = np.random.default_rng(2).uniform(-2, 2, (1, 64, 64, 3))
    with enable_x64(True):
        model = CLASSIFIERS[encoder]()
        template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(x)))
        loaded = pretrained.map_state_dict(
            weight_files.read_state_dict(path), template, ENCODERS[encoder].family, str(path)
        )
        logits = np.asarray(jax.jit(model.apply)(loaded, jnp.asarray(x)))[0]
    expected = np.asarray(ref["logits"])
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_a_missing_or_misshaped_timm_tensor_is_named_before_training(tmp_path):
    layout = REFERENCE["convnext-tiny"]["layout"]
    template = encoder_shapes("convnext-tiny")
    state = {k: np.zeros(s, np.float32) for k, s in layout.items()}
    missing = {k: v for k, v in state.items() if k != "stages.2.blocks.4.gamma"}
    with pytest.raises(
        UserError, match=r"convnext.safetensors: no tensor 'stages.2.blocks.4.gamma'"
    ):
        pretrained.map_state_dict(missing, template, "convnext", "convnext.safetensors")
    small = {**state, "stem.0.weight": np.zeros((64, 3, 4, 4), np.float32)}
    with pytest.raises(UserError, match=r"'stem.0.weight' has shape \(64, 3, 4, 4\)"):
        pretrained.map_state_dict(small, template, "convnext", "convnext.safetensors")


def test_weights_sources_a_folder_without_the_file_a_missing_path_and_the_hub_offline(
    tmp_path, monkeypatch
):
    with pytest.raises(UserError, match="a folder without model.safetensors"):
        pretrained.weights_file("resnet50", str(tmp_path))
    with pytest.raises(UserError, match="no such file or folder"):
        pretrained.weights_file("resnet50", str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(UserError, match="timm/resnet50.a1_in1k"):
        pretrained.weights_file("resnet50", "imagenet")  # says which file to attach
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(UserError, match="needs the package huggingface_hub.*attach model"):
        pretrained.weights_file("resnet50", "hf-hub:timm/resnet50.a1_in1k")


def test_the_hub_download_failing_offline_says_how_to_attach_the_file(monkeypatch):
    import types

    def offline(repo_id, filename):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    hub = types.SimpleNamespace(hf_hub_download=offline)
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    with pytest.raises(UserError, match="could not download model.safetensors.*attach"):
        pretrained.weights_file("convnext-tiny", "hf-hub:timm/convnext_tiny.fb_in22k_ft_in1k")
    fetched = []
    hub.hf_hub_download = lambda repo_id, filename: fetched.append((repo_id, filename)) or "/c/f"
    path = pretrained.weights_file("convnext-tiny", "hf-hub:timm/convnext_tiny.fb_in1k")
    assert (path, fetched) == (Path("/c/f"), [("timm/convnext_tiny.fb_in1k", "model.safetensors")])


def test_freezing_batchnorm_of_an_encoder_without_it_is_refused():
    from segjax.models.builder import check_model

    check_model(ModelConfig(encoder="convnext-tiny"))
    with pytest.raises(UserError, match="--encoder convnext-tiny has no BatchNorm"):
        check_model(ModelConfig(encoder="convnext-tiny", encoder_bn="frozen"))
    check_model(ModelConfig(encoder="resnet50", encoder_bn="frozen"))
