"""Strided dense convolutions on the CPU: the native forward and kernel gradient, the input
gradient by phases (`convolutions.phase_input_grad`) instead of XLA's dilated form; given to
`nn.Conv(conv_general_dilated=...)` by ResNet and ConvNeXt. Checked against
`jax.lax.conv_general_dilated` in float64 (tests/test_pretrained.py)."""

from __future__ import annotations

import functools

import jax

from segjax.models.convolutions import in_portable, phase_input_grad

NHWC = ("NHWC", "HWIO", "NHWC")
# Measured per layer at 192x128, batch 8 (docs/results.md, "Every convolution alone"): by phases
# a strided layer's input gradient took 0.6x (ResNet's 1x1 shortcuts), 0.75x (ConvNeXt's 2x2
# downsampling) and 0.96x (ResNet's 3x3) of XLA:CPU's, but 3-4x on a 3-channel image (a stem,
# whose input gradient training never needs): each phase is a convolution to that few channels.
PHASES_MIN_CHANNELS = 16


def dense_native(x_BxHxWxC, kernel_KxKxCxO, strides, pads, precision=None):
    return jax.lax.conv_general_dilated(
        x_BxHxWxC, kernel_KxKxCxO, strides, pads, dimension_numbers=NHWC, precision=precision
    )


def strided_input_grad(g_BxHoxWoxO, kernel_KxKxCxO, strides, pads, shape, precision=None):
    """A dense convolution's input gradient by phases (each a dense stride-1 convolution with
    the phase's taps, input and output channels swapped)."""

    def conv(g, taps):
        return dense_native(g, taps.transpose(0, 1, 3, 2), (1, 1), "VALID", precision)

    return phase_input_grad(g_BxHoxWoxO, kernel_KxKxCxO, strides, pads, shape, conv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def strided_cpu(x, kernel, strides, pads, precision=None):
    """The native strided convolution and kernel gradient; the input gradient by phases."""
    return dense_native(x, kernel, strides, pads, precision)


def _strided_cpu_fwd(x, kernel, strides, pads, precision):
    return dense_native(x, kernel, strides, pads, precision), (x, kernel)


def _strided_cpu_bwd(strides, pads, precision, saved, g):
    x, kernel = saved
    dx = strided_input_grad(g, kernel, strides, pads, x.shape, precision)
    _, pullback = jax.vjp(lambda w: dense_native(x, w, strides, pads, precision), kernel)
    return dx.astype(x.dtype), pullback(g)[0]


strided_cpu.defvjp(_strided_cpu_fwd, _strided_cpu_bwd)


def conv_general(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
    """`jax.lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`: a strided NHWC
    convolution of at least PHASES_MIN_CHANNELS input channels takes `strided_cpu` on CPU (its
    input gradient by phases), chosen when lowering; everything else, and every convolution
    inside `portable()`, the native form."""
    native = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        **kwargs,
    )
    ones = (1,) * (lhs.ndim - 2)
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    plain = (
        lhs.ndim == 4
        and tuple(window_strides) != ones
        and lhs.shape[-1] >= PHASES_MIN_CHANNELS
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == 1
        and not kwargs
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )
    if in_portable() or not plain:
        return native(lhs, rhs)
    strides = tuple(window_strides)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple(tuple(p) for p in padding)
    cpu = functools.partial(strided_cpu, strides=strides, pads=pads, precision=precision)
    return jax.lax.platform_dependent(lhs, rhs, cpu=cpu, default=native)
