"""Multi-coil SENSE: forward model, adjoint, coil combination, coil maps and CG-SENSE.

Conventions (see :mod:`jaxmri`): images are ``(..., H, W)`` ``complex64``; coil sensitivities
("maps") and coil images / k-space are ``(..., C, H, W)`` with the coil axis just before the image
axes; k-space is centred (DC at ``(H // 2, W // 2)``) and transformed with the unitary
:func:`~jaxmri.physics.fft.fft2c`; masks are real (``float32``) and broadcast against the
multi-coil k-space, typically ``(H, W)``.

The SENSE encoding operator is ``A = M F S``: ``S`` multiplies the image by every coil map, ``F``
is the centred orthonormal FFT of each coil image and ``M`` multiplies by the (real) mask. Its
adjoint is ``A^H = S^H F^H M`` with ``S^H`` the coil sum of ``conj(S_c) x_c``. The maps from
:func:`simulate_coil_maps` satisfy ``sum_c |S_c|^2 = 1`` at every pixel, so ``S^H S = I`` and, with
a full mask, ``A^H A = I``.

Every function here is a pure JAX function that works under ``jax.jit`` and ``jax.vmap`` except
:func:`simulate_coil_maps`, which is deterministic host-side numpy (data code calls it).
:func:`espirit_maps` is pure ``jax.numpy`` (jit it with its keyword options bound, e.g.
``jax.jit(functools.partial(espirit_maps, calib_width=24))``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import (
    check_broadcastable,
    check_broadcasts_to,
    check_complex,
    check_ndim,
    check_positive,
    check_real,
    check_shape_2d,
)
from jaxmri.physics.fft import fft2c, ifft2c

__all__ = [
    "sense_forward",
    "sense_adjoint",
    "sense_normal",
    "rss",
    "sense_combine",
    "simulate_coil_maps",
    "espirit_maps",
    "CGResult",
    "conjugate_gradient",
    "cg_sense",
]


# --------------------------------------------------------------------------------------------
# Argument checks shared by the operators
# --------------------------------------------------------------------------------------------


def _check_maps(maps) -> None:
    check_ndim(maps, "maps", min_ndim=3)
    check_complex(maps, "maps")


def _check_image_axes(x, name: str, maps) -> None:
    # Broadcasting would quietly stretch a (1, W) image over the maps; the image axes must match.
    if np.shape(x)[-2:] != np.shape(maps)[-2:]:
        raise ValueError(
            f"{name} with shape {np.shape(x)} and maps with shape {np.shape(maps)} must share "
            "the image axes (H, W)"
        )


def _check_mask(mask, target_shape: tuple[int, ...]) -> None:
    check_real(mask, "mask")
    check_broadcasts_to(mask, target_shape, "mask", what="multi-coil k-space ")


def _apply_mask(kspace: jax.Array, mask) -> jax.Array:
    if mask is None:
        return kspace
    return kspace * jnp.asarray(mask).astype(jnp.real(kspace).dtype)


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------


def sense_forward(image: jax.Array, maps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """SENSE encoding ``A x = M F S x``: image to (masked) multi-coil k-space.

    Args:
      image: complex image ``(..., H, W)``, ``complex64``.
      maps: coil sensitivities ``(..., C, H, W)``, ``complex64``; leading axes broadcast against
        those of ``image``.
      mask: optional real sampling mask broadcastable to ``(..., C, H, W)`` (typically
        ``(H, W)``); ``None`` means fully sampled.

    Returns:
      Centred multi-coil k-space ``(..., C, H, W)``, ``complex64``.

    Raises:
      ValueError / TypeError naming ``image``, ``maps`` or ``mask`` for wrong shapes or dtypes.
    """
    check_ndim(image, "image", min_ndim=2)
    check_complex(image, "image")
    _check_maps(maps)
    _check_image_axes(image, "image", maps)
    image_shape = np.shape(image)
    as_coils = jax.ShapeDtypeStruct(image_shape[:-2] + (1,) + image_shape[-2:], jnp.bool_)
    out_shape = check_broadcastable(as_coils, maps, "image", "maps")
    if mask is not None:
        _check_mask(mask, out_shape)
    coil_images = maps * image[..., None, :, :]
    return _apply_mask(fft2c(coil_images), mask)


def sense_adjoint(kspace: jax.Array, maps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """SENSE adjoint ``A^H y = S^H F^H M y``: multi-coil k-space to one complex image.

    Args:
      kspace: centred multi-coil k-space ``(..., C, H, W)``, ``complex64``.
      maps: coil sensitivities ``(..., C, H, W)``, broadcastable against ``kspace``.
      mask: optional real mask broadcastable to the k-space shape; ``None`` means no masking.

    Returns:
      Image ``(..., H, W)``, ``complex64``: ``sum_c conj(S_c) ifft2c(M y_c)``.
    """
    check_ndim(kspace, "kspace", min_ndim=3)
    check_complex(kspace, "kspace")
    _check_maps(maps)
    _check_image_axes(kspace, "kspace", maps)
    out_shape = check_broadcastable(kspace, maps, "kspace", "maps")
    if mask is not None:
        _check_mask(mask, out_shape)
    coil_images = ifft2c(_apply_mask(kspace, mask))
    return jnp.sum(jnp.conj(maps) * coil_images, axis=-3)


def sense_normal(image: jax.Array, maps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """SENSE normal operator ``A^H A x = S^H F^H M^H M F S x`` (``(..., H, W)`` to same).

    The mask enters twice (``M^H M``); for a 0/1 mask that is the mask itself.
    """
    return sense_adjoint(sense_forward(image, maps, mask), maps, mask)


# --------------------------------------------------------------------------------------------
# Coil combination
# --------------------------------------------------------------------------------------------


def rss(coil_images: jax.Array, *, axis: int = -3) -> jax.Array:
    """Root-sum-of-squares coil combination ``sqrt(sum_c |x_c|^2)``.

    Args:
      coil_images: real or complex coil images, coil axis at ``axis`` (default ``-3``, i.e.
        ``(..., C, H, W)``).
      axis: the coil axis.

    Returns:
      ``float32`` magnitude image with ``axis`` removed, e.g. ``(..., H, W)``.
    """
    check_ndim(coil_images, "coil_images", min_ndim=1)
    ndim = jnp.ndim(coil_images)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must index coil_images with shape {jnp.shape(coil_images)}, "
                         f"got {axis}")
    mag2 = jnp.abs(jnp.asarray(coil_images)) ** 2
    return jnp.sqrt(jnp.sum(mag2, axis=axis)).astype(jnp.float32)


def sense_combine(coil_images: jax.Array, maps: jax.Array) -> jax.Array:
    """Optimal (SENSE, ``R = 1``) coil combination ``sum_c conj(S_c) x_c / sum_c |S_c|^2``.

    This is the least-squares image for fully sampled coil images. Where the maps vanish
    (``sum_c |S_c|^2 == 0``, e.g. outside the object after ESPIRiT cropping) the result is 0;
    the division is guarded so gradients stay finite there.

    Args:
      coil_images: complex coil images ``(..., C, H, W)``.
      maps: coil sensitivities ``(..., C, H, W)``, broadcastable against ``coil_images``.

    Returns:
      Complex image ``(..., H, W)``, ``complex64``.
    """
    check_ndim(coil_images, "coil_images", min_ndim=3)
    check_complex(coil_images, "coil_images")
    _check_maps(maps)
    _check_image_axes(coil_images, "coil_images", maps)
    check_broadcastable(coil_images, maps, "coil_images", "maps")
    numerator = jnp.sum(jnp.conj(maps) * coil_images, axis=-3)
    denominator = jnp.sum(jnp.abs(maps) ** 2, axis=-3)
    covered = denominator > 0
    safe = jnp.where(covered, denominator, 1.0)
    return jnp.where(covered, numerator / safe, 0.0).astype(numerator.dtype)


# --------------------------------------------------------------------------------------------
# Coil sensitivities
# --------------------------------------------------------------------------------------------


def simulate_coil_maps(
    shape: tuple[int, int], num_coils: int, *, radius: float = 1.5
) -> np.ndarray:
    """Birdcage-style simulated coil sensitivities, normalised to unit sum of squares.

    ``num_coils`` coils sit evenly on a circle of ``radius`` (in units of the half field of view;
    the FOV spans ``[-1, 1)`` on both axes) around the image centre, coil ``c`` at angle
    ``2 pi c / num_coils``. Before normalisation coil ``c``'s sensitivity is ``exp(i phi_c) / d_c``:
    magnitude falling as the inverse distance ``d_c`` to the coil, phase ``phi_c`` the polar angle
    of the pixel seen from the coil minus the coil angle (so the phase rotates with the coil). The
    maps are then divided by their root-sum-of-squares so that ``sum_c |S_c|^2 == 1`` at every
    pixel, which makes ``S^H S = I`` (SENSE with a full mask is then unitary up to the coil
    redundancy). With ``num_coils == 1`` the single map has unit magnitude and a smooth phase.

    Deterministic host-side numpy; same design as SigPy's ``birdcage_maps`` (re-derived).

    Args:
      shape: image shape ``(H, W)``.
      num_coils: number of coils ``C >= 1``.
      radius: coil-circle radius relative to the half FOV; ``> 0``. Values above ``sqrt(2)``
        keep the coils outside the image.

    Returns:
      ``numpy`` array ``(C, H, W)``, ``complex64``.
    """
    height, width = check_shape_2d(shape, "shape")
    if int(num_coils) != num_coils or num_coils < 1:
        raise ValueError(f"num_coils must be an int >= 1, got {num_coils}")
    check_positive(radius, "radius")
    angles = 2.0 * np.pi * np.arange(num_coils) / num_coils
    y = (np.arange(height) - height / 2.0) / (height / 2.0)
    x = (np.arange(width) - width / 2.0) / (width / 2.0)
    dy = y[None, :, None] - radius * np.sin(angles)[:, None, None]
    dx = x[None, None, :] - radius * np.cos(angles)[:, None, None]
    # A coil placed exactly on a pixel (radius <= sqrt 2) must not produce an infinite map.
    distance = np.maximum(np.hypot(dx, dy), 1e-6)
    phase = np.arctan2(dx, -dy) - angles[:, None, None]
    maps = np.exp(1j * phase) / distance
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))
    return maps.astype(np.complex64)


def _calibration_matrix(calib: jax.Array, kernel_width: int) -> jax.Array:
    """Block-Hankel matrix of all ``kernel_width^2`` patches: ``(num_patches, C * k * k)``.

    Column order is ``(coil, dy, dx)`` so a row reshapes to a ``(C, k, k)`` kernel.
    """
    num_coils, ch, cw = calib.shape
    nby, nbx = ch - kernel_width + 1, cw - kernel_width + 1
    shifted = [
        [calib[:, dy : dy + nby, dx : dx + nbx] for dx in range(kernel_width)]
        for dy in range(kernel_width)
    ]
    blocks = jnp.stack([jnp.stack(row, axis=1) for row in shifted], axis=1)  # (C, k, k, nby, nbx)
    blocks = jnp.transpose(blocks, (3, 4, 0, 1, 2))
    return blocks.reshape(nby * nbx, num_coils * kernel_width**2)


def _espirit_operator(kernels: jax.Array, weights: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Per-pixel ESPIRiT matrices ``G(r)``, shape ``(H, W, C, C)``, centred image grid.

    The k-space operator "extract every k x k patch, project it onto the kernel (signal) space,
    put the patches back and average" is a convolution, so in image space it is a per-pixel
    ``C x C`` matrix ``G(r) = k^-2 sum_n w_n(r) w_n(r)^H`` with ``w_n`` the unnormalised inverse
    DFT of kernel ``n``. Its k-space form is the kernels' cross-correlation, supported on
    ``(2k - 1)^2`` offsets: we evaluate it on a small ``2k x 2k`` grid (no aliasing), take it
    back to k-space, place the offsets on the full grid and inverse-DFT once per coil pair.
    """
    num_kernels, num_coils, k, _ = kernels.shape
    height, width = shape
    small = 2 * k
    padded = jnp.zeros((num_kernels, num_coils, small, small), kernels.dtype)
    padded = padded.at[:, :, :k, :k].set(kernels)
    w = jnp.fft.ifft2(padded, axes=(-2, -1)) * small**2  # sum_d v[d] exp(+2 pi i d r / N)
    g_small = jnp.einsum("n,ncyx,ndyx->cdyx", weights.astype(w.dtype), w, jnp.conj(w)) / k**2
    corr = jnp.fft.fft2(g_small, axes=(-2, -1)) / small**2  # offsets d at index d mod 2k
    offsets = np.arange(-(k - 1), k)
    full = jnp.zeros((num_coils, num_coils, height, width), corr.dtype)
    full = full.at[:, :, (offsets % height)[:, None], (offsets % width)[None, :]].add(
        corr[:, :, (offsets % small)[:, None], (offsets % small)[None, :]]
    )
    g = jnp.fft.ifft2(full, axes=(-2, -1)) * (height * width)
    g = jnp.fft.fftshift(g, axes=(-2, -1))  # same pixel grid as ifft2c of the data
    return jnp.transpose(g, (2, 3, 0, 1))


def _power_iteration(g: jax.Array, max_iter: int) -> tuple[jax.Array, jax.Array]:
    """Top eigenvector and eigenvalue of every Hermitian PSD ``g[h, w]`` (``(H, W, C, C)``)."""
    vec = jnp.ones(g.shape[:-1], g.dtype) / np.sqrt(g.shape[-1])

    def step(_, v):
        gv = jnp.einsum("hwcd,hwd->hwc", g, v)
        norm = jnp.sqrt(jnp.sum(jnp.abs(gv) ** 2, axis=-1, keepdims=True))
        return gv / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)

    vec = lax.fori_loop(0, max_iter, step, vec)
    gv = jnp.einsum("hwcd,hwd->hwc", g, vec)
    eigval = jnp.real(jnp.sum(jnp.conj(vec) * gv, axis=-1))
    return vec, eigval


def _espirit_single(kspace, calib_width, kernel_width, threshold, crop, max_iter):
    num_coils, height, width = kspace.shape
    y0, x0 = height // 2 - calib_width // 2, width // 2 - calib_width // 2
    calib = kspace[:, y0 : y0 + calib_width, x0 : x0 + calib_width]
    matrix = _calibration_matrix(calib, kernel_width)
    _, singular, vh = jnp.linalg.svd(matrix, full_matrices=False)
    # Kernels are kept by weight rather than by slicing so the function stays jit-able.
    weights = (singular > threshold * singular[0]).astype(jnp.float32)
    kernels = vh.reshape(-1, num_coils, kernel_width, kernel_width)
    g = _espirit_operator(kernels, weights, (height, width))
    vec, eigval = _power_iteration(g, max_iter)
    ref = vec[..., :1]
    ref_abs = jnp.abs(ref)
    phase = jnp.where(ref_abs > 0, jnp.conj(ref) / jnp.where(ref_abs > 0, ref_abs, 1.0), 1.0)
    maps = vec * phase * (eigval > crop)[..., None]
    return jnp.transpose(maps, (2, 0, 1)).astype(kspace.dtype)


def espirit_maps(
    kspace: jax.Array,
    *,
    calib_width: int = 24,
    kernel_width: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
    max_iter: int = 100,
) -> jax.Array:
    """ESPIRiT coil sensitivities from the fully sampled k-space centre (one set of maps).

    Steps (Uecker et al. 2014; SigPy ``EspiritCalib`` and BART ``ecalib`` follow the same plan):
    take the central ``calib_width^2`` block of each coil's centred k-space; build the block-Hankel
    calibration matrix of all ``kernel_width^2`` patches (rows) x ``(coil, ky, kx)`` (columns);
    keep the right singular vectors with ``S > threshold * S_max`` as kernels; turn the
    patch-projection operator into per-pixel ``C x C`` matrices in image space; run
    ``max_iter`` steps of the power method at every pixel; rotate each pixel's eigenvector so
    coil 0 has zero phase; zero the maps where the top eigenvalue is ``<= crop``.

    The maps have unit norm over coils where they are kept (``sum_c |S_c|^2 = 1``), so
    :func:`sense_combine` with them is ``sum_c conj(S_c) x_c``. They equal the true
    sensitivities only up to a per-pixel phase (and the unit-norm scaling): compare
    projections, not maps.

    Implementation: pure ``jax.numpy`` (SVD, FFTs, a ``lax.fori_loop`` power method), so it runs
    on any device and under ``jit`` with the keyword options bound; leading batch axes are
    vmapped. Memory is ``O(C^2 H W)``. On a 2-core CPU, 8 coils at 128 x 128 take under a
    second once compiled; compilation (a few seconds) happens once per input shape.

    Args:
      kspace: centred multi-coil k-space ``(..., C, H, W)``, ``complex64``; only the central
        ``calib_width x calib_width`` block is read and it must be fully sampled.
      calib_width: side of the square calibration region, ``kernel_width <= calib_width <=
        min(H, W)``.
      kernel_width: side of the square k-space kernels.
      threshold: keep singular values ``> threshold * S_max``, in ``[0, 1)``.
      crop: eigenvalue threshold in ``[0, 1)`` below which (inclusive) the maps are zeroed.
      max_iter: power-method iterations (``>= 1``).

    Returns:
      Maps ``(..., C, H, W)``, ``complex64``.
    """
    check_ndim(kspace, "kspace", min_ndim=3)
    check_complex(kspace, "kspace")
    *batch, num_coils, height, width = kspace.shape
    for name, value in (("calib_width", calib_width), ("kernel_width", kernel_width),
                        ("max_iter", max_iter)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value}")
    if calib_width > min(height, width):
        raise ValueError(
            f"calib_width must be <= min(H, W) = {min(height, width)} of kspace with shape "
            f"{kspace.shape}, got {calib_width}"
        )
    if kernel_width > calib_width:
        raise ValueError(f"kernel_width must be <= calib_width={calib_width}, got {kernel_width}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if not 0.0 <= crop < 1.0:
        raise ValueError(f"crop must be in [0, 1), got {crop}")

    flat = jnp.reshape(kspace, (-1, num_coils, height, width))
    maps = _espirit_batch(
        flat, threshold, crop, calib_width=int(calib_width), kernel_width=int(kernel_width),
        max_iter=int(max_iter),
    )
    return maps.reshape(*batch, num_coils, height, width)


# Compiled once per shape and static option set, so eager calls reuse it; threshold and crop
# are traced and can change without recompiling.
@functools.partial(jax.jit, static_argnames=("calib_width", "kernel_width", "max_iter"))
def _espirit_batch(flat, threshold, crop, *, calib_width, kernel_width, max_iter):
    def single(kspace):
        return _espirit_single(kspace, calib_width, kernel_width, threshold, crop, max_iter)

    return jax.vmap(single)(flat)


# --------------------------------------------------------------------------------------------
# Conjugate gradient
# --------------------------------------------------------------------------------------------


class CGResult(NamedTuple):
    """Output of :func:`conjugate_gradient` and :func:`cg_sense`.

    Attributes:
      image: the solution ``x`` (same shape as the right-hand side).
      num_iter: ``int32`` number of CG iterations run (``0`` when ``rhs == 0``).
      residual_norms: ``float32`` ``(max_iter + 1,)`` relative residuals ``||b - A x_k|| / ||b||``
        for ``k = 0 .. num_iter`` (entry 0 is 1, or 0 for ``b == 0``); entries after
        ``num_iter`` are NaN (iterations that were not run).
    """

    image: jax.Array
    num_iter: jax.Array
    residual_norms: jax.Array


def _sq_norm(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.real(x) ** 2 + jnp.imag(x) ** 2)


def _cg_iterations(normal_op, rhs, tol, max_iter):
    real_dtype = jnp.real(rhs).dtype
    b_norm = jnp.sqrt(_sq_norm(rhs))
    scale = jnp.where(b_norm > 0, b_norm, 1.0)
    history = jnp.full((max_iter + 1,), jnp.nan, real_dtype)
    history = history.at[0].set(jnp.where(b_norm > 0, 1.0, 0.0).astype(real_dtype))

    def cond(state):
        k, _, _, _, rs, _ = state
        return (k < max_iter) & (jnp.sqrt(rs) > tol * b_norm)

    def body(state):
        k, x, r, p, rs, hist = state
        ap = normal_op(p)
        curvature = jnp.real(jnp.vdot(p, ap))
        alpha = rs / jnp.where(curvature > 0, curvature, 1.0)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _sq_norm(r)
        p = r + (rs_new / jnp.where(rs > 0, rs, 1.0)) * p
        hist = hist.at[k + 1].set(jnp.sqrt(rs_new) / scale)
        return k + 1, x, r, p, rs_new, hist

    x0 = jnp.zeros_like(rhs)
    state = (jnp.asarray(0, jnp.int32), x0, rhs, rhs, _sq_norm(rhs), history)
    k, x, _, _, _, hist = lax.while_loop(cond, body, state)
    return x, (k, hist)


def conjugate_gradient(
    normal_op: Callable[[jax.Array], jax.Array],
    rhs: jax.Array,
    *,
    tol: float = 1e-6,
    max_iter: int = 50,
) -> CGResult:
    """Solve ``normal_op(x) = rhs`` for a Hermitian positive (semi-)definite linear operator.

    Plain conjugate gradient from ``x0 = 0`` in a ``lax.while_loop``; it stops when the relative
    residual ``||rhs - normal_op(x)|| / ||rhs|| <= tol`` or after ``max_iter`` iterations.
    Inner products run over all elements of ``rhs`` (one system, whatever its shape); vmap the
    call to solve a batch of independent systems.

    Gradients: the solve is wrapped in ``lax.custom_linear_solve``, so reverse- and forward-mode
    derivatives with respect to ``rhs`` and to anything ``normal_op`` closes over (e.g. a
    learnable regularisation weight, network outputs in MoDL) are computed implicitly at the
    solution by another CG solve, not by unrolling the loop. ``num_iter`` and
    ``residual_norms`` carry no gradient.

    Args:
      normal_op: linear, Hermitian, positive-definite map from arrays shaped like ``rhs`` to the
        same shape and dtype (e.g. ``A^H A + lam I``).
      rhs: right-hand side, any shape, real or complex.
      tol: relative-residual tolerance (``>= 0``).
      max_iter: maximum number of iterations (Python int ``>= 1``; sets the history length).

    Returns:
      :class:`CGResult` ``(image, num_iter, residual_norms)`` with ``image`` the solution.
    """
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter}")
    if isinstance(tol, int | float):
        check_positive(tol, "tol", allow_zero=True)
    rhs = jnp.asarray(rhs)

    def solve(matvec, b):
        return _cg_iterations(matvec, b, tol, int(max_iter))

    # The transposed operator of a Hermitian positive-definite A is conj(A), itself Hermitian
    # positive definite, so the same CG solves the transposed system in the backward pass.
    x, (num_iter, history) = lax.custom_linear_solve(
        normal_op, rhs, solve, transpose_solve=solve, has_aux=True
    )
    return CGResult(x, lax.stop_gradient(num_iter), lax.stop_gradient(history))


def cg_sense(
    kspace: jax.Array,
    maps: jax.Array,
    mask: jax.Array,
    *,
    lam: float | jax.Array = 0.0,
    tol: float = 1e-6,
    max_iter: int = 50,
) -> CGResult:
    """CG-SENSE: solve ``(A^H A + lam I) x = A^H y`` with ``A = M F S`` by conjugate gradient.

    Args:
      kspace: measured centred multi-coil k-space ``y``, ``(..., C, H, W)``, ``complex64``
        (unsampled entries are ignored because the mask multiplies them).
      maps: coil sensitivities ``(..., C, H, W)``, broadcastable against ``kspace``.
      mask: real sampling mask broadcastable to ``(..., C, H, W)``, typically ``(H, W)``.
      lam: Tikhonov weight ``>= 0`` (a Python float or a traced scalar).
      tol: relative-residual tolerance; max_iter: iteration cap (see :func:`conjugate_gradient`).

    Returns:
      :class:`CGResult` with ``image`` ``(..., H, W)``, ``num_iter`` ``(...)`` and
      ``residual_norms`` ``(..., max_iter + 1)``; every batch element is its own CG problem.
    """
    check_ndim(kspace, "kspace", min_ndim=3)
    check_complex(kspace, "kspace")
    _check_maps(maps)
    _check_image_axes(kspace, "kspace", maps)
    shape = check_broadcastable(kspace, maps, "kspace", "maps")
    _check_mask(mask, shape)
    if isinstance(lam, int | float):
        check_positive(lam, "lam", allow_zero=True)
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter}")
    if isinstance(tol, int | float):
        check_positive(tol, "tol", allow_zero=True)
    return _cg_sense_jit(
        kspace, maps, jnp.asarray(mask, jnp.float32), jnp.asarray(lam, jnp.float32),
        tol=float(tol), max_iter=int(max_iter),
    )


# Compiled once per shape so that eager calls (data pipelines, evaluation) do not retrace the
# while_loop every time; under an outer jit it is simply inlined.
@functools.partial(jax.jit, static_argnames=("tol", "max_iter"))
def _cg_sense_jit(kspace, maps, mask, lam, *, tol, max_iter):
    shape = jnp.broadcast_shapes(kspace.shape, maps.shape)

    def solve_one(y, s, m):
        rhs = sense_adjoint(y, s, m)

        def normal_op(x):
            return sense_normal(x, s, m) + lam * x

        return conjugate_gradient(normal_op, rhs, tol=tol, max_iter=max_iter)

    batch = shape[:-3]
    if not batch:
        return solve_one(kspace, maps, jnp.broadcast_to(mask, shape))
    flat = [jnp.broadcast_to(a, shape).reshape((-1,) + shape[-3:]) for a in (kspace, maps, mask)]
    result = jax.vmap(solve_one)(*flat)
    return CGResult(
        result.image.reshape(batch + shape[-2:]),
        result.num_iter.reshape(batch),
        result.residual_norms.reshape(batch + (max_iter + 1,)),
    )
