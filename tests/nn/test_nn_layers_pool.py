"""2x2 pooling as reshape + reduce: the values and gradients of Flax's reduce_window pooling."""

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
