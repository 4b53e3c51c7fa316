"""S_PLF against a numpy reference (values and finite-difference gradients), and its API."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmri.nn.plf import (
    PiecewiseLinear,
    control_positions,
    piecewise_linear,
    soft_threshold_values,
)



def reference_plf(x, q, p):
    """Numpy reference straight from the paper's three cases (float64)."""
    x = np.asarray(x, np.float64)
    inside = np.interp(x, p, q)
    out = np.where(x < p[0], x + q[0] - p[0], inside)
    return np.where(x > p[-1], x + q[-1] - p[-1], out)


def test_control_positions_are_the_reference_grid():
    np.testing.assert_allclose(control_positions(), np.arange(-1, 1.0001, 0.02), atol=1e-6)


def test_soft_threshold_values():
    p = np.array([-1.0, -0.05, 0.0, 0.03, 0.5])
    np.testing.assert_allclose(soft_threshold_values(p, threshold=0.1),
                               [-0.9, 0.0, 0.0, 0.0, 0.4], atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_points=st.integers(2, 40))
def test_matches_numpy_reference_shared_values(seed, num_points):
    rng = np.random.default_rng(seed)
    p = np.linspace(-1, 1, num_points)
    q = rng.normal(size=num_points)
    x = rng.uniform(-2, 2, size=(5, 7)).astype(np.float32)
    x[0, :3] = [-1.0, 1.0, p[num_points // 2]]  # grid points and the ends
    out = piecewise_linear(jnp.asarray(x), jnp.asarray(q, jnp.float32))
    np.testing.assert_allclose(out, reference_plf(x, q, p), atol=2e-5)


def test_matches_numpy_reference_per_channel_and_other_range():
    rng = np.random.default_rng(0)
    p = np.linspace(-0.5, 2.0, 11)
    q = rng.normal(size=(3, 11))
    x = rng.uniform(-1.5, 3.0, size=(2, 4, 4, 3)).astype(np.float32)
    out = piecewise_linear(jnp.asarray(x), jnp.asarray(q, jnp.float32), start=-0.5, stop=2.0)
    expected = np.stack([reference_plf(x[..., c], q[c], p) for c in range(3)], axis=-1)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_soft_threshold_initialisation_is_soft_thresholding():
    q = soft_threshold_values(control_positions(), threshold=1 / 14)
    x = np.linspace(-3, 3, 601, dtype=np.float32)
    soft = np.sign(x) * np.maximum(np.abs(x) - 1 / 14, 0)
    # The kink at +-1/14 falls between grid points: exact away from its grid cell.
    away = np.abs(np.abs(x) - 1 / 14) > 0.02
    out = np.asarray(piecewise_linear(jnp.asarray(x), jnp.asarray(q)))
    np.testing.assert_allclose(out[away], soft[away], atol=1e-5)


def test_gradients_match_finite_differences_of_reference():
    rng = np.random.default_rng(1)
    p = np.linspace(-1, 1, 9)
    q = rng.normal(size=(2, 9))
    # Keep x away from the kinks (grid points) so central differences are exact.
    x = rng.uniform(-1.6, 1.6, size=(3, 2))
    x = np.where(np.min(np.abs(x[..., None] - p), axis=-1) < 1e-2, x + 0.05, x)
    w = rng.normal(size=x.shape)

    def ref(xv, qv):
        return np.sum(w * np.stack([reference_plf(xv[:, c], qv[c], p) for c in range(2)], -1))

    def f(xv, qv):
        return jnp.sum(jnp.asarray(w, jnp.float32) * piecewise_linear(xv, qv))

    gx, gq = jax.grad(f, argnums=(0, 1))(jnp.asarray(x, jnp.float32),
                                         jnp.asarray(q, jnp.float32))
    eps = 1e-5
    num_gx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        num_gx[idx] = (ref(x + d, q) - ref(x - d, q)) / (2 * eps)
    num_gq = np.zeros_like(q)
    for idx in np.ndindex(q.shape):
        d = np.zeros_like(q)
        d[idx] = eps
        num_gq[idx] = (ref(x, q + d) - ref(x, q - d)) / (2 * eps)
    np.testing.assert_allclose(gx, num_gx, atol=1e-4)
    np.testing.assert_allclose(gq, num_gq, atol=1e-4)
    # Outside the grid the slope is exactly one.
    outside = np.abs(x) > 1
    np.testing.assert_allclose(np.asarray(gx)[outside], w[outside], atol=1e-5)


def test_jit_and_vmap_match_eager():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-2, 2, size=(4, 6, 3)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(3, 21)), jnp.float32)
    eager = piecewise_linear(x, q)
    np.testing.assert_allclose(jax.jit(piecewise_linear)(x, q), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(piecewise_linear, in_axes=(0, None))(x, q), eager,
                               atol=1e-6)


def test_module_parameters_start_as_soft_threshold():
    module = PiecewiseLinear(num_points=11, threshold=0.2, per_channel=True)
    x = jnp.ones((1, 2, 2, 3)) * 0.5
    variables = module.init(jax.random.PRNGKey(0), x)
    values = variables["params"]["values"]
    assert values.shape == (3, 11)
    np.testing.assert_allclose(values[1], soft_threshold_values(np.linspace(-1, 1, 11),
                                                                threshold=0.2), atol=1e-6)
    np.testing.assert_allclose(module.apply(variables, x), 0.3, atol=1e-6)


@pytest.mark.parametrize(
    ("x", "q", "match"),
    [
        (np.zeros((2, 3)), np.zeros((2, 2, 5)), "values"),
        (np.zeros((2, 3)), np.zeros((4, 5)), "values"),
        (np.zeros((2, 3)), np.zeros((1,)), "num_points"),
        (np.zeros((2, 3), np.complex64), np.zeros((5,)), "x"),
    ],
)
def test_bad_input_names_the_argument(x, q, match):
    with pytest.raises((ValueError, TypeError), match=match):
        piecewise_linear(x, q)


def test_bad_range_and_threshold():
    with pytest.raises(ValueError, match="stop"):
        piecewise_linear(np.zeros(3), np.zeros(5), start=1.0, stop=1.0)
    with pytest.raises(ValueError, match="threshold"):
        soft_threshold_values(np.zeros(3), threshold=-1.0)
