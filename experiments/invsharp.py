"""InvSharpNet (Dong et al., MICCAI 2022): sharpen blurry MRI reconstructions by backward training.

``python -m experiments.invsharp [--preset smoke|cpu|cpu-long|paper] [--workdir DIR] [--data PATH]
[--seeds 0,1,2] [--final-dc coil|projection] [--ablation] ...``

Pipeline (paper 000, section 3), each stage checkpointed in its own workdir subfolder so that an
interrupted run resumes where it stopped:

1. Data: axial 2-D slices of the embedded MNI152 T1 template (or ``--data``); one orientation
   only, so that no test voxel lies in a training slice of another orientation. Simulated
   multi-coil acquisition (16 birdcage coils, as fastMRI's 15-20-coil brain and knee data, on a
   circle of ``coil_radius``, smooth phase, complex
   noise at ``snr_db``) under fastMRI's equispaced-*fraction* mask at 4x with an 8 % centre: a
   true 4x mask, centre included (the paper's "4X acceleration of multi-coil data"; the plain
   equispaced mask with the centre added on top is only ~3.2x at 48 px).
2. Recon model 1 (an unrolled DC-CNN cascade, standing in for PC-RNN, which has no public
   code) or, with ``--recon-model 2``, a U-Net, trained with L1 + (1 - SSIM). Both start from
   the preset's ``recon_input``: the CG-SENSE image (Tikhonov ``cg_lam`` chosen on the
   validation split, ``cg_iters`` iterations; every preset) or the zero-filled SENSE adjoint.
   Its outputs on every split are cached (``recon<k>_outputs.npz``) as the blurry inputs of
   stage 3. Presets with ``regime_recon_models = (1, 2)`` also train the other recon model,
   for the regime table.
3. On the same invertible network: forward refinement (eq. 1), cWGAN with gamma 0.01 and 0.02
   (eq. 3), InvSharpNet bidirectional (eq. 4, beta 2) and InvSharpNet backward (eq. 2).
4. Test-split evaluation after ONE final data consistency applied to every row alike, the recon
   rows included (``--final-dc``; default ``coil``: coil-wise hard DC then SENSE coil combination,
   the VS-Net DC that the paper cites, which is not a projection; ``projection``: the exact
   projection, which for noisy data with more samples than unknowns returns the SENSE
   least-squares image for every row): Table 2 (PSNR, SSIM, SSIM contrast) and Table 3 (LPIPS),
   mean ± sd over slices; the regime table (recon models and zero-filled vs the paper's numbers)
   and the claims table (paired Wilcoxon / bootstrap per claim, :mod:`jaxmri.train.claims`);
   with ``--ablation`` (Fig. 3b): inversion error ``|I - S(S^-1(I))|`` with 2 iterations for c
   in {0.6, 0.7, 0.8}, and the backward error of the full versus a small network; figures (Fig. 2
   panel with zoom, k-space log energy, line profile). ``--eval-data PATH`` adds a table on
   another volume.

Outputs in the workdir: ``table2.md/.json``, ``table3.md/.json``, ``regime.md/.json``,
``claims.md/.json``, ``per_slice.json``, ``ablation.md/.json``, ``fig2_panel.png``,
``figA1_profile.png``, ``fig3b_inversion_error.png``, ``metrics.jsonl`` of every stage;
``--seeds`` adds ``claims_over_seeds.md/.json`` and ``regime_over_seeds.md/.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.predictors import build_invsharp
from jaxmri.data import SPLIT_SEEDS, acquire_slices, load_slices
from jaxmri.errors import UserInputError
from jaxmri.metrics import lpips, psnr, ssim, ssim_contrast
from jaxmri.models import invsharp as isn
from jaxmri.models.recon import DCCascade, UNetRecon
from jaxmri.nn.fixed_point import Unrolled
from jaxmri.nn.layers import complex_to_channels
from jaxmri.physics import cg_sense, equispaced_fraction_column_mask, image_dc, projection_dc
from jaxmri.train import (
    apply_mean_gradients,
    create_train_state,
    fit,
    folder_name,
    map_batches,
    random_batches,
    summarise,
    write_results,
)
from jaxmri.predict import predict_command
from jaxmri.train.claims import Claim, RegimeRow, report_claims
from jaxmri.train.cli import (
    check_batch_size,
    exit_on_user_error,
    experiment_parser,
    positive_int,
    run_experiment,
)
from jaxmri.train.figures import save_line_profile, save_loss_curves, save_maps, save_panel


@dataclasses.dataclass(frozen=True)
class Preset:
    """One configuration of the InvSharpNet experiment (see ``description``)."""

    description: str
    image_size: int
    num_coils: int
    orientations: tuple[str, ...]
    recon_cascades: int
    recon_convs: int
    recon_features: int
    unet_features: tuple[int, ...]
    recon_steps: int
    network: isn.InvSharpConfig
    small_network: isn.InvSharpConfig
    steps: int
    batch_size: int
    learning_rate: float = 1e-3
    acceleration: float = 4.0
    center_fraction: float = 0.08
    snr_db: float = 30.0
    # The target: False, the noiseless template; True, the fully sampled noisy scan, which is
    # what fastMRI's ground truth is (jaxmri.data.simulate, "Reference").
    noisy_reference: bool = False
    coil_radius: float = 1.5
    ablation_coeffs: tuple[float, ...] = (0.6, 0.8)
    regime_recon_models: tuple[int, ...] = (1,)
    ablation: bool = True
    checkpoint_every: int = 500
    eval_slices: int = 16
    # The recon models' input image: "cg_sense" (Tikhonov-regularised CG-SENSE, weight cg_lam,
    # cg_iters iterations) or "zero_filled" (the SENSE adjoint A^H y).
    recon_input: str = "cg_sense"
    cg_lam: float = 3e-4
    cg_iters: int = 50


PRESETS = {
    "smoke": Preset(
        description="Seconds, for tests: 32 px images, 1 block x 2 convs x 8, 4 steps each.",
        image_size=32, num_coils=2, orientations=("axial",),
        recon_cascades=1, recon_convs=2, recon_features=8, unet_features=(8, 16),
        recon_steps=4,
        network=isn.InvSharpConfig(num_blocks=1, depth=2, hidden=8, critic_features=(8,)),
        small_network=isn.InvSharpConfig(num_blocks=1, depth=2, hidden=4,
                                         critic_features=(8,)),
        steps=4, batch_size=2, checkpoint_every=2, eval_slices=4,
    ),
    "cpu": Preset(
        description=("7.7-10.8 minutes wall on 2 idle cores (fresh clones: 7.7 on an "
                     "Intel Xeon on 2026-12-07, 14 CPU-minutes; 8.5 on an AMD EPYC on "
                     "2026-12-04, 15 CPU-minutes; 10.8 on another AMD EPYC on 2026-12-07, 19 "
                     "CPU-minutes): 64 px axial slices (one orientation: "
                     "no voxel shared across splits), 16 coils close to the head "
                     "(fastMRI: 15-20), fastMRI equispaced-fraction 4x mask, SNR 30 dB; "
                     "recon model 1 (5 cascades) and the U-Net (regime row) start from "
                     "CG-SENSE and train 300 steps; 4 blocks x 5 convs x 32 and 300 steps "
                     "per method; prints Tables 2, 3, the regime and claims tables (the "
                     "ablation of Fig. 3b, three more trainings, only with --ablation)."),
        image_size=64, num_coils=16, coil_radius=1.0, orientations=("axial",),
        recon_cascades=5, recon_convs=5, recon_features=32, unet_features=(16, 32, 64),
        recon_steps=300,
        network=isn.InvSharpConfig(num_blocks=4, depth=5, hidden=32,
                                   critic_features=(16, 32, 64)),
        small_network=isn.InvSharpConfig(num_blocks=2, depth=5, hidden=12,
                                         critic_features=(16, 32, 64)),
        steps=300, batch_size=4, checkpoint_every=100, regime_recon_models=(1, 2),
        ablation=False,
    ),
    "paper": Preset(
        description=("Paper (for a GPU): 12 blocks x 5 convs x 128 (5.4M), c 0.7, 2 inverse "
                     "iterations, Adam 1e-3, batch 8, 50k steps; 320 px, 16 coils."),
        image_size=320, num_coils=16, coil_radius=1.0, orientations=("axial",),
        regime_recon_models=(1, 2),
        recon_cascades=5, recon_convs=5, recon_features=64, unet_features=(32, 64, 128, 256),
        recon_steps=50_000,
        network=isn.InvSharpConfig(),
        # ~0.7M parameters: 12 blocks x 5 convs x 44 channels (Fig. 3b's small network).
        small_network=isn.InvSharpConfig(hidden=44),
        steps=50_000, batch_size=8, checkpoint_every=2_000, eval_slices=64,
    ),
}
PRESETS["cpu-long"] = dataclasses.replace(
    PRESETS["cpu"],
    description=("42-43 minutes wall on 2 idle cores (seeds 0-2, 2026-12-05; 42:43 on a "
                 "fresh clone): as cpu at 128 px, recon models 1000 steps, 400 steps per "
                 "method; --ablation adds the three trainings of Fig. 3b (about 20 minutes "
                 "more). Recon model 1: 39.12 / 0.978, 39.63 / 0.978 and 38.75 / 0.975 in "
                 "seeds 0, 1 and 2 (paper brain 40.2 / 0.958: in regime in all three)."),
    image_size=128, recon_steps=1000, steps=400)

# The methods of Table 2, in the paper's order: (label, method, loss weights).
METHOD_RUNS = (
    ("refinement", "forward", {}),
    ("cWGAN γ=0.01", "cwgan", {"gamma": 0.01}),
    ("cWGAN γ=0.02", "cwgan", {"gamma": 0.02}),
    ("InvSharpNet(bi)", "bi", {}),
    ("InvSharpNet(back)", "back", {}),
)


# ------------------------------------------------------------------------------------ data


def load_acquisitions(data: str | None, preset: Preset, seed: int,
                      splits: Sequence[str] = ("train", "val", "test")) -> dict[str, dict]:
    """Slices of each split and their simulated (or measured) acquisitions, host numpy."""
    mask_fn = functools.partial(equispaced_fraction_column_mask,
                                center_fraction=preset.center_fraction,
                                acceleration=preset.acceleration)
    out = {}
    for split in splits:
        slices = load_slices(data, image_size=preset.image_size, split=split,
                             orientations=preset.orientations)
        n = slices["image"].shape[0]
        if n == 0:
            raise UserInputError(
                f"the {split} split of {data or 'the embedded MNI152 data'} is empty")
        acq = acquire_slices(slices, np.arange(n), mask_fn=mask_fn,
                             seed=1000 * seed + SPLIT_SEEDS.get(split, 3),
                             num_coils=preset.num_coils, snr_db=preset.snr_db,
                             coil_radius=preset.coil_radius,
                             noisy_reference=preset.noisy_reference)
        out[split] = {k: acq[k] for k in ("target", "kspace", "mask", "maps", "zero_filled")}
        out[split]["recon_input"] = recon_input_images(preset, out[split])
    return out


def recon_input_images(preset: Preset, acq: dict) -> np.ndarray:
    """The recon models' input ``(N, H, W)`` complex64 for an acquisition dict (host numpy).

    ``preset.recon_input == "cg_sense"``: Tikhonov-regularised CG-SENSE,
    ``(A^H A + cg_lam I) x = A^H y`` with ``cg_iters`` iterations from zero, ``A = M F S``;
    ``"zero_filled"``: the SENSE adjoint ``A^H y`` (``acq["zero_filled"]``).
    """
    if preset.recon_input == "zero_filled":
        return acq["zero_filled"]
    if preset.recon_input != "cg_sense":
        raise ValueError(f"recon_input must be 'cg_sense' or 'zero_filled', "
                         f"got {preset.recon_input!r}")
    # cg_sense is compiled once per shape (lam is traced), so the batches reuse one program.
    def solve(kspace, maps, mask):
        return cg_sense(kspace, maps, mask[:, None], lam=preset.cg_lam,
                        max_iter=preset.cg_iters).image

    return map_batches(solve, {k: acq[k] for k in ("kspace", "maps", "mask")}, batch_size=16)


# ------------------------------------------------------------------------- recon models


def recon_module(preset: Preset, which: int, *,
                 conv_general_dilated=jax.lax.conv_general_dilated) -> nn.Module:
    """Recon model 1 (DC cascade) or 2 (U-Net), convolving with ``conv_general_dilated``."""
    if which == 1:
        return DCCascade(num_cascades=preset.recon_cascades,
                         convs_per_cascade=preset.recon_convs, features=preset.recon_features,
                         conv_general_dilated=conv_general_dilated)
    return UNetRecon(features=preset.unet_features, conv_general_dilated=conv_general_dilated)


def _recon_inputs(batch):
    return batch["recon_input"], batch["kspace"], batch["mask"][:, None], batch["maps"]


def recon_train_step(module: nn.Module):
    """L1 (real/imag channels) + (1 - SSIM) on magnitudes: the recon models' loss."""

    def loss_fn(params, batch):
        pred = module.apply({"params": params}, *_recon_inputs(batch))
        l1 = jnp.mean(jnp.abs(complex_to_channels(pred) - complex_to_channels(batch["target"])))
        target = isn.magnitude(batch["target"])
        data_range = jnp.max(target, axis=(-2, -1))
        s = jnp.mean(ssim(isn.magnitude(pred), target, data_range=data_range))
        return l1 + (1.0 - s), {"l1": l1, "ssim": s}

    def train_step(state, batch, key):
        del key
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        return apply_mean_gradients(state, grads), {"loss": loss, **metrics}

    return train_step


def train_recon(preset: Preset, which: int, data: dict, workdir: Path, args):
    """Train recon model ``which``; return its outputs on every split and its predict function.

    A finished run is restored from its checkpoint (``fit`` returns at once) and its outputs
    are read from the cache ``recon<which>_outputs.npz``.
    """
    module = recon_module(preset, which, conv_general_dilated=args.conv_general_dilated)
    train = data["train"]
    variables = module.init(jax.random.key(args.seed), *_recon_inputs(
        {k: v[:1] for k, v in train.items()}))
    state = create_train_state(module, optax.adam(preset.learning_rate), variables)
    print(f"[invsharp] recon model {which}: {type(module).__name__}, "
          f"{_count(variables['params']) / 1e6:.2f}M parameters")
    state = fit(train_step=recon_train_step(module), state=state,
                batch_fn=random_batches(train, batch_size=args.batch_size, seed=args.seed),
                num_steps=args.recon_steps, key=jax.random.key(args.seed),
                workdir=workdir / f"recon{which}", checkpoint_every=preset.checkpoint_every,
                eval_every=max(args.recon_steps // 2, 1), resume=args.resume,
                eval_fn=lambda s: _recon_val_psnr(module, s.params, data["val"], preset),
                desc=f"recon model {which}")
    apply = jax.jit(lambda params, b: module.apply({"params": params}, *_recon_inputs(b)))

    def predict(arrays: dict) -> np.ndarray:
        return map_batches(lambda **b: apply(state.params, b), arrays,
                           batch_size=preset.batch_size)

    cache = workdir / f"recon{which}_outputs.npz"
    if cache.exists():
        with np.load(cache) as f:
            return {split: f[split] for split in f.files}, predict
    outputs = {split: predict(arrays) for split, arrays in data.items()}
    np.savez(cache, **outputs)
    return outputs, predict


def _recon_val_psnr(module, params, val, preset):
    subset = {k: v[:preset.eval_slices] for k, v in val.items()}
    pred = module.apply({"params": params}, *_recon_inputs(subset))
    return {"psnr": float(jnp.mean(psnr(jnp.abs(pred), jnp.abs(subset["target"]))))}


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- refinement


def train_method(preset: Preset, config: isn.InvSharpConfig, method: str, data: dict,
                 recon: dict, workdir: Path, args, label: str):
    """Train one method of Table 2 on (recon, target, zero_filled) and return its variables."""
    train = {"recon": recon["train"], "target": data["train"]["target"],
             "zero_filled": data["train"]["zero_filled"]}
    states = isn.create_states(jax.random.key(args.seed), config, method,
                               (preset.image_size, preset.image_size),
                               learning_rate=preset.learning_rate,
                               conv_general_dilated=args.conv_general_dilated)
    network = isn.build_network(config, conv_general_dilated=args.conv_general_dilated)
    val = _val_subset(data, recon, preset)

    def eval_fn(state):
        gen = state["generator"] if isinstance(state, dict) else state
        out = _sharpen_with_dc(network, gen.variables(), val["recon"], val["kspace"],
                               val["mask"], val["maps"])
        return {"psnr": float(jnp.mean(psnr(jnp.abs(out), jnp.abs(val["target"]))))}

    print(f"[invsharp] training {label} ({method}, c={config.coeff}, "
          f"{_count(network.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))['params']) / 1e6:.2f}M"
          " parameters)")
    critic = isn.Critic(tuple(config.critic_features),
                        conv_general_dilated=args.conv_general_dilated)
    state = fit(train_step=isn.make_train_step(network, config, method, critic),
                state=states, batch_fn=random_batches(train, batch_size=args.batch_size,
                                                      seed=args.seed + 1),
                num_steps=args.steps, key=jax.random.key(args.seed + 1),
                workdir=workdir / folder_name(label), checkpoint_every=preset.checkpoint_every,
                eval_every=max(args.steps // 2, 1), eval_fn=eval_fn, resume=args.resume,
                desc=label)
    gen = state["generator"] if isinstance(state, dict) else state
    return network, gen.variables()


def _val_subset(data, recon, preset):
    n = preset.eval_slices
    return {"recon": recon["val"][:n], **{k: v[:n] for k, v in data["val"].items()}}


# --------------------------------------------------------------------------- evaluation


def image_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice PSNR, SSIM, SSIM contrast and LPIPS of magnitudes ``(N, H, W)``.

    Each slice uses its own target maximum as data range. fastMRI's evaluation uses the
    volume's maximum instead; on the ``cpu-long`` test split that would add 0.31 dB to every
    row and leave every paired PSNR difference as it is (docs/invsharp_regime.md).
    """
    pred, target = np.abs(pred), np.abs(target)
    data_range = target.max(axis=(-2, -1))
    scale = data_range[:, None, None]
    return {
        "PSNR": np.asarray(psnr(pred, target, data_range=data_range)),
        "SSIM": np.asarray(ssim(pred, target, data_range=data_range)),
        "Contrast": np.asarray(ssim_contrast(pred, target, data_range=data_range)),
        "LPIPS": np.asarray(lpips(np.clip(pred / scale, 0, 1), target / scale, net="alex")),
    }


FINAL_DC = ("coil", "projection")


@functools.partial(jax.jit, static_argnames="kind")
def _final_dc_batch(image, kspace, mask, maps, *, kind):
    if kind == "coil":
        return image_dc(image, kspace, mask[:, None], maps=maps)
    return projection_dc(image, kspace, mask[:, None], maps=maps)


def final_dc(images: np.ndarray, split: dict, batch_size: int, kind: str = "coil") -> np.ndarray:
    """The one data consistency applied to every row of the tables, ``(N, H, W)`` complex64.

    Every row, the recon models' included, gets exactly this step once, so that no row gains
    from a DC that another lacks (recon model 1 already ends with its own coil-wise DC; the
    U-Net has none). ``kind``: see ``--final-dc``.
    """
    if kind not in FINAL_DC:
        raise ValueError(f"final DC must be one of {FINAL_DC}, got {kind!r}")
    arrays = {"image": images, "kspace": split["kspace"], "mask": split["mask"],
              "maps": split["maps"]}
    return map_batches(functools.partial(_final_dc_batch, kind=kind), arrays,
                       batch_size=batch_size)


def sharpened_outputs(network, variables, split: dict, recon: np.ndarray,
                      batch_size: int, final_dc_kind: str = "coil") -> np.ndarray:
    """Forward inference, then :func:`final_dc`, over a whole split, ``(N, H, W)`` complex64."""
    sharp = map_batches(lambda recon: _sharpen(network, variables, recon), {"recon": recon},
                        batch_size=batch_size)
    return final_dc(sharp, split, batch_size, final_dc_kind)


# Variables are arguments, not closed-over constants, so methods that share an architecture
# share one compiled function (a Flax module is a hashable static argument).
_sharpen_with_dc = jax.jit(isn.sharpen_with_dc, static_argnums=0)
_sharpen = jax.jit(isn.sharpen, static_argnums=0)


@functools.partial(jax.jit, static_argnames=("network", "mode"))
def _ablation_errors(variables, recon, target, zero_filled, *, network, mode):
    """Per-slice inversion error map ``(B, H, W)`` and backward L1 error ``(B,)``."""
    inv = isn.inversion_error(network, variables, target, zero_filled, mode=mode)
    (images, _), _ = isn.backward_images(network, variables, target, zero_filled, mode=mode)
    return {"inv": inv, "back": jnp.mean(jnp.abs(images - recon[:, None]), axis=(1, 2, 3))}


def ablation(preset, data, recon, workdir, args, trained_back):
    """Fig. 3b analog: inversion error per c (2 iterations) and backward error per network."""
    test = {"recon": recon["test"], "target": data["test"]["target"],
            "zero_filled": data["test"]["zero_filled"]}
    rows, maps = {}, {}
    mode = Unrolled(preset.network.inverse_iterations)
    runs = [(f"c={c}", dataclasses.replace(preset.network, coeff=c))
            for c in sorted((*preset.ablation_coeffs, preset.network.coeff))]
    runs.append((f"small c={preset.network.coeff}", preset.small_network))
    for label, config in runs:
        if config == preset.network:
            network, variables = trained_back
        else:
            network, variables = train_method(preset, config, "back", data, recon, workdir,
                                              args, f"ablation back {label}")
        errors = functools.partial(_ablation_errors, variables, network=network, mode=mode)
        out = map_batches(errors, test, batch_size=preset.batch_size)
        scale = np.abs(test["target"]).max(axis=(-2, -1))
        rows[label] = {"inversion error": out["inv"].mean(axis=(-2, -1)) / scale,
                       "backward error": out["back"] / scale,
                       "parameters": np.full(1, _count(variables["params"]))}
        maps[label] = out["inv"][0]
    return rows, maps


# ------------------------------------------------------------------ claims and regime


def paper_claims(which: int) -> list[Claim]:
    """The headline claims of Tables 2, 3 (recon model 1) or A1 (recon model 2) of paper 000."""
    recon = f"Recon model {which}"
    if which == 2:
        return [
            Claim("back raises Contrast over recon model 2", "Contrast", "InvSharpNet(back)",
                  recon, "higher", ".984/.991/.980 vs .977/.990/.972 (Table A1)"),
            Claim("back lowers PSNR below recon model 2", "PSNR", "InvSharpNet(back)", recon,
                  "lower", "35.3/35.6/30.2 vs 35.5/36.3/30.8 dB (Table A1)"),
            Claim("bi raises Contrast over recon model 2", "Contrast", "InvSharpNet(bi)", recon,
                  "higher", ".979/.992/.977 vs .977/.990/.972 (Table A1)"),
        ]
    return [
        Claim("back raises Contrast over recon model 1", "Contrast", "InvSharpNet(back)", recon,
              "higher", "knee .992 vs .987, in-house .981 vs .974 (brain .996 = .996) (T2)"),
        Claim("back lowers PSNR below recon model 1", "PSNR", "InvSharpNet(back)", recon,
              "lower", "38.5 vs 38.9 / 39.4 vs 40.2 / 32.4 vs 32.5 dB (T2)"),
        Claim("bi raises Contrast over recon model 1", "Contrast", "InvSharpNet(bi)", recon,
              "higher", ".989 vs .987 / .997 vs .996 / .977 vs .974 (T2)"),
        Claim("refinement has higher PSNR than recon model 1", "PSNR", "refinement", recon,
              "higher", "39.1 vs 38.9 / 40.6 vs 40.2 dB (T2; in-house 32.3 vs 32.5)"),
        Claim("refinement has higher SSIM than recon model 1", "SSIM", "refinement", recon,
              "higher", ".929 vs .921 / .968 vs .958 / .850 vs .825 (T2)"),
        Claim("refinement has higher PSNR than back", "PSNR", "refinement", "InvSharpNet(back)",
              "higher", "39.1 vs 38.5 / 40.6 vs 39.4 / 32.3 vs 32.4 dB (T2)"),
        Claim("refinement has the lowest Contrast: below recon model 1", "Contrast",
              "refinement", recon, "lower", ".984 vs .987 / .994 vs .996 / .964 vs .974 (T2)"),
        Claim("refinement has the lowest Contrast: below back", "Contrast", "refinement",
              "InvSharpNet(back)", "lower", ".984 vs .992 / .994 vs .996 / .964 vs .981 (T2)"),
        Claim("back has lower LPIPS than recon model 1", "LPIPS", "InvSharpNet(back)", recon,
              "lower", "0.068 vs 0.078 / 0.028 vs 0.035 / 0.055 vs 0.067 (T3)"),
        Claim("bi has lower LPIPS than recon model 1", "LPIPS", "InvSharpNet(bi)", recon,
              "lower", "0.070 vs 0.078 / 0.028 vs 0.035 / 0.058 vs 0.067 (T3)"),
        Claim("back has lower LPIPS than refinement", "LPIPS", "InvSharpNet(back)", "refinement",
              "lower", "0.068 vs 0.089 / 0.028 vs 0.041 / 0.055 vs 0.078 (T3)"),
    ]


# The paper's numbers for the rows that are not its method (Tables 2 and A1, fastMRI multi-coil
# 4x; PAPER_NUMBERS.md section 000). Our data are one brain template, closest to fastMRI brain.
_PAPER_REGIME = {
    "Recon model 1": [("Recon model 1, fastMRI brain (T2)", 40.2, 0.958),
                      ("Recon model 1, fastMRI knee (T2)", 38.9, 0.921),
                      ("Recon model 1, in-house brain GRE, trained on fastMRI brain (T2)",
                       32.5, 0.825)],
    "Recon model 2": [("Recon model 2 (U-Net), fastMRI brain (A1)", 36.3, 0.932),
                      ("Recon model 2 (U-Net), fastMRI knee (A1)", 35.5, 0.886),
                      ("Recon model 2 (U-Net), in-house brain GRE (A1)", 30.8, 0.811)],
    "CG-SENSE": [("(not in the paper)", None, None)],
    "Zero-filled": [("(not in the paper)", None, None)],
}


def regime_rows(per_slice: dict) -> list[RegimeRow]:
    """Regime rows for the recon models and the zero-filled input present in ``per_slice``."""
    notes = {"Recon model 1": "DC cascade standing in for PC-RNN (no public code)",
             "Recon model 2": "U-Net, no DC inside; the final DC of every row applies",
             "CG-SENSE": "Tikhonov CG-SENSE, the recon models' input",
             "Zero-filled": "SENSE adjoint of the 4x data: how hard the setting is"}
    return [RegimeRow(row, paper_row, psnr_, ssim_, notes[row])
            for row, entries in _PAPER_REGIME.items() if row in per_slice
            for paper_row, psnr_, ssim_ in entries]


@exit_on_user_error()
def main(argv: Sequence[str] | None = None) -> dict:
    parser = experiment_parser(__doc__, presets=PRESETS, name="invsharp", predict=True)
    parser.add_argument("--recon-model", type=int, choices=(1, 2), default=1,
                        help="which reconstruction model makes the blurry input: 1 = DC "
                             "cascade (Table 2), 2 = U-Net (Table A1)")
    parser.add_argument("--eval-data", default=None, metavar="PATH",
                        help="also evaluate the trained models on all slices of this volume "
                             "(NIfTI or fastMRI): the generalisation table")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=None,
                        help="run (or, with --no-ablation, skip) the Lipschitz-constant and "
                             "network-size ablation of Fig. 3b: three more trainings "
                             "(default: the preset's choice; off in the cpu and cpu-long presets)")
    parser.add_argument("--recon-steps", type=positive_int, default=None, metavar="N",
                        help="training steps of the reconstruction model (default: preset)")
    parser.add_argument("--final-dc", choices=FINAL_DC, default="coil",
                        help="the data consistency applied to every row of the tables, "
                             "baselines included: 'coil' = coil-wise hard DC then SENSE coil "
                             "combination (VS-Net, the DC paper 000 cites; not a projection), "
                             "'projection' = exact projection onto the images consistent with "
                             "the measurement (by CG)")
    return run_experiment(main, parser, argv, train=_run_setup,
                          predict=functools.partial(predict_command, build=build_invsharp))


def _run_setup(args, setup) -> dict:
    """The preset's steps and batch size where no flag overrides them, then :func:`run`."""
    preset: Preset = setup.preset
    workdir = Path(setup.workdir)
    args.steps = args.steps or preset.steps
    args.recon_steps = args.recon_steps or (preset.recon_steps if args.steps == preset.steps
                                            else args.steps)
    args.batch_size = args.batch_size or preset.batch_size
    started = time.time()
    summary = run(preset, args, workdir)
    save_loss_curves(workdir)
    minutes = (time.time() - started) / 60
    print(f"[invsharp] done in {minutes:.1f} min; results in {workdir}")
    return summary


def run(preset: Preset, args, workdir: Path) -> dict:
    print(f"[invsharp] preset {args.preset}: {preset.description}")
    print(f"[invsharp] devices: {jax.device_count()} x {jax.devices()[0].platform}")
    data = load_acquisitions(args.data, preset, args.seed)
    check_batch_size(args.batch_size, len(data["train"]["target"]))
    print("[invsharp] slices: " + ", ".join(f"{s} {d['target'].shape[0]}"
                                            for s, d in data.items())
          + f"; mask acceleration {float(np.mean(1 / data['test']['mask'].mean((1, 2)))):.2f}x")
    which = args.recon_model
    recon, predict_recon = train_recon(preset, which, data, workdir, args)

    trained = {}
    for label, method, weights in METHOD_RUNS:
        config = dataclasses.replace(preset.network, **weights)
        trained[label] = train_method(preset, config, method, data, recon, workdir, args, label)

    test = data["test"]
    outputs = {f"Recon model {which}": final_dc(recon["test"], test, preset.batch_size,
                                                args.final_dc)}
    for label, (network, variables) in trained.items():
        outputs[label] = sharpened_outputs(network, variables, test, recon["test"],
                                           preset.batch_size, args.final_dc)
    per_slice = {label: image_metrics(out, test["target"]) for label, out in outputs.items()}
    summary = summarise(per_slice)
    table = "table2" if which == 1 else "tableA1"
    write_results(summary, workdir, table, metrics=["PSNR", "SSIM", "Contrast"],
                  title=f"Table {'2' if which == 1 else 'A1'} analog: recon model {which} "
                        f"and its refinements (test split, after DC)")
    lpips_rows = {k: v for k, v in summary.items() if "cWGAN" not in k}
    write_results(lpips_rows, workdir, "table3" if which == 1 else "tableA1_lpips",
                  metrics=["LPIPS"], title="Table 3 analog: LPIPS (lower is closer to GT)")
    _figures(workdir, outputs, test)
    results = {"table2": summary}

    # Regime: the other recon model(s) of the preset, with the same final DC, and the
    # zero-filled input, for the regime table only.
    regime_slices = dict(per_slice)
    for other in preset.regime_recon_models:
        if other != which:
            other_recon, _ = train_recon(preset, other, data, workdir, args)
            regime_slices[f"Recon model {other}"] = image_metrics(
                final_dc(other_recon["test"], test, preset.batch_size, args.final_dc),
                test["target"])
    if preset.recon_input == "cg_sense":
        regime_slices["CG-SENSE"] = image_metrics(test["recon_input"], test["target"])
    regime_slices["Zero-filled"] = image_metrics(test["zero_filled"], test["target"])
    results.update(report_claims(paper_claims(which), regime_slices, workdir,
                                 regime=regime_rows(regime_slices)))

    if preset.ablation if args.ablation is None else args.ablation:
        rows, maps = ablation(preset, data, recon, workdir, args,
                              trained["InvSharpNet(back)"])
        ablation_summary = summarise(rows)
        write_results(ablation_summary, workdir, "ablation",
                      metrics=["inversion error", "backward error", "parameters"],
                      title="Fig. 3b analog: inversion error |I - S(S^-1(I))| (2 iterations) "
                            "and backward error, relative to the slice maximum",
                      precision={"inversion error": 6, "backward error": 4, "parameters": 0})
        save_maps(workdir / "fig3b_inversion_error.png", maps,
                  label="|I - S(S^-1(I))|",
                  title="Fig. 3b analog: inversion error per Lipschitz constant c and for the "
                        "small network (2 fixed-point iterations), test slice 0")
        results["ablation"] = ablation_summary

    if args.eval_data:
        other = load_acquisitions(args.eval_data, preset, args.seed, splits=("all",))["all"]
        results["generalisation"], results["generalisation_claims"] = _evaluate_elsewhere(
            preset, which, workdir, other, trained, predict_recon, args)
    (workdir / "summary.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def _evaluate_elsewhere(preset, which, workdir, other, trained, predict_recon, args):
    """Generalisation: the trained recon model and refinements on another volume.

    Like the paper's in-house column (models trained on fastMRI brain, evaluated on other
    scans), nothing is trained on ``other``. Writes ``generalisation.md/.json`` (the table) and,
    in ``<workdir>/generalisation/``, the paired claims and regime tables over its slices.
    Returns ``(summary, {'claims': [...], 'regime': [...]})``.
    """
    recon = predict_recon(other)
    outputs = {f"Recon model {which}": final_dc(recon, other, preset.batch_size, args.final_dc)}
    for label, (network, variables) in trained.items():
        outputs[label] = sharpened_outputs(network, variables, other, recon, preset.batch_size,
                                           args.final_dc)
    per_slice = {k: image_metrics(v, other["target"]) for k, v in outputs.items()}
    summary = summarise(per_slice)
    write_results(summary, workdir, "generalisation",
                  metrics=["PSNR", "SSIM", "Contrast", "LPIPS"],
                  title=f"Generalisation to {args.eval_data}")
    claims_dir = workdir / "generalisation"
    claims_dir.mkdir(exist_ok=True)
    judged = report_claims(paper_claims(which), per_slice, claims_dir,
                           regime=regime_rows(per_slice),
                           title=f"Paper claims on {args.eval_data} (models not trained on it)")
    return summary, judged


def _figures(workdir: Path, outputs: dict, test: dict) -> None:
    """Fig. 2 panel (with zoom box and k-space) and the Fig. A1 line profile."""
    # The test slice with the most structure (largest target gradient energy) is the example.
    target = np.abs(test["target"])
    energy = [np.sum(np.abs(np.diff(t, axis=0))) + np.sum(np.abs(np.diff(t, axis=1)))
              for t in target]
    i = int(np.argmax(energy))
    keys = [k for k in outputs if k != "cWGAN γ=0.01"]
    images = {k: np.abs(outputs[k][i]) for k in keys}
    images["GT"] = target[i]
    size = target.shape[-1]
    box = (size // 3, size // 3, size // 4, size // 4)
    recon = next(iter(outputs))
    save_panel(workdir / "fig2_panel.png", images, target_key="GT", zoom_box=box, kspace=True,
               title=f"Fig. 2 analog: {recon} and its sharpened versions (after the final DC), "
                     f"{1 / np.mean(test['mask'][i]):.1f}x, {size} px, test slice {i}")
    save_line_profile(workdir / "figA1_profile.png", images, row=size // 2,
                      title=f"Fig. A1 analog: intensity along row {size // 2} of test slice {i}, "
                            f"{recon} and its sharpened versions vs GT")


if __name__ == "__main__":
    main()
