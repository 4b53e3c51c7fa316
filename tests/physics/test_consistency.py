"""Tests for jaxmri.physics.consistency: DC layers against formulas, dense solves and gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.physics.consistency import hard_dc, image_dc, projection_dc, proximal_dc, soft_dc
from jaxmri.physics.sense import simulate_coil_maps


def _crandn(rng: np.random.Generator, shape) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _np_fft2c(x):
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _np_ifft2c(k):
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), norm="ortho"), axes=axes)


def _centred_dft_matrix(n: int) -> np.ndarray:
    eye = np.eye(n)
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(eye, axes=0), axis=0, norm="ortho"), axes=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    shape = (2, 3, 8, 10)  # batch, coils, H, W
    pred, measured = _crandn(rng, shape), _crandn(rng, shape)
    mask = np.zeros((8, 10), np.float32)
    mask[:, rng.permutation(10)[:4]] = 1.0  # phase-encode columns
    mask[:, 5] = 1.0
    return pred, measured, mask


# --------------------------------------------------------------------------------- hard DC


def test_hard_dc_replaces_sampled_and_keeps_unsampled(data):
    pred, measured, mask = data
    out = np.asarray(hard_dc(pred, measured, mask))
    sampled = np.broadcast_to(mask, out.shape) == 1
    np.testing.assert_array_equal(out[sampled], measured[sampled])
    np.testing.assert_array_equal(out[~sampled], pred[~sampled])
    again = np.asarray(hard_dc(out, measured, mask))
    np.testing.assert_array_equal(again, out)  # idempotent


def test_hard_dc_fractional_mask_is_convex_blend(data):
    pred, measured, _ = data
    weights = np.linspace(0, 1, 10, dtype=np.float32)[None, :].repeat(8, 0)
    expected = (1 - weights) * pred + weights * measured
    np.testing.assert_allclose(hard_dc(pred, measured, weights), expected, atol=1e-6)


# --------------------------------------------------------------------------------- soft DC


@pytest.mark.parametrize("lam", [0.0, 0.3, 5.0])
def test_soft_dc_equals_dccnn_formula(data, lam):
    pred, measured, mask = data
    expected = (1 - mask) * pred + mask * (pred + lam * measured) / (1 + lam)
    np.testing.assert_allclose(soft_dc(pred, measured, mask, noise_lambda=lam), expected,
                               atol=1e-6)


def test_soft_dc_tends_to_hard_dc(data):
    pred, measured, mask = data
    hard = np.asarray(hard_dc(pred, measured, mask))
    errors = [np.abs(np.asarray(soft_dc(pred, measured, mask, noise_lambda=lam)) - hard).max()
              for lam in (1.0, 1e2, 1e6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5
    np.testing.assert_array_equal(soft_dc(pred, measured, mask, noise_lambda=float("inf")), hard)


def test_soft_dc_minimises_its_penalised_objective(data):
    """At sampled entries soft DC minimises |k' - k|^2 + lambda |k' - k0|^2 (zero gradient)."""
    pred, measured, mask = data
    lam = 2.5
    out = soft_dc(pred, measured, mask, noise_lambda=lam)

    def objective(k):
        return jnp.sum(mask * (jnp.abs(k - pred) ** 2 + lam * jnp.abs(k - measured) ** 2))

    grad = np.asarray(jax.grad(objective)(out))
    assert np.abs(grad).max() < 1e-5


def test_soft_dc_gradient_wrt_lambda_matches_finite_differences(data):
    pred, measured, mask = data

    def loss(lam):
        return jnp.sum(jnp.abs(soft_dc(pred, measured, mask, noise_lambda=lam) - 1.0) ** 2)

    lam, eps = 0.7, 1e-2
    grad = jax.grad(loss)(jnp.float32(lam))
    fd = (loss(lam + eps) - loss(lam - eps)) / (2 * eps)
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, fd, rtol=5e-3)  # float32 central difference
    # Exact derivative in float64: d out / d lambda = m (k0 - k) / (1 + lambda)^2.
    out = np.asarray(soft_dc(pred, measured, mask, noise_lambda=lam)).astype(np.complex128)
    dout = mask * (measured - pred).astype(np.complex128) / (1 + lam) ** 2
    exact = 2 * np.sum(np.real(np.conj(out - 1.0) * dout))
    np.testing.assert_allclose(grad, exact, rtol=1e-5)


# ----------------------------------------------------------------------------- proximal DC


def _dense_proximal(image, measured, mask, rho):
    """Solve (F^H M F + rho I) x = F^H M y + rho x_t densely with an explicit DFT matrix."""
    h, w = image.shape
    fourier = np.kron(_centred_dft_matrix(h), _centred_dft_matrix(w))
    weight = np.diag(mask.ravel())
    lhs = fourier.conj().T @ weight @ fourier + rho * np.eye(h * w)
    rhs = fourier.conj().T @ weight @ measured.ravel() + rho * image.ravel()
    return np.linalg.solve(lhs, rhs).reshape(h, w)


@pytest.mark.parametrize("fractional", [False, True])
def test_proximal_dc_solves_its_quadratic_problem(fractional):
    rng = np.random.default_rng(1)
    image, measured = _crandn(rng, (6, 5)), _crandn(rng, (6, 5))
    mask = rng.random((6, 5)).astype(np.float32)
    if not fractional:
        mask = (mask < 0.5).astype(np.float32)
    rho = 0.3
    out = np.asarray(proximal_dc(image, measured, mask, rho=rho))
    np.testing.assert_allclose(out, _dense_proximal(image, measured, mask, rho), atol=1e-5)

    def objective(x):
        residual = jnp.fft.fftshift(
            jnp.fft.fft2(jnp.fft.ifftshift(x), norm="ortho")) - measured
        return jnp.sum(mask * jnp.abs(residual) ** 2) + rho * jnp.sum(jnp.abs(x - image) ** 2)

    assert np.abs(np.asarray(jax.grad(objective)(jnp.asarray(out)))).max() < 1e-5


def test_proximal_dc_first_stage_and_soft_dc_equivalence(data):
    pred, measured, mask = data
    image = _np_ifft2c(pred).astype(np.complex64)
    rho = 0.02
    # IFR-Net's first stage: x_t = 0 gives F^-1(M y / (M + rho)).
    first = proximal_dc(np.zeros_like(image), measured, mask, rho=rho)
    np.testing.assert_allclose(first, _np_ifft2c(mask * measured / (mask + rho)), atol=1e-5)
    # For a 0/1 mask the proximal step is soft DC with lambda = 1 / rho.
    soft = soft_dc(pred, measured, mask, noise_lambda=1.0 / rho)
    np.testing.assert_allclose(proximal_dc(image, measured, mask, rho=rho), _np_ifft2c(soft),
                               atol=1e-5)


def test_proximal_dc_gradient_wrt_rho_matches_finite_differences(data):
    pred, measured, mask = data
    image = _np_ifft2c(pred).astype(np.complex64)

    def loss(rho):
        return jnp.sum(jnp.abs(proximal_dc(image, measured, mask, rho=rho)) ** 2)

    rho, eps = 0.5, 1e-2
    grad = jax.grad(loss)(jnp.float32(rho))
    fd = (loss(rho + eps) - loss(rho - eps)) / (2 * eps)
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, fd, rtol=5e-3)  # float32 central difference
    # Exact derivative in float64: d k / d rho = m (F x_t - y) / (m + rho)^2 in k-space.
    k_t = _np_fft2c(image.astype(np.complex128))
    k_out = (mask * measured + rho * k_t) / (mask + rho)
    dk = mask * (k_t - measured) / (mask + rho) ** 2
    exact = 2 * np.sum(np.real(np.conj(k_out) * dk))  # |x|^2 = |k|^2 (unitary F)
    np.testing.assert_allclose(grad, exact, rtol=1e-5)


# -------------------------------------------------------------------------------- image DC


def test_image_dc_single_coil_matches_numpy(data):
    pred, measured, mask = data
    image, kspace = _np_ifft2c(pred[:, 0]).astype(np.complex64), measured[:, 0]
    out = np.asarray(image_dc(image, kspace, mask))
    expected = _np_ifft2c((1 - mask) * _np_fft2c(image) + mask * kspace)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    sampled = np.broadcast_to(mask, kspace.shape) == 1
    np.testing.assert_allclose(_np_fft2c(out)[sampled], kspace[sampled], atol=1e-5)
    lam = 4.0
    soft = np.asarray(image_dc(image, kspace, mask, noise_lambda=lam))
    k = _np_fft2c(image)
    expected = _np_ifft2c((1 - mask) * k + mask * (k + lam * kspace) / (1 + lam))
    np.testing.assert_allclose(soft, expected, atol=1e-5)


def test_image_dc_multi_coil(data):
    pred, _, mask = data
    rng = np.random.default_rng(2)
    maps = simulate_coil_maps((8, 10), 3)
    image, truth = _crandn(rng, (2, 8, 10)), _crandn(rng, (2, 8, 10))
    measured = _np_fft2c(maps * truth[:, None]).astype(np.complex64)
    out = np.asarray(image_dc(image, measured, mask, maps=maps))
    coil_k = _np_fft2c(maps * image[:, None])
    expected = np.sum(np.conj(maps) * _np_ifft2c((1 - mask) * coil_k + mask * measured), axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # A consistent image is a fixed point; a full mask returns the measured image.
    np.testing.assert_allclose(image_dc(truth, measured, mask, maps=maps), truth, atol=1e-5)
    full = np.ones_like(mask)
    np.testing.assert_allclose(image_dc(image, measured, full, maps=maps), truth, atol=1e-5)


def _sense_problem(num_coils: int, num_columns: int, *, noise: float = 0.0, seed: int = 3):
    """A small multi-coil problem: maps (C, 12, 12), column mask, image x, truth, y = M F S t."""
    rng = np.random.default_rng(seed)
    maps = simulate_coil_maps((12, 12), num_coils, radius=1.0)
    mask = np.zeros((12, 12), np.float32)
    mask[:, rng.permutation(12)[:num_columns]] = 1.0
    image, truth = _crandn(rng, (2, 12, 12)), _crandn(rng, (2, 12, 12))
    noise_draw = noise * _crandn(rng, (2, num_coils, 12, 12))
    measured = mask * (_np_fft2c(maps * truth[:, None]) + noise_draw)
    return maps, mask, image, truth, measured.astype(np.complex64)


def _encode(x, maps, mask):
    return mask * _np_fft2c(maps * np.asarray(x)[:, None])


def test_projection_dc_is_an_exact_projection_onto_consistent_images():
    # 2 coils, 4 of 12 columns: 96 samples for 144 unknowns, so the consistent images form an
    # affine subspace and the projection keeps the image's component along it.
    maps, mask, image, truth, measured = _sense_problem(2, 4)
    out = np.asarray(projection_dc(image, measured, mask, maps=maps, tol=1e-6, max_iter=100))
    sampled = np.broadcast_to(mask, measured.shape) == 1
    # M F S (DC x) == y on the sampled set.
    misfit = _encode(out, maps, mask)[sampled] - measured[sampled]
    assert np.linalg.norm(misfit) < 3e-5 * np.linalg.norm(measured[sampled])
    # Idempotent.
    again = np.asarray(projection_dc(out, measured, mask, maps=maps, tol=1e-6, max_iter=100))
    assert np.linalg.norm(again - out) < 1e-4 * np.linalg.norm(out)
    # Orthogonal: the correction is orthogonal to every consistent direction (truth - out lies
    # in null(A)), so out is the consistent image closest to x.
    for b in range(2):
        inner = np.vdot(image[b] - out[b], truth[b] - out[b])
        assert abs(inner) < 1e-3 * np.linalg.norm(image[b] - out[b]) * np.linalg.norm(
            truth[b] - out[b])
    assert np.linalg.norm(out - truth) > 1.0  # underdetermined: it did not just return truth


def test_coil_wise_image_dc_is_not_a_projection_for_multi_coil_data():
    # The same problem through image_dc: consistent per coil in k-space, but after the coil
    # combination neither consistent nor idempotent (the old docstring called it exact).
    maps, mask, image, _, measured = _sense_problem(2, 4)
    out = np.asarray(image_dc(image, measured, mask, maps=maps))
    sampled = np.broadcast_to(mask, measured.shape) == 1
    residual = np.linalg.norm(_encode(out, maps, mask)[sampled] - measured[sampled])
    assert residual > 0.1 * np.linalg.norm(measured[sampled])
    again = np.asarray(image_dc(out, measured, mask, maps=maps))
    assert np.linalg.norm(again - out) > 0.01 * np.linalg.norm(out)


def test_projection_dc_noisy_overdetermined_is_the_least_squares_projection():
    # 4 coils, 6 of 12 columns: 288 noisy samples for 144 unknowns; no image explains y, the
    # projection lands on the least-squares solution: normal equations hold, idempotent.
    maps, mask, image, _, measured = _sense_problem(4, 6, noise=0.3)
    out = projection_dc(image, measured, mask, maps=maps, tol=1e-5, max_iter=300)
    coil = _np_fft2c(maps * np.asarray(out)[:, None])
    gradient = np.sum(np.conj(maps) * _np_ifft2c(mask * (mask * coil - measured)), axis=1)
    assert np.linalg.norm(gradient) < 1e-3 * np.linalg.norm(measured)
    again = projection_dc(out, measured, mask, maps=maps, tol=1e-5, max_iter=300)
    assert np.linalg.norm(again - out) < 1e-3 * np.linalg.norm(out)


def test_projection_dc_single_coil_is_hard_image_dc(data):
    pred, measured, mask = data
    image = _np_ifft2c(pred[:, 0]).astype(np.complex64)
    np.testing.assert_allclose(projection_dc(image, measured[:, 0], mask),
                               image_dc(image, measured[:, 0], mask), atol=1e-6)
    with pytest.raises(ValueError, match="mask"):
        projection_dc(image, measured, np.ones((8, 9), np.float32),
                      maps=simulate_coil_maps((8, 10), 3))


def test_dc_layers_jit_and_vmap_match_eager(data):
    pred, measured, mask = data
    lam = jnp.float32(0.4)
    eager = soft_dc(pred, measured, mask, noise_lambda=lam)
    np.testing.assert_allclose(
        jax.jit(lambda p, m, w: soft_dc(p, m, mask, noise_lambda=w))(pred, measured, lam),
        eager, atol=1e-6)
    np.testing.assert_allclose(
        jax.vmap(functools.partial(hard_dc, mask=mask))(pred, measured),
        hard_dc(pred, measured, mask), atol=1e-6)
    image = _np_ifft2c(pred).astype(np.complex64)
    np.testing.assert_allclose(
        jax.jit(lambda x, r: proximal_dc(x, measured, mask, rho=r))(image, jnp.float32(0.1)),
        proximal_dc(image, measured, mask, rho=0.1), atol=1e-6)
    maps = simulate_coil_maps((8, 10), 3)
    single = image[:, 0]
    np.testing.assert_allclose(
        jax.vmap(lambda x, y: image_dc(x, y, mask, maps=maps))(single, measured),
        image_dc(single, measured, mask, maps=maps), atol=1e-5)


def test_dc_bad_inputs_name_the_argument(data):
    pred, measured, mask = data
    with pytest.raises(TypeError, match="kspace_pred"):
        hard_dc(np.abs(pred), measured, mask)
    with pytest.raises(TypeError, match="kspace_measured"):
        hard_dc(pred, np.abs(measured), mask)
    with pytest.raises(ValueError, match="mask"):
        hard_dc(pred, measured, np.ones((8, 9), np.float32))
    with pytest.raises(ValueError, match="mask"):
        hard_dc(pred[0, 0], measured[0, 0], np.ones((3, 8, 10), np.float32))
    with pytest.raises(ValueError, match="noise_lambda"):
        soft_dc(pred, measured, mask, noise_lambda=-1.0)
    with pytest.raises(ValueError, match="rho"):
        proximal_dc(pred, measured, mask, rho=0.0)
    with pytest.raises(ValueError, match="kspace_measured"):
        image_dc(pred[:, 0], measured, mask)
    with pytest.raises(TypeError, match="image"):
        image_dc(np.abs(pred[:, 0]), measured[:, 0], mask)
