"""Reconstruction networks shared by several papers.

* :class:`DCCascade` - a deep cascade of CNNs with data consistency (Schlemper et al. 2017,
  DC-CNN): ``x <- x + CNN(x); x <- DC(x)`` repeated. It is InvSharpNet's "recon model 1"
  (standing in for PC-RNN, which has no public code), paper 003's RecNet (3 x 3 x 32) and
  paper 002's D5-C5 baseline.
* :class:`UNetRecon` - a U-Net that maps the zero-filled image to the reconstruction
  (residual), InvSharpNet's "recon model 2" and a baseline of papers 002 and 003.
* :class:`MoDL` - model-based deep learning (Aggarwal et al. 2019): one residual CNN denoiser
  ``D`` shared by ``K`` iterations ``x <- (A^H A + lam I)^{-1} (A^H b + lam D(x))``, the data
  consistency solved by conjugate gradient; paper 004's MoDL baseline.

All three take complex images ``(N, H, W)`` complex64 and return complex64 ``(N, H, W)``. Data
consistency uses the measured k-space ``(N, C, H, W)``, the mask (broadcastable to it) and SENSE
maps ``(N, C, H, W)`` (single-coil data: ``C = 1`` with maps of ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmri.nn.layers import Conv, channels_to_complex, complex_to_channels
from jaxmri.nn.unet import UNet
from jaxmri.physics.consistency import image_dc
from jaxmri.physics.sense import conjugate_gradient, sense_normal

__all__ = ["DCCascade", "UNetRecon", "MoDL"]


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


class ResidualDenoiser(nn.Module):
    """``D(x) = x + conv(relu(conv(... x)))`` on a complex image ``(N, H, W)`` complex64.

    ``num_convs`` 3x3 convolutions (the last maps back to 2 channels and starts at zero, so
    ``D`` starts as the identity).
    """

    num_convs: int = 5
    features: int = 64
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x):
        h = complex_to_channels(x)
        for _ in range(self.num_convs - 1):
            h = nn.relu(Conv(self.features, (3, 3),
                             conv_general_dilated=self.conv_general_dilated)(h))
        out = Conv(2, (3, 3), kernel_init=nn.initializers.zeros,
                   conv_general_dilated=self.conv_general_dilated)(h)
        return x + channels_to_complex(out)


class MoDL(nn.Module):
    """MoDL: ``x_0 = A^H b``, ``x_{k+1} = (A^H A + lam I)^{-1} (A^H b + lam D(x_k))``.

    ``A = M F S`` (SENSE), ``D`` one :class:`ResidualDenoiser` whose weights all
    ``num_iterations`` iterations share, ``lam = exp(log_lam) > 0`` trainable (initial
    ``lam_init``). Each data-consistency step is its own CG solve per slice
    (:func:`jaxmri.physics.sense.conjugate_gradient`, ``cg_iters`` iterations from zero;
    gradients by the implicit solve, not by unrolling). With ``D`` at its identity start one
    iteration is Tikhonov-regularised SENSE pulled towards ``A^H b``.

    Attributes:
      num_iterations: ``K``; convs, features: the denoiser; lam_init: initial ``lam``;
      cg_iters, cg_tol: each CG solve's iteration cap and relative-residual tolerance.
    """

    num_iterations: int = 10
    convs: int = 5
    features: int = 64
    lam_init: float = 0.05
    cg_iters: int = 10
    cg_tol: float = 1e-6
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, zero_filled, kspace, mask, maps):
        """``zero_filled = A^H b`` ``(N, H, W)``, ``kspace`` ``(N, C, H, W)``, ``mask``
        broadcastable to it per slice (``(N, 1, H, W)``), ``maps`` ``(N, C, H, W)``; returns
        ``(N, H, W)`` complex64."""
        del kspace  # A^H b is the zero-filled image; the solve needs only A^H A
        if self.num_iterations < 1 or self.cg_iters < 1:
            raise ValueError(f"num_iterations and cg_iters must be >= 1, got "
                             f"{self.num_iterations} and {self.cg_iters}")
        denoiser = ResidualDenoiser(self.convs, self.features,
                                    conv_general_dilated=self.conv_general_dilated)
        log_lam = self.param("log_lam", lambda key: jnp.log(jnp.float32(self.lam_init)))
        lam = jnp.exp(log_lam)
        mask = jnp.broadcast_to(mask, (maps.shape[0], 1, *maps.shape[-2:])).astype(jnp.float32)

        def solve(rhs, m, s):
            def normal(x):
                return sense_normal(x, s, m) + lam * x
            return conjugate_gradient(normal, rhs, tol=self.cg_tol,
                                      max_iter=self.cg_iters).image

        x = zero_filled
        for _ in range(self.num_iterations):
            x = jax.vmap(solve)(zero_filled + lam * denoiser(x), mask, maps)
        return x
