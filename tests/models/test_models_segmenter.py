"""Tests of the SIS segmenter pieces: foreground Dice, the score, the loss and a train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from jaxmri.models.segmenter import (
    foreground_dice,
    make_segmenter,
    predict_labels,
    segmentation_loss,
    segmenter_train_step,
    semantic_interpretability_score,
)
from jaxmri.train import create_train_state, make_parallel_step, replicate, shard_batch


def _dice_reference(pred, true, k):
    a, b = pred == k, true == k
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


def _tissue(n=6, size=32, seed=0):
    """Images with three nested 'tissues' (1 < 2 < 3 in brightness) and their labels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    labels = np.zeros((n, size, size), np.int32)
    for i in range(n):
        r = x**2 / (0.12 + 0.02 * rng.uniform()) + y**2 / 0.15
        labels[i][r < 1] = 1
        labels[i][r < 0.7] = 2
        labels[i][r < 0.35] = 3
    images = (labels / 3.0).astype(np.float32)
    return images, labels


def _threshold_segmenter(images):
    """A fixed 'segmenter': nearest of the four tissue intensities."""
    return np.clip(np.round(np.asarray(images) * 3), 0, 3).astype(np.int32)


def test_foreground_dice_matches_reference_over_present_classes():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 3, (3, 16, 16)).astype(np.int32)  # class 3 absent everywhere
    pred = rng.integers(0, 4, (3, 16, 16)).astype(np.int32)
    got = np.asarray(foreground_dice(pred, true, num_classes=4))
    want = [np.mean([_dice_reference(pred[i], true[i], k) for k in (1, 2)]) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    empty = np.asarray(foreground_dice(pred[:1], np.zeros((1, 16, 16), np.int32),
                                       num_classes=4))
    assert np.isnan(empty[0])


def test_sis_is_one_for_perfect_reconstructions_and_drops_for_degraded_ones():
    images, labels = _tissue()
    dice_gt = np.asarray(foreground_dice(_threshold_segmenter(images), labels, num_classes=4))
    sis_same = semantic_interpretability_score(dice_gt, dice_gt)
    np.testing.assert_allclose(sis_same.mean(), 1.0, rtol=1e-12)
    rng = np.random.default_rng(2)
    degraded = ndimage.gaussian_filter(images, (0, 1.5, 1.5)) + 0.08 * rng.standard_normal(
        images.shape)
    dice_deg = np.asarray(foreground_dice(_threshold_segmenter(degraded), labels,
                                          num_classes=4))
    sis_deg = semantic_interpretability_score(dice_deg, dice_gt)
    assert sis_deg.mean() < 0.95
    np.testing.assert_allclose(sis_deg, dice_deg / dice_gt.mean(), rtol=1e-12)


def test_sis_skips_slices_without_foreground_and_rejects_bad_input():
    sis = semantic_interpretability_score([0.5, np.nan, 0.25], [0.5, np.nan, 1.0])
    np.testing.assert_allclose(sis, [0.5 / 0.75, 0.25 / 0.75])
    with pytest.raises(ValueError, match="dice_recon"):
        semantic_interpretability_score([0.5, 0.5], [0.5])
    with pytest.raises(ValueError, match="no slice"):
        semantic_interpretability_score([np.nan], [np.nan])


def test_segmentation_loss_is_cross_entropy_plus_soft_dice():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 4, 4))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    onehot = np.eye(3)[labels]
    ce = -np.mean(np.log(np.take_along_axis(p, labels[..., None], -1)))
    inter = (p * onehot).sum((1, 2))
    denom = p.sum((1, 2)) + onehot.sum((1, 2))
    soft = 1 - np.mean((2 * inter + 1e-6) / (denom + 1e-6), axis=-1)
    got = segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), ce + soft.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="logits"):
        segmentation_loss(jnp.asarray(logits[0]), jnp.asarray(labels))


def test_segmenter_learns_the_tissues():
    images, labels = _tissue(n=4, size=16)
    module = make_segmenter(num_classes=4, features=(8, 16))
    variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    state = create_train_state(module, optax.adam(1e-2), variables)
    pstep = make_parallel_step(segmenter_train_step)
    rstate = replicate(state)
    batch = shard_batch({"image": images, "labels": labels})
    losses = []
    for s in range(40):
        rstate, m, _ = pstep(rstate, batch, jax.random.key(0), s,
                             np.zeros(jax.local_device_count(), np.int32))
        losses.append(float(np.asarray(m["loss"])[0]))
    assert losses[-1] < 0.5 * losses[0]
    params = jax.tree.map(lambda x: np.asarray(x)[0], rstate.params)
    pred = predict_labels(module, {"params": params}, images)
    assert float(np.nanmean(np.asarray(foreground_dice(pred, labels, num_classes=4)))) > 0.7
