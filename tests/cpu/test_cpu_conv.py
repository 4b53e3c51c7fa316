"""The XLA:CPU convolution (jaxmri.cpu.conv): stride-2 space-to-depth, stride-1 plans with a
fast kernel gradient, im2col and shifted products, the bias: the same values, both gradients and
forward mode as ``lax.conv_general_dilated`` / Flax, and canonical convolutions inside loops."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.cpu import conv_general_dilated as cpu_conv


@pytest.mark.parametrize("shape, kernel, padding", [
    ((2, 8, 8, 3), 4, "SAME"), ((2, 7, 9, 3), 4, "SAME"), ((1, 6, 6, 5), 4, "VALID"),
    ((1, 9, 8, 2), 2, "SAME"), ((1, 8, 8, 2), 4, ((2, 1), (0, 3))),
])
def test_space_to_depth_conv_equals_the_strided_conv(shape, kernel, padding):
    """Values and both gradients equal lax's stride-2 convolution (even kernels, any padding)."""
    from jax import lax

    from jaxmri.cpu.conv import conv_general_dilated

    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.random.normal(jax.random.PRNGKey(2), shape)
    w = jax.random.normal(jax.random.PRNGKey(3), (kernel, kernel, shape[-1], 4))

    def loss(conv, x, w):
        y = conv(x, w, (2, 2), padding, dimension_numbers=dn)
        return jnp.sum(jnp.sin(y)), y

    (l_ref, y_ref), g_ref = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
        lax.conv_general_dilated, x, w)
    (l_ours, y_ours), g_ours = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
        conv_general_dilated, x, w)
    assert y_ours.shape == y_ref.shape
    np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_jaxmri_conv_in_flax_keeps_parameters_and_values():
    """jaxmri.nn.layers.Conv with the CPU convolution: Flax's Conv with the same parameter tree,
    values and gradients."""
    from jaxmri.nn.layers import Conv

    x = jax.random.normal(jax.random.PRNGKey(4), (2, 10, 10, 3))
    for strides, kernel, width in (((2, 2), (4, 4), 5), ((1, 1), (3, 3), 16), ((1, 1), (3, 3), 2),
                                   ((2, 2), (3, 3), 5)):
        plain = nn.Conv(width, kernel, strides=strides)
        fast = Conv(width, kernel, strides=strides, conv_general_dilated=cpu_conv)
        variables = plain.init(jax.random.PRNGKey(5), x)
        assert (jax.tree.structure(fast.init(jax.random.PRNGKey(5), x))
                == jax.tree.structure(variables))
        np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x),
                                   rtol=1e-5, atol=1e-5)
        grads = [jax.grad(lambda v, m=m: jnp.sum(jnp.tanh(m.apply(v, x))))(variables)
                 for m in (fast, plain)]
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# (x shape, kernel size, C_out, padding, the kernel-gradient strategy these shapes must take)
_STRIDE1_CASES = [
    ((2, 9, 11, 16), 3, 16, "SAME", ("tiles", 2)),       # batch 2 -> 2x2 tiles, odd sizes
    ((1, 17, 19, 8), 3, 12, "SAME", ("tiles", 4)),       # batch 1 -> 4x4 tiles
    ((4, 10, 10, 3), 3, 16, ((0, 2), (1, 1)), ("tiles", 2)),  # explicit, asymmetric padding
    ((4, 12, 12, 32), 3, 4, "SAME", ("product", 1)),     # narrow output
    ((2, 14, 16, 16), 5, 1, "VALID", ("product", 1)),    # narrow output, 5x5, VALID
    ((8, 8, 8, 16), 3, 16, "SAME", ("xla", 1)),          # batch of whole vectors
    ((3, 18, 17, 8), 5, 12, "VALID", ("xla", 1)),        # tiles would be too small
]


@pytest.mark.parametrize("shape, k, c_out, padding, strategy", _STRIDE1_CASES)
def test_fast_kernel_grad_conv_equals_lax(shape, k, c_out, padding, strategy):
    """Value, both gradients, forward mode and a Hessian-vector product equal lax's conv, on
    every kernel-gradient strategy (tiles, shifted product, XLA's own)."""
    from jax import lax

    from jaxmri.cpu.conv import (
        _explicit_pads, _fast_kernel_grad_strategy, conv_fast_kernel_grad)

    pads = _explicit_pads(padding, shape[1:3], (k, k), (1, 1))
    assert _fast_kernel_grad_strategy(shape, (k, k, shape[-1], c_out), pads) == strategy
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, shape[-1], c_out))
    w_dir = jax.random.normal(jax.random.PRNGKey(2), w.shape)

    def ours(x, w):
        return jnp.sum(jnp.sin(conv_fast_kernel_grad(x, w, pads)))

    def ref(x, w):
        y = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.sin(y))

    def close(a, b):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(scale, 1.0))

    (v_ours, g_ours), (v_ref, g_ref) = (jax.value_and_grad(f, (0, 1))(x, w) for f in (ours, ref))
    close(v_ours, v_ref)
    for a, b in zip(g_ours, g_ref, strict=True):
        close(a, b)
    x_dir = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    close(*(jax.jvp(f, (x, w), (x_dir, w_dir))[1] for f in (ours, ref)))  # forward mode
    hvp = [jax.grad(lambda w, f=f: jax.jvp(lambda v: f(x, v), (w,), (w_dir,))[1])(w)
           for f in (ours, ref)]
    close(*hvp)


def test_fast_kernel_grad_conv_with_one_frozen_operand_and_under_vmap():
    """Gradients for the kernel alone, the input alone, and per-example kernels under vmap."""
    from jax import lax

    from jaxmri.cpu.conv import conv_fast_kernel_grad

    pads = ((1, 1), (1, 1))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 10, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 16))
    dn = ("NHWC", "HWIO", "NHWC")

    def ref(x, w):
        return jnp.sum(jnp.cos(lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dn)))

    def ours(x, w):
        return jnp.sum(jnp.cos(conv_fast_kernel_grad(x, w, pads)))

    for argnum in (0, 1):
        np.testing.assert_allclose(jax.grad(ours, argnum)(x, w), jax.grad(ref, argnum)(x, w),
                                   rtol=1e-4, atol=1e-4)
    ws = jnp.stack([w, 2.0 * w])
    per_example = jax.vmap(jax.grad(ours, 1), in_axes=(None, 0))(x, ws)
    np.testing.assert_allclose(per_example[1], jax.grad(ref, 1)(x, 2.0 * w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, k, c_out, padding, strategy", _STRIDE1_CASES[:5])
def test_kernel_tangent_conv_is_the_conv_and_its_transpose_the_kernel_gradient(
        shape, k, c_out, padding, strategy):
    """The linear map equals the conv; its transpose equals XLA's conv kernel gradient."""
    from jax import lax

    from jaxmri.cpu.conv import _explicit_pads, kernel_tangent_conv

    dn = ("NHWC", "HWIO", "NHWC")
    pads = _explicit_pads(padding, shape[1:3], (k, k), (1, 1))
    x = jax.random.normal(jax.random.PRNGKey(4), shape)
    w = jax.random.normal(jax.random.PRNGKey(5), (k, k, shape[-1], c_out))
    y = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dn)
    np.testing.assert_allclose(kernel_tangent_conv(x, w, pads), y, rtol=1e-4, atol=1e-4)
    g = jax.random.normal(jax.random.PRNGKey(6), y.shape)
    ours = jax.linear_transpose(lambda v: kernel_tangent_conv(x, v, pads), w)(g)[0]
    _, vjp = jax.vjp(lambda v: lax.conv_general_dilated(x, v, (1, 1), pads, dimension_numbers=dn),
                     w)
    np.testing.assert_allclose(ours, vjp(g)[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("batch", [1, 4, 8])  # 4 x 4 tiles, 2 x 2 tiles, no tiles
def test_kernel_gradient_inside_a_while_loop_is_a_canonical_convolution(batch):
    """The fixed-point inverse evaluates kernel correlations inside a while loop, where XLA:CPU
    leaves a non-canonical convolution as a naive loop (30x slower). The transpose of
    kernel_tangent_conv must be canonical (NHWC / HWIO / NHWC) there, and equal the gradient."""
    import re

    from jax import lax

    from jaxmri.cpu.conv import kernel_tangent_conv

    dn = ("NHWC", "HWIO", "NHWC")
    pads = ((1, 1), (1, 1))
    x = jax.random.normal(jax.random.PRNGKey(7), (batch, 16, 16, 12))
    g = jax.random.normal(jax.random.PRNGKey(8), (batch, 16, 16, 12))
    zero = jnp.zeros((3, 3, 12, 12))

    def correlation(scale):
        return jax.linear_transpose(lambda v: kernel_tangent_conv(x * scale, v, pads), zero)(g)[0]

    def in_loop(scale):  # two iterations, so XLA cannot replace the loop by its body
        return lax.fori_loop(0, 2, lambda i, acc: acc + correlation(scale + i), zero)

    hlo = jax.jit(in_loop).lower(jnp.float32(1.0)).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels
    _, vjp = jax.vjp(lambda v: lax.conv_general_dilated(x, v, (1, 1), pads, dimension_numbers=dn),
                     zero)
    np.testing.assert_allclose(jax.jit(in_loop)(jnp.float32(1.0)), 3.0 * vjp(g)[0],
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape, k, c_out, padding, plan", [
    ((8, 12, 12, 2), 3, 32, "SAME", "im2col"),                    # narrow input
    ((2, 9, 11, 1), 5, 8, "VALID", "im2col"),
    ((3, 7, 7, 4), 1, 16, "SAME", "im2col"),                      # 1x1 kernel
    ((4, 2, 2, 16), 4, 16, "SAME", "im2col"),                     # kernel larger than the image
    ((2, 3, 5, 8), 3, 8, ((1, 2), (0, 1)), "im2col"),             # as tall as the image
    ((2, 5, 5, 256), 3, 32, "SAME", "im2col"),                    # wide on few pixels (50)
    ((2, 4, 4, 256), 3, 16, ((1, 0), (0, 1)), "im2col"),          # asymmetric: 2 x 3 x 3 out
    ((4, 12, 12, 256), 3, 16, "SAME", "fast_kernel_grad"),        # 576 pixels: too many
    ((2, 5, 5, 128), 3, 32, "SAME", "xla"),                       # 128 channels: not wide
    ((4, 12, 12, 32), 3, 2, "SAME", "shifted_product"),           # narrow output
    ((2, 9, 11, 8), 5, 1, ((2, 0), (1, 3)), "shifted_product"),   # asymmetric padding
    ((4, 10, 10, 16), 3, 16, "SAME", "fast_kernel_grad"),
    ((8, 8, 8, 16), 3, 16, "SAME", "xla"),
])
def test_conv_general_dilated_plans_equal_lax(shape, k, c_out, padding, plan):
    """Every stride-1 plan of jaxmri's conv: value, both gradients and forward mode equal lax."""
    from jax import lax

    from jaxmri.cpu.conv import _explicit_pads, conv_general_dilated, conv_plan

    dn = ("NHWC", "HWIO", "NHWC")
    assert conv_plan(shape, (k, k, shape[-1], c_out),
                     _explicit_pads(padding, shape[1:3], (k, k), (1, 1))) == plan
    x = jax.random.normal(jax.random.PRNGKey(7), shape)
    # Fan-in scaled (as an initialiser does), so outputs are O(1) at every width: sin of an
    # O(sqrt(fan-in)) output would turn float32 rounding of the sum into gradient noise.
    w = jax.random.normal(jax.random.PRNGKey(8), (k, k, shape[-1], c_out)) / np.sqrt(
        k * k * shape[-1])

    def loss(conv, x, w):
        return jnp.sum(jnp.sin(conv(x, w, (1, 1), padding, dimension_numbers=dn)))

    (v_ours, g_ours), (v_ref, g_ref) = (jax.value_and_grad(loss, (1, 2))(conv, x, w)
                                        for conv in (conv_general_dilated,
                                                     lax.conv_general_dilated))
    y = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)
    np.testing.assert_allclose(conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn),
                               y, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(y))))
    np.testing.assert_allclose(v_ours, v_ref, rtol=1e-4, atol=1e-3)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    directions = (jax.random.normal(jax.random.PRNGKey(9), x.shape),
                  jax.random.normal(jax.random.PRNGKey(10), w.shape))
    t_ours, t_ref = (jax.jvp(lambda x, w, c=conv: loss(c, x, w), (x, w), directions)[1]
                     for conv in (conv_general_dilated, lax.conv_general_dilated))
    np.testing.assert_allclose(t_ours, t_ref, rtol=1e-4, atol=1e-3)


def test_conv_general_dilated_names_a_channel_mismatch():
    from jaxmri.cpu.conv import conv_general_dilated

    with pytest.raises(ValueError, match="3 channels.*kernel expects 2"):
        conv_general_dilated(jnp.zeros((1, 8, 8, 3)), jnp.zeros((3, 3, 2, 32)), (1, 1), "SAME",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_add_bias_gradient_is_a_matrix_product_with_the_same_values():
    """add_bias: y + b with the bias gradient as ones @ g (no reduce-window in the compiled
    gradient), equal to the plain sum in reverse and forward mode."""
    from jaxmri.cpu.conv import add_bias

    y = jax.random.normal(jax.random.PRNGKey(14), (3, 10, 9, 7))
    b = jax.random.normal(jax.random.PRNGKey(15), (7,))
    weights = jax.random.normal(jax.random.PRNGKey(16), y.shape)

    def loss(fn):
        return lambda y, b: jnp.sum(weights * jnp.sin(fn(y, b)))

    ours, plain = loss(add_bias), loss(lambda y, b: y + b)
    np.testing.assert_allclose(add_bias(y, b), y + b, rtol=1e-6)
    for a, r in zip(jax.grad(ours, (0, 1))(y, b), jax.grad(plain, (0, 1))(y, b), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
    dy, db = jnp.ones_like(y), jnp.arange(7.0)
    np.testing.assert_allclose(jax.jvp(add_bias, (y, b), (dy, db))[1], dy + db, rtol=1e-6)
    hlo = jax.jit(jax.grad(ours, 1)).lower(y, b).compile().as_text()
    assert "reduce-window" not in hlo
    # Only one argument differentiated (a frozen bias, a frozen input): the same values, and a
    # frozen bias traces no product (less for XLA to compile and fold away).
    np.testing.assert_allclose(jax.grad(ours)(y, b), jax.grad(plain)(y, b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jvp(lambda b: add_bias(y, b), (b,), (db,))[1],
                               jnp.broadcast_to(db, y.shape), rtol=1e-6)
    np.testing.assert_allclose(jax.jvp(lambda y: add_bias(y, b), (y,), (dy,))[1], dy, rtol=1e-6)
    assert "dot_general" not in str(jax.make_jaxpr(jax.grad(ours))(y, b))


def test_jaxmri_conv_forward_mode_equals_flax():
    """Conv with the CPU convolution (and its own bias add) in forward mode and under vmap:
    Flax's values."""
    from jaxmri.nn.layers import Conv

    x = jax.random.normal(jax.random.PRNGKey(17), (2, 9, 9, 3))
    plain, fast = nn.Conv(5, (3, 3)), Conv(5, (3, 3), conv_general_dilated=cpu_conv)
    variables = plain.init(jax.random.PRNGKey(18), x)
    tangent = jax.tree.map(jnp.ones_like, variables)
    for a, b in zip(jax.jvp(lambda v: fast.apply(v, x), (variables,), (tangent,)),
                    jax.jvp(lambda v: plain.apply(v, x), (variables,), (tangent,)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    batched = jax.vmap(lambda xi: fast.apply(variables, xi[None])[0])(x)
    np.testing.assert_allclose(batched, plain.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_input_gradient_inside_a_while_loop_is_a_canonical_convolution():
    """An implicit adjoint solve applies a layer's input VJP inside a while loop, where XLA:CPU
    runs JAX's own transposed convolution as a naive loop (35x slower): conv_fast_kernel_grad's
    input direction must transpose to a canonical convolution there, with lax's values."""
    import re

    from jax import lax

    from jaxmri.cpu.conv import conv_fast_kernel_grad

    pads = ((1, 1), (1, 1))
    x = jax.random.normal(jax.random.PRNGKey(19), (4, 12, 12, 16))
    w = 0.1 * jax.random.normal(jax.random.PRNGKey(20), (3, 3, 16, 16))
    _, vjp = jax.vjp(lambda z: conv_fast_kernel_grad(z, w, pads), x)
    _, vjp_ref = jax.vjp(lambda z: lax.conv_general_dilated(
        z, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")), x)

    def in_loop(u0):  # u <- u0 + J^T u, as the adjoint fixed point iterates
        return lax.fori_loop(0, 3, lambda i, u: u0 + vjp(u)[0], u0)

    hlo = jax.jit(in_loop).lower(x).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels
    expected = x
    for _ in range(3):
        expected = x + vjp_ref(expected)[0]
    np.testing.assert_allclose(jax.jit(in_loop)(x), expected, rtol=1e-4, atol=1e-4)
