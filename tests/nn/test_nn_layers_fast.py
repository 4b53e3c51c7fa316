"""Layers rewritten for XLA:CPU speed (2x2 pooling, stride-2 convolutions): same values and
gradients as the Flax / lax originals."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.nn.layers import avg_pool_2x2, max_pool_2x2


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])  # even, and odd (row/col dropped)
def test_pools_equal_flax_values_and_gradients(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)  # continuous: no ties
    w = jax.random.normal(jax.random.PRNGKey(1), (shape[0], shape[1] // 2, shape[2] // 2,
                                                  shape[3]))
    for ours, theirs in ((max_pool_2x2, lambda z: nn.max_pool(z, (2, 2), strides=(2, 2))),
                         (avg_pool_2x2, lambda z: nn.avg_pool(z, (2, 2), strides=(2, 2)))):
        np.testing.assert_array_equal(ours(x), theirs(x))
        g_ours = jax.grad(lambda z, f=ours: jnp.sum(w * f(z)))(x)
        g_theirs = jax.grad(lambda z, f=theirs: jnp.sum(w * f(z)))(x)
        np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-6, atol=1e-7)


def test_max_pool_gradient_at_ties_is_shared_and_sums_to_one():
    x = jnp.zeros((1, 2, 2, 1)).at[0, 1, 1, 0].set(-1.0)  # three tied maxima at 0
    g = jax.grad(lambda z: jnp.sum(max_pool_2x2(z)))(x)
    np.testing.assert_allclose(np.asarray(g)[0, :, :, 0], [[1 / 3, 1 / 3], [1 / 3, 0.0]])


def test_pools_reject_non_nhwc():
    with pytest.raises(ValueError, match="ndim"):
        max_pool_2x2(jnp.zeros((4, 4, 3)))


@pytest.mark.parametrize("shape, kernel, padding", [
    ((2, 8, 8, 3), 4, "SAME"), ((2, 7, 9, 3), 4, "SAME"), ((1, 6, 6, 5), 4, "VALID"),
    ((1, 9, 8, 2), 2, "SAME"), ((1, 8, 8, 2), 4, ((2, 1), (0, 3))),
])
def test_space_to_depth_conv_equals_the_strided_conv(shape, kernel, padding):
    """Values and both gradients equal lax's stride-2 convolution (even kernels, any padding)."""
    from jax import lax

    from jaxmri.nn.layers import conv_stride2_space_to_depth

    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.PRNGKey(2), shape)
    w = jax.random.normal(jax.random.PRNGKey(3), (kernel, kernel, shape[-1], 4))

    def loss(conv, x, w):
        y = conv(x, w, (2, 2), padding, dimension_numbers=dn)
        return jnp.sum(jnp.sin(y)), y

    (l_ref, y_ref), g_ref = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
        lax.conv_general_dilated, x, w)
    (l_ours, y_ours), g_ours = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
        conv_stride2_space_to_depth, x, w)
    assert y_ours.shape == y_ref.shape
    np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_space_to_depth_conv_in_flax_keeps_parameters_and_falls_back_elsewhere():
    from jaxmri.nn.layers import conv_stride2_space_to_depth

    x = jax.random.normal(jax.random.PRNGKey(4), (2, 10, 10, 3))
    for strides, kernel in (((2, 2), (4, 4)), ((1, 1), (3, 3)), ((2, 2), (3, 3))):
        plain = nn.Conv(5, kernel, strides=strides)
        fast = nn.Conv(5, kernel, strides=strides, conv_general_dilated=conv_stride2_space_to_depth)
        variables = plain.init(jax.random.PRNGKey(5), x)
        np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x),
                                   rtol=1e-5, atol=1e-5)
