"""U-Net (Ronneberger et al. 2015) in the fastMRI layout, configurable for the five papers.

Each level is two ``kernel_size`` convolutions, each followed by a normalisation and a leaky
ReLU; the encoder halves the resolution with 2x2 average pooling, the decoder doubles it with a
2x2 stride-2 transposed convolution and concatenates the skip connection; a final 1x1 conv maps
to ``out_channels``. Input and output are NHWC float arrays. ``H`` and ``W`` must be divisible
by ``2 ** (len(features) - 1)`` so that skips line up (checked, with a clear error).

Used as recon model 2 in InvSharpNet (paper 000), the zero-filled baseline of IFR-Net
(paper 002), the refinement network and the segmenter of paper 003.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxmri.nn.layers import Conv, avg_pool_2x2

__all__ = ["UNet"]

Norm = Literal["instance", "batch", "none"]


def _normalise(x: jnp.ndarray, norm: Norm, train: bool) -> jnp.ndarray:
    if norm == "instance":
        # Instance norm: statistics over H, W per example and channel (fastMRI's choice).
        return nn.GroupNorm(num_groups=None, group_size=1, use_bias=False, use_scale=False)(x)
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return x


class ConvBlock(nn.Module):
    """Two (conv -> norm -> leaky ReLU) layers; NHWC in, NHWC out with ``features`` channels."""

    features: int
    kernel_size: int = 3
    norm: Norm = "instance"
    negative_slope: float = 0.2
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        for _ in range(2):
            x = Conv(self.features, (self.kernel_size,) * 2, padding="SAME",
                        use_bias=self.norm == "none",
                     conv_general_dilated=self.conv_general_dilated)(x)
            x = _normalise(x, self.norm, train)
            x = nn.leaky_relu(x, self.negative_slope)
        return x


class UNet(nn.Module):
    """U-Net with ``len(features)`` resolution levels.

    Attributes:
      out_channels: channels of the output (2 for a complex image as real/imag).
      features: channels per level from the top, e.g. ``(32, 64, 128, 256)`` (fastMRI uses 32
        doubling over 4 pools).
      kernel_size: square conv kernel size (3 in fastMRI; paper 003 uses 4).
      norm: ``"instance"`` (fastMRI), ``"batch"`` (paper 003) or ``"none"``.
      negative_slope: leaky ReLU slope (0.2 fastMRI, 0.1 paper 003).
    """

    out_channels: int
    features: Sequence[int] = (32, 64, 128, 256)
    kernel_size: int = 3
    norm: Norm = "instance"
    negative_slope: float = 0.2
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """Map ``(N, H, W, C_in)`` to ``(N, H, W, out_channels)``."""
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC with ndim == 4, got shape {x.shape}")
        factor = 2 ** (len(self.features) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"x spatial shape {x.shape[1:3]} must be divisible by {factor} "
                f"for a U-Net with {len(self.features)} levels"
            )
        block = dict(kernel_size=self.kernel_size, norm=self.norm,
                     negative_slope=self.negative_slope)
        skips = []
        for feat in self.features[:-1]:
            x = ConvBlock(feat, **block,
                          conv_general_dilated=self.conv_general_dilated)(x, train=train)
            skips.append(x)
            x = avg_pool_2x2(x)
        x = ConvBlock(self.features[-1], **block,
                      conv_general_dilated=self.conv_general_dilated)(x, train=train)
        for feat, skip in zip(reversed(self.features[:-1]), reversed(skips), strict=True):
            x = nn.ConvTranspose(feat, (2, 2), strides=(2, 2), use_bias=self.norm == "none")(x)
            x = _normalise(x, self.norm, train)
            x = nn.leaky_relu(x, self.negative_slope)
            x = ConvBlock(feat, **block, conv_general_dilated=self.conv_general_dilated)(
                jnp.concatenate([x, skip], axis=-1), train=train)
        return Conv(self.out_channels, (1, 1), conv_general_dilated=self.conv_general_dilated)(x)
