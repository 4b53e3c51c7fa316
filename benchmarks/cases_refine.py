"""Step cases of paper 003 (RecNet and its adversarial refinement): JAX steps and PyTorch
references.

Both JAX steps are the experiment's own (:func:`experiments.refine.programs` at the preset,
seed 0): "RecNet" is :func:`jaxmri.models.refine.recnet_train_step` (DC-CNN 3 x 3 convs of
``recnet_features``, leaky ReLU 0.01, hard data consistency, complex MSE, Adam) as
``train_recnet`` builds it; "RecNet + refinement GAN" is the bound ``refine_train_step`` with the
state of ``train_refinement``: the frozen RecNet's forward, the gated refinement U-Net
(batch norm in training mode), the PatchGAN (batch norm, channel-wise dropout on its last three
layers), eq. 2 (non-saturating GAN + feature matching + VGG16 relu5_3 + L1 penalty), the
replay pool (80 images, p 0.5), one generator and one discriminator Adam update (beta1 0.5).

Batches (the experiment's ``RECON_KEYS``) come from :func:`jaxmri.data.acquire_slices` on smooth
phantoms with the experiment's 1-D Gaussian mask at 8x and 30 dB noise, single coil:
``zero_filled`` ``(B, H, W)`` c64, ``kspace`` ``(B, 1, H, W)`` c64, ``mask`` ``(B, H, W)`` f32,
``maps`` ``(B, 1, H, W)`` c64, ``target`` ``(B, H, W)`` c64.

The PyTorch references (NCHW, float32/complex64, eager) re-derive the same networks and losses,
with the JAX initial parameters (and the VGG16 weights the JAX loss reads) copied in.
TensorFlow/XLA "SAME" padding is reproduced with explicit (possibly asymmetric) padding for the
strided discriminator convolutions. The torch refinement step does the same work as the JAX one:
no weight gradients of the discriminator in the generator update (``requires_grad_(False)``, as
pix2pix does), the real-image features and the VGG target without autograd, the same per-image
replay pool and one dropout mask shared by the real and fake feature passes. Batch norm uses the
global batch; the JAX step does the same on one device (with several devices its statistics are
per device).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks._common import StepCase, jax_case
from benchmarks.cases_ifrnet import phantom_images
from jaxmri.cpu import conv_for

__all__ = ["cases"]

# The names of the rows cases() builds (step_time --only skips modules without a match).
CASE_NAMES = ('RecNet', 'RecNet + refinement GAN')

FORWARD_RTOL = 1e-4  # relative L2 error of forward outputs and of first-step loss terms
GRAD_RTOL = 1e-3  # relative L2 error of all RecNet loss gradients together
SECOND_STEP_RTOL = 1e-3  # loss terms after one update of both networks (Adam amplifies noise)


def _relative_error(actual, reference) -> float:
    actual, reference = np.asarray(actual), np.asarray(reference)
    diff = np.linalg.norm((actual - reference).astype(np.complex128))
    return float(diff / max(np.linalg.norm(reference.astype(np.complex128)), 1e-30))


# ------------------------------------------------------------------------------------------
# The cases


def cases(*, paper: bool = False, with_torch: bool = True) -> list[StepCase]:
    """``[StepCase "RecNet", StepCase "RecNet + refinement GAN"]`` at the refine preset.

    Sizes are ``experiments.refine.PRESETS["cpu"]`` (``"paper"`` with ``paper=True``):
    RecNet on ``recnet_batch`` slices, the refinement on ``refine_batch`` slices, both
    ``image_size`` px. The torch steps (when ``with_torch`` and PyTorch imports) are checked
    at build time: RecNet's forward (``FORWARD_RTOL``) and loss gradients (``GRAD_RTOL``); the
    refinement U-Net's pre-gate output in training mode, and the loss terms of two full
    refinement steps against the JAX step run with a dropout-free copy of the discriminator
    (dropout is the step's only randomness besides the replay pool, which passes images through
    while it fills): first step to ``FORWARD_RTOL``, second (after both Adam updates) to
    ``SECOND_STEP_RTOL``.
    """
    import jax
    import jax.numpy as jnp

    from benchmarks.torch_ref.refine import _recnet_grad_leaves, _torch_modules, _torch_refine_step
    from experiments import refine as exp
    from jaxmri.data import acquire_slices
    from jaxmri.models import refine as refine_model
    from jaxmri.train import create_train_state

    preset, seed = exp.PRESETS["paper" if paper else "cpu"], 0
    # The networks' convolution as the experiment's main sets it.
    preset = dataclasses.replace(preset, conv_general_dilated=conv_for())
    size = preset.image_size
    prog = exp.programs(preset, seed)

    def make_batch(batch_size: int) -> dict[str, np.ndarray]:
        acq = acquire_slices({"image": phantom_images(batch_size, size, seed=0)},
                             np.arange(batch_size), mask_fn=exp._mask_fn(preset), seed=0,
                             num_coils=1)
        return {key: np.asarray(acq[key]) for key in exp.RECON_KEYS}

    rec_batch, ref_batch = make_batch(preset.recnet_batch), make_batch(preset.refine_batch)
    # As experiments.refine.main: non-partitionable threefry keeps the initialisers' compile
    # short; the keys are the ones train_recnet / train_refinement use.
    with jax.threefry_partitionable(False):
        ex = {k: jnp.asarray(v[:1]) for k, v in rec_batch.items()}
        recnet_vars = prog.init_recnet(jax.random.key(seed + 1), ex["zero_filled"],
                                       ex["kspace"], ex["mask"][:, None], ex["maps"])
        gen_vars = prog.init_refiner(jax.random.key(seed + 2), jnp.zeros((1, size, size)))
        disc_state = exp._discriminator_state(preset, seed, jax.random.key(seed + 3))
    rec_state = create_train_state(prog.recnet, exp._adam(preset.recnet_lr), recnet_vars)
    ref_state = {
        "gen": create_train_state(prog.refiner, exp._adam(preset.gan_lr, b1=0.5), gen_vars),
        "disc": disc_state,
        "recnet": recnet_vars,
        **refine_model.init_refine_extras(pool_size=preset.pool_size, image_shape=(size, size)),
    }
    rec_case = jax_case("RecNet", train_step=refine_model.recnet_train_step, state=rec_state,
                        batch=rec_batch, params=rec_state.params, image_size=size)
    ref_case = jax_case("RecNet + refinement GAN", train_step=prog.refine_step, state=ref_state,
                        batch=ref_batch, image_size=size,
                        params={"gen": ref_state["gen"].params, "disc": disc_state.params})
    if not with_torch:
        return [rec_case, ref_case]
    try:
        import torch
    except ImportError:
        return [rec_case, ref_case]

    DCCascade, GatedRefinement, PatchGAN, VGG16Relu53 = _torch_modules(torch)
    to_np = jax.tree.map(np.asarray, {"recnet": recnet_vars, "gen": gen_vars,
                                      "disc": disc_state.variables()})
    cascade = dict(cascades=prog.recnet.num_cascades, convs=prog.recnet.convs_per_cascade,
                   features=prog.recnet.features, slope=prog.recnet.negative_slope)

    def torch_batch(b):
        out = {k: torch.from_numpy(v) for k, v in b.items()}
        out["mask"] = out["mask"][:, None]  # as the JAX steps pass it: (B, 1, H, W)
        return out

    # ---- RecNet
    tb = torch_batch(rec_batch)
    recnet = DCCascade(to_np["recnet"]["params"], **cascade)
    optimizer = torch.optim.Adam(recnet.parameters(), lr=preset.recnet_lr)

    def recnet_loss(pred, target):
        diff = pred - target
        return (diff.real**2 + diff.imag**2).mean()

    def jax_recnet(variables, b):
        return refine_model.recnet_forward(prog.recnet, variables, b)

    pred = recnet(tb["zero_filled"], tb["kspace"], tb["mask"], tb["maps"])
    err = _relative_error(pred.detach().numpy(), jax.jit(jax_recnet)(recnet_vars, rec_batch))
    assert err <= FORWARD_RTOL, f"RecNet: torch forward differs from JAX (rel. error {err:.2e})"
    recnet_loss(pred, tb["target"]).backward()
    jax_grads = jax.jit(jax.grad(lambda p: jnp.mean(jnp.abs(
        jax_recnet({"params": p}, rec_batch) - rec_batch["target"]) ** 2)))(
            recnet_vars["params"])
    gerr = _relative_error(
        np.concatenate([q.grad.numpy().ravel() for q in recnet.parameters()]),
        _recnet_grad_leaves(jax_grads, len(recnet.convs)))
    assert gerr <= GRAD_RTOL, f"RecNet: torch gradients differ from JAX (rel. error {gerr:.2e})"
    print(f"[RecNet] torch vs JAX: forward rel. error {err:.1e}, gradient rel. error {gerr:.1e}")

    def recnet_step() -> None:
        optimizer.zero_grad()
        loss = recnet_loss(recnet(tb["zero_filled"], tb["kspace"], tb["mask"], tb["maps"]),
                           tb["target"])
        loss.backward()
        optimizer.step()
        loss.item()

    rec_case.torch_step = recnet_step
    rec_case.torch_params = sum(q.numel() for q in recnet.parameters())

    # ---- Refinement
    from jaxmri.metrics.perceptual import _VGG16_BLOCKS, load_pretrained

    vgg_params = jax.tree.map(np.asarray, load_pretrained("vgg16")[1]["params"])
    disc_module = prog.discriminator
    options = dict(lr=preset.gan_lr, pool_size=preset.pool_size, pool_prob=0.5,
                   label_smoothing=0.1, penalty_target=0.1)

    def torch_refine(dropout: bool):
        modules = (
            DCCascade(to_np["recnet"]["params"], **cascade).requires_grad_(False),
            GatedRefinement(to_np["gen"], encoder=tuple(preset.refine_encoder),
                            decoder=tuple(preset.refine_decoder),
                            kernel=prog.refiner.kernel_size, slope=prog.refiner.negative_slope),
            PatchGAN(to_np["disc"], features=tuple(disc_module.features),
                     strides=tuple(disc_module.strides), kernel=disc_module.kernel_size,
                     dropout_after=tuple(disc_module.dropout_after),
                     rate=disc_module.dropout_rate),
            VGG16Relu53(vgg_params, _VGG16_BLOCKS),
        )
        return modules, _torch_refine_step(torch, modules, torch_batch(ref_batch),
                                           dropout=dropout, **options)

    # Forward: the refinement U-Net's pre-gate output V in training mode (batch statistics).
    (_, refiner_t, _, _), check_step = torch_refine(dropout=False)
    base = jax.jit(jax_recnet)(recnet_vars, ref_batch)
    (_, v_jax), _ = jax.jit(lambda v, m: prog.refiner.apply(
        v, m, train=True, mutable=["batch_stats"]))(gen_vars, jnp.abs(base))
    _, v_torch = refiner_t(torch.from_numpy(np.abs(np.asarray(base))))
    verr = _relative_error(v_torch.detach().numpy(), v_jax)
    assert verr <= FORWARD_RTOL, (f"RecNet + refinement GAN: torch refinement U-Net differs "
                                  f"from JAX (rel. error {verr:.2e})")

    # Two full steps without dropout: the library step with a dropout-free discriminator (same
    # parameters), vmapped over one "device" so that its collectives run outside pmap.
    from jaxmri.nn.patchgan import PatchGAN as JaxPatchGAN
    from jaxmri.train.loop import AXIS_NAME

    no_dropout = JaxPatchGAN(features=disc_module.features, strides=disc_module.strides,
                             kernel_size=disc_module.kernel_size, dropout_rate=0.0)
    det_step = jax.jit(jax.vmap(
        lambda s, b, k: refine_model.refine_train_step(s, b, k, recnet=prog.recnet,
                                                       discriminator=no_dropout,
                                                       pool_seed=seed),
        axis_name=AXIS_NAME))
    state = jax.tree.map(lambda x: jnp.asarray(x)[None], ref_state)
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    stacked = {k: v[None] for k, v in ref_batch.items()}
    terms = ("loss", "d_loss", "l_adv", "l_feat", "l_vgg", "l_pen")
    errors = []
    for i, rtol in enumerate((FORWARD_RTOL, SECOND_STEP_RTOL)):
        state, metrics = det_step(state, stacked, keys)
        theirs = check_step()
        ours = np.array([float(metrics[t][0]) for t in terms])
        errors.append(float(np.max(np.abs(np.array([theirs[t] for t in terms]) - ours)
                                   / np.abs(ours))))
        assert errors[-1] <= rtol, (
            f"RecNet + refinement GAN: torch step {i + 1} differs from JAX (max rel. error "
            f"{errors[-1]:.2e}; JAX {dict(zip(terms, ours, strict=True))}, torch {theirs})")
    print(f"[RecNet + refinement GAN] torch vs JAX: U-Net V rel. error {verr:.1e}, loss terms "
          f"max rel. error step 1 {errors[0]:.1e}, step 2 {errors[1]:.1e}")

    (_, refiner_t, disc_t, _), refine_step = torch_refine(dropout=True)

    def torch_refine_step() -> None:
        refine_step()  # ends with .item() of the losses, as the JAX step copies its metrics

    ref_case.torch_step = torch_refine_step
    ref_case.torch_params = sum(q.numel() for m in (refiner_t, disc_t) for q in m.parameters())
    return [rec_case, ref_case]
