"""VGG-style image discriminator (SRGAN / ESRGAN "VGG128"), one logit per image.

Stages of two convolutions, ``3x3`` stride 1 then ``4x4`` stride 2, each followed by a leaky
ReLU 0.2, with the channel count of each stage given by ``features`` (the spatial size halves per
stage); then global average pooling (so any input size works, where ESRGAN flattens a fixed
128x128 map), a dense layer of ``hidden`` units, leaky ReLU and a dense layer to one logit.

Deviation from ESRGAN: no batch normalisation (it would need batch statistics in the train
state and couples the examples of a batch; the GAN loss here is the plain BCE of paper 004's
eqs. 10-11). Input NHWC real ``(N, H, W, C)``; output logits ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmri.nn.layers import Conv

__all__ = ["VGGDiscriminator"]


class VGGDiscriminator(nn.Module):
    """Conv stages (3x3 s1, 4x4 s2), global average pool, dense, dense -> logits ``(N,)``.

    Attributes:
      features: channels of each stage.
      hidden: units of the hidden dense layer.
      negative_slope: leaky ReLU slope.
    """

    features: Sequence[int] = (64, 128, 256, 512, 512)
    hidden: int = 100
    negative_slope: float = 0.2
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, C)`` real -> logits ``(N,)``."""
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC with ndim == 4, got shape {x.shape}")
        h = x
        for i, f in enumerate(self.features):
            h = nn.leaky_relu(Conv(f, (3, 3), name=f"conv{i}_0",
                                   conv_general_dilated=self.conv_general_dilated)(h),
                              self.negative_slope)
            h = nn.leaky_relu(Conv(f, (4, 4), strides=(2, 2), name=f"conv{i}_1",
                                   conv_general_dilated=self.conv_general_dilated)(h),
                              self.negative_slope)
        h = jnp.mean(h, axis=(1, 2))
        h = nn.leaky_relu(nn.Dense(self.hidden, name="dense0")(h), self.negative_slope)
        return nn.Dense(1, name="dense1")(h)[:, 0]
