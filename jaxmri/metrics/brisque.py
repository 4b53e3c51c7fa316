"""BRISQUE natural-scene statistics: MSCN coefficients and the 36 BRISQUE features.

Mittal, Moorthy and Bovik, "No-reference image quality assessment in the spatial domain" (IEEE
TIP 2012). The SVR that maps the 36 features to a quality score comes with paper 001's issue.

Conventions: images are real ``(..., H, W)`` with values in ``[0, 255]`` (the scale on which the
MSCN constant ``C = 1`` and the published feature ranges are defined; :func:`brisque_features`
rescales from ``[0, data_range]``). Each image gives 18 features at full scale and 18 at half
scale:

``[ggd_shape, ggd_variance]`` of the MSCN coefficients, then for each neighbour product
(horizontal ``(0, 1)``, vertical ``(1, 0)``, main diagonal ``(1, 1)``, anti-diagonal
``(-1, 1)`` shifts, circular as MATLAB's ``circshift``) ``[aggd_shape, aggd_mean,
aggd_left_variance, aggd_right_variance]``.

Shape parameters are fitted by moment matching on the grid ``0.2:0.001:10`` (nearest table
entry), as in the reference MATLAB code and ``piq``. Differences from the MATLAB reference, both
deliberate: the local Gaussian statistics use symmetric ('reflect') borders instead of zero
padding, so that a constant image has zero MSCN everywhere; the half scale uses
``jax.image.resize`` (Keys bicubic, antialiased, like MATLAB's ``imresize(I, 0.5)``) whose border
handling renormalises the kernel instead of padding symmetrically.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln

from jaxmri._checks import check_positive
from jaxmri.metrics.quality import (
    _as_batch,
    _check_image,
    _filter_valid,
    _gaussian_kernel_1d,
    _safe_sqrt,
)

__all__ = ["mscn_coefficients", "fit_ggd", "fit_aggd", "brisque_features", "SHAPE_GRID"]

SHAPE_GRID = np.round(0.2 + 0.001 * np.arange(9801), 3)  # 0.2, 0.201, ..., 10.0
# GGD: E[x^2] / E[|x|]^2 = G(1/a) G(3/a) / G(2/a)^2, decreasing in the shape a.
_GGD_RATIO = np.exp(gammaln(1 / SHAPE_GRID) + gammaln(3 / SHAPE_GRID) - 2 * gammaln(2 / SHAPE_GRID))
# AGGD: G(2/a)^2 / (G(1/a) G(3/a)), the reciprocal, matched against the asymmetry-corrected
# statistic of Lasmar et al. 2009.
_AGGD_RATIO = 1.0 / _GGD_RATIO
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))
_TINY = 1e-12


def _mscn(x: jnp.ndarray, sigma: float, c: float) -> jnp.ndarray:
    """MSCN of a flat batch ``(N, H, W)``: 7x7 Gaussian local mean/std, symmetric borders."""
    kernel = _gaussian_kernel_1d(7, sigma)
    # Local statistics are shift-invariant. Centring on one pixel per image makes a constant
    # image give exactly 0 whatever the rounding of the filter sums, and shrinks the
    # cancellation in E[x^2] - E[x]^2.
    x = x - x[:, :1, :1]
    xp = jnp.pad(x, ((0, 0), (3, 3), (3, 3)), mode="symmetric")
    mu = _filter_valid(xp, kernel, kernel)
    second = _filter_valid(xp * xp, kernel, kernel)
    std = _safe_sqrt(jnp.abs(second - mu * mu))
    return (x - mu) / (std + c)


def mscn_coefficients(image, *, sigma: float = 7 / 6, c: float = 1.0) -> jnp.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (s + c)``.

    ``mu`` and ``s`` are the local mean and standard deviation under a 7x7 Gaussian window of
    standard deviation ``sigma`` (normalised to sum 1, symmetric borders).

    Args:
      image: real images ``(..., H, W)`` with values in ``[0, 255]`` (``c = 1`` assumes it).
      sigma: Gaussian standard deviation (7/6 as in BRISQUE).
      c: stabilising constant.

    Returns:
      ``(..., H, W)`` float array; 0 for a constant image.
    """
    _check_image(image, "image")
    check_positive(sigma, "sigma")
    check_positive(c, "c", allow_zero=True)
    return _mscn_impl(image, sigma=float(sigma), c=float(c))


# Jitted cores (options static): eager calls compile one program per shape, not one per op.
@functools.partial(jax.jit, static_argnames=("sigma", "c"))
def _mscn_impl(image, *, sigma, c):
    x, lead = _as_batch(image)
    return _mscn(x, sigma, c).reshape(lead + x.shape[-2:])


def _nearest_shape(stat: jnp.ndarray, table: np.ndarray) -> jnp.ndarray:
    """Index of the grid shape whose moment ratio is closest to ``stat`` (shape ``(N,)``)."""
    return jnp.argmin(jnp.abs(stat[:, None] - jnp.asarray(table, stat.dtype)), axis=-1)


def _fit_ggd(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    variance = jnp.mean(x * x, axis=(-2, -1))
    mean_abs = jnp.mean(jnp.abs(x), axis=(-2, -1))
    idx = _nearest_shape(variance / jnp.maximum(mean_abs**2, _TINY), _GGD_RATIO)
    return jnp.asarray(SHAPE_GRID, x.dtype)[idx], variance


def _fit_aggd(x: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    left, right = x < 0, x > 0
    sq = x * x
    left_var = jnp.sum(jnp.where(left, sq, 0.0), axis=(-2, -1)) / jnp.maximum(
        jnp.sum(left, axis=(-2, -1)), 1
    )
    right_var = jnp.sum(jnp.where(right, sq, 0.0), axis=(-2, -1)) / jnp.maximum(
        jnp.sum(right, axis=(-2, -1)), 1
    )
    left_std, right_std = jnp.sqrt(left_var), jnp.sqrt(right_var)
    g = left_std / jnp.maximum(right_std, _TINY)
    r_hat = jnp.mean(jnp.abs(x), axis=(-2, -1)) ** 2 / jnp.maximum(
        jnp.mean(sq, axis=(-2, -1)), _TINY
    )
    r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    idx = _nearest_shape(r_norm, _AGGD_RATIO)
    shape = jnp.asarray(SHAPE_GRID, x.dtype)[idx]
    # mean = (s_r - s_l) G(2/a) / sqrt(G(1/a) G(3/a)) = (s_r - s_l) sqrt(AGGD ratio at a).
    mean = (right_std - left_std) * jnp.sqrt(jnp.asarray(_AGGD_RATIO, x.dtype)[idx])
    return shape, mean, left_var, right_var


def fit_ggd(x) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Moment-matching fit of a zero-mean generalised Gaussian to each image's values.

    The shape ``a`` is the grid value (:data:`SHAPE_GRID`) whose ratio
    ``G(1/a) G(3/a) / G(2/a)^2`` is nearest to ``E[x^2] / E[|x|]^2``.

    Args:
      x: real samples ``(..., H, W)``; the fit pools the last two axes.

    Returns:
      ``(shape, variance)``, each ``(...)``; ``variance = E[x^2]``.
    """
    _check_image(x, "x")
    return _fit_ggd_impl(x)


@jax.jit
def _fit_ggd_impl(x):
    xb, lead = _as_batch(x)
    return tuple(v.reshape(lead) for v in _fit_ggd(xb))


def fit_aggd(x) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Moment-matching fit of an asymmetric generalised Gaussian to each image's values.

    ``left_var`` / ``right_var`` are the mean squares of the negative / positive values,
    ``g = sqrt(left_var / right_var)``, ``r = E[|x|]^2 / E[x^2]``; the shape ``a`` is the grid
    value whose ``G(2/a)^2 / (G(1/a) G(3/a))`` is nearest to ``r (g^3 + 1)(g + 1) / (g^2 + 1)^2``;
    ``mean = (sqrt(right_var) - sqrt(left_var)) G(2/a) / sqrt(G(1/a) G(3/a))``.

    Args:
      x: real samples ``(..., H, W)``; the fit pools the last two axes.

    Returns:
      ``(shape, mean, left_var, right_var)``, each ``(...)``.
    """
    _check_image(x, "x")
    return _fit_aggd_impl(x)


@jax.jit
def _fit_aggd_impl(x):
    xb, lead = _as_batch(x)
    return tuple(v.reshape(lead) for v in _fit_aggd(xb))


def _scale_features(x: jnp.ndarray) -> jnp.ndarray:
    """The 18 features of one scale for a flat batch ``(N, H, W)`` -> ``(N, 18)``."""
    m = _mscn(x, 7 / 6, 1.0)
    n = m.shape[0]
    # The four neighbour products go through one AGGD fit (a (4N, H, W) batch): one grid search
    # in the compiled program instead of four.
    products = jnp.concatenate([m * jnp.roll(m, shift, axis=(-2, -1)) for shift in _SHIFTS])
    aggd = jnp.stack(_fit_aggd(products), axis=-1).reshape(len(_SHIFTS), n, 4)
    ggd = jnp.stack(_fit_ggd(m), axis=-1)
    return jnp.concatenate([ggd, jnp.moveaxis(aggd, 0, 1).reshape(n, 4 * len(_SHIFTS))], axis=-1)


def brisque_features(image, *, data_range: float = 255.0) -> jnp.ndarray:
    """The 36 BRISQUE features (18 at full scale, then 18 at half scale) per image.

    Args:
      image: real images ``(..., H, W)`` with values in ``[0, data_range]``, ``min(H, W) >= 14``
        (the 7x7 window must fit at half scale).
      data_range: value of white; images are rescaled to ``[0, 255]`` first.

    Returns:
      ``(..., 36)`` float array, ordered as in the module docstring. Not differentiable (the
      shape fits are grid look-ups).
    """
    _check_image(image, "image")
    if isinstance(data_range, (int, float)):
        check_positive(data_range, "data_range")
    hw = tuple(np.shape(image)[-2:])
    if min(hw) < 14:
        raise ValueError(f"image must be at least 14 pixels a side, got spatial shape {hw}")
    return _brisque_impl(image, data_range)


@jax.jit
def _brisque_impl(image, data_range):
    x, lead = _as_batch(image)
    hw = x.shape[-2:]
    x = x * (255.0 / data_range)
    half = jax.image.resize(
        x, (x.shape[0], hw[0] // 2, hw[1] // 2), method="bicubic", antialias=True
    )
    feats = jnp.concatenate([_scale_features(x), _scale_features(half)], axis=-1)
    return feats.reshape(lead + (36,))
