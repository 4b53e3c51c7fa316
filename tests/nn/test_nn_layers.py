"""Small layers: 2x2 pooling (same values and gradients as Flax's) and the plain ``Conv``; the
adjoint convolution of the spectral norm's power iteration."""

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


@pytest.mark.parametrize("shape, k, padding", [
    ((2, 9, 11, 5), (3, 3), ((1, 1), (1, 1))),       # SAME
    ((1, 8, 7, 3), (3, 2), ((1, 1), (0, 1))),        # SAME with an even kernel width
    ((3, 10, 12, 4), (5, 3), ((0, 0), (0, 0))),      # VALID
    ((2, 6, 6, 2), (3, 3), ((2, 0), (0, 1))),        # asymmetric
])
def test_conv_transpose_stride1_is_the_adjoint_of_the_conv(shape, k, padding):
    """<conv(x, w), y> = <x, conv_transpose_stride1(y, w)>, and it equals JAX's own transpose."""
    from jax import lax

    from jaxmri.nn.spectral import conv_transpose_stride1

    c_out = 6
    kx, kw, ky = jax.random.split(jax.random.PRNGKey(11), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, k + (shape[3], c_out))

    def conv(v):
        return lax.conv_general_dilated(v, w, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y = jax.random.normal(ky, conv(x).shape)
    adjoint = conv_transpose_stride1(y, w, padding)
    assert adjoint.shape == x.shape
    lhs = np.vdot(np.asarray(conv(x), np.float64), np.asarray(y, np.float64))
    rhs = np.vdot(np.asarray(x, np.float64), np.asarray(adjoint, np.float64))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5)
    np.testing.assert_allclose(adjoint, jax.linear_transpose(conv, x)(y)[0], rtol=1e-5, atol=1e-4)


def test_conv_transpose_stride1_inside_a_while_loop_is_a_canonical_convolution():
    """JAX's transpose of a convolution (kernel HWOI) stays a naive loop when traced in a loop
    body on XLA:CPU; conv_transpose_stride1 (the power iteration's adjoint) must be canonical."""
    import re

    from jax import lax

    from jaxmri.nn.spectral import conv_transpose_stride1

    w = jax.random.normal(jax.random.PRNGKey(12), (3, 3, 8, 16))
    y0 = jax.random.normal(jax.random.PRNGKey(13), (1, 12, 12, 16))
    pads = ((1, 1), (1, 1))

    def in_loop(y):  # two iterations, so XLA cannot replace the loop by its body
        return lax.fori_loop(0, 2, lambda i, acc: acc + conv_transpose_stride1(y * (i + 1), w,
                                                                                pads),
                             jnp.zeros((1, 12, 12, 8)))

    hlo = jax.jit(in_loop).lower(y0).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels
    np.testing.assert_allclose(jax.jit(in_loop)(y0), 3.0 * conv_transpose_stride1(y0, w, pads),
                               rtol=1e-5, atol=1e-4)


def test_conv_transpose_stride1_rejects_pads_beyond_the_kernel():
    from jaxmri.nn.spectral import conv_transpose_stride1

    with pytest.raises(ValueError, match="pads"):
        conv_transpose_stride1(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)),
                               ((3, 0), (1, 1)))
