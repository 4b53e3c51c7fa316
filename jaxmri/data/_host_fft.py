"""Host-side numpy twins of :func:`jaxmri.physics.fft.fft2c` / ``ifft2c`` for the data pipeline.

Data preparation runs on the host for every batch. Calling the JAX versions there would compile
a small XLA program for every new array shape (about a second each on 2 CPU cores) and, on a
GPU machine, move every batch to the accelerator and back inside the input pipeline. These
numpy versions use the same convention (centred, orthonormal, last two axes); a test in
``tests/data`` pins them to the JAX functions.
"""

from __future__ import annotations

import numpy as np

_AXES = (-2, -1)


def host_fft2c(x: np.ndarray) -> np.ndarray:
    """``fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes, ``complex64``."""
    shifted = np.fft.ifftshift(x, axes=_AXES)
    return np.fft.fftshift(np.fft.fft2(shifted, norm="ortho"), axes=_AXES).astype(np.complex64)


def host_ifft2c(k: np.ndarray) -> np.ndarray:
    """``fftshift(ifft2(ifftshift(k), norm="ortho"))`` over the last two axes, ``complex64``."""
    shifted = np.fft.ifftshift(k, axes=_AXES)
    return np.fft.fftshift(np.fft.ifft2(shifted, norm="ortho"), axes=_AXES).astype(np.complex64)


def host_rss(coil_images: np.ndarray, *, axis: int) -> np.ndarray:
    """Root-sum-of-squares ``sqrt(sum |x_c|^2)`` over ``axis``, ``float32``."""
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=axis)).astype(np.float32)


def host_sense_adjoint(kspace: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """``sum_c conj(S_c) ifft2c(y_c)`` for ``(..., C, H, W)`` inputs, ``complex64``."""
    return np.sum(np.conj(maps) * host_ifft2c(kspace), axis=-3).astype(np.complex64)
