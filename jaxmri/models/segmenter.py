"""Segmentation U-Net and the semantic interpretability score (SIS) of paper 003.

SIS (Seitzer et al. 2018, section 3): a segmentation network trained on fully-sampled images is
applied to reconstructions; its mean Dice overlap with the reference labels, over the foreground
classes present in a slice, is divided by the average Dice it reaches on the fully-sampled
(ground-truth) images. SIS = 1 means the anatomy is as segmentable as in the ground truth.

Here the segmenter is a :class:`jaxmri.nn.unet.UNet` (instance norm) on magnitude images
``(N, H, W)`` in ``[0, 1]``, trained with cross-entropy plus soft Dice on integer label maps
(for the embedded MNI152 data: 0 background, 1 CSF, 2 grey matter, 3 white matter).

Per-slice convention used for tables and paired tests: ``sis_i = dice_rec_i / mean_j
dice_gt_j`` (the mean over ``i`` is the paper's SIS exactly), over the slices whose reference
contains at least one foreground class. Background is never scored.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmri._checks import check_ndim, check_real
from jaxmri.metrics.segmentation import dice, soft_dice_loss
from jaxmri.nn.unet import UNet
from jaxmri.train.loop import apply_mean_gradients

__all__ = [
    "make_segmenter",
    "segmentation_loss",
    "segmenter_train_step",
    "predict_labels",
    "foreground_dice",
    "semantic_interpretability_score",
]


def make_segmenter(*, num_classes: int, features=(16, 32, 64, 128),
                   conv_general_dilated=jax.lax.conv_general_dilated) -> UNet:
    """The segmentation U-Net: magnitude ``(N, H, W, 1)`` in, class logits ``(N, H, W, K)``;
    its convolutions computed by ``conv_general_dilated``."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return UNet(out_channels=int(num_classes), features=tuple(features), norm="instance",
                conv_general_dilated=conv_general_dilated)


def segmentation_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Scalar ``mean cross-entropy + mean soft-Dice loss`` of logits ``(N, H, W, K)`` against
    integer labels ``(N, H, W)``; soft Dice offsets the rarity of thin classes (CSF)."""
    check_ndim(logits, "logits", ndim=4)
    check_ndim(labels, "labels", ndim=3)
    if tuple(np.shape(logits)[:3]) != tuple(np.shape(labels)):
        raise ValueError(f"logits (N, H, W, K) and labels (N, H, W) disagree: "
                         f"{np.shape(logits)} and {np.shape(labels)}")
    labels = jnp.asarray(labels, jnp.int32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return jnp.mean(ce) + jnp.mean(soft_dice_loss(jax.nn.softmax(logits), onehot))


def segmenter_train_step(state, batch, key):
    """One Adam step on ``batch = {'image': (B, H, W) float, 'labels': (B, H, W) int}``.

    Pure ``fit`` step (pmapped; gradients averaged over devices). ``key`` is unused.
    """
    del key

    def loss_fn(params):
        logits = state.apply_fn(state.variables(params), batch["image"][..., None])
        return segmentation_loss(logits, batch["labels"])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return apply_mean_gradients(state, grads), {"loss": loss}


def predict_labels(module: nn.Module, variables, images: jax.Array) -> jax.Array:
    """Arg-max labels ``(N, H, W)`` int32 of the segmenter on magnitude images ``(N, H, W)``."""
    check_real(images, "images")
    check_ndim(images, "images", ndim=3)
    logits = module.apply(variables, jnp.asarray(images, jnp.float32)[..., None])
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def foreground_dice(pred_labels: jax.Array, true_labels: jax.Array, *,
                    num_classes: int) -> jax.Array:
    """Per-slice mean Dice over the foreground classes ``1..K-1`` present in ``true_labels``.

    Args:
      pred_labels, true_labels: integer label maps ``(..., H, W)``.
      num_classes: ``K`` (class 0 is background and never scored).

    Returns:
      ``(...)`` float32; ``NaN`` for a slice whose reference has no foreground class.
    """
    per_class = dice(pred_labels, true_labels, num_classes=num_classes)[..., 1:]
    present = ~jnp.isnan(per_class)
    count = jnp.sum(present, axis=-1)
    total = jnp.sum(jnp.where(present, per_class, 0.0), axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def semantic_interpretability_score(dice_recon, dice_ground_truth) -> np.ndarray:
    """Per-slice SIS ``dice_recon_i / mean_j dice_ground_truth_j``.

    Args:
      dice_recon: ``(N,)`` foreground Dice of the segmenter on reconstructions
        (:func:`foreground_dice`), ``NaN`` for slices without foreground.
      dice_ground_truth: ``(N,)`` the same on the fully-sampled images of the same slices.

    Returns:
      ``(M,)`` float64 over the ``M`` slices where both are finite; its mean is the SIS.
    """
    rec = np.asarray(dice_recon, np.float64)
    gt = np.asarray(dice_ground_truth, np.float64)
    if rec.ndim != 1 or rec.shape != gt.shape:
        raise ValueError(f"dice_recon and dice_ground_truth must be 1-D of one shape, got "
                         f"{rec.shape} and {gt.shape}")
    valid = np.isfinite(rec) & np.isfinite(gt)
    if not valid.any():
        raise ValueError("no slice has a foreground class in its reference labels")
    reference = gt[valid].mean()
    if reference <= 0:
        raise ValueError("the segmenter's mean Dice on the ground truth is 0: SIS is undefined")
    return rec[valid] / reference
