"""The encoder-decoder network around any encoder and decoder: padding, cropping, overlap tile."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import center_crop


def pad_to_multiple(x_BxHxWxC: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int]]:
    """Zero-pad height and width (around the centre) up to a multiple; return the offsets."""
    h, w = x_BxHxWxC.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    top, left = ph // 2, pw // 2
    padded = jnp.pad(x_BxHxWxC, ((0, 0), (top, ph - top), (left, pw - left), (0, 0)))
    return padded, (top, left)


def valid_output_length(length: int, depth: int, convs: int) -> int:
    """The 2015 UNet's output length for an input length (each valid 3x3 conv loses 2)."""
    shrink = 2 * convs
    for _ in range(depth):
        length = (length - shrink) // 2
    length -= shrink
    for _ in range(depth):
        length = 2 * length - shrink
    return length


def valid_input_length(length: int, depth: int, convs: int) -> int:
    """The smallest input length whose valid-padded output covers `length` pixels."""
    need = length
    while valid_output_length(need, depth, convs) < length:
        need += 1
    return need


def mirror_pad(x_BxHxWxC: jax.Array, height: int, width: int) -> jax.Array:
    """Reflect-pad height and width (around the centre) up to height x width."""
    ph, pw = height - x_BxHxWxC.shape[1], width - x_BxHxWxC.shape[2]
    pads = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    return jnp.pad(x_BxHxWxC, pads, mode="reflect")


class EncoderDecoder(nn.Module):
    """An encoder and a decoder with skips. NHWC in, one float32 logit channel out.

    The input is zero-padded to a multiple of the encoder's total stride and the logits cropped
    back, so any input size works. With `overlap_tile` (the `unet-valid` arch: the 2015 paper's
    valid convolutions, whose output is smaller than the input) the input is mirror-padded
    instead, as in the paper's overlap-tile strategy, so that the logits cover the whole input.
    """

    encoder: nn.Module
    decoder: nn.Module
    overlap_tile: bool = False

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, *, train: bool) -> jax.Array:
        h, w = x_BxHxWxC.shape[1:3]
        x = x_BxHxWxC.astype(self.encoder.dtype)
        if self.overlap_tile:
            depth, convs = self.encoder.depth, self.encoder.blocks.convs
            x = mirror_pad(x, *(valid_input_length(n, depth, convs) for n in (h, w)))
            return center_crop(self.decoder(self.encoder(x, train=train), train=train), h, w)
        x, (top, left) = pad_to_multiple(x, self.encoder.stride)
        logits = self.decoder(self.encoder(x, train=train), train=train)
        return logits[:, top : top + h, left : left + w]
