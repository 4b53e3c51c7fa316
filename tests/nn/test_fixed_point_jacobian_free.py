"""fixed_point in JacobianFree mode (the deep-equilibrium solve of paper 004): convergence to
known fixed points, the JFB gradient, training; and the three modes on one problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

from jaxmri.nn.fixed_point import FixedPointInfo, Implicit, JacobianFree, Unrolled, fixed_point


def deq_fixed_point(layer, params, u0, *args, tol=1e-3, max_iter=20):
    """The solve as paper 004's Rec module calls it."""
    return fixed_point(layer, params, u0, *args, mode=JacobianFree(tol=tol, max_iter=max_iter))


def tanh_layer(params, u, d):
    return params["a"] * jnp.tanh(u) + d


def linear_layer(params, u, d):
    return params["w"] @ u + d


def _contraction(n, seed, norm=0.6, dtype=np.float64):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, n))
    if np.dtype(dtype).kind == "c":
        w = w + 1j * rng.standard_normal((n, n))
    return (norm * w / np.linalg.norm(w, 2)).astype(dtype)


def test_converges_to_the_fixed_point_of_a_scalar_contraction():
    a, d = 0.7, np.linspace(-2, 2, 9).astype(np.float32)
    out, info = deq_fixed_point(tanh_layer, {"a": jnp.float32(a)}, jnp.zeros(9), d, tol=1e-6,
                                max_iter=200)
    expected = [brentq(lambda u, di=di: u - a * np.tanh(u) - di, -10, 10) for di in d]
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    assert 0 < int(info.num_iter) < 200
    assert float(info.residual) <= 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_converges_to_the_solution_of_a_linear_fixed_point(dtype):
    w = _contraction(6, 0, dtype=dtype)
    d = np.asarray(np.random.default_rng(1).standard_normal(6), dtype)
    out, info = deq_fixed_point(linear_layer, {"w": jnp.asarray(w)}, jnp.zeros(6, dtype), d,
                                tol=1e-6, max_iter=100)
    expected = np.linalg.solve(np.eye(6) - w.astype(np.complex128), d)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    assert out.dtype == dtype


def test_tol_zero_runs_exactly_max_iter_iterations():
    w = _contraction(4, 2)
    d = np.ones(4)
    out, info = deq_fixed_point(linear_layer, {"w": w}, np.zeros(4), d, tol=0.0, max_iter=3)
    u = np.zeros(4)
    for _ in range(4):  # three solve iterations plus the final application
        u = w @ u + d
    np.testing.assert_allclose(np.asarray(out), u, rtol=1e-6)
    assert int(info.num_iter) == 3


def test_jfb_gradient_is_the_gradient_of_one_step_at_the_fixed_point():
    params = {"a": jnp.float32(0.6)}
    d = jnp.linspace(-1.0, 1.0, 5)
    target = jnp.linspace(0.5, -0.5, 5)

    def loss(p, data):
        out, _ = deq_fixed_point(tanh_layer, p, jnp.zeros(5), data, tol=1e-7, max_iter=200)
        return jnp.sum((out - target) ** 2)

    grads = jax.grad(loss, argnums=(0, 1))(params, d)
    u_star, _ = deq_fixed_point(tanh_layer, params, jnp.zeros(5), d, tol=1e-7, max_iter=200)

    def one_step(p, data):
        return jnp.sum((tanh_layer(p, jax.lax.stop_gradient(u_star), data) - target) ** 2)

    expected = jax.grad(one_step, argnums=(0, 1))(params, d)
    np.testing.assert_allclose(grads[0]["a"], expected[0]["a"], rtol=1e-5)
    np.testing.assert_allclose(grads[1], expected[1], rtol=1e-5)
    # Analytic check: d/da of sum (a tanh(u*) + d - t)^2 with u* held fixed.
    u = np.asarray(u_star)
    analytic = np.sum(2 * (0.6 * np.tanh(u) + np.asarray(d) - np.asarray(target)) * np.tanh(u))
    np.testing.assert_allclose(grads[0]["a"], analytic, rtol=1e-4)


def test_jfb_gradient_trains_a_deq():
    # Learn the matrix of a linear DEQ so that its equilibrium matches a target map d -> u.
    w_true = _contraction(4, 3, norm=0.5).astype(np.float32)
    data = np.random.default_rng(4).standard_normal((4, 16)).astype(np.float32)
    targets = np.linalg.solve(np.eye(4) - w_true, data)

    def loss(p):
        out, _ = deq_fixed_point(linear_layer, p, jnp.zeros((4, 16)), data, tol=1e-6,
                                 max_iter=100)
        return jnp.mean((out - targets) ** 2)

    params = {"w": jnp.zeros((4, 4))}
    step = jax.jit(lambda p: jax.tree.map(lambda v, g: v - 0.5 * g, p, jax.grad(loss)(p)))
    start = float(loss(params))
    for _ in range(60):
        params = step(params)
    assert float(loss(params)) < 0.05 * start
    np.testing.assert_allclose(np.asarray(params["w"]), w_true, atol=0.1)


def test_jit_and_vmap_match_eager():
    w = jnp.asarray(_contraction(3, 5).astype(np.float32))
    ds = jnp.asarray(np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32))

    def solve(d):
        return deq_fixed_point(linear_layer, {"w": w}, jnp.zeros(3), d, tol=1e-6, max_iter=50)

    eager = [solve(d)[0] for d in ds]
    batched, info = jax.jit(jax.vmap(solve))(ds)
    np.testing.assert_allclose(np.asarray(batched), np.stack(eager), rtol=1e-5, atol=1e-6)
    assert info.num_iter.shape == (4,)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_iter"):
        deq_fixed_point(tanh_layer, {"a": 0.5}, jnp.zeros(2), jnp.zeros(2), max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        deq_fixed_point(tanh_layer, {"a": 0.5}, jnp.zeros(2), jnp.zeros(2), tol=-1.0)
    with pytest.raises(TypeError, match="x0"):
        deq_fixed_point(tanh_layer, {"a": 0.5}, jnp.zeros(2, jnp.int32), jnp.zeros(2))


@pytest.mark.parametrize("mode", [Implicit(tol=1e-7, max_iter=200), Unrolled(60),
                                  JacobianFree(tol=1e-7, max_iter=200)])
def test_the_three_modes_solve_the_same_fixed_point_with_the_same_info_type(mode):
    a, d = 0.7, np.linspace(-2, 2, 9).astype(np.float32)
    out, info = fixed_point(tanh_layer, {"a": jnp.float32(a)}, jnp.zeros(9), d, mode=mode)
    expected = [brentq(lambda u, di=di: u - a * np.tanh(u) - di, -10, 10) for di in d]
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    assert isinstance(info, FixedPointInfo)
    assert info.residual.dtype == jnp.float32 and info.num_iter.dtype == jnp.int32


@pytest.mark.parametrize("unroll_adjoint", [False, True])
def test_implicit_gradient_of_a_linear_fixed_point_is_exact(unroll_adjoint):
    # x* = W x* + d  =>  x* = (I - W)^{-1} d; for L = <c, x*>: dL/dd = (I - W)^{-T} c and
    # dL/dW = (I - W)^{-T} c x*^T. The JFB gradient would instead be c and c x*^T.
    w = _contraction(5, 7).astype(np.float32)
    d = np.random.default_rng(8).standard_normal(5).astype(np.float32)
    c = np.random.default_rng(9).standard_normal(5).astype(np.float32)
    mode = Implicit(tol=1e-7, max_iter=16, unroll_adjoint=unroll_adjoint)

    def loss(p, data):
        x, _ = fixed_point(linear_layer, p, jnp.zeros(5), data, mode=mode)
        return jnp.vdot(c, x)

    g_params, g_data = jax.jit(jax.grad(loss, argnums=(0, 1)))({"w": jnp.asarray(w)}, d)
    inv_t = np.linalg.inv(np.eye(5) - w.astype(np.float64)).T
    x_star = np.linalg.solve(np.eye(5) - w.astype(np.float64), d)
    np.testing.assert_allclose(np.asarray(g_data), inv_t @ c, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(g_params["w"]), np.outer(inv_t @ c, x_star),
                               rtol=1e-3, atol=1e-4)


def test_implicit_mode_rejects_a_non_bool_unroll_adjoint():
    with pytest.raises(TypeError, match="unroll_adjoint"):
        Implicit(unroll_adjoint=1)
