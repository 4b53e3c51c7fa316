"""Tests of jaxmri.losses: GAN terms against their formula, feature matching, perceptual loss,
and the functional replay pool's statistics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmri.losses import (
    binary_cross_entropy_with_logits,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    image_pool_init,
    image_pool_query,
    perceptual_loss,
)
from jaxmri.metrics import features


def _bce_reference(logit: float, label: float) -> float:
    sig = 1.0 / (1.0 + math.exp(-logit))
    return -(label * math.log(sig) + (1.0 - label) * math.log(1.0 - sig))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-8, 8), min_size=1, max_size=6), st.floats(0, 1))
def test_bce_with_logits_matches_formula(logits, label):
    got = np.asarray(binary_cross_entropy_with_logits(jnp.asarray(logits, jnp.float32), label))
    want = [_bce_reference(v, label) for v in logits]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_discriminator_loss_one_sided_label_smoothing_by_hand():
    real, fake = [2.0, -1.0], [0.5, -3.0, 1.0]
    s = 0.1
    want_real = np.mean([0.9 * math.log1p(math.exp(-v)) + 0.1 * math.log1p(math.exp(v))
                         for v in real])
    want_fake = np.mean([math.log1p(math.exp(v)) for v in fake])  # target 0: no smoothing
    got = discriminator_loss(jnp.array(real), jnp.array(fake), label_smoothing=s)
    np.testing.assert_allclose(float(got), want_real + want_fake, rtol=1e-6)
    # Without smoothing the real term is -log sigmoid(l).
    got0 = discriminator_loss(jnp.array(real), jnp.array(fake))
    want0 = np.mean([math.log1p(math.exp(-v)) for v in real]) + want_fake
    np.testing.assert_allclose(float(got0), want0, rtol=1e-6)


def test_discriminator_loss_smoothing_leaves_fake_targets_at_zero():
    # At logits 0 every BCE is log 2 whatever the label, so smoothing must not change the loss;
    # at a large negative fake logit the fake term stays ~0 (its target is 0, not 0.1).
    zero = jnp.zeros((4,))
    np.testing.assert_allclose(float(discriminator_loss(zero, zero, label_smoothing=0.1)),
                               2 * math.log(2), rtol=1e-6)
    loss = discriminator_loss(jnp.array([20.0]), jnp.array([-20.0]), label_smoothing=0.1)
    np.testing.assert_allclose(float(loss), 0.1 * 20.0, rtol=1e-3)


def test_generator_loss_is_non_saturating_formula():
    logits = jnp.array([-2.0, 0.0, 3.0])
    want = np.mean([-math.log(1 / (1 + math.exp(-v))) for v in [-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(float(generator_loss(logits)), want, rtol=1e-6)
    # Its gradient does not vanish for a confident discriminator (logit -> -inf).
    g = jax.grad(lambda x: generator_loss(x))(jnp.array([-30.0]))
    np.testing.assert_allclose(float(g[0]), -1.0, rtol=1e-6)


def test_gan_losses_reject_bad_arguments():
    with pytest.raises(ValueError, match="label_smoothing"):
        discriminator_loss(jnp.zeros(2), jnp.zeros(2), label_smoothing=1.0)
    with pytest.raises(TypeError, match="real_logits"):
        discriminator_loss(jnp.zeros(2, jnp.complex64), jnp.zeros(2))
    with pytest.raises(TypeError, match="fake_logits"):
        generator_loss(jnp.zeros(2, jnp.complex64))


def test_gan_losses_jit_equals_eager():
    real, fake = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 3, 1)),
                             jnp.float32)
    eager = discriminator_loss(real, fake, label_smoothing=0.1)
    jitted = jax.jit(lambda a, b: discriminator_loss(a, b, label_smoothing=0.1))(real, fake)
    np.testing.assert_allclose(float(eager), float(jitted), rtol=1e-6)


def test_feature_matching_zero_for_identical_positive_otherwise():
    rng = np.random.default_rng(1)
    feats = [jnp.asarray(rng.standard_normal((2, 4, 4, c)), jnp.float32) for c in (3, 5, 7)]
    assert float(feature_matching_loss(feats, feats)) == 0.0
    other = [f + 0.5 for f in feats]
    np.testing.assert_allclose(float(feature_matching_loss(feats, other)), 0.5, rtol=1e-6)
    shifted = [feats[0], feats[1], feats[2] - 0.3]
    np.testing.assert_allclose(float(feature_matching_loss(feats, shifted)), 0.1, rtol=1e-5)


def test_feature_matching_gradient_only_through_fake():
    real = [jnp.ones((2, 3))]
    fake = [jnp.zeros((2, 3))]
    g_real = jax.grad(lambda r: feature_matching_loss([r], fake))(real[0])
    g_fake = jax.grad(lambda f: feature_matching_loss(real, [f]))(fake[0])
    assert float(jnp.abs(g_real).max()) == 0.0
    np.testing.assert_allclose(np.asarray(g_fake), -np.ones((2, 3)) / 6, rtol=1e-6)


def test_feature_matching_rejects_mismatch():
    with pytest.raises(ValueError, match="real_features"):
        feature_matching_loss([jnp.zeros(2)], [])
    with pytest.raises(ValueError, match=r"real_features\[0\]"):
        feature_matching_loss([jnp.zeros(2)], [jnp.zeros(3)])


def test_perceptual_loss_matches_features_and_flows_to_pred_only():
    rng = np.random.default_rng(2)
    pred = jnp.asarray(rng.uniform(size=(2, 32, 32)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(2, 32, 32)), jnp.float32)
    assert float(perceptual_loss(target, target)) == 0.0
    fp, ft = features("vgg16", pred), features("vgg16", target)
    want = np.mean([np.mean((np.asarray(fp[i]) - np.asarray(ft[i])) ** 2) for i in (1, 3)])
    got = perceptual_loss(pred, target, layers=(1, 3))
    np.testing.assert_allclose(float(got), want, rtol=1e-4)
    g_target = jax.grad(lambda t: perceptual_loss(pred, t))(target)
    g_pred = jax.grad(lambda p: perceptual_loss(p, target))(pred)
    assert float(jnp.abs(g_target).max()) == 0.0
    assert float(jnp.abs(g_pred).max()) > 0.0


def test_perceptual_loss_rejects_bad_arguments():
    x = jnp.zeros((1, 32, 32))
    with pytest.raises(ValueError, match="layers"):
        perceptual_loss(x, x, layers=(5,))
    with pytest.raises(ValueError, match="pred and target"):
        perceptual_loss(x, jnp.zeros((1, 32, 16)))


def _constant_images(values, shape=(2, 2)):
    return jnp.stack([jnp.full(shape, float(v)) for v in values])


def test_image_pool_fills_then_passes_through():
    pool = image_pool_init(3, (2, 2))
    out, pool = image_pool_query(jax.random.key(0), pool, _constant_images([1, 2]), p=1.0)
    np.testing.assert_array_equal(np.asarray(out[:, 0, 0]), [1, 2])  # filling: pass through
    assert int(pool.count) == 2
    out, pool = image_pool_query(jax.random.key(1), pool, _constant_images([3]), p=1.0)
    np.testing.assert_array_equal(np.asarray(out[:, 0, 0]), [3])
    assert int(pool.count) == 3
    np.testing.assert_array_equal(np.sort(np.asarray(pool.images[:, 0, 0])), [1, 2, 3])


def test_image_pool_swaps_with_probability_p():
    size, p, draws = 10, 0.5, 2000
    pool = image_pool_init(size, (2, 2))
    _, pool = image_pool_query(jax.random.key(0), pool, _constant_images(range(1, 11)), p=p)
    # Many independent draws from the same full pool, one incoming image (-1) each.
    keys = jax.random.split(jax.random.key(1), draws)
    out, new = jax.jit(jax.vmap(
        lambda k: image_pool_query(k, pool, _constant_images([-1.0]), p=p)))(keys)
    value = np.asarray(out[:, 0, 0, 0])
    after = np.asarray(new.images[:, :, 0, 0])
    before = np.arange(1, 11, dtype=np.float32)
    swapped = value != -1.0
    # Binomial(2000, 0.5): sd 22.4; 5 sd bounds.
    assert abs(swapped.sum() - p * draws) < 5 * math.sqrt(draws * p * (1 - p))
    # A returned stored image left the pool and the incoming one took exactly its slot.
    for v, row in zip(value[swapped], after[swapped], strict=True):
        expected = before.copy()
        expected[before == v] = -1.0
        np.testing.assert_array_equal(row, expected)
    np.testing.assert_array_equal(after[~swapped], np.broadcast_to(before, after[~swapped].shape))
    # The slot is uniform: each of the 10 stored images comes back ~100 times.
    counts = np.array([(value == v).sum() for v in before])
    assert counts.min() > 50 and counts.max() < 160


def test_image_pool_p_zero_never_swaps_and_jit_equals_eager():
    pool = image_pool_init(2, (2, 2))
    _, pool = image_pool_query(jax.random.key(0), pool, _constant_images([1, 2]))
    batch = _constant_images([5, 6, 7])
    out, _ = image_pool_query(jax.random.key(3), pool, batch, p=0.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(batch))
    eager = image_pool_query(jax.random.key(4), pool, batch, p=0.5)
    jitted = jax.jit(lambda k, pl, b: image_pool_query(k, pl, b, p=0.5))(
        jax.random.key(4), pool, batch)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_image_pool_rejects_bad_arguments():
    pool = image_pool_init(2, (2, 2))
    with pytest.raises(ValueError, match="images"):
        image_pool_query(jax.random.key(0), pool, jnp.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="p must"):
        image_pool_query(jax.random.key(0), pool, jnp.zeros((1, 2, 2)), p=1.5)
    with pytest.raises(ValueError, match="size"):
        image_pool_init(0, (2, 2))
