"""Tests for jaxmri.physics.sense: operators against dense numpy matrices, maps, ESPIRiT, CG."""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from jaxmri.physics.sense import (
    CGResult,
    cg_sense,
    conjugate_gradient,
    espirit_maps,
    rss,
    sense_adjoint,
    sense_combine,
    sense_forward,
    sense_normal,
    simulate_coil_maps,
)
from jaxmri.physics.sense import _power_iteration

# ----------------------------------------------------------------------------------- helpers


def _crandn(rng: np.random.Generator, shape) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _np_fft2c(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _centred_dft_matrix(n: int) -> np.ndarray:
    eye = np.eye(n)
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(eye, axes=0), axis=0, norm="ortho"), axes=0)


def _dense_sense(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Dense ``A = M F S`` as a ``(C H W, H W)`` matrix built from 1-D DFT matrices."""
    num_coils, h, w = maps.shape
    fourier = np.kron(_centred_dft_matrix(h), _centred_dft_matrix(w))
    blocks = [np.diag(mask.ravel()) @ fourier @ np.diag(maps[c].ravel()) for c in range(num_coils)]
    return np.concatenate(blocks, axis=0)


def _smooth_object(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth complex test image on an elliptical support and that support."""
    yy, xx = np.mgrid[:n, :n] / n - 0.5
    support = yy**2 / 0.12 + xx**2 / 0.09 < 1
    image = np.exp(-(yy**2 / 0.08 + xx**2 / 0.05)) * (1 + 0.3 * np.cos(6 * xx))
    image = image * np.exp(2j * yy) * support
    return image.astype(np.complex64), support


# ------------------------------------------------------------------------------ operators


def test_sense_forward_matches_numpy_fft():
    rng = np.random.default_rng(0)
    maps, image = _crandn(rng, (3, 10, 12)), _crandn(rng, (10, 12))
    mask = (rng.random((10, 12)) < 0.4).astype(np.float32)
    expected = _np_fft2c(maps * image) * mask
    np.testing.assert_allclose(sense_forward(image, maps, mask), expected, atol=1e-5)
    np.testing.assert_allclose(sense_forward(image, maps), _np_fft2c(maps * image), atol=1e-5)


_jit_forward = jax.jit(sense_forward)
_jit_adjoint = jax.jit(sense_adjoint)


@settings(max_examples=10, deadline=None)
@given(
    h=st.sampled_from([3, 4, 7, 8]),
    w=st.sampled_from([2, 5, 8]),
    num_coils=st.integers(1, 3),
    batch=st.sampled_from([(), (2,)]),
    seed=st.integers(0, 2**16),
)
def test_sense_adjointness(h, w, num_coils, batch, seed):
    rng = np.random.default_rng(seed)
    image = _crandn(rng, batch + (h, w))
    kspace = _crandn(rng, batch + (num_coils, h, w))
    maps = _crandn(rng, (num_coils, h, w))
    mask = (rng.random((h, w)) < 0.5).astype(np.float32)
    lhs = np.vdot(np.asarray(_jit_forward(image, maps, mask)), kspace)
    rhs = np.vdot(image, np.asarray(_jit_adjoint(kspace, maps, mask)))
    scale = np.linalg.norm(image) * np.linalg.norm(kspace) * np.abs(maps).max()
    assert abs(lhs - rhs) <= 1e-5 * scale


def test_sense_normal_matches_dense_matrix():
    rng = np.random.default_rng(1)
    maps, image = _crandn(rng, (3, 6, 5)), _crandn(rng, (6, 5))
    mask = (rng.random((6, 5)) < 0.5).astype(np.float32)
    dense = _dense_sense(maps, mask)
    expected = (dense.conj().T @ dense @ image.ravel()).reshape(6, 5)
    np.testing.assert_allclose(sense_normal(image, maps, mask), expected, atol=1e-4)
    np.testing.assert_allclose(
        sense_forward(image, maps, mask).reshape(-1), dense @ image.ravel(), atol=1e-5
    )


def test_unit_sum_of_squares_maps_make_full_mask_normal_identity():
    rng = np.random.default_rng(2)
    maps = simulate_coil_maps((16, 12), 5)
    image = _crandn(rng, (2, 16, 12))
    np.testing.assert_allclose(sense_adjoint(sense_forward(image, maps), maps), image, atol=1e-5)
    full = np.ones((16, 12), np.float32)
    np.testing.assert_allclose(sense_normal(image, maps, full), image, atol=1e-5)


def test_operators_jit_and_vmap_match_eager():
    rng = np.random.default_rng(3)
    maps = jnp.asarray(simulate_coil_maps((8, 8), 3))
    images = jnp.asarray(_crandn(rng, (4, 8, 8)))
    mask = jnp.asarray((rng.random((8, 8)) < 0.5).astype(np.float32))
    eager = sense_normal(images, maps, mask)
    np.testing.assert_allclose(jax.jit(sense_normal)(images, maps, mask), eager, atol=1e-6)
    vmapped = jax.vmap(sense_normal, in_axes=(0, None, None))(images, maps, mask)
    np.testing.assert_allclose(vmapped, eager, atol=1e-6)
    kspace = sense_forward(images, maps, mask)
    np.testing.assert_allclose(
        jax.jit(sense_adjoint)(kspace, maps, mask), sense_adjoint(kspace, maps, mask), atol=1e-6
    )


def test_operator_bad_inputs_name_the_argument():
    maps = simulate_coil_maps((8, 8), 2)
    image = np.ones((8, 8), np.complex64)
    with pytest.raises(TypeError, match="image"):
        sense_forward(np.ones((8, 8), np.float32), maps)
    with pytest.raises(ValueError, match="maps"):
        sense_forward(image, maps[0])
    with pytest.raises(ValueError, match="image"):
        sense_forward(np.ones((1, 8), np.complex64), maps)
    with pytest.raises(TypeError, match="maps"):
        sense_forward(image, np.abs(maps))
    with pytest.raises(ValueError, match="mask"):
        sense_forward(image, maps, np.ones((8, 7), np.float32))
    with pytest.raises(TypeError, match="mask"):
        sense_adjoint(np.ones((2, 8, 8), np.complex64), maps, np.ones((8, 8), np.complex64))
    with pytest.raises(ValueError, match="kspace"):
        sense_adjoint(np.ones((2, 8, 9), np.complex64), maps)


# ------------------------------------------------------------------------- coil combination


def test_rss_matches_numpy_and_returns_float32():
    rng = np.random.default_rng(4)
    coils = _crandn(rng, (2, 4, 6, 7))
    out = rss(coils)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.sqrt((np.abs(coils) ** 2).sum(axis=-3)), rtol=1e-6)
    np.testing.assert_allclose(rss(coils, axis=0), np.sqrt((np.abs(coils) ** 2).sum(0)), rtol=1e-6)
    with pytest.raises(ValueError, match="axis"):
        rss(coils, axis=5)


def test_sense_combine_inverts_coil_weighting_and_guards_zero_maps():
    rng = np.random.default_rng(5)
    maps = _crandn(rng, (4, 6, 6))
    maps[:, 0, :] = 0  # a row outside the coils' reach
    image = _crandn(rng, (6, 6))
    out = np.asarray(sense_combine(maps * image, maps))
    np.testing.assert_allclose(out[1:], image[1:], atol=1e-5)
    np.testing.assert_array_equal(out[0], 0)
    grad = jax.jit(jax.grad(lambda m: jnp.sum(jnp.abs(sense_combine(maps * image, m)) ** 2)))(maps)
    assert np.all(np.isfinite(np.asarray(grad)))
    with pytest.raises(TypeError, match="coil_images"):
        sense_combine(np.abs(maps), maps)


def test_simulate_coil_maps_properties():
    maps = simulate_coil_maps((32, 24), 8)
    assert maps.shape == (8, 32, 24) and maps.dtype == np.complex64
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(0), 1.0, atol=1e-5)
    # Coils differ: no two coil profiles are parallel (normalised correlation well below 1).
    flat = maps.reshape(8, -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    correlation = np.abs(flat @ flat.conj().T) - np.eye(8)
    assert correlation.max() < 0.9
    # Each coil is brightest on its own side of the image.
    peaks = [np.unravel_index(np.abs(m).argmax(), m.shape) for m in maps]
    assert len(set(peaks)) == 8
    np.testing.assert_array_equal(maps, simulate_coil_maps((32, 24), 8))
    single = simulate_coil_maps((16, 16), 1)
    np.testing.assert_allclose(np.abs(single), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"shape": (16,), "num_coils": 2}, "shape"),
        ({"shape": (16, 16), "num_coils": 0}, "num_coils"),
        ({"shape": (16, 16), "num_coils": 2, "radius": -1.0}, "radius"),
    ],
)
def test_simulate_coil_maps_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        simulate_coil_maps(**kwargs)


# -------------------------------------------------------------------------------- ESPIRiT


def test_power_iteration_matches_eigh():
    rng = np.random.default_rng(6)
    vecs = np.linalg.qr(_crandn(rng, (3, 2, 4, 4)))[0]  # random unitary eigenbases
    vals = np.sort(rng.uniform(0.0, 0.6, (3, 2, 4)), axis=-1)
    vals[..., -1] = 1.0  # a clear gap, like ESPIRiT's eigenvalue 1
    g = (vecs * vals[..., None, :]) @ vecs.conj().swapaxes(-1, -2)
    vec, val = _power_iteration(jnp.asarray(g, jnp.complex64), 60)
    w, v = np.linalg.eigh(g)
    np.testing.assert_allclose(val, w[..., -1], atol=1e-5)
    overlap = np.abs(np.sum(np.conj(v[..., -1]) * np.asarray(vec), axis=-1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def espirit_case():
    """A smooth object seen by 8 simulated coils and ESPIRiT run on it and on twice its k-space.

    The pair is one batched call (one compilation); the second element checks that the maps
    do not depend on the k-space scale.
    """
    n, num_coils = 48, 8
    image, support = _smooth_object(n)
    true_maps = simulate_coil_maps((n, n), num_coils)
    kspace = _np_fft2c(true_maps * image).astype(np.complex64)
    estimated = np.asarray(espirit_maps(np.stack([kspace, 2 * kspace])))
    return image, support, true_maps, kspace, estimated


def test_espirit_recovers_maps_up_to_phase(espirit_case):
    image, support, true_maps, _, estimated = espirit_case
    assert estimated.shape == (2,) + true_maps.shape and estimated.dtype == np.complex64
    est = estimated[0]
    # Inside the object the estimated map vector is the true one times a unit phase:
    # |<s_est(r), s_true(r)>| = 1 with both of unit norm (tolerance 1e-3).
    projection = np.abs(np.sum(np.conj(est) * true_maps, axis=0))
    assert projection[support].min() > 0.999
    np.testing.assert_allclose((np.abs(est) ** 2).sum(0)[support], 1.0, atol=1e-4)
    # Phase normalised to coil 0: coil 0 is real and non-negative wherever maps are kept.
    assert np.abs(est[0].imag).max() < 1e-5 and est[0].real.min() >= 0
    # Far from the object the top eigenvalue is small and the maps are cropped to zero.
    assert (np.abs(est).sum(0)[~support] == 0).mean() > 0.5
    # SENSE-combining the coil images with the estimated maps gives back the magnitude.
    combined = np.asarray(sense_combine(true_maps * image, est))
    err = np.abs(np.abs(combined) - np.abs(image))[support].max()
    assert err < 1e-3 * np.abs(image).max()
    # The maps do not depend on the k-space scale (second batch element).
    np.testing.assert_allclose(estimated[1], est, atol=1e-4)


def test_espirit_jit_matches_eager_and_crop_zero_keeps_every_pixel(espirit_case):
    _, _, _, kspace, estimated = espirit_case
    jitted = jax.jit(espirit_maps)(kspace)
    np.testing.assert_allclose(jitted, estimated[0], atol=1e-5)
    # Same shapes as the fixture's call: crop is traced, so the compilation is reused.
    uncropped = np.asarray(espirit_maps(np.stack([kspace, 2 * kspace]), crop=0.0))[0]
    assert np.all(np.abs(uncropped).sum(0) > 0)
    kept = np.abs(estimated[0]).sum(0) > 0
    np.testing.assert_allclose(uncropped[:, kept], estimated[0][:, kept], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"calib_width": 80}, "calib_width"),
        ({"kernel_width": 30}, "kernel_width"),
        ({"threshold": 1.5}, "threshold"),
        ({"crop": -0.1}, "crop"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_espirit_rejects_bad_options(kwargs, name):
    kspace = np.ones((2, 64, 64), np.complex64)
    with pytest.raises(ValueError, match=name):
        espirit_maps(kspace, **kwargs)


def test_espirit_rejects_bad_kspace():
    with pytest.raises(ValueError, match="kspace"):
        espirit_maps(np.ones((64, 64), np.complex64))
    with pytest.raises(TypeError, match="kspace"):
        espirit_maps(np.ones((2, 64, 64), np.float32))


# -------------------------------------------------------------------------------- CG-SENSE


@pytest.fixture(scope="module")
def cg_problem():
    rng = np.random.default_rng(7)
    n, num_coils = 8, 4
    maps = simulate_coil_maps((n, n), num_coils)
    mask = (rng.random((n, n)) < 0.4).astype(np.float32)
    truth = _crandn(rng, (n, n))
    kspace = (_np_fft2c(maps * truth) + 0.05 * _crandn(rng, (num_coils, n, n))) * mask
    return kspace.astype(np.complex64), maps, mask


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_cg_sense_matches_dense_least_squares(cg_problem, lam):
    kspace, maps, mask = cg_problem
    dense = _dense_sense(maps, mask)
    y = kspace.reshape(-1)
    if lam == 0.0:
        # Undersampled columns can leave A rank deficient: CG from 0 then lands on the
        # minimum-norm least-squares solution, which is what lstsq returns.
        expected = np.linalg.lstsq(dense, y, rcond=None)[0]
    else:
        normal = dense.conj().T @ dense + lam * np.eye(dense.shape[1])
        expected = np.linalg.solve(normal, dense.conj().T @ y)
    result = cg_sense(kspace, maps, mask, lam=lam, tol=1e-6, max_iter=200)
    assert isinstance(result, CGResult)
    err = np.linalg.norm(np.asarray(result.image).ravel() - expected) / np.linalg.norm(expected)
    assert err < 1e-4
    num_iter = int(result.num_iter)
    history = np.asarray(result.residual_norms)
    assert history.shape == (201,) and 0 < num_iter < 200
    assert history[0] == 1.0 and history[num_iter] <= 1e-6
    assert np.all(np.isnan(history[num_iter + 1 :]))
    assert np.all(np.diff(history[: num_iter + 1]) < 0.5)  # never grows much in a step
    # The recorded final residual is the true relative residual of the returned image.
    normal = dense.conj().T @ dense + lam * np.eye(dense.shape[1])
    rhs = dense.conj().T @ y
    true_res = np.linalg.norm(rhs - normal @ np.asarray(result.image).ravel())
    assert true_res / np.linalg.norm(rhs) == pytest.approx(history[num_iter], abs=2e-6)


def test_cg_sense_iteration_cap_and_zero_rhs(cg_problem):
    kspace, maps, mask = cg_problem
    capped = cg_sense(kspace, maps, mask, max_iter=3, tol=0.0)
    assert int(capped.num_iter) == 3
    assert np.all(np.isfinite(np.asarray(capped.residual_norms)))
    assert capped.residual_norms[3] < capped.residual_norms[0]
    zero = cg_sense(np.zeros_like(kspace), maps, mask, max_iter=200)
    assert int(zero.num_iter) == 0
    np.testing.assert_array_equal(zero.image, 0)


def test_cg_sense_jit_and_batch_match_eager(cg_problem):
    kspace, maps, mask = cg_problem
    eager = cg_sense(kspace, maps, mask, lam=0.01)
    jitted = jax.jit(functools.partial(cg_sense, lam=0.01))(kspace, maps, mask)
    np.testing.assert_allclose(jitted.image, eager.image, atol=1e-5)
    assert int(jitted.num_iter) == int(eager.num_iter)
    batched = cg_sense(np.stack([kspace, 3 * kspace]), maps, mask, lam=0.01)
    assert batched.image.shape == (2, 8, 8) and batched.residual_norms.shape == (2, 51)
    np.testing.assert_allclose(batched.image[0], eager.image, atol=1e-5)
    np.testing.assert_allclose(batched.image[1], 3 * np.asarray(eager.image), atol=1e-4)


def test_cg_sense_gradients_match_dense_solve(cg_problem):
    """Implicit CG gradients equal the gradients of a dense jnp.linalg.solve."""
    kspace, maps, mask = cg_problem
    dense = jnp.asarray(_dense_sense(maps, mask), jnp.complex64)

    def loss_cg(y, lam):
        x = cg_sense(y, maps, mask, lam=lam, tol=1e-7, max_iter=200).image
        return jnp.sum(jnp.abs(x - 1.0) ** 2)

    def loss_dense(y, lam):
        normal = dense.conj().T @ dense + lam * jnp.eye(dense.shape[1])
        x = jnp.linalg.solve(normal, dense.conj().T @ y.reshape(-1))
        return jnp.sum(jnp.abs(x - 1.0) ** 2)

    lam = jnp.float32(0.05)
    grad_cg = jax.jit(jax.grad(loss_cg, argnums=(0, 1)))(jnp.asarray(kspace), lam)
    grad_dense = jax.jit(jax.grad(loss_dense, argnums=(0, 1)))(jnp.asarray(kspace), lam)
    np.testing.assert_allclose(grad_cg[0], grad_dense[0], atol=2e-3 * np.abs(grad_dense[0]).max())
    np.testing.assert_allclose(grad_cg[1], grad_dense[1], rtol=2e-3)


def test_conjugate_gradient_generic_real_spd():
    rng = np.random.default_rng(8)
    m = rng.standard_normal((12, 12))
    spd = (m @ m.T + 0.5 * np.eye(12)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    result = conjugate_gradient(lambda x: spd @ x, b, tol=1e-6, max_iter=100)
    np.testing.assert_allclose(result.image, np.linalg.solve(spd, b), rtol=1e-3, atol=1e-4)
    assert int(result.num_iter) <= 100
    with pytest.raises(ValueError, match="max_iter"):
        conjugate_gradient(lambda x: x, b, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        conjugate_gradient(lambda x: x, b, tol=-1.0)


def test_cg_sense_bad_inputs_name_the_argument(cg_problem):
    kspace, maps, mask = cg_problem
    with pytest.raises(ValueError, match="lam"):
        cg_sense(kspace, maps, mask, lam=-1.0)
    with pytest.raises(ValueError, match="mask"):
        cg_sense(kspace, maps, mask[:4])
    with pytest.raises(TypeError, match="kspace"):
        cg_sense(np.abs(kspace), maps, mask)
