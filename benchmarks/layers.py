"""Per-layer truth: each convolution of a model alone, forward, input gradient and weight
gradient, in each of segjax's forms and in PyTorch, on the shapes the model sees.

    python scripts/benchmark.py --layers --arch unet --encoder efficientnet-lite0 --features 16 \
        --upsample nearest --image-size 192x128 --batch-size 8   # the default model
    ... --json layers.jsonl                                      # also one JSON line per row

(without the model flags: the benchmark's own default, the scratch UNet at 256x256)

The layers are read from the model itself (`flax.linen.intercept_methods` on a shape-only
init), grouped by kind (depthwise k x k, dense 1x1, dense k x k), stride and shape. Each form
of a layer is jitted on its own; a time is the median of `repeats` runs after one warm-up.
A maintainer's tool, run from a checkout.
"""

from __future__ import annotations

import collections
import functools
import json
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models import convolutions, strided
from segjax.models.builder import create_model

Layer = collections.namedtuple("Layer", "kind shape kernel stride cout padding count")


def model_layers(config, batch: int) -> list[Layer]:
    """Every convolution of `config.model` at the training size: (kind, input shape [B, H, W,
    C], kernel, stride, output channels, padding), with how many times it occurs."""
    model = create_model(config.model)
    h, w = config.data.image_size
    found: collections.Counter = collections.Counter()

    def record(next_fun, args, kwargs, context):
        module, x = context.module, args[0] if args else None
        if context.method_name == "__call__" and hasattr(x, "shape"):
            shape = tuple(x.shape)
            if isinstance(module, convolutions.DepthwiseConv):
                k, s = module.kernel_size, module.strides
                found[Layer("depthwise", shape, k, s, shape[-1], module.padding, 0)] += 1
            elif isinstance(module, nn.Conv) and module.feature_group_count == 1:
                k = module.kernel_size[0]
                s = module.strides if isinstance(module.strides, int) else module.strides[0]
                kind = "dense 1x1" if k == 1 else f"dense {k}x{k}"
                pad = module.padding if isinstance(module.padding, str) else "SYMMETRIC"
                found[Layer(kind, shape, k, s or 1, module.features, pad, 0)] += 1
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return [layer._replace(count=n) for layer, n in found.items()]


def dense_native(x, w, stride: int, padding: str):
    pads = padding if padding in ("SAME", "VALID") else ((w.shape[0] // 2,) * 2,) * 2
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def forms(layer: Layer) -> dict[str, Callable]:
    """name -> f(x, w) for each form of this layer that segjax has or considers."""
    s, pad = layer.stride, layer.padding
    if layer.kind == "depthwise":
        return {
            "segjax": functools.partial(convolutions.depthwise_conv, stride=s, padding=pad),
            "native": functools.partial(convolutions.depthwise_native, stride=s, padding=pad),
            "shifted": functools.partial(convolutions.depthwise_shifted, stride=s, padding=pad),
        }
    native = functools.partial(dense_native, stride=s, padding=pad)
    if s == 1:
        return {"segjax": native}
    return {"segjax": functools.partial(dense_strided, stride=s, padding=pad), "native": native}


def dense_strided(x, w, stride: int, padding: str):
    """segjax's strided convolution (`strided.conv_general`: on CPU the input gradient by
    phases), as `nn.Conv` calls it."""
    pads = padding if padding in ("SAME", "VALID") else ((w.shape[0] // 2,) * 2,) * 2
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    return strided.conv_general(x, w, (stride, stride), pads, dimension_numbers=dims)


def weight_shape(layer: Layer) -> tuple[int, ...]:
    if layer.kind == "depthwise":
        return (layer.kernel, layer.kernel, 1, layer.shape[-1])
    return (layer.kernel, layer.kernel, layer.shape[-1], layer.cout)


def median_ms(fn: Callable, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - tic)
    return float(np.median(times)) * 1e3


def time_form(f: Callable, x, w, repeats: int) -> dict[str, float]:
    """Forward, input gradient and weight gradient of f, each jitted alone (ms)."""
    y = jax.eval_shape(f, x, w)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), y.dtype)
    fwd = jax.jit(f)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0])
    return {
        "fwd": median_ms(fwd, x, w, repeats=repeats),
        "dx": median_ms(dx, x, w, g, repeats=repeats),
        "dw": median_ms(dw, x, w, g, repeats=repeats),
    }


def time_torch(layer: Layer, repeats: int) -> dict[str, float] | None:
    """The same layer in PyTorch (channels_last, oneDNN), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    b, h, w, c = layer.shape
    k, s = layer.kernel, layer.stride
    groups = c if layer.kind == "depthwise" else 1
    x = torch.randn(b, c, h, w).to(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(layer.cout, c // groups, k, k).to(memory_format=torch.channels_last)
    weight.requires_grad_()
    pad = 0 if layer.padding == "VALID" else k // 2
    conv = lambda: torch.nn.functional.conv2d(x, weight, stride=s, padding=pad, groups=groups)
    with torch.no_grad():
        y = conv()
    g = torch.randn_like(y).contiguous(memory_format=torch.channels_last)

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
        return float(np.median(times)) * 1e3

    def forward():
        with torch.no_grad():
            conv()

    grad_x = lambda: torch.autograd.grad(conv(), x, g)
    grad_w = lambda: torch.autograd.grad(conv(), weight, g)
    fwd = timed(forward)
    # autograd.grad asks the convolution's backward for one gradient only; the forward it
    # needs again is subtracted.
    return {"fwd": fwd, "dx": timed(grad_x) - fwd, "dw": timed(grad_w) - fwd}


def run(config, batch: int, repeats: int = 10, out=None) -> list[dict]:
    """Time every layer of the model; print a table; return the rows."""
    rows = []
    rng = np.random.default_rng(0)
    header = f"{'layer':38s} {'n':>2s} {'form':8s} {'fwd ms':>7s} {'dx ms':>7s} {'dw ms':>7s}"
    print(header)
    order = lambda layer: (layer.kind, -layer.shape[1], layer.shape[-1])
    for layer in sorted(model_layers(config, batch), key=order):
        x = jnp.asarray(rng.standard_normal(layer.shape), jnp.float32)
        w = jnp.asarray(rng.standard_normal(weight_shape(layer)) * 0.1, jnp.float32)
        name = f"{layer.kind} s{layer.stride} {'x'.join(map(str, layer.shape))}" + (
            f"->{layer.cout}" if layer.kind != "depthwise" else f" k{layer.kernel}"
        )
        timings = {form: time_form(f, x, w, repeats) for form, f in forms(layer).items()}
        torch_times = time_torch(layer, repeats)
        if torch_times is not None:
            timings["pytorch"] = torch_times
        for form, t in timings.items():
            row = {"layer": name, "count": layer.count, "form": form, **t}
            rows.append(row)
            print(
                f"{name:38s} {layer.count:2d} {form:8s} {t['fwd']:7.2f} {t['dx']:7.2f} "
                f"{t['dw']:7.2f}",
                flush=True,
            )
            if out is not None:
                out.write(json.dumps(row) + "\n")
                out.flush()
    return rows


def summary(rows: list[dict]) -> str:
    """Each form's total over the model (times x occurrences), where every layer has it."""
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        kind, rest = row["layer"].split(" s", 1)
        if not kind.startswith("depthwise") and not rest.startswith("1 "):
            kind += f" s{rest.split()[0]}"  # strided dense layers: a form of their own
        key = (kind, row["form"])
        t = totals.setdefault(key, {"fwd": 0.0, "dx": 0.0, "dw": 0.0})
        for part in t:
            t[part] += row[part] * row["count"]
    lines = [f"{'kind':10s} {'form':8s} {'fwd ms':>8s} {'dx ms':>8s} {'dw ms':>8s} {'sum':>8s}"]
    for (kind, form), t in sorted(totals.items()):
        total = sum(t.values())
        lines.append(
            f"{kind:10s} {form:8s} {t['fwd']:8.1f} {t['dx']:8.1f} {t['dw']:8.1f} {total:8.1f}"
        )
    return "\n".join(lines)
