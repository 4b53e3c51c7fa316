"""Small layers and conversions shared by every network in jaxmri.

Networks see NHWC real arrays. A complex image ``(N, H, W)`` becomes two channels
``(N, H, W, 2)`` = (real, imag); a stack of ``k`` complex images ``(N, k, H, W)`` becomes
``2k`` channels ordered (re_0, im_0, re_1, im_1, ...). The two conversions are exact inverses.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxmri._checks import check_complex, check_ndim
from jaxmri.nn.layers_sr import pixel_unshuffle

__all__ = [
    "complex_to_channels", "channels_to_complex", "max_pool_2x2", "avg_pool_2x2",
    "conv_stride2_space_to_depth",
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


_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
    if dimension_numbers is None:
        return False
    return lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) == \
        lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)


def conv_stride2_space_to_depth(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                rhs_dilation=None, dimension_numbers=None,
                                feature_group_count=1, precision=None, **kwargs):
    """Drop-in for ``lax.conv_general_dilated`` (Flax ``nn.Conv(conv_general_dilated=...)``).

    A 2-D NHWC convolution with stride 2 and an even ``k x k`` kernel is computed as a stride-1
    ``k/2 x k/2`` convolution of the space-to-depth input (each 2x2 pixel block becomes 4C
    channels; the kernel is rearranged the same way). It is the same linear map, so values
    agree to float32 rounding and parameters keep their ``(k, k, C_in, C_out)`` layout. Why: on
    XLA:CPU the input gradient of a strided convolution (a convolution with a dilated input) is
    slow at small images: PatchGAN's 4x4 stride-2 layers at 6 px and 3 px took 13 and 18 ms for
    forward + both gradients, 2.6 and 4.4 ms this way (1.2-1.7x faster at 12-48 px too).
    Every other configuration (strides other than 2, odd kernels, dilation, groups, other
    layouts) goes to ``lax.conv_general_dilated`` unchanged.
    """
    strides = tuple(window_strides)
    kh, kw = rhs.shape[:2] if rhs.ndim == 4 else (1, 1)
    fast = (lhs.ndim == 4 and strides == (2, 2) and kh % 2 == 0 and kw % 2 == 0
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and feature_group_count == 1 and not kwargs
            and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape))
    if not fast:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)
    _, h, w, c = lhs.shape
    pads = (lax.padtype_to_pads((h, w), (kh, kw), strides, padding) if isinstance(padding, str)
            else [tuple(p) for p in padding])
    (top, bottom), (left, right) = pads
    out_h = (h + top + bottom - kh) // 2 + 1
    out_w = (w + left + right - kw) // 2 + 1
    # Pad to an even size (the extra row/column is never read by a kept output).
    bottom += (h + top + bottom) % 2
    right += (w + left + right) % 2
    x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    # pixel_unshuffle: x[n, 2a + p, 2b + q, c] -> xs[n, a, b, (c, p, q)]; the kernel tap
    # [2i + p, 2j + q, c, o] goes to ks[i, j, (c, p, q), o] to match.
    xs = pixel_unshuffle(x, 2)
    ks = rhs.reshape(kh // 2, 2, kw // 2, 2, c, -1).transpose(0, 2, 4, 1, 3, 5)
    ks = ks.reshape(kh // 2, kw // 2, 4 * c, -1)
    y = lax.conv_general_dilated(xs, ks, (1, 1), "VALID", dimension_numbers=_NHWC,
                                 precision=precision)
    return y[:, :out_h, :out_w]
