"""Joint Rec/SR model: forward model against numpy, adjointness, the PGD-DEQ data step,
nearest upsampling, the perceptual loss, train steps that lower the loss, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmri.models import joint_recsr as jr
from jaxmri.nn.vgg_discriminator import VGGDiscriminator
from jaxmri.train import create_train_state
from jaxmri.train.loop import replicate, shard_batch


def _fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1))


def _complex(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _problem(n=2, coils=3, size=16, factor=2, seed=0):
    rng = np.random.default_rng(seed)
    maps = _complex(rng, (n, coils, size, size))
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=1, keepdims=True))
    lr = size // factor
    mask = (rng.random((n, lr, lr)) < 0.5).astype(np.float32)
    return _complex(rng, (n, size, size)), maps, mask


@pytest.mark.parametrize("factor", [1, 2])
def test_forward_model_matches_direct_numpy(factor):
    x, maps, mask = _problem(factor=factor)
    size, lr = x.shape[-1], x.shape[-1] // factor
    full = _fft2c(maps * x[:, None])  # F C x
    start = size // 2 - lr // 2
    cropped = full[..., start:start + lr, start:start + lr] / factor  # H (intensity-preserving)
    expected = mask[:, None] * cropped  # M
    out = jr.encode(jnp.asarray(x), jnp.asarray(maps), jnp.asarray(mask), factor=factor)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-5)
    # A constant image keeps its intensity on the LR grid (why H divides by the factor).
    ones = np.ones((1, 1, size, size), np.complex64)
    lr_image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(
        np.asarray(jr.encode(jnp.asarray(ones[:, 0]), jnp.asarray(ones),
                             jnp.ones((1, lr, lr)), factor=factor)), axes=(-2, -1)),
        norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(np.abs(lr_image), 1.0, atol=1e-5)


@pytest.mark.parametrize("factor", [1, 2])
def test_adjoint_satisfies_the_dot_product_test(factor):
    x, maps, mask = _problem(factor=factor, seed=1)
    rng = np.random.default_rng(2)
    y = _complex(rng, (2, 3, 16 // factor, 16 // factor))
    ax = np.asarray(jr.encode(jnp.asarray(x), jnp.asarray(maps), jnp.asarray(mask),
                              factor=factor))
    ahy = np.asarray(jr.encode_adjoint(jnp.asarray(y), jnp.asarray(maps), jnp.asarray(mask),
                                       factor=factor))
    np.testing.assert_allclose(np.vdot(ax, y), np.vdot(x, ahy), rtol=1e-4)


def test_pgd_deq_at_init_is_landweber_and_reduces_the_data_residual():
    # At initialisation Gamma is the identity (zero last conv), so each DEQ iteration is the
    # data step s = x - eta A^H (A x - b), with eta = factor^2 = 1 / ||A||^2.
    x_true, maps, mask = _problem(n=1, size=8, factor=2, seed=3)
    kspace = jr.encode(jnp.asarray(x_true), jnp.asarray(maps), jnp.asarray(mask), factor=2)
    module = jr.PGDDEQ(features=4, growth=2, factor=2, tol=0.0, max_iter=5)
    args = (kspace, jnp.asarray(mask), jnp.asarray(maps))
    variables = module.init(jax.random.PRNGKey(0), *args)
    out, info = jax.jit(module.apply)(variables, *args)
    assert float(variables["params"]["eta"]) == 4.0

    def a(v):
        return np.asarray(jr.encode(jnp.asarray(v), jnp.asarray(maps), jnp.asarray(mask),
                                    factor=2))

    def ah(v):
        return np.asarray(jr.encode_adjoint(jnp.asarray(v), jnp.asarray(maps),
                                            jnp.asarray(mask), factor=2))

    b = np.asarray(kspace)
    x = ah(b)
    residuals = [np.linalg.norm(a(x) - b)]
    for _ in range(int(info.num_iter) + 1):
        x = x - 4.0 * ah(a(x) - b)
        residuals.append(np.linalg.norm(a(x) - b))
    np.testing.assert_allclose(np.asarray(out), x, rtol=1e-3, atol=1e-4)
    assert int(info.num_iter) == 5
    assert np.all(np.diff(residuals) < 0)
    assert residuals[-1] < 0.2 * residuals[0]


def test_nearest_upsample_repeats_pixels():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    expected = np.stack([np.kron(x[0, ..., c], np.ones((2, 2))) for c in range(4)], -1)[None]
    np.testing.assert_array_equal(np.asarray(jr.nearest_upsample(jnp.asarray(x))), expected)


def test_perceptual_l1_loss_is_the_mean_feature_l1_distance():
    from jaxmri.metrics import features

    rng = np.random.default_rng(4)
    a, b = rng.random((2, 16, 16)).astype(np.float32), rng.random((2, 16, 16)).astype(np.float32)
    fa, fb = features("vgg16", a), features("vgg16", b)
    expected = np.mean([np.mean(np.abs(np.asarray(x) - np.asarray(y)))
                        for x, y in zip(fa, fb, strict=True)])
    np.testing.assert_allclose(float(jr.perceptual_l1_loss(a, b)), expected, rtol=1e-5)
    assert float(jr.perceptual_l1_loss(a, a)) == 0.0
    with pytest.raises(ValueError, match="pred and target"):
        jr.perceptual_l1_loss(a, b[:1])


def _batch(seed=5, n=2, coils=2, size=16):
    x, maps_hr, _ = _problem(n=n, coils=coils, size=size, factor=2, seed=seed)
    x = np.abs(x).astype(np.complex64) / 3
    lr = size // 2
    rng = np.random.default_rng(seed)
    maps = _complex(rng, (n, coils, lr, lr))
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=1, keepdims=True))
    mask = (rng.random((n, lr, lr)) < 0.6).astype(np.float32)
    target_lr = np.abs(_complex(rng, (n, lr, lr))).astype(np.complex64) / 3
    kspace = jr.encode(jnp.asarray(target_lr), jnp.asarray(maps), jnp.asarray(mask))
    zf = jr.encode_adjoint(kspace, jnp.asarray(maps), jnp.asarray(mask))
    return {"zero_filled": zf, "kspace": kspace, "mask": jnp.asarray(mask),
            "maps": jnp.asarray(maps), "target": jnp.asarray(x),
            "target_lr": jnp.asarray(target_lr)}


def test_train_steps_lower_the_loss_of_the_proposed_model_with_gan():
    batch = _batch()
    module = jr.JointRecSR(variant="proposed", sr_features=4, sr_growth=2, sr_blocks=1,
                           cond_features=2, rec_features=4, rec_growth=2, max_iter=3)
    args = (batch["zero_filled"], batch["kspace"], batch["mask"], batch["maps"])
    gen = create_train_state(module, optax.adam(3e-3),
                             module.init(jax.random.PRNGKey(0), *args))
    disc = VGGDiscriminator(features=(4,), hidden=4)
    dstate = create_train_state(disc, optax.adam(3e-3),
                                disc.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 1))))

    def predict(variables, b):
        return module.apply(variables, b["zero_filled"], b["kspace"], b["mask"], b["maps"])

    # The step averages gradients over the "batch" axis, as under jaxmri.train.fit. The VGG16
    # perceptual term is left out to keep the compile short (its value is tested in
    # test_perceptual_l1_loss_is_the_mean_feature_l1_distance; the full eq. 12 step runs in the
    # slow smoke test of experiments.joint_recsr); pixel L1 carries weight 1 instead.
    weights = jr.LossWeights(perceptual=0.0, pixel=1.0)
    step = jax.pmap(jr.make_train_step(predict, weights=weights), axis_name="batch")
    state = replicate({"generator": gen, "discriminator": dstate})
    sharded = shard_batch(batch)
    keys = jax.random.split(jax.random.PRNGKey(2), jax.local_device_count())
    history = []
    for _ in range(8):
        state, metrics = step(state, sharded, keys)
        history.append({k: float(v[0]) for k, v in metrics.items()})
    # The generator's supervised terms fall (the adversarial term moves with the discriminator).
    supervised = [h["pixel"] + h["rec"] for h in history]
    assert supervised[-1] < 0.9 * supervised[0]
    assert "perceptual" not in history[0]
    assert {"adversarial", "d_loss", "deq_iters"} <= set(history[0])
    assert 1 <= history[0]["deq_iters"] <= 3


def test_variants_and_bad_arguments():
    batch = _batch(n=1)
    args = (batch["zero_filled"], batch["kspace"], batch["mask"], batch["maps"])
    with pytest.raises(ValueError, match="variant"):
        jr.JointRecSR(variant="bogus").init(jax.random.PRNGKey(0), *args)
    with pytest.raises(TypeError, match="zero_filled"):
        jr.JointRecSR(variant="sr", sr_features=4, sr_growth=2, sr_blocks=1).init(
            jax.random.PRNGKey(0), jnp.abs(args[0]), *args[1:])
    x, maps, mask = _problem(factor=2)
    with pytest.raises(ValueError, match="mask"):
        jr.encode(jnp.asarray(x), jnp.asarray(maps), jnp.asarray(mask[:, :4]), factor=2)
    with pytest.raises(ValueError, match="factor"):
        jr.encode(jnp.asarray(x), jnp.asarray(maps), jnp.asarray(mask), factor=0)
    with pytest.raises(TypeError, match="image"):
        jr.encode(jnp.abs(jnp.asarray(x)), jnp.asarray(maps), jnp.asarray(mask), factor=2)
    with pytest.raises(ValueError, match="pixel"):
        jr.LossWeights(pixel=-1.0)
