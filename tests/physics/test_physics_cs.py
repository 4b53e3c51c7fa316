"""Tests of the CS solvers. L1-wavelet: Haar transform against an explicit matrix, the exact
solution for full sampling, objective decrease and a win over zero-filling. Total variation:
differences and TV against explicit formulas, the adjoint identity, and the primal-dual solution
against an independent dense ADMM solve of the same problem."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.physics import gaussian_cartesian_mask
from jaxmri.physics.cs import (
    finite_differences,
    finite_differences_adjoint,
    haar2d,
    haar_detail_mask,
    ihaar2d,
    l1_wavelet_fista,
    l1_wavelet_objective,
    total_variation,
    tv_objective,
    tv_primal_dual,
)
from jaxmri.physics.fft import fft2c


def _haar_matrix(n: int) -> np.ndarray:
    """1-D orthonormal one-level Haar analysis matrix: averages on top, differences below."""
    a = np.zeros((n, n))
    for i in range(n // 2):
        a[i, 2 * i] = a[i, 2 * i + 1] = 1 / np.sqrt(2)
        a[n // 2 + i, 2 * i], a[n // 2 + i, 2 * i + 1] = 1 / np.sqrt(2), -1 / np.sqrt(2)
    return a


def _phantom(n: int = 32) -> np.ndarray:
    y, x = np.mgrid[:n, :n] / n - 0.5
    img = (x**2 / 0.16 + y**2 / 0.2 < 1).astype(np.float64) * 0.8
    img += 0.5 * ((x - 0.1) ** 2 + (y + 0.05) ** 2 < 0.01)
    img -= 0.4 * (np.abs(x + 0.15) < 0.05) * (np.abs(y) < 0.2)
    phase = np.exp(1j * 0.5 * (x + y))
    return (img * phase).astype(np.complex64)


def test_one_level_haar_equals_explicit_matrix():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12)) + 1j * rng.standard_normal((2, 8, 12))
    want = _haar_matrix(8) @ x @ _haar_matrix(12).T
    got = np.asarray(haar2d(jnp.asarray(x, jnp.complex64), levels=1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_multilevel_haar_is_orthonormal_and_invertible():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 16, 32)), jnp.float32)
    c = haar2d(x, levels=3)
    np.testing.assert_allclose(float(jnp.linalg.norm(c)), float(jnp.linalg.norm(x)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ihaar2d(c, levels=3)), np.asarray(x), atol=1e-5)
    # Level 2 transforms the level-1 LL quadrant with the same one-level matrix.
    one = np.asarray(haar2d(x, levels=1))
    ll = one[:, :8, :16]
    want = _haar_matrix(8) @ ll @ _haar_matrix(16).T
    np.testing.assert_allclose(np.asarray(haar2d(x, levels=2))[:, :8, :16], want, atol=1e-5)
    # A constant image has no detail coefficients.
    const = haar2d(jnp.ones((16, 16)), levels=3)
    assert float(jnp.abs(const * haar_detail_mask((16, 16), levels=3)).max()) < 1e-6


def test_full_sampling_gives_the_closed_form_prox():
    # With A = F (orthonormal, every sample kept) the problem separates in the Haar domain:
    # x* = Psi^H soft(Psi x_0, lam) on detail bands, x_0 = F^H y.
    image = _phantom(16)
    kspace = np.asarray(fft2c(jnp.asarray(image)))[None, None]
    maps = np.ones((1, 1, 16, 16), np.complex64)
    mask = np.ones((16, 16), np.float32)
    lam = 0.05
    got = np.asarray(l1_wavelet_fista(jnp.asarray(kspace), mask, jnp.asarray(maps), lam=lam,
                                      levels=1, num_iters=5))[0]
    a = _haar_matrix(16)
    c = a @ image.astype(np.complex128) @ a.T
    detail = np.ones((16, 16), bool)
    detail[:8, :8] = False
    mag = np.abs(c)
    shrunk = np.where(mag > lam, c * (1 - lam / np.maximum(mag, 1e-30)), 0)
    c = np.where(detail, shrunk, c)
    want = a.T @ c @ a
    np.testing.assert_allclose(got, want, atol=2e-5)


def _problem(n: int = 32, acceleration: float = 3.0, mask_seed: int = 4):
    """A Haar-compressible image (constant on 4x4 blocks) measured with a 1-D Gaussian mask."""
    rng = np.random.default_rng(3)
    image = np.kron(rng.uniform(0.2, 1.0, (n // 4, n // 4)), np.ones((4, 4)))
    image = (image * np.exp(0.3j)).astype(np.complex64)
    maps = np.ones((1, 1, n, n), np.complex64)
    kspace = np.asarray(fft2c(jnp.asarray(image)))[None, None]
    kspace = kspace + 0.005 * (rng.standard_normal(kspace.shape)
                               + 1j * rng.standard_normal(kspace.shape)).astype(np.complex64)
    mask, _ = gaussian_cartesian_mask(np.random.default_rng(mask_seed), (n, n),
                                      acceleration=acceleration, center_lines=4)
    return image, jnp.asarray(kspace), jnp.asarray(mask), jnp.asarray(maps)


def test_fista_decreases_objective():
    image, kspace, mask, maps = _problem()
    lam = 0.003
    objective = functools.partial(l1_wavelet_objective, kspace=kspace, mask=mask, maps=maps,
                                  lam=lam)
    zero_filled = jnp.asarray(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(
        np.asarray(mask * kspace)), norm="ortho")))[:, 0]
    values = [float(objective(zero_filled)[0])]
    for iters in (5, 20, 200):
        values.append(float(objective(l1_wavelet_fista(kspace, mask, maps, lam=lam,
                                                       num_iters=iters))[0]))
    assert values[1] < values[0] and values[2] < values[1] and values[3] <= values[2] + 1e-6


def test_fista_beats_zero_filling_on_every_mask():
    """A compressible image from 3x column-undersampled data: CS's error is below zero-filling's
    for each of 8 random masks, and well below it on average (how far below depends on the
    mask: the ratio ranged 0.04-0.62 over these masks, 0.03-0.81 under the earlier draw)."""
    ratios = []
    for mask_seed in range(8):
        image, kspace, mask, maps = _problem(mask_seed=mask_seed)
        zero_filled = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(np.asarray(mask * kspace)),
                                                   norm="ortho"))[0, 0]
        recon = np.asarray(l1_wavelet_fista(kspace, mask, maps, lam=0.003, num_iters=200))[0]
        errors = [np.linalg.norm(np.abs(x) - np.abs(image)) for x in (recon, zero_filled)]
        ratios.append(errors[0] / errors[1])
    assert max(ratios) < 0.85 and np.mean(ratios) < 0.55, ratios


def test_fista_vmap_and_batch_agree():
    image, kspace, mask, maps = _problem(16)
    batch = jnp.concatenate([kspace, 0.5 * kspace])
    direct = l1_wavelet_fista(batch, mask, jnp.concatenate([maps, maps]), lam=0.01,
                              num_iters=10)
    mapped = jax.vmap(lambda k: l1_wavelet_fista(k[None], mask, maps, lam=0.01,
                                                 num_iters=10)[0])(batch)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(direct), rtol=1e-4, atol=1e-6)


def test_bad_arguments_name_the_argument():
    _, kspace, mask, maps = _problem(16)
    with pytest.raises(ValueError, match="mask"):
        l1_wavelet_fista(kspace, jnp.ones((3, 16, 16)), maps, lam=0.01)
    with pytest.raises(ValueError, match="lam"):
        l1_wavelet_fista(kspace, mask, maps, lam=-1.0)
    with pytest.raises(ValueError, match="levels"):
        l1_wavelet_fista(kspace, mask, maps, lam=0.01, levels=5)
    with pytest.raises(ValueError, match="num_iters"):
        l1_wavelet_fista(kspace, mask, maps, lam=0.01, num_iters=0)
    with pytest.raises(TypeError, match="kspace"):
        l1_wavelet_fista(jnp.abs(kspace), mask, maps, lam=0.01)
    with pytest.raises(ValueError, match="x spatial shape"):
        haar2d(jnp.zeros((12, 12)), levels=3)


# ---------------------------------------------------------------------------------------------
# Total variation


def _difference_matrix(n: int) -> np.ndarray:
    """1-D forward differences with a zero last row (Neumann), as an explicit ``(n, n)`` matrix."""
    d = np.zeros((n, n))
    for i in range(n - 1):
        d[i, i], d[i, i + 1] = -1.0, 1.0
    return d


def _complex_normal(rng, shape) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_finite_differences_equal_the_explicit_matrices_and_their_adjoint():
    rng = np.random.default_rng(0)
    x = _complex_normal(rng, (2, 6, 5))
    got = np.asarray(finite_differences(jnp.asarray(x)))
    np.testing.assert_allclose(got[:, 0], _difference_matrix(6) @ x, atol=1e-6)
    np.testing.assert_allclose(got[:, 1], x @ _difference_matrix(5).T, atol=1e-6)
    p = _complex_normal(rng, (2, 2, 6, 5))
    lhs = np.vdot(got, p)
    rhs = np.vdot(x, np.asarray(finite_differences_adjoint(jnp.asarray(p))))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


def test_total_variation_of_known_images():
    # A vertical step of height 2 crosses each of the 7 rows once: TV = 7 * 2.
    step = np.zeros((7, 9), np.complex64)
    step[:, 4:] = 2.0
    assert float(total_variation(jnp.asarray(step))) == pytest.approx(14.0)
    # A ramp along the columns (slope 0.5, 8 columns, 6 rows): 6 * 7 differences of 0.5;
    # multiplying by a unit phase changes nothing (the modulus is penalised).
    ramp = np.tile(0.5 * np.arange(8), (6, 1)) * np.exp(0.7j)
    assert float(total_variation(jnp.asarray(ramp, jnp.complex64))) == pytest.approx(21.0,
                                                                                     rel=1e-5)
    # A single bright pixel inside: its own pixel (two differences of -1, norm sqrt 2) plus
    # the pixel above and the pixel to the left (one difference of 1 each).
    dot = np.zeros((5, 5), np.complex64)
    dot[2, 2] = 1.0
    assert float(total_variation(jnp.asarray(dot))) == pytest.approx(2 + np.sqrt(2), rel=1e-6)


def _tv_admm_reference(kspace, mask, maps, lam, *, rho=1.0, iters=4000):
    """The TV problem solved by ADMM with dense matrices (independent of jaxmri's operators):
    min 1/2 ||A x - y||^2 + lam sum_i ||z_i||, z = D x."""
    coils, h, w = maps.shape
    n = h * w
    fourier = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(
        np.eye(n).reshape(n, h, w), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    fourier = fourier.reshape(n, n).T  # column j: the k-space of the j-th unit image
    a = np.concatenate([np.diag(mask.ravel()) @ fourier @ np.diag(maps[c].ravel())
                        for c in range(coils)])
    y = (mask * kspace).ravel()
    d = np.concatenate([np.kron(_difference_matrix(h), np.eye(w)),
                        np.kron(np.eye(h), _difference_matrix(w))])
    lhs = np.linalg.inv(a.conj().T @ a + rho * d.T @ d)
    aty = a.conj().T @ y
    x = aty.copy()
    z = d @ x
    u = np.zeros_like(z)
    for _ in range(iters):
        x = lhs @ (aty + rho * d.T @ (z - u))
        v = (d @ x + u).reshape(2, n)
        norm = np.sqrt(np.sum(np.abs(v) ** 2, axis=0))
        z = (v * np.maximum(1 - lam / rho / np.maximum(norm, 1e-30), 0)).ravel()
        u = u + d @ x - z
    return x.reshape(h, w)


def _tv_problem(n: int = 8, coils: int = 2, mask_seed: int = 1):
    rng = np.random.default_rng(5)
    y_grid, x_grid = np.mgrid[:n, :n] / n - 0.5
    image = ((x_grid**2 + y_grid**2 < 0.12) * 0.8 + 0.3 * (x_grid > 0.1)) * np.exp(0.4j)
    maps = np.stack([np.exp(-((x_grid - 0.5 * c) ** 2)) * np.exp(1j * c * y_grid)
                     for c in range(coils)]).astype(np.complex64)
    kspace = np.asarray(fft2c(jnp.asarray(maps * image.astype(np.complex64))))
    kspace = kspace + 0.01 * _complex_normal(rng, kspace.shape)
    mask, _ = gaussian_cartesian_mask(np.random.default_rng(mask_seed), (n, n),
                                      acceleration=2.0, center_lines=2)
    return image, kspace.astype(np.complex64), np.asarray(mask, np.float32), maps


def test_tv_primal_dual_matches_a_dense_admm_solve():
    image, kspace, mask, maps = _tv_problem()
    lam = 0.05
    want = _tv_admm_reference(kspace.astype(np.complex128), mask, maps.astype(np.complex128),
                              lam)
    got = np.asarray(tv_primal_dual(jnp.asarray(kspace)[None], jnp.asarray(mask),
                                    jnp.asarray(maps)[None], lam=lam, num_iters=3000))[0]
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
    # The objective reaches the reference's to 1e-5 relative, and lies well below the start.
    objective = functools.partial(tv_objective, kspace=jnp.asarray(kspace)[None],
                                  mask=jnp.asarray(mask), maps=jnp.asarray(maps)[None], lam=lam)
    got_value = float(objective(jnp.asarray(got)[None])[0])
    want_value = float(objective(jnp.asarray(want, jnp.complex64)[None])[0])
    coil_images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(mask * kspace, axes=(-2, -1)),
                                               norm="ortho"), axes=(-2, -1))
    zero_filled = np.sum(maps.conj() * coil_images, axis=0).astype(np.complex64)
    start = float(objective(jnp.asarray(zero_filled)[None])[0])
    assert got_value == pytest.approx(want_value, rel=1e-5)
    assert got_value < 0.9 * start


def test_tv_step_ratio_changes_the_speed_not_the_solution():
    _, kspace, mask, maps = _tv_problem()
    args = (jnp.asarray(kspace)[None], jnp.asarray(mask), jnp.asarray(maps)[None])
    slow = np.asarray(tv_primal_dual(*args, lam=0.05, num_iters=3000, step_ratio=1.0))
    fast = np.asarray(tv_primal_dual(*args, lam=0.05, num_iters=3000, step_ratio=10.0))
    np.testing.assert_allclose(slow, fast, atol=2e-3 * np.abs(fast).max())


def test_tv_beats_zero_filling_on_a_piecewise_constant_image():
    """The ellipse phantom from 3x column-undersampled data, for each of 6 masks: TV's error
    is below zero-filling's."""
    image = _phantom(32)
    maps = np.ones((1, 1, 32, 32), np.complex64)
    kspace = np.asarray(fft2c(jnp.asarray(image)))[None, None]
    ratios = []
    for mask_seed in range(6):
        mask, _ = gaussian_cartesian_mask(np.random.default_rng(mask_seed), (32, 32),
                                          acceleration=3.0, center_lines=4)
        zero_filled = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(mask * kspace),
                                                   norm="ortho"))[0, 0]
        recon = np.asarray(tv_primal_dual(jnp.asarray(kspace), jnp.asarray(mask),
                                          jnp.asarray(maps), lam=0.01, num_iters=300))[0]
        errors = [np.linalg.norm(np.abs(x) - np.abs(image)) for x in (recon, zero_filled)]
        ratios.append(errors[0] / errors[1])
    assert max(ratios) < 0.8, ratios


def test_tv_vmap_and_batch_agree():
    _, kspace, mask, maps = _tv_problem()
    batch = jnp.stack([jnp.asarray(kspace), 0.5 * jnp.asarray(kspace)])
    both_maps = jnp.stack([jnp.asarray(maps)] * 2)
    direct = tv_primal_dual(batch, mask, both_maps, lam=0.02, num_iters=20)
    mapped = jax.vmap(lambda k: tv_primal_dual(k[None], mask, jnp.asarray(maps)[None],
                                               lam=0.02, num_iters=20)[0])(batch)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(direct), rtol=1e-4, atol=1e-6)


def test_tv_bad_arguments_name_the_argument():
    _, kspace, mask, maps = _tv_problem()
    kspace, maps = jnp.asarray(kspace)[None], jnp.asarray(maps)[None]
    with pytest.raises(ValueError, match="mask"):
        tv_primal_dual(kspace, jnp.ones((3, 8, 8)), maps, lam=0.01)
    with pytest.raises(ValueError, match="lam"):
        tv_primal_dual(kspace, mask, maps, lam=-1.0)
    with pytest.raises(ValueError, match="lam"):
        tv_primal_dual(kspace, mask, maps, lam=float("nan"))
    with pytest.raises(ValueError, match="step_ratio"):
        tv_primal_dual(kspace, mask, maps, lam=0.01, step_ratio=0.0)
    with pytest.raises(ValueError, match="num_iters"):
        tv_primal_dual(kspace, mask, maps, lam=0.01, num_iters=0)
    with pytest.raises(TypeError, match="kspace"):
        tv_primal_dual(jnp.abs(kspace), mask, maps, lam=0.01)
    with pytest.raises(ValueError, match="directions"):
        finite_differences_adjoint(jnp.zeros((3, 8, 8), jnp.complex64))
