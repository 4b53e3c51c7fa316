"""Segmentation overlap: per-class Dice of label maps, and a soft Dice loss for training.

Label maps are integer arrays ``(..., H, W)`` with values in ``[0, num_classes)``; probability
maps and one-hot targets are channels-last ``(..., H, W, K)`` as a Flax network emits them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmri._checks import check_ndim, check_positive, check_same_shape
from jaxmri.metrics.quality import _abstract

__all__ = ["dice", "soft_dice_loss"]


def _check_labels(x, name: str) -> None:
    check_ndim(x, name, min_ndim=2)
    dtype = np.dtype(_abstract(x).dtype)
    if dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer class labels, got dtype {dtype}")


def dice(pred_labels, target_labels, *, num_classes: int) -> jnp.ndarray:
    """Per-class Dice overlap ``2 |A n B| / (|A| + |B|)`` per image.

    ``A`` is the set of pixels where ``pred_labels == k`` and ``B`` where ``target_labels == k``.

    Absent classes: the Dice of a class that does not occur in the *target* image is ``NaN``,
    whatever the prediction holds, so that ``jnp.nanmean(dice(...), axis=-1)`` is the mean over
    the classes present in the target and ``jnp.nanmean`` over images skips images without the
    class. This is the rule of paper 003's SIS ("we only consider images in which at least one
    instance of the object class is present"): a false-positive class in an image that lacks it
    is not scored. (Drop the background class by slicing ``[..., 1:]``.)

    Args:
      pred_labels, target_labels: integer label maps ``(..., H, W)`` of the same shape.
      num_classes: number of classes ``K`` (a Python int; labels outside ``[0, K)`` are ignored).

    Returns:
      ``(..., K)`` float32 array in ``[0, 1]`` or ``NaN``.
    """
    _check_labels(pred_labels, "pred_labels")
    _check_labels(target_labels, "target_labels")
    check_same_shape(pred_labels, target_labels, "pred_labels", "target_labels")
    if not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be a Python int, got {type(num_classes).__name__}")
    check_positive(num_classes, "num_classes")
    return _dice(pred_labels, target_labels, num_classes=int(num_classes))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _dice(pred_labels, target_labels, *, num_classes):
    classes = jnp.arange(num_classes)
    a = jnp.asarray(pred_labels)[..., None] == classes  # (..., H, W, K)
    b = jnp.asarray(target_labels)[..., None] == classes
    inter = jnp.sum(a & b, axis=(-3, -2)).astype(jnp.float32)
    size_a = jnp.sum(a, axis=(-3, -2)).astype(jnp.float32)
    size_b = jnp.sum(b, axis=(-3, -2)).astype(jnp.float32)
    # size_b > 0 implies a positive denominator, so the guarded division never sees 0 / 0.
    present = size_b > 0
    return jnp.where(present, 2 * inter / jnp.where(present, size_a + size_b, 1.0), jnp.nan)


def soft_dice_loss(probs, onehot, *, eps: float = 1e-6) -> jnp.ndarray:
    """Differentiable soft Dice loss ``1 - mean_k (2 sum p g + eps) / (sum p + sum g + eps)``.

    Sums run over the pixels of each image; the mean runs over the ``K`` classes. ``eps`` keeps a
    class absent from both maps at a perfect score (no gradient towards predicting it) and the
    division finite.

    Args:
      probs: class probabilities ``(..., H, W, K)`` (e.g. a softmax over the last axis).
      onehot: one-hot (or soft) targets of the same shape.
      eps: smoothing constant, ``>= 0``.

    Returns:
      ``(...)`` float array in ``[0, 1]``, 0 when ``probs == onehot`` is one-hot.
    """
    for x, name in ((probs, "probs"), (onehot, "onehot")):
        check_ndim(x, name, min_ndim=3)
        dtype = np.dtype(_abstract(x).dtype)
        if dtype.kind not in "fiub":
            raise TypeError(f"{name} must be real-valued, got dtype {dtype}")
    check_same_shape(probs, onehot, "probs", "onehot")
    check_positive(eps, "eps", allow_zero=True)
    return _soft_dice_loss(probs, onehot, eps)


@jax.jit
def _soft_dice_loss(probs, onehot, eps):
    p = jnp.asarray(probs, jnp.promote_types(jnp.result_type(probs), jnp.float32))
    g = jnp.asarray(onehot, p.dtype)
    inter = jnp.sum(p * g, axis=(-3, -2))
    denom = jnp.sum(p, axis=(-3, -2)) + jnp.sum(g, axis=(-3, -2))
    return 1.0 - jnp.mean((2 * inter + eps) / (denom + eps), axis=-1)
