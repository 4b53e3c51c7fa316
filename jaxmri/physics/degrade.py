"""Image degradations for super-resolution and noise simulation.

Conventions (see :mod:`jaxmri`): arrays are ``(..., H, W)`` with any leading batch axes; k-space
is centred with DC at ``(H // 2, W // 2)``; complex data are ``complex64`` and magnitudes
``float32``; random functions take a ``jax.random`` key first.

Sampling grid (one convention for every grid of the package, :func:`grid_position`): pixel
``n // 2`` of an ``n``-pixel axis is the origin of the centred FFT (``fft2c`` keeps the phase
reference there), and ``n`` pixels span the field of view. So pixel ``i`` of an ``n``-pixel axis
sits at ``N // 2 + (i - n // 2) N / n`` on an ``N``-pixel axis of the same field of view: at x2,
LR pixel ``i`` sits on HR pixel ``2 i`` (even LR sizes). :func:`kspace_crop` and
:func:`kspace_zero_pad` follow it by construction (they keep DC at ``n // 2``), and
:func:`bicubic_resize` resamples on the same grid, so a k-space crop and a bicubic downscale (or
a zero-pad and a bicubic upscale) of the same image line up instead of being half a pixel apart.

* :func:`kspace_crop` / :func:`kspace_zero_pad`: the k-space truncation ``H`` of paper 004
  (keep the central ``h x w`` frequencies) and its adjoint (zero padding). Both keep the DC
  sample at ``(n // 2)`` of every axis, for odd and even sizes alike. Neither rescales: with the
  unitary ``fft2c`` the image of a cropped k-space is ``sqrt(H W / (h w))`` times brighter than
  a band-limited resampling of the same image (a constant 1 becomes 2 at x2 in both axes);
  multiply by ``sqrt(h w / (H W))`` to keep the intensity scale.
* :func:`fermi_filter`: radial Fermi (logistic) k-space window against Gibbs ringing, the
  anti-ringing window of paper 001's k-space zero-filling baseline.
* :func:`gaussian_blur`, :func:`bicubic_resize`: image-space blur and resampling.
* :func:`complex_gaussian_noise`, :func:`rician_noise`: additive complex noise and the Rician
  magnitude it produces.

All functions are pure and work under ``jax.jit`` and ``jax.vmap`` (shape and filter options are
static Python values).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmri._checks import (
    check_complex,
    check_ndim,
    check_positive,
    check_real,
    check_shape_2d,
)

__all__ = [
    "kspace_crop",
    "kspace_zero_pad",
    "fermi_filter",
    "gaussian_blur",
    "bicubic_resize",
    "grid_position",
    "complex_gaussian_noise",
    "rician_noise",
]


def _centre_start(big: int, small: int) -> int:
    # DC sits at n // 2 on both grids, so the small grid starts at big // 2 - small // 2.
    return big // 2 - small // 2


def kspace_crop(kspace: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
    """Keep the central ``out_shape`` block of the last two axes (low-pass k-space truncation).

    Args:
      kspace: centred k-space ``(..., H, W)`` (any dtype; typically ``complex64``).
      out_shape: ``(h, w)`` with ``h <= H`` and ``w <= W``.

    Returns:
      ``(..., h, w)``; the input's DC sample ``(H // 2, W // 2)`` lands on ``(h // 2, w // 2)``.
    """
    check_ndim(kspace, "kspace", min_ndim=2)
    h, w = check_shape_2d(out_shape, "out_shape")
    big_h, big_w = np.shape(kspace)[-2:]
    if h > big_h or w > big_w:
        raise ValueError(
            f"out_shape {(h, w)} must not exceed the last two axes {(big_h, big_w)} of kspace"
        )
    y0, x0 = _centre_start(big_h, h), _centre_start(big_w, w)
    return kspace[..., y0 : y0 + h, x0 : x0 + w]


def kspace_zero_pad(kspace: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
    """Zero-pad the last two axes to ``out_shape``, centre-aligned: the adjoint of the crop.

    Args:
      kspace: centred k-space ``(..., h, w)``.
      out_shape: ``(H, W)`` with ``H >= h`` and ``W >= w``.

    Returns:
      ``(..., H, W)`` of the same dtype; DC ``(h // 2, w // 2)`` lands on ``(H // 2, W // 2)``, and
      ``kspace_crop(kspace_zero_pad(k, (H, W)), (h, w)) == k``.
    """
    check_ndim(kspace, "kspace", min_ndim=2)
    big_h, big_w = check_shape_2d(out_shape, "out_shape")
    h, w = np.shape(kspace)[-2:]
    if h > big_h or w > big_w:
        raise ValueError(
            f"out_shape {(big_h, big_w)} must not be smaller than the last two axes {(h, w)} of "
            "kspace"
        )
    y0, x0 = _centre_start(big_h, h), _centre_start(big_w, w)
    pad = [(0, 0)] * (jnp.ndim(kspace) - 2) + [(y0, big_h - h - y0), (x0, big_w - w - x0)]
    return jnp.pad(kspace, pad)


def fermi_filter(shape: tuple[int, int], *, radius: float, width: float) -> jax.Array:
    """Radial Fermi window ``1 / (1 + exp((r - radius) / width))`` on a centred k-space grid.

    ``r`` is the distance of each sample to DC ``(H // 2, W // 2)`` in units of the half-width of
    each axis: ``r = sqrt((ky / (H / 2))^2 + (kx / (W / 2))^2)``, so ``r = 1`` at the edge of the
    k-space along either axis (an ellipse on non-square grids). ``radius`` and ``width`` are in
    the same units. The window is 0.5 at ``r = radius``, ``> 0.98`` for ``r < radius - 4 width``
    and ``< 0.02`` for ``r > radius + 4 width``.

    Paper 001 builds its k-space zero-filling baseline by zeroing "the peripheral 75 %" of
    k-space (keeping the central half of each axis, a quarter of the samples) and applying a
    Fermi window against ringing (Bernstein et al. 2001); ``radius=0.5`` with a small width
    (e.g. ``0.02``-``0.05``) reproduces that after :func:`kspace_crop` to half size, or multiply the
    full k-space by the window directly.

    Args:
      shape: k-space shape ``(H, W)``.
      radius: window radius ``> 0`` (fraction of the half-width).
      width: transition width ``> 0`` (same units).

    Returns:
      ``(H, W)`` ``float32`` window.
    """
    height, width_px = check_shape_2d(shape, "shape")
    check_positive(radius, "radius")
    check_positive(width, "width")
    ky = (jnp.arange(height) - height // 2) / (height / 2.0)
    kx = (jnp.arange(width_px) - width_px // 2) / (width_px / 2.0)
    r = jnp.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return jax.nn.sigmoid((radius - r) / width).astype(jnp.float32)


def _reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    # scipy.ndimage "reflect" (half-sample symmetric, d c b a | a b c d | d c b a), periodic
    # with period 2n so it also holds for kernels wider than the image.
    t = np.mod(index, 2 * n)
    return np.where(t >= n, 2 * n - 1 - t, t)


def _blur_matrix(n: int, sigma: float, truncate: float) -> np.ndarray:
    """``(n, n)`` matrix of 1-D Gaussian filtering with reflect boundaries (scipy's kernel)."""
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    matrix = np.zeros((n, n))
    rows = np.arange(n)[:, None]
    cols = _reflect_index(rows + taps[None, :], n)
    np.add.at(matrix, (np.broadcast_to(rows, cols.shape), cols), kernel[None, :])
    return matrix.astype(np.float32)


def gaussian_blur(
    image: jax.Array, *, sigma: float | Sequence[float], truncate: float = 4.0
) -> jax.Array:
    """Separable Gaussian blur over the last two axes, matching ``scipy.ndimage.gaussian_filter``.

    The 1-D kernel is ``exp(-t^2 / (2 sigma^2))`` for integer ``t`` in
    ``[-r, r]``, ``r = int(truncate * sigma + 0.5)``, normalised to sum 1 (scipy's kernel), and the
    boundary mode is scipy's default ``"reflect"`` (``d c b a | a b c d | d c b a``, the edge pixel
    repeated). Filtering is done as two dense matrix products per image (exact for any kernel
    size, e.g. IFR-Net's sigma 50), ``O(H W (H + W))`` work.

    Args:
      image: real or complex image ``(..., H, W)``; integers are promoted to ``float32``.
      sigma: standard deviation in pixels ``> 0``, or ``(sigma_y, sigma_x)``.
      truncate: kernel half-width in standard deviations ``> 0``.

    Returns:
      Blurred image, same shape; ``float32`` for real input, ``complex64`` for complex input.
    """
    check_ndim(image, "image", min_ndim=2)
    image = jnp.asarray(image)
    if not jnp.issubdtype(image.dtype, jnp.complexfloating):
        check_real(image, "image")
        image = image.astype(jnp.float32)
    sigmas = (sigma, sigma) if np.ndim(sigma) == 0 else tuple(sigma)
    if len(sigmas) != 2:
        raise ValueError(f"sigma must be a number or a (sigma_y, sigma_x) pair, got {sigma}")
    for s in sigmas:
        check_positive(float(s), "sigma")
    check_positive(truncate, "truncate")
    height, width = image.shape[-2:]
    rows = jnp.asarray(_blur_matrix(height, float(sigmas[0]), truncate))
    cols = jnp.asarray(_blur_matrix(width, float(sigmas[1]), truncate))
    # HIGHEST keeps float32 accuracy on accelerators whose default matmul precision is lower.
    highest = jax.lax.Precision.HIGHEST
    out = jnp.matmul(rows, image, precision=highest)
    return jnp.matmul(out, cols.T, precision=highest)


def grid_position(index, n_from: int, n_to: int):
    """Where pixel ``index`` of an ``n_from``-pixel axis sits on an ``n_to``-pixel axis.

    The package's sampling-grid convention (module docstring): both axes span the same field of
    view and share the centred FFT's origin at pixel ``n // 2``, so the position is
    ``n_to // 2 + (index - n_from // 2) * n_to / n_from`` (in pixels of the ``n_to`` axis,
    fractional in general). ``index`` is a number or a numpy array of any shape; the result has
    its shape, float64.
    """
    for name, n in (("n_from", n_from), ("n_to", n_to)):
        if int(n) != n or n < 1:
            raise ValueError(f"{name} must be an int >= 1, got {n}")
    return n_to // 2 + (np.asarray(index) - n_from // 2) * (n_to / n_from)


def bicubic_resize(
    image: jax.Array, out_shape: tuple[int, int], *, antialias: bool = True
) -> jax.Array:
    """Bicubic resampling of the last two axes on the package's centred FFT grid.

    Kernel: Keys' cubic convolution with ``a = -0.5`` (PIL's ``BICUBIC``; OpenCV's ``INTER_CUBIC``
    uses ``a = -0.75``), weights of taps falling outside the image dropped and the rest
    renormalised. With ``antialias=True`` the kernel is widened by the downscaling factor when
    shrinking (like PIL and ``tf.image.resize(antialias=True)``), which low-pass filters before
    decimating; it has no effect when enlarging.

    Grid: input pixel ``i`` lands on output position :func:`grid_position` ``(i, n, N)``, the
    grid of :func:`kspace_crop` / :func:`kspace_zero_pad` (pixel ``n // 2`` on pixel ``N // 2``),
    not the image-processing half-pixel grid (``(i + 0.5) / n`` of the field of view, PIL's and
    ``jax.image.resize``'s), which differs from it by ``N / (2 n) - 1 / 2`` output pixels for
    even sizes (half an HR pixel at x2). Computed with ``jax.image.scale_and_translate``.

    Args:
      image: real or complex image ``(..., H, W)``; real integers are promoted to ``float32``.
      out_shape: ``(h, w)`` output size.
      antialias: widen the kernel when downsampling.

    Returns:
      ``(..., h, w)``, same dtype as the (promoted) input.
    """
    check_ndim(image, "image", min_ndim=2)
    h, w = check_shape_2d(out_shape, "out_shape")
    image = jnp.asarray(image)
    if not jnp.issubdtype(image.dtype, jnp.complexfloating):
        check_real(image, "image")
        image = image.astype(jnp.float32)
    in_h, in_w = image.shape[-2:]
    scale = jnp.array([h / in_h, w / in_w], jnp.float32)
    # scale_and_translate maps input coordinate u (pixel i at u = i + 0.5) to u * scale + t;
    # t puts pixel i at grid_position(i) + 0.5 in output coordinates.
    translation = jnp.array(
        [grid_position(0, n, m) + 0.5 - 0.5 * m / n for n, m in ((in_h, h), (in_w, w))],
        jnp.float32)
    return jax.image.scale_and_translate(
        image, image.shape[:-2] + (h, w), (image.ndim - 2, image.ndim - 1), scale, translation,
        method="bicubic", antialias=antialias,
    )


def _check_sigma(sigma) -> None:
    if isinstance(sigma, int | float):
        check_positive(sigma, "sigma", allow_zero=True)


def complex_gaussian_noise(key: jax.Array, x: jax.Array, *, sigma: float | jax.Array) -> jax.Array:
    """Add circular complex Gaussian noise: ``x + sigma (n1 + i n2)``, ``n1, n2 ~ N(0, 1)``.

    ``sigma`` is the standard deviation of the real and of the imaginary part each (total
    ``E|noise|^2 = 2 sigma^2``), the usual MRI convention, so that adding the noise to k-space with
    the unitary ``fft2c`` gives image-space noise of the same ``sigma``.

    Args:
      key: ``jax.random`` key.
      x: complex array, any shape (image or k-space), ``complex64``.
      sigma: noise level ``>= 0``; a number or an array broadcastable to ``x`` (e.g. per example
        ``(B, 1, 1)``).

    Returns:
      Noisy array, shape and dtype of ``x``.
    """
    check_complex(x, "x")
    _check_sigma(sigma)
    real_dtype = jnp.real(x).dtype
    noise = jax.random.normal(key, (2,) + jnp.shape(x), real_dtype)
    sigma = jnp.asarray(sigma, real_dtype)
    return x + (sigma * jax.lax.complex(noise[0], noise[1])).astype(x.dtype)


def rician_noise(key: jax.Array, magnitude: jax.Array, *, sigma: float | jax.Array) -> jax.Array:
    """Rician-distributed noisy magnitude ``|A + sigma n1 + i sigma n2|``, ``n1, n2 ~ N(0, 1)``.

    The magnitude of a complex image with Gaussian noise of standard deviation ``sigma`` per
    channel; for ``A = 0`` it is Rayleigh with mean ``sigma sqrt(pi / 2)``.

    Args:
      key: ``jax.random`` key.
      magnitude: real non-negative image ``A``, any shape, ``float32``.
      sigma: noise level ``>= 0``, a number or an array broadcastable to ``magnitude``.

    Returns:
      ``float32`` array of the shape of ``magnitude``.
    """
    check_real(magnitude, "magnitude")
    _check_sigma(sigma)
    magnitude = jnp.asarray(magnitude, jnp.float32)
    noise = jax.random.normal(key, (2,) + magnitude.shape, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    return jnp.hypot(magnitude + sigma * noise[0], sigma * noise[1])
