"""Kernel-based x2 downsampling and a simulated "scanner" low-resolution acquisition.

Convention: a downsampling kernel ``k`` of odd size ``K`` acts by *correlation* followed by
keeping every ``factor``-th sample on the package's sampling grid
(:func:`jaxmri.physics.grid_position`, the grid of the k-space crop and of bicubic resizing)::

    lr[i, j] = sum_{a, b} k[a, b] * hr_pad[o + factor i + a, o + factor j + b]

where ``hr_pad`` is ``hr`` padded by ``K // 2`` on each side (symmetric) and
``o = grid_position(0, H / factor, H)`` (0 for even LR sizes). A kernel whose centre of mass is
its central pixel ``(K // 2, K // 2)`` puts LR pixel ``i`` at HR position ``o + factor i``, where
a centred k-space crop and :func:`jaxmri.physics.bicubic_resize` put it, so kernel-downsampled,
k-space-cropped and bicubic images line up.

The "scanner LR" acquisition stands in for paper 001's separately acquired real LR scans. Its
effective kernel (:func:`scanner_kernel`) is neither a Gaussian nor the Fermi-windowed k-space
zero-fill of the baselines: a Hann-windowed sinc (windowed k-space truncation) convolved with a
rotated anisotropic Gaussian point-spread function. Each slice is also shifted by a random
sub-pixel misregistration before downsampling (the LR and HR scans of the paper were not
perfectly aligned) and gets Rician noise at a lower SNR. An experiment must treat the kernel as
unknown; only its evaluation may compare an estimate with :func:`scanner_kernel`.

Images are real ``(..., H, W)`` float32 magnitudes; random functions take a ``jax.random`` key
first. Everything is jit- and vmap-able (sizes and kernels' shapes are static).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.signal import fftconvolve

from jaxmri._checks import check_ndim, check_positive, check_real
from jaxmri.physics.degrade import fermi_filter, grid_position, kspace_crop, rician_noise
from jaxmri.physics.fft import fft2c, ifft2c

__all__ = [
    "downsample_with_kernel",
    "gaussian_kernel",
    "select_gaussian_sigma",
    "kspace_lowres",
    "scanner_kernel",
    "fourier_shift",
    "scanner_lowres",
]


def _check_kernel(kernel) -> None:
    check_ndim(kernel, "kernel", ndim=2)
    check_real(kernel, "kernel")
    k_h, k_w = np.shape(kernel)
    if k_h != k_w or k_h % 2 == 0:
        raise ValueError(f"kernel must be square with an odd size, got shape {(k_h, k_w)}")


def downsample_with_kernel(image: jax.Array, kernel: jax.Array, *, factor: int = 2) -> jax.Array:
    """Correlate with ``kernel`` and keep every ``factor``-th sample (the convention above).

    Args:
      image: real ``(..., H, W)``; ``H`` and ``W`` divisible by ``factor``.
      kernel: real ``(K, K)``, ``K`` odd.
      factor: integer downsampling factor ``>= 1``.

    Returns:
      ``(..., H // factor, W // factor)`` float32.
    """
    check_ndim(image, "image", min_ndim=2)
    check_real(image, "image")
    _check_kernel(kernel)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be an int >= 1, got {factor}")
    height, width = np.shape(image)[-2:]
    if height % factor or width % factor:
        raise ValueError(f"image size {(height, width)} must be divisible by factor {factor}")
    image = jnp.asarray(image, jnp.float32)
    lead = image.shape[:-2]
    flat = image.reshape((-1, height, width))
    half = np.shape(kernel)[0] // 2
    padded = jnp.pad(flat, ((0, 0), (half, half), (half, half)), mode="symmetric")
    oy = int(grid_position(0, height // factor, height))
    ox = int(grid_position(0, width // factor, width))
    padded = padded[:, oy:, ox:]
    out = lax.conv_general_dilated(
        padded[..., None], jnp.asarray(kernel, jnp.float32)[:, :, None, None],
        (factor, factor), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    return out[..., 0].reshape(lead + out.shape[1:3])


def gaussian_kernel(*, size: int = 13, sigma: float = 1.5) -> np.ndarray:
    """Isotropic Gaussian ``(size, size)`` kernel centred on its central pixel ``size // 2``.

    ``size`` is odd, so that :func:`downsample_with_kernel` with it lines up with the k-space
    crop and bicubic downscaling (module convention). Sums to 1.
    """
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be an odd int >= 1, got {size}")
    check_positive(sigma, "sigma")
    t = np.arange(size) - size // 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    kernel = np.outer(g, g)
    return (kernel / kernel.sum()).astype(np.float32)


def select_gaussian_sigma(hr: np.ndarray, lr: np.ndarray, sigmas, *,
                          size: int = 13) -> tuple[float, np.ndarray]:
    """Paper 001's choice of the Gaussian-blur baseline's width: the ``sigma`` whose
    :func:`gaussian_kernel` downsampling of ``hr`` best matches the real ``lr``.

    "A Gaussian kernel with a standard variance of 1.5 was selected because HR images
    downsampled using this kernel achieved the best similarity ... with real LR images"
    (section 2.C.3). The similarity is the mean squared error over all pixels of all pairs (the
    same ranking as PSNR); pass training pairs only, the choice is part of training.

    Args:
      hr: real HR images ``(N, H, W)``.
      lr: the real LR images of the same scenes ``(N, H / 2, W / 2)``.
      sigmas: candidate standard deviations (HR pixels), a non-empty sequence of positive numbers.
      size: kernel size (odd).

    Returns:
      ``(best sigma, mean squared error per candidate (len(sigmas),) float64)``.
    """
    check_ndim(hr, "hr", ndim=3)
    check_ndim(lr, "lr", ndim=3)
    sigmas = [float(s) for s in sigmas]
    if not sigmas:
        raise ValueError("sigmas must name at least one candidate")
    height, width = np.shape(hr)[-2:]
    if np.shape(lr) != (np.shape(hr)[0], height // 2, width // 2):
        raise ValueError(f"lr must have shape {(np.shape(hr)[0], height // 2, width // 2)} "
                         f"(hr downsampled x2), got {np.shape(lr)}")
    down = jax.jit(downsample_with_kernel)
    lr = np.asarray(lr, np.float64)
    errors = np.array([
        np.mean((np.asarray(down(hr, gaussian_kernel(size=size, sigma=s)), np.float64) - lr) ** 2)
        for s in sigmas])
    return sigmas[int(np.argmin(errors))], errors


def kspace_lowres(image: jax.Array, *, fermi_radius: float = 0.45,
                  fermi_width: float = 0.025) -> jax.Array:
    """x2 LR by k-space zero-filling: keep the central half of each axis (zero the outer 75 % of
    the samples) under a radial Fermi window, at half size (paper 001's ZF baseline).

    LR pixel ``i`` sits at HR position ``2 i`` (even sizes), the package's grid, like the kernel
    convention of this module. The result is scaled by 1/2
    (``sqrt(h w / (H W))``: the unitary inverse FFT on the smaller grid would double a constant)
    to keep intensities, and its magnitude is returned.

    Args:
      image: real ``(..., H, W)``, ``H`` and ``W`` even.
      fermi_radius, fermi_width: the window on the full grid, in units of the half-width
        (:func:`jaxmri.physics.fermi_filter`); 0.5 is the edge of the kept block.

    Returns:
      ``(..., H / 2, W / 2)`` float32.
    """
    check_ndim(image, "image", min_ndim=2)
    check_real(image, "image")
    height, width = np.shape(image)[-2:]
    if height % 2 or width % 2:
        raise ValueError(f"image size {(height, width)} must be even")
    k = fft2c(jnp.asarray(image, jnp.float32).astype(jnp.complex64)) * fermi_filter(
        (height, width), radius=fermi_radius, width=fermi_width)
    low = ifft2c(kspace_crop(k, (height // 2, width // 2)))
    return (0.5 * jnp.abs(low)).astype(jnp.float32)


def scanner_kernel(
    *,
    size: int = 13,
    psf_sigmas: tuple[float, float] = (1.4, 0.5),
    psf_angle_deg: float = 30.0,
    window_halfwidth: float = 6.0,
) -> np.ndarray:
    """The true effective kernel of :func:`scanner_lowres` (x2), a ``(size, size)`` float32 array.

    ``sinc2(y) sinc2(x) * psf(y, x)`` (2-D convolution) where ``sinc2(t) = sinc(t / 2) / 2 *
    hann(t)``, the x2 band limit of a k-space truncation tapered by a Hann window of half-width
    ``window_halfwidth`` pixels, and ``psf`` an anisotropic Gaussian with standard deviations
    ``psf_sigmas`` (major, minor) rotated by ``psf_angle_deg``. Sampled at offsets
    ``t = index - size // 2`` (centred on the central pixel, see the module docstring),
    normalised to sum 1. The windowed sinc has negative side lobes and the PSF is oriented, so no
    isotropic Gaussian fits it.
    """
    if int(size) != size or size < 3 or size % 2 == 0:
        raise ValueError(f"size must be an odd int >= 3, got {size}")
    check_positive(window_halfwidth, "window_halfwidth")
    for s in psf_sigmas:
        check_positive(float(s), "psf_sigmas")
    # A fine grid (4x finer, containing the coarse offsets at every 4th point) so that the
    # convolution of the two continuous kernels is accurate.
    over = 4
    length = size * over
    t = (np.arange(length) - (size // 2) * over) / over
    sinc = np.sinc(t / 2.0) / 2.0 * np.where(
        np.abs(t) < window_halfwidth, 0.5 + 0.5 * np.cos(np.pi * t / window_halfwidth), 0.0)
    # fftconvolve(mode="same") treats index (L - 1) // 2 of the second array as offset zero.
    tp = (np.arange(length) - (length - 1) // 2) / over
    yy, xx = np.meshgrid(tp, tp, indexing="ij")
    angle = math.radians(psf_angle_deg)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    psf = np.exp(-0.5 * ((u / psf_sigmas[0]) ** 2 + (v / psf_sigmas[1]) ** 2))
    fine = fftconvolve(np.outer(sinc, sinc), psf, mode="same")
    coarse = fine[::over, ::over]
    return (coarse / coarse.sum()).astype(np.float32)


def fourier_shift(image: jax.Array, shift: jax.Array) -> jax.Array:
    """Shift real images by sub-pixel amounts with a Fourier phase ramp (periodic boundaries).

    Args:
      image: real ``(..., H, W)``.
      shift: ``(..., 2)`` shifts ``(dy, dx)`` in pixels; positive moves content down / right.

    Returns:
      The real part of the shifted image, ``(..., H, W)`` float32.
    """
    check_ndim(image, "image", min_ndim=2)
    check_real(image, "image")
    if np.shape(shift)[-1:] != (2,) or np.ndim(shift) != np.ndim(image) - 1:
        raise ValueError(f"shift must have shape image.shape[:-2] + (2,), got {np.shape(shift)}")
    height, width = np.shape(image)[-2:]
    fy = jnp.fft.fftfreq(height)[:, None]
    fx = jnp.fft.fftfreq(width)[None, :]
    shift = jnp.asarray(shift, jnp.float32)
    dy, dx = shift[..., 0, None, None], shift[..., 1, None, None]
    ramp = jnp.exp(-2j * jnp.pi * (fy * dy + fx * dx))
    return jnp.real(jnp.fft.ifft2(jnp.fft.fft2(jnp.asarray(image, jnp.float32)) * ramp)).astype(
        jnp.float32)


def scanner_lowres(
    key: jax.Array,
    image: jax.Array,
    *,
    kernel: jax.Array,
    max_shift: float = 0.75,
    noise_std: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """Simulated separately acquired x2 LR scan of HR ``image`` (see the module docstring).

    ``lr = |downsample_with_kernel(fourier_shift(image, s), kernel) + noise|`` (Rician), with a
    per-image misregistration ``s ~ U[-max_shift, max_shift]^2`` HR pixels.

    Args:
      key: ``jax.random`` key.
      image: real HR images ``(..., H, W)``, ``H, W`` even.
      kernel: the effective ``(K, K)`` kernel (:func:`scanner_kernel`).
      max_shift: bound of the misregistration per axis, in HR pixels (``>= 0``).
      noise_std: Rician noise level per real/imaginary channel (``>= 0``).

    Returns:
      ``(lr (..., H/2, W/2) float32, shifts (..., 2) float32)``.
    """
    check_ndim(image, "image", min_ndim=2)
    check_positive(max_shift, "max_shift", allow_zero=True)
    check_positive(noise_std, "noise_std", allow_zero=True)
    shift_key, noise_key = jax.random.split(key)
    shifts = jax.random.uniform(shift_key, np.shape(image)[:-2] + (2,), jnp.float32,
                                -max_shift, max_shift)
    low = downsample_with_kernel(fourier_shift(image, shifts), kernel)
    return rician_noise(noise_key, jnp.maximum(low, 0.0), sigma=noise_std), shifts
