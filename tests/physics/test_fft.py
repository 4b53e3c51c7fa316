"""Tests for jaxmri.physics.fft against numpy's shifted orthonormal FFT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmri.physics.fft import fft2c, ifft2c

AXES = (-2, -1)


def _random_complex(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _numpy_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=AXES), norm="ortho"), axes=AXES)


def _numpy_ifft2c(x):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=AXES), norm="ortho"), axes=AXES)


def _dense_centred_dft(n):
    """Unitary DFT matrix with input and output indices centred on n // 2, built from its sum."""
    k = np.arange(n) - n // 2
    return np.exp(-2j * np.pi * np.outer(k, k) / n) / np.sqrt(n)


@settings(max_examples=10, deadline=None)
@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    batch=st.lists(st.integers(1, 2), max_size=2),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_numpy_shifted_orthonormal_fft(height, width, batch, seed):
    x = _random_complex(np.random.default_rng(seed), (*batch, height, width))
    np.testing.assert_allclose(fft2c(jnp.asarray(x)), _numpy_fft2c(x), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ifft2c(jnp.asarray(x)), _numpy_ifft2c(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(6, 8), (7, 5), (9, 4)])
def test_matches_dense_centred_dft_matrix(shape):
    # Independent of any fftshift: k-space index K (centred) = sum_x exp(-2 pi i K x / n) img[x].
    x = _random_complex(np.random.default_rng(1), shape)
    expected = _dense_centred_dft(shape[0]) @ x @ _dense_centred_dft(shape[1]).T
    np.testing.assert_allclose(fft2c(jnp.asarray(x)), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 16), (15, 9), (3, 2, 8, 11)])
def test_parseval_and_round_trip(shape):
    x = _random_complex(np.random.default_rng(2), shape)
    k = np.asarray(fft2c(jnp.asarray(x)))
    np.testing.assert_allclose(
        np.sum(np.abs(k) ** 2, axis=AXES), np.sum(np.abs(x) ** 2, axis=AXES), rtol=1e-5
    )
    np.testing.assert_allclose(ifft2c(jnp.asarray(k)), x, atol=1e-5)
    np.testing.assert_allclose(fft2c(ifft2c(jnp.asarray(x))), x, atol=1e-5)


def test_adjoint_is_inverse():
    # <F x, y> == <x, F^{-1} y>: the transform is unitary.
    rng = np.random.default_rng(3)
    x = _random_complex(rng, (12, 10))
    y = _random_complex(rng, (12, 10))
    lhs = np.vdot(y, fft2c(jnp.asarray(x)))
    rhs = np.vdot(ifft2c(jnp.asarray(y)), x)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (10, 5)])
def test_dc_of_constant_image_is_at_centre(shape):
    height, width = shape
    k = np.asarray(fft2c(jnp.full(shape, 2.0 + 1.0j, dtype=jnp.complex64)))
    expected = np.zeros(shape, dtype=np.complex64)
    expected[height // 2, width // 2] = (2.0 + 1.0j) * np.sqrt(height * width)
    np.testing.assert_allclose(k, expected, atol=1e-5)


def test_centred_delta_has_flat_spectrum():
    # A delta at the image origin (H//2, W//2) has constant k-space with zero phase.
    x = np.zeros((6, 9), dtype=np.complex64)
    x[3, 4] = 1.0
    np.testing.assert_allclose(fft2c(jnp.asarray(x)), np.full((6, 9), 1 / np.sqrt(54)), atol=1e-6)


def test_dtype_preserved():
    x = jnp.ones((4, 4), dtype=jnp.complex64)
    assert fft2c(x).dtype == jnp.complex64
    assert ifft2c(x).dtype == jnp.complex64


def test_jit_vmap_grad_agree_with_eager():
    x = jnp.asarray(_random_complex(np.random.default_rng(4), (3, 8, 6)))
    for fn in (fft2c, ifft2c):
        eager = fn(x)
        np.testing.assert_allclose(jax.jit(fn)(x), eager, atol=1e-6)
        np.testing.assert_allclose(jax.vmap(fn)(x), eager, atol=1e-6)
    # d/dx of sum |F x|^2 = sum |x|^2 is 2 x (in JAX's conjugate convention for real outputs).
    grad = jax.grad(lambda z: jnp.sum(jnp.abs(fft2c(z)) ** 2))(x)
    np.testing.assert_allclose(grad, 2 * jnp.conj(x), atol=1e-5)


@pytest.mark.parametrize("fn", [fft2c, ifft2c])
def test_rejects_real_input_naming_x(fn):
    with pytest.raises(TypeError, match=r"\bx must be complex"):
        fn(jnp.ones((4, 4), dtype=jnp.float32))


@pytest.mark.parametrize("fn", [fft2c, ifft2c])
def test_rejects_1d_input_naming_x(fn):
    with pytest.raises(ValueError, match=r"\bx must have ndim >= 2"):
        fn(jnp.ones((4,), dtype=jnp.complex64))
