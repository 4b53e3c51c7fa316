"""Small layers and conversions shared by every network in jaxmri.

Networks see NHWC real arrays. A complex image ``(N, H, W)`` becomes two channels
``(N, H, W, 2)`` = (real, imag); a stack of ``k`` complex images ``(N, k, H, W)`` becomes
``2k`` channels ordered (re_0, im_0, re_1, im_1, ...). The two conversions are exact inverses.

:class:`Conv` is Flax's convolution with the implementation as a value (plain
``lax.conv_general_dilated`` by default); the XLA:CPU implementation lives in :mod:`jaxmri.cpu`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmri._checks import check_complex, check_ndim

__all__ = [
    "complex_to_channels", "channels_to_complex", "max_pool_2x2", "avg_pool_2x2", "Conv",
    "bias_adder",
]


def complex_to_channels(x: jnp.ndarray) -> jnp.ndarray:
    """Complex images to real NHWC channels.

    Args:
      x: complex array ``(N, H, W)`` (one image per example) or ``(N, k, H, W)`` (``k`` images
        per example).

    Returns:
      float32 array ``(N, H, W, 2)`` or ``(N, H, W, 2k)``, channels (re_0, im_0, re_1, ...).
    """
    check_complex(x, "x")
    check_ndim(x, "x", min_ndim=3)
    if x.ndim == 3:
        x = x[:, None]
    check_ndim(x, "x", ndim=4)
    stacked = jnp.stack([x.real, x.imag], axis=2)  # (N, k, 2, H, W)
    n, k, _, h, w = stacked.shape
    return jnp.transpose(stacked.reshape(n, 2 * k, h, w), (0, 2, 3, 1)).astype(jnp.float32)


def channels_to_complex(x: jnp.ndarray, *, squeeze: bool = True) -> jnp.ndarray:
    """Inverse of :func:`complex_to_channels`.

    Args:
      x: real array ``(N, H, W, 2k)``.
      squeeze: when ``k == 1`` return ``(N, H, W)`` instead of ``(N, 1, H, W)``.

    Returns:
      complex64 array ``(N, k, H, W)`` (or ``(N, H, W)`` for ``k == 1`` and ``squeeze``).
    """
    check_ndim(x, "x", ndim=4)
    if x.shape[-1] % 2:
        raise ValueError(f"x must have an even number of channels (re, im pairs), got {x.shape}")
    n, h, w, c = x.shape
    pairs = jnp.transpose(x, (0, 3, 1, 2)).reshape(n, c // 2, 2, h, w)
    out = (pairs[:, :, 0] + 1j * pairs[:, :, 1]).astype(jnp.complex64)
    if squeeze and out.shape[1] == 1:
        out = out[:, 0]
    return out


def _blocks_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """NHWC ``(N, H, W, C)`` -> ``(N, H // 2, 2, W // 2, 2, C)``; an odd last row/column is
    dropped (``nn.max_pool`` / ``nn.avg_pool`` 'VALID' semantics)."""
    check_ndim(x, "x", ndim=4)
    n, h, w, c = x.shape
    x = x[:, : 2 * (h // 2), : 2 * (w // 2)]
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max pooling with stride 2 of NHWC ``x``: ``(N, H // 2, W // 2, C)``, same dtype.

    The values equal ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``. Written as a reshape and
    a max so that its gradient is an elementwise select: XLA:CPU lowers the gradient of
    ``reduce_window`` max (``select_and_scatter``) to a slow scalar loop, 4-40x slower than
    this on 2 cores at VGG16 / U-Net sizes. Gradient at ties (equal values inside a window,
    e.g. a window of ReLU zeros) is shared equally instead of going to one element; behind a
    ReLU those entries get zero gradient either way.
    """
    return jnp.max(_blocks_2x2(x), axis=(2, 4))


def avg_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 average pooling with stride 2 of NHWC ``x``: ``(N, H // 2, W // 2, C)``, same dtype.

    Equals ``flax.linen.avg_pool(x, (2, 2), strides=(2, 2))``, as a reshape and a mean (a fused
    elementwise gradient instead of a padded ``reduce_window``).
    """
    return jnp.mean(_blocks_2x2(x), axis=(2, 4))


def bias_adder(conv_general_dilated: Callable) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """How a layer convolving with ``conv_general_dilated`` adds its bias ``(C,)`` to ``(..., C)``.

    An implementation may carry its own bias addition as an ``add_bias`` attribute (the XLA:CPU
    one does: :func:`jaxmri.cpu.add_bias`, the same values with a faster gradient); otherwise
    the plain broadcast ``y + bias``.
    """
    return getattr(conv_general_dilated, "add_bias", jnp.add)


class Conv(nn.Conv):
    """``flax.linen.Conv`` whose convolution implementation is a value.

    The same module as Flax's in every respect (attributes, parameter names and shapes, the
    auto-name ``Conv_i``, values), and by default the same computation
    (``lax.conv_general_dilated``). Every network in jaxmri builds its trainable convolutions with
    it and passes its own ``conv_general_dilated`` field down, so one value chooses the
    implementation of a whole model: the experiments pass :data:`jaxmri.cpu.conv_general_dilated`
    on the CPU, whose bias is added by its ``add_bias`` (:func:`bias_adder`).
    """

    conv_general_dilated: Callable | None = lax.conv_general_dilated

    @nn.compact
    def __call__(self, inputs):
        add_bias = bias_adder(self.conv_general_dilated)
        if not (self.use_bias and self.shared_weights) or add_bias is jnp.add:
            return super().__call__(inputs)
        # Flax's own convolution without its bias, in this module's scope (same parameters).
        inner = self.clone(parent=self, use_bias=False)
        nn.share_scope(self, inner)
        y = inner(inputs)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return add_bias(y, bias.astype(y.dtype))
