"""Reconstruction networks shared by several papers.

* :class:`DCCascade` - a deep cascade of CNNs with data consistency (Schlemper et al. 2017,
  DC-CNN): ``x <- x + CNN(x); x <- DC(x)`` repeated. It is InvSharpNet's "recon model 1"
  (standing in for PC-RNN, which has no public code), paper 003's RecNet (3 x 3 x 32) and
  paper 002's D5-C5 baseline.
* :class:`UNetRecon` - a U-Net that maps the zero-filled image to the reconstruction
  (residual), InvSharpNet's "recon model 2" and a baseline of papers 002 and 003.

Both take complex images ``(N, H, W)`` complex64 and return complex64 ``(N, H, W)``. Data
consistency uses the measured k-space ``(N, C, H, W)``, the mask (broadcastable to it) and SENSE
maps ``(N, C, H, W)`` (single-coil data: ``C = 1`` with maps of ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
from jax import lax

from jaxmri.nn.layers import Conv, channels_to_complex, complex_to_channels
from jaxmri.nn.unet import UNet
from jaxmri.physics.consistency import image_dc

__all__ = ["DCCascade", "UNetRecon"]


class DCCascade(nn.Module):
    """Cascade of residual CNN blocks, each followed by a data-consistency layer.

    Attributes:
      num_cascades: number of CNN + DC blocks (n_c).
      convs_per_cascade: convolutions per CNN block (n_d), the last one maps back to 2 channels.
      features: channels of the hidden convolutions.
      negative_slope: leaky ReLU slope (0.01 in paper 003's RecNet; 0 gives plain ReLU).
      noise_lambda: ``None`` for hard DC, else the DC-CNN noise level (a fixed float).
    """

    num_cascades: int = 5
    convs_per_cascade: int = 5
    features: int = 64
    negative_slope: float = 0.01
    noise_lambda: float | None = None
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, zero_filled, kspace, mask, maps):
        """Reconstruct ``(N, H, W)`` complex from the zero-filled image and measurements."""
        x = zero_filled
        for _ in range(self.num_cascades):
            h = complex_to_channels(x)
            for _ in range(self.convs_per_cascade - 1):
                h = Conv(self.features, (3, 3), conv_general_dilated=self.conv_general_dilated)(h)
                h = nn.leaky_relu(h, self.negative_slope)
            out = Conv(2, (3, 3), conv_general_dilated=self.conv_general_dilated)(h)
            x = x + channels_to_complex(out)
            x = image_dc(x, kspace, mask, maps=maps, noise_lambda=self.noise_lambda)
        return x


class UNetRecon(nn.Module):
    """U-Net on the zero-filled image, predicting a residual: ``x = x_zf + UNet(x_zf)``.

    No data consistency inside: the network sees only the image, as a plain post-processing
    reconstruction does. Attributes follow :class:`jaxmri.nn.unet.UNet`.
    """

    features: Sequence[int] = (32, 64, 128, 256)
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, zero_filled, kspace=None, mask=None, maps=None):
        """Reconstruct ``(N, H, W)`` complex from the zero-filled image (k-space unused)."""
        del kspace, mask, maps  # same call signature as DCCascade, no DC by design
        residual = UNet(out_channels=2, features=tuple(self.features),
                        conv_general_dilated=self.conv_general_dilated)(
            complex_to_channels(zero_filled))
        return zero_filled + channels_to_complex(residual)
