"""Centred, orthonormal 2-D Fourier transforms between image space and k-space.

Convention (fastMRI's ``fastmri.fftc``, used everywhere in jaxmri): the transform acts on the
last two axes ``(H, W)`` of a complex array, the image origin and the k-space DC sample both sit
at index ``(H // 2, W // 2)``, and the transform is unitary (``norm="ortho"``), so that

    fft2c(x) = fftshift(fft2(ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    ifft2c(k) = fftshift(ifft2(ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))

Unlike fastMRI, arrays are native complex (``complex64``) rather than a trailing real/imag axis.
Any number of leading batch axes is allowed; both functions are pure and work under ``jax.jit``,
``jax.vmap`` and ``jax.grad``. Real input is rejected rather than silently promoted: an MR image
or k-space array that arrives real is almost always a bug (a magnitude passed where the complex
data was meant), so the caller converts explicitly with ``x.astype(jnp.complex64)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmri._checks import check_ndim

__all__ = ["fft2c", "ifft2c"]

_AXES = (-2, -1)


def _check_input(x: jax.Array) -> None:
    check_ndim(x, "x", min_ndim=2)
    # Reads only the static dtype, so it is free under jit (and works on tracers, which
    # ``jaxmri._checks.check_complex`` currently does not: it calls ``np.asarray`` on them).
    if not jnp.iscomplexobj(x):
        raise TypeError(f"x must be complex (complex64), got dtype {jnp.result_type(x)}")


def fft2c(x: jax.Array) -> jax.Array:
    """Centred orthonormal 2-D FFT from image space to k-space.

    Args:
      x: complex image, shape ``(..., H, W)``, ``complex64`` (``complex128`` is kept as is).

    Returns:
      Centred k-space of the same shape and dtype as ``x``; the DC sample is at
      ``(H // 2, W // 2)`` and ``sum |fft2c(x)|^2 == sum |x|^2`` (Parseval).

    Raises:
      ValueError: ``x`` has fewer than two axes.
      TypeError: ``x`` is not complex.
    """
    _check_input(x)
    shifted = jnp.fft.ifftshift(x, axes=_AXES)
    return jnp.fft.fftshift(jnp.fft.fft2(shifted, axes=_AXES, norm="ortho"), axes=_AXES)


def ifft2c(x: jax.Array) -> jax.Array:
    """Centred orthonormal 2-D inverse FFT from k-space to image space.

    The exact inverse (and adjoint) of :func:`fft2c`.

    Args:
      x: centred complex k-space, shape ``(..., H, W)``, ``complex64``.

    Returns:
      Complex image of the same shape and dtype as ``x``.

    Raises:
      ValueError: ``x`` has fewer than two axes.
      TypeError: ``x`` is not complex.
    """
    _check_input(x)
    shifted = jnp.fft.ifftshift(x, axes=_AXES)
    return jnp.fft.fftshift(jnp.fft.ifft2(shifted, axes=_AXES, norm="ortho"), axes=_AXES)
