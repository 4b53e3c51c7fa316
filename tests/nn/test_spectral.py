"""Tests for jaxmri.nn.spectral: operator norms against dense SVDs, state updates, training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmri.nn.spectral import SpectralNormConv, conv_nhwc, operator_norm


# Most tests share one layer shape (8x8 images, 2 -> 4 channels) so that XLA compiles are reused.
SIZE, C_IN, C_OUT = 8, 2, 4
SHAPE = (1, SIZE, SIZE, C_IN)


@functools.partial(jax.jit, static_argnames="padding")
def _conv_matrix(kernel, padding):
    n = SIZE * SIZE * kernel.shape[2]
    conv = lambda z: conv_nhwc(z.reshape(1, SIZE, SIZE, -1), kernel, padding=padding)  # noqa: E731
    return jax.jacfwd(lambda z: conv(z).reshape(-1))(jnp.zeros(n, kernel.dtype))


def conv_norm(kernel, padding="SAME"):
    """Dense-SVD norm of the raw (bias-free, un-normalised) conv on SIZE x SIZE images."""
    mat = np.asarray(_conv_matrix(kernel, padding), np.float64)
    return np.linalg.svd(mat, compute_uv=False)[0]


@functools.partial(jax.jit, static_argnames=("layer", "shape"))
def _layer_matrix(layer, variables, shape):
    def linear(z):  # the bias-free part of the layer as used at evaluation (state fixed)
        z = z.reshape(shape)
        return (layer.apply(variables, z) - layer.apply(variables, jnp.zeros_like(z))).reshape(-1)

    return jax.jacfwd(linear)(jnp.zeros(int(np.prod(shape))))


def layer_norm(layer, variables, shape=SHAPE):
    """Dense-SVD operator norm of the layer's linear part: the independent reference."""
    mat = np.asarray(_layer_matrix(layer, variables, shape), np.float64)
    return np.linalg.svd(mat, compute_uv=False)[0]


def sown_sigma(layer, variables, x):
    """The layer's estimate sigma (before rescaling), read from the sown intermediates."""
    apply = jax.jit(lambda v, x: layer.apply(v, x, mutable=["intermediates"])[1])
    return float(apply(variables, x)["intermediates"]["sigma"][0])


def test_operator_norm_matches_dense_svd():
    a = jax.random.normal(jax.random.PRNGKey(0), (20, 30))
    est = operator_norm(jax.random.PRNGKey(1), lambda z: a @ z, (30,), num_iters=300)
    np.testing.assert_allclose(est, np.linalg.svd(np.asarray(a), compute_uv=False)[0], rtol=1e-4)
    kernel = jax.random.normal(jax.random.PRNGKey(2), (3, 3, C_IN, C_OUT)) / 4.0
    conv = lambda z: conv_nhwc(z, kernel)  # noqa: E731
    est = operator_norm(jax.random.PRNGKey(3), conv, SHAPE, num_iters=500)
    np.testing.assert_allclose(est, conv_norm(kernel), rtol=2e-3)
    # the 3x3 operator norm is not the norm of the kernel reshaped to a matrix
    reshaped = np.linalg.svd(np.asarray(kernel).reshape(-1, C_OUT), compute_uv=False)[0]
    assert abs(reshaped - float(est)) > 0.05 * float(est)


def test_1x1_kernel_norm_is_the_matrix_norm():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, SIZE, SIZE, C_IN))
    free = SpectralNormConv(C_OUT, (1, 1), coeff=100.0)  # coeff above the norm: no rescaling
    variables = free.init(jax.random.PRNGKey(1), x)
    kernel = np.asarray(variables["params"]["kernel"]).reshape(C_IN, C_OUT)
    matrix_norm = np.linalg.svd(kernel, compute_uv=False)[0]
    np.testing.assert_allclose(sown_sigma(free, variables, x), matrix_norm, rtol=1e-4)
    np.testing.assert_allclose(free.apply(variables, x), conv_nhwc(x, kernel[None, None]) +
                               variables["params"]["bias"], rtol=1e-5, atol=1e-6)
    capped = SpectralNormConv(C_OUT, (1, 1), coeff=0.5 * matrix_norm)
    capped_vars = capped.init(jax.random.PRNGKey(1), x)
    np.testing.assert_allclose(layer_norm(capped, capped_vars), 0.5 * matrix_norm, rtol=1e-4)


@pytest.mark.parametrize("seed,coeff,padding", [(0, 0.7, "SAME"), (1, 0.5, "SAME"),
                                                 (2, 0.7, "VALID")])
def test_layer_norm_is_bounded_after_init_and_updates(seed, coeff, padding):
    layer = SpectralNormConv(C_OUT, coeff=coeff, padding=padding)
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, SIZE, SIZE, C_IN))
    variables = layer.init(jax.random.PRNGKey(seed + 10), x)
    for _ in range(3):
        _, state = layer.apply(variables, x, update_stats=True, mutable=["spectral"])
        variables = {**variables, **state}
    raw_norm = conv_norm(variables["params"]["kernel"], padding)
    assert raw_norm > 1.5 * coeff  # the normalisation is active in this test
    # sanity: the estimate matches the measured norm before rescaling (it is a lower bound)
    sigma = sown_sigma(layer, variables, x)
    assert 0.99 * raw_norm <= sigma <= raw_norm * (1 + 1e-5)
    assert layer_norm(layer, variables) <= coeff * (1 + 1e-2)


def test_update_stats_is_one_power_step_and_only_when_asked():
    layer = SpectralNormConv(C_OUT, coeff=0.7, init_power_iterations=3)
    x = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    variables = layer.init(jax.random.PRNGKey(1), x)
    u, v = (np.asarray(variables["spectral"][k], np.float64).reshape(-1) for k in ("u", "v"))
    # evaluation leaves the state alone (and needs no mutable collection)
    _, state = layer.apply(variables, x, mutable=["spectral"])
    np.testing.assert_array_equal(state["spectral"]["u"], variables["spectral"]["u"])
    # training advances it by one power step on the dense operator
    _, state = layer.apply(variables, x, update_stats=True, mutable=["spectral"])
    mat = np.asarray(_conv_matrix(variables["params"]["kernel"], "SAME"), np.float64)
    v_ref = mat.T @ u
    v_ref /= np.linalg.norm(v_ref)
    u_ref = mat @ v_ref
    u_ref /= np.linalg.norm(u_ref)
    np.testing.assert_allclose(np.asarray(state["spectral"]["v"]).reshape(-1), v_ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state["spectral"]["u"]).reshape(-1), u_ref, atol=1e-5)
    assert not np.allclose(u_ref, u, atol=1e-3)


def test_gradient_flows_through_sigma_float64():
    layer = SpectralNormConv(C_OUT, coeff=0.3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, SIZE, SIZE, C_IN))
    w = rng.standard_normal((2, SIZE, SIZE, C_OUT))
    direction = rng.standard_normal((3, 3, C_IN, C_OUT))
    variables32 = layer.init(jax.random.PRNGKey(2), jnp.asarray(x, jnp.float32))
    with jax.enable_x64(True):
        variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables32)

        @jax.jit
        def loss(kernel):
            params = {**variables["params"], "kernel": kernel}
            return jnp.sum(w * layer.apply({**variables, "params": params}, x))

        kernel = variables["params"]["kernel"]
        raw_sigma = sown_sigma(layer, variables, x)
        assert raw_sigma > 0.3  # rescaling active
        grad = jax.jit(jax.grad(loss))(kernel)
        fd = (loss(kernel + 1e-6 * direction) - loss(kernel - 1e-6 * direction)) / 2e-6
        np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=1e-6)
        # and it differs from treating sigma as a constant
        naive = jax.jit(jax.grad(lambda k: jnp.sum(w * conv_nhwc(x, k * 0.3 / raw_sigma))))(kernel)
        assert not np.allclose(grad, naive, rtol=1e-2)


def test_norm_bounded_after_adam_training_once_state_is_refreshed():
    coeff = 0.7
    layer = SpectralNormConv(C_OUT, coeff=coeff)  # 1 power step per training step
    x = jax.random.normal(jax.random.PRNGKey(0), (4, SIZE, SIZE, C_IN))
    target_kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, C_IN, C_OUT))
    target = conv_nhwc(x, target_kernel)  # an operator of norm >> coeff: weights must grow
    variables = layer.init(jax.random.PRNGKey(2), x)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(variables["params"])

    @jax.jit
    def step(params, spectral, opt_state):
        def loss(params):
            y, state = layer.apply({"params": params, "spectral": spectral}, x,
                                   update_stats=True, mutable=["spectral", "intermediates"])
            return jnp.mean(jnp.abs(y - target)), state

        (_, state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        sigma = state["intermediates"]["sigma"][0]
        return optax.apply_updates(params, updates), state["spectral"], opt_state, sigma

    params, spectral = variables["params"], variables["spectral"]
    initial_raw = conv_norm(params["kernel"])
    for i in range(30):
        kernel_before = params["kernel"]
        params, spectral, opt_state, sigma = step(params, spectral, opt_state)
        if i % 10 == 9:  # the running estimate never exceeds the norm it estimates
            assert float(sigma) <= conv_norm(kernel_before) * 1.0001
    raw = conv_norm(params["kernel"])
    assert raw > 1.2 * initial_raw  # training did push the weights to grow
    # refresh the running estimate with a long power iteration (the documented recipe)
    variables = {"params": params, "spectral": spectral}
    _, state = layer.clone(power_iterations=200).apply(
        variables, x, update_stats=True, mutable=["spectral"]
    )
    variables = {**variables, **state}
    assert layer_norm(layer, variables) <= coeff * (1 + 1e-2)
    np.testing.assert_allclose(sown_sigma(layer, variables, x), raw, rtol=1e-2)


def test_state_has_init_size_and_the_layer_is_one_conv_at_every_size():
    layer = SpectralNormConv(C_OUT, coeff=0.5)
    small = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    variables = layer.init(jax.random.PRNGKey(1), small)
    assert variables["spectral"]["v"].shape == (1, 8, 8, 2)
    assert variables["spectral"]["u"].shape == (1, 8, 8, 4)
    big = jax.random.normal(jax.random.PRNGKey(2), (1, 16, 16, 2))
    y_big = layer.apply(variables, big)
    y_crop = layer.apply(variables, big[:, 4:12, 4:12])
    # away from the borders both see the same pixels through the same (rescaled) kernel
    np.testing.assert_allclose(y_big[:, 5:11, 5:11], y_crop[:, 1:7, 1:7], rtol=1e-5, atol=1e-6)
    fixed = SpectralNormConv(C_OUT, coeff=0.5, norm_shape=(6, 6))
    fixed_vars = fixed.init(jax.random.PRNGKey(1), big)
    assert fixed_vars["spectral"]["v"].shape == (1, 6, 6, 2)
    assert layer_norm(fixed, fixed_vars, (1, 6, 6, 2)) <= 0.5 * (1 + 1e-2)


def test_jit_matches_eager():
    layer = SpectralNormConv(C_OUT, coeff=0.6)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, SIZE, SIZE, C_IN))
    variables = layer.init(jax.random.PRNGKey(1), x)
    train = lambda v, x: layer.apply(v, x, update_stats=True, mutable=["spectral"])  # noqa: E731
    eager, jitted = train(variables, x), jax.jit(train)(variables, x)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    est = jax.jit(lambda k: operator_norm(k, lambda z: 2.0 * z, (3, 4), num_iters=5))
    np.testing.assert_allclose(est(jax.random.PRNGKey(0)), 2.0, rtol=1e-6)


def test_bad_arguments_raise_naming_the_argument():
    x = jnp.ones((1, 8, 8, 2))
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="x"):
        SpectralNormConv(4).init(key, jnp.ones((8, 8, 2)))
    with pytest.raises(TypeError, match="x"):
        SpectralNormConv(4).init(key, jnp.ones((1, 8, 8, 2), jnp.int32))
    with pytest.raises(ValueError, match="coeff"):
        SpectralNormConv(4, coeff=0.0).init(key, x)
    with pytest.raises(ValueError, match="power_iterations"):
        SpectralNormConv(4, power_iterations=0).init(key, x)
    with pytest.raises(ValueError, match="padding"):
        SpectralNormConv(4, padding="CIRCULAR").init(key, x)
    variables = SpectralNormConv(4, init_power_iterations=1).init(key, x)
    with pytest.raises(ValueError, match="update_stats"):
        SpectralNormConv(4).apply(variables, x, update_stats=True)
    with pytest.raises(ValueError, match="num_iters"):
        operator_norm(key, lambda z: z, (3,), num_iters=0)


@pytest.mark.parametrize("implementation", ["plain", "cpu"])
@pytest.mark.parametrize("padding, ksize", [("SAME", (3, 3)), ("VALID", (3, 3)), ("SAME", (2, 3))])
def test_kernel_correlation_is_the_adjoint_of_conv_in_its_kernel(padding, ksize, implementation):
    """<u, conv(v, K)> = <K, C(u, v)> for any K, and spectral_sigma's gradients equal the
    autodiff gradients of the convolution form (kernel, u and v), with either convolution."""
    from jax import lax

    import jaxmri.cpu
    from jaxmri.nn.spectral import kernel_correlation, spectral_sigma

    impl = {"plain": lax.conv_general_dilated, "cpu": jaxmri.cpu.conv_general_dilated}[
        implementation]

    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    kernel = jax.random.normal(keys[0], (*ksize, C_IN, C_OUT))
    v = jax.random.normal(keys[1], (2, SIZE, SIZE + 1, C_IN))
    u = jax.random.normal(keys[2], conv_nhwc(v, kernel, padding=padding).shape)
    corr = kernel_correlation(u, v, kernel.shape, padding=padding, conv_general_dilated=impl)
    for k in (kernel, jax.random.normal(keys[3], kernel.shape)):
        # Two float32 sums of ~10^4 products in different orders (the CPU plans tile or reshape
        # the correlation): they agree to a few float32 ulps of the sum's magnitude.
        np.testing.assert_allclose(jnp.vdot(k, corr), jnp.vdot(u, conv_nhwc(v, k, padding=padding)),
                                   rtol=5e-5)
    conv_form = lambda k, u, v: jnp.vdot(u, conv_nhwc(v, k, padding=padding))  # noqa: E731
    ours = jax.grad(functools.partial(spectral_sigma, padding=padding, conv_general_dilated=impl),
                    argnums=(0, 1, 2))
    for got, want in zip(ours(kernel, u, v), jax.grad(conv_form, argnums=(0, 1, 2))(kernel, u, v),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_long_power_iteration_runs_canonical_convolutions_and_finds_the_norm(padding):
    """The warm start at init (100 steps, a fori_loop): both convolutions in the loop body are
    canonical NHWC / HWIO ones (XLA:CPU runs JAX's transposed conv there as a naive loop), and
    sigma = <u, conv(v)> converges to the dense operator norm."""
    import re

    from jaxmri.nn.spectral import power_iteration

    kernel = jax.random.normal(jax.random.PRNGKey(21), (3, 3, C_IN, C_OUT))
    v = jax.random.normal(jax.random.PRNGKey(22), SHAPE)
    u = conv_nhwc(v, kernel, padding=padding)
    run = jax.jit(functools.partial(power_iteration, padding=padding, num_iters=200))
    hlo = run.lower(kernel, u, v).compile().as_text()
    assert " while(" in hlo
    labels = re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels
    u, v = run(kernel, u, v)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(v)), 1.0, rtol=1e-5)
    sigma = float(jnp.vdot(u, conv_nhwc(v, kernel, padding=padding)))
    np.testing.assert_allclose(sigma, conv_norm(kernel, padding), rtol=1e-3)


@pytest.mark.parametrize("shape", [(1, 8, 8, 4), (1, 5, 3, 3)])
def test_sum_of_squares_equals_the_plain_sum(shape):
    from jaxmri.nn.spectral import _sum_of_squares

    x = np.asarray(jax.random.normal(jax.random.PRNGKey(23), shape), np.float64)
    np.testing.assert_allclose(float(_sum_of_squares(jnp.asarray(x, jnp.float32))),
                               np.sum(x ** 2), rtol=1e-5)
