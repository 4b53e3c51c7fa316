"""Step cases of paper 001 (DSGAN + EDSR): the downsampling-GAN step and the EDSR L1 step.

Two :class:`~benchmarks._common.StepCase` rows, built as ``experiments/dsgan_sr.py`` builds its
training (``PRESETS['cpu']``, or ``PRESETS['paper']`` with ``paper=True``):

* ``"DSGAN generator+discriminator"``: one update of
  :func:`jaxmri.models.dsgan.make_gan_train_step` (``train_dsgan``): the deep linear generator
  (valid 7, 5, 3, 1, 1, 1 convs, no bias, stride 2 last) and the Sobel-input patch discriminator
  (spectrally normalised 7x7 conv, six SN 1x1 convs with BatchNorm + ReLU between, sigmoid).
  The generator loss is ``mean|D(G(x)) - 1|`` plus the bicubic loss and eq. 3's kernel
  regularisers (sum-to-one, boundaries, sparsity, centre of mass) of the kernel ``G^T(1)``
  extracted in one transposed pass (both sides), weighted by the dynamic schedule; the
  discriminator loss is ``mean|D(y) - 1| + mean|D(G(x))|`` with one power-iteration step per
  update. Both Adams (betas 0.5, 0.999; rate / 10 every 750 steps) step once. Batch
  ``{'hr': (B, 48, 48), 'lr': (B, 18, 18)}`` float32 at the cpu preset (B = 2; paper: B = 1,
  64 / 26).
* ``"EDSR"``: one update of :func:`jaxmri.models.dsgan.make_l1_train_step` on
  :class:`jaxmri.nn.edsr.EDSR` (``train_edsr``; cpu: 4 blocks, 32 features; paper: 16, 64) with
  Adam: ``mean|EDSR(lr) - hr|``, batch ``{'input': (16, 16, 16), 'target': (16, 32, 32)}``
  float32 at the cpu preset (paper: 48 / 96).

Inputs are a smooth synthetic phantom (ellipses, values in [0, 1]) and its "scanner" LR image
(the true scanner kernel of :mod:`jaxmri.physics.lowres`, x2), cropped deterministically with
``np.random.default_rng(0)``; both implementations get the same arrays.

The PyTorch side (when ``with_torch`` and torch imports) is an eager NCHW float32 reference of
the same networks, losses and optimisers, started from the JAX initial parameters (and the JAX
spectral-norm power-iteration vectors). At build time the first steps of both are run on the
batch and every loss term must agree (:data:`_RTOL`): three steps for EDSR, which checks the
Adam settings as well as the network and loss; two for the GAN (:data:`_CHECK_STEPS` says why).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import StepCase, jax_case
from jaxmri.cpu import conv_for
from jaxmri.models import dsgan
from jaxmri.nn.edsr import EDSR
from jaxmri.physics.lowres import downsample_with_kernel, scanner_kernel
from jaxmri.train import (
    create_train_state,
    make_parallel_step,
    replicate,
    shard_batch,
    unreplicate,
)

__all__ = ["cases"]

# The names of the rows cases() builds (step_time --only skips modules without a match).
CASE_NAMES = ('DSGAN generator+discriminator', 'EDSR')

# Tolerance of the equivalence check, per step: relative difference of every loss term at step
# 1 (same parameters, same batch), 2 (after the first Adam update: learning rate and epsilon) and
# 3 (after the second: the betas, which the first update ``-lr g / (|g| + eps)`` does not see).
_RTOL = {1: 1e-4, 2: 1e-3, 3: 1e-3}
# Steps checked per case. The GAN stops at 2: its initial kernel sums to ~2e-7 (the deep linear
# generator's gain-0.1 init), Adam's near-sign updates of 1e-3 are large against weights of
# ~3e-3, and float32 rounding differences grow chaotically: at step 3 the terms of two correct
# implementations differed by up to 1.5e-3 (sparsity) and 16 % (centre of mass, which divides
# by the kernel sum), at step 4 by 0.5 % in the adversarial loss. Its betas are therefore
# checked by construction only (the arguments below mirror dsgan.create_gan_state).
_CHECK_STEPS = {"gan": 2, "edsr": 3}
_SEED = 0


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _phantom(rng: np.random.Generator, size: int, count: int = 6) -> np.ndarray:
    """``(count, size, size)`` float32 smooth ellipse phantoms in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    t = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    out = np.zeros((count, size, size), np.float64)
    for n in range(count):
        for _ in range(10):
            cy, cx = rng.uniform(-0.5, 0.5, 2)
            ay, ax = rng.uniform(0.1, 0.6, 2)
            angle = rng.uniform(0.0, np.pi)
            u = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)
            v = -np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)
            out[n] += rng.uniform(0.1, 0.5) * ((u / ax) ** 2 + (v / ay) ** 2 <= 1.0)
        out[n] = gaussian_filter(out[n], sigma=0.02 * size)
    out /= max(out.max(), 1e-12)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _hr_lr_slices(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """HR phantoms ``(N, S, S)`` and their scanner-kernel x2 LR images ``(N, S/2, S/2)``."""
    hr = _phantom(np.random.default_rng(_SEED), image_size)
    lr = np.asarray(jax.jit(downsample_with_kernel)(hr, scanner_kernel()))
    return hr, lr


def _crops(rng: np.random.Generator, images: np.ndarray, crop: int, count: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` square crops of ``(N, S, S)`` ``images`` and their ``(index, y, x)`` rows."""
    idx = rng.integers(0, len(images), count)
    corners = rng.integers(0, images.shape[-1] - crop + 1, (count, 2))
    out = np.stack([images[i, y:y + crop, x:x + crop] for i, (y, x) in zip(idx, corners)])
    return out.astype(np.float32), np.concatenate([idx[:, None], corners], axis=1)


# --------------------------------------------------------------------------------------------
# The JAX side, as experiments/dsgan_sr.py builds it
# --------------------------------------------------------------------------------------------


def _gan_setup(preset) -> dict[str, Any]:
    conv = dict(conv_general_dilated=conv_for())  # as the experiment's setup picks it
    generator = dsgan.DeepLinearGenerator(features=preset.gan_features, **conv)
    discriminator = dsgan.PatchDiscriminator(features=preset.gan_features, **conv)
    # train_dsgan's schedule period for a run of preset.gan_steps steps.
    update_every = max(1, min(200, preset.gan_steps // 3))
    state = dsgan.create_gan_state(jax.random.PRNGKey(_SEED), generator, discriminator,
                                   hr_crop=preset.gan_hr_crop,
                                   learning_rate=preset.gan_learning_rate, lr_decay_every=750)
    lr_crop = generator.output_size(preset.gan_hr_crop)
    hr, lr = _hr_lr_slices(preset.image_size)
    rng = np.random.default_rng(_SEED)
    batch = {"hr": _crops(rng, hr, preset.gan_hr_crop, preset.gan_batch)[0],
             "lr": _crops(rng, lr, lr_crop, preset.gan_batch)[0]}
    return {"generator": generator, "state": state, "batch": batch, "update_every": update_every,
            "train_step": dsgan.make_gan_train_step(generator, update_every=update_every)}


def _edsr_setup(preset) -> dict[str, Any]:
    module = EDSR(num_blocks=preset.edsr_blocks, features=preset.edsr_features, scale=2,
                  conv_general_dilated=conv_for())
    crop = preset.edsr_lr_crop
    variables = jax.jit(module.init)(jax.random.PRNGKey(_SEED),
                                     jnp.zeros((1, crop, crop, 1), jnp.float32))
    state = create_train_state(module, optax.adam(preset.edsr_learning_rate), variables)
    hr, lr = _hr_lr_slices(preset.image_size)
    rng = np.random.default_rng(_SEED)
    lo, where = _crops(rng, lr, crop, preset.edsr_batch)
    hi = np.stack([hr[i, 2 * y:2 * (y + crop), 2 * x:2 * (x + crop)] for i, y, x in where])
    return {"module": module, "state": state,
            "batch": {"input": lo, "target": hi.astype(np.float32)},
            # train_edsr's step (experiments/dsgan_sr.py _L1_STEP).
            "train_step": dsgan.make_l1_train_step(input_key="input", target_key="target")}


def _jax_metrics(train_step, state, batch, steps: int) -> list[dict[str, float]]:
    """Host metrics of the first ``steps`` pmapped updates (as ``fit`` runs them)."""
    pstep = make_parallel_step(train_step)
    n = jax.local_device_count()
    rstate, rbatch = replicate(state), shard_batch(dict(batch), num_local_devices=n)
    stop = np.zeros((n,), np.int32)
    out = []
    for step in range(steps):
        rstate, metrics, _ = pstep(rstate, rbatch, jax.random.PRNGKey(_SEED), step, stop)
        out.append({k: float(v) for k, v in unreplicate(metrics).items()})
    return out


def _check(name: str, jax_runs: list[dict[str, float]], torch_runs: list[dict[str, float]]
           ) -> list[float]:
    """Assert that every common loss term agrees within :data:`_RTOL`; returns the worst
    relative difference of each step."""
    worst = []
    for step, (ref, got) in enumerate(zip(jax_runs, torch_runs), start=1):
        common = sorted(set(ref) & set(got))
        if not common:
            raise AssertionError(f"{name}: no loss term to compare at step {step}")
        worst.append(0.0)
        for key in common:
            a, b = ref[key], got[key]
            rel = abs(a - b) / max(abs(a), 1e-6)
            worst[-1] = max(worst[-1], rel)
            if not rel <= _RTOL[step]:
                raise AssertionError(
                    f"{name}: torch and JAX disagree at step {step} on {key!r}: "
                    f"{b!r} vs {a!r} (relative {rel:.2e} > {_RTOL[step]:.0e})")
    return worst


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _case(name: str, setup, preset, image_size: int, torch_builder, with_torch: bool, *,
          check_steps: int) -> StepCase:
    from benchmarks.torch_ref.dsgan import _torch_reference

    torch_step = torch_params = None
    if with_torch and _have_torch():
        step, torch_params = torch_builder(_torch_reference(), setup, preset)
        torch_runs = [step() for _ in range(check_steps)]
        jax_runs = _jax_metrics(setup["train_step"], setup["state"], setup["batch"], check_steps)
        worst = _check(name, jax_runs, torch_runs)
        print(f"{name}: torch matches JAX, worst relative loss difference "
              + ", ".join(f"step {i}: {w:.1e}" for i, w in enumerate(worst, start=1)))

        def torch_step() -> None:
            step()

    case = jax_case(name, train_step=setup["train_step"], state=setup["state"],
                    batch=setup["batch"], params=_trainable(setup["state"]),
                    image_size=image_size)
    case.torch_step, case.torch_params = torch_step, torch_params
    return case


def _trainable(state) -> Any:
    if isinstance(state, dict):
        return {k: v.params for k, v in state.items() if hasattr(v, "params")}
    return state.params


def cases(*, paper: bool = False, with_torch: bool = True) -> list[StepCase]:
    """The DSGAN GAN step and the EDSR L1 step at the cpu (or paper) preset of dsgan_sr.

    ``image_size`` in the rows is the network input's side: the HR crop for the GAN (the
    generator's input), the LR crop for EDSR. With torch, each builder asserts the
    equivalence of the first steps' losses before returning (AssertionError otherwise).
    """
    from benchmarks.torch_ref.dsgan import _torch_edsr_step, _torch_gan_step
    from experiments import dsgan_sr

    preset = dsgan_sr.PRESETS["paper" if paper else "cpu"]
    return [
        _case("DSGAN generator+discriminator", _gan_setup(preset), preset, preset.gan_hr_crop,
              _torch_gan_step, with_torch, check_steps=_CHECK_STEPS["gan"]),
        _case("EDSR", _edsr_setup(preset), preset, preset.edsr_lr_crop, _torch_edsr_step,
              with_torch, check_steps=_CHECK_STEPS["edsr"]),
    ]

