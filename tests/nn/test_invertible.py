"""Tests for jaxmri.nn.invertible: inversion, Lipschitz bound, gradients, state, transforms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.nn.fixed_point import Implicit, Unrolled
from jaxmri.nn.invertible import InvertibleResidualBlock, InvertibleSequence, ResidualBranch

SIZE, CHANNELS = 8, 2
CONFIG = dict(num_blocks=2, hidden=4, depth=3, coeff=0.7)
TIGHT = Implicit(tol=1e-7, max_iter=200)


@pytest.fixture(scope="module")
def model_and_variables():
    model = InvertibleSequence(**CONFIG)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, SIZE, SIZE, CHANNELS))
    return model, model.init(jax.random.PRNGKey(1), x), x


def _block_variables(variables, i):
    return {k: variables[k][f"blocks_{i}"] for k in ("params", "spectral")}


def test_block_and_sequence_inverse_of_forward_is_identity(model_and_variables):
    model, variables, x = model_and_variables
    block = InvertibleResidualBlock(hidden=4, depth=3, coeff=0.7)
    block_vars = _block_variables(variables, 0)
    y = block.apply(block_vars, x)
    x_rec, info = block.apply(block_vars, y, mode=TIGHT, method="inverse")
    np.testing.assert_allclose(x_rec, x, atol=1e-5)
    assert float(info.residual) <= 1e-7

    y = model.apply(variables, x)
    assert float(jnp.max(jnp.abs(y - x))) > 1e-2  # the map is not the identity
    x_rec, info = model.apply(variables, y, mode=TIGHT, method="inverse")
    np.testing.assert_allclose(x_rec, x, atol=1e-5)
    assert info.num_iter.shape == (2,) and np.all(np.asarray(info.residual) <= 1e-7)
    # the sequence applies its blocks in order
    y0 = block.apply(_block_variables(variables, 0), x)
    np.testing.assert_allclose(block.apply(_block_variables(variables, 1), y0), y, atol=1e-6)


def test_branch_lipschitz_constant_is_below_the_product_bound(model_and_variables):
    _, variables, x = model_and_variables
    branch = ResidualBranch(hidden=4, depth=3, coeff=0.7)
    branch_vars = {k: v["branch"] for k, v in _block_variables(variables, 0).items()}
    n = SIZE * SIZE * CHANNELS
    jac = jax.jit(jax.jacfwd(
        lambda z: branch.apply(branch_vars, z.reshape(1, SIZE, SIZE, CHANNELS)).reshape(-1)
    ))
    for i in range(2):  # the Jacobian norm at any point bounds Lip(g) from below
        point = x[i].reshape(-1) * (i + 1)
        norm = np.linalg.svd(np.asarray(jac(point), np.float64), compute_uv=False)[0]
        assert 0.05 < norm <= (0.7 * 1.01) ** 3
    assert jac(jnp.zeros(n)).shape == (n, n)


def test_unrolled_two_iteration_inversion_error_grows_with_coeff():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, SIZE, SIZE, CHANNELS))
    errors = []
    for coeff in (0.6, 0.7, 0.8):
        model = InvertibleSequence(**{**CONFIG, "coeff": coeff})
        variables = model.init(jax.random.PRNGKey(1), x)
        y = model.apply(variables, x)
        x_rec, _ = model.apply(variables, y, mode=Unrolled(2), method="inverse")
        errors.append(float(jnp.mean(jnp.abs(x_rec - x))))
    print("mean |x - S^-1(S(x))| with 2 iterations for c = 0.6, 0.7, 0.8:", errors)
    assert errors[0] < errors[1] < errors[2]


def test_inverse_gradients_implicit_match_unrolled_and_finite_differences_float64(
    model_and_variables,
):
    # one block of the shared tiny network keeps the float64 compiles small; chaining blocks is
    # ordinary autodiff through a Python loop
    _, variables32, x32 = model_and_variables
    block = InvertibleResidualBlock(hidden=4, depth=3, coeff=0.7)
    block_vars32 = _block_variables(variables32, 0)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(x32.shape)
    # host-side numpy for casts and perturbations: each eager float64 op would be a new compile
    to64 = functools.partial(jax.tree_util.tree_map, lambda a: np.asarray(a, np.float64))
    variables, y = to64(block_vars32), to64(block.apply(block_vars32, x32))
    with jax.enable_x64(True):

        def loss(params, y, mode):
            x, _ = block.apply({**variables, "params": params}, y, mode=mode, method="inverse")
            return jnp.sum(w * x) + 0.5 * jnp.sum(x**2)

        implicit = functools.partial(loss, mode=Implicit(tol=1e-12, max_iter=300))
        unrolled = functools.partial(loss, mode=Unrolled(60))
        args = (variables["params"], y)
        # one compiled function serves both the gradient and the finite differences
        value_and_grad = jax.jit(jax.value_and_grad(implicit, argnums=(0, 1)))
        grads = to64(value_and_grad(*args)[1])
        grads_unrolled = to64(jax.jit(jax.grad(unrolled, argnums=(0, 1)))(*args))
        leaves = jax.tree_util.tree_leaves
        for a, b in zip(leaves(grads), leaves(grads_unrolled)):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
        for _ in range(2):
            direction = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape), args)
            plus = jax.tree_util.tree_map(lambda a, d: a + 1e-6 * d, args, direction)
            minus = jax.tree_util.tree_map(lambda a, d: a - 1e-6 * d, args, direction)
            fd = (float(value_and_grad(*plus)[0]) - float(value_and_grad(*minus)[0])) / 2e-6
            dot = sum(np.vdot(g, d) for g, d in zip(leaves(grads), leaves(direction)))
            np.testing.assert_allclose(dot, fd, rtol=1e-6)


def test_spectral_stats_update_once_per_call_not_per_iteration(model_and_variables):
    model, variables, x = model_and_variables
    y = model.apply(variables, x)
    _, forward_state = model.apply(variables, x, update_stats=True, mutable=["spectral"])
    (_, info), state = model.apply(
        variables, y, mode=TIGHT, update_stats=True, mutable=["spectral"], method="inverse"
    )
    assert np.all(np.asarray(info.num_iter) > 2)
    # one power step per layer, exactly as in the forward direction (the state does not depend on
    # the data), however many fixed-point iterations ran
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(forward_state)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    old = jax.tree_util.tree_leaves(variables["spectral"])
    new = jax.tree_util.tree_leaves(forward_state["spectral"])
    assert all(a.shape == b.shape for a, b in zip(old, new))
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(old, new))
    # evaluation reads the state without needing it mutable
    model.apply(variables, y, mode=Unrolled(2), method="inverse")


def test_jit_and_pmap_match_eager(model_and_variables):
    model, variables, x = model_and_variables

    def both(variables, x):
        y = model.apply(variables, x)
        x_rec, info = model.apply(variables, y, mode=TIGHT, method="inverse")
        x_two, _ = model.apply(variables, y, mode=Unrolled(2), method="inverse")
        return y, x_rec, x_two, info.num_iter

    eager = both(variables, x)
    jitted = jax.jit(both)(variables, x)
    assert jax.device_count() >= 2
    pmapped = jax.pmap(both, in_axes=(None, 0))(variables, x[:, None])
    for a, b, c in zip(eager[:3], jitted[:3], pmapped[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, c[:, 0], rtol=1e-5, atol=1e-6)
    # each device solves its own example: never more iterations than the joint batch needed
    assert np.all(np.asarray(pmapped[3]) <= np.asarray(eager[3])[None])


def test_paper_preset_parameter_count():
    model = InvertibleSequence()  # 12 blocks x 5 convs x 128 channels
    x = jax.ShapeDtypeStruct((1, 16, 16, 4), jnp.float32)  # two complex images as real/imag
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    count = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"]))
    k2, c, h = 9, 4, 128
    per_block = (k2 * c * h + h) + 3 * (k2 * h * h + h) + (k2 * h * c + c)
    assert count == 12 * per_block == 5_425_200
    assert abs(count - 5.4e6) / 5.4e6 < 0.02


def test_bad_arguments_raise_naming_the_argument(model_and_variables):
    model, variables, x = model_and_variables
    with pytest.raises(TypeError, match="mode"):
        model.apply(variables, x, mode="implicit", method="inverse")
    with pytest.raises(ValueError, match="y"):
        model.apply(variables, x[0], mode=Unrolled(2), method="inverse")
    with pytest.raises(ValueError, match="x"):
        model.apply(variables, x[0])
    with pytest.raises(ValueError, match="coeff"):
        InvertibleSequence(**{**CONFIG, "coeff": 1.0}).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="num_blocks"):
        InvertibleSequence(**{**CONFIG, "num_blocks": 0}).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="depth"):
        ResidualBranch(depth=0).init(jax.random.PRNGKey(0), x)
