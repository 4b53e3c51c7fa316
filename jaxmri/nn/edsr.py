"""EDSR (Lim et al. 2017), the super-resolution network of paper 001, for NHWC real images.

Baseline layout (``sanghyun-son/EDSR-PyTorch``): a 3x3 head conv to ``features`` channels;
``num_blocks`` residual blocks ``x + res_scale * conv(relu(conv(x)))`` without batch
normalisation; a 3x3 conv and the long skip from the head; the upsampler (for x2 and x3 one 3x3
conv to ``features * r^2`` channels and :func:`~jaxmri.nn.layers_sr.pixel_shuffle`; for x4 two
x2 stages); a 3x3 tail conv to ``out_channels``. The RGB mean shift of natural-image EDSR does not
apply to single-channel MR magnitudes and is left out.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
from jax import lax

from jaxmri._checks import check_ndim
from jaxmri.nn.layers import Conv
from jaxmri.nn.layers_sr import pixel_shuffle

__all__ = ["EDSRResBlock", "EDSR"]


class EDSRResBlock(nn.Module):
    """``x + res_scale * conv3x3(relu(conv3x3(x)))`` (no normalisation)."""

    features: int
    res_scale: float = 1.0
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(Conv(self.features, (3, 3), name="conv0",
                         conv_general_dilated=self.conv_general_dilated)(x))
        h = Conv(self.features, (3, 3), name="conv1",
                 conv_general_dilated=self.conv_general_dilated)(h)
        return x + self.res_scale * h


class EDSR(nn.Module):
    """EDSR: ``(N, H, W, C_in) -> (N, H r, W r, out_channels)``, ``r = scale`` in {1, 2, 3, 4}.

    Attributes: ``num_blocks`` (16 in the baseline), ``features`` (64), ``scale``,
    ``res_scale`` (1.0 in the baseline, 0.1 in the wide model), ``out_channels``.
    """

    num_blocks: int = 16
    features: int = 64
    scale: int = 2
    res_scale: float = 1.0
    out_channels: int = 1
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_ndim(x, "x", ndim=4)
        if self.scale not in (1, 2, 3, 4):
            raise ValueError(f"scale must be 1, 2, 3 or 4, got {self.scale}")
        head = Conv(self.features, (3, 3), name="head",
                    conv_general_dilated=self.conv_general_dilated)(x)
        h = head
        for i in range(self.num_blocks):
            h = EDSRResBlock(self.features, self.res_scale, name=f"block{i}",
                             conv_general_dilated=self.conv_general_dilated)(h)
        h = Conv(self.features, (3, 3), name="body_out",
                 conv_general_dilated=self.conv_general_dilated)(h) + head
        stages = (2, 2) if self.scale == 4 else ((self.scale,) if self.scale > 1 else ())
        for i, r in enumerate(stages):
            h = Conv(self.features * r * r, (3, 3), name=f"upsample{i}",
                     conv_general_dilated=self.conv_general_dilated)(h)
            h = pixel_shuffle(h, r)
        return Conv(self.out_channels, (3, 3), name="tail",
                    conv_general_dilated=self.conv_general_dilated)(h)
