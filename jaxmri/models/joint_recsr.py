"""Joint multi-coil reconstruction and super-resolution with SFT (paper 004).

Forward model (eq. 1): ``b = M H F C x`` with ``C`` the coil maps, ``F`` the centred unitary FFT,
``H`` the k-space crop to the central ``(H / f, W / f)`` block for an SR factor ``f`` and ``M``
the under-sampling mask on the low-resolution grid. Our ``H`` also divides by ``f``
(``= sqrt(H W / (h w))``): with the unitary FFT a crop alone makes the low-resolution image ``f``
times brighter (a constant image keeps its DC sample ``sqrt(H W)``, which the smaller inverse
FFT divides by ``sqrt(h w)`` only); the factor keeps LR and HR images on one intensity scale,
so the LR reconstruction target, the HR target and bicubic baselines compare directly.
:func:`encode` / :func:`encode_adjoint` implement ``A`` and ``A^H`` from the
:mod:`jaxmri.physics` operators (``factor = 1`` is the plain SENSE ``A = M F C`` of the LR Rec
module).

Shapes: images ``(N, h, w)`` complex64 (LR) or ``(N, H, W)`` (HR); coil data ``(N, C, ., .)``;
masks ``(N, h, w)`` float32 per slice (a coil axis is added inside). Networks see NHWC.

Networks
--------
* :class:`PGDDEQ` (Rec module, eqs. 4-6): ``s = x - eta A^H (A x - b)``, ``x <- Gamma(s)`` with a
  trainable step ``eta`` and an RRDB proximal network ``Gamma`` (:class:`RRDBProximal`,
  residual: ``Gamma(s) = s + net(s)``), solved to its fixed point from ``x0 = A^H b`` by
  :func:`jaxmri.nn.fixed_point.fixed_point` in :class:`~jaxmri.nn.fixed_point.JacobianFree` mode
  (deep equilibrium, Jacobian-free backprop).
* :class:`SRModule`: conv, ``num_blocks`` RRDB (or RRDB-SFT when a condition is given) blocks,
  a trunk conv with a long skip (as ESRGAN's RRDBNet), nearest x2 upsampling, conv + leaky
  ReLU, conv to one channel: the HR magnitude image.
* :class:`JointRecSR` with ``variant``:
  ``"proposed"`` Rec module -> conv -> reconstruction feature broadcast to every SFT layer of an
  SR module that reads the zero-filled LR image; ``"sequential"`` (Recon+SR) the SR module reads
  the Rec output, no SFT; ``"sr"`` (SR only) the SR module reads its input image alone.

Losses (eq. 12): ``L_G = L_per + g_pix L_pix + g_rec L_rec + g_adv L_adv`` with the perceptual L1
distance of pretrained VGG16 features (:func:`perceptual_l1_loss`; the paper uses VGG19, which
has no offline weights here), pixel L1 on the HR magnitude, L1 of the complex LR reconstruction
against ``x_LR^GT``, and the non-saturating GAN loss of a VGG-style discriminator
(:class:`jaxmri.nn.vgg_discriminator.VGGDiscriminator`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import check_complex, check_ndim, check_positive
from jaxmri.losses import discriminator_loss, generator_loss
from jaxmri.metrics import features as pretrained_features
from jaxmri.nn.fixed_point import FixedPointInfo, JacobianFree, fixed_point
from jaxmri.nn.layers import Conv, channels_to_complex, complex_to_channels
from jaxmri.nn.rrdb import RRDB, RRDBSFT, scaled_kaiming_init
from jaxmri.physics import kspace_crop, kspace_zero_pad, sense_adjoint, sense_forward
from jaxmri.train import apply_mean_gradients

__all__ = [
    "encode",
    "encode_adjoint",
    "RRDBProximal",
    "PGDDEQ",
    "SRModule",
    "JointRecSR",
    "LossWeights",
    "perceptual_l1_loss",
    "make_train_step",
]

Variant = str
VARIANTS = ("proposed", "sequential", "sr")


# --------------------------------------------------------------------------------------------
# Forward model b = M H F C x
# --------------------------------------------------------------------------------------------


def _lr_shape(shape: tuple[int, ...], factor: int) -> tuple[int, int]:
    height, width = shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"the image axes {(height, width)} must be divisible by factor={factor}")
    return height // factor, width // factor


def _check_factor(factor: int) -> None:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be an int >= 1, got {factor}")


def encode(image: jax.Array, maps: jax.Array, mask: jax.Array, *, factor: int = 1) -> jax.Array:
    """``A x = M H F C x``: HR image to under-sampled LR multi-coil k-space.

    Args:
      image: ``(N, H, W)`` complex64.
      maps: coil maps ``(N, C, H, W)`` complex64 on the image grid.
      mask: ``(N, H / factor, W / factor)`` float32 0/1 mask on the LR grid.
      factor: SR factor ``f``; ``H`` keeps the central ``(H / f, W / f)`` k-space block and
        divides it by ``f`` (intensity-preserving, see the module docstring).

    Returns:
      ``(N, C, H / f, W / f)`` complex64.
    """
    check_complex(image, "image")
    check_ndim(mask, "mask", ndim=3)
    _check_factor(factor)
    lr = _lr_shape(image.shape, factor)
    if mask.shape[-2:] != lr:
        raise ValueError(f"mask must have the LR shape {lr}, got shape {mask.shape}")
    kspace = sense_forward(image, maps)
    if factor > 1:
        kspace = kspace_crop(kspace, lr) / factor
    return kspace * mask[:, None].astype(jnp.float32)


def encode_adjoint(kspace: jax.Array, maps: jax.Array, mask: jax.Array, *,
                   factor: int = 1) -> jax.Array:
    """``A^H y = C^H F^H H^T M y``: LR multi-coil k-space ``(N, C, h, w)`` to an HR image.

    ``maps`` ``(N, C, f h, f w)``, ``mask`` ``(N, h, w)``; returns ``(N, f h, f w)`` complex64.
    """
    check_complex(kspace, "kspace")
    check_ndim(mask, "mask", ndim=3)
    _check_factor(factor)
    y = kspace * mask[:, None].astype(jnp.float32)
    if factor > 1:
        y = kspace_zero_pad(y, tuple(maps.shape[-2:])) / factor
    return sense_adjoint(y, maps)


# --------------------------------------------------------------------------------------------
# Rec module: PGD solved as a deep equilibrium model
# --------------------------------------------------------------------------------------------


class RRDBProximal(nn.Module):
    """Learned proximal operator ``Gamma(s) = s + conv_out(RRDB^K(conv_in(s)))`` on a complex image.

    ``(N, H, W)`` complex64 -> same. ``conv_out`` starts at zero so ``Gamma`` starts as the
    identity and the PGD iteration as plain gradient descent on the data term.
    """

    features: int = 32
    growth: int = 16
    num_blocks: int = 1
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, s: jax.Array) -> jax.Array:
        h = Conv(self.features, (3, 3), kernel_init=scaled_kaiming_init(1.0),
                 conv_general_dilated=self.conv_general_dilated)(
            complex_to_channels(s))
        for _ in range(self.num_blocks):
            h = RRDB(self.features, self.growth, conv_general_dilated=self.conv_general_dilated)(h)
        out = Conv(2, (3, 3), kernel_init=nn.initializers.zeros,
                   conv_general_dilated=self.conv_general_dilated)(h)
        return s + channels_to_complex(out)


class PGDDEQ(nn.Module):
    """Rec module: fixed point of ``x = Gamma(x - eta A^H (A x - b))`` (eqs. 4-6), trained by JFB.

    Attributes:
      features, growth, num_blocks: the :class:`RRDBProximal` network.
      factor: ``A = M H F C`` with this SR factor (1: the LR SENSE operator ``M F C``).
      eta_init: initial step size (trainable); the default ``factor^2`` is ``1 / ||A||^2`` for
        maps with unit sum of squares (``||A|| = 1 / factor``).
      tol, max_iter: the forward fixed-point solve (:class:`~jaxmri.nn.fixed_point.JacobianFree`:
        stop at a relative step ``||x_k - x_{k-1}|| / ||x_k|| <= tol``).
    """

    features: int = 32
    growth: int = 16
    num_blocks: int = 1
    factor: int = 1
    eta_init: float | None = None
    tol: float = 1e-3
    max_iter: int = 20
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, kspace, mask, maps) -> tuple[jax.Array, FixedPointInfo]:
        """``kspace`` ``(N, C, h, w)``, ``mask`` ``(N, h, w)``, ``maps`` ``(N, C, fh, fw)``.

        Returns ``(x, info)``: the reconstruction ``(N, fh, fw)`` complex64 and the solve's
        iterations and residual.
        """
        check_complex(kspace, "kspace")
        factor = self.factor
        x0 = encode_adjoint(kspace, maps, mask, factor=factor)
        # An unbound definition (parent=None): its parameters live in this module's 'prox' entry
        # so that the DEQ solve can call it as a pure function of explicit parameters.
        prox = RRDBProximal(self.features, self.growth, self.num_blocks, parent=None,
                            conv_general_dilated=self.conv_general_dilated)
        eta0 = float(factor**2) if self.eta_init is None else self.eta_init
        params = {
            "prox": self.param("prox", lambda key: prox.init(key, x0[:1])["params"]),
            "eta": self.param("eta", lambda key: jnp.asarray(eta0, jnp.float32)),
        }

        def pgd_step(p, x, b, m, s_maps):
            residual = encode(x, s_maps, m, factor=factor) - b
            s = x - p["eta"] * encode_adjoint(residual, s_maps, m, factor=factor)
            return prox.apply({"params": p["prox"]}, s)

        return fixed_point(pgd_step, params, x0, kspace, mask, maps,
                           mode=JacobianFree(tol=self.tol, max_iter=self.max_iter))


# --------------------------------------------------------------------------------------------
# SR module and the joint network
# --------------------------------------------------------------------------------------------


def nearest_upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling of NHWC ``x`` by an integer factor (pixel repetition)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class SRModule(nn.Module):
    """SR module: ``(N, h, w, Cin)`` (and optional condition) -> HR magnitude ``(N, 2h, 2w)``.

    With ``cond`` given, the blocks are :class:`~jaxmri.nn.rrdb.RRDBSFT` sharing that condition;
    without, plain :class:`~jaxmri.nn.rrdb.RRDB`.
    """

    features: int = 64
    growth: int = 32
    num_blocks: int = 23
    sft_hidden: int = 32
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        feat = Conv(self.features, (3, 3), name="conv_first",
                    conv_general_dilated=self.conv_general_dilated)(x)
        h = feat
        for i in range(self.num_blocks):
            if cond is None:
                h = RRDB(self.features, self.growth, name=f"block{i}",
                         conv_general_dilated=self.conv_general_dilated)(h)
            else:
                h = RRDBSFT(self.features, self.growth, self.sft_hidden, name=f"block{i}",
                            conv_general_dilated=self.conv_general_dilated)(h, cond)
        feat = feat + Conv(self.features, (3, 3), name="conv_body",
                           conv_general_dilated=self.conv_general_dilated)(h)
        h = nearest_upsample(feat, 2)
        h = nn.leaky_relu(Conv(self.features, (3, 3), name="conv_up",
                               conv_general_dilated=self.conv_general_dilated)(h), 0.2)
        return Conv(1, (3, 3), name="conv_last",
                    conv_general_dilated=self.conv_general_dilated)(h)[..., 0]


class JointRecSR(nn.Module):
    """The joint network and its ablations (``variant`` in ``"proposed"``, ``"sequential"``,
    ``"sr"``; see the module docstring).

    Called as ``(zero_filled, kspace, mask, maps)`` with LR arrays (``zero_filled`` ``(N, h, w)``
    complex64, ``kspace`` ``(N, C, h, w)``, ``mask`` ``(N, h, w)``, ``maps`` ``(N, C, h, w)``);
    returns ``{'sr': (N, 2h, 2w) float32}`` plus, when a Rec module runs, ``'rec'`` ``(N, h, w)``
    complex64, ``'num_iter'`` and ``'residual'`` (scalars).
    """

    variant: Variant = "proposed"
    sr_features: int = 64
    sr_growth: int = 32
    sr_blocks: int = 23
    cond_features: int = 32
    rec_features: int = 32
    rec_growth: int = 16
    rec_blocks: int = 1
    tol: float = 1e-3
    max_iter: int = 20
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, zero_filled, kspace, mask, maps) -> dict[str, jax.Array]:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        check_complex(zero_filled, "zero_filled")
        check_ndim(zero_filled, "zero_filled", ndim=3)
        sr = SRModule(self.sr_features, self.sr_growth, self.sr_blocks, self.cond_features,
                      name="sr", conv_general_dilated=self.conv_general_dilated)
        if self.variant == "sr":
            return {"sr": sr(complex_to_channels(zero_filled))}
        rec, info = PGDDEQ(self.rec_features, self.rec_growth, self.rec_blocks, tol=self.tol,
                           max_iter=self.max_iter, name="rec",
                           conv_general_dilated=self.conv_general_dilated)(kspace, mask, maps)
        out = {"rec": rec, "num_iter": info.num_iter, "residual": info.residual}
        if self.variant == "sequential":
            out["sr"] = sr(complex_to_channels(rec))
        else:
            cond = Conv(self.cond_features, (3, 3), name="rec_feature",
                        conv_general_dilated=self.conv_general_dilated)(
                complex_to_channels(rec))
            out["sr"] = sr(complex_to_channels(zero_filled), cond)
        return out


# --------------------------------------------------------------------------------------------
# Losses and the train step
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of eq. 12 (paper values as defaults); a zero weight drops the term."""

    perceptual: float = 1.0
    pixel: float = 1e-2
    rec: float = 1.0
    adversarial: float = 5e-3

    def __post_init__(self):
        for field in dataclasses.fields(self):
            check_positive(getattr(self, field.name), field.name, allow_zero=True)


def perceptual_l1_loss(pred: jax.Array, target: jax.Array, *, net: str = "vgg16",
                       data_range: float = 1.0,
                       conv_general_dilated: Callable = lax.conv_general_dilated) -> jax.Array:
    """Eq. 8: mean over the 5 pretrained taps of the mean absolute feature difference.

    ``pred``, ``target``: real ``(..., H, W)`` in ``[0, data_range]`` (``H, W >= 16`` for
    VGG16); the target's features carry no gradient; ``conv_general_dilated`` is the trunk's
    convolution implementation. Returns a scalar.
    """
    if np.shape(pred) != np.shape(target):
        raise ValueError(f"pred and target must have the same shape, got {np.shape(pred)} and "
                         f"{np.shape(target)}")
    fake = pretrained_features(net, pred, data_range=data_range,
                               conv_general_dilated=conv_general_dilated)
    real = pretrained_features(net, jax.lax.stop_gradient(target), data_range=data_range,
                               conv_general_dilated=conv_general_dilated)
    terms = [jnp.mean(jnp.abs(f - jax.lax.stop_gradient(r))) for f, r in zip(fake, real,
                                                                             strict=True)]
    return sum(terms) / len(terms)


Predict = Callable[[Mapping[str, Any], Mapping[str, jax.Array]], dict[str, jax.Array]]


def make_train_step(predict: Predict, *, weights: LossWeights, rec_target: str = "target_lr",
                    conv_general_dilated: Callable = lax.conv_general_dilated):
    """``train_step(state, batch, key) -> (state, metrics)`` for :func:`jaxmri.train.fit`.

    Args:
      predict: ``predict(variables, batch) -> outputs`` with ``'sr'`` (HR magnitude ``(N, H, W)``)
        and/or ``'rec'`` (complex image compared with ``batch[rec_target]``).
      weights: eq. 12 weights; terms whose output is missing are dropped. With
        ``weights.adversarial > 0`` the state is ``{'generator', 'discriminator'}`` (two
        :class:`~jaxmri.train.TrainState`, the discriminator's ``apply_fn`` maps NHWC images to
        logits ``(N,)``), else ``{'generator'}``.
      rec_target: batch key of the complex reconstruction target (``'target_lr'`` for the LR
        Rec module, ``'target'`` for an HR reconstruction).
      conv_general_dilated: the convolution implementation of the perceptual loss's VGG16
        (the networks' own is a field of their modules, inside ``predict``).

    The batch holds ``zero_filled``, ``kspace``, ``mask``, ``maps`` (LR), ``target`` (HR complex)
    and ``target_lr`` (LR complex). The HR magnitude target is ``|target|``. The discriminator
    is updated after the generator, on the generator's output before the update (as ESRGAN).
    """
    use_gan = weights.adversarial > 0

    def train_step(state, batch, key):
        del key
        gen = state["generator"]
        hr = jnp.abs(batch["target"])

        def loss_fn(params):
            out = predict(gen.variables(params), batch)
            terms = {}
            if "sr" in out:
                if weights.perceptual > 0:
                    terms["perceptual"] = perceptual_l1_loss(
                        out["sr"], hr, conv_general_dilated=conv_general_dilated)
                if weights.pixel > 0:
                    terms["pixel"] = jnp.mean(jnp.abs(out["sr"] - hr))
                if use_gan:
                    disc = state["discriminator"]
                    logits = disc.apply_fn(disc.variables(), out["sr"][..., None])
                    terms["adversarial"] = generator_loss(logits)
            if "rec" in out and weights.rec > 0:
                terms["rec"] = jnp.mean(jnp.abs(out["rec"] - batch[rec_target]))
            total = sum(getattr(weights, name) * value for name, value in terms.items())
            return total, (terms, out)

        (loss, (terms, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(gen.params)
        new_state = {"generator": apply_mean_gradients(gen, grads)}
        metrics = {"loss": loss, **terms}
        if "num_iter" in out:
            metrics["deq_iters"] = out["num_iter"].astype(jnp.float32)
        if use_gan:
            disc = state["discriminator"]
            fake = jax.lax.stop_gradient(out["sr"])[..., None]

            def d_loss_fn(params):
                variables = disc.variables(params)
                return discriminator_loss(disc.apply_fn(variables, hr[..., None]),
                                          disc.apply_fn(variables, fake))

            d_loss, d_grads = jax.value_and_grad(d_loss_fn)(disc.params)
            new_state["discriminator"] = apply_mean_gradients(disc, d_grads)
            metrics["d_loss"] = d_loss
        return new_state, metrics

    return train_step
