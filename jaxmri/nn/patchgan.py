"""PatchGAN discriminator (Isola et al. 2017) with feature taps and channel-wise dropout.

A stack of ``k x k`` convolutions with the given strides, each followed by a normalisation
(skipped after the first layer, as in pix2pix) and a leaky ReLU, then a final ``k x k`` stride-1
convolution to one logit per patch. The outputs of the hidden layers are returned as well, for
the feature-matching loss of Salimans et al. (2016).

Paper 003 (Seitzer et al. 2018) uses 64-128-256-512-1024-1024 filters of 4x4 with strides
2-2-2-2-2-1, batch norm from the second layer on, leaky ReLU 0.2, channel-wise dropout (p = 0.5)
after the last three layers and N(0, 0.02) initialisation (those are the defaults below); paper
004 reuses the module with its own widths.

Conventions: input NHWC real ``(N, H, W, C)`` (a magnitude image is ``C = 1``); output logits
``(N, h, w, 1)`` where ``h = ceil(H / prod(strides))`` (zero "SAME" padding); features are the
hidden-layer outputs as passed on to the next layer (after dropout, which is what the next layer
sees). Dropout and batch statistics are active only with ``train=True``; dropout then needs a
``'dropout'`` rng. Channel-wise dropout (PyTorch ``Dropout2d``) zeroes whole feature maps: the
mask is shared over ``H`` and ``W``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxmri.nn.layers import Conv

__all__ = ["PatchGAN", "gan_normal_init"]

Norm = Literal["batch", "instance", "none"]


def gan_normal_init(stddev: float = 0.02):
    """DCGAN / pix2pix initialiser: weights drawn from ``N(0, stddev^2)``."""
    return nn.initializers.normal(stddev)


def _bn_scale_init(key, shape, dtype=jnp.float32):
    # pix2pix draws batch-norm scales from N(1, 0.02) rather than setting them to 1.
    return 1.0 + 0.02 * nn.initializers.normal(1.0)(key, shape, dtype)


class PatchGAN(nn.Module):
    """Convolutional patch discriminator returning ``(logits, features)``.

    Attributes:
      features: channels of the hidden convolutions, one entry per layer.
      strides: stride of each hidden convolution (same length as ``features``).
      kernel_size: side of every convolution kernel, the final one included.
      negative_slope: leaky ReLU slope.
      norm: ``"batch"``, ``"instance"`` or ``"none"``; never applied after the first layer.
      dropout_after: indices of hidden layers followed by channel-wise dropout.
      dropout_rate: probability of dropping a whole channel.
      init_stddev: standard deviation of the ``N(0, s^2)`` weight initialisation.
    """

    features: Sequence[int] = (64, 128, 256, 512, 1024, 1024)
    strides: Sequence[int] = (2, 2, 2, 2, 2, 1)
    kernel_size: int = 4
    negative_slope: float = 0.2
    norm: Norm = "batch"
    dropout_after: Sequence[int] = (3, 4, 5)
    dropout_rate: float = 0.5
    init_stddev: float = 0.02
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False
                 ) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
        """Map NHWC ``x`` to ``(logits (N, h, w, 1), [hidden layer outputs])``."""
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC with ndim == 4, got shape {x.shape}")
        if len(self.features) != len(self.strides):
            raise ValueError(f"features and strides must have the same length, got "
                             f"{len(self.features)} and {len(self.strides)}")
        if self.norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {self.norm!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        init = gan_normal_init(self.init_stddev)
        k = (self.kernel_size, self.kernel_size)
        taps = []
        for i, (width, stride) in enumerate(zip(self.features, self.strides, strict=True)):
            normalised = i > 0 and self.norm != "none"
            x = Conv(width, k, strides=(stride, stride), padding="SAME",
                        use_bias=not normalised, kernel_init=init,
                     conv_general_dilated=self.conv_general_dilated)(x)
            if normalised and self.norm == "batch":
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                 scale_init=_bn_scale_init)(x)
            elif normalised:
                x = nn.GroupNorm(num_groups=None, group_size=1)(x)
            x = nn.leaky_relu(x, self.negative_slope)
            if i in self.dropout_after and self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                               deterministic=not train)(x)
            taps.append(x)
        logits = Conv(1, k, padding="SAME", kernel_init=init,
                      conv_general_dilated=self.conv_general_dilated)(x)
        return logits, taps
