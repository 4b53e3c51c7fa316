"""Flax linen building blocks shared by the five papers (NHWC real arrays).

* :mod:`~jaxmri.nn.layers`: complex images <-> real/imag channels; 2x2 pooling and ``Conv``
  (Flax's ``Conv``; the convolution implementation is a value). Every network here has a
  ``conv_general_dilated`` field (default ``lax.conv_general_dilated``) that it passes to all of
  its convolutions; :data:`jaxmri.cpu.conv_general_dilated` is the XLA:CPU one.
* :mod:`~jaxmri.nn.unet`: the U-Net used as a reconstruction, refinement and segmentation net.
* :mod:`~jaxmri.nn.spectral`: spectral-normalised convolution (power iteration on the conv
  operator itself) and a long power iteration to measure any linear map's norm.
* :mod:`~jaxmri.nn.fixed_point`: fixed-point solves and inversion of ``y = x + g(x)`` with the
  gradient method as a value (:class:`Implicit` custom_vjp, :class:`Unrolled` autodiff or
  :class:`JacobianFree` one-step backprop).
* :mod:`~jaxmri.nn.invertible`: invertible residual blocks and sequences (iResNet).

Imported from their submodules:

* :mod:`~jaxmri.nn.plf` (piecewise-linear S_PLF) and :mod:`~jaxmri.nn.dct` (DCT filter init),
  papers 002;
* :mod:`~jaxmri.nn.patchgan` (PatchGAN discriminator), paper 003;
* :mod:`~jaxmri.nn.edsr` and :mod:`~jaxmri.nn.layers_sr` (EDSR, pixel shuffle), paper 001;
* :mod:`~jaxmri.nn.rrdb` (RRDB, SFT) and :mod:`~jaxmri.nn.vgg_discriminator`, paper 004 (its
  deep equilibrium solve is :func:`~jaxmri.nn.fixed_point.fixed_point` in
  :class:`~jaxmri.nn.fixed_point.JacobianFree` mode).
"""

from jaxmri.nn.fixed_point import (FixedPointInfo, Implicit, JacobianFree, Unrolled, fixed_point,
                                   invert_residual)
from jaxmri.nn.invertible import InvertibleResidualBlock, InvertibleSequence, ResidualBranch
from jaxmri.nn.layers import channels_to_complex, complex_to_channels
from jaxmri.nn.spectral import SpectralNormConv, operator_norm
from jaxmri.nn.unet import UNet

__all__ = [
    "FixedPointInfo", "Implicit", "JacobianFree", "Unrolled", "fixed_point", "invert_residual",
    "InvertibleResidualBlock", "InvertibleSequence", "ResidualBranch",
    "channels_to_complex", "complex_to_channels",
    "SpectralNormConv", "operator_norm",
    "UNet",
]
