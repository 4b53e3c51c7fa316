"""InvSharpNet model: losses against numpy, the paper's parameter count, training directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.metrics import ms_ssim
from jaxmri.models import invsharp as isn
from jaxmri.nn.fixed_point import Implicit
from jaxmri.train import replicate, unreplicate


def _complex(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def _batch(rng, n=2, size=16):
    target = _complex(rng, (n, size, size))
    recon = target + 0.3 * _complex(rng, (n, size, size))
    zero_filled = target + 0.5 * _complex(rng, (n, size, size))
    return {"target": target, "recon": recon, "zero_filled": zero_filled}


def test_paper_network_has_5_4m_parameters():
    config = isn.InvSharpConfig()  # the paper preset: 12 x 5 x 128, 4 channels
    shapes = jax.eval_shape(isn.build_network(config).init, jax.random.key(0),
                            jnp.zeros((1, 16, 16, 4)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    # Per block: 3x3 convs 4->128, 3 x 128->128, 128->4, with biases.
    per_block = (9 * 4 * 128 + 128) + 3 * (9 * 128 * 128 + 128) + (9 * 128 * 4 + 4)
    assert count == 12 * per_block
    assert abs(count - 5.4e6) / 5.4e6 < 0.02


def test_pair_and_first_image_round_trip():
    rng = np.random.default_rng(0)
    a, b = _complex(rng, (2, 8, 8)), _complex(rng, (2, 8, 8))
    x4 = isn.pair(a, b)
    np.testing.assert_array_equal(np.asarray(x4[..., 0]), a.real)
    np.testing.assert_array_equal(np.asarray(x4[..., 3]), b.imag)
    np.testing.assert_array_equal(np.asarray(isn.first_image(x4)), a)


def test_backward_loss_is_the_mean_l1_of_both_outputs_against_recon():
    rng = np.random.default_rng(1)
    images, recon = _complex(rng, (2, 2, 8, 8)), _complex(rng, (2, 8, 8))
    diff = images - recon[:, None]
    expected = np.mean(np.concatenate([np.abs(diff.real), np.abs(diff.imag)]))
    np.testing.assert_allclose(float(isn.backward_loss(images, recon)), expected, rtol=1e-6)
    assert float(isn.backward_loss(np.stack([recon, recon], 1), recon)) == 0.0


def test_forward_loss_combines_l1_and_ms_ssim_with_alpha():
    rng = np.random.default_rng(2)
    target = _complex(rng, (2, 48, 48))
    pred = target + 0.2 * _complex(rng, (2, 48, 48))
    l1 = np.mean(np.abs(np.concatenate([(pred - target).real, (pred - target).imag])))
    mag_t = np.abs(target)
    msssim = float(jnp.mean(ms_ssim(np.abs(pred), mag_t, data_range=mag_t.max(axis=(1, 2)))))
    for alpha in (0.0, 0.84, 1.0):
        expected = (1 - alpha) * l1 + alpha * (1 - msssim)
        np.testing.assert_allclose(float(isn.forward_loss(pred, target, alpha=alpha)), expected,
                                   rtol=1e-4)
    assert float(isn.forward_loss(target, target, alpha=0.84)) < 1e-5


def test_gradient_penalty_of_a_linear_critic_is_its_norm_minus_one_squared():
    w = jnp.arange(1.0, 9.0).reshape(1, 2, 2, 2) / 10.0

    def critic(x, cond):
        return jnp.sum(x * w, axis=(1, 2, 3)) + 0.0 * jnp.sum(cond)

    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 2, 2, 2))
    gp = isn._gradient_penalty(critic, real, fake, real, jax.random.key(0))
    np.testing.assert_allclose(float(gp), (float(jnp.linalg.norm(w)) - 1.0) ** 2, rtol=1e-5)


def test_inverse_then_forward_is_identity_when_converged():
    config = isn.InvSharpConfig(num_blocks=2, depth=3, hidden=8)
    network = isn.build_network(config)
    rng = np.random.default_rng(4)
    b = _batch(rng, n=1, size=12)
    variables = network.init(jax.random.key(1), jnp.zeros((1, 12, 12, 4)))
    err = isn.inversion_error(network, variables, b["target"], b["zero_filled"],
                              mode=Implicit(tol=1e-7, max_iter=300))
    assert float(jnp.max(err)) < 1e-4 * float(np.abs(b["target"]).max())


@pytest.mark.parametrize("method", ["back", "bi", "forward", "cwgan"])
def test_training_lowers_the_method_loss(method):
    """A few pmapped steps on one fixed batch lower the method's own objective."""
    config = isn.InvSharpConfig(num_blocks=2, depth=3, hidden=8, critic_features=(8,))
    rng = np.random.default_rng(5)
    size = 16
    batch = _batch(rng, n=2, size=size)
    state = isn.create_states(jax.random.key(0), config, method, (size, size),
                              learning_rate=1e-2)
    step = jax.pmap(isn.make_train_step(isn.build_network(config), config, method,
                                        isn.Critic((8,))), axis_name="batch")
    rstate = replicate(state)
    sharded = {k: v.reshape(2, 1, size, size) for k, v in batch.items()}  # 2 devices
    keys = jax.random.split(jax.random.key(1), 2)
    key_name = {"back": "backward_loss", "bi": "loss", "forward": "forward_loss",
                "cwgan": "forward_loss"}[method]
    losses = []
    for _ in range(15):
        rstate, metrics = step(rstate, sharded, keys)
        losses.append(float(metrics[key_name][0]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    final = unreplicate(rstate)
    gen = final["generator"] if method == "cwgan" else final
    assert int(gen.step) == 15
    # The spectral state advanced: the power-iteration vectors are no longer the init ones.
    init_gen = state["generator"] if method == "cwgan" else state
    u0 = jax.tree.leaves(init_gen.model_state["spectral"])[0]
    u1 = jax.tree.leaves(gen.model_state["spectral"])[0]
    assert not np.array_equal(np.asarray(u0), np.asarray(u1))


def test_unknown_method_is_rejected():
    config = isn.InvSharpConfig(num_blocks=1, depth=2, hidden=4)
    with pytest.raises(ValueError, match="method"):
        isn.make_train_step(isn.build_network(config), config, "sideways")
