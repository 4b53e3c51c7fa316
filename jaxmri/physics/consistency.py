"""Data-consistency (DC) layers: pull a network's estimate back towards the measured k-space.

Conventions (see :mod:`jaxmri`): k-space is centred complex ``(..., H, W)`` (or multi-coil
``(..., C, H, W)``), ``complex64``; masks are real, typically ``float32`` 0/1 of shape ``(H, W)``,
and broadcast against the k-space. ``kspace_measured`` holds the acquired samples; its values
where the mask is 0 are never used (they are multiplied by the mask), so zero-filled or full
k-space both work.

All layers are pure, elementwise in k-space, differentiable with respect to every argument
(including a traced, learnable ``noise_lambda`` or ``rho``) and work under ``jax.jit`` and
``jax.vmap``. They are the DC steps of the cascades (DC-CNN), IFR-Net and InvSharpNet.

Multi-coil data have two different "hard DC" operations, and only one is a projection:

* :func:`image_dc` (coil-wise DC): expand the image into coil k-space, replace the measured
  samples coil by coil, combine the coils with the maps: ``S^H F^H [(1 - M) F S x + M y]``. This
  is the data-consistency plus coil-combination step of VS-Net (Duan et al. 2019, the DC that
  paper 000 cites) and of SENSE-based cascades. The replacement is exact in coil k-space, but the
  combined image is in general *not* consistent (``M F S x' != y``) and the map is not
  idempotent, because ``S S^H`` is not the identity on coil images.
* :func:`projection_dc` (exact): the orthogonal projection of the image onto the images that
  explain the measurement, ``argmin ||x' - x||`` subject to ``M F S x' = y`` (onto the
  least-squares solutions when no image explains a noisy ``y``), by conjugate gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmri._checks import (
    check_broadcastable,
    check_complex,
    check_ndim,
    check_positive,
    check_real,
)
from jaxmri.physics.fft import fft2c, ifft2c
from jaxmri.physics.sense import conjugate_gradient, sense_adjoint, sense_forward

__all__ = ["hard_dc", "soft_dc", "proximal_dc", "image_dc", "projection_dc"]


def _check_kspace_pair(kspace_pred, kspace_measured, mask, pred_name: str) -> None:
    check_ndim(kspace_pred, pred_name, min_ndim=2)
    check_complex(kspace_pred, pred_name)
    check_ndim(kspace_measured, "kspace_measured", min_ndim=2)
    check_complex(kspace_measured, "kspace_measured")
    shape = check_broadcastable(kspace_pred, kspace_measured, pred_name, "kspace_measured")
    check_real(mask, "mask")
    check_ndim(mask, "mask", min_ndim=2)
    out = check_broadcastable(mask, jax.ShapeDtypeStruct(shape, jnp.bool_), "mask", "the k-space")
    if out != shape:
        raise ValueError(f"mask with shape {np.shape(mask)} must broadcast to the k-space shape "
                         f"{shape} without enlarging it")


def _real_mask(mask, like: jax.Array) -> jax.Array:
    return jnp.asarray(mask).astype(jnp.real(like).dtype)


def _is_python_scalar(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def hard_dc(kspace_pred: jax.Array, kspace_measured: jax.Array, mask: jax.Array) -> jax.Array:
    """Hard data consistency ``k = (1 - m) k_pred + m k_meas`` (noise-free replacement).

    Args:
      kspace_pred: predicted centred k-space ``(..., H, W)`` (any coil axis included),
        ``complex64``.
      kspace_measured: measured k-space, broadcastable against ``kspace_pred``.
      mask: real mask broadcastable to the k-space, typically ``(H, W)`` 0/1 ``float32``.

    Returns:
      k-space of the broadcast shape: the measurement where ``m = 1``, the prediction where
      ``m = 0`` (a convex blend for fractional masks).
    """
    _check_kspace_pair(kspace_pred, kspace_measured, mask, "kspace_pred")
    m = _real_mask(mask, kspace_pred)
    # This form (not k + m (k0 - k)) reproduces the measurement bit for bit where m == 1.
    return (1.0 - m) * kspace_pred + m * kspace_measured


def soft_dc(
    kspace_pred: jax.Array,
    kspace_measured: jax.Array,
    mask: jax.Array,
    *,
    noise_lambda: float | jax.Array,
) -> jax.Array:
    """Noisy data consistency of DC-CNN: ``k = (1 - m) k + m (k + lambda k0) / (1 + lambda)``.

    ``k`` is the prediction and ``k0`` the measurement. This is the minimiser over the sampled
    entries of ``|k' - k|^2 + lambda |k' - k0|^2``; ``lambda = 0`` keeps the prediction and
    ``lambda -> inf`` is :func:`hard_dc` (a Python ``float('inf')`` is accepted and dispatches to
    it). It is evaluated as ``k + m * lambda / (1 + lambda) * (k0 - k)``, which is the same
    expression but stays accurate for large ``lambda``.

    Args:
      kspace_pred, kspace_measured, mask: as in :func:`hard_dc`.
      noise_lambda: ``lambda >= 0``; a Python number or a traced (learnable) scalar or array
        broadcastable to the k-space.

    Returns:
      k-space of the broadcast shape, ``complex64``.
    """
    _check_kspace_pair(kspace_pred, kspace_measured, mask, "kspace_pred")
    if _is_python_scalar(noise_lambda):
        check_positive(noise_lambda, "noise_lambda", allow_zero=True)
        if math.isinf(noise_lambda):
            return hard_dc(kspace_pred, kspace_measured, mask)
    m = _real_mask(mask, kspace_pred)
    weight = noise_lambda / (1.0 + noise_lambda)
    return kspace_pred + (m * weight) * (kspace_measured - kspace_pred)


def proximal_dc(
    image: jax.Array,
    kspace_measured: jax.Array,
    mask: jax.Array,
    *,
    rho: float | jax.Array,
) -> jax.Array:
    """Closed-form proximal data-consistency step (IFR-Net / ADMM-Net reconstruction layer).

    Returns the image ``x`` that minimises

        (F x - y)^H M (F x - y) + rho ||x - x_t||^2,

    with ``x_t = image``, ``y = kspace_measured``, ``M = diag(mask)`` and ``F = fft2c``. Since
    ``F`` is unitary the normal equations are diagonal in k-space, giving paper 002's eq. 6:

        x = F^-1 ( (M y + rho F x_t) / (M + rho) ).

    With ``x_t = 0`` (IFR-Net's first stage) this is ``F^-1(M y / (M + rho))``. For a 0/1 mask it
    equals :func:`soft_dc` on ``fft2c(x_t)`` with ``noise_lambda = 1 / rho``. The step is
    elementwise per image, so coil images ``(..., C, H, W)`` with per-coil k-space work too.

    Args:
      image: current image estimate ``x_t``, ``(..., H, W)``, ``complex64``.
      kspace_measured: centred k-space ``y``, broadcastable against ``image``.
      mask: real mask broadcastable to the k-space, typically ``(H, W)``.
      rho: penalty ``rho > 0``; a Python number or a traced (learnable) scalar or array.

    Returns:
      Image ``(..., H, W)``, ``complex64``.
    """
    _check_kspace_pair(image, kspace_measured, mask, "image")
    if _is_python_scalar(rho):
        check_positive(rho, "rho")
    m = _real_mask(mask, image)
    kspace = (m * kspace_measured + rho * fft2c(image)) / (m + rho)
    return ifft2c(kspace)


def image_dc(
    image: jax.Array,
    kspace_measured: jax.Array,
    mask: jax.Array,
    *,
    maps: jax.Array | None = None,
    noise_lambda: float | jax.Array | None = None,
) -> jax.Array:
    """Coil-wise data consistency applied to an image: go to k-space, apply DC, come back.

    Single-coil (``maps is None``): ``ifft2c(dc(fft2c(x), y, m))`` with ``x`` and ``y`` shaped
    ``(..., H, W)``; with hard DC this is the exact projection onto the consistent images.
    Multi-coil: ``S^H F^H dc(F S x, y, m)`` with ``maps`` ``(..., C, H, W)`` and ``y``
    ``(..., C, H, W)``: DC is exact per coil in k-space, then the coils are combined with the maps
    (VS-Net's DC and weighted-average blocks). The combined image is NOT exactly consistent and
    the map is not idempotent, even with ``sum_c |S_c|^2 = 1`` (``S S^H != I``); an image that is
    already consistent (``M F S x = y``) is a fixed point. For the exact projection use
    :func:`projection_dc`. ``dc`` is :func:`hard_dc` for ``noise_lambda is None`` and
    :func:`soft_dc` otherwise.

    Args:
      image: complex image ``(..., H, W)``, ``complex64``.
      kspace_measured: measured k-space, ``(..., H, W)`` single-coil or ``(..., C, H, W)``.
      mask: real mask broadcastable to the k-space, typically ``(H, W)``.
      maps: optional coil sensitivities ``(..., C, H, W)``.
      noise_lambda: ``None`` for hard DC, else the soft-DC ``lambda``.

    Returns:
      Image ``(..., H, W)``, ``complex64``.
    """
    check_ndim(image, "image", min_ndim=2)
    check_complex(image, "image")

    def dc(kspace):
        if noise_lambda is None:
            return hard_dc(kspace, kspace_measured, mask)
        return soft_dc(kspace, kspace_measured, mask, noise_lambda=noise_lambda)

    if maps is None:
        # A multi-coil measurement passed without maps would silently broadcast the image over
        # the coils; refuse it.
        if check_broadcastable(image, kspace_measured, "image", "kspace_measured") != np.shape(
            image
        ):
            raise ValueError(
                f"kspace_measured with shape {np.shape(kspace_measured)} must broadcast to the "
                f"image shape {np.shape(image)} when maps is None (pass maps for multi-coil data)"
            )
        return ifft2c(dc(fft2c(image)))
    return sense_adjoint(dc(sense_forward(image, maps)), maps)


def projection_dc(
    image: jax.Array,
    kspace_measured: jax.Array,
    mask: jax.Array,
    *,
    maps: jax.Array | None = None,
    tol: float = 1e-5,
    max_iter: int = 100,
) -> jax.Array:
    """Exact hard data consistency: project the image onto the images that explain ``y``.

    With ``A = M F S`` this returns ``x' = x + A^+ (y - A x)``: the image closest to ``x`` (in
    the 2-norm) among the least-squares solutions of ``A x' = y``. When ``y`` is consistent
    (some image gives ``A x' = y``, e.g. noiseless data, or fewer samples than unknowns) that is
    the orthogonal projection onto ``{x' : M F S x' = y}``, so ``M F S x' = y`` on the sampled
    set; in every case the map is idempotent. Note what this means for noisy, overdetermined
    multi-coil data (``C / acceleration >= 1`` and full-rank SENSE): the only least-squares
    solution is the unregularised SENSE image, and the projection discards ``x`` entirely.

    Single-coil (``maps is None``): ``A`` is a masked unitary FFT and the projection is
    :func:`image_dc` with hard DC (closed form). Multi-coil: ``delta = A^+ (y - A x)`` is the
    minimum-norm solution of ``A^H A delta = A^H (y - A x)``, by conjugate gradient from 0 (CG
    stays in the range of ``A^H``), one system per image (leading axes are vmapped).

    Args:
      image: complex image ``(..., H, W)``, ``complex64``.
      kspace_measured: measured k-space ``(..., H, W)`` single-coil or ``(..., C, H, W)``;
        values where the mask is 0 are ignored.
      mask: real 0/1 mask broadcastable to the k-space, typically ``(H, W)``.
      maps: optional coil sensitivities ``(..., C, H, W)``.
      tol: CG tolerance (multi-coil only): stop when ``||A^H (y - A x')|| <= tol ||A^H y||``.
      max_iter: CG iteration cap (multi-coil only); exactness needs CG to converge.

    Returns:
      Image ``(..., H, W)``, ``complex64``.
    """
    if maps is None:
        return image_dc(image, kspace_measured, mask)
    check_ndim(image, "image", min_ndim=2)
    check_complex(image, "image")
    check_ndim(kspace_measured, "kspace_measured", min_ndim=3)
    check_complex(kspace_measured, "kspace_measured")
    check_ndim(maps, "maps", min_ndim=3)
    check_complex(maps, "maps")
    check_real(mask, "mask")
    coil_shape = check_broadcastable(kspace_measured, maps, "kspace_measured", "maps")
    image_shape = jax.ShapeDtypeStruct(np.shape(image)[:-2] + (1,) + np.shape(image)[-2:],
                                       jnp.bool_)
    coil_shape = check_broadcastable(image_shape, jax.ShapeDtypeStruct(coil_shape, jnp.bool_),
                                     "image", "maps")
    if check_broadcastable(mask, jax.ShapeDtypeStruct(coil_shape, jnp.bool_), "mask",
                           "the k-space") != tuple(coil_shape):
        raise ValueError(f"mask with shape {np.shape(mask)} must broadcast to the k-space shape "
                         f"{tuple(coil_shape)} without enlarging it")
    lead, (num_coils, height, width) = tuple(coil_shape[:-3]), tuple(coil_shape[-3:])
    batch = int(np.prod(lead, dtype=np.int64))

    def flat(x, shape):
        return jnp.broadcast_to(x, lead + shape).reshape((batch,) + shape)

    x = flat(image, (height, width))
    y = flat(kspace_measured, (num_coils, height, width))
    s = flat(maps, (num_coils, height, width))
    m = flat(_real_mask(mask, x), (num_coils, height, width))

    def project(x, y, s, m):
        residual = m * y - sense_forward(x, s, m)
        rhs = sense_adjoint(residual, s, m)
        # Tolerance relative to the data's scale ||A^H y||, not to ||rhs||: for an image that is
        # already (numerically) projected, rhs is rounding noise, and solving it to a relative
        # tolerance would amplify that noise through the small singular values of A.
        scale = jnp.linalg.norm(sense_adjoint(m * y, s, m))
        rhs_norm = jnp.linalg.norm(rhs)
        relative_tol = tol * scale / jnp.where(rhs_norm > 0, rhs_norm, 1.0)
        delta = conjugate_gradient(lambda v: sense_adjoint(sense_forward(v, s, m), s, m), rhs,
                                   tol=relative_tol, max_iter=max_iter).image
        return x + delta

    return jax.vmap(project)(x, y, s, m).reshape(lead + (height, width))
