"""Tests of DLMRI's parts against what they must do: patch extraction and averaging against
explicit loops, OMP recovering planted sparse codes, K-SVD lowering the coding error and
finding a planted dictionary, and the whole algorithm on full and partial sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.physics.dlmri import (
    average_patches,
    dlmri,
    dlmri_thresholds,
    extract_patches,
    ksvd,
    omp,
)
from jaxmri.physics.fft import fft2c


def _unit_columns(a):
    return a / np.linalg.norm(a, axis=0, keepdims=True)


def test_patches_match_explicit_loops_and_average_back():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((7, 9)).astype(np.float32)
    patches = np.asarray(extract_patches(jnp.asarray(image), 3))
    assert patches.shape == (5 * 7, 9)
    for i in range(5):
        for j in range(7):
            np.testing.assert_array_equal(patches[i * 7 + j], image[i:i + 3, j:j + 3].ravel())
    # Averaging the unmodified patches gives the image back (every patch agrees on a pixel).
    np.testing.assert_allclose(np.asarray(average_patches(jnp.asarray(patches), (7, 9), 3)),
                               image, rtol=1e-6)
    # A corner pixel is covered by one patch, the centre by 9: averaging 1s and 0s.
    ones = np.zeros_like(patches)
    ones[0] = 1.0
    averaged = np.asarray(average_patches(jnp.asarray(ones), (7, 9), 3))
    assert averaged[0, 0] == 1.0 and averaged[2, 2] == pytest.approx(1 / 9)


def _omp_reference(d, signal, max_atoms, tolerance=0.0):
    """Textbook OMP in numpy: pick the most correlated atom, refit by least squares."""
    code = np.zeros(d.shape[1], d.dtype)
    support, residual = [], signal.copy()
    while len(support) < max_atoms and np.linalg.norm(residual) ** 2 > tolerance:
        corr = np.abs(d.conj().T @ residual)
        corr[support] = -1.0
        support.append(int(np.argmax(corr)))
        coef, *_ = np.linalg.lstsq(d[:, support], signal, rcond=None)
        residual = signal - d[:, support] @ coef
    code[support] = coef if support else 0
    return code


def _ksvd_reference(signals, d, sparsity, num_iters):
    """Textbook K-SVD in numpy (columns are signals): OMP, then each atom from the SVD of the
    residual restricted to the signals that use it."""
    y = signals.T.astype(np.result_type(signals, np.float64))
    d = d.astype(np.result_type(d, y)).copy()
    for _ in range(num_iters):
        a = np.stack([_omp_reference(d, col, sparsity) for col in y.T], axis=1)
        for k in range(d.shape[1]):
            users = np.flatnonzero(a[k])
            if users.size == 0:
                continue
            error = y[:, users] - d @ a[:, users] + np.outer(d[:, k], a[k, users])
            u, sv, vt = np.linalg.svd(error, full_matrices=False)
            d[:, k], a[k, users] = u[:, 0], sv[0] * vt[0]
    return d


def test_omp_equals_a_textbook_implementation_and_recovers_planted_codes():
    rng = np.random.default_rng(1)
    d = _unit_columns(rng.standard_normal((16, 32)))
    codes = np.zeros((50, 32))
    for row in codes:
        row[rng.choice(32, 3, replace=False)] = rng.uniform(1, 2, 3) * rng.choice([-1, 1], 3)
    signals = codes @ d.T + 0.01 * rng.standard_normal((50, 16))
    got = np.asarray(omp(jnp.asarray(d, jnp.float32), jnp.asarray(signals, jnp.float32),
                         max_atoms=4))
    want = np.stack([_omp_reference(d, s, 4) for s in signals])
    np.testing.assert_allclose(got, want, atol=2e-4)
    # Incoherent enough (64 x 96) that OMP recovers every planted 3-sparse code exactly.
    d = _unit_columns(rng.standard_normal((64, 96)))
    codes = np.zeros((50, 96))
    for row in codes:
        row[rng.choice(96, 3, replace=False)] = rng.uniform(1, 2, 3) * rng.choice([-1, 1], 3)
    got = np.asarray(omp(jnp.asarray(d, jnp.float32), jnp.asarray(codes @ d.T, jnp.float32),
                         max_atoms=3))
    np.testing.assert_allclose(got, codes, atol=1e-4)
    # With a tolerance a signal stops as soon as its error is small enough: one atom here.
    one = np.asarray(omp(jnp.asarray(d, jnp.float32), jnp.asarray(d[:, :1].T, jnp.float32),
                         max_atoms=5, tolerance=1e-6))
    assert np.count_nonzero(np.abs(one) > 1e-6) == 1 and one[0, 0] == pytest.approx(1.0)


def test_omp_on_complex_signals_equals_least_squares_on_its_support():
    rng = np.random.default_rng(2)
    d = _unit_columns(rng.standard_normal((9, 12)) + 1j * rng.standard_normal((9, 12)))
    signals = rng.standard_normal((4, 9)) + 1j * rng.standard_normal((4, 9))
    got = np.asarray(omp(jnp.asarray(d, jnp.complex64), jnp.asarray(signals, jnp.complex64),
                         max_atoms=4))
    want = np.stack([_omp_reference(d, s, 4) for s in signals])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_ksvd_equals_a_textbook_implementation_and_lowers_the_error():
    rng = np.random.default_rng(3)
    truth = _unit_columns(rng.standard_normal((16, 16)))
    codes = np.zeros((300, 16))
    for row in codes:
        row[rng.choice(16, 2, replace=False)] = rng.standard_normal(2)
    signals = codes @ truth.T
    start = _unit_columns(rng.standard_normal((16, 16)))
    learned = np.asarray(ksvd(jnp.asarray(signals, jnp.float32), jnp.asarray(start, jnp.float32),
                              sparsity=2, num_iters=3))
    want = _ksvd_reference(signals, start, 2, 3)
    # Atoms agree up to sign (an SVD's and an eigendecomposition's signs are arbitrary).
    np.testing.assert_allclose(np.abs(np.sum(learned * want, axis=0)), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(learned, axis=0), 1.0, rtol=1e-5)

    def error(d):
        d = jnp.asarray(d, jnp.float32)
        x = jnp.asarray(signals, jnp.float32)
        return float(jnp.linalg.norm(x - omp(d, x, max_atoms=2) @ d.T))

    assert error(learned) < 0.5 * error(start)


def _phantom(n=32):
    y, x = np.mgrid[:n, :n] / n - 0.5
    img = (x**2 / 0.16 + y**2 / 0.2 < 1) * 0.8 + 0.4 * ((x - 0.1) ** 2 + (y + 0.05) ** 2 < 0.01)
    return img.astype(np.complex64)


def test_dlmri_keeps_a_fully_sampled_image_and_beats_zero_filling():
    """Full sampling: the data step puts every sample back, so the image is returned. 30 %
    random 2-D sampling of a piecewise-constant phantom: DLMRI removes a third of zero-filling's
    error in 60 outer iterations (its slow, steady convergence: 0.93 of it after 4, 0.74 after
    40), more than after 20."""
    image = _phantom()
    maps = np.ones((1, 32, 32), np.complex64)
    kspace = np.asarray(fft2c(jnp.asarray(image)))[None]
    small = dict(num_atoms=16, patch_size=4, num_train=400, sparsity=3, ksvd_iters=3)
    full = dlmri(jnp.asarray(kspace), np.ones((32, 32), np.float32), jnp.asarray(maps),
                 jax.random.key(0), num_iters=4, **small)
    np.testing.assert_allclose(np.asarray(full), image, atol=1e-5)
    mask = (np.random.default_rng(0).random((32, 32)) < 0.3).astype(np.float32)
    mask[14:18, 14:18] = 1.0
    zero_filled = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(mask * kspace[0]),
                                               norm="ortho"))

    def error(x):
        return np.linalg.norm(np.abs(x) - np.abs(image))

    recon = {iters: np.asarray(dlmri(jnp.asarray(kspace), mask, jnp.asarray(maps),
                                     jax.random.key(0), num_iters=iters, **small))
             for iters in (20, 60)}
    assert error(recon[60]) < 0.75 * error(zero_filled)
    assert error(recon[60]) < error(recon[20])


def test_dlmri_thresholds_and_bad_arguments():
    assert dlmri_thresholds(6) == pytest.approx((0.046,) * 4 + (0.0322,) * 2)
    kspace = jnp.zeros((1, 16, 16), jnp.complex64)
    maps = jnp.ones((1, 16, 16), jnp.complex64)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="single-coil"):
        dlmri(jnp.zeros((2, 16, 16), jnp.complex64), np.ones((16, 16)), maps, key)
    with pytest.raises(ValueError, match="num_atoms"):
        dlmri(kspace, np.ones((16, 16)), maps, key, num_atoms=8)
    with pytest.raises(ValueError, match="thresholds"):
        dlmri(kspace, np.ones((16, 16)), maps, key, num_iters=3, thresholds=(0.1,))
    with pytest.raises(ValueError, match="mask"):
        dlmri(kspace, np.ones((3, 16, 16)), maps, key)
    with pytest.raises(TypeError, match="kspace"):
        dlmri(jnp.zeros((1, 16, 16)), np.ones((16, 16)), maps, key)


def test_ksvd_on_complex_signals_equals_the_textbook_implementation():
    """The paper preset's images carry a phase, so its patches and atoms are complex."""
    rng = np.random.default_rng(4)
    truth = _unit_columns(rng.standard_normal((9, 9)) + 1j * rng.standard_normal((9, 9)))
    codes = np.zeros((200, 9), np.complex128)
    for row in codes:
        row[rng.choice(9, 2, replace=False)] = rng.standard_normal(2) + 1j * rng.standard_normal(2)
    signals = codes @ truth.T
    start = _unit_columns(rng.standard_normal((9, 9)) + 1j * rng.standard_normal((9, 9)))
    learned = np.asarray(ksvd(jnp.asarray(signals, jnp.complex64),
                              jnp.asarray(start, jnp.complex64), sparsity=2, num_iters=2))
    want = _ksvd_reference(signals, start, 2, 2)
    # Atoms agree up to a unit complex factor.
    np.testing.assert_allclose(np.abs(np.sum(np.conj(learned) * want, axis=0)), 1.0, atol=2e-3)
