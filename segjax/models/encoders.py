"""Encoders: an image in, its features at strides 1, 2, 4, ... out (None where an encoder has none).

`ScratchEncoder` is the UNet's own contracting path, here with the BatchNorm that the pretrained
encoders share; `EfficientNetLite` and `EfficientNet` live in `segjax.models.efficientnet`,
`ResNet` in `segjax.models.resnet`, ConvNeXt in `segjax.models.convnext`: each follows the
ImageNet classifier whose weights `segjax.models.pretrained` loads.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import (
    BlockOptions,
    ConvBlock,
    max_pool_2x2,
    param_dtype,
)


class ScratchEncoder(nn.Module):
    """The UNet contracting path: a conv block per level, 2x2 max pooling in between.

    Returns depth + 1 features at strides 1 .. 2^depth (the last is the bottleneck).
    """

    blocks: BlockOptions = BlockOptions()
    depth: int = 4

    @property
    def stride(self) -> int:
        return 2**self.depth

    @property
    def dtype(self):
        """The compute dtype, as the pretrained encoders have it."""
        return self.blocks.dtype

    def block(self, level: int, name: str) -> ConvBlock:
        """The conv block of `level` (depth = bottleneck)."""
        return ConvBlock(self.blocks.at_level(level, self.depth), name=name)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array | None]:
        skips = []
        for level in range(self.depth):
            x = self.block(level, f"down{level}")(x, train=train)
            skips.append(x)
            x = max_pool_2x2(x)
        return [*skips, self.block(self.depth, "bottleneck")(x, train=train)]


def batch_norm(train: bool, frozen: bool, momentum: float, epsilon: float, dtype, name: str):
    """BatchNorm of a pretrained network: its own momentum and epsilon; `frozen` keeps the
    ImageNet statistics while training (`--encoder-bn frozen`)."""
    return nn.BatchNorm(
        use_running_average=not train or frozen,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype(dtype),
        force_float32_reductions=dtype != jnp.float64,  # float64 checks keep float64 statistics
        name=name,
    )
