"""Models: shapes at several sizes, parameter counts, the fast up-convolution, gradients, modes."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from segjax import losses
from segjax.compat import enable_x64
from segjax.config import ModelConfig
from segjax.errors import UserError
from segjax.models.builder import create_model
from segjax.models.decoders import UNetDecoder
from segjax.models.encoder_decoder import valid_input_length, valid_output_length
from segjax.models.encoders import ScratchEncoder
from segjax.models.layers import BlockOptions, UpConv, max_pool_2x2
from segjax.models.registry import ARCHS

TINY = dict(encoder="scratch", features=4, depth=2, upsample="transpose")


# Attention gates, residual blocks and valid convolutions compile slowly on CPU: their variants
# are in the slow tier, unet and unetpp in the fast one.
ARCH_PARAMS = [
    pytest.param(a, marks=pytest.mark.slow) if a in ("attn", "resunet", "unet-valid") else a
    for a in sorted(ARCHS)
]


def tiny(arch: str, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, **{**TINY, **kw})


def n_params(variables) -> int:
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


def init(config: ModelConfig, shape, dtype=jnp.float32, compute: str = "float32"):
    model = create_model(config, compute)
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    variables = model.init({"params": jax.random.key(1)}, x, train=False)
    return model, variables, x


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_every_arch_any_size_jit_equals_eager(arch):
    sizes = [(20, 28), (30, 18)]
    counts = []
    for h, w in sizes:  # one non-square, one not a multiple of 2**depth
        config = tiny(arch)
        model, variables, x = init(config, (2, h, w, 3))
        eager = model.apply(variables, x, train=False)
        jitted = jax.jit(functools.partial(model.apply, train=False))(variables, x)
        assert eager.shape == (2, h, w, 1)  # unet-valid too: overlap-tile mirror padding
        assert eager.dtype == jnp.float32
        np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)
        counts.append(n_params(variables))
    assert counts[0] == counts[1]


class BareValidUNet(nn.Module):
    """The 2015 network without the overlap tile: valid convolutions, a smaller output."""

    @nn.compact
    def __call__(self, x, *, train):
        blocks = BlockOptions(features=4, padding="VALID")
        encoder = ScratchEncoder(blocks=blocks, depth=2, name="encoder")
        decoder = UNetDecoder(blocks=blocks, name="decoder")
        return decoder(encoder(x, train=train), train=train)


def test_valid_unet_output_is_smaller_and_matches_the_paper():
    assert valid_output_length(572, depth=4, convs=2) == 388
    assert valid_output_length(44, depth=2, convs=2) == 4
    assert valid_input_length(388, depth=4, convs=2) == 572
    paper = BareValidUNet()
    x = jax.random.normal(jax.random.key(0), (1, 44, 60, 3))
    assert paper.apply(paper.init(jax.random.key(1), x, train=False), x, train=False).shape == (
        1,
        4,
        20,
        1,
    )


def test_unet_valid_overlap_tile_is_the_bare_network_on_the_mirror_padded_image():
    config = tiny("unet-valid")
    model, variables, x = init(config, (2, 20, 28, 3))
    bare = BareValidUNet()
    need = [valid_input_length(n, 2, 2) for n in (20, 28)]
    pads = [((n - s) // 2, n - s - (n - s) // 2) for n, s in zip(need, (20, 28), strict=True)]
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode="reflect")
    out = bare.apply(variables, padded, train=False)
    top, left = (out.shape[1] - 20) // 2, (out.shape[2] - 28) // 2
    np.testing.assert_allclose(
        model.apply(variables, x, train=False),
        out[:, top : top + 20, left : left + 28],
        rtol=1e-5,
        atol=1e-5,
    )


def test_classic_2015_unet_has_31_030_593_parameters():
    config = ModelConfig(
        arch="unet-valid",
        encoder="scratch",
        features=64,
        depth=4,
        batch_norm=False,
        upsample="transpose",
    )
    model = create_model(config)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.ones((1, 572, 572, 1)), train=False)
    )
    assert n_params(shapes) == 31_030_593


def test_every_option_builds():
    options = [
        dict(batch_norm=False),
        dict(dropout=0.2, dropout_deep_only=True),
        dict(double_conv=True),
        dict(activation="leaky_relu"),
        dict(upsample="resize"),
        dict(compute="bfloat16"),
        dict(arch="unetpp", deep_supervision=True),
    ]
    base = n_params(init(tiny("unet"), (1, 16, 16, 3))[1])
    for option in options:
        compute = option.pop("compute", "float32")
        config = tiny(option.pop("arch", "unet"), **option)
        model, variables, x = init(config, (1, 16, 16, 3), compute=compute)
        y = model.apply(variables, x, train=False)
        assert y.shape == (1, 16, 16, 1) and y.dtype == jnp.float32, config
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert n_params(init(tiny("unet", double_conv=True), (1, 16, 16, 3))[1]) > base


def test_upconv_equals_transposed_convolution_with_the_same_weights():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 6))
    transposed = nn.ConvTranspose(4, (2, 2), strides=(2, 2))
    tv = transposed.init(jax.random.key(1), x)
    kernel, bias = tv["params"]["kernel"], tv["params"]["bias"]
    # ConvTranspose applies its kernel spatially flipped; UpConv holds [C, 2, 2, F] as 1x1 -> 4F.
    kernel4 = jnp.transpose(kernel[::-1, ::-1], (2, 0, 1, 3)).reshape(1, 1, 6, 16)
    fast = UpConv(4).apply({"params": {"kernel4": {"kernel": kernel4}, "bias": bias}}, x)
    np.testing.assert_allclose(fast, transposed.apply(tv, x), rtol=1e-5, atol=1e-5)
    assert n_params(UpConv(4).init(jax.random.key(2), x)) == n_params(tv)


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_gradients_match_finite_differences_in_float64(arch):
    with enable_x64(True):
        config = tiny(arch, features=2)
        shape = (2, 8, 8, 3)
        model, variables, x = init(config, shape, jnp.float64, compute="float64")

        def f(params):
            out, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.tanh(out))

        check_grads(  # jitted: the eager model's op-by-op dispatch took most of the time
            jax.jit(f),
            (variables["params"],),
            order=1,
            modes=["rev"],
            eps=1e-6,
            atol=1e-4,
            rtol=1e-4,
        )


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_every_parameter_receives_a_gradient_from_bce_dice(arch):
    config = tiny(arch, deep_supervision=arch == "unetpp")
    model, variables, x = init(config, (4, 16, 16, 3))
    masks = (jax.random.uniform(jax.random.key(5), (4, 16, 16)) > 0.5).astype(jnp.float32)

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return losses.bce(logits, masks) + losses.dice(logits, masks)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    flat = jax.tree_util.tree_leaves_with_path(grads)
    dead = [jax.tree_util.keystr(path) for path, g in flat if not jnp.any(g != 0)]
    assert not dead, f"parameters without gradient: {dead}"


def test_dropout_only_in_training_and_batchnorm_modes():
    config = tiny("unet", dropout=0.5)
    model, variables, x = init(config, (4, 16, 16, 3))
    run = lambda key: model.apply(
        variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
    )[0]
    assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))
    eval_a = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, model.apply(variables, x, train=False))
    # Training normalises with the batch's statistics and updates the running averages;
    # evaluation uses the running averages, so the same weights give other outputs.
    no_drop = tiny("unet")
    model, variables, x = init(no_drop, (4, 16, 16, 3))
    train_out, updated = model.apply(variables, x * 3 + 1, train=True, mutable=["batch_stats"])
    eval_out = model.apply(variables, x * 3 + 1, train=False)
    assert not np.allclose(train_out, eval_out, atol=1e-3)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updated["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    # A batch of one image is normalised by its own statistics in training, not in evaluation.
    single = model.apply(variables, x[:1], train=False)
    np.testing.assert_allclose(single, model.apply(variables, x, train=False)[:1], atol=1e-5)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(UserError, match="unknown arch 'vnet'; choose one of"):
        create_model(ModelConfig(arch="vnet", encoder="scratch"))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_max_pool_2x2_equals_flax_max_pool_with_its_gradient(shape):
    x = jax.random.normal(jax.random.key(0), shape)  # no ties: the gradients must agree exactly
    flax_pool = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), flax_pool(x))
    grad = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x)
    np.testing.assert_allclose(grad(max_pool_2x2), grad(flax_pool), rtol=1e-6)


EXPECTED_PARAMS = {"unet": 7549, "attn": 7707, "unetpp": 8273, "resunet": 7961, "unet-valid": 7549}
# The classifiers' published sizes less their ImageNet heads: EfficientNet-Lite0 4,652,008 less
# the 1x1 conv to 1280 (409,600), its BatchNorm (2,560) and the classifier (1,281,000);
# torchvision's ResNet-18 11,689,512 and ResNet-34 21,797,672 less the classifier (513,000).
ENCODER_PARAMS = {"efficientnet-lite0": 2_958_848, "resnet18": 11_176_512, "resnet34": 21_284_672}


@pytest.mark.parametrize("arch", sorted(EXPECTED_PARAMS))
def test_parameter_counts_per_arch_at_two_sizes(arch):
    for h, w in ((16, 24), (40, 36)):
        shapes = jax.eval_shape(
            lambda h=h, w=w: create_model(tiny(arch)).init(
                jax.random.key(0), jnp.zeros((1, h, w, 3)), train=False
            )
        )
        assert n_params(shapes) == EXPECTED_PARAMS[arch]


@pytest.mark.parametrize("encoder", sorted(ENCODER_PARAMS))
def test_pretrained_encoders_have_the_classifiers_parameter_counts(encoder):
    for size in (64, 96):
        shapes = jax.eval_shape(
            lambda size=size: create_model(ModelConfig(encoder=encoder, features=16)).init(
                jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False
            )
        )
        assert n_params({"params": shapes["params"]["encoder"]}) == ENCODER_PARAMS[encoder]
