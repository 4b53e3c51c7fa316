"""Complex<->channel conversion and the U-Net."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmri.nn.layers import channels_to_complex, complex_to_channels
from jaxmri.nn.unet import UNet


def test_complex_channels_round_trip_and_order():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(2, 3, 5, 4)) + 1j * rng.normal(size=(2, 3, 5, 4))).astype(np.complex64)
    ch = np.asarray(complex_to_channels(z))
    assert ch.shape == (2, 5, 4, 6) and ch.dtype == np.float32
    for k in range(3):  # channels are (re_0, im_0, re_1, im_1, ...)
        np.testing.assert_array_equal(ch[..., 2 * k], z[:, k].real)
        np.testing.assert_array_equal(ch[..., 2 * k + 1], z[:, k].imag)
    np.testing.assert_array_equal(np.asarray(channels_to_complex(ch, squeeze=False)), z)
    single = z[:, 0]
    np.testing.assert_array_equal(np.asarray(channels_to_complex(complex_to_channels(single))),
                                  single)


def test_conversion_rejects_bad_input():
    with pytest.raises(TypeError, match="x must be complex"):
        complex_to_channels(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="even number of channels"):
        channels_to_complex(np.zeros((1, 4, 4, 3), np.float32))


def test_unet_rejects_sizes_that_do_not_pool_evenly():
    net = UNet(out_channels=1, features=(4, 8, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        net.init(jax.random.key(0), jnp.zeros((1, 10, 12, 1)))
    with pytest.raises(ValueError, match="NHWC"):
        net.init(jax.random.key(0), jnp.zeros((10, 12, 1)))


def test_unet_learns_a_sharp_mapping_through_its_skips():
    """Fitting a fixed high-frequency target needs the full-resolution skip connection."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 16, 16, 1)).astype(np.float32)
    y = np.roll(x, 1, axis=2) - 0.5 * x  # pixel-scale structure, not a smooth function
    net = UNet(out_channels=1, features=(8, 16), norm="none")
    params = net.init(jax.random.key(0), x)["params"]
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((net.apply({"params": p}, x) - y) ** 2))(
            params)
        updates, opt = tx.update(g, opt)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    for _ in range(150):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_unet_batch_norm_tracks_statistics_in_training_only():
    net = UNet(out_channels=2, features=(4, 8), norm="batch", kernel_size=4, negative_slope=0.1)
    x = jnp.asarray(np.random.default_rng(2).normal(3.0, 2.0, size=(4, 8, 8, 1)), jnp.float32)
    variables = net.init(jax.random.key(0), x)
    _, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
    before = jax.tree.leaves(variables["batch_stats"])[0]
    after = jax.tree.leaves(updates["batch_stats"])[0]
    assert not np.allclose(before, after)  # running mean moved towards the batch mean
    # Evaluation mode is deterministic and does not touch the statistics.
    out1 = net.apply(variables, x, train=False)
    out2 = net.apply(variables, x[:2], train=False)
    np.testing.assert_allclose(np.asarray(out1[:2]), np.asarray(out2), rtol=1e-5, atol=1e-6)
