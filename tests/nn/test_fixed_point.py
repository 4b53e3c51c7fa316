"""Tests for jaxmri.nn.fixed_point: convergence, gradient modes, transformations, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.nn.fixed_point import (
    FixedPointInfo,
    Implicit,
    Unrolled,
    fixed_point_iterate,
    fixed_point_iterate_unrolled,
    invert_residual,
)

LIP = 0.6  # Lipschitz constant of the test contraction


def _contraction_params(seed, n, *, lip=LIP, dtype=jnp.float32):
    """g(p, x) = s * tanh(A x + b) with ||A||_2 = 1, so Lip(g) <= s = lip."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a /= np.linalg.svd(a, compute_uv=False)[0]
    b = rng.standard_normal(n)
    return {"a": jnp.asarray(a, dtype), "b": jnp.asarray(b, dtype), "s": jnp.asarray(lip, dtype)}


def g(p, x):
    return p["s"] * jnp.tanh(x.reshape(-1) @ p["a"].T + p["b"]).reshape(x.shape)


@pytest.fixture(scope="module")
def problem():
    params = _contraction_params(0, 12)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4))  # any shape: flattened inside g
    return params, x, x + g(params, x)


def test_inverse_of_forward_is_identity_when_converged(problem):
    params, x, y = problem
    x_rec, info = invert_residual(g, params, y, mode=Implicit(tol=1e-7, max_iter=200))
    np.testing.assert_allclose(x_rec, x, atol=1e-5)
    assert int(info.num_iter) < 200
    assert float(info.residual) <= 1e-7


def test_stopping_rule_and_reported_residual_follow_the_definition(problem):
    params, _, y = problem
    x_n, info = invert_residual(g, params, y, mode=Implicit(tol=1e-4, max_iter=200))
    n = int(info.num_iter)
    x_unrolled, _ = invert_residual(g, params, y, mode=Unrolled(n))
    x_prev, info_prev = invert_residual(g, params, y, mode=Unrolled(n - 1))
    np.testing.assert_allclose(x_n, x_unrolled, rtol=1e-6, atol=1e-7)
    # residual = ||x_n - x_{n-1}|| / ||y||; the loop stops at the first n where it is <= tol
    expected = np.linalg.norm(np.asarray(x_n - x_prev)) / np.linalg.norm(np.asarray(y))
    np.testing.assert_allclose(float(info.residual), expected, rtol=1e-3)
    assert float(info.residual) <= 1e-4 < float(info_prev.residual)


def test_residual_shrinks_geometrically_at_rate_lip(problem):
    params, x, y = problem
    residuals, errors = [], []
    for k in range(1, 10):
        x_k, info = invert_residual(g, params, y, mode=Unrolled(k))
        assert int(info.num_iter) == k
        residuals.append(float(info.residual))
        errors.append(float(jnp.linalg.norm(x_k - x)))
    residuals = np.array(residuals)
    assert np.all(residuals[1:] <= LIP * residuals[:-1] * (1 + 1e-4) + 1e-7)
    # a-priori bound ||x* - x_n|| <= L / (1 - L) ||x_n - x_{n-1}|| (Banach)
    step = residuals * float(jnp.linalg.norm(y))
    assert np.all(np.array(errors) <= LIP / (1 - LIP) * step * (1 + 1e-4) + 1e-6)


def test_max_iter_caps_the_loop():
    params = _contraction_params(2, 12, lip=0.95)
    y = jax.random.normal(jax.random.PRNGKey(3), (12,))
    _, info = invert_residual(g, params, y, mode=Implicit(tol=1e-12, max_iter=3))
    assert int(info.num_iter) == 3
    assert float(info.residual) > 1e-12


def test_implicit_gradients_match_finite_differences_and_unrolled_float64():
    # host-side numpy for data and perturbations: each eager float64 op would be a new compile
    rng = np.random.default_rng(5)
    a = rng.standard_normal((10, 10))
    params = {"a": a / np.linalg.svd(a, compute_uv=False)[0], "b": rng.standard_normal(10),
              "s": np.float64(LIP)}
    y, w, scale = rng.standard_normal((2, 5)), rng.standard_normal((2, 5)), np.float64(0.9)
    leaves = jax.tree_util.tree_leaves
    with jax.enable_x64(True):

        def loss(params, y, scale, mode):
            # g closes over the traced ``scale``: its gradient must come out right too.
            x, _ = invert_residual(lambda p, z: scale * g(p, z), params, y, mode=mode)
            return jnp.sum(w * x) + 0.5 * jnp.sum(x**2)

        implicit = functools.partial(loss, mode=Implicit(tol=1e-13, max_iter=200))
        unrolled = functools.partial(loss, mode=Unrolled(120))
        args = (params, y, scale)
        value_and_grad = jax.jit(jax.value_and_grad(implicit, argnums=(0, 1, 2)))
        grads_implicit = [np.asarray(v) for v in leaves(value_and_grad(*args)[1])]
        grads_unrolled = leaves(jax.jit(jax.grad(unrolled, argnums=(0, 1, 2)))(*args))
        for gi, gu in zip(grads_implicit, grads_unrolled):
            np.testing.assert_allclose(gi, gu, rtol=1e-9, atol=1e-11)
        for _ in range(3):
            direction = jax.tree_util.tree_map(lambda v: rng.standard_normal(np.shape(v)), args)
            plus = jax.tree_util.tree_map(lambda v, d: v + 1e-6 * d, args, direction)
            minus = jax.tree_util.tree_map(lambda v, d: v - 1e-6 * d, args, direction)
            fd = (float(value_and_grad(*plus)[0]) - float(value_and_grad(*minus)[0])) / 2e-6
            dot = sum(np.vdot(gi, d) for gi, d in zip(grads_implicit, leaves(direction)))
            np.testing.assert_allclose(dot, fd, rtol=1e-7)


def test_jit_vmap_pmap_match_eager(problem):
    params, _, y = problem
    mode = Implicit(tol=1e-7, max_iter=200)

    def solve_and_grad(params, y):
        x, info = invert_residual(g, params, y, mode=mode)
        grad = jax.grad(lambda p: jnp.sum(invert_residual(g, p, y, mode=mode)[0] ** 2))(params)
        return x, info, grad

    ys = jnp.stack([y, 2.0 * y])
    eager = [solve_and_grad(params, yi) for yi in ys]
    eager = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *eager)
    jitted = jax.jit(jax.vmap(solve_and_grad, in_axes=(None, 0)))(params, ys)
    pmapped = jax.pmap(solve_and_grad, in_axes=(None, 0))(params, ys)
    assert jax.device_count() >= 2
    for other in (jitted, pmapped):
        for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(other)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert isinstance(pmapped[1], FixedPointInfo)


def test_modes_are_hashable_static_values(problem):
    params, _, y = problem
    assert Implicit(1e-5, 10) == Implicit(1e-5, 10) and hash(Unrolled(2)) == hash(Unrolled(2))
    solve = jax.jit(lambda p, y, mode: invert_residual(g, p, y, mode=mode)[0],
                    static_argnames="mode")
    np.testing.assert_allclose(solve(params, y, Unrolled(3)),
                               invert_residual(g, params, y, mode=Unrolled(3))[0], rtol=1e-6)


def test_bad_arguments_raise_naming_the_argument(problem):
    params, _, y = problem
    with pytest.raises(ValueError, match="tol"):
        Implicit(tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        Implicit(max_iter=0)
    with pytest.raises(ValueError, match="num_iter"):
        Unrolled(num_iter=0)
    with pytest.raises(TypeError, match="mode"):
        invert_residual(g, params, y, mode="implicit")
    with pytest.raises(TypeError, match="y"):
        invert_residual(g, params, jnp.ones((3, 4), jnp.int32), mode=Unrolled(2))


@pytest.mark.parametrize("tol", [1e-30, 1e-3])
def test_unrolled_iterate_matches_the_while_loop(problem, tol):
    # Same iterate, count and residual whether the loop stops early (tol 1e-3) or runs to the cap.
    params, _, y = problem
    y = jnp.asarray(y)

    def step(x):
        return y - g(params, x)

    kwargs = dict(scale=jnp.linalg.norm(y), tol=tol, max_iter=12)
    x_w, info_w = jax.jit(lambda y0: fixed_point_iterate(step, y0, **kwargs))(y)
    x_u, info_u = jax.jit(lambda y0: fixed_point_iterate_unrolled(step, y0, **kwargs))(y)
    assert int(info_u.num_iter) == int(info_w.num_iter)
    assert (int(info_w.num_iter) == 12) == (tol == 1e-30)
    np.testing.assert_allclose(x_u, x_w, rtol=1e-6, atol=1e-7)
    # The residual is a norm of the last step, a difference of nearly equal iterates: its
    # absolute rounding is that of the iterates (atol as above).
    np.testing.assert_allclose(info_u.residual, info_w.residual, rtol=1e-5, atol=1e-7)


def test_short_and_long_adjoint_solves_give_the_same_gradient(problem):
    # max_iter <= 16 takes the unrolled adjoint solve, 200 the while loop; both converge.
    params, _, y = problem

    def grad(mode):
        return jax.jit(jax.grad(
            lambda p: jnp.sum(invert_residual(g, p, y, mode=mode)[0] ** 2)))(params)

    short, long = grad(Implicit(tol=1e-30, max_iter=16)), grad(Implicit(tol=1e-30, max_iter=200))
    for a, b in zip(jax.tree_util.tree_leaves(short), jax.tree_util.tree_leaves(long)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
