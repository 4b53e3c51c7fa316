"""Tests for jaxmri.physics.degrade against scipy, PIL, analytic functions and statistics."""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from PIL import Image
from scipy import ndimage

from jaxmri.physics.degrade import (
    bicubic_resize,
    complex_gaussian_noise,
    fermi_filter,
    gaussian_blur,
    grid_position,
    kspace_crop,
    kspace_zero_pad,
    rician_noise,
)


def _crandn(rng: np.random.Generator, shape) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _np_fft2c(x):
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


# -------------------------------------------------------------------------- crop and pad


@settings(max_examples=20, deadline=None)
@given(
    big=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    frac=st.tuples(st.floats(0.1, 1.0), st.floats(0.1, 1.0)),
    seed=st.integers(0, 2**16),
)
def test_crop_and_zero_pad_are_adjoint(big, frac, seed):
    small = tuple(max(1, int(round(b * f))) for b, f in zip(big, frac, strict=True))
    rng = np.random.default_rng(seed)
    x, y = _crandn(rng, (2,) + big), _crandn(rng, (2,) + small)
    lhs = np.vdot(np.asarray(kspace_crop(x, small)), y)
    rhs = np.vdot(x, np.asarray(kspace_zero_pad(y, big)))
    assert abs(lhs - rhs) <= 1e-5 * np.linalg.norm(x) * np.linalg.norm(y)
    np.testing.assert_array_equal(kspace_crop(kspace_zero_pad(y, big), small), y)


@pytest.mark.parametrize("big, small", [((16, 16), (8, 8)), ((15, 16), (7, 10)),
                                        ((9, 11), (4, 5)), ((8, 8), (8, 8))])
def test_crop_and_pad_keep_dc_at_centre(big, small):
    delta = np.zeros(big, np.complex64)
    delta[big[0] // 2, big[1] // 2] = 1.0
    cropped = np.asarray(kspace_crop(delta, small))
    assert np.unravel_index(np.abs(cropped).argmax(), small) == (small[0] // 2, small[1] // 2)
    delta_small = np.zeros(small, np.complex64)
    delta_small[small[0] // 2, small[1] // 2] = 1.0
    padded = np.asarray(kspace_zero_pad(delta_small, big))
    assert np.unravel_index(np.abs(padded).argmax(), big) == (big[0] // 2, big[1] // 2)
    # The DC of fft2c of a constant image is on the centre sample, so it survives the crop.
    const = np.ones(big, np.complex64)
    np.testing.assert_allclose(np.abs(kspace_crop(_np_fft2c(const), small)).sum(),
                               np.sqrt(big[0] * big[1]), rtol=1e-5)


@pytest.mark.parametrize("big, small", [((32, 24), (16, 12)), ((31, 24), (15, 13))])
def test_crop_is_band_limited_downsampling(big, small):
    """Cropping the spectrum of a band-limited image = sampling it on the coarser grid."""
    rng = np.random.default_rng(0)
    freqs = [(0, 0), (1, -2), (-3, 1), (2, 4)]
    coeffs = _crandn(rng, len(freqs))

    def sample(shape):
        iy = (np.arange(shape[0]) - shape[0] // 2)[:, None] / shape[0]
        ix = (np.arange(shape[1]) - shape[1] // 2)[None, :] / shape[1]
        return sum(c * np.exp(2j * np.pi * (fy * iy + fx * ix))
                   for c, (fy, fx) in zip(coeffs, freqs, strict=True))

    scale = np.sqrt(small[0] * small[1] / (big[0] * big[1]))
    cropped = np.asarray(kspace_crop(_np_fft2c(sample(big)).astype(np.complex64), small))
    np.testing.assert_allclose(cropped * scale, _np_fft2c(sample(small)), atol=1e-4)


def test_crop_pad_bad_arguments_name_the_argument():
    x = np.ones((8, 8), np.complex64)
    with pytest.raises(ValueError, match="out_shape"):
        kspace_crop(x, (9, 8))
    with pytest.raises(ValueError, match="out_shape"):
        kspace_zero_pad(x, (4, 8))
    with pytest.raises(ValueError, match="out_shape"):
        kspace_crop(x, (4,))
    with pytest.raises(ValueError, match="kspace"):
        kspace_crop(np.ones(8, np.complex64), (4, 4))


def test_crop_pad_jit_and_vmap():
    rng = np.random.default_rng(1)
    x = _crandn(rng, (3, 10, 9))
    crop = functools.partial(kspace_crop, out_shape=(5, 4))
    np.testing.assert_array_equal(jax.jit(crop)(x), crop(x))
    np.testing.assert_array_equal(jax.vmap(crop)(x), crop(x))
    pad = functools.partial(kspace_zero_pad, out_shape=(12, 12))
    np.testing.assert_array_equal(jax.jit(pad)(x), pad(x))


# --------------------------------------------------------------------------------- Fermi


def test_fermi_filter_shape_values():
    window = np.asarray(fermi_filter((64, 32), radius=0.5, width=0.02))
    assert window.shape == (64, 32) and window.dtype == np.float32
    assert window.min() >= 0 and window.max() <= 1
    cy, cx = 32, 16
    # r = radius exactly on both axes (16 px of 32 half-height, 8 px of 16 half-width): 0.5.
    for y, x in [(cy + 16, cx), (cy - 16, cx), (cy, cx + 8), (cy, cx - 8)]:
        assert window[y, x] == pytest.approx(0.5, abs=1e-6)
    assert window[cy, cx] > 0.9999 and window[cy + 10, cx + 3] > 0.99  # well inside
    assert window[0, 0] < 1e-6 and window[cy + 25, cx] < 1e-3  # far outside
    profile = window[cy:, cx]
    assert np.all(np.diff(profile) <= 0)  # decreasing with radius
    np.testing.assert_allclose(window[cy + 5, cx + 3], window[cy - 5, cx - 3], atol=1e-7)
    # A wider transition keeps the half-value point and softens the edge.
    soft = np.asarray(fermi_filter((64, 32), radius=0.5, width=0.1))
    assert soft[cy + 16, cx] == pytest.approx(0.5, abs=1e-6)
    assert soft[cy + 20, cx] > window[cy + 20, cx] and soft[cy + 12, cx] < window[cy + 12, cx]


@pytest.mark.parametrize(
    "kwargs, name",
    [({"radius": 0.0, "width": 0.1}, "radius"), ({"radius": 0.5, "width": -0.1}, "width")],
)
def test_fermi_filter_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        fermi_filter((8, 8), **kwargs)
    with pytest.raises(ValueError, match="shape"):
        fermi_filter((8, 0), radius=0.5, width=0.1)


# --------------------------------------------------------------------------- Gaussian blur


@pytest.mark.parametrize(
    "shape, sigma, truncate",
    [((32, 40), 1.5, 4.0), ((7, 5), 3.0, 4.0), ((16, 16), (0.7, 2.0), 4.0), ((20, 24), 1.0, 2.0)],
)
def test_gaussian_blur_matches_scipy_reflect(shape, sigma, truncate):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    expected = ndimage.gaussian_filter(x.astype(np.float64), sigma, mode="reflect",
                                       truncate=truncate)
    out = gaussian_blur(x, sigma=sigma, truncate=truncate)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_gaussian_blur_complex_batched_jit():
    rng = np.random.default_rng(3)
    x = _crandn(rng, (2, 3, 12, 10))
    out = gaussian_blur(x, sigma=1.2)
    assert out.dtype == jnp.complex64
    expected = (ndimage.gaussian_filter(x.real, (0, 0, 1.2, 1.2), mode="reflect")
                + 1j * ndimage.gaussian_filter(x.imag, (0, 0, 1.2, 1.2), mode="reflect"))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    blur = functools.partial(gaussian_blur, sigma=1.2)
    np.testing.assert_allclose(jax.jit(blur)(x), out, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(blur)(x), out, atol=1e-6)


def test_gaussian_blur_bad_arguments():
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(np.ones((8, 8), np.float32), sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(np.ones((8, 8), np.float32), sigma=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="truncate"):
        gaussian_blur(np.ones((8, 8), np.float32), sigma=1.0, truncate=0.0)
    with pytest.raises(ValueError, match="image"):
        gaussian_blur(np.ones(8, np.float32), sigma=1.0)


# ------------------------------------------------------------------------------- bicubic


@pytest.mark.parametrize("out_shape", [(20, 24), (13, 17), (80, 96), (40, 30)])
def test_bicubic_resize_matches_pil_bicubic_on_the_centred_grid(out_shape):
    """PIL's BICUBIC (Keys a = -0.5, antialiased when shrinking) sampled where grid_position
    puts the output pixels: PIL's ``box`` is the input region the output spans, here
    ``[-t / s, -t / s + n)`` for scale ``s`` and translation ``t`` of the centred grid. PIL
    refuses negative boxes, so the input is padded; taps that reach the padding differ (PIL
    and jax treat borders differently), so only the interior is compared."""
    rng = np.random.default_rng(4)
    x = rng.random((40, 48)).astype(np.float32)
    pad = 8
    origin = []
    for n, m in ((48, out_shape[1]), (40, out_shape[0])):
        scale = m / n
        origin.append(pad - (grid_position(0, n, m) + 0.5 - 0.5 * scale) / scale)
    box = (origin[0], origin[1], origin[0] + 48, origin[1] + 40)
    pil = Image.fromarray(np.pad(x, pad, mode="reflect"), mode="F").resize(
        (out_shape[1], out_shape[0]), Image.BICUBIC, box=box)
    np.testing.assert_allclose(np.asarray(bicubic_resize(x, out_shape))[4:-4, 4:-4],
                               np.asarray(pil)[4:-4, 4:-4], atol=1e-5)


def test_grid_position_is_the_centred_fft_grid():
    np.testing.assert_allclose(grid_position(np.arange(4), 32, 64), [0, 2, 4, 6])
    assert grid_position(16, 32, 64) == 32  # the FFT origins coincide
    assert grid_position(0, 31, 62) == 1  # odd LR size: LR pixel 15 on HR pixel 31
    np.testing.assert_allclose(grid_position(np.arange(4), 64, 32), [0, 0.5, 1, 1.5])
    assert grid_position(7, 20, 20) == 7
    with pytest.raises(ValueError, match="n_from"):
        grid_position(0, 0, 4)


def test_bicubic_resize_smooth_image_matches_analytic_function():
    def f(y, x):
        return np.cos(2 * np.pi * y) * np.sin(2 * np.pi * x) + 0.5 * np.cos(2 * np.pi * (x + y))

    def grid(n, m):  # pixel i of n at (i - n // 2) / n of the field of view (centred grid)
        return np.meshgrid((np.arange(n) - n // 2) / n, (np.arange(m) - m // 2) / m,
                           indexing="ij")

    x = f(*grid(32, 40)).astype(np.float32)
    up = np.asarray(bicubic_resize(x, (64, 80)))
    expected = f(*grid(64, 80))
    assert np.abs(up - expected)[4:-4, 4:-4].max() < 5e-3
    # Enlarging ignores antialias; shrinking with it low-passes (smaller peak amplitude).
    np.testing.assert_allclose(bicubic_resize(x, (64, 80), antialias=False), up, atol=1e-6)
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((64, 64)).astype(np.float32)
    assert (np.std(np.asarray(bicubic_resize(noise, (16, 16))))
            < 0.5 * np.std(np.asarray(bicubic_resize(noise, (16, 16), antialias=False))))


def _band_limited_image(size: int, band: int, seed: int) -> np.ndarray:
    """A real image whose centred spectrum is zero outside the central ``band x band`` block."""
    rng = np.random.default_rng(seed)
    k = np.zeros((size, size), np.complex128)
    lo = size // 2 - band // 2
    k[lo:lo + band, lo:lo + band] = (rng.standard_normal((band, band))
                                      + 1j * rng.standard_normal((band, band)))
    image = np.real(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k), norm="ortho")))
    return (image / np.abs(image).max()).astype(np.float32)


def _psnr(a, b) -> float:
    return float(10 * np.log10(np.abs(b).max() ** 2 / np.mean((a - b) ** 2)))


def test_kspace_crop_and_bicubic_resize_share_the_sampling_grid():
    """A band-limited image cropped in k-space (the LR acquisition of paper 004) and resized
    back by bicubic interpolation is recovered, and bicubic up- and downscaling agree with the
    k-space zero-pad and crop: the two put LR pixel i at the same HR position (2 i). With the
    half-pixel grid of ``jax.image.resize`` the bicubic images sat half an HR pixel off
    (measured on this image: 21.0 dB up and down, against 43.8 and 46.2 dB now)."""
    hr = _band_limited_image(64, 12, seed=3)
    fft = functools.partial(np.fft.fft2, norm="ortho")
    ifft = functools.partial(np.fft.ifft2, norm="ortho")
    k_hr = np.fft.fftshift(fft(np.fft.ifftshift(hr)))
    lr = np.real(np.fft.fftshift(ifft(np.fft.ifftshift(np.asarray(kspace_crop(k_hr, (32, 32)))))))
    lr = (lr / 2).astype(np.float32)  # sqrt(h w / (H W)): intensity-preserving
    zero_padded = 2 * np.real(np.fft.fftshift(ifft(np.fft.ifftshift(
        np.asarray(kspace_zero_pad(np.fft.fftshift(fft(np.fft.ifftshift(lr))), (64, 64)))))))
    np.testing.assert_allclose(zero_padded, hr, atol=1e-5)  # band-limited: exact
    inner = (slice(6, -6), slice(6, -6))  # FFT images are periodic, bicubic is not
    up = np.asarray(bicubic_resize(lr, (64, 64)))
    assert _psnr(up[inner], hr[inner]) > 40.0
    assert _psnr(up[inner], zero_padded[inner]) > 40.0
    down = np.asarray(bicubic_resize(hr, (32, 32)))
    assert _psnr(down[3:-3, 3:-3], lr[3:-3, 3:-3]) > 40.0


def test_bicubic_resize_complex_batched_jit():
    rng = np.random.default_rng(6)
    x = _crandn(rng, (2, 16, 12))
    out = bicubic_resize(x, (8, 6))
    assert out.shape == (2, 8, 6) and out.dtype == jnp.complex64
    np.testing.assert_allclose(
        out, np.asarray(bicubic_resize(x.real, (8, 6))) + 1j * np.asarray(
            bicubic_resize(x.imag, (8, 6))), atol=1e-6)
    resize = functools.partial(bicubic_resize, out_shape=(8, 6))
    np.testing.assert_allclose(jax.jit(resize)(x), out, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(resize)(x), out, atol=1e-6)
    with pytest.raises(ValueError, match="out_shape"):
        bicubic_resize(x, (8, -1))


# --------------------------------------------------------------------------------- noise


def test_complex_gaussian_noise_statistics():
    x = jnp.full((200, 200), 2.0 - 1.0j, jnp.complex64)
    sigma = 0.3
    noisy = complex_gaussian_noise(jax.random.key(0), x, sigma=sigma)
    assert noisy.dtype == jnp.complex64
    noise = np.asarray(noisy - x)
    assert np.std(noise.real) == pytest.approx(sigma, rel=0.02)
    assert np.std(noise.imag) == pytest.approx(sigma, rel=0.02)
    assert abs(np.mean(noise)) < 5 * sigma / 200
    assert abs(np.corrcoef(noise.real.ravel(), noise.imag.ravel())[0, 1]) < 0.02
    np.testing.assert_array_equal(complex_gaussian_noise(jax.random.key(0), x, sigma=sigma), noisy)
    assert not np.allclose(complex_gaussian_noise(jax.random.key(1), x, sigma=sigma), noisy)
    np.testing.assert_array_equal(complex_gaussian_noise(jax.random.key(0), x, sigma=0.0), x)


def test_complex_gaussian_noise_per_example_sigma_and_jit():
    x = jnp.zeros((2, 100, 100), jnp.complex64)
    sigma = jnp.array([0.1, 1.0]).reshape(2, 1, 1)
    noisy = np.asarray(jax.jit(complex_gaussian_noise)(jax.random.key(2), x, sigma=sigma))
    assert np.std(noisy[0].real) == pytest.approx(0.1, rel=0.05)
    assert np.std(noisy[1].real) == pytest.approx(1.0, rel=0.05)
    # The same draws eagerly; XLA may fuse the Gaussian transform differently under jit, which
    # moves the last bit of some samples (different draws would differ by O(sigma)).
    np.testing.assert_allclose(complex_gaussian_noise(jax.random.key(2), x, sigma=sigma), noisy,
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="x"):
        complex_gaussian_noise(jax.random.key(0), jnp.zeros((4, 4)), sigma=0.1)
    with pytest.raises(ValueError, match="sigma"):
        complex_gaussian_noise(jax.random.key(0), x, sigma=-1.0)


def test_rician_noise_moments():
    sigma = 0.5
    zero = rician_noise(jax.random.key(3), jnp.zeros((300, 300)), sigma=sigma)
    assert zero.dtype == jnp.float32 and np.all(np.asarray(zero) >= 0)
    # Rayleigh: mean sigma sqrt(pi / 2) for zero signal.
    assert np.mean(zero) == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.01)
    # E[R^2] = A^2 + 2 sigma^2 for any signal A.
    a = 3.0
    signal = rician_noise(jax.random.key(4), jnp.full((300, 300), a), sigma=sigma)
    assert np.mean(np.asarray(signal) ** 2) == pytest.approx(a**2 + 2 * sigma**2, rel=0.01)
    jitted = jax.jit(functools.partial(rician_noise, sigma=sigma))(jax.random.key(3),
                                                                   jnp.zeros((300, 300)))
    np.testing.assert_allclose(jitted, zero, atol=1e-6)
    with pytest.raises(TypeError, match="magnitude"):
        rician_noise(jax.random.key(0), jnp.zeros((4, 4), jnp.complex64), sigma=0.1)
    with pytest.raises(ValueError, match="sigma"):
        rician_noise(jax.random.key(0), jnp.zeros((4, 4)), sigma=-0.1)
