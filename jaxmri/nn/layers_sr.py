"""Sub-pixel rearrangements for super-resolution networks (NHWC).

:func:`pixel_shuffle` is PyTorch's ``nn.PixelShuffle`` written for NHWC arrays: input channel
``c * r * r + i * r + j`` at pixel ``(h, w)`` goes to output channel ``c`` at pixel
``(h r + i, w r + j)``. :func:`pixel_unshuffle` is its inverse (``nn.PixelUnshuffle``). Both are
pure reshapes/transposes, so they are exact, jit- and vmap-able and differentiable.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmri._checks import check_ndim

__all__ = ["pixel_shuffle", "pixel_unshuffle"]


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be an int >= 1, got {factor}")
    return int(factor)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """``(N, H, W, C r^2) -> (N, H r, W r, C)`` (depth to space, PyTorch channel order).

    Args:
      x: NHWC array whose channel count is divisible by ``factor ** 2``.
      factor: upscaling factor ``r >= 1``.
    """
    check_ndim(x, "x", ndim=4)
    r = _check_factor(factor)
    n, h, w, c = np.shape(x)
    if c % (r * r):
        raise ValueError(f"x channels {c} must be divisible by factor**2 = {r * r}")
    out_c = c // (r * r)
    x = x.reshape(n, h, w, out_c, r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, h * r, w * r, out_c)


def pixel_unshuffle(x: jax.Array, factor: int) -> jax.Array:
    """``(N, H r, W r, C) -> (N, H, W, C r^2)``: the inverse of :func:`pixel_shuffle`."""
    check_ndim(x, "x", ndim=4)
    r = _check_factor(factor)
    n, hr, wr, c = np.shape(x)
    if hr % r or wr % r:
        raise ValueError(f"x spatial size {(hr, wr)} must be divisible by factor {r}")
    x = x.reshape(n, hr // r, r, wr // r, r, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, hr // r, wr // r, c * r * r)
