"""IFR-Net (Liu et al., paper 002): unrolled iterative feature refinement for CS-MRI.

``python -m experiments.ifrnet [--preset smoke|cpu|paper] [--workdir DIR] [--masks SETTINGS]
[--ablations] ...``

``--masks`` picks the mask settings to run from the paper's Tables IV and V (``radial10``,
``radial20``, ``radial30``, ``radial40``, ``1d_random``, ``2d_random``, ``radial25``; default: the
preset's); e.g. ``--masks radial10,radial30,radial40`` runs the Table IV rates that the cpu
preset leaves out.

Real-valued pipeline (the paper's amplitude-image experiments, Tables IV and V), per slice:

1. The target is the real magnitude slice ``r`` (MNI152 T1 by default, values in [0, 1]).
2. ``acquire_slices(..., num_coils=1, snr_db=preset.snr_db)`` simulates a single-coil
   acquisition of ``r`` with a smooth random phase and coil phase; we keep its mask and its
   k-space noise realisation ``n = y - M F(S x)`` (zero off the mask) and re-measure the real
   image: ``y_r = M F r + n``. So the noise and mask are exactly ``acquire_slices``', but the
   measured object is real, as in the paper (which builds real single-channel images before
   simulating the undersampling). ``snr_db=None`` gives ``y_r = M F r``. With
   ``noisy_reference`` (every preset, at ``SCAN_SNR_DB``; ``--noisy-reference SNR_DB|none``
   changes it) the target is instead the magnitude of the fully sampled noisy scan,
   ``r_n = |x + n|`` (``acquire_slices``' ``noisy_reference``: a magnitude image with Rician
   noise, as a real scan's is), and the measurement is its masked k-space, ``y_r = M F r_n``:
   the paper undersamples real scans and adds no noise of its own.
3. Every method sees ``(y_r, M)`` (or the zero-filled ``F^-1 y_r``); IFR-CS, ADMM-Net and IFR-Net
   run their real-valued variants (each reconstruction layer keeps ``Re F^-1(...)``); D5-C5 and
   the U-Net are the complex networks of :mod:`jaxmri.models.recon` (maps of ones). Metrics
   (PSNR with the per-slice target maximum, HFEN, the authors' Gaussian-window SSIM) compare
   ``|output|`` with ``r``.

Methods: zero-filling; IFR-CS (non-learned, its threshold, rho and V hand-set by a grid search
on the validation split, as the paper hand-tunes all its parameters); ADMM-Net; IFR-Net; D5-C5
(5 cascades x 5 convs); U-Net on the zero-filled image. Every learned method minimises the
normalised error of eq. 12 with Adam (the paper uses SGD with momentum on batch 1; Adam is our
deviation, for short CPU schedules). Masks: pseudo-radial at the Table IV rates; 1-D random
(uniformly random columns around an 8 % centre), 2-D random (variable density, fall-off chosen
so that IFR-CS sits at the paper's 2-D random score: see ``TWO_D_RANDOM_DECAY``) and
pseudo-radial at 25 % (Table V).

Outputs in the workdir: ``table_iv.md/.json`` and ``table_v.md/.json`` (one block per mask),
per-mask tables ``table_<mask>.md/.json``, ``fig7_<mask>.png`` (reconstructions and error
maps), ``fig12_t_maps.png`` (IFR-Net's feature descriptor T per stage); with ``--ablations``
``table_ii.md`` (blocks K), ``table_iii.md`` (filters L, random init), ``table_ix.md`` (DCT vs
random init), ``table_x.md`` (weight sharing) at 40 % pseudo-radial. Each trained model has its
own subfolder (``<mask>/<method>``), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.predictors import build_ifrnet
from jaxmri.data import SPLIT_SEEDS, acquire_slices, load_splits
from jaxmri.metrics import hfen, psnr, ssim
from jaxmri.models import ifrnet as ifr
from jaxmri.models.recon import DCCascade, UNetRecon
from jaxmri.physics import (
    pseudo_radial_mask,
    random_column_mask,
    variable_density_random_mask,
)
from jaxmri.predict import predict_command
from jaxmri.train import (
    create_train_state,
    fit,
    random_batches,
    spread_indices,
    summarise,
    timed_map_batches,
    write_results,
)
from jaxmri.train.claims import Claim, RegimeRow, report_claims, setting_rows
from jaxmri.train.cli import (
    SplitPreset,
    check_batch_size,
    exit_on_user_error,
    experiment_parser,
    name_list,
    override_preset,
    run_experiment,
)
from jaxmri.train.figures import save_loss_curves, save_panel, structure_box
from jaxmri.train.report import write_table

METRICS = ("PSNR", "HFEN", "SSIM", "time_ms")
PRECISION = {"PSNR": 2, "HFEN": 3, "SSIM": 4, "time_ms": 2}
LEARNED = ("ADMM-Net", "IFR-Net", "D5-C5", "U-Net")
# The reference is a noisy magnitude scan of this k-space SNR (dB): the paper undersamples real
# TSE scans, whose noise no method recovers at the unsampled positions. On the validation split
# (IFR-CS, the non-learned baseline) 30 dB puts six of the seven settings within 1.6 dB of the
# paper's IFR-CS, against three noiseless; of the levels tried (none, 40, 35, 30 dB) it is the
# nearest, chosen on validation alone (docs/fidelity.md, "002").
SCAN_SNR_DB = 30.0


@dataclasses.dataclass(frozen=True)
class Preset(SplitPreset):
    """One configuration of the IFR-Net experiment (see ``description``)."""

    description: str
    image_size: int
    num_train: int
    num_val: int
    num_test: int
    table_iv_rates: tuple[float, ...]
    table_v_masks: tuple[str, ...]
    learned: tuple[str, ...]
    ifr_stages: int
    ifr_blocks: int
    ifr_features: int
    admm_stages: int
    dc_features: int
    unet_features: tuple[int, ...]
    steps: int
    batch_size: int
    learning_rate: float
    ifr_cs_iters: int
    ifr_cs_thresholds: tuple[float, ...]
    ifr_cs_rhos: tuple[float, ...]
    ifr_cs_vs: tuple[float, ...]
    ablation_steps: int
    ablation_stages: int
    snr_db: float | None = None
    noisy_reference: bool = False


PRESETS = {
    "smoke": Preset(
        description="python -m experiments.ifrnet --preset smoke: about 1 minute on 2 CPU cores; "
        "tiny ADMM-Net and IFR-Net on 32x32 slices, Table IV at 20 % only (numbers "
        "meaningless).",
        image_size=32, num_train=8, num_val=4, num_test=4,
        table_iv_rates=(0.2,), table_v_masks=(),
        learned=("ADMM-Net", "IFR-Net"),
        ifr_stages=2, ifr_blocks=1, ifr_features=4, admm_stages=2, dc_features=4,
        unet_features=(4, 8), steps=3, batch_size=2, learning_rate=1e-3,
        ifr_cs_iters=5, ifr_cs_thresholds=(0.02,), ifr_cs_rhos=(0.05,), ifr_cs_vs=(0.008,),
        ablation_steps=2, ablation_stages=2, snr_db=SCAN_SNR_DB, noisy_reference=True,
    ),
    "cpu": Preset(
        description="python -m experiments.ifrnet: 9.1 minutes on 2 idle Intel Xeon cores "
        "with AMX (fresh clone, 2026-12-07; 9.8 on the earlier Xeon with the wider grid), 12.5 "
        "on 2 idle AMD EPYC cores (fresh clone, 2026-12-07; 15.0 before rho was fixed in the "
        "IFR-CS grid); "
        "128x128 slices (the paper preset's size: at 64 px the pseudo-radial rows sit 4-8 dB "
        "below the paper's, at 128 px within 2.6 dB PSNR), the reference a noisy magnitude "
        "scan (30 dB, as the paper's real scans), 100 training slices, IFR-Net (7 "
        "stages, K=2, L=8) vs ADMM-Net (10 stages), IFR-CS (400 iterations, converged) and "
        "zero-filling (the methods of the paper's Tables IV and V; D5-C5 and the U-Net only "
        "in the paper preset), 150 Adam steps each; Table IV at 20 % pseudo-radial and "
        "Table V (1-D random, 2-D random, pseudo-radial at 25 %). Expected ordering: IFR-Net "
        "above ADMM-Net, IFR-CS above zero-filling (PSNR/SSIM up, HFEN down).",
        image_size=128, num_train=100, num_val=8, num_test=33,
        table_iv_rates=(0.2,), table_v_masks=("1d_random", "2d_random", "radial25"),
        learned=("ADMM-Net", "IFR-Net"),
        ifr_stages=7, ifr_blocks=2, ifr_features=8, admm_stages=10, dc_features=32,
        unet_features=(16, 32, 64), steps=150, batch_size=4, learning_rate=2e-3,
        # IFR-CS runs to convergence: 50 iterations stopped it 2-6 dB short on validation (radial
        # 20 %: 31.6 dB at 50, 33.7 at 200, 34.3 at 400, 34.4 at 800), and its best threshold
        # and rho sit at the low end, where it converges slowest. rho moves it by < 0.1 dB at
        # 400 iterations; 0.005 is the best threshold on three masks, 0.01 on 2-D random
        # (0.01 dB above 0.005). rho is fixed at 0.005, the grid's pick on all four masks
        # (IFR-CS is deterministic, so on every seed): the grid point rho 0.05 cost 2 of this
        # preset's 15 minutes on a 2-core AMD EPYC and never won (docs/fidelity.md).
        ifr_cs_iters=400, ifr_cs_thresholds=(0.005, 0.02),
        ifr_cs_rhos=(0.005,), ifr_cs_vs=(0.002, 0.008),
        ablation_steps=200, ablation_stages=5, snr_db=SCAN_SNR_DB, noisy_reference=True,
    ),
    "paper": Preset(
        description="python -m experiments.ifrnet --preset paper: several hours on 2 CPU "
        "cores (use a GPU); 128x128 slices, 100 training slices, the paper's IFR-Net (7 "
        "stages, K=2, L=8, w_f=3) for 18000 steps of batch 1, the paper's batch (180 epochs of "
        "100 slices; the paper gives no epoch count, its Fig. 10 converges near epoch 130), "
        "ADMM-Net with "
        "15 stages, D5-C5 with 64 channels; all of Table IV (10-40 %) and Table V.",
        image_size=128, num_train=100, num_val=10, num_test=33,
        table_iv_rates=(0.1, 0.2, 0.3, 0.4),
        table_v_masks=("1d_random", "2d_random", "radial25"),
        learned=("ADMM-Net", "IFR-Net", "D5-C5", "U-Net"),
        ifr_stages=7, ifr_blocks=2, ifr_features=8, admm_stages=15, dc_features=64,
        unet_features=(32, 64, 128, 256), steps=18000, batch_size=1, learning_rate=1e-3,
        ifr_cs_iters=800, ifr_cs_thresholds=(0.0025, 0.005, 0.01, 0.02, 0.04),
        ifr_cs_rhos=(0.005, 0.02, 0.05, 0.2), ifr_cs_vs=(0.002, 0.008, 0.03),
        ablation_steps=9000, ablation_stages=7, snr_db=SCAN_SNR_DB, noisy_reference=True,
    ),
}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


# Density fall-off of the 2-D random mask, ``(1 - r / sqrt(2)) ** decay`` (see
# :func:`variable_density_random_mask`). The paper shows its 25 % mask (Fig. 5) but gives no
# density; its IFR-CS scores 34.81 dB there. With decay 2 (the library's default) our mask keeps
# almost the whole low-pass disc, and IFR-CS was 7 dB above the paper. Validation IFR-CS (the
# cpu preset's 400 iterations and grid) by decay: 0.25 32.9, 0.5 35.7, 0.75 39.3, 1 42.2 dB
# (radial 25 %: 37.9). 0.5 is the one nearest the paper's number; it was chosen on the
# validation split before any learned model was trained on it (docs/fidelity.md, "002").
TWO_D_RANDOM_DECAY = 0.5


def mask_function(name: str) -> Callable:
    """``mask_fn(rng, shape)`` of a named setting: ``radial<pct>``, ``1d_random``, ``2d_random``."""
    if name.startswith("radial"):
        return functools.partial(pseudo_radial_mask, sampling_rate=int(name[6:]) / 100.0)
    if name == "1d_random":
        # 25 %: uniformly random columns around a fully sampled centre of 8 % (fastMRI's
        # RandomMaskFunc at 4x). Gaussian variable-density columns (DC-CNN's, used before
        # 2026-12-06) put validation IFR-CS at 31.5-32.4 dB whatever the centre, 4.5 dB above the
        # paper's 27.75; uniform columns give 26.96 / 27.96 / 28.18 dB with a centre of 5 / 6.25 /
        # 8 %. The standard 8 % is kept (docs/fidelity.md, "002").
        return functools.partial(random_column_mask, center_fraction=0.08, acceleration=4.0)
    if name == "2d_random":
        return functools.partial(variable_density_random_mask, acceleration=4.0,
                                 decay=TWO_D_RANDOM_DECAY)
    raise ValueError(f"unknown mask setting {name!r}")


def _fft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1))


def _ifft2c(k: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1))


def real_valued_acquisition(slices: dict, indices: np.ndarray, *, mask_fn: Callable, seed: int,
                            snr_db: float | None,
                            noisy_reference: bool = False) -> dict[str, np.ndarray]:
    """The real-valued single-coil acquisition described in the module docstring.

    Returns numpy arrays: ``target`` ``(N, H, W)`` float32 (the magnitude slice; with
    ``noisy_reference`` the magnitude of the fully sampled noisy scan), ``kspace`` ``(N, H, W)``
    complex64 (``M F target + M n``; with ``noisy_reference`` ``M F target``, the noise being in
    the target), ``mask`` ``(N, H, W)`` float32, ``zero_filled`` ``(N, H, W)`` complex64
    (``F^-1 kspace``).
    """
    acq = acquire_slices(slices, indices, mask_fn=mask_fn, seed=seed, num_coils=1,
                         snr_db=snr_db, noisy_reference=noisy_reference)
    mask, maps = acq["mask"], acq["maps"][:, 0]
    target = np.abs(acq["target"]).astype(np.float32)
    if noisy_reference:
        noise = 0.0  # the scan's noise is in the target, and the paper adds none of its own
    else:
        noise = acq["kspace"][:, 0] - mask * _fft2c(maps * acq["target"])
    kspace = (mask * _fft2c(target) + noise).astype(np.complex64)
    return {"target": target, "kspace": kspace, "mask": mask.astype(np.float32),
            "zero_filled": _ifft2c(kspace).astype(np.complex64)}


def load_setting(slices: dict, preset: Preset, setting: str) -> dict[str, dict]:
    """``{split: acquisition}`` of one mask setting (a different seed per split)."""
    mask_fn = mask_function(setting)
    counts = {"train": preset.num_train, "val": preset.num_val, "test": preset.num_test}
    return {split: real_valued_acquisition(
                slices[split], spread_indices(len(slices[split]["image"]), count),
                mask_fn=mask_fn, seed=SPLIT_SEEDS[split], snr_db=preset.snr_db,
                noisy_reference=preset.noisy_reference)
            for split, count in counts.items()}


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def build_model(method: str, preset: Preset, *,
                conv_general_dilated: Callable = jax.lax.conv_general_dilated,
                **overrides) -> nn.Module:
    """The Flax module of a learned method (``overrides`` replace IFR-Net attributes), its
    convolutions computed by ``conv_general_dilated``."""
    conv = dict(conv_general_dilated=conv_general_dilated)
    if method == "IFR-Net":
        options = dict(num_stages=preset.ifr_stages, num_blocks=preset.ifr_blocks,
                       features=preset.ifr_features, real_valued=True)
        return ifr.IFRNet(**{**options, **overrides}, **conv)
    if method == "ADMM-Net":
        return ifr.ADMMNet(num_stages=preset.admm_stages, real_valued=True)
    if method == "D5-C5":
        return DCCascade(num_cascades=5, convs_per_cascade=5, features=preset.dc_features,
                         negative_slope=0.0, **conv)
    if method == "U-Net":
        return UNetRecon(features=preset.unet_features, **conv)
    raise ValueError(f"unknown method {method!r}")


def predictor(method: str, module: nn.Module) -> Callable:
    """``predict(variables, batch) -> image (N, H, W)`` for a learned method."""
    if method in ("IFR-Net", "ADMM-Net"):
        return lambda variables, b: module.apply(variables, b["kspace"], b["mask"])

    def predict(variables, b):
        maps = jnp.ones_like(b["kspace"])[:, None]
        return module.apply(variables, b["zero_filled"], b["kspace"][:, None],
                            b["mask"][:, None], maps)

    return predict


def train_method(method: str, module: nn.Module, data: dict, preset: Preset, workdir: Path,
                 args, *, steps: int) -> dict:
    """Train one method with :func:`fit` in ``workdir`` (resumes); returns its variables."""
    train = data["train"]
    predict = predictor(method, module)
    variables = jax.jit(module.init)(jax.random.PRNGKey(args.seed),
                                     *_example_inputs(method, train))
    batch_size = preset.batch_size
    tx = optax.adam(preset.learning_rate)
    state = create_train_state(module, tx, variables)
    state = fit(train_step=ifr.make_train_step(predict), state=state,
                batch_fn=random_batches(train, batch_size=batch_size, seed=args.seed),
                num_steps=steps, key=jax.random.PRNGKey(args.seed + 1), workdir=workdir,
                checkpoint_every=max(steps // 2, 1), keep_checkpoints=1,
                log_every=max(steps // 20, 1), resume=args.resume,
                desc=f"{method} ({workdir.parent.name})")
    return state.variables()


def _example_inputs(method: str, split: dict) -> tuple:
    b = {k: jnp.asarray(v[:1]) for k, v in split.items()}
    if method in ("IFR-Net", "ADMM-Net"):
        return b["kspace"], b["mask"]
    return (b["zero_filled"], b["kspace"][:, None], b["mask"][:, None],
            jnp.ones_like(b["kspace"])[:, None])


def evaluate_method(fn: Callable, test: dict, batch_size: int) -> tuple[np.ndarray, dict]:
    """``(|outputs| (N, H, W), per-slice metrics)`` of ``fn(kspace, mask, zero_filled)`` on the
    test split: :func:`image_metrics` and ``time_ms``, milliseconds per slice (compile time
    excluded by a warm-up), the same for every slice."""
    arrays = {k: test[k] for k in ("kspace", "mask", "zero_filled")}
    out, seconds = timed_map_batches(fn, arrays, batch_size=batch_size)
    out = np.abs(np.asarray(out)).astype(np.float32)
    return out, {**image_metrics(out, test["target"]),
                 "time_ms": np.full(len(test["target"]), 1e3 * seconds)}


def tune_ifr_cs(val: dict, preset: Preset) -> dict:
    """Hand-tuned IFR-CS: the grid point of ``(threshold, rho, V)`` with the best mean PSNR on
    the validation split (the paper hand-tunes all of IFR-CS's parameters, section IV-A).

    The grid is ``preset.ifr_cs_thresholds x ifr_cs_rhos x ifr_cs_vs``; in the paper preset it
    contains the defaults of :func:`jaxmri.models.ifrnet.ifr_cs` (0.02, 0.05, 0.008), so the
    tuned setting is never worse than them on validation; the cpu preset searches threshold
    and V at rho 0.005 (rho moves IFR-CS by < 0.1 dB at 400 iterations). Only ``val`` is seen.

    Returns:
      ``ifr_cs`` keyword arguments ``{'threshold', 'rho', 'v', 'num_iters'}`` plus
      ``'val_psnr'``, the winner's mean validation PSNR.
    """
    kspace, mask = jnp.asarray(val["kspace"]), jnp.asarray(val["mask"])
    best = None
    for threshold, rho, v in itertools.product(preset.ifr_cs_thresholds, preset.ifr_cs_rhos,
                                               preset.ifr_cs_vs):
        out = np.abs(np.asarray(ifr.ifr_cs(kspace, mask, num_iters=preset.ifr_cs_iters,
                                           threshold=threshold, rho=rho, v=v)))
        score = float(np.mean(np.asarray(psnr(out, val["target"]))))
        if best is None or score > best["val_psnr"]:
            best = {"threshold": threshold, "rho": rho, "v": v, "val_psnr": score}
    return {**best, "num_iters": preset.ifr_cs_iters}


def image_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice PSNR (dB, target maximum as range), HFEN and SSIM of magnitude images.

    SSIM is the authors' (``IFR_Net_test.m`` calls ``cal_ssim(255*rec, 255*label, 0, 0)``, i.e.
    Wang et al.'s ``ssim_index``): an 11 x 11 Gaussian window of standard deviation 1.5,
    population statistics, the map over the pixels whose window lies inside the image, and the
    [0, 1]-normalised target's range as ``L``; here ``window="gaussian"`` with the per-slice
    target maximum as range. fastMRI's 7 x 7 box (the library default, used until 2026-12-06)
    puts the same outputs up to 0.014 lower (2-D random IFR-CS 0.856 vs 0.870).
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    return {"PSNR": np.asarray(psnr(pred, target)), "HFEN": np.asarray(hfen(pred, target)),
            "SSIM": np.asarray(ssim(pred, target, window="gaussian"))}


# --------------------------------------------------------------------------------------------
# One mask setting
# --------------------------------------------------------------------------------------------


def run_setting(setting: str, slices: dict, preset: Preset, workdir: Path, args) -> dict:
    """Evaluate every method on one mask; returns ``{'per_slice', 'outputs', 'ifr'}``."""
    data = load_setting(slices, preset, setting)
    check_batch_size(preset.batch_size, len(data["train"]["target"]))
    test = data["test"]
    batch = min(preset.batch_size, len(test["target"]))
    rate = float(np.mean(test["mask"]))
    print(f"[{setting}] sampled fraction {100 * rate:.1f} %, {len(data['train']['target'])} "
          f"train / {len(test['target'])} test slices")
    outputs, per_slice = {}, {}

    zf_fn = jax.jit(lambda kspace, mask, zero_filled: zero_filled)
    outputs["Zero-filled"], per_slice["Zero-filled"] = evaluate_method(zf_fn, test, batch)

    tuned = tune_ifr_cs(data["val"], preset)
    cs = {k: tuned[k] for k in ("threshold", "rho", "v", "num_iters")}
    print(f"[{setting}] IFR-CS: threshold {cs['threshold']}, rho {cs['rho']}, V {cs['v']} "
          f"(best of the grid on val, {tuned['val_psnr']:.2f} dB), {cs['num_iters']} iterations")
    cs_fn = jax.jit(lambda kspace, mask, zero_filled: ifr.ifr_cs(kspace, mask, **cs))
    outputs["IFR-CS"], per_slice["IFR-CS"] = evaluate_method(cs_fn, test, batch)

    trained = {}
    for method in preset.learned:
        module = build_model(method, preset, conv_general_dilated=args.conv_general_dilated)
        variables = train_method(method, module, data, preset, workdir / setting / method, args,
                                 steps=preset.steps)
        trained[method] = (module, variables)
        predict = predictor(method, module)
        fn = jax.jit(lambda kspace, mask, zero_filled, p=predict, v=variables: p(
            v, {"kspace": kspace, "mask": mask, "zero_filled": zero_filled}))
        outputs[method], per_slice[method] = evaluate_method(fn, test, batch)
    summary = summarise(per_slice)
    write_results(summary, workdir, f"table_{setting}", metrics=METRICS, precision=PRECISION,
                  title=f"{setting}: {100 * rate:.1f} % sampled, mean ± sd over "
                  f"{len(test['target'])} test slices (time: ms per slice)")
    save_panel(workdir / f"fig7_{setting}.png",
               {**{k: v[0] for k, v in outputs.items()}, "target": test["target"][0]},
               zoom_box=structure_box(test["target"][0]), kspace=True,
               title=f"Fig. 7 analog: {setting}, {100 * rate:.1f} % sampled, test slice 0")
    return {"summary": summary, "per_slice": per_slice, "data": data, "trained": trained}


def save_t_maps(path: Path, module: nn.Module, variables, test: dict, title: str) -> None:
    """Fig. 12 analog: reference, IFR-Net output and T of every stage, for test slice 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, stages = jax.jit(functools.partial(module.apply, return_stages=True))(
        variables, jnp.asarray(test["kspace"][:1]), jnp.asarray(test["mask"][:1]))
    t_maps = np.asarray(stages["t"][0])
    panels = [("reference", test["target"][0]), ("IFR-Net", np.abs(np.asarray(out[0])))]
    panels += [(f"T, stage {n + 1}", t) for n, t in enumerate(t_maps)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2 * len(panels), 2.3), squeeze=False)
    for ax, (label, image) in zip(axes[0], panels, strict=True):
        # One grey scale [0, 1] for every T map so that stages compare.
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0 if label.startswith("T") else None)
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Ablations (Tables II, III, IX, X)
# --------------------------------------------------------------------------------------------


def run_ablations(slices: dict, preset: Preset, workdir: Path, args) -> dict:
    """IFR-Net variants at 40 % pseudo-radial: blocks, filters, initialisation, sharing."""
    data = load_setting(slices, preset, "radial40")
    test = data["test"]
    batch = min(preset.batch_size, len(test["target"]))
    base = dict(num_stages=preset.ablation_stages, num_blocks=2, features=8, filter_init="dct")
    variants = {
        "K=2 (DCT)": base,
        "K=3": {**base, "num_blocks": 3},
        "K=4": {**base, "num_blocks": 4},
        "L=8 (random)": {**base, "filter_init": "random"},
        "L=64": {**base, "features": 64, "filter_init": "random"},
        "L=128": {**base, "features": 128, "filter_init": "random"},
        "shared": {**base, "share_weights": True},
    }
    per_slice = {}
    for name, options in variants.items():
        module = build_model("IFR-Net", preset, **options,
                             conv_general_dilated=args.conv_general_dilated)
        folder = workdir / "ablations" / name.replace(" ", "").replace("(", "_").replace(")", "")
        variables = train_method("IFR-Net", module, data, preset, folder, args,
                                 steps=preset.ablation_steps)
        fn = jax.jit(lambda kspace, mask, zero_filled, m=module, v=variables: m.apply(
            v, kspace, mask))
        _, per_slice[name] = evaluate_method(fn, test, batch)
    summary = summarise(per_slice)
    tables = {
        "table_ii": (["K=2 (DCT)", "K=3", "K=4"], "Table II: blocks K (DCT init, L=8)"),
        "table_iii": (["L=8 (random)", "L=64", "L=128"], "Table III: filters L (random init)"),
        "table_ix": (["K=2 (DCT)", "L=8 (random)"], "Table IX: DCT vs random initialisation"),
        "table_x": (["shared", "K=2 (DCT)"], "Table X: shared vs separate Z weights"),
    }
    for name, (rows, title) in tables.items():
        write_results({r: summary[r] for r in rows}, workdir, name, metrics=METRICS,
                      precision=PRECISION, title=f"{title}, {preset.ablation_stages} stages, "
                      f"40 % pseudo-radial")
    return summary


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _combined(name: str, title: str, summaries: dict, workdir: Path) -> None:
    """``<name>.md``: the per-setting tables under one heading; ``<name>.json``: the summaries."""
    blocks = [f"## {title}", "", *((workdir / f"table_{s}.md").read_text() for s in summaries)]
    write_table("\n".join(blocks), summaries, workdir, name, echo=False)


# --------------------------------------------------------------------------------------------
# The paper's claims (Tables IV and V) and the regime of its baselines
# --------------------------------------------------------------------------------------------

# Paper 002, real-valued brain images: (PSNR dB, HFEN, SSIM) per mask setting and method.
PAPER = {
    "radial10": {"IFR-CS": (28.9242, 1.7269, 0.8109), "ADMM-Net": (29.1359, 1.7218, 0.8127),
                 "IFR-Net": (30.0663, 1.5103, 0.8390)},
    "radial20": {"IFR-CS": (33.6998, 0.6628, 0.9130), "ADMM-Net": (32.7612, 0.8856, 0.8939),
                 "IFR-Net": (34.8249, 0.6497, 0.9280)},
    "radial30": {"IFR-CS": (36.2397, 0.3365, 0.9449), "ADMM-Net": (36.1112, 0.4013, 0.9439),
                 "IFR-Net": (37.8444, 0.2926, 0.9571)},
    "radial40": {"IFR-CS": (38.1590, 0.1505, 0.9627), "ADMM-Net": (37.6589, 0.2135, 0.9585),
                 "IFR-Net": (39.5642, 0.1377, 0.9703)},
    "1d_random": {"IFR-CS": (27.7484, 1.4519, 0.8286), "ADMM-Net": (28.6608, 1.4172, 0.8375),
                  "IFR-Net": (29.0481, 1.3868, 0.8472)},
    "2d_random": {"IFR-CS": (34.8108, 0.4092, 0.9291), "ADMM-Net": (34.0650, 0.6214, 0.9139),
                  "IFR-Net": (36.2627, 0.4051, 0.9421)},
    "radial25": {"IFR-CS": (35.2254, 0.4566, 0.9336), "ADMM-Net": (35.6067, 0.4742, 0.9374),
                 "IFR-Net": (36.7340, 0.4277, 0.9465)},
}
TABLE_IV_SETTINGS = ("radial10", "radial20", "radial30", "radial40")
# Every setting with the paper's numbers, Table IV's pseudo-radial rates first, then Table V.
MASK_SETTINGS = tuple(PAPER)
# ``--masks`` parser: comma-separated settings of MASK_SETTINGS, each once.
mask_settings = name_list(MASK_SETTINGS, "mask setting")
_COLUMN = {"PSNR": 0, "HFEN": 1, "SSIM": 2}
_HIGHER = {"PSNR": True, "HFEN": False, "SSIM": True}
# (method, baseline, metrics): IFR-Net is best everywhere (the paper's headline); IFR-CS against
# ADMM-Net only where the paper reports IFR-CS ahead (radial >= 20 %, 2-D random).
_PAIRS = (("IFR-Net", "ADMM-Net", ("PSNR", "SSIM", "HFEN")), ("IFR-Net", "IFR-CS", ("PSNR",)),
          ("IFR-CS", "ADMM-Net", ("PSNR", "SSIM")))


def paper_claims(settings: Sequence[str]) -> list[Claim]:
    """The claims of Tables IV/V for the mask settings run (rows ``"<setting>: <method>"``)."""
    claims = []
    for setting in settings:
        paper = PAPER[setting]
        table = "IV" if setting in TABLE_IV_SETTINGS else "V"
        for method, baseline, metrics in _PAIRS:
            for metric in metrics:
                ours, theirs = paper[method][_COLUMN[metric]], paper[baseline][_COLUMN[metric]]
                if (ours > theirs) != _HIGHER[metric]:
                    continue  # the paper does not claim this one at this setting
                word = "above" if _HIGHER[metric] else "below"
                claims.append(Claim(
                    text=f"{setting}: {method} {word} {baseline} on {metric}", metric=metric,
                    method=f"{setting}: {method}", baseline=f"{setting}: {baseline}",
                    direction="higher" if _HIGHER[metric] else "lower",
                    paper=f"{ours:.4f} vs {theirs:.4f} (Table {table})"))
    return claims


def regime_rows(settings: Sequence[str]) -> list[RegimeRow]:
    """Zero-filling (the paper has none), IFR-CS and ADMM-Net per setting."""
    rows = []
    for setting in settings:
        paper = PAPER[setting]
        rows.append(RegimeRow(
            f"{setting}: Zero-filled", "none", None, None,
            note="paper 002 has no zero-filled row; ADMM-Net is the closest stated baseline"))
        for method in ("IFR-CS", "ADMM-Net"):
            rows.append(RegimeRow(f"{setting}: {method}", f"{method}, {setting} (paper 002)",
                                  paper[method][0], paper[method][2]))
    return rows


def snr_db(text: str) -> float | str:
    """``--noisy-reference`` parser: a finite SNR in dB, or ``"none"`` (a noiseless reference),
    else a one-line error."""
    if text.strip().lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"expected a finite SNR in dB such as 30, or none, got {text!r}")
    return value


def preset_from_flags(preset: Preset, args) -> Preset:
    """``preset`` with the flags' overrides (``--steps``, ``--batch-size``, ``--masks``,
    ``--noisy-reference``; a flag left unset keeps the preset's value). ``args``: the parsed
    command line or the flags recorded in ``run.json`` (where ``masks`` is a list). ``--masks``
    settings of Table IV become ``table_iv_rates``, the others ``table_v_masks``, each in the
    order given; ``--noisy-reference SNR_DB`` sets ``snr_db`` and ``noisy_reference``, ``none``
    makes the reference noiseless (and adds no noise)."""
    masks = getattr(args, "masks", None)
    scan_snr = getattr(args, "noisy_reference", None)  # absent from runs before the flag
    rates = table_v = None
    if masks is not None:
        rates = tuple(int(m[len("radial"):]) / 100 for m in masks if m in TABLE_IV_SETTINGS)
        table_v = tuple(m for m in masks if m not in TABLE_IV_SETTINGS)
    if scan_snr == "none":
        preset = dataclasses.replace(preset, snr_db=None, noisy_reference=False)
    elif scan_snr is not None:
        preset = dataclasses.replace(preset, snr_db=float(scan_snr), noisy_reference=True)
    return override_preset(preset, steps=args.steps, batch_size=args.batch_size,
                           table_iv_rates=rates, table_v_masks=table_v)


def mask_settings_of(preset: Preset) -> list[str]:
    """The mask settings a run of ``preset`` trains and evaluates, in order: Table IV's, then
    Table V's (``radial20`` for the rate 0.2)."""
    table_iv = [f"radial{round(100 * r)}" for r in preset.table_iv_rates]
    return list(dict.fromkeys(table_iv + list(preset.table_v_masks)))


@exit_on_user_error()
def main(argv: Sequence[str] | None = None) -> dict:
    """Run the experiment; returns ``{'table_iv': {mask: summary}, 'table_v': {...},
    'claims': [...], 'regime': [...]}``."""
    parser = experiment_parser(__doc__, presets=PRESETS, name="ifrnet", predict=True)
    parser.add_argument("--masks", type=mask_settings, default=None, metavar="SETTINGS",
                        help="the mask settings to run, comma-separated: Table IV's pseudo-radial "
                             "rates radial10, radial20, radial30, radial40 and Table V's "
                             "1d_random, 2d_random, radial25; default: the preset's (cpu: "
                             "radial20 and Table V; paper: all)")
    parser.add_argument("--noisy-reference", type=snr_db, default=None, metavar="SNR_DB",
                        help="the reference is a noisy magnitude scan of this k-space SNR (dB), "
                             "its masked k-space measured without added noise (the paper "
                             "undersamples real scans); 'none': the noiseless image; default: "
                             f"the preset's ({SCAN_SNR_DB:g} dB)")
    parser.add_argument("--ablations", action="store_true",
                        help="also train the IFR-Net variants of Tables II, III, IX and X")
    return run_experiment(main, parser, argv, train=run,
                          predict=functools.partial(predict_command, build=build_ifrnet))


def run(args, setup) -> dict:
    """Train and evaluate every mask setting of the preset (``main`` without the command line)."""
    preset = preset_from_flags(setup.preset, args)
    workdir = setup.workdir
    check_batch_size(args.batch_size, preset.num_train, what="training slices of the preset")
    print(f"IFR-Net experiment, preset {setup.preset_name}, workdir {workdir}")
    slices = load_splits(args.data, image_size=preset.image_size,
                         orientation=preset.orientation, fractions=preset.split_fractions)
    settings = mask_settings_of(preset)
    table_iv = [s for s in settings if s in TABLE_IV_SETTINGS]
    results = {s: run_setting(s, slices, preset, workdir, args) for s in settings}
    out = {
        "table_iv": {s: results[s]["summary"] for s in table_iv},
        "table_v": {s: results[s]["summary"] for s in preset.table_v_masks},
    }
    for name, title in (("table_iv", "Table IV analog: pseudo-radial sampling rates"),
                        ("table_v", "Table V analog: sampling patterns at 25 %")):
        if out[name]:  # --masks may leave one table out
            _combined(name, title, out[name], workdir)
    fig_setting = "2d_random" if "2d_random" in results else settings[0]
    if "IFR-Net" in results[fig_setting]["trained"]:
        module, variables = results[fig_setting]["trained"]["IFR-Net"]
        save_t_maps(workdir / "fig12_t_maps.png", module, variables,
                    results[fig_setting]["data"]["test"],
                    f"IFR-Net feature descriptor maps, {fig_setting}")
    if args.ablations:
        out["ablations"] = run_ablations(slices, preset, workdir, args)
    out.update(report_claims(
        paper_claims(settings), setting_rows({s: results[s]["per_slice"] for s in settings}),
        workdir, regime=regime_rows(settings)))
    save_loss_curves(workdir)
    return out


if __name__ == "__main__":
    main()
