"""Small layers and conversions shared by every network in jaxmri.

Networks see NHWC real arrays. A complex image ``(N, H, W)`` becomes two channels
``(N, H, W, 2)`` = (real, imag); a stack of ``k`` complex images ``(N, k, H, W)`` becomes
``2k`` channels ordered (re_0, im_0, re_1, im_1, ...). The two conversions are exact inverses.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxmri._checks import check_complex, check_ndim

__all__ = ["complex_to_channels", "channels_to_complex"]


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
