"""Classical compressed sensing: L1-wavelet (FISTA) and total-variation (primal-dual) solvers.

Both solve, per image,

    min_x  1/2 ||M F S x - y||_2^2 + lam R(x),

where ``M F S`` is the SENSE encoding of :mod:`jaxmri.physics.sense` (single-coil data: one
coil) and ``y`` the measured k-space.

* :func:`l1_wavelet_fista`: ``R(x) = ||Psi_d x||_1`` with ``Psi_d`` the detail bands of an
  orthonormal multi-level 2-D Haar transform (the coarsest approximation band is not penalised,
  as is usual for wavelet CS: it holds the image's low-frequency energy, which is sampled densely
  anyway). The modulus of a complex coefficient is penalised, so the proximal step is a complex
  soft-threshold. FISTA (Beck & Teboulle 2009) with a fixed step ``1 / L``: because the Haar
  transform is orthonormal, ``Psi^H soft(Psi v, t lam)`` is the exact proximal operator of the
  penalty, and ``L = max_pixel sum_c |S_c|^2`` bounds the Lipschitz constant of the data term's
  gradient (the centred FFT is orthonormal and the mask is 0/1).
* :func:`tv_primal_dual`: ``R(x) = TV(x)``, the isotropic total variation
  ``sum_pixels sqrt(|D_y x|^2 + |D_x x|^2)`` of forward differences with a zero difference past
  the last row and column (Neumann boundary; :func:`finite_differences`). TV is the other
  classical CS prior of Lustig, Donoho & Pauly (2007, "Sparse MRI"); on brain slices measured
  with 1-D Cartesian masks it beats Haar L1 by several dB (``docs/refine_regime.md``). Solved by
  the primal-dual algorithm of Chambolle & Pock (2011) on ``K = [M F S; D]``, which needs only
  the two operators and their adjoints (no inner solver): primal and dual steps
  ``tau = r 0.99 / sqrt(L + 8)`` and ``sigma = 0.99 / (r sqrt(L + 8))``, so that
  ``tau sigma ||K||^2 < 1`` (``8 >= ||D||^2``) for any ratio ``r``.

These are the classical CS baselines of paper 003, in place of DLMRI, whose dictionary learning
has no maintained JAX or Python port.

Conventions: complex64 images ``(..., H, W)``, k-space and maps ``(..., C, H, W)``, masks
broadcastable to the k-space; for the wavelet, ``H`` and ``W`` divisible by ``2 ** levels``.
Everything is pure, jit- and vmap-able; the iteration count is static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import (
    check_broadcasts_to,
    check_complex,
    check_int,
    check_ndim,
    check_positive,
)
from jaxmri.physics.sense import sense_adjoint, sense_forward

__all__ = ["haar2d", "ihaar2d", "haar_detail_mask", "l1_wavelet_objective",
           "l1_wavelet_fista", "finite_differences", "finite_differences_adjoint",
           "total_variation", "tv_objective", "tv_primal_dual"]


def _check_levels(shape, levels: int, name: str) -> int:
    levels = check_int(levels, "levels")
    h, w = shape[-2:]
    factor = 2 ** int(levels)
    if h % factor or w % factor:
        raise ValueError(f"{name} spatial shape {(h, w)} must be divisible by 2 ** levels = "
                         f"{factor}")
    return int(levels)


def _haar_step(x: jax.Array) -> jax.Array:
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    ll, lh = (a + b + c + d) / 2, (a - b + c - d) / 2
    hl, hh = (a + b - c - d) / 2, (a - b - c + d) / 2
    top = jnp.concatenate([ll, lh], axis=-1)
    return jnp.concatenate([top, jnp.concatenate([hl, hh], axis=-1)], axis=-2)


def _ihaar_step(y: jax.Array) -> jax.Array:
    h, w = y.shape[-2] // 2, y.shape[-1] // 2
    ll, lh = y[..., :h, :w], y[..., :h, w:]
    hl, hh = y[..., h:, :w], y[..., h:, w:]
    a, b = (ll + lh + hl + hh) / 2, (ll - lh + hl - hh) / 2
    c, d = (ll + lh - hl - hh) / 2, (ll - lh - hl + hh) / 2
    top = jnp.stack([a, b], axis=-1).reshape(*a.shape[:-1], 2 * w)
    bottom = jnp.stack([c, d], axis=-1).reshape(*c.shape[:-1], 2 * w)
    return jnp.stack([top, bottom], axis=-2).reshape(*y.shape)


def haar2d(x: jax.Array, *, levels: int) -> jax.Array:
    """Orthonormal multi-level 2-D Haar transform in the Mallat layout.

    Level 1 maps ``(H, W)`` to the quadrants ``[[LL, LH], [HL, HH]]`` (``LL`` top left); each
    further level transforms the current ``LL`` quadrant in place.

    Args:
      x: real or complex array ``(..., H, W)``, ``H`` and ``W`` divisible by ``2 ** levels``.
      levels: number of decomposition levels ``>= 1``.

    Returns:
      Coefficients of the same shape and dtype; ``||haar2d(x)|| == ||x||``.
    """
    check_ndim(x, "x", min_ndim=2)
    levels = _check_levels(np.shape(x), levels, "x")
    out = jnp.asarray(x)
    h, w = out.shape[-2:]
    for _ in range(levels):
        out = out.at[..., :h, :w].set(_haar_step(out[..., :h, :w]))
        h, w = h // 2, w // 2
    return out


def ihaar2d(coeffs: jax.Array, *, levels: int) -> jax.Array:
    """Inverse (= adjoint) of :func:`haar2d` with the same ``levels``."""
    check_ndim(coeffs, "coeffs", min_ndim=2)
    levels = _check_levels(np.shape(coeffs), levels, "coeffs")
    out = jnp.asarray(coeffs)
    full_h, full_w = out.shape[-2:]
    for level in reversed(range(levels)):
        h, w = full_h // 2**level, full_w // 2**level
        out = out.at[..., :h, :w].set(_ihaar_step(out[..., :h, :w]))
    return out


def haar_detail_mask(shape: tuple[int, int], *, levels: int) -> np.ndarray:
    """float32 ``(H, W)`` mask: 1 on the detail coefficients of :func:`haar2d`, 0 on the
    coarsest approximation band (the top-left ``H / 2^levels x W / 2^levels`` block)."""
    levels = _check_levels(tuple(shape), levels, "shape")
    mask = np.ones(tuple(shape), np.float32)
    mask[: shape[0] // 2**levels, : shape[1] // 2**levels] = 0.0
    return mask


def _soft_threshold(c: jax.Array, threshold: jax.Array) -> jax.Array:
    """Complex soft-threshold ``c max(|c| - t, 0) / |c|`` (0 where ``c == 0``)."""
    mag = jnp.abs(c)
    shrink = jnp.maximum(mag - threshold, 0.0) / jnp.where(mag > 0, mag, 1.0)
    return c * shrink


def _check_problem(kspace, mask, maps) -> None:
    check_complex(kspace, "kspace")
    check_ndim(kspace, "kspace", min_ndim=3)
    check_complex(maps, "maps")
    check_ndim(maps, "maps", min_ndim=3)
    check_broadcasts_to(mask, np.shape(kspace), "mask", what="kspace ",
                        hint="per-slice masks (N, H, W) need mask[:, None]")


def _data_term(image, kspace, mask, maps, lam) -> jax.Array:
    """Checks the objective's arguments; ``1/2 ||M F S x - y||^2`` per image."""
    check_complex(image, "image")
    _check_problem(kspace, mask, maps)
    check_positive(lam, "lam", allow_zero=True)
    residual = sense_forward(image, maps, mask) - jnp.asarray(mask) * kspace
    return 0.5 * jnp.sum(jnp.abs(residual) ** 2, axis=(-3, -2, -1))


def l1_wavelet_objective(image: jax.Array, kspace: jax.Array, mask: jax.Array,
                         maps: jax.Array, *, lam: float, levels: int = 3) -> jax.Array:
    """``1/2 ||M F S x - y||^2 + lam ||Psi_d x||_1`` per image, shape ``image.shape[:-2]``.

    Args:
      image: complex64 ``(..., H, W)``.
      kspace: measured k-space ``(..., C, H, W)`` (values off the mask are ignored).
      mask: real 0/1 mask broadcastable to ``kspace``.
      maps: coil sensitivities ``(..., C, H, W)`` (single-coil: ``C = 1``).
      lam: regularisation weight ``>= 0``.
      levels: Haar decomposition levels.
    """
    data = _data_term(image, kspace, mask, maps, lam)
    detail = haar_detail_mask(np.shape(image)[-2:], levels=levels)
    penalty = jnp.sum(detail * jnp.abs(haar2d(image, levels=levels)), axis=(-2, -1))
    return data + lam * penalty


def l1_wavelet_fista(kspace: jax.Array, mask: jax.Array, maps: jax.Array, *, lam: float,
                     levels: int = 3, num_iters: int = 100) -> jax.Array:
    """L1-wavelet CS reconstruction by FISTA, started from the zero-filled (adjoint) image.

    Args:
      kspace: measured k-space ``(..., C, H, W)`` complex64.
      mask: real 0/1 mask broadcastable to ``kspace`` (per-slice masks ``(N, H, W)`` need
        ``mask[:, None]``).
      maps: coil sensitivities ``(..., C, H, W)``.
      lam: regularisation weight ``>= 0`` (in units of the image intensity).
      levels: Haar decomposition levels (``H``, ``W`` divisible by ``2 ** levels``).
      num_iters: number of FISTA iterations ``>= 1``.

    Returns:
      complex64 image ``(..., H, W)``.
    """
    _check_problem(kspace, mask, maps)
    check_positive(lam, "lam", allow_zero=True)
    num_iters = check_int(num_iters, "num_iters")
    _check_levels(np.shape(kspace), levels, "kspace")
    return _fista(kspace, jnp.asarray(mask, jnp.float32), maps, lam, levels=int(levels),
                  num_iters=int(num_iters))


@functools.partial(jax.jit, static_argnames=("levels", "num_iters"))
def _fista(kspace, mask, maps, lam, *, levels, num_iters):
    y = mask * kspace
    # Lipschitz bound of grad 1/2||A x - y||^2 = A^H (A x - y): ||A^H A|| <= max sum_c |S_c|^2.
    lipschitz = jnp.max(jnp.sum(jnp.abs(maps) ** 2, axis=-3), axis=(-2, -1), keepdims=True)
    step = 1.0 / lipschitz
    detail = jnp.asarray(haar_detail_mask(kspace.shape[-2:], levels=levels))
    x0 = sense_adjoint(y, maps, mask)

    def prox(v):
        c = haar2d(v, levels=levels)
        c = jnp.where(detail > 0, _soft_threshold(c, step * lam), c)
        return ihaar2d(c, levels=levels).astype(x0.dtype)

    def body(_, carry):
        x, z, t = carry
        grad = sense_adjoint(sense_forward(z, maps, mask) - y, maps, mask)
        x_new = prox(z - step * grad)
        t_new = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = x_new + ((t - 1.0) / t_new) * (x_new - x)
        return x_new, z.astype(x0.dtype), t_new

    x, _, _ = lax.fori_loop(0, num_iters, body, (x0, x0, jnp.asarray(1.0, jnp.float32)))
    return x


# ---------------------------------------------------------------------------------------------
# Total variation


def finite_differences(x: jax.Array) -> jax.Array:
    """Forward differences ``D x`` of ``(..., H, W)`` as ``(..., 2, H, W)`` (rows, then columns).

    ``out[..., 0, i, j] = x[i + 1, j] - x[i, j]`` and ``out[..., 1, i, j] = x[i, j + 1] - x[i, j]``,
    0 on the last row (resp. column): the Neumann boundary, which does not tie the image's
    opposite edges together as a circular difference would.
    """
    check_ndim(x, "x", min_ndim=2)
    x = jnp.asarray(x)
    rows = jnp.diff(x, axis=-2, append=x[..., -1:, :])
    cols = jnp.diff(x, axis=-1, append=x[..., :, -1:])
    return jnp.stack([rows, cols], axis=-3)


def _diff_adjoint(p: jax.Array, axis: int) -> jax.Array:
    # (D^H p)_i = p_{i-1} - p_i, with p_{-1} = 0 and p_{n-1} ignored (D's last entry is 0).
    n = p.shape[axis]
    inner = lax.slice_in_dim(p, 0, n - 1, axis=axis)
    zero = jnp.zeros_like(lax.slice_in_dim(p, 0, 1, axis=axis))
    return (jnp.concatenate([zero, inner], axis=axis)
            - jnp.concatenate([inner, zero], axis=axis))


def finite_differences_adjoint(p: jax.Array) -> jax.Array:
    """Adjoint ``D^H p`` of :func:`finite_differences`: ``(..., 2, H, W)`` to ``(..., H, W)``
    (minus the divergence)."""
    check_ndim(p, "p", min_ndim=3)
    p = jnp.asarray(p)
    if p.shape[-3] != 2:
        raise ValueError(f"p must have 2 difference directions on axis -3, got shape {p.shape}")
    return _diff_adjoint(p[..., 0, :, :], -2) + _diff_adjoint(p[..., 1, :, :], -1)


def total_variation(x: jax.Array) -> jax.Array:
    """Isotropic TV ``sum_pixels sqrt(|D_rows x|^2 + |D_cols x|^2)``, shape ``x.shape[:-2]``."""
    grad = finite_differences(x)
    return jnp.sum(jnp.sqrt(jnp.sum(jnp.abs(grad) ** 2, axis=-3)), axis=(-2, -1))


def tv_objective(image: jax.Array, kspace: jax.Array, mask: jax.Array, maps: jax.Array, *,
                 lam: float) -> jax.Array:
    """``1/2 ||M F S x - y||^2 + lam TV(x)`` per image, shape ``image.shape[:-2]``
    (arguments as :func:`l1_wavelet_objective`)."""
    return _data_term(image, kspace, mask, maps, lam) + lam * total_variation(image)


def tv_primal_dual(kspace: jax.Array, mask: jax.Array, maps: jax.Array, *, lam: float,
                   num_iters: int = 500, step_ratio: float = 10.0) -> jax.Array:
    """Total-variation CS reconstruction by the Chambolle-Pock primal-dual algorithm, started
    from the zero-filled (adjoint) image.

    Args:
      kspace: measured k-space ``(..., C, H, W)`` complex64.
      mask: real 0/1 mask broadcastable to ``kspace`` (per-slice masks ``(N, H, W)`` need
        ``mask[:, None]``).
      maps: coil sensitivities ``(..., C, H, W)``.
      lam: regularisation weight ``>= 0`` (in units of the image intensity).
      num_iters: number of iterations ``>= 1``.
      step_ratio: ``r = tau / sigma``, the primal step over the dual step (any ``r > 0``
        converges; the speed depends on it). The default 10 suits images of intensity about 1
        and ``lam`` of 1e-3 to 1e-2: on 128 px brain slices at 8x, 300 iterations then reach
        the PSNR that ``r = 1`` needs more than 1000 for (``docs/refine_regime.md``).

    Returns:
      complex64 image ``(..., H, W)``.
    """
    _check_problem(kspace, mask, maps)
    check_positive(lam, "lam", allow_zero=True)
    check_positive(step_ratio, "step_ratio")
    num_iters = check_int(num_iters, "num_iters")
    return _tv_primal_dual(kspace, jnp.asarray(mask, jnp.float32), maps, lam, step_ratio,
                           num_iters=int(num_iters))


@functools.partial(jax.jit, static_argnames=("num_iters",))
def _tv_primal_dual(kspace, mask, maps, lam, step_ratio, *, num_iters):
    y = mask * kspace
    x0 = sense_adjoint(y, maps, mask)
    # ||K||^2 <= ||M F S||^2 + ||D||^2 <= max_pixel sum_c |S_c|^2 + 8.
    lipschitz = jnp.max(jnp.sum(jnp.abs(maps) ** 2, axis=-3), axis=(-2, -1))
    norm_k = jnp.sqrt(lipschitz + 8.0)[..., None, None]
    step = step_ratio * 0.99 / norm_k
    dual_step = (0.99 / (step_ratio * norm_k))[..., None, :, :]

    def body(_, carry):
        x, x_bar, u, p = carry
        # Dual of 1/2||. - y||^2: prox_{s f*}(v) = (v - s y) / (1 + s).
        u = (u + dual_step * (sense_forward(x_bar, maps, mask) - y)) / (1.0 + dual_step)
        # Dual of lam ||.||_{2,1}: projection on the pixelwise ball of radius lam.
        q = p + dual_step * finite_differences(x_bar)
        norm = jnp.sqrt(jnp.sum(jnp.abs(q) ** 2, axis=-3, keepdims=True))
        p = (q / jnp.maximum(1.0, norm / jnp.maximum(lam, 1e-30))).astype(x0.dtype)
        x_new = (x - step * (sense_adjoint(u, maps, mask)
                             + finite_differences_adjoint(p))).astype(x0.dtype)
        return x_new, (2.0 * x_new - x).astype(x0.dtype), u.astype(x0.dtype), p

    dual_tv = jnp.zeros((*x0.shape[:-2], 2, *x0.shape[-2:]), x0.dtype)
    x, _, _, _ = lax.fori_loop(0, num_iters, body, (x0, x0, jnp.zeros_like(y), dual_tv))
    return x
