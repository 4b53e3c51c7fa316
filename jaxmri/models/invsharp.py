"""InvSharpNet (Dong et al., MICCAI 2022, paper 000) and the refinement baselines of its tables.

The sharpening network ``S`` is an invertible residual network
(:class:`jaxmri.nn.invertible.InvertibleSequence`) over TWO stacked complex images, i.e. 4 real
channels ``(re_a, im_a, re_b, im_b)``, because an invertible map keeps its dimension and the
backward pass needs a second input to condition on the under-sampling mask (section 2.3).

Directions and losses (every method uses the same network, as in the paper):

* ``back`` - InvSharpNet, eq. 2: feed (ground truth ``I``, under-sampled image ``Y``) through
  ``S^{-1}`` (fixed-point inversion, 2 iterations in the paper) and pull both outputs towards the
  blurry reconstruction ``R``: ``L_back = ||S^{-1}(I, Y) - (R, R)||_1``.
* ``forward`` - the refinement network, eq. 1: ``S(R, R)`` first image against ``I`` with
  ``(1 - alpha) L1 + alpha (1 - MS-SSIM)``, ``alpha = 0.84``.
* ``bi`` - eq. 4: ``L_forward + beta L_back``, ``beta = 2``.
* ``cwgan`` - eq. 3: ``L_forward + gamma L_adv`` with a conditional Wasserstein critic trained
  with gradient penalty (WGAN-GP, weight 10); the critic sees the image and the reconstruction
  it was computed from.

Inference is always forward: ``S(R, R)``, keep the first image, then hard data consistency with
the measured k-space (section 2.3, "Data fidelity"). The DC layer is applied at inference only,
for every method alike, so the losses compare the network outputs themselves.

L1 terms are means over the real/imag channels. MS-SSIM is computed on magnitudes with the
per-image maximum of the target as data range (:func:`jaxmri.metrics.ms_ssim`, which uses as
many scales as the image size allows).

Batches are dicts of complex64 ``(B, H, W)`` arrays: ``recon`` (R), ``target`` (I) and
``zero_filled`` (Y).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxmri.metrics import ms_ssim
from jaxmri.nn.fixed_point import Unrolled
from jaxmri.nn.invertible import InvertibleSequence
from jaxmri.nn.layers import Conv, channels_to_complex, complex_to_channels
from jaxmri.physics.consistency import image_dc
from jaxmri.train import TrainState, apply_mean_gradients

__all__ = [
    "METHODS",
    "InvSharpConfig",
    "Critic",
    "build_network",
    "pair",
    "first_image",
    "magnitude",
    "sharpen",
    "sharpen_with_dc",
    "backward_images",
    "inversion_error",
    "forward_loss",
    "backward_loss",
    "make_train_step",
    "create_states",
]

Method = Literal["forward", "cwgan", "bi", "back"]
METHODS: tuple[str, ...] = ("forward", "cwgan", "bi", "back")


@dataclasses.dataclass(frozen=True)
class InvSharpConfig:
    """Architecture and loss hyper-parameters of one InvSharpNet-family run.

    Attributes:
      num_blocks, depth, hidden: 12 invertible blocks of 5 convs with 128 channels (paper).
      coeff: Lipschitz bound per conv (c = 0.7 in the paper).
      inverse_iterations: fixed-point iterations of the inverse when training (2 in the paper).
      power_iterations: spectral-norm power iterations per training step.
      alpha: MS-SSIM weight of the forward loss (0.84, eq. 1).
      beta: weight of the backward loss in the bidirectional loss (2, eq. 4).
      gamma: adversarial weight of the cWGAN (0.01 or 0.02, eq. 3).
      gp_weight: WGAN-GP gradient-penalty weight (10, Gulrajani et al.).
      critic_features: channels of the critic's strided convs.
    """

    num_blocks: int = 12
    depth: int = 5
    hidden: int = 128
    coeff: float = 0.7
    inverse_iterations: int = 2
    power_iterations: int = 1
    alpha: float = 0.84
    beta: float = 2.0
    gamma: float = 0.01
    gp_weight: float = 10.0
    critic_features: Sequence[int] = (64, 128, 256)

    @property
    def mode(self) -> Unrolled:
        """The gradient mode of the training inverse: the paper's truncated iteration."""
        return Unrolled(num_iter=self.inverse_iterations)


def build_network(config: InvSharpConfig, *,
                  conv_general_dilated: Callable = lax.conv_general_dilated
                  ) -> InvertibleSequence:
    """The invertible network ``S`` of ``config`` (4 channels in, 4 out), convolving with
    ``conv_general_dilated`` (see :class:`jaxmri.nn.layers.Conv`)."""
    return InvertibleSequence(num_blocks=config.num_blocks, hidden=config.hidden,
                              depth=config.depth, coeff=config.coeff,
                              power_iterations=config.power_iterations,
                              conv_general_dilated=conv_general_dilated)


class Critic(nn.Module):
    """Conditional Wasserstein critic: ``(image, condition) -> score`` per example.

    Strided 4x4 convs with leaky ReLU (no normalisation: it would break the per-example
    gradient penalty), a 1x1 conv to one channel and a spatial mean. Inputs are complex
    ``(B, H, W)`` images given as NHWC channels ``(B, H, W, 2)`` each; output ``(B,)`` float32.
    """

    features: Sequence[int] = (64, 128, 256)
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, image: jax.Array, condition: jax.Array) -> jax.Array:
        h = jnp.concatenate([image, condition], axis=-1)
        for feat in self.features:
            conv = Conv(feat, (4, 4), strides=(2, 2),
                        conv_general_dilated=self.conv_general_dilated)
            h = nn.leaky_relu(conv(h), 0.2)
        logits = Conv(1, (1, 1), conv_general_dilated=self.conv_general_dilated)(h)
        return jnp.mean(logits, axis=(1, 2, 3))


def pair(a: jax.Array, b: jax.Array) -> jax.Array:
    """Two complex ``(B, H, W)`` images -> the network's 4-channel NHWC input ``(B, H, W, 4)``."""
    return complex_to_channels(jnp.stack([a, b], axis=1))


def first_image(x4: jax.Array) -> jax.Array:
    """The first complex image ``(B, H, W)`` of a 4-channel network array."""
    return channels_to_complex(x4[..., :2])


def magnitude(z: jax.Array) -> jax.Array:
    """``|z|`` with a finite gradient at 0 (``sqrt(re^2 + im^2 + 1e-12)``), float32."""
    return jnp.sqrt(jnp.real(z) ** 2 + jnp.imag(z) ** 2 + 1e-12)


def sharpen(network: InvertibleSequence, variables, recon: jax.Array) -> jax.Array:
    """Forward direction without DC: ``S(R, R)``, first image; complex ``(B, H, W)``."""
    return first_image(network.apply(variables, pair(recon, recon)))


def sharpen_with_dc(network, variables, recon, kspace, mask, maps) -> jax.Array:
    """Inference: :func:`sharpen` then hard data consistency with the measured k-space.

    Args:
      recon: blurry reconstruction ``(B, H, W)`` complex64.
      kspace: measured k-space ``(B, C, H, W)``; mask ``(B, H, W)``; maps ``(B, C, H, W)``.
    """
    return image_dc(sharpen(network, variables, recon), kspace, mask[:, None], maps=maps)


def backward_images(network, variables, target, zero_filled, *, mode, update_stats=False):
    """``S^{-1}(I, Y)``: the two complex images ``(B, 2, H, W)`` and the inversion info.

    With ``update_stats`` the call must be made with ``mutable=["spectral"]`` semantics; here it
    returns ``((images, info), new_variables_or_None)``.
    """
    y4 = pair(target, zero_filled)
    if update_stats:
        (x4, info), updates = network.apply(variables, y4, mode=mode, update_stats=True,
                                            method="inverse", mutable=["spectral"])
        return (channels_to_complex(x4, squeeze=False), info), updates
    x4, info = network.apply(variables, y4, mode=mode, method="inverse")
    return (channels_to_complex(x4, squeeze=False), info), None


def inversion_error(network, variables, target, zero_filled, *, mode) -> jax.Array:
    """``|I - S(S^{-1}(I, Y))|`` on the first image, ``(B, H, W)`` float32 (Fig. 3b, top).

    With ``mode = Unrolled(2)`` this is the paper's ablation: how well two fixed-point
    iterations invert the trained network.
    """
    x4, _ = network.apply(variables, pair(target, zero_filled), mode=mode, method="inverse")
    return jnp.abs(target - first_image(network.apply(variables, x4)))


def forward_loss(pred: jax.Array, target: jax.Array, *, alpha: float) -> jax.Array:
    """Eq. 1: ``(1 - alpha) ||S(R) - I||_1 + alpha (1 - MS-SSIM(|S(R)|, |I|))``, scalar.

    Args:
      pred, target: complex ``(B, H, W)``.
    """
    l1 = jnp.mean(jnp.abs(complex_to_channels(pred) - complex_to_channels(target)))
    target_mag = magnitude(target)
    data_range = jnp.max(target_mag, axis=(-2, -1))
    msssim = jnp.mean(ms_ssim(magnitude(pred), target_mag, data_range=data_range))
    return (1.0 - alpha) * l1 + alpha * (1.0 - msssim)


def backward_loss(images: jax.Array, recon: jax.Array) -> jax.Array:
    """Eq. 2: mean L1 between both backward outputs ``(B, 2, H, W)`` and ``R`` ``(B, H, W)``."""
    target = jnp.stack([recon, recon], axis=1)
    return jnp.mean(jnp.abs(jnp.real(images) - jnp.real(target))
                    + jnp.abs(jnp.imag(images) - jnp.imag(target))) / 2.0


def _gradient_penalty(critic_fn, real, fake, condition, key) -> jax.Array:
    """WGAN-GP: ``E[(||grad_x D(x_hat, cond)||_2 - 1)^2]`` on random interpolates."""
    eps = jax.random.uniform(key, (real.shape[0], 1, 1, 1))
    x_hat = eps * real + (1.0 - eps) * fake
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x, condition)))(x_hat)
    norms = jnp.sqrt(jnp.sum(grads ** 2, axis=(1, 2, 3)) + 1e-12)
    return jnp.mean((norms - 1.0) ** 2)


def make_train_step(network: InvertibleSequence, config: InvSharpConfig, method: Method,
                    critic: Critic | None = None) -> Callable:
    """The pure ``train_step(state, batch, key) -> (state, metrics)`` of one method.

    ``state`` is a :class:`jaxmri.train.TrainState` of the network, or for ``"cwgan"`` a dict
    ``{"generator": TrainState, "critic": TrainState}``. Gradients are averaged over
    :data:`jaxmri.train.AXIS_NAME`, so the step runs under :func:`jaxmri.train.fit`'s pmap.
    Spectral-norm power iterations advance once per step.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    mode = config.mode

    def forward_with_stats(state: TrainState, params, recon):
        out, updates = network.apply(state.variables(params), pair(recon, recon),
                                     update_stats=True, mutable=["spectral"])
        return first_image(out), updates

    def generator_loss(params, state, batch, critic_params):
        metrics = {}
        model_state = state.model_state
        loss = 0.0
        if method in ("forward", "bi", "cwgan"):
            pred, updates = forward_with_stats(state, params, batch["recon"])
            model_state = {**model_state, **updates}
            l_fwd = forward_loss(pred, batch["target"], alpha=config.alpha)
            metrics["forward_loss"] = l_fwd
            loss = loss + l_fwd
            if method == "cwgan":
                fake = complex_to_channels(pred)
                cond = complex_to_channels(batch["recon"])
                l_adv = -jnp.mean(critic.apply({"params": critic_params}, fake, cond))
                metrics["adv_loss"] = l_adv
                loss = loss + config.gamma * l_adv
        if method in ("back", "bi"):
            variables = {"params": params, **model_state}
            (images, info), updates = backward_images(
                network, variables, batch["target"], batch["zero_filled"], mode=mode,
                update_stats=method == "back")
            if updates is not None:
                model_state = {**model_state, **updates}
            l_back = backward_loss(images, batch["recon"])
            metrics["backward_loss"] = l_back
            metrics["inverse_residual"] = jnp.max(info.residual)
            loss = loss + (config.beta * l_back if method == "bi" else l_back)
        metrics["loss"] = loss
        return loss, (metrics, model_state)

    def step_generator(state: TrainState, batch, critic_params):
        grad_fn = jax.grad(generator_loss, has_aux=True)
        grads, (metrics, model_state) = grad_fn(state.params, state, batch, critic_params)
        # The power-iteration vectors depend on the weights only, not on the batch, so they stay
        # identical across replicas without a pmean.
        state = apply_mean_gradients(state, grads, model_state=model_state)
        return state, metrics

    if method != "cwgan":
        def train_step(state, batch, key):
            del key  # deterministic given the batch
            return step_generator(state, batch, None)
        return train_step

    def critic_loss(critic_params, fake, real, cond, key):
        fn = functools.partial(critic.apply, {"params": critic_params})
        d_real, d_fake = jnp.mean(fn(real, cond)), jnp.mean(fn(fake, cond))
        gp = _gradient_penalty(fn, real, fake, cond, key)
        return d_fake - d_real + config.gp_weight * gp, (d_real - d_fake, gp)

    def train_step(state, batch, key):
        gen, crit = state["generator"], state["critic"]
        pred = sharpen(network, gen.variables(), batch["recon"])
        fake = jax.lax.stop_gradient(complex_to_channels(pred))
        real = complex_to_channels(batch["target"])
        cond = complex_to_channels(batch["recon"])
        grads, (w_dist, gp) = jax.grad(critic_loss, has_aux=True)(crit.params, fake, real, cond,
                                                                  key)
        crit = apply_mean_gradients(crit, grads)
        gen, metrics = step_generator(gen, batch, crit.params)
        metrics = {**metrics, "wasserstein": w_dist, "gradient_penalty": gp}
        return {"generator": gen, "critic": crit}, metrics

    return train_step


def create_states(key: jax.Array, config: InvSharpConfig, method: Method, image_shape,
                  *, learning_rate: float = 1e-3, critic_learning_rate: float = 1e-4,
                  conv_general_dilated: Callable = lax.conv_general_dilated) -> Any:
    """Initial train state(s) for ``method`` on images of ``image_shape = (H, W)``; the states'
    ``apply_fn`` convolve with ``conv_general_dilated``.

    Adam with the paper's learning rate 1e-3 for the network; the critic uses Adam 1e-4 with
    betas (0.5, 0.9) (WGAN-GP's choice; the paper gives no critic settings).
    """
    h, w = image_shape
    network = build_network(config, conv_general_dilated=conv_general_dilated)
    net_key, critic_key = jax.random.split(key)
    # Jitted: run eagerly, init compiled ~100 small programs one by one (cpu preset: 16 s;
    # jitted 14 s, mostly compiling the random initialisers).
    variables = jax.jit(network.init)(net_key, jnp.zeros((1, h, w, 4), jnp.float32))
    gen = TrainState.create(apply_fn=network.apply, params=variables["params"],
                            tx=optax.adam(learning_rate),
                            model_state={k: v for k, v in variables.items() if k != "params"})
    if method != "cwgan":
        return gen
    critic = Critic(features=tuple(config.critic_features),
                    conv_general_dilated=conv_general_dilated)
    dummy = jnp.zeros((1, h, w, 2), jnp.float32)
    crit = TrainState.create(apply_fn=critic.apply,
                             params=critic.init(critic_key, dummy, dummy)["params"],
                             tx=optax.adam(critic_learning_rate, b1=0.5, b2=0.9))
    return {"generator": gen, "critic": crit}

