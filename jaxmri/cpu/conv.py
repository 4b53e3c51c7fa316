"""jaxmri's convolution for XLA:CPU: ``lax.conv_general_dilated``'s maths, XLA:CPU's speed.

:data:`conv_general_dilated` takes the arguments of ``lax.conv_general_dilated`` and computes
the same linear map (values agree to float32 rounding; kernels keep their HWIO layout). It is a
value to hand to the networks (``Conv(..., conv_general_dilated=...)``, every model's
``conv_general_dilated`` field), which use plain ``lax.conv_general_dilated`` by default; the
experiment and benchmark entry points pass this one when they run on the CPU
(:func:`jaxmri.cpu.conv_for`). On GPU and TPU nothing here is used.

Why it exists: on XLA:CPU (jaxlib 0.10, 2 cores) several convolution shapes of the five papers'
networks are slow, mostly in their gradients: a kernel gradient over a batch that is not a
multiple of 8 (the vector width), narrow first and last layers (1-4 channels), wide layers on a
few pixels (VGG16's last blocks), strided convolutions at small images, and transposed
convolutions traced inside a ``while_loop`` (implicit adjoint solves), which XLA:CPU runs as a
naive loop. Each is rewritten here as the same linear map in a form XLA:CPU runs fast (matrix
products, tiling, canonical layouts, space-to-depth), chosen per shape by :func:`conv_plan`;
each choice is a measured one (the comments give the numbers). ``python -m
benchmarks.conv_layers`` and ``python -m benchmarks.step_time`` measure the whole.

The bias: :func:`add_bias` adds a conv's bias with a gradient that is a matrix product (XLA:CPU
reduces over a batch slowly); :class:`jaxmri.nn.layers.Conv` and
:class:`jaxmri.nn.spectral.SpectralNormConv` use it when the implementation they are given has
an ``add_bias`` attribute, as :data:`conv_general_dilated` does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxmri.nn.layers_sr import pixel_unshuffle

__all__ = [
    "conv_general_dilated", "CpuConvolution", "add_bias", "conv_plan",
    "conv_fast_kernel_grad", "kernel_tangent_conv", "input_tangent_conv",
]

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
    if dimension_numbers is None:
        return False
    return lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) == \
        lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)


# XLA:CPU computes a convolution's kernel gradient as a convolution whose innermost dimension is
# the batch; it runs at full speed only when the batch is a multiple of the vector width (8
# float32 lanes). Measured on 2 cores, 3x3 kernel gradient alone, 32 -> 32 channels at 48 px:
# 3.4, 3.8, 5.0, 5.2 and 4.7 ms at batch 1, 2, 3, 4 and 8.
_LANES = 8
# Tiles smaller than this (output pixels per side) would be mostly halo.
_MIN_TILE = 4


def _narrow_output(c_in: int, c_out: int) -> bool:
    """Whether the kernel gradient is best computed as one matrix product (few outputs).

    Measured on 2 cores (kernel gradient alone, 3x3, 16-64 px, batch 2-16): 3-4x faster than
    XLA's for ``C_out <= 8`` (32 -> 4 at 48 px: 3.9 -> 1.2 ms; 128 -> 4: 15.3 -> 3.6 ms; 64 -> 1
    at 16 px: 1.1 -> 0.8 ms) and 2x for 32 -> 16; no faster for 16 -> 16, wider outputs or
    fewer than 8 input channels (2 -> 2: 1.8 -> 2.2 ms for forward + both gradients).
    """
    return c_in >= 8 and (c_out <= 8 or (c_out <= 16 and 2 * c_out <= c_in))


def _tiles_per_side(batch: int, out_hw: tuple[int, int]) -> int:
    """``t`` such that cutting each image into ``t x t`` tiles makes ``batch * t * t`` a multiple
    of the vector width; 1 when the batch already is one or the tiles would be too small."""
    for t in (1, 2, 4):
        if (batch * t * t) % _LANES == 0:
            return t if min(out_hw) // t >= _MIN_TILE else 1
    return 1


def _pad_hw(x, pads):
    """Zero-pad the two spatial dimensions of NHWC ``x`` by ``((top, bottom), (left, right))``
    (negative entries crop, as in ``lax.pad``)."""
    (top, bottom), (left, right) = pads
    return lax.pad(x, jnp.zeros((), x.dtype),
                   ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))


def _shifted_product_conv(x_pad, kernel_dot, out_hw, precision):
    """``conv(x_pad, kernel_dot)`` ('VALID') as one matrix product and shifted sums (used both
    as a narrow-output convolution and as the kernel direction of :func:`conv_fast_kernel_grad`).

    ``z = x_pad @ kernel_dot`` gives, at every padded pixel, the contribution of each tap
    ``(i, j)`` (``kh * kw * C_out`` columns); the output is the sum over taps of ``z[tap]``
    shifted by ``(i, j)``. The transpose in ``kernel_dot`` (what reverse mode evaluates for the
    kernel gradient) is the product the other way round: the output gradient, zero-padded once
    per tap into ``kh * kw * C_out`` columns, multiplied by ``x_pad``. Cheap for narrow outputs.
    """
    kh, kw, c_in, c_out = kernel_dot.shape
    n, hp, wp, _ = x_pad.shape
    out_h, out_w = out_hw
    taps = kernel_dot.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out)
    # 2-D operands, so that the transposed product has the padded pixels as its contraction:
    # with a 4-D einsum XLA transposed the (large) tap-gradient operand first.
    z = jnp.dot(x_pad.reshape(n * hp * wp, c_in), taps, precision=precision)
    # lax.split (not indexing) so that the transpose is one concatenate of the padded output
    # gradients: indexing a tap axis transposes to 9 full-size pads summed, 4x slower.
    per_tap = lax.split(z.reshape(n, hp, wp, kh * kw * c_out), [c_out] * (kh * kw), axis=3)
    terms = [per_tap[i * kw + j][:, i:i + out_h, j:j + out_w]
             for i in range(kh) for j in range(kw)]
    return functools.reduce(jnp.add, terms)


def _im2col_conv(x_pad, kernel, out_hw, precision):
    """``conv(x_pad, kernel)`` ('VALID') as one matrix product of the ``kh * kw`` shifted copies
    of ``x_pad`` (``kh * kw * C_in`` columns per pixel). Cheap when the input is narrow; autodiff
    then gives the kernel gradient as the transposed product and the input gradient as a product
    followed by shifted sums, all matrix products instead of XLA:CPU's slow narrow convolutions.
    """
    kh, kw, c_in, c_out = kernel.shape
    n = x_pad.shape[0]
    out_h, out_w = out_hw
    cols = jnp.concatenate([x_pad[:, i:i + out_h, j:j + out_w]
                            for i in range(kh) for j in range(kw)], axis=-1)
    y = jnp.dot(cols.reshape(n * out_h * out_w, kh * kw * c_in),
                kernel.reshape(kh * kw * c_in, c_out), precision=precision)
    return y.reshape(n, out_h, out_w, c_out)


def _valid_conv_canonical_kernel_grad(x_pad, kernel_dot, precision):
    """``conv(x_pad, kernel_dot)`` ('VALID', NHWC / HWIO) as a linear map of ``kernel_dot`` whose
    transpose, the kernel gradient, is a convolution in XLA:CPU's canonical layout.

    JAX transposes ``lax.conv_general_dilated`` in its kernel into a convolution with batch and
    feature roles swapped (``f01b_i01o->01bf``). XLA:CPU rewrites such a convolution into its
    canonical layout (NHWC input, HWIO kernel, NHWC output) for its Eigen kernels, except when
    the convolution was traced inside a ``while_loop`` body (the fixed-point inverse): there it
    stays a naive loop, even after loop-invariant code motion hoists it out (a 32 -> 32 kernel
    correlation at 48 px: 0.9 ms -> 27 ms). Here the forward convolution is written in the
    layouts whose transpose is canonical: input as ``(C_in, H, W, N)``, kernel as
    ``(C_in, kh, kw, C_out)``, output as ``(H', W', N, C_out)``, with explicit transposes around
    it. The values are those of the plain convolution.
    """
    y = lax.conv_general_dilated(x_pad.transpose(3, 1, 2, 0), kernel_dot.transpose(2, 0, 1, 3),
                                 (1, 1), "VALID", dimension_numbers=("CHWN", "IHWO", "HWNC"),
                                 precision=precision)
    return y.transpose(2, 0, 1, 3)


def _tiled_conv(x_pad, kernel_dot, out_hw, tiles, precision):
    """``conv(x_pad, kernel_dot)`` ('VALID') computed on ``tiles x tiles`` tiles of each image.

    Each tile is a separate batch entry with a ``k - 1`` pixel halo, so the kernel gradient
    (the transpose in ``kernel_dot``) is XLA's, on a batch ``tiles**2`` times larger: a multiple
    of the vector width.
    """
    kh, kw = kernel_dot.shape[:2]
    n, _, _, c_in = x_pad.shape
    out_h, out_w = out_hw
    th, tw = -(-out_h // tiles), -(-out_w // tiles)
    # Extra zero rows/columns so the tiles cover a whole multiple (the outputs there are cut).
    x_pad = _pad_hw(x_pad, ((0, th * tiles - out_h), (0, tw * tiles - out_w)))
    x_tiles = jnp.stack([x_pad[:, a * th:a * th + th + kh - 1, b * tw:b * tw + tw + kw - 1]
                         for a in range(tiles) for b in range(tiles)], axis=1)
    x_tiles = x_tiles.reshape(n * tiles * tiles, th + kh - 1, tw + kw - 1, c_in)
    y = _valid_conv_canonical_kernel_grad(x_tiles, kernel_dot, precision)
    y = y.reshape(n, tiles, tiles, th, tw, -1).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, tiles * th, tiles * tw, -1)[:, :out_h, :out_w]


def _stride1_out_hw(x_shape, kernel_shape, pads) -> tuple[int, int]:
    """``(H', W')`` of a stride-1 NHWC / HWIO conv of ``x_shape`` with zero ``pads``."""
    (top, bottom), (left, right) = pads
    return (x_shape[1] + top + bottom - kernel_shape[0] + 1,
            x_shape[2] + left + right - kernel_shape[1] + 1)


def _fast_kernel_grad_strategy(x_shape, kernel_shape, pads) -> tuple[str, int]:
    """``("product", 1)``, ``("tiles", t)`` or ``("xla", 1)`` for a stride-1 NHWC conv."""
    tiles = _tiles_per_side(x_shape[0], _stride1_out_hw(x_shape, kernel_shape, pads))
    if tiles == 1:
        # A batch of whole vectors: XLA's own kernel gradient is fast enough (RecNet at batch 8
        # got 15 % slower with the product for its 32 -> 2 output layers, in the whole step).
        return "xla", 1
    if _narrow_output(kernel_shape[2], kernel_shape[3]):
        return "product", 1
    return "tiles", tiles


def kernel_tangent_conv(x, kernel_dot, pads, precision=None):
    """``conv(x, kernel_dot)`` (stride 1, NHWC / HWIO, zero ``pads``), written as a linear map of
    ``kernel_dot`` whose transpose (a convolution's kernel gradient) is fast on XLA:CPU: by
    :func:`_shifted_product_conv` for narrow outputs, by :func:`_tiled_conv` for a batch that
    is not a multiple of 8, else by XLA's own convolution."""
    kh, kw = kernel_dot.shape[:2]
    x_pad = _pad_hw(x, pads)
    out_hw = (x_pad.shape[1] - kh + 1, x_pad.shape[2] - kw + 1)
    strategy, tiles = _fast_kernel_grad_strategy(x.shape, kernel_dot.shape, pads)
    if strategy == "product":
        return _shifted_product_conv(x_pad, kernel_dot, out_hw, precision)
    if strategy == "tiles":
        return _tiled_conv(x_pad, kernel_dot, out_hw, tiles, precision)
    return _valid_conv_canonical_kernel_grad(x_pad, kernel_dot, precision)


def input_tangent_conv(x_dot, kernel, pads, precision=None):
    """``conv(x_dot, kernel)`` (stride 1, NHWC / HWIO, zero ``pads``), written as a linear map of
    ``x_dot`` whose transpose (the input gradient) is a canonical convolution on XLA:CPU.

    JAX transposes a convolution in its input into one whose kernel is read with input and
    output features swapped (``HWOI``); XLA:CPU rearranges that kernel only outside loops, and
    inside a ``while_loop`` body (an implicit adjoint solve) runs the convolution as a naive
    loop. Here the kernel is stored swapped and read as ``HWOI``, so the transpose reads it as
    ``HWIO``: canonical wherever it is traced. The values are those of the plain convolution.
    """
    return lax.conv_general_dilated(x_dot, kernel.transpose(0, 1, 3, 2), (1, 1), pads,
                                    dimension_numbers=("NHWC", "HWOI", "NHWC"),
                                    precision=precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv_fast_kernel_grad(x: jnp.ndarray, kernel: jnp.ndarray, pads,
                          precision=None) -> jnp.ndarray:
    """Stride-1 NHWC / HWIO convolution whose kernel gradient is fast on XLA:CPU.

    The value is ``lax.conv_general_dilated(x, kernel, (1, 1), pads)``. The JVP in the kernel
    direction is the same linear map written so that its transpose, the kernel gradient of
    reverse mode, avoids XLA:CPU's slow cases: for few output channels one matrix product of
    the padded input with the tap-shifted output gradient (:func:`_shifted_product_conv`);
    for a batch that is not a multiple of 8, XLA's kernel gradient on ``t x t`` tiles of each
    image (:func:`_tiled_conv`; 32 -> 32 at 48 px, batch 4: 5.2 -> 2.5 ms). The input direction
    is XLA's convolution with the kernel stored so that the input gradient is a canonical
    convolution inside loops as well (:func:`input_tangent_conv`). Forward and reverse mode,
    ``vmap`` and higher derivatives work.

    Args:
      x: ``(N, H, W, C_in)`` real floats.
      kernel: ``(kh, kw, C_in, C_out)``.
      pads: ``((top, bottom), (left, right))`` zero padding (hashable: tuples of ints).
      precision: as for ``lax.conv_general_dilated``.

    Returns:
      ``(N, H + top + bottom - kh + 1, W + left + right - kw + 1, C_out)``.
    """
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_NHWC,
                                    precision=precision)


def _conv_fast_kernel_grad_jvp(pads, precision, primals, tangents):
    x, kernel = primals
    x_dot, kernel_dot = tangents
    y = conv_fast_kernel_grad(x, kernel, pads, precision)
    # Symbolic zeros: a frozen input (data) or a frozen kernel costs nothing.
    y_dot = None
    if type(x_dot) is not SymbolicZero:
        y_dot = input_tangent_conv(x_dot, kernel, pads, precision)
    if type(kernel_dot) is not SymbolicZero:
        term = kernel_tangent_conv(x, kernel_dot, pads, precision)
        y_dot = term if y_dot is None else y_dot + term
    if y_dot is None:
        y_dot = jnp.zeros_like(y)
    return y, y_dot


conv_fast_kernel_grad.defjvp(_conv_fast_kernel_grad_jvp, symbolic_zeros=True)


def _explicit_pads(padding, in_hw, kernel_hw, strides) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


# Narrow operands (measured on 2 cores, 3x3 forward + both gradients, 16-64 px, batch 4-16):
# with at most this many input or output channels, writing the convolution as matrix products
# on shifted copies of the narrow side is faster than XLA:CPU's convolutions in every case
# measured (2 -> 32 at 48 px, batch 8: 6.9 -> 4.2 ms; 32 -> 2: 8.8 -> 4.3 ms; 128 -> 4: 18.8
# -> 5.5 ms; 4 -> 128: 7.9 -> 4.7 ms; PyTorch: 5.8, 5.1, 8.0, 9.5 ms); at 8 channels it is level.
_NARROW = 4
# Wide layers on few pixels (VGG16's last two blocks at 3-8 px, PatchGAN's deep layers): with at
# least this many input channels and at most twice as many output pixels in the whole batch
# (N * H' * W') as input channels, one im2col product is faster than XLA:CPU's convolution,
# whose input gradient is slow there. Measured on 2 cores, forward + input gradient (forward +
# both gradients): 4x6x6 512 -> 512 24.5 -> 13.2 ms (27.5 -> 19.2), 4x8x8 512 -> 512 23.2 ->
# 19.5 (40.9 -> 31.5), 8x6x6 512 -> 512 28.8 -> 22.1, 4x4x4 256 -> 256 2.9 -> 2.0, 4x8x8
# 256 -> 256 8.2 -> 6.8; PyTorch 15.0, 23.7, 27.2, 2.4, 6.7. Level or slower beyond: 4x10x10
# 256 (400 pixels) 9.9 / 9.0, 16x6x6 256 (576) 11.1 / 13.0; and below 256 channels (4x6x6 128:
# 1.3 / 1.5; 4x6x6 64: 0.8 / 1.1).
_WIDE = 256


def _few_pixels_wide(x_shape, kernel_shape, pads) -> bool:
    """Whether a stride-1 conv is a wide layer on few pixels (see ``_WIDE``)."""
    out_h, out_w = _stride1_out_hw(x_shape, kernel_shape, pads)
    c_in = kernel_shape[2]
    return c_in >= _WIDE and x_shape[0] * out_h * out_w <= 2 * c_in


def conv_plan(x_shape, kernel_shape, pads) -> str:
    """How :data:`conv_general_dilated` computes a stride-1 NHWC conv.

    ``"im2col"`` (at most 4 input channels, fewer than output; a kernel at least as large
    as the image; or at least 256 input channels on at most twice as many output pixels in the
    batch): :func:`_im2col_conv`;
    ``"shifted_product"`` (at most 4 output channels, fewer than input):
    :func:`_shifted_product_conv`; ``"fast_kernel_grad"``: :func:`conv_fast_kernel_grad`
    (XLA's convolution, kernel gradient by :func:`kernel_tangent_conv`); ``"xla"``: XLA's
    convolution and its own gradients.
    """
    c_in, c_out = kernel_shape[2], kernel_shape[3]
    if kernel_shape[0] >= x_shape[1] or kernel_shape[1] >= x_shape[2]:
        # A kernel at least as large as the image: XLA swaps the two operands and its CPU
        # backend then runs the convolution as a naive loop (PatchGAN's 4x4 256 -> 256 layer at
        # 2 and 3 px, forward + both gradients: 13 and 48 ms; as im2col products 3.0 and 3.7).
        return "im2col"
    if (c_in <= _NARROW and c_in < c_out) or _few_pixels_wide(x_shape, kernel_shape, pads):
        return "im2col"
    if c_out <= _NARROW and c_out < c_in:
        return "shifted_product"
    if _fast_kernel_grad_strategy(x_shape, kernel_shape, pads)[0] != "xla":
        return "fast_kernel_grad"
    return "xla"


def _conv_stride1(lhs, rhs, pads, precision):
    """Stride-1 NHWC conv, computed as :func:`conv_plan` says."""
    plan = conv_plan(lhs.shape, rhs.shape, pads)
    if plan == "fast_kernel_grad":
        return conv_fast_kernel_grad(lhs, rhs, pads, precision)
    if plan in ("im2col", "shifted_product"):
        x_pad = _pad_hw(lhs, pads)
        out_hw = (x_pad.shape[1] - rhs.shape[0] + 1, x_pad.shape[2] - rhs.shape[1] + 1)
        conv = _im2col_conv if plan == "im2col" else _shifted_product_conv
        return conv(x_pad, rhs, out_hw, precision)
    return lax.conv_general_dilated(lhs, rhs, (1, 1), pads, dimension_numbers=_NHWC,
                                    precision=precision)


def _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """``lax.conv_general_dilated`` with XLA:CPU's slow cases rewritten.

    The same linear map (values agree to float32 rounding, parameters keep their HWIO layout),
    with two NHWC cases rewritten for XLA:CPU, where the plain convolution's gradients are slow:

    * **stride 2, even ``k x k`` kernel**: a stride-1 ``k/2 x k/2`` convolution of the
      space-to-depth input (each 2x2 pixel block becomes ``4 C`` channels; the kernel is
      rearranged the same way). The input gradient of a strided convolution is slow at small
      images: PatchGAN's 4x4 stride-2 layers at 6 px and 3 px took 13 and 18 ms for forward +
      both gradients, 2.6 and 4.4 ms this way (1.2-1.7x faster at 12-48 px too).
    * **stride 1**, as :func:`conv_plan` chooses: with at most 4 input or
      output channels (the first and last layer of every network here), matrix products on
      shifted copies of the narrow side (1.3-3.4x faster for forward + both gradients); with
      256 or more input channels on few pixels (VGG16's last blocks), one im2col product; with
      few output channels or a batch that is not a multiple of 8, XLA's convolution with a
      kernel gradient that is 2-4x faster there (:func:`conv_fast_kernel_grad`).

    Every other configuration (other strides, dilation, groups, other layouts) goes to
    ``lax.conv_general_dilated`` unchanged.
    """
    strides = tuple(window_strides)
    kh, kw = rhs.shape[:2] if rhs.ndim == 4 else (1, 1)
    nhwc = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape))
    if nhwc and lhs.shape[3] != rhs.shape[2]:
        # Checked here because the matrix-product plans would fail with a less clear message.
        raise ValueError(f"conv input has {lhs.shape[3]} channels (NHWC {lhs.shape}) but the "
                         f"kernel expects {rhs.shape[2]} (HWIO {rhs.shape})")
    if nhwc and strides == (1, 1):
        return _conv_stride1(lhs, rhs, _explicit_pads(padding, lhs.shape[1:3], (kh, kw), strides),
                             precision)
    if not (nhwc and strides == (2, 2) and kh % 2 == 0 and kw % 2 == 0):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)
    _, h, w, c = lhs.shape
    (top, bottom), (left, right) = _explicit_pads(padding, (h, w), (kh, kw), strides)
    out_h = (h + top + bottom - kh) // 2 + 1
    out_w = (w + left + right - kw) // 2 + 1
    # Pad to an even size (the extra row/column is never read by a kept output).
    bottom += (h + top + bottom) % 2
    right += (w + left + right) % 2
    x = _pad_hw(lhs, ((top, bottom), (left, right)))
    # pixel_unshuffle: x[n, 2a + p, 2b + q, c] -> xs[n, a, b, (c, p, q)]; the kernel tap
    # [2i + p, 2j + q, c, o] goes to ks[i, j, (c, p, q), o] to match.
    xs = pixel_unshuffle(x, 2)
    ks = rhs.reshape(kh // 2, 2, kw // 2, 2, c, -1).transpose(0, 2, 4, 1, 3, 5)
    ks = ks.reshape(kh // 2, kw // 2, 4 * c, -1)
    y = _conv_stride1(xs, ks, ((0, 0), (0, 0)), precision)
    return y[:, :out_h, :out_w]


@jax.custom_jvp
def add_bias(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """``y + bias`` for ``y`` of shape ``(..., C)`` and ``bias`` of shape ``(C,)``, whose bias
    gradient is a matrix-vector product.

    Reverse mode of the plain broadcast add sums the output gradient over all leading axes, a
    reduce that XLA:CPU rewrites into a slow reduce-window (4 x 48 x 48 x 32: 200 us; as
    ``ones @ g``: 52 us). Here the broadcast is written as an outer product with a column of
    ones, whose transpose is that product.
    Forward mode and ``vmap`` work; values are exact.
    """
    return y + bias


def _add_bias_jvp(primals, tangents):
    y, bias = primals
    y_dot, bias_dot = tangents
    # Symbolic zeros: a frozen bias (a pretrained trunk) adds nothing to the tangent; without
    # this, its zero tangent would be traced as a product with ones (which XLA then folds).
    if type(bias_dot) is SymbolicZero:
        return y + bias, (jnp.zeros_like(y) if type(y_dot) is SymbolicZero else y_dot)
    if type(y_dot) is SymbolicZero:
        y_dot = jnp.zeros_like(y)
    rows = y.size // y.shape[-1]
    # The broadcast written as an outer product with ones: its transpose, the bias gradient, is
    # ones @ g (XLA:CPU's reduce of g over the leading axes is a slow reduce-window). HIGHEST:
    # the product keeps float32 whatever the default matmul precision is set to.
    spread = jnp.dot(jnp.ones((rows, 1), y.dtype), bias_dot[None, :],
                     precision=lax.Precision.HIGHEST).reshape(y.shape)
    return y + bias, y_dot + spread


add_bias.defjvp(_add_bias_jvp, symbolic_zeros=True)


@dataclasses.dataclass(frozen=True)
class CpuConvolution:
    """A ``lax.conv_general_dilated``-compatible callable with XLA:CPU's fast paths, and the bias
    addition that goes with it (:func:`add_bias`). Frozen and hashable, so it can be a Flax module
    attribute or a static argument of ``jax.jit``; use the instance :data:`conv_general_dilated`.
    """

    def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
        return _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                     rhs_dilation, dimension_numbers, feature_group_count,
                                     precision, **kwargs)

    @staticmethod
    def add_bias(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
        """:func:`add_bias`: ``y + bias`` with a bias gradient that is a matrix product."""
        return add_bias(y, bias)

    def __repr__(self) -> str:
        return "jaxmri.cpu.conv_general_dilated"


#: The XLA:CPU convolution: call it as ``lax.conv_general_dilated``; hand it to the networks.
conv_general_dilated = CpuConvolution()
