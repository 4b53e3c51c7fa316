"""Kernel downsampling, the ZF baseline and the simulated scanner LR acquisition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import shift as nd_shift
from scipy.optimize import minimize_scalar
from scipy.signal import correlate2d

from jaxmri.physics import bicubic_resize
from jaxmri.physics.lowres import (
    downsample_with_kernel,
    fourier_shift,
    gaussian_kernel,
    kspace_lowres,
    scanner_kernel,
    scanner_lowres,
    select_gaussian_sigma,
)


def _smooth_image(size=32, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    img = np.zeros((size, size))
    for _ in range(4):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
        img += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2)
    return (img / img.max()).astype(np.float32)


def test_downsample_with_kernel_matches_scipy_correlation():
    rng = np.random.default_rng(1)
    image = rng.random((2, 20, 24)).astype(np.float32)
    kernel = rng.random((5, 5)).astype(np.float32)
    out = np.asarray(downsample_with_kernel(image, kernel))
    for n in range(2):
        padded = np.pad(image[n], 2, mode="symmetric")
        ref = correlate2d(padded, kernel, mode="valid")[::2, ::2]
        np.testing.assert_allclose(out[n], ref, rtol=1e-5, atol=1e-5)
    jitted = jax.jit(lambda a: downsample_with_kernel(a, kernel))(image)
    np.testing.assert_allclose(jitted, out, atol=1e-6)


def test_kernels_line_up_with_bicubic_and_the_kspace_crop():
    # A linear ramp is reproduced exactly by any symmetric kernel: the centre of mass of the
    # Gaussian kernel (6) must put LR pixel i at HR 2 i, where bicubic and the k-space crop
    # (jaxmri.physics.grid_position) put it.
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    down = np.asarray(downsample_with_kernel(ramp, gaussian_kernel(sigma=1.0)))
    bic = np.asarray(bicubic_resize(ramp, (32, 32)))
    np.testing.assert_allclose(down[8:-8, 8:-8], bic[8:-8, 8:-8], atol=1e-3)
    np.testing.assert_allclose(down[10, 10:12], [20.0, 22.0], atol=1e-3)
    # Odd LR size (31 of 62): the grid puts LR pixel i at HR 2 i + 1.
    odd = np.asarray(downsample_with_kernel(ramp[:62, :62], gaussian_kernel(sigma=1.0)))
    np.testing.assert_allclose(odd[10, 10:12], [21.0, 23.0], atol=1e-3)
    # A smooth image: the k-space crop (kspace_lowres with an all-pass window) and a narrow
    # kernel see the same pixel positions.
    image = _smooth_image(64)
    zf = np.asarray(kspace_lowres(image, fermi_radius=2.0, fermi_width=0.01))
    kern = np.asarray(downsample_with_kernel(image, gaussian_kernel(sigma=0.5)))
    # The same kernel one HR pixel to the right (the half-pixel convention's error, doubled).
    rolled = np.roll(gaussian_kernel(sigma=0.5), 1, axis=1)
    shifted = np.asarray(downsample_with_kernel(image, rolled))
    assert np.abs(zf - kern)[4:-4, 4:-4].max() < 0.5 * np.abs(zf - shifted)[4:-4, 4:-4].max()


def test_select_gaussian_sigma_finds_the_sigma_of_synthetic_lr():
    rng = np.random.default_rng(7)
    hr = np.stack([_smooth_image(48, seed=s) for s in range(4)])
    lr = np.asarray(downsample_with_kernel(hr, gaussian_kernel(sigma=1.2)))
    lr = lr + 0.003 * rng.standard_normal(lr.shape).astype(np.float32)
    sigmas = [0.5 + 0.1 * i for i in range(16)]
    best, errors = select_gaussian_sigma(hr, lr, sigmas)
    assert abs(best - 1.2) < 1e-6 and errors.shape == (16,) and np.argmin(errors) == 7
    with pytest.raises(ValueError, match="lr must have shape"):
        select_gaussian_sigma(hr, lr[:, :-1], sigmas)
    with pytest.raises(ValueError, match="sigmas"):
        select_gaussian_sigma(hr, lr, [])


def test_scanner_kernel_is_not_gaussian():
    truth = scanner_kernel()
    assert truth.shape == (13, 13)
    np.testing.assert_allclose(truth.sum(), 1.0, atol=1e-5)
    idx = np.arange(13)
    np.testing.assert_allclose([(truth.sum(1) * idx).sum(), (truth.sum(0) * idx).sum()],
                               [6.0, 6.0], atol=0.02)  # the central pixel (grid_position)
    assert truth.min() < -0.003  # windowed-sinc side lobes: no Gaussian is negative

    def fit_error(kernel):
        res = minimize_scalar(
            lambda s: np.sum((gaussian_kernel(sigma=s) - kernel) ** 2), bounds=(0.3, 4.0),
            method="bounded")
        return np.sqrt(res.fun) / np.linalg.norm(kernel)

    assert fit_error(truth) > 0.2
    # The same fit recovers a Gaussian exactly, so the test could fail.
    assert fit_error(gaussian_kernel(sigma=1.3)) < 1e-3
    # Anisotropic: the second moments along the two diagonals differ.
    yy, xx = np.mgrid[:13, :13] - 6.5
    assert abs(np.sum(truth * (xx + yy) ** 2) - np.sum(truth * (xx - yy) ** 2)) > 0.5


def test_fourier_shift_matches_integer_roll_and_scipy_subpixel():
    image = _smooth_image()
    rolled = np.asarray(fourier_shift(image, np.array([2.0, -3.0])))
    np.testing.assert_allclose(rolled, np.roll(image, (2, -3), axis=(0, 1)), atol=1e-5)
    sub = np.asarray(fourier_shift(image, np.array([0.5, 0.25])))
    ref = nd_shift(image.astype(np.float64), (0.5, 0.25), order=3, mode="wrap")
    np.testing.assert_allclose(sub[4:-4, 4:-4], ref[4:-4, 4:-4], atol=2e-2)


def test_scanner_lowres_misregistration_within_bounds_and_model():
    hr = np.stack([_smooth_image(seed=s) for s in range(6)])
    key = jax.random.PRNGKey(3)
    lr, shifts = scanner_lowres(key, hr, kernel=scanner_kernel(), max_shift=0.6, noise_std=0.0)
    shifts = np.asarray(shifts)
    assert shifts.shape == (6, 2) and np.all(np.abs(shifts) <= 0.6)
    assert np.std(shifts) > 0.1  # random, not all zero
    expected = downsample_with_kernel(fourier_shift(hr, shifts), scanner_kernel())
    np.testing.assert_allclose(lr, np.maximum(np.asarray(expected), 0), atol=1e-5)
    noisy, _ = scanner_lowres(key, hr, kernel=scanner_kernel(), max_shift=0.6, noise_std=0.05)
    assert 0.03 < np.std(np.asarray(noisy) - np.asarray(lr)) < 0.07
    jitted = jax.jit(lambda k, x: scanner_lowres(k, x, kernel=scanner_kernel()))(key, hr)
    eager = scanner_lowres(key, hr, kernel=scanner_kernel())
    np.testing.assert_allclose(jitted[0], eager[0], atol=1e-5)


def test_kspace_lowres_keeps_a_quarter_of_kspace():
    image = _smooth_image(32)
    low = np.asarray(kspace_lowres(image, fermi_radius=2.0, fermi_width=0.01))  # window ~ 1
    # Direct numpy: central 16x16 of the centred FFT, unitary inverse, / 2.
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))
    ref = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k[8:24, 8:24]), norm="ortho")))
    np.testing.assert_allclose(low, ref / 2, atol=1e-5)
    np.testing.assert_allclose(low.mean(), image.mean(), rtol=0.05)
    batch = np.stack([image, image[::-1]])
    np.testing.assert_allclose(jax.vmap(kspace_lowres)(batch), kspace_lowres(batch), atol=1e-6)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="kernel"):
        downsample_with_kernel(np.zeros((8, 8), np.float32), np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="factor"):
        downsample_with_kernel(np.zeros((9, 9), np.float32), np.ones((3, 3), np.float32))
    with pytest.raises(TypeError, match="image"):
        downsample_with_kernel(np.zeros((8, 8), np.complex64), np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="size"):
        scanner_kernel(size=12)
    with pytest.raises(ValueError, match="max_shift"):
        scanner_lowres(jax.random.PRNGKey(0), jnp.zeros((8, 8)), kernel=scanner_kernel(),
                       max_shift=-1.0)
    with pytest.raises(ValueError, match="shift"):
        fourier_shift(np.zeros((2, 8, 8), np.float32), np.zeros((3,)))
    with pytest.raises(ValueError, match="image"):
        kspace_lowres(np.zeros((9, 8), np.float32))
