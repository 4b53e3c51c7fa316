"""DCT filter banks against scipy, orthonormality, and the Flax initialiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from scipy import ndimage

from jaxmri.nn.dct import dct_filters, dct_kernel_init, dct_matrix


@pytest.mark.parametrize("size", [1, 3, 5, 8])
def test_dct_matrix_matches_scipy(size):
    expected = scipy.fft.dct(np.eye(size), norm="ortho", axis=0)
    np.testing.assert_allclose(dct_matrix(size), expected, atol=1e-12)


def test_filters_are_orthonormal_and_drop_dc():
    full = dct_filters(3, include_dc=True).reshape(9, 9)
    np.testing.assert_allclose(full.T @ full, np.eye(9), atol=1e-6)
    np.testing.assert_allclose(full[:, 0], 1 / 3, atol=1e-7)  # the constant basis
    bank = dct_filters(3)
    assert bank.shape == (3, 3, 8)
    np.testing.assert_allclose(bank.sum(axis=(0, 1)), 0.0, atol=1e-6)  # no DC response
    # Basis (a, b) = (0, 1) is a horizontal cosine: constant down the columns.
    np.testing.assert_allclose(bank[:, :, 0], np.outer(dct_matrix(3)[0], dct_matrix(3)[1]),
                               atol=1e-7)


def test_kernel_init_forward_and_adjoint_convolutions():
    fwd = dct_kernel_init()(jax.random.PRNGKey(0), (3, 3, 1, 8))
    adj = dct_kernel_init(adjoint=True, scale=0.5)(jax.random.PRNGKey(0), (3, 3, 8, 1))
    np.testing.assert_allclose(fwd[:, :, 0, :], dct_filters(3), atol=1e-7)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 12)).astype(np.float32)
    y = rng.normal(size=(12, 12, 8)).astype(np.float32)
    # <D x, y> = <x, D^T y> with circular boundaries, D^T realised by the rotated bases.
    dx = np.stack([ndimage.correlate(x, fwd[:, :, 0, c], mode="wrap") for c in range(8)], -1)
    dty = sum(ndimage.correlate(y[..., c], np.asarray(adj[:, :, c, 0]), mode="wrap")
              for c in range(8))
    np.testing.assert_allclose(0.5 * np.sum(dx * y), np.sum(x * dty), rtol=1e-4)


def test_kernel_init_rejects_too_many_filters_and_bad_shapes():
    init = dct_kernel_init()
    with pytest.raises(ValueError, match="features=9"):
        init(jax.random.PRNGKey(0), (3, 3, 1, 9))
    with pytest.raises(ValueError, match="in_features"):
        init(jax.random.PRNGKey(0), (3, 3, 2, 8))
    with pytest.raises(ValueError, match="kernel shape"):
        init(jax.random.PRNGKey(0), (3, 2, 1, 4))
    with pytest.raises(ValueError, match="size"):
        dct_matrix(0)
    assert jnp.asarray(init(jax.random.PRNGKey(0), (5, 5, 1, 24))).shape == (5, 5, 1, 24)
