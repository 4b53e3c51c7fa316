"""Realistic downsampling GAN (paper 001, Huang et al. 2021) and its pixel-wise DSN baseline.

A deep *linear* generator learns the unknown x2 degradation of real LR scans from unpaired HR
and LR patches (a KernelGAN-style GAN, Bell-Kligler et al. 2019); a patch discriminator with
Sobel edge inputs judges 7x7 LR patches. The learned kernel then builds LR/HR training pairs for
an SR network (:class:`jaxmri.nn.edsr.EDSR`).

Conventions: networks see NHWC float32 arrays with one channel; images are real magnitudes in
``[0, 1]``; a downsampling kernel acts by correlation then x2 subsampling
(:func:`jaxmri.physics.lowres.downsample_with_kernel`), so ``G(x) = (x correlated with k)[::2,
::2]`` on the valid region and ``k = extract_kernel(...)`` is that ``k``, centred on its central
pixel ``(K // 2, K // 2)`` when it matches bicubic downscaling on the package's sampling grid
(:func:`jaxmri.physics.grid_position`: LR pixel ``i`` on HR pixel ``2 i``, where the k-space
crop puts it).

Contents:

* :func:`sobel_edges`: eq. 1's Sobel x/y maps (convolution, replicated borders).
* :class:`DeepLinearGenerator` (7, 5, 3, 1, 1, 1 valid convs, no bias, no activation, stride 2
  in the last layer) and :func:`extract_kernel` (its response to deltas, 13x13).
* :class:`PatchDiscriminator`: SN conv 7x7 then six SN 1x1 convs (BatchNorm + ReLU between),
  sigmoid map.
* :func:`kernel_regularisers` (eq. 3: sum-to-one, boundaries, sparsity, centre of mass),
  :func:`bicubic_loss`, the dynamic weight schedule :func:`initial_schedule` /
  :func:`update_schedule`, and :func:`make_gan_train_step` (eq. 2 + eq. 3) for
  :func:`jaxmri.train.fit` with a dict state ``{'generator', 'discriminator', 'schedule'}``.
* Host-side patch sampling: :func:`gradient_crop_probabilities`, :func:`gan_batches` (unpaired
  HR/LR crops drawn with gradient-magnitude probabilities), :func:`sr_batches` (paired crops with
  the eight-fold dihedral augmentation), :func:`dihedral`.
* :class:`DownsamplingNet` (the DSN of Chun et al. 2019, non-linear, strided) and
  :func:`make_l1_train_step` (pixel-wise L1 regression, used for the DSN and for EDSR).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from scipy.ndimage import uniform_filter

from jaxmri._checks import check_ndim, check_positive
from jaxmri.nn.layers import Conv
from jaxmri.nn.spectral import SpectralNormConv
from jaxmri.physics.degrade import bicubic_resize
from jaxmri.train import AXIS_NAME, apply_mean_gradients, create_train_state, pmean_tree

__all__ = [
    "SOBEL_X",
    "SOBEL_Y",
    "sobel_edges",
    "DeepLinearGenerator",
    "extract_kernel",
    "PatchDiscriminator",
    "penalty_mask",
    "kernel_regularisers",
    "bicubic_loss",
    "initial_schedule",
    "update_schedule",
    "create_gan_state",
    "make_gan_train_step",
    "gradient_crop_probabilities",
    "gan_batches",
    "dihedral",
    "sr_batches",
    "DownsamplingNet",
    "make_l1_train_step",
]

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
SOBEL_Y = SOBEL_X.T.copy()


def _check_nhwc1(x, name: str) -> None:
    check_ndim(x, name, ndim=4)
    if np.shape(x)[-1] != 1:
        raise ValueError(f"{name} must be NHWC with one channel, got shape {np.shape(x)}")


def sobel_edges(x: jax.Array) -> jax.Array:
    """Eq. 1: convolve with the Sobel operators ``S_x`` and ``S_y`` (replicated borders).

    Args:
      x: ``(N, H, W, 1)`` float.

    Returns:
      ``(N, H, W, 2)``: channel 0 is ``x * S_x``, channel 1 ``x * S_y`` (true convolution, as
      ``scipy.ndimage.convolve(..., mode='nearest')``).
    """
    _check_nhwc1(x, "x")
    # Convolution = correlation with the flipped operator.
    kernel = np.stack([SOBEL_X[::-1, ::-1], SOBEL_Y[::-1, ::-1]], axis=-1)[:, :, None, :]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return lax.conv_general_dilated(
        padded, jnp.asarray(kernel, x.dtype), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)


class DeepLinearGenerator(nn.Module):
    """Deep linear downsampler: valid convs of sizes ``kernel_sizes``, no bias, no activation.

    Only the last layer has stride ``scale``. With ``(7, 5, 3, 1, 1, 1)`` the receptive field is
    13x13 and a 64x64 input gives a 26x26 output. Call on ``(N, H, W, 1)``; returns
    ``(N, (H - 12 - 1) // 2 + 1, ..., 1)``.
    """

    features: int = 64
    kernel_sizes: Sequence[int] = (7, 5, 3, 1, 1, 1)
    scale: int = 2
    # KernelGAN's initialisation: Xavier normal with gain 0.1, so the initial kernel is small
    # and the bicubic term, not the random start, shapes it first.
    kernel_init: Callable = nn.initializers.variance_scaling(0.01, "fan_avg", "normal")
    conv_general_dilated: Callable = lax.conv_general_dilated

    @property
    def kernel_size(self) -> int:
        """Receptive field = size of the equivalent kernel."""
        return int(sum(k - 1 for k in self.kernel_sizes) + 1)

    def output_size(self, input_size: int) -> int:
        """Side of the output for a square ``input_size`` input (valid convolutions, last one
        strided): the LR crop that matches an HR crop, e.g. 64 -> 26 for the paper's GAN."""
        return (input_size - self.kernel_size) // self.scale + 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_nhwc1(x, "x")
        n = len(self.kernel_sizes)
        for i, k in enumerate(self.kernel_sizes):
            last = i == n - 1
            x = Conv(1 if last else self.features, (k, k),
                        strides=(self.scale, self.scale) if last else (1, 1),
                        padding="VALID", use_bias=False, kernel_init=self.kernel_init,
                        name=f"conv{i}", conv_general_dilated=self.conv_general_dilated)(x)
        return x


def extract_kernel(generator: DeepLinearGenerator, params: Any) -> jax.Array:
    """The generator's equivalent ``(K, K)`` kernel, ``k[a, b] = G(e_ab)`` for the deltas ``e_ab``.

    A ``K x K`` input gives one output pixel and ``G(x)[i, j] = sum_ab k[a, b] x[2 i + a, 2 j + b]``
    for every input (the generator is linear), so ``k`` is the transpose of ``G`` applied to a
    single 1 (computed that way). Differentiable in ``params``.
    """
    size = generator.kernel_size

    # G is linear, so k = G^T(1): one transposed pass through the layers on a 1x1 output instead
    # of K*K forward passes on delta images (about 3x faster GAN steps on CPU, where XLA's
    # convolutions of 13x13 images are slow). Reading the kernel off the transpose is exact.
    def forward(image):
        return generator.apply({"params": params}, image)

    template = jnp.zeros((1, size, size, 1), jnp.float32)
    (kernel,) = jax.linear_transpose(forward, template)(jnp.ones((1, 1, 1, 1), jnp.float32))
    return kernel.reshape(size, size)


class PatchDiscriminator(nn.Module):
    """Fully convolutional patch discriminator fed ``[x, S_x x, S_y x]`` (paper 001 Fig. 2c).

    SN conv 7x7 (valid, no activation), then ``num_1x1 - 1`` blocks of [SN 1x1 conv,
    BatchNorm, ReLU], then an SN 1x1 conv to one channel and a sigmoid: one probability per 7x7
    patch (KernelGAN's discriminator; the paper names the spectral norm, KernelGAN's source adds
    the BatchNorm, without which a spectrally normalised 7-layer net barely moves from 0.5).

    Call ``(x (N, H, W, 1), *, train=False, update_stats=False)``; returns
    ``(N, H - 6, W - 6, 1)`` in (0, 1). ``train=True`` normalises with the batch statistics,
    averaged over the devices of the pmap axis ``axis_name`` (default
    :data:`jaxmri.train.AXIS_NAME`, i.e. inside ``fit``; ``None`` outside any pmap), and needs
    ``mutable=['batch_stats']``; ``update_stats=True`` runs one power-iteration step
    and needs ``mutable=['spectral']``.
    """

    features: int = 64
    num_1x1: int = 6
    batch_norm: bool = True
    axis_name: str | None = AXIS_NAME
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False,
                 update_stats: bool = False) -> jax.Array:
        _check_nhwc1(x, "x")
        h = jnp.concatenate([x, sobel_edges(x)], axis=-1)
        h = SpectralNormConv(self.features, (7, 7), coeff=1.0, padding="VALID",
                             name="conv7",
                             conv_general_dilated=self.conv_general_dilated)(
            h, update_stats=update_stats)
        for i in range(self.num_1x1):
            last = i == self.num_1x1 - 1
            # The operator norm of a 1x1 conv does not depend on the image size.
            h = SpectralNormConv(1 if last else self.features, (1, 1), coeff=1.0,
                                 norm_shape=(1, 1), name=f"conv1x1_{i}",
                                 conv_general_dilated=self.conv_general_dilated)(
                h, update_stats=update_stats)
            if not last:
                if self.batch_norm:
                    h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     axis_name=self.axis_name if train else None,
                                     name=f"bn{i}")(h)
                h = nn.relu(h)
        return nn.sigmoid(h)


def penalty_mask(size: int, *, scale: float = 30.0) -> np.ndarray:
    """Boundary mask ``m`` of eq. 3: ``scale (1 - g / max g)`` on the outer ring, 0 inside.

    ``g`` is a Gaussian of standard deviation ``size`` centred on the kernel; the zeroed centre
    is ``[margin, size - margin)`` with ``margin = (size - (size // 2 + size % 2)) // 2 - 1``
    (KernelGAN's: for 13x13 the outer two rows and columns are penalised).
    """
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (t[:, None] ** 2 + t[None, :] ** 2) / size**2)
    mask = scale * (1.0 - g / g.max())
    margin = (size - (size // 2 + size % 2)) // 2 - 1
    if margin > 0:
        mask[margin:-margin, margin:-margin] = 0.0
    return mask.astype(np.float32)


def kernel_regularisers(kernel: jax.Array) -> dict[str, jax.Array]:
    """Eq. 3's kernel terms for a ``(K, K)`` kernel.

    * ``sum2one``: ``|1 - sum k|``;
    * ``boundaries``: ``mean |k * m|`` with ``m = penalty_mask(K)``;
    * ``sparse``: ``mean |k|^0.2``;
    * ``center``: Euclidean distance of the centre of mass ``sum k (i, j) / sum k`` to
      ``(c, c)``, ``c = (K - 1) / 2`` (6 for 13x13: the central pixel, which puts LR pixel ``i``
      on HR pixel ``2 i`` like the k-space crop and bicubic downscaling; KernelGAN's 6.5 belongs
      to the half-pixel grid of MATLAB's ``imresize``, which this package does not use).
    """
    check_ndim(kernel, "kernel", ndim=2)
    size = kernel.shape[0]
    idx = jnp.arange(size, dtype=jnp.float32)
    total = jnp.sum(kernel)
    centre = (size - 1) / 2
    com = jnp.stack([jnp.sum(kernel.sum(axis=1) * idx), jnp.sum(kernel.sum(axis=0) * idx)]) / total
    # |k|^0.2 has an infinite derivative at 0; the epsilon keeps gradients finite.
    sparse = jnp.mean((jnp.abs(kernel) + 1e-8) ** 0.2)
    return {
        "sum2one": jnp.abs(1.0 - total),
        "boundaries": jnp.mean(jnp.abs(kernel * penalty_mask(size))),
        "sparse": sparse,
        "center": jnp.sqrt(jnp.sum(jnp.square(com - centre)) + 1e-12),
    }


def bicubic_loss(hr: jax.Array, g_out: jax.Array, *, scale: int = 2) -> jax.Array:
    """``mean |G(x) - bicubic(x)|``: the bicubic x2 downscaling shaved to G's output size.

    ``hr`` ``(N, H, W, 1)``, ``g_out`` ``(N, h, w, 1)``; the shave is ``(H / 2 - h) / 2`` per
    side. For ``H / 2`` even that is ``K // 4`` (3 for 13x13): G's output ``j`` is centred on HR
    pixel ``2 j + K // 2`` for a kernel centred at ``K // 2``, bicubic's output ``j + 3`` on HR
    pixel ``2 j + 6`` (:func:`jaxmri.physics.grid_position`), so the two grids line up.
    """
    size = hr.shape[1] // scale, hr.shape[2] // scale
    down = bicubic_resize(hr[..., 0], size)
    oy, ox = (size[0] - g_out.shape[1]) // 2, (size[1] - g_out.shape[2]) // 2
    down = down[:, oy : oy + g_out.shape[1], ox : ox + g_out.shape[2]]
    return jnp.mean(jnp.abs(g_out[..., 0] - down))


_LAMBDA_START = {"bicubic": 5.0, "sum2one": 0.5, "boundaries": 0.5, "center": 0.0, "sparse": 0.0}
_LAMBDA_END = {"center": 1.0, "sparse": 5.0}


def initial_schedule() -> dict[str, jax.Array]:
    """The regulariser weights at the start (paper 001 section 2.A.2) and the schedule's flags."""
    out = {name: jnp.float32(value) for name, value in _LAMBDA_START.items()}
    out.update(below_count=jnp.int32(0), similar=jnp.int32(0))
    return out


def update_schedule(schedule: Mapping[str, jax.Array], step: jax.Array, bic: jax.Array, *,
                    update_every: int = 200, threshold: float = 0.4, decay: float = 0.01,
                    lambda_bicubic_min: float = 5e-6) -> dict[str, jax.Array]:
    """One step of the dynamic weights (KernelGAN's learner, as paper 001 describes it).

    Until the bicubic loss has been below ``threshold`` on three consecutive steps, nothing
    changes. After that, every ``update_every`` steps ``lambda_bicubic *= decay`` (floored at
    ``lambda_bicubic_min``); once it drops below 0.005, ``lambda_center = 1`` and
    ``lambda_sparse = 5``. Pure and traceable; ``step`` is the number of updates done so far.
    """
    s = dict(schedule)
    similar = s["similar"] > 0
    below = bic < threshold
    count = jnp.where(below, s["below_count"] + 1, 0)
    becomes_similar = (~similar) & below & (s["below_count"] >= 2)
    decay_now = similar & (step > 0) & (step % update_every == 0) & (
        s["bicubic"] > lambda_bicubic_min)
    bicubic = jnp.where(decay_now, jnp.maximum(s["bicubic"] * decay, lambda_bicubic_min),
                        s["bicubic"])
    constraints = decay_now & (bicubic < 5e-3)
    return {
        "bicubic": bicubic.astype(jnp.float32),
        "sum2one": s["sum2one"],
        "boundaries": s["boundaries"],
        "center": jnp.where(constraints, _LAMBDA_END["center"], s["center"]).astype(jnp.float32),
        "sparse": jnp.where(constraints, _LAMBDA_END["sparse"], s["sparse"]).astype(jnp.float32),
        "below_count": jnp.where(similar, s["below_count"], count).astype(jnp.int32),
        "similar": jnp.where(similar | becomes_similar, 1, 0).astype(jnp.int32),
    }


def create_gan_state(key: jax.Array, generator: DeepLinearGenerator,
                     discriminator: PatchDiscriminator, *, hr_crop: int,
                     learning_rate: float = 2e-4, b1: float = 0.5,
                     lr_decay_every: int = 750) -> dict:
    """``{'generator', 'discriminator', 'schedule'}`` for :func:`make_gan_train_step`.

    Adam(``learning_rate``, betas ``(b1, 0.999)``) for both nets, the rate divided by 10 every
    ``lr_decay_every`` steps (KernelGAN); the discriminator is initialised on G's output size.
    """
    check_positive(learning_rate, "learning_rate")
    g_key, d_key = jax.random.split(key)
    hr = jnp.zeros((1, hr_crop, hr_crop, 1), jnp.float32)
    g_vars = generator.init(g_key, hr)
    lr_size = generator.apply(g_vars, hr).shape[1]
    if lr_size < 7:
        raise ValueError(f"hr_crop {hr_crop} gives a {lr_size}x{lr_size} generator output, "
                         "smaller than the discriminator's 7x7 window")
    d_vars = discriminator.init(d_key, jnp.zeros((1, lr_size, lr_size, 1), jnp.float32))
    schedule = optax.exponential_decay(learning_rate, lr_decay_every, 0.1, staircase=True)
    tx = optax.adam(schedule, b1=b1, b2=0.999)
    return {
        "generator": create_train_state(generator, tx, g_vars),
        "discriminator": create_train_state(discriminator, tx, d_vars),
        "schedule": initial_schedule(),
    }


def make_gan_train_step(generator: DeepLinearGenerator, *, update_every: int = 200,
                        scale: int = 2) -> Callable:
    """``train_step(state, batch, key)`` of eqs. 2-3 for :func:`jaxmri.train.fit`.

    ``batch = {'hr': (B, H, W) HR crops, 'lr': (B, h, w) real LR crops}`` (unpaired; ``h`` = G's
    output size). The discriminator minimises ``mean|D(y) - 1| + mean|D(G(x))|``; the generator
    ``mean|D(G(x)) - 1| + R`` with ``R`` weighted by ``state['schedule']`` (eq. 3), which is
    then advanced by :func:`update_schedule` using the device-averaged bicubic loss.
    """

    def train_step(state, batch, key):
        del key
        g_state, d_state, sched = state["generator"], state["discriminator"], state["schedule"]
        hr = batch["hr"][..., None]
        real = batch["lr"][..., None]

        d_mutable = list(d_state.model_state)

        def g_loss_fn(g_params):
            fake = g_state.apply_fn({"params": g_params}, hr)
            # D in training mode (batch statistics) as in KernelGAN; its state updates from
            # this pass are discarded.
            d_fake, _ = d_state.apply_fn(d_state.variables(), fake, train=True,
                                         mutable=d_mutable)
            adv = jnp.mean(jnp.abs(d_fake - 1.0))
            kernel = extract_kernel(generator, g_params)
            reg = kernel_regularisers(kernel)
            bic = bicubic_loss(hr, fake, scale=scale)
            total = adv + sched["bicubic"] * bic + sum(sched[n] * reg[n] for n in reg)
            return total, (fake, {"g_adv": adv, "bicubic": bic, **reg})

        (g_total, (fake, g_metrics)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
            g_state.params)
        fake = lax.stop_gradient(fake)

        def d_loss_fn(d_params):
            variables = d_state.variables(d_params)
            d_real, new_ms = d_state.apply_fn(variables, real, train=True, update_stats=True,
                                              mutable=d_mutable)
            d_fake, new_ms = d_state.apply_fn({**variables, **new_ms}, fake, train=True,
                                              mutable=d_mutable)
            loss = jnp.mean(jnp.abs(d_real - 1.0)) + jnp.mean(jnp.abs(d_fake))
            return loss, new_ms

        (d_loss, new_ms), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_state.params)
        g_state = apply_mean_gradients(g_state, g_grads)
        d_state = apply_mean_gradients(d_state, d_grads, model_state=dict(new_ms))
        bic_mean = pmean_tree(g_metrics["bicubic"])
        sched = update_schedule(sched, g_state.step - 1, bic_mean, update_every=update_every)
        metrics = {"g_loss": g_total, "d_loss": d_loss, **g_metrics,
                   "lambda_bicubic": sched["bicubic"]}
        return {"generator": g_state, "discriminator": d_state, "schedule": sched}, metrics

    return train_step


# --------------------------------------------------------------------------------------------
# Host-side patch sampling (numpy)
# --------------------------------------------------------------------------------------------


def gradient_crop_probabilities(image: np.ndarray, crop: int) -> np.ndarray:
    """Probabilities of each crop's top-left corner, proportional to its mean gradient magnitude.

    Args:
      image: ``(H, W)`` real.
      crop: crop size ``<= min(H, W)``.

    Returns:
      ``(H - crop + 1, W - crop + 1)`` float64 summing to 1 (uniform for a constant image).
    """
    check_ndim(image, "image", ndim=2)
    height, width = image.shape
    if not 0 < crop <= min(height, width):
        raise ValueError(f"crop must be in [1, {min(height, width)}], got {crop}")
    gy, gx = np.gradient(np.asarray(image, np.float64))
    magnitude = uniform_filter(np.hypot(gy, gx), size=crop, mode="constant")
    # uniform_filter centres the window at index crop // 2 from the corner.
    start = crop // 2
    valid = magnitude[start : start + height - crop + 1, start : start + width - crop + 1]
    valid = np.maximum(valid, 0.0) + 1e-12
    return valid / valid.sum()


def _sample_crops(rng: np.random.Generator, images: np.ndarray, probs: np.ndarray, crop: int,
                  count: int) -> np.ndarray:
    index = rng.integers(0, len(images), size=count)
    out = np.empty((count, crop, crop), np.float32)
    for n, i in enumerate(index):
        p = probs[i].ravel()
        flat = rng.choice(p.size, p=p)
        y, x = divmod(int(flat), probs[i].shape[1])
        out[n] = images[i, y : y + crop, x : x + crop]
    return out


def gan_batches(hr: np.ndarray, lr: np.ndarray, *, hr_crop: int, lr_crop: int, batch_size: int,
                seed: int) -> Callable[[int], dict[str, np.ndarray]]:
    """``batch_fn(step)`` of unpaired HR and LR crops, positions drawn by gradient magnitude.

    HR crops come from random slices of ``hr`` ``(N, H, W)``, LR crops independently from random
    slices of ``lr`` ``(M, h, w)`` (paper 001: "the selection of LR and HR patches was
    independent"). Deterministic in ``(seed, step)``.
    """
    check_ndim(hr, "hr", ndim=3)
    check_ndim(lr, "lr", ndim=3)
    hr_probs = np.stack([gradient_crop_probabilities(x, hr_crop) for x in hr])
    lr_probs = np.stack([gradient_crop_probabilities(y, lr_crop) for y in lr])

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, step]))
        return {"hr": _sample_crops(rng, hr, hr_probs, hr_crop, batch_size),
                "lr": _sample_crops(rng, lr, lr_probs, lr_crop, batch_size)}

    return batch_fn


def dihedral(x: np.ndarray, index: int) -> np.ndarray:
    """The ``index``-th (0..7) element of the dihedral group on the last two axes.

    ``index % 4`` quarter turns (``np.rot90``), then a left-right flip if ``index >= 4``: the
    eight rotations/flips of EDSR's augmentation.
    """
    if not 0 <= int(index) < 8:
        raise ValueError(f"index must be in [0, 8), got {index}")
    out = np.rot90(x, int(index) % 4, axes=(-2, -1))
    return np.flip(out, axis=-1) if index >= 4 else out


def sr_batches(lr: np.ndarray, hr: np.ndarray, *, lr_crop: int, batch_size: int, seed: int,
               scale: int = 2) -> Callable[[int], dict[str, np.ndarray]]:
    """``batch_fn(step)`` of paired crops ``{'lr': (B, c, c), 'hr': (B, s c, s c)}``, augmented.

    ``lr`` ``(N, h, w)`` and ``hr`` ``(N, s h, s w)`` are pairs; crops are uniform in position and
    transformed by one random :func:`dihedral` element each (the same for LR and HR).
    """
    check_ndim(lr, "lr", ndim=3)
    check_ndim(hr, "hr", ndim=3)
    if hr.shape[0] != lr.shape[0] or hr.shape[1:] != (scale * lr.shape[1], scale * lr.shape[2]):
        raise ValueError(f"hr must be lr scaled by {scale}, got {hr.shape} and {lr.shape}")
    if not 0 < lr_crop <= min(lr.shape[1:]):
        raise ValueError(f"lr_crop must be in [1, {min(lr.shape[1:])}], got {lr_crop}")

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, step]))
        lo = np.empty((batch_size, lr_crop, lr_crop), np.float32)
        hi = np.empty((batch_size, scale * lr_crop, scale * lr_crop), np.float32)
        for n in range(batch_size):
            i = rng.integers(len(lr))
            y = rng.integers(lr.shape[1] - lr_crop + 1)
            x = rng.integers(lr.shape[2] - lr_crop + 1)
            t = int(rng.integers(8))
            lo[n] = dihedral(lr[i, y : y + lr_crop, x : x + lr_crop], t)
            hi[n] = dihedral(hr[i, scale * y : scale * (y + lr_crop),
                                scale * x : scale * (x + lr_crop)], t)
        return {"lr": lo, "hr": hi}

    return batch_fn


# --------------------------------------------------------------------------------------------
# The pixel-wise baseline (DSN) and L1 regression
# --------------------------------------------------------------------------------------------


class DownsamplingNet(nn.Module):
    """Non-linear x2 downsampling CNN trained pixel-wise (the DSN of Chun et al. 2019).

    A strided 3x3 conv, ``num_layers - 2`` 3x3 convs with ReLU, and a 3x3 conv to one channel
    (SAME padding). Call on ``(N, H, W, 1)``; returns ``(N, H / 2, W / 2, 1)``.
    """

    features: int = 32
    num_layers: int = 4
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_nhwc1(x, "x")
        h = nn.relu(Conv(self.features, (3, 3), strides=(2, 2), name="down",
                         conv_general_dilated=self.conv_general_dilated)(x))
        for i in range(self.num_layers - 2):
            h = nn.relu(Conv(self.features, (3, 3), name=f"conv{i}",
                             conv_general_dilated=self.conv_general_dilated)(h))
        return Conv(1, (3, 3), name="out", conv_general_dilated=self.conv_general_dilated)(h)


def make_l1_train_step(*, input_key: str, target_key: str) -> Callable:
    """``train_step`` minimising ``mean |f(batch[input_key]) - batch[target_key]|``.

    Both are ``(B, H, W)`` images, given to the network as ``(B, H, W, 1)``. Used for EDSR
    (``lr -> hr``) and for the DSN (``hr -> lr``).
    """

    def train_step(state, batch, key):
        del key
        x = batch[input_key][..., None]
        y = batch[target_key][..., None]

        def loss_fn(params):
            return jnp.mean(jnp.abs(state.apply_fn(state.variables(params), x) - y))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_mean_gradients(state, grads), {"l1": loss}

    return train_step
