"""Full-reference image-quality metrics: PSNR, NMSE, SSIM, the SSIM contrast term, MS-SSIM, HFEN.

Every metric takes real magnitude images ``pred`` and ``target`` of shape ``(..., H, W)`` (pred
first) and returns one value per image, shape ``(...)``. Computation is in float32 (float64 when
JAX runs with x64 and the input is float64); integer inputs are promoted. All functions are pure
and jit-able; ``ssim``, ``ssim_contrast`` and ``ms_ssim`` are differentiable with respect to
``pred`` and can be used as losses.

``data_range`` (PSNR, SSIM family): ``None`` means the per-image maximum of ``target``. fastMRI
uses the maximum of the whole *volume*; pass it explicitly (a scalar, or an array broadcastable
to the leading axes ``(...)``) to reproduce fastMRI numbers, or use the volume metrics below.

Per image or per volume. :func:`psnr`, :func:`nmse`, :func:`ssim` (and the rest) give one value
per 2-D image, so on a volume ``(S, H, W)`` they give ``S`` values, whose mean is the mean of
per-slice scores (each slice with its own peak unless ``data_range`` is given).
:func:`volume_psnr`, :func:`volume_nmse`, :func:`volume_ssim` and
:func:`fastmri_volume_metrics` are fastMRI's evaluation (``fastmri/evaluate.py``): PSNR and NMSE
over all voxels of the volume at once, with the volume maximum as peak, and SSIM computed per
slice with the volume maximum as ``data_range``, then averaged over slices. Use them to compare
with numbers from fastMRI papers; the two PSNR conventions differ (by 0.1 dB on a brain volume).

Value contract. Inputs must be finite; with ``data_range=None`` every target image needs a
maximum > 0; an explicit ``data_range`` must be finite and > 0; NMSE and HFEN need target images
that are not all zero (they divide by a norm of the target). Called with concrete values (numpy
or JAX arrays, Python numbers) every public metric checks this and raises ``ValueError`` naming
the argument and the first bad image, instead of returning NaN or -inf. Inside ``jax.jit``,
``jax.grad`` or ``vmap`` the values are unknown and are not checked: there a NaN input gives NaN,
a zero peak gives +-inf or NaN. Validate on the host before tracing, or wrap the call in
``jax.experimental.checkify`` with ``checkify.float_checks`` to catch the NaN it produces.

Filtering is done with separable 'valid' convolutions at the highest precision. For SSIM this is
exactly scikit-image's "filter with mode='reflect', then crop (win_size - 1) // 2 pixels at each
border", because the cropped pixels are the only ones whose window touches the padding.

dm-pix ships a Gaussian SSIM, but not the fastMRI/skimage convention (uniform window with the
sample-covariance correction), the contrast term, or MS-SSIM, so these are written here on one
shared local-statistics helper.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import check_ndim, check_positive, check_real, check_same_shape

__all__ = [
    "psnr",
    "nmse",
    "ssim",
    "ssim_contrast",
    "ms_ssim",
    "ms_ssim_num_scales",
    "hfen",
    "volume_psnr",
    "volume_nmse",
    "volume_ssim",
    "fastmri_volume_metrics",
]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Floor applied to the per-scale MS-SSIM terms before the fractional power: x ** w has an
# infinite derivative at 0, so a plain relu would turn a negative cs into a NaN gradient.
_MS_SSIM_FLOOR = 1e-6


# ----------------------------------------------------------------------------------------------
# Shared helpers (also used by the other jaxmri.metrics modules).


def _float_dtype(x) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _abstract(x) -> jax.ShapeDtypeStruct:
    """Shape/dtype stand-in for ``x``: ``_checks.check_real`` calls ``np.asarray`` on its
    argument, which a tracer refuses, so checks see this instead of the (possibly traced) array."""
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def _check_image(x, name: str) -> None:
    check_real(_abstract(x), name)
    check_ndim(x, name, min_ndim=2)


def _check_image_pair(pred, target) -> None:
    _check_image(pred, "pred")
    _check_image(target, "target")
    check_same_shape(pred, target, "pred", "target")


def _as_batch(x) -> tuple[jnp.ndarray, tuple[int, ...]]:
    """Cast to float and flatten the leading axes: ``(..., H, W) -> (N, H, W)``."""
    x = jnp.asarray(x)
    x = x.astype(_float_dtype(x))
    lead = tuple(x.shape[:-2])
    return x.reshape((-1,) + x.shape[-2:]), lead


def _check_data_range(data_range, lead: tuple[int, ...]) -> None:
    """Checks of a ``data_range`` argument for images with leading axes ``lead``: its shape and
    dtype, and, when it is concrete (a number or a numpy/JAX array outside a trace), that every
    value is finite and > 0."""
    if data_range is None:
        return
    check_real(_abstract(data_range), "data_range")
    if _is_concrete(data_range):
        values = np.asarray(data_range, np.float64)
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            raise ValueError(f"data_range must be finite and > 0, got {values[bad].ravel()[0]}"
                             + (f" (in {int(bad.sum())} of {values.size} values)"
                                if values.size > 1 else ""))
    shape = tuple(np.shape(data_range))
    try:
        ok = tuple(np.broadcast_shapes(shape, lead)) == lead
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"data_range must be a scalar or broadcastable to the leading axes {lead}, "
            f"got shape {shape}"
        )


def _is_concrete(x) -> bool:
    """True for Python numbers and numpy/JAX arrays with values; False inside ``jit``/``grad``."""
    return not isinstance(x, jax.core.Tracer)


def _first_image(flags: np.ndarray) -> tuple[int, ...]:
    """Index ``(...)`` of the first True entry of a per-image flag array."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(flags)), flags.shape))


def _check_values(pred, target, data_range, *, peak: bool, energy: bool) -> None:
    """The value contract of the metrics, checked when the inputs are concrete.

    * ``pred`` and ``target`` hold no NaN or inf;
    * ``peak`` (metrics whose ``data_range=None`` is the per-image target maximum): with
      ``data_range=None`` every target image has a maximum > 0;
    * ``energy`` (NMSE, HFEN, which divide by a norm of the target): no target image is all zero.

    Inside ``jax.jit``/``jax.grad`` the values are unknown and nothing is checked (see the
    module docstring). Raises ``ValueError`` naming the argument and the first bad image.
    """
    for name, x in (("pred", pred), ("target", target)):
        if _is_concrete(x):
            values = np.asarray(x)
            finite = np.isfinite(values)
            if not finite.all():
                raise ValueError(f"{name} contains {int(values.size - finite.sum())} non-finite "
                                 "values (NaN or inf); every metric of it would be NaN")
    if not _is_concrete(target):
        return
    values = np.asarray(target)
    if peak and data_range is None:
        maxima = values.max(axis=(-2, -1))
        if (maxima <= 0).any():
            where = _first_image(maxima <= 0)
            raise ValueError(
                f"target image {where} has maximum {maxima[where]} <= 0 (all zero?), so "
                "data_range=None (the per-image target maximum) is not a valid peak: pass "
                "data_range, or leave blank images out"
            )
    if energy:
        blank = ~np.any(values != 0, axis=(-2, -1))
        if blank.any():
            where = _first_image(blank)
            raise ValueError(f"target image {where} is all zero: this metric divides by a norm "
                             "of the target; leave blank images out")


def _data_range(data_range, target: jnp.ndarray, lead: tuple[int, ...]) -> jnp.ndarray:
    """Per-image data range, shape ``(N,)`` for the flattened batch ``target`` ``(N, H, W)``."""
    if data_range is None:
        return jnp.max(target, axis=(-2, -1))
    dr = jnp.broadcast_to(jnp.asarray(data_range, target.dtype), lead)
    return dr.reshape(-1)


def _check_window(win_size, name: str, hw: tuple[int, int]) -> None:
    if not isinstance(win_size, (int, np.integer)) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"{name} must be a positive odd int, got {win_size!r}")
    if win_size > min(hw):
        raise ValueError(f"{name}={win_size} exceeds the image size {hw}")


def _gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised sampled Gaussian of ``size`` taps centred on the middle tap (float64)."""
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _correlate_valid_1d(x: jnp.ndarray, kernel, axis: int) -> jnp.ndarray:
    """'valid' correlation of ``x`` with a 1-D ``kernel`` along ``axis``: ``sum_k g_k x[i + k]``.

    Written as a weighted sum of shifted slices, which XLA fuses into one elementwise loop: on
    the CPU this is 2-3x faster than a one-channel convolution (forward and backward) and it is
    exact float32 on every backend (no reduced-precision convolution on accelerators).
    """
    taps = jnp.asarray(kernel, x.dtype)
    out = x.shape[axis] - taps.shape[0] + 1
    return sum(taps[k] * lax.slice_in_dim(x, k, k + out, axis=axis)
               for k in range(taps.shape[0]))


def _filter_valid(x: jnp.ndarray, kernel_h, kernel_w) -> jnp.ndarray:
    """Separable 'valid' correlation of ``x`` ``(N, H, W)`` with 1-D kernels along H then W."""
    return _correlate_valid_1d(_correlate_valid_1d(x, kernel_h, axis=-2), kernel_w, axis=-1)


def _local_moments(x, y, kernel_1d, cov_norm: float):
    """Windowed means, variances and covariance of ``x`` and ``y`` ``(N, H, W)`` (valid region)."""
    n = x.shape[0]
    f = _filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=0), kernel_1d, kernel_1d)
    ux, uy, uxx, uyy, uxy = (f[i * n : (i + 1) * n] for i in range(5))
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    return ux, uy, vx, vy, vxy


def _safe_sqrt(x):
    """sqrt(max(x, 0)) with a zero (not NaN) gradient where x <= 0."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _resolve_window(window: str, win_size: int | None, sigma: float, hw) -> int:
    """Validate SSIM window options and return the window size (defaults resolved)."""
    if window == "uniform":
        win_size = 7 if win_size is None else win_size
    elif window == "gaussian":
        check_positive(sigma, "sigma")
        if win_size is None:
            # skimage's gaussian_weights=True: truncate 3.5 -> 11 taps for sigma 1.5 (Wang 2004).
            win_size = 2 * int(3.5 * sigma + 0.5) + 1
    else:
        raise ValueError(f"window must be 'uniform' or 'gaussian', got {window!r}")
    _check_window(win_size, "win_size", hw)
    return int(win_size)


def _window(window: str, win_size: int, sigma: float) -> tuple[np.ndarray, float]:
    """(1-D kernel, covariance normalisation) of a validated SSIM window."""
    if window == "uniform":
        # Sample covariance (N / (N - 1)), the fastMRI / skimage default.
        n = win_size**2
        return np.full(win_size, 1.0 / win_size), (n / (n - 1) if n > 1 else 1.0)
    return _gaussian_kernel_1d(win_size, sigma), 1.0  # population covariance (Wang 2004)


# The numerical cores below are jitted with the options static: called eagerly, a metric then
# compiles one program per input shape instead of one per jnp operation (much faster on CPU);
# under an outer jit/vmap they are simply inlined.


@functools.partial(jax.jit, static_argnames=("window", "win_size", "sigma", "k1", "k2"))
def _ssim_means(pred, target, data_range, *, window, win_size, sigma, k1, k2):
    """Per-image means of the SSIM map and of the contrast map, each ``(...)``."""
    x, lead = _as_batch(pred)
    y, _ = _as_batch(target)
    kernel, cov_norm = _window(window, win_size, sigma)
    dr = _data_range(data_range, y, lead)[:, None, None]
    c1 = (k1 * dr) ** 2
    c2 = (k2 * dr) ** 2
    ux, uy, vx, vy, vxy = _local_moments(x, y, kernel, cov_norm)
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    vxp, vyp = jnp.maximum(vx, 0.0), jnp.maximum(vy, 0.0)
    contrast_map = (2 * _safe_sqrt(vxp * vyp) + c2) / (vxp + vyp + c2)
    return (jnp.mean(ssim_map, axis=(-2, -1)).reshape(lead),
            jnp.mean(contrast_map, axis=(-2, -1)).reshape(lead))


def _ssim_family(pred, target, data_range, window, win_size, sigma, k1, k2):
    _check_image_pair(pred, target)
    check_positive(k1, "k1", allow_zero=True)
    check_positive(k2, "k2", allow_zero=True)
    _check_data_range(data_range, tuple(np.shape(pred)[:-2]))
    _check_values(pred, target, data_range, peak=True, energy=False)
    win_size = _resolve_window(window, win_size, sigma, tuple(np.shape(pred)[-2:]))
    return _ssim_means(pred, target, data_range, window=window, win_size=win_size,
                       sigma=float(sigma), k1=float(k1), k2=float(k2))


# ----------------------------------------------------------------------------------------------
# Public metrics.


def psnr(pred, target, *, data_range=None) -> jnp.ndarray:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / mse)`` per 2-D image.

    Per-image convention: a volume ``(S, H, W)`` gives ``S`` values. fastMRI's volume PSNR (one
    MSE over all voxels, the volume maximum as peak) is :func:`volume_psnr`.

    Args:
      pred, target: real images ``(..., H, W)`` of the same shape.
      data_range: peak value. ``None`` (default) uses the per-image maximum of ``target``;
        fastMRI uses the volume maximum, so pass it (scalar or array broadcastable to ``(...)``).

    Returns:
      ``(...)`` float array; ``inf`` where ``pred == target``.
    """
    _check_image_pair(pred, target)
    _check_data_range(data_range, tuple(np.shape(pred)[:-2]))
    _check_values(pred, target, data_range, peak=True, energy=False)
    return _psnr(pred, target, data_range)


@jax.jit
def _psnr(pred, target, data_range):
    x, lead = _as_batch(pred)
    y, _ = _as_batch(target)
    dr = _data_range(data_range, y, lead)
    mse = jnp.mean((x - y) ** 2, axis=(-2, -1))
    return (10.0 * jnp.log10(dr**2 / mse)).reshape(lead)


def nmse(pred, target) -> jnp.ndarray:
    """Normalised mean squared error ``||target - pred||^2 / ||target||^2`` per 2-D image.

    Per-image convention; fastMRI's NMSE over a whole volume is :func:`volume_nmse`.

    Args:
      pred, target: real images ``(..., H, W)`` of the same shape.

    Returns:
      ``(...)`` float array (fastMRI's NMSE, computed per image rather than per volume).
    """
    _check_image_pair(pred, target)
    _check_values(pred, target, None, peak=False, energy=True)
    return _nmse(pred, target)


@jax.jit
def _nmse(pred, target):
    x, lead = _as_batch(pred)
    y, _ = _as_batch(target)
    err = jnp.sum((y - x) ** 2, axis=(-2, -1))
    return (err / jnp.sum(y**2, axis=(-2, -1))).reshape(lead)


def ssim(
    pred,
    target,
    *,
    data_range=None,
    window: str = "uniform",
    win_size: int | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jnp.ndarray:
    """Mean structural similarity per 2-D image (differentiable).

    Per-image convention with the per-image target maximum as ``data_range`` by default;
    fastMRI's volume SSIM (each slice with the volume maximum, averaged) is :func:`volume_ssim`.

    Conventions (each matches ``skimage.metrics.structural_similarity`` to float32 precision):

    * ``window="uniform"`` (default, fastMRI): ``win_size`` x ``win_size`` box window (default 7),
      sample covariance (``N / (N - 1)`` correction): skimage's defaults.
    * ``window="gaussian"``: Gaussian-weighted statistics with standard deviation ``sigma`` and
      population covariance, the Wang et al. (2004) SSIM: skimage's ``gaussian_weights=True,
      use_sample_covariance=False`` (truncate 3.5). ``win_size=None`` gives skimage's window,
      ``2 * int(3.5 * sigma + 0.5) + 1`` taps (11 for sigma 1.5).

    The SSIM map is averaged over the pixels whose window lies inside the image, i.e. skimage's
    map cropped by ``(win_size - 1) // 2`` at every border.

    Args:
      pred, target: real images ``(..., H, W)`` of the same shape.
      data_range: dynamic range for ``C1 = (k1 R)^2, C2 = (k2 R)^2``; ``None`` uses the
        per-image maximum of ``target`` (fastMRI passes the volume maximum).
      window: ``"uniform"`` or ``"gaussian"``.
      win_size: odd window side, at most ``min(H, W)``.
      sigma: Gaussian standard deviation (``window="gaussian"`` only).
      k1, k2: SSIM constants.

    Returns:
      ``(...)`` float array, 1 for identical images.
    """
    return _ssim_family(pred, target, data_range, window, win_size, sigma, k1, k2)[0]


def ssim_contrast(
    pred,
    target,
    *,
    data_range=None,
    window: str = "uniform",
    win_size: int | None = None,
    sigma: float = 1.5,
    k2: float = 0.03,
) -> jnp.ndarray:
    """Mean SSIM *contrast* term ``c = (2 sx sy + C2) / (sx^2 + sy^2 + C2)`` per image.

    This is the sharpness measure reported as "Contrast" by InvSharpNet (paper 000, Table 2):
    it compares local standard deviations ``sx, sy`` only (not the covariance, which would give
    the contrast-structure term of MS-SSIM). Windows, covariance normalisation, border crop and
    ``data_range`` follow :func:`ssim` exactly. Local variances are clamped at 0 before the
    square root (round-off can make them slightly negative); the result is 1 for identical
    images and drops when ``pred`` loses (or gains) local contrast, e.g. when it is blurred.

    Args:
      pred, target: real images ``(..., H, W)`` of the same shape.
      data_range, window, win_size, sigma, k2: as in :func:`ssim`.

    Returns:
      ``(...)`` float array in ``(0, 1]``.
    """
    return _ssim_family(pred, target, data_range, window, win_size, sigma, 0.01, k2)[1]


def _avg_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 average pooling with stride 2 of ``(N, H, W)``; an odd last row/column is dropped."""
    n, h, w = x.shape
    x = x[:, : 2 * (h // 2), : 2 * (w // 2)]
    return x.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def ms_ssim_num_scales(shape: Sequence[int], *, win_size: int = 11, max_scales: int = 5) -> int:
    """Number of MS-SSIM scales used for images of spatial ``shape`` ``(H, W)``.

    The largest ``n <= max_scales`` such that the short side after ``n - 1`` halvings
    (``min(H, W) // 2**(n - 1)``, integer division at each step) is still ``>= win_size``.
    """
    side = min(int(s) for s in shape[-2:])
    n = 0
    while n < max_scales and side >= win_size:
        n += 1
        side //= 2
    return n


def ms_ssim(
    pred,
    target,
    *,
    data_range=None,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jnp.ndarray:
    """Multi-scale SSIM (Wang, Simoncelli and Bovik 2003) per image (differentiable).

    At scale ``j`` the mean contrast-structure term ``cs_j`` (mean of
    ``(2 sxy + C2) / (sx^2 + sy^2 + C2)``) is computed with a ``win_size``-tap Gaussian window
    (``sigma``, population covariance, 'valid' region); the last scale uses the full SSIM
    (luminance times cs). Images are 2x2 average-pooled between scales (an odd last row/column is
    dropped). The result is ``prod_j max(term_j, 1e-6) ** w_j``, as in ``VainF/pytorch-msssim``
    except that the floor is 1e-6 rather than 0 so that the gradient stays finite when a term is
    negative.

    Small images: the standard 5 scales need ``min(H, W) >= win_size * 2**4`` (176 for 11 taps).
    For smaller images the largest number of scales ``n`` that fits is used
    (:func:`ms_ssim_num_scales`) and the first ``n`` weights are renormalised to sum to 1; with a
    single scale this is the Gaussian SSIM. ``min(H, W) < win_size`` raises ``ValueError``.

    Args:
      pred, target: real images ``(..., H, W)`` of the same shape.
      data_range: as in :func:`ssim` (the same ``C1, C2`` at every scale).
      weights: per-scale exponents, finest first.
      win_size: odd Gaussian window size.
      sigma: Gaussian standard deviation.
      k1, k2: SSIM constants.

    Returns:
      ``(...)`` float array, 1 for identical images.
    """
    _check_image_pair(pred, target)
    weights = tuple(float(w) for w in weights)
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    check_positive(sigma, "sigma")
    check_positive(k1, "k1", allow_zero=True)
    check_positive(k2, "k2", allow_zero=True)
    _check_data_range(data_range, tuple(np.shape(pred)[:-2]))
    _check_values(pred, target, data_range, peak=True, energy=False)
    _check_window(win_size, "win_size", tuple(np.shape(pred)[-2:]))
    return _ms_ssim(pred, target, data_range, weights=weights, win_size=int(win_size),
                    sigma=float(sigma), k1=float(k1), k2=float(k2))


@functools.partial(jax.jit, static_argnames=("weights", "win_size", "sigma", "k1", "k2"))
def _ms_ssim(pred, target, data_range, *, weights, win_size, sigma, k1, k2):
    n_scales = ms_ssim_num_scales(pred.shape[-2:], win_size=win_size, max_scales=len(weights))
    w = np.asarray(weights[:n_scales]) / sum(weights[:n_scales])
    kernel = _gaussian_kernel_1d(win_size, sigma)
    x, lead = _as_batch(pred)
    y, _ = _as_batch(target)
    dr = _data_range(data_range, y, lead)[:, None, None]
    c1 = (k1 * dr) ** 2
    c2 = (k2 * dr) ** 2
    result = jnp.ones(x.shape[0], x.dtype)
    for j in range(n_scales):
        if j > 0:
            x, y = _avg_pool_2x2(x), _avg_pool_2x2(y)
        ux, uy, vx, vy, vxy = _local_moments(x, y, kernel, 1.0)
        cs_map = (2 * vxy + c2) / (vx + vy + c2)
        if j == n_scales - 1:
            term_map = cs_map * (2 * ux * uy + c1) / (ux**2 + uy**2 + c1)
        else:
            term_map = cs_map
        term = jnp.maximum(jnp.mean(term_map, axis=(-2, -1)), _MS_SSIM_FLOOR)
        result = result * term ** w[j]
    return result.reshape(lead)


def _log_kernels(*, sigma: float = 1.5, size: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D Gaussian and second-derivative-of-Gaussian kernels of the HFEN LoG filter.

    ``g(x) = exp(-x^2 / 2 sigma^2)`` normalised to sum 1 over ``size`` taps, and
    ``g''(x) = g(x) (x^2 - sigma^2) / sigma^4``: exactly the kernels of
    ``scipy.ndimage.gaussian_laplace(..., sigma=sigma, radius=size // 2)``.
    The 2-D LoG is ``g'' (x) g + g (x) g''`` (a ``size`` x ``size`` kernel).
    """
    x = np.arange(size, dtype=np.float64) - size // 2
    g = _gaussian_kernel_1d(size, sigma)
    return g, g * (x**2 - sigma**2) / sigma**4


def _laplacian_of_gaussian(x: jnp.ndarray, sigma: float, size: int) -> jnp.ndarray:
    g, d2 = _log_kernels(sigma=sigma, size=size)
    r = size // 2
    # 'symmetric' padding is scipy.ndimage's mode='reflect' (edge sample repeated).
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r)), mode="symmetric")
    return _filter_valid(xp, d2, g) + _filter_valid(xp, g, d2)


def hfen(pred, target, *, sigma: float = 1.5, size: int = 15) -> jnp.ndarray:
    """High-frequency error norm ``||LoG(pred) - LoG(target)||_2 / ||LoG(target)||_2`` per image.

    The Laplacian of Gaussian is a ``size`` x ``size`` (15 x 15), ``sigma`` = 1.5 filter applied
    as the sum of two separable passes (see ``_log_kernels``) with scipy's ``mode='reflect'``
    border: it equals ``scipy.ndimage.gaussian_laplace(x, sigma, radius=size // 2)``. (MATLAB's
    ``fspecial('log', 15, 1.5)`` additionally forces the kernel to sum to zero; the difference
    is a multiple of the local mean and is not reproduced.)

    Args:
      pred, target: real images ``(..., H, W)`` of the same shape, ``min(H, W) >= size``.
      sigma: Gaussian standard deviation.
      size: odd kernel size.

    Returns:
      ``(...)`` float array, 0 for identical images.
    """
    _check_image_pair(pred, target)
    check_positive(sigma, "sigma")
    _check_window(size, "size", tuple(np.shape(pred)[-2:]))
    _check_values(pred, target, None, peak=False, energy=True)
    return _hfen(pred, target, sigma=float(sigma), size=int(size))


@functools.partial(jax.jit, static_argnames=("sigma", "size"))
def _hfen(pred, target, *, sigma, size):
    x, lead = _as_batch(pred)
    y, _ = _as_batch(target)
    # One filter call on both stacks: the same compiled code for x and y, so hfen(t, t) == 0.
    log_x, log_y = jnp.split(_laplacian_of_gaussian(jnp.concatenate([x, y]), sigma, size), 2)
    num = jnp.sqrt(jnp.sum((log_x - log_y) ** 2, axis=(-2, -1)))
    den = jnp.sqrt(jnp.sum(log_y**2, axis=(-2, -1)))
    return (num / den).reshape(lead)


# ----------------------------------------------------------------------------------------------
# fastMRI's volume evaluation (fastmri/evaluate.py).


def _check_volume_pair(pred, target) -> tuple[int, ...]:
    _check_image_pair(pred, target)
    check_ndim(pred, "pred", min_ndim=3)
    return tuple(np.shape(pred))


def _voxels_as_one_image(x):
    """``(..., S, H, W) -> (..., S * H, W)``: the per-image metrics then see one volume."""
    shape = np.shape(x)
    return jnp.reshape(jnp.asarray(x), shape[:-3] + (shape[-3] * shape[-2], shape[-1]))


def volume_psnr(pred, target, *, data_range=None) -> jnp.ndarray:
    """fastMRI's volume PSNR in dB: ``10 log10(data_range^2 / mse)``, MSE over all voxels.

    fastMRI's ``evaluate.psnr`` (``skimage.metrics.peak_signal_noise_ratio(gt, pred,
    data_range=gt.max())`` on the whole volume). This is not the mean of the per-slice
    :func:`psnr` values: one MSE over the volume, one peak (the volume maximum).

    Args:
      pred, target: real volumes ``(..., S, H, W)`` of the same shape (slices ``S``).
      data_range: peak value; ``None`` (default) uses the maximum of each target volume.

    Returns:
      ``(...)`` float array, one value per volume.
    """
    _check_volume_pair(pred, target)
    return psnr(_voxels_as_one_image(pred), _voxels_as_one_image(target),
                data_range=data_range)


def volume_nmse(pred, target) -> jnp.ndarray:
    """fastMRI's volume NMSE ``||target - pred||^2 / ||target||^2``, norms over all voxels.

    fastMRI's ``evaluate.nmse``. Not the mean of the per-slice :func:`nmse` values.

    Args:
      pred, target: real volumes ``(..., S, H, W)`` of the same shape.

    Returns:
      ``(...)`` float array, one value per volume.
    """
    _check_volume_pair(pred, target)
    return nmse(_voxels_as_one_image(pred), _voxels_as_one_image(target))


def volume_ssim(pred, target, *, data_range=None) -> jnp.ndarray:
    """fastMRI's volume SSIM: the SSIM of every slice with the volume maximum, averaged.

    fastMRI's ``evaluate.ssim``: ``skimage.metrics.structural_similarity(gt[s], pred[s],
    data_range=gt.max())`` for each slice ``s`` (7 x 7 uniform window, K = 0.01 / 0.03,
    sample covariance: the defaults of :func:`ssim`), then the mean over slices. Blank slices
    are fine here (the peak is the volume's).

    Args:
      pred, target: real volumes ``(..., S, H, W)`` of the same shape.
      data_range: ``None`` (default) uses the maximum of each target volume.

    Returns:
      ``(...)`` float array, one value per volume.
    """
    _check_volume_pair(pred, target)
    if data_range is None:
        _check_values(pred, target, None, peak=False, energy=False)
        data_range = jnp.max(jnp.asarray(target), axis=(-3, -2, -1))
        if _is_concrete(data_range) and bool(jnp.any(data_range <= 0)):
            raise ValueError("a target volume has maximum <= 0 (all zero?), so data_range=None "
                             "(the volume maximum) is not a valid peak: pass data_range")
    # One range per volume, broadcast over its slices: (...) -> (..., 1).
    per_slice = ssim(pred, target, data_range=jnp.asarray(data_range)[..., None])
    return jnp.mean(per_slice, axis=-1)


def fastmri_volume_metrics(pred, target) -> dict[str, jnp.ndarray]:
    """fastMRI's evaluation of reconstructed volumes: ``{'PSNR', 'NMSE', 'SSIM'}``.

    :func:`volume_psnr`, :func:`volume_nmse` and :func:`volume_ssim`, each with the target
    volume's maximum as peak, as ``fastmri/evaluate.py`` computes them for one volume.

    Args:
      pred, target: real volumes ``(..., S, H, W)`` (magnitude images, ``pred`` first).

    Returns:
      dict of ``(...)`` float arrays.
    """
    return {"PSNR": volume_psnr(pred, target), "NMSE": volume_nmse(pred, target),
            "SSIM": volume_ssim(pred, target)}
