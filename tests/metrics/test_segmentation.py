"""Tests for jaxmri.metrics.segmentation against a direct numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmri.metrics import dice, soft_dice_loss


def _dice_reference(a, b, k):
    out = np.full(k, np.nan)
    for c in range(k):
        pa, pb = a == c, b == c
        if pb.sum() > 0:
            out[c] = 2 * np.logical_and(pa, pb).sum() / (pa.sum() + pb.sum())
    return out


@settings(max_examples=15, deadline=None)
@given(k=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_dice_matches_numpy(k, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, k, (3, 12, 10))
    b = rng.integers(0, k - 1, (3, 12, 10))  # class k-1 absent from every target
    out = np.asarray(dice(a, b, num_classes=k))
    ref = np.stack([_dice_reference(a[i], b[i], k) for i in range(3)])
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    assert np.all(np.isnan(out[:, k - 1]))


def test_dice_absent_and_perfect_cases():
    t = np.zeros((8, 8), np.int32)
    t[2:5, 2:5] = 1
    p = t.copy()
    p[0, 0] = 2  # class 2 predicted but absent from the target: not scored
    d = np.asarray(dice(p, t, num_classes=4))
    assert d[1] == 1.0
    np.testing.assert_allclose(d[0], 2 * 54 / (54 + 55))
    assert np.isnan(d[2]) and np.isnan(d[3])
    # mean over classes present in the target, ignoring background
    np.testing.assert_allclose(jnp.nanmean(dice(p, t, num_classes=4)[1:]), 1.0)
    empty = np.zeros((8, 8), np.int32)
    np.testing.assert_allclose(dice(empty, t, num_classes=2)[1], 0.0)


def test_soft_dice_loss_equals_one_minus_hard_dice_for_onehot():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, (2, 16, 16))
    b = rng.integers(0, 3, (2, 16, 16))
    loss = soft_dice_loss(jax.nn.one_hot(a, 3), jax.nn.one_hot(b, 3), eps=0.0)
    ref = 1.0 - np.nanmean(np.asarray(dice(a, b, num_classes=3)), axis=-1)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(soft_dice_loss(jax.nn.one_hot(b, 3), jax.nn.one_hot(b, 3)), 0.0,
                               atol=1e-6)


def test_soft_dice_loss_gradient_descends():
    rng = np.random.default_rng(1)
    onehot = jax.nn.one_hot(rng.integers(0, 3, (16, 16)), 3)
    logits = jnp.asarray(rng.standard_normal((16, 16, 3)), jnp.float32)
    f = lambda z: soft_dice_loss(jax.nn.softmax(z), onehot)  # noqa: E731
    g = jax.grad(f)(logits)
    assert bool(jnp.all(jnp.isfinite(g)))
    v = np.random.default_rng(2).standard_normal(logits.shape).astype(np.float32)
    h = 1e-2
    fd = (f(logits + h * v) - f(logits - h * v)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=2e-2)
    assert f(logits - 5.0 * g) < f(logits)


def test_bad_inputs_name_the_argument():
    a = np.zeros((8, 8), np.int32)
    with pytest.raises(TypeError, match="pred_labels"):
        dice(a.astype(np.float32), a, num_classes=2)
    with pytest.raises(TypeError, match="target_labels"):
        dice(a, a.astype(np.float32), num_classes=2)
    with pytest.raises(ValueError, match="pred_labels and target_labels"):
        dice(a, np.zeros((8, 9), np.int32), num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        dice(a, a, num_classes=0)
    with pytest.raises(ValueError, match="pred_labels"):
        dice(np.zeros(8, np.int32), np.zeros(8, np.int32), num_classes=2)
    p = np.ones((8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="probs and onehot"):
        soft_dice_loss(p, np.ones((8, 8, 2), np.float32))
    with pytest.raises(TypeError, match="probs"):
        soft_dice_loss(p.astype(np.complex64), p)
    with pytest.raises(ValueError, match="onehot"):
        soft_dice_loss(p, np.ones((8, 3)))
