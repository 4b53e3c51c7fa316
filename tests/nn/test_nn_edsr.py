"""EDSR and the pixel shuffle of jaxmri.nn.layers_sr."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.nn.edsr import EDSR, EDSRResBlock
from jaxmri.nn.layers_sr import pixel_shuffle, pixel_unshuffle


def _shuffle_reference(x: np.ndarray, r: int) -> np.ndarray:
    """PyTorch's PixelShuffle formula, element by element, in NHWC."""
    n, h, w, c = x.shape
    out_c = c // (r * r)
    out = np.zeros((n, h * r, w * r, out_c), x.dtype)
    for b in range(n):
        for ch in range(out_c):
            for i in range(r):
                for j in range(r):
                    out[b, i::r, j::r, ch] = x[b, :, :, ch * r * r + i * r + j]
    return out


@pytest.mark.parametrize("r,c", [(2, 4), (2, 8), (3, 9)])
def test_pixel_shuffle_matches_reference_and_inverts(r, c):
    x = np.random.default_rng(r + c).random((2, 3, 5, c)).astype(np.float32)
    out = np.asarray(pixel_shuffle(jnp.asarray(x), r))
    np.testing.assert_array_equal(out, _shuffle_reference(x, r))
    np.testing.assert_array_equal(np.asarray(pixel_unshuffle(jnp.asarray(out), r)), x)
    np.testing.assert_array_equal(np.asarray(jax.jit(pixel_shuffle, static_argnums=1)(x, r)), out)


def test_pixel_shuffle_bad_arguments():
    with pytest.raises(ValueError, match="factor"):
        pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)
    with pytest.raises(ValueError, match="factor"):
        pixel_shuffle(jnp.zeros((1, 2, 2, 4)), 0)
    with pytest.raises(ValueError, match="x"):
        pixel_shuffle(jnp.zeros((2, 2, 4)), 2)
    with pytest.raises(ValueError, match="factor"):
        pixel_unshuffle(jnp.zeros((1, 3, 4, 1)), 2)


def test_res_block_is_identity_plus_scaled_branch():
    block = EDSRResBlock(features=4, res_scale=0.1)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 4))
    variables = block.init(jax.random.PRNGKey(1), x)
    p = variables["params"]

    def conv(h, layer):
        k, b = p[layer]["kernel"], p[layer]["bias"]
        return jax.lax.conv_general_dilated(h, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

    expected = x + 0.1 * conv(jax.nn.relu(conv(x, "conv0")), "conv1")
    np.testing.assert_allclose(block.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
    # Zeroing the second conv makes the block the identity.
    zeroed = jax.tree.map(jnp.zeros_like, p["conv1"])
    np.testing.assert_allclose(block.apply({"params": {**p, "conv1": zeroed}}, x), x)


def test_edsr_long_skip_and_upsampler():
    model = EDSR(num_blocks=2, features=8, scale=2)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 7, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    p = variables["params"]
    assert set(p) == {"head", "block0", "block1", "body_out", "upsample0", "tail"}
    assert p["upsample0"]["kernel"].shape == (3, 3, 8, 32)
    out = model.apply(variables, x)
    assert out.shape == (2, 12, 14, 1)
    # With the body's last conv zeroed, body = head (long skip): the output must equal the
    # upsampler and tail applied to the head features alone, whatever the residual blocks do.
    zero = jax.tree.map(jnp.zeros_like, p["body_out"])
    params = {**p, "body_out": zero}

    def conv(h, layer):
        return jax.lax.conv_general_dilated(h, params[layer]["kernel"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + \
            params[layer]["bias"]

    expected = conv(pixel_shuffle(conv(conv(x, "head"), "upsample0"), 2), "tail")
    np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-4,
                               atol=1e-5)
    jitted = jax.jit(model.apply)(variables, x)
    np.testing.assert_allclose(jitted, out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="scale"):
        EDSR(num_blocks=1, features=4, scale=5).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="x"):
        model.apply(variables, x[0])
