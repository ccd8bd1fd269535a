"""Depthwise and grouped convolutions in the form each platform runs fastest: XLA's native
grouped convolution, or on the CPU the shifted taps (the kernel applied tap by tap) with custom
gradients; the input gradient of a convolution by phases (shared with `models.strided`);
`portable()` selects the native forms for exporters. Each form is checked against the native
gradients in float64 (tests/test_pretrained.py)."""

from __future__ import annotations

import contextlib
import contextvars
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import param_dtype


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one axis (the extra pixel goes after), as flax "SAME"."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_pads(
    x_BxHxWxC: jax.Array, kernel: int, stride: int, padding: str
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(before, after) padding of the two spatial axes: TensorFlow's "SAME" (the extra pixel
    after, as EfficientNet-Lite's reference) or "SYMMETRIC" (kernel // 2 on both sides, as
    PyTorch's timm and torchvision models)."""
    _, h, w, _ = x_BxHxWxC.shape
    if padding == "SYMMETRIC":
        return ((kernel // 2, kernel // 2),) * 2
    return tf_same_padding(h, kernel, stride), tf_same_padding(w, kernel, stride)


def depthwise_native(
    x_BxHxWxC: jax.Array, kernel_KxKx1xC: jax.Array, stride: int, padding: str = "SAME"
):
    return jax.lax.conv_general_dilated(
        x_BxHxWxC,
        kernel_KxKx1xC,
        (stride, stride),
        depthwise_pads(x_BxHxWxC, kernel_KxKx1xC.shape[0], stride, padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x_BxHxWxC.shape[-1],
    )


def shifted_taps(x_BxHxWxC: jax.Array, k: int | tuple[int, int], stride: int, pads):
    """(i, j, the strided window of the padded input under kernel tap (i, j)) for the taps of
    a k x k (or kh x kw) convolution: summing tap-wise products gives the convolution."""
    kh, kw = (k, k) if isinstance(k, int) else k
    x = jnp.pad(x_BxHxWxC, ((0, 0), *pads, (0, 0)))
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    for i in range(kh):
        for j in range(kw):
            yield (
                i,
                j,
                x[
                    :,
                    i : i + stride * (oh - 1) + 1 : stride,
                    j : j + stride * (ow - 1) + 1 : stride,
                ],
            )


def shifted_sum(x_BxHxWxC: jax.Array, kernel_KxKx1xC: jax.Array, stride: int, pads):
    """The depthwise convolution as the sum of the kernel's shifted, per-channel-scaled copies
    of the input (explicit (before, after) pads; any kh x kw kernel)."""
    terms = (
        tap * kernel_KxKx1xC[i, j][None, None]  # [1, 1, 1, C]: per channel
        for i, j, tap in shifted_taps(x_BxHxWxC, kernel_KxKx1xC.shape[:2], stride, pads)
    )
    return functools.reduce(jnp.add, terms)


def phase_input_grad(g_BxHoxWoxO, kernel_KxKxIxO, strides, pads, shape, conv):
    """The input gradient of a convolution as stride * stride stride-1 convolutions of the
    output gradient, one per phase of the input (the positions i with (i + pad) % stride
    equal), each with the kernel's taps of that phase, flipped; interleaved and cropped.
    `conv(g, taps)` is the stride-1 "VALID" convolution of the form at hand (dense or
    depthwise). XLA writes a strided convolution's input gradient with the output gradient
    dilated (`lhs_dilation`): stride^2 times the multiplications, on XLA:CPU's slower path."""
    n, size, cin = shape[0], shape[1:3], shape[-1]
    k = kernel_KxKxIxO.shape[:2]
    padded = [size[d] + pads[d][0] + pads[d][1] for d in range(2)]
    phases = [-(-padded[d] // strides[d]) for d in range(2)]  # positions of one phase
    out = g_BxHoxWoxO.shape[1:3]
    zero = jnp.zeros((), g_BxHoxWoxO.dtype)
    rows = []
    for a in range(strides[0]):
        row = []
        for b in range(strides[1]):
            taps = (len(range(a, k[0], strides[0])), len(range(b, k[1], strides[1])))
            if not all(taps):  # no tap of the kernel reaches this phase
                row.append(jnp.zeros((n, *phases, cin), g_BxHoxWoxO.dtype))
                continue
            sub = kernel_KxKxIxO[a :: strides[0], b :: strides[1]][::-1, ::-1]
            widths = [(taps[d] - 1, phases[d] - out[d], 0) for d in range(2)]
            row.append(conv(jax.lax.pad(g_BxHoxWoxO, zero, ((0, 0, 0), *widths, (0, 0, 0))), sub))
        rows.append(jnp.stack(row, axis=3))  # B, P, Q, stride (b), C
    whole = jnp.stack(rows, axis=2)  # B, P, stride (a), Q, stride (b), C
    whole = whole.reshape(n, phases[0] * strides[0], phases[1] * strides[1], cin)
    return whole[:, pads[0][0] : pads[0][0] + size[0], pads[1][0] : pads[1][0] + size[1]]


def depthwise_shifted(
    x_BxHxWxC: jax.Array, kernel_KxKx1xC: jax.Array, stride: int, padding: str = "SAME"
):
    """The sum of k*k shifted, per-channel-scaled copies of the input."""
    pads = depthwise_pads(x_BxHxWxC, kernel_KxKx1xC.shape[0], stride, padding)
    return shifted_sum(x_BxHxWxC, kernel_KxKx1xC, stride, pads)


def depthwise_weight_grad(
    x_BxHxWxC: jax.Array, g_BxHoxWoxC: jax.Array, k: int, stride: int, pads
) -> jax.Array:
    """The depthwise kernel's gradient [k, k, 1, C]: for each tap, the sum over the batch and
    the output pixels of the shifted input times the output's gradient. One image at a time
    (a loop over the batch), so that the k*k reductions read an image that stays in cache:
    summed over the whole batch at once, each tap re-read both tensors from memory."""
    x = jnp.pad(x_BxHxWxC, ((0, 0), *pads, (0, 0)))
    b, oh, ow, c = g_BxHoxWoxC.shape

    def image(n, total):
        xn = jax.lax.dynamic_index_in_dim(x, n, keepdims=False)
        gn = jax.lax.dynamic_index_in_dim(g_BxHoxWoxC, n, keepdims=False)
        taps = [
            jnp.sum(
                xn[i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]
                * gn,
                axis=(0, 1),
            )
            for i in range(k)
            for j in range(k)
        ]
        return total + jnp.stack(taps)

    total = jax.lax.fori_loop(0, b, image, jnp.zeros((k * k, c), g_BxHoxWoxC.dtype))
    return total.reshape(k, k, 1, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_cpu(x_BxHxWxC: jax.Array, kernel_KxKx1xC: jax.Array, stride: int, padding: str):
    """The shifted form; its input gradient by phases (`phase_input_grad`: shifted sums of the
    output gradient with the flipped kernel), its kernel gradient image by image."""
    return depthwise_shifted(x_BxHxWxC, kernel_KxKx1xC, stride, padding)


def _depthwise_cpu_fwd(x, kernel, stride, padding):
    return depthwise_shifted(x, kernel, stride, padding), (x, kernel)


def _depthwise_cpu_bwd(stride, padding, saved, g):
    x, kernel = saved
    k = kernel.shape[0]
    pads = depthwise_pads(x, k, stride, padding)
    flat = ((0, 0), (0, 0))
    dx = phase_input_grad(
        g, kernel, (stride, stride), pads, x.shape, lambda g, sub: shifted_sum(g, sub, 1, flat)
    )
    return dx.astype(x.dtype), depthwise_weight_grad(x, g, k, stride, pads).astype(kernel.dtype)


depthwise_cpu.defvjp(_depthwise_cpu_fwd, _depthwise_cpu_bwd)


# Inside `portable()`: the native grouped convolutions only, no per-platform choice (which
# `jax.lax.platform_dependent` makes when lowering): what a converter to another runtime, such
# as ONNX, can follow.
_PORTABLE = contextvars.ContextVar("segjax_portable_forms", default=False)


@contextlib.contextmanager
def portable():
    """Within: models trace to one form for every platform (the native grouped convolution)."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def in_portable() -> bool:
    """Whether models trace to the native forms only (inside `portable()`)."""
    return _PORTABLE.get()


def depthwise_conv(
    x_BxHxWxC: jax.Array, kernel_KxKx1xC: jax.Array, stride: int, padding: str = "SAME"
) -> jax.Array:
    """Depthwise convolution ("SAME" or "SYMMETRIC" padding), in the form each platform runs
    fastest.

    On CPU, a sum of k*k shifted, per-channel-scaled copies of the input: XLA:CPU's grouped
    convolution is 25-50x slower than this form (PERF notes in the README). Elsewhere, the
    native grouped convolution. Chosen when lowering (`jax.lax.platform_dependent`), so an
    exported model carries both. The two agree to float rounding (tested).
    """
    native = functools.partial(depthwise_native, stride=stride, padding=padding)
    if in_portable():
        return native(x_BxHxWxC, kernel_KxKx1xC)
    shifted = functools.partial(depthwise_cpu, stride=stride, padding=padding)
    return jax.lax.platform_dependent(x_BxHxWxC, kernel_KxKx1xC, cpu=shifted, default=native)


class DepthwiseConv(nn.Module):
    """A k x k depthwise convolution; kernel [k, k, 1, C] as `nn.Conv` groups; a bias if
    `use_bias`; `padding` "SAME" (TensorFlow's) or "SYMMETRIC" (PyTorch's k // 2)."""

    kernel_size: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32
    padding: str = "SAME"
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, 1, x.shape[-1])
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        kernel = self.param("kernel", init, shape, param_dtype(self.dtype))
        y = depthwise_conv(
            x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding
        )
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.zeros, (x.shape[-1],), param_dtype(self.dtype)
            )
            y = y + bias.astype(self.dtype).reshape(1, 1, 1, -1)
        return y


def grouped_native(x_BxHxWxC: jax.Array, kernel_KxKxCgxO: jax.Array, stride: int, groups: int):
    k = kernel_KxKxCgxO.shape[0]
    return jax.lax.conv_general_dilated(
        x_BxHxWxC,
        kernel_KxKxCgxO,
        (stride, stride),
        ((k // 2, k // 2),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def grouped_shifted(x_BxHxWxC: jax.Array, kernel_KxKxCgxO: jax.Array, stride: int, groups: int):
    """The sum over the k*k taps of a shifted input times each group's [Cg, O/G] matrix (one
    batched matmul per tap; symmetric padding k // 2)."""
    k, _, cg, out = kernel_KxKxCgxO.shape
    # [k, k, Cg, G * Og] (output channels group-major, as nn.Conv's groups) -> [k, k, G, Cg, Og]
    kernel = kernel_KxKxCgxO.reshape(k, k, cg, groups, out // groups).transpose(0, 1, 3, 2, 4)
    terms = (
        jnp.einsum("bhwgc,gco->bhwgo", tap.reshape(*tap.shape[:3], groups, cg), kernel[i, j])
        for i, j, tap in shifted_taps(x_BxHxWxC, k, stride, ((k // 2, k // 2),) * 2)
    )
    total = functools.reduce(jnp.add, terms)
    return total.reshape(*total.shape[:3], out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def grouped_cpu(x_BxHxWxC: jax.Array, kernel_KxKxCgxO: jax.Array, stride: int, groups: int):
    """The native grouped convolution forward (fast enough on XLA:CPU), the shifted form's
    gradients (XLA:CPU's grouped-convolution gradients are its slow path)."""
    return grouped_native(x_BxHxWxC, kernel_KxKxCgxO, stride, groups)


def _grouped_cpu_fwd(x, kernel, stride, groups):
    return grouped_native(x, kernel, stride, groups), (x, kernel)


def _grouped_cpu_bwd(stride, groups, saved, g):
    _, pullback = jax.vjp(lambda x, w: grouped_shifted(x, w, stride, groups), *saved)
    return pullback(g)


grouped_cpu.defvjp(_grouped_cpu_fwd, _grouped_cpu_bwd)


def grouped_conv(
    x_BxHxWxC: jax.Array, kernel_KxKxCgxO: jax.Array, stride: int, groups: int
) -> jax.Array:
    """A k x k grouped convolution (ResNeXt's), symmetric padding: on CPU the native forward
    with the gradients of shifted per-group matmuls (with XLA:CPU's own gradients a train step
    of ResNeXt-50's UNet at 192x128, batch 8, took 47 s, against 2 s for ResNet-50's), elsewhere
    the native grouped convolution."""
    cpu = functools.partial(grouped_cpu, stride=stride, groups=groups)
    native = functools.partial(grouped_native, stride=stride, groups=groups)
    if in_portable():
        return native(x_BxHxWxC, kernel_KxKxCgxO)
    return jax.lax.platform_dependent(x_BxHxWxC, kernel_KxKxCgxO, cpu=cpu, default=native)


class GroupedConv(nn.Module):
    """`nn.Conv(features, (k, k), strides, padding=k // 2, feature_group_count=groups,
    use_bias=False)`: the same kernel [k, k, C / groups, features], run by `grouped_conv`."""

    features: int
    kernel_size: int
    strides: int = 1
    groups: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1] // self.groups, self.features)
        init = nn.initializers.lecun_normal()
        kernel = self.param("kernel", init, shape, param_dtype(self.dtype))
        return grouped_conv(
            x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.groups
        )
