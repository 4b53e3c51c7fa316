"""Residual-in-residual dense blocks (ESRGAN) and spatial feature transform (SFTGAN) layers.

Conventions: NHWC real ``float32`` feature maps. Every block keeps the channel count of its
input (``features``); conditions are NHWC maps with the same ``N, H, W`` as the features.

* :class:`ResidualDenseBlock`: five 3x3 convolutions with dense concatenation (each sees the
  block input and all earlier outputs), ``growth`` channels each, leaky ReLU 0.2 after the first
  four; the fifth maps back to ``features`` and is added with a residual scale:
  ``out = x + beta * conv5(...)`` with ``beta = 0.2`` (Wang et al. 2018, ESRGAN).
* :class:`RRDB`: three dense blocks in sequence and ``out = x + beta * body(x)``.
* :class:`SFTLayer`: two branches (1x1 conv, leaky ReLU 0.1, 1x1 conv) map the condition to a
  per-pixel, per-channel ``scale`` and ``shift``; ``out = x * (scale + 1) + shift`` (the
  PyTorch variant of SFTGAN, Wang et al. 2018, which starts close to the identity).
* :class:`RRDBSFT`: the RRDB of paper 004 (Fig. 2) with an SFT layer in front of each of its
  three dense blocks, all fed the same condition: ``out = x + beta * body(x, cond)``. The paper
  does not say where inside the RRDB the SFT layers sit; in front of every dense block is our
  reading of its figure (one modulation per dense block).

Initialisation follows ESRGAN: Kaiming-normal (fan-in) weights scaled by ``init_scale = 0.1``
and zero biases, which keeps deep stacks of residual blocks close to the identity at start.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmri.nn.layers import Conv

__all__ = ["scaled_kaiming_init", "ResidualDenseBlock", "RRDB", "SFTLayer", "RRDBSFT"]


def scaled_kaiming_init(scale: float = 0.1) -> jax.nn.initializers.Initializer:
    """Kaiming-normal (fan-in, gain sqrt(2)) initialiser multiplied by ``scale`` (ESRGAN)."""
    return jax.nn.initializers.variance_scaling(2.0 * scale**2, "fan_in", "normal")


def _check_features(x: jax.Array, features: int, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be NHWC with ndim == 4, got shape {x.shape}")
    if x.shape[-1] != features:
        raise ValueError(f"{name} must have {features} channels (features), got shape {x.shape}")


class ResidualDenseBlock(nn.Module):
    """Dense block ``out = x + beta * conv5([x, x1, x2, x3, x4])`` (see the module docstring).

    Attributes:
      features: channels of the input and output.
      growth: channels added by each of the first four convolutions.
      beta: residual scale.
      init_scale: multiplier of the Kaiming initialisation.
    """

    features: int = 64
    growth: int = 32
    beta: float = 0.2
    init_scale: float = 0.1
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, features)`` -> same shape."""
        _check_features(x, self.features, "x")
        init = scaled_kaiming_init(self.init_scale)
        parts = [x]
        for i in range(4):
            h = Conv(self.growth, (3, 3), kernel_init=init, name=f"conv{i + 1}",
                     conv_general_dilated=self.conv_general_dilated)(
                jnp.concatenate(parts, axis=-1))
            parts.append(nn.leaky_relu(h, 0.2))
        out = Conv(self.features, (3, 3), kernel_init=init, name="conv5",
                   conv_general_dilated=self.conv_general_dilated)(
            jnp.concatenate(parts, axis=-1))
        return x + self.beta * out


class RRDB(nn.Module):
    """Residual in residual dense block: ``out = x + beta * RDB3(RDB2(RDB1(x)))``."""

    features: int = 64
    growth: int = 32
    beta: float = 0.2
    init_scale: float = 0.1
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, features)`` -> same shape."""
        _check_features(x, self.features, "x")
        out = x
        for i in range(3):
            out = ResidualDenseBlock(self.features, self.growth, self.beta, self.init_scale,
                                     name=f"rdb{i + 1}",
                                     conv_general_dilated=self.conv_general_dilated)(out)
        return x + self.beta * out


class SFTLayer(nn.Module):
    """Spatial feature transform ``x * (scale(cond) + 1) + shift(cond)``.

    Attributes:
      features: channels of ``x`` (and of ``scale`` / ``shift``).
      hidden: channels of the first 1x1 convolution of each branch.
      negative_slope: leaky ReLU slope between the two 1x1 convolutions (0.1 in SFTGAN).
    """

    features: int = 64
    hidden: int = 32
    negative_slope: float = 0.1
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        """``x`` ``(N, H, W, features)``, ``cond`` ``(N, H, W, Cc)`` -> ``(N, H, W, features)``."""
        _check_features(x, self.features, "x")
        if cond.ndim != 4 or cond.shape[:3] != x.shape[:3]:
            raise ValueError(f"cond must be NHWC with the N, H, W of x {x.shape[:3]}, got shape "
                             f"{cond.shape}")

        def branch(name: str) -> jax.Array:
            h = Conv(self.hidden, (1, 1), name=f"{name}_conv0",
                     conv_general_dilated=self.conv_general_dilated)(cond)
            return Conv(self.features, (1, 1), name=f"{name}_conv1",
                        conv_general_dilated=self.conv_general_dilated)(
                nn.leaky_relu(h, self.negative_slope))

        return x * (branch("scale") + 1.0) + branch("shift")


class RRDBSFT(nn.Module):
    """RRDB whose three dense blocks are each preceded by an SFT layer on a shared condition."""

    features: int = 64
    growth: int = 32
    sft_hidden: int = 32
    beta: float = 0.2
    init_scale: float = 0.1
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        """``x`` ``(N, H, W, features)``, ``cond`` ``(N, H, W, Cc)`` -> same shape as ``x``."""
        _check_features(x, self.features, "x")
        out = x
        for i in range(3):
            out = SFTLayer(self.features, self.sft_hidden, name=f"sft{i + 1}",
                           conv_general_dilated=self.conv_general_dilated)(out, cond)
            out = ResidualDenseBlock(self.features, self.growth, self.beta, self.init_scale,
                                     name=f"rdb{i + 1}",
                                     conv_general_dilated=self.conv_general_dilated)(out)
        return x + self.beta * out
