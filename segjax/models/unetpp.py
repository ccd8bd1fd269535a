"""UNet++ (Zhou et al. 2018): nested dense skips, optional deep supervision."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import UPSAMPLERS, ConvBlock, level_block, max_pool_2x2, param_dtype
from segjax.models.unet import pad_to_multiple


class UNetPlusPlus(nn.Module):
    """Node X[i][j] (level i, column j) sees X[i][0..j-1] and the upsampled X[i+1][j-1].

    Deep supervision averages the logits of the heads on X[0][1..depth] (in training and
    evaluation); without it the single head sits on X[0][depth].
    """

    features: int = 32
    depth: int = 4
    batch_norm: bool = True
    dropout: float = 0.0
    dropout_deep_only: bool = False
    convs: int = 2
    activation: str = "relu"
    upsample: str = "transpose"
    residual: bool = False
    deep_supervision: bool = False
    dtype: jnp.dtype = jnp.float32

    def block(self, level: int, name: str) -> ConvBlock:
        return level_block(self, level, "SAME", name)

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, *, train: bool) -> jax.Array:
        h, w = x_BxHxWxC.shape[1:3]
        x, (top, left) = pad_to_multiple(x_BxHxWxC.astype(self.dtype), 2**self.depth)
        nodes: list[list[jax.Array]] = []
        for i in range(self.depth + 1):
            if i > 0:
                x = max_pool_2x2(nodes[i - 1][0])
            nodes.append([self.block(i, f"x{i}_0")(x, train=train)])
        # Fill the columns left to right: X[i][j] needs X[i+1][j-1] from the previous column.
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                up = UPSAMPLERS[self.upsample](self.features * 2**i, self.dtype, name=f"up{i}_{j}")(
                    nodes[i + 1][j - 1]
                )
                inputs = jnp.concatenate([*nodes[i][:j], up], axis=-1)
                nodes[i].append(self.block(i, f"x{i}_{j}")(inputs, train=train))
        head = lambda j: nn.Conv(
            1,
            (1, 1),
            dtype=param_dtype(self.dtype),
            param_dtype=param_dtype(self.dtype),
            name=f"head{j}",
        )(nodes[0][j])
        if self.deep_supervision:
            logits = jnp.mean(jnp.stack([head(j) for j in range(1, self.depth + 1)]), axis=0)
        else:
            logits = head(self.depth)
        return logits[:, top : top + h, left : left + w]
