"""InvSharpNet step cases (paper 000): the backward training step and the forward refinement.

Two :class:`~benchmarks._common.StepCase` rows, both on the experiment's invertible network
(``experiments.invsharp.PRESETS[...]``: cpu = 4 blocks x 5 convs x 32 channels at 48 px, batch 4;
paper = 12 x 5 x 128 at 320 px, batch 8), Adam with the preset's learning rate:

* ``"InvSharpNet backward"`` (method ``back``, eq. 2): one power-iteration step per conv, the
  network inverted block by block with ``Unrolled(2)`` (two fixed-point iterations, gradients by
  autodiff through them), L1 against the blurry reconstruction, Adam update.
* ``"InvSharpNet forward refinement"`` (method ``forward``, eq. 1): one power-iteration step
  per conv, forward pass on ``(R, R)``, ``0.16 L1 + 0.84 (1 - MS-SSIM)``, Adam update.

The JAX side is the experiment's own step (:func:`jaxmri.models.invsharp.make_train_step` built
as ``experiments.invsharp.train_method`` builds it), pmapped by :func:`benchmarks._common.jax_case`.
The PyTorch side (optional) is an eager NCHW re-implementation: spectral-normalised convs with the
same power iteration (``v <- normalize(conv^T u)``, ``u <- normalize(conv v)``, ``sigma = <u,
conv v>``, kernel ``W / max(1, sigma / c)``; the transpose is ``conv_transpose2d``), ELU between
convs, the same fixed-point inverse and losses. Gradients through the inverse are plain autograd
through the two unrolled iterations, which is what a PyTorch implementation does without a custom
implicit backward (and what ``Unrolled`` does in JAX). The JAX initial parameters and
power-iteration vectors are copied into the torch modules; at build time the first step's loss
(JAX side: the method's loss composed from :mod:`jaxmri.models.invsharp`'s functions as the step
composes it) must agree to 1e-4 relative and its gradients to 1e-3 (relative L2 error of all
gradients together), or an ``AssertionError`` names the case. Both losses are deterministic
(no dropout or noise), so no forward-only fallback is needed.

Inputs (the same numpy arrays for both): ``batch_size`` slices of the embedded MNI152 template
(picked with ``np.random.default_rng(0)``), a simulated multi-coil acquisition with the preset's
equispaced 4x mask, coils and SNR (:func:`jaxmri.data.simulate.simulate_acquisition`): target
``I`` and zero-filled ``Y`` complex64 ``(B, S, S)``; the blurry reconstruction ``R`` is ``I``
blurred with a 1 px Gaussian (a stand-in for the recon model the experiment trains first).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from benchmarks._common import StepCase, jax_case
from jaxmri.cpu import conv_for

__all__ = ["cases", "invsharp_batch", "preset_cases"]

# The names of the rows cases() builds (step_time --only skips modules without a match).
CASE_NAMES = ('InvSharpNet backward', 'InvSharpNet forward refinement')

# Build-time equivalence tolerances (float32; the paths differ in summation order only).
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3


def invsharp_batch(preset: Any, batch_size: int) -> dict[str, np.ndarray]:
    """The benchmark batch: ``recon``, ``target``, ``zero_filled`` complex64 ``(B, S, S)``."""
    from jaxmri.data import load_slices
    from jaxmri.data.simulate import simulate_acquisition
    from jaxmri.physics import equispaced_column_mask
    from jaxmri.physics.degrade import gaussian_blur

    slices = load_slices(None, image_size=preset.image_size, split="train",
                         orientations=preset.orientations)
    n = slices["image"].shape[0]
    idx = np.sort(np.random.default_rng(0).choice(n, batch_size, replace=batch_size > n))
    mask_fn = functools.partial(equispaced_column_mask, center_fraction=preset.center_fraction,
                                acceleration=preset.acceleration)
    acq = simulate_acquisition(slices["image"][idx], mask_fn=mask_fn, seed=0, slice_index=idx,
                               num_coils=preset.num_coils, snr_db=preset.snr_db)
    target = acq["target"].astype(np.complex64)
    recon = np.asarray(gaussian_blur(target, sigma=1.0), np.complex64)
    return {"recon": recon, "target": target,
            "zero_filled": acq["zero_filled"].astype(np.complex64)}


def _jax_reference(network, config, method: str, state, batch) -> tuple[float, Any]:
    """First-step loss and gradients of ``method`` at ``state``, for the equivalence check.

    The loss is rebuilt from :mod:`jaxmri.models.invsharp`'s public functions exactly as
    ``make_train_step``'s generator loss composes them (that step returns no gradients); one
    ``value_and_grad`` compile gives both.
    """
    from jaxmri.models import invsharp as isn

    model_state = state.model_state

    def loss_fn(params):
        variables = {"params": params, **model_state}
        if method == "back":
            (images, _), _ = isn.backward_images(
                network, variables, batch["target"], batch["zero_filled"], mode=config.mode,
                update_stats=True)
            return isn.backward_loss(images, batch["recon"])
        out, _ = network.apply(variables, isn.pair(batch["recon"], batch["recon"]),
                               update_stats=True, mutable=["spectral"])
        return isn.forward_loss(isn.first_image(out), batch["target"], alpha=config.alpha)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(state.params)
    return float(loss), grads


def _case(name: str, preset: Any, method: str, batch: dict[str, np.ndarray],
          with_torch: bool) -> StepCase:
    from benchmarks.torch_ref.invsharp import _torch_step
    from jaxmri.models import invsharp as isn

    # As experiments.invsharp.train_method builds a method's run (seed 0).
    config = preset.network
    size = preset.image_size
    conv = conv_for()  # as the experiment's setup picks it
    state = isn.create_states(jax.random.key(0), config, method, (size, size),
                              learning_rate=preset.learning_rate, conv_general_dilated=conv)
    network = isn.build_network(config, conv_general_dilated=conv)
    train_step = isn.make_train_step(network, config, method,
                                     isn.Critic(tuple(config.critic_features),
                                                conv_general_dilated=conv))
    case = jax_case(name, train_step=train_step, state=state, batch=batch, params=state.params,
                    image_size=size)
    if with_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            return case
        loss, grads = _jax_reference(network, config, method, state, batch)
        case.torch_step, case.torch_params = _torch_step(
            name, config, method, state, batch, preset.learning_rate, loss, grads)
    return case


def cases(*, paper: bool = False, with_torch: bool = True) -> list[StepCase]:
    """The two InvSharpNet training steps at the cpu (or paper) preset; see the module doc.

    Each ``jax_step``/``torch_step`` call is one full update (power iteration, forward or
    inverse pass, loss, gradients, Adam) on the preset's global batch of complex64
    ``(B, S, S)`` images, and ends with the loss on the host.
    """
    from experiments.invsharp import PRESETS

    return preset_cases(PRESETS["paper" if paper else "cpu"], with_torch=with_torch)


def preset_cases(preset: Any, *, with_torch: bool = True) -> list[StepCase]:
    """:func:`cases` for any ``experiments.invsharp.Preset`` (e.g. the paper's network at the
    cpu preset's image size and batch, as :mod:`benchmarks.roofline` builds it)."""
    batch = invsharp_batch(preset, preset.batch_size)
    return [_case("InvSharpNet backward", preset, "back", batch, with_torch),
            _case("InvSharpNet forward refinement", preset, "forward", batch, with_torch)]

