"""``--predict``: each experiment's trained models as a :class:`jaxmri.predict.Method`.

One ``build_<experiment>(preset, flags, workdir)`` per entry module; ``flags`` are the training
run's flags from ``run.json``. Each restores the trained states from the workdir's subfolders
(the same layout the experiment trains into), checks them against the preset's model, and
says how a volume's slices become the model's inputs:

* images (NIfTI, sliced along the orientation of the preset's training slices:
  ``Method.orientation``; the RSS of fully sampled k-space for the image-domain SR method): the
  experiment's own simulated acquisition, seeded by ``1000 * seed + 3`` (a split seed no
  training split uses) and the slice index;
* k-space (fastMRI): the measured data with the file's mask, or the preset's mask drawn per
  slice; coil maps estimated from the auto-calibration lines
  (:func:`jaxmri.predict.calibration_maps`) where training used maps computed from the fully
  sampled data; fully sampled files go through the experiment's own acquisition code where it
  has one for measured k-space (IFR-Net's real-valued re-measurement, the joint model's LR
  acquisition with ESPIRiT maps).

The main output comes first in ``Method.outputs``: InvSharpNet(back), DSGAN + EDSR, IFR-Net,
the refined RecNet, the proposed joint Rec/SR model.

From Python, :func:`load_method` does what ``--predict`` does before running::

    from experiments.predictors import load_method
    from jaxmri.predict import predict_path

    method = load_method("runs/invsharp/cpu")
    predict_path(method, "scan.nii.gz", "recon/")
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmri.errors import UserInputError
from jaxmri.data import acquire_slices, simulate_acquisition
from jaxmri.data._host_fft import host_ifft2c, host_sense_adjoint
from jaxmri.data.fastmri import center_crop
from jaxmri.predict import (
    Method,
    calibration_maps,
    draw_masks,
    measured_acquisition,
    restore_variables,
)
from jaxmri.train.report import folder_name
from jaxmri.train.run_record import read_run_record


def _image_seed(flags) -> int:
    return 1000 * int(flags.seed) + 3


def _template(module, *example):
    return jax.eval_shape(module.init, jax.random.key(0), *example)


def _c64(*shape):
    return jnp.zeros(shape, jnp.complex64)


def _f32(*shape):
    return jnp.zeros(shape, jnp.float32)


# --------------------------------------------------------------------------------------------
# InvSharpNet


def build_invsharp(preset, flags, workdir: Path) -> Method:
    """Recon model ``--recon-model`` + the five refinements of Table 2, after data consistency."""
    from experiments import invsharp
    from jaxmri.models import invsharp as isn
    from jaxmri.physics import equispaced_fraction_column_mask
    from jaxmri.physics.consistency import image_dc, projection_dc

    size, which = preset.image_size, int(flags.recon_model)
    recon = invsharp.recon_module(preset, which)
    example = (_c64(1, size, size), _c64(1, 2, size, size), _f32(1, 1, size, size),
               _c64(1, 2, size, size))
    variables = {"recon": restore_variables(workdir / f"recon{which}",
                                            template=_template(recon, *example))}
    networks = {}
    for label, method, weights in invsharp.METHOD_RUNS:
        network = isn.build_network(dataclasses.replace(preset.network, **weights))
        networks[label] = network
        variables[label] = restore_variables(
            workdir / folder_name(label), path=("generator",) if method == "cwgan" else (),
            template=_template(network, _f32(1, size, size, 4)))
    recon_label = f"Recon model {which}"
    main = "InvSharpNet(back)"
    outputs = (main, recon_label, *[label for label, _, _ in invsharp.METHOD_RUNS
                                    if label != main])
    mask_fn = functools.partial(equispaced_fraction_column_mask,
                                center_fraction=preset.center_fraction,
                                acceleration=preset.acceleration)
    # The experiment's tables apply one final DC to every row (``--final-dc``); so does predict.
    final_dc = image_dc if flags.final_dc == "coil" else projection_dc

    def apply(variables, b):
        blurry = recon.apply(variables["recon"], b["recon_input"], b["kspace"],
                             b["mask"][:, None], b["maps"])

        def consistent(image):
            return jnp.abs(final_dc(image, b["kspace"], b["mask"][:, None], maps=b["maps"]))

        out = {recon_label: consistent(blurry)}
        for label, network in networks.items():
            out[label] = consistent(isn.sharpen(network, variables[label], blurry))
        return out

    def acquire_image(images, ids):
        acq = simulate_acquisition(images, mask_fn=mask_fn, seed=_image_seed(flags),
                                   slice_index=ids, num_coils=preset.num_coils,
                                   snr_db=preset.snr_db, coil_radius=preset.coil_radius)
        acq = {k: acq[k] for k in ("kspace", "mask", "maps", "zero_filled")}
        return {**acq, "recon_input": invsharp.recon_input_images(preset, acq)}

    def acquire_kspace(kspace, mask, ids):
        masks = (np.broadcast_to(mask, (len(kspace), size, size)) if mask is not None
                 else draw_masks(mask_fn, _image_seed(flags), ids, (size, size)))
        acq = measured_acquisition(kspace, masks, calibration_maps(kspace * masks[:, None],
                                                                   masks))
        return {**acq, "recon_input": invsharp.recon_input_images(preset, acq)}

    (orientation,) = preset.orientations  # one per split (jaxmri.data.slicing)
    return Method("invsharp", size, outputs, variables, apply, acquire_image, acquire_kspace,
                  orientation=orientation)


# --------------------------------------------------------------------------------------------
# DSGAN + EDSR


def build_dsgan_sr(preset, flags, workdir: Path) -> Method:
    """The four EDSRs (ZF, GB, DSN, DSGAN pairs) and bicubic on the preset's scanner LR."""
    from experiments import dsgan_sr
    from jaxmri.nn.edsr import EDSR
    from jaxmri.physics import bicubic_resize

    size, lr = preset.image_size, preset.image_size // 2
    module = EDSR(num_blocks=preset.edsr_blocks, features=preset.edsr_features, scale=2)
    template = _template(module, _f32(1, lr, lr, 1))
    variables = {name: restore_variables(workdir / f"edsr_{name.lower()}", template=template)
                 for name in dsgan_sr.PAIRS}
    outputs = ("DSGAN + EDSR", "ZF + EDSR", "GB + EDSR", "DSN + EDSR", "Bicubic")

    def apply(variables, b):
        out = {f"{name} + EDSR": jnp.clip(module.apply(v, b["lr"][..., None])[..., 0], 0, 1)
               for name, v in variables.items()}
        out["Bicubic"] = jnp.clip(bicubic_resize(b["lr"], (size, size)), 0, 1)
        return out

    def acquire_image(images, ids):
        del ids  # the scanner simulation draws one key for the whole volume
        return {"lr": dsgan_sr.scanner_data(images, preset, _image_seed(flags))["lr"]}

    # k-space input: the RSS image of the (fully sampled) data through the same simulation.
    return Method("dsgan_sr", size, outputs, variables, apply, acquire_image,
                  undersampled_kspace=False, orientation=preset.orientation)


# --------------------------------------------------------------------------------------------
# IFR-Net


def build_ifrnet(preset, flags, workdir: Path) -> Method:
    """IFR-Net and the other learned methods of the run's first mask setting (its first Table IV
    rate unless ``--masks`` left Table IV out), and zero-filling."""
    from experiments import ifrnet

    preset = ifrnet.preset_from_flags(preset, flags)
    size = preset.image_size
    setting = ifrnet.mask_settings_of(preset)[0]
    learned = ("IFR-Net", *[m for m in preset.learned if m != "IFR-Net"])
    modules = {m: ifrnet.build_model(m, preset) for m in learned}
    example = {"kspace": np.zeros((1, size, size), np.complex64),
               "mask": np.zeros((1, size, size), np.float32),
               "zero_filled": np.zeros((1, size, size), np.complex64)}
    variables = {m: restore_variables(workdir / setting / m, template=_template(
        modules[m], *ifrnet._example_inputs(m, example))) for m in learned}
    mask_fn = ifrnet.mask_function(setting)

    def apply(variables, b):
        out = {m: jnp.abs(ifrnet.predictor(m, modules[m])(variables[m], b)) for m in learned}
        out["Zero-filled"] = jnp.abs(b["zero_filled"])
        return out

    def real_acquisition(slices, n):
        acq = ifrnet.real_valued_acquisition(slices, np.arange(n), mask_fn=mask_fn,
                                             seed=_image_seed(flags), snr_db=preset.snr_db,
                                             noisy_reference=preset.noisy_reference)
        return {k: acq[k] for k in ("kspace", "mask", "zero_filled")}

    def acquire_image(images, ids):
        return real_acquisition({"image": images}, len(images))

    def acquire_kspace(kspace, mask, ids):
        if mask is None:  # fully sampled: the magnitude re-measured, as training does
            return real_acquisition({"kspace": kspace}, len(kspace))
        masks = np.broadcast_to(mask, (len(kspace), size, size)).astype(np.float32)
        measured = (kspace[:, 0] * masks).astype(np.complex64)
        return {"kspace": measured, "mask": masks,
                "zero_filled": host_ifft2c(measured).astype(np.complex64)}

    return Method("ifrnet", size, (*learned, "Zero-filled"), variables, apply, acquire_image,
                  acquire_kspace, single_coil=True, orientation=preset.orientation)


# --------------------------------------------------------------------------------------------
# Refinement (paper 003)


def build_refine(preset, flags, workdir: Path) -> Method:
    """The refined RecNet (proposed), RecNet and the joint MSE + adversarial + VGG baseline."""
    from experiments import refine

    size, seed = preset.image_size, int(flags.seed)
    preset = refine.preset_from_flags(preset, flags)
    prog = refine.programs(preset, seed)
    recnet_template = _template(prog.recnet, _c64(1, size, size), _c64(1, 1, size, size),
                                _f32(1, 1, size, size), _c64(1, 1, size, size))
    variables = {
        "recnet": restore_variables(workdir / "recnet", template=recnet_template),
        "joint": restore_variables(workdir / "joint", path=("gen",), template=recnet_template),
        "refiner": restore_variables(workdir / "refine", path=("gen",),
                                     template=_template(prog.refiner, _f32(1, size, size))),
    }
    joint = "Joint MSE+adv+VGG" + (" (from RecNet)" if preset.joint_from_recnet else "")
    outputs = ("Proposed (refined)", "RecNet", joint, "Zero-filled")
    mask_fn = refine._mask_fn(preset)

    def apply(variables, b):
        base, joint_out, refined = prog.reconstruct(variables["recnet"], variables["joint"],
                                                    variables["refiner"], b)
        return {"Proposed (refined)": jnp.abs(refined), "RecNet": jnp.abs(base),
                joint: jnp.abs(joint_out), "Zero-filled": jnp.abs(b["zero_filled"])}

    def acquire_image(images, ids):
        acq = acquire_slices({"image": images}, np.arange(len(images)), mask_fn=mask_fn,
                             seed=_image_seed(flags), num_coils=1, snr_db=preset.snr_db,
                             max_phase=preset.max_phase)
        return {k: acq[k] for k in ("zero_filled", "kspace", "mask", "maps")}

    def acquire_kspace(kspace, mask, ids):
        masks = (np.broadcast_to(mask, (len(kspace), size, size)) if mask is not None
                 else draw_masks(mask_fn, _image_seed(flags), ids, (size, size)))
        return measured_acquisition(kspace, masks, calibration_maps(kspace * masks[:, None],
                                                                    masks))

    return Method("refine", size, outputs, variables, apply, acquire_image, acquire_kspace,
                  single_coil=True, orientation=preset.orientation)


# --------------------------------------------------------------------------------------------
# Joint reconstruction and super-resolution (paper 004)


def build_joint_recsr(preset, flags, workdir: Path) -> Method:
    """The proposed SFT model and the trained Table 1 / Table 3 rows of the first mask."""
    from experiments import joint_recsr as jrx

    preset = jrx.preset_from_flags(preset, flags)
    size, lr, coils = preset.image_size, preset.image_size // 2, preset.num_coils
    mask_name = preset.masks[0]
    rows = [m for m in (*preset.table1, *preset.table3) if m != "Proposed"]
    rows = ["Proposed", *dict.fromkeys(rows)]
    stages = {"Recon-SR": ("Recon-SR/rec", "Recon-SR/sr"), "MoDL+bicubic": ("MoDL",),
              "CG-SENSE+bicubic": ()}
    example = {"zero_filled": np.zeros((1, lr, lr), np.complex64),
               "kspace": np.zeros((1, coils, lr, lr), np.complex64),
               "mask": np.zeros((1, lr, lr), np.float32),
               "maps": np.zeros((1, coils, lr, lr), np.complex64),
               "maps_hr": np.zeros((1, coils, size, size), np.complex64)}
    predicts, variables = {}, {}
    for row in rows:
        for stage in stages.get(row, (row,)):
            module, predict, _, _ = jrx.build(stage, preset)
            predicts[stage] = predict
            variables[stage] = restore_variables(
                workdir / mask_name / stage.replace("/", "_"), path=("generator",),
                template=_template(module, *jrx._inputs(stage, example, 1)))

    def apply(variables, b):
        out = {}
        for row in rows:
            if row == "CG-SENSE+bicubic":
                rec = jrx.cg_sense(b["kspace"], b["maps"], b["mask"][:, None],
                                   lam=preset.cg_lam, max_iter=preset.cg_iters).image
                out[row] = jrx._upsample(rec)
            elif row == "MoDL+bicubic":
                out[row] = jrx._upsample(predicts["MoDL"](variables["MoDL"], b)["rec"])
            elif row == "Recon":
                out[row] = jnp.abs(predicts["Recon"](variables["Recon"], b)["rec"])
            elif row == "Recon-SR":
                rec = predicts["Recon-SR/rec"](variables["Recon-SR/rec"], b)["rec"]
                out[row] = predicts["Recon-SR/sr"](variables["Recon-SR/sr"],
                                                   {**b, "zero_filled": rec})["sr"]
            else:
                out[row] = predicts[row](variables[row], b)["sr"]
        return out

    def simulated(slices, n):
        acq = jrx.simulate_split(slices, np.arange(n), mask_name=mask_name,
                                 seed=_image_seed(flags), num_coils=coils,
                                 snr_db=preset.snr_db)
        return {k: acq[k] for k in jrx.INPUT_KEYS}

    def acquire_image(images, ids):
        return simulated({"image": images}, len(images))

    def acquire_kspace(kspace, mask, ids):
        if mask is None:  # fully sampled: the experiment's own LR acquisition (ESPIRiT maps)
            return simulated({"kspace": kspace}, len(kspace))
        masks = np.broadcast_to(mask, (len(kspace), size, size)).astype(np.float32)
        hr = (kspace * masks[:, None]).astype(np.complex64)
        lr_kspace = center_crop(hr, (lr, lr)) / 2.0
        lr_masks = np.ascontiguousarray(center_crop(masks, (lr, lr)))
        maps = calibration_maps(lr_kspace, lr_masks)
        return {"zero_filled": host_sense_adjoint(lr_kspace, maps),
                "kspace": lr_kspace.astype(np.complex64), "mask": lr_masks,
                "maps": maps, "maps_hr": calibration_maps(hr, masks)}

    return Method("joint_recsr", size, tuple(rows), variables, apply, acquire_image,
                  acquire_kspace, orientation=preset.orientation)


BUILDERS = {"invsharp": build_invsharp, "dsgan_sr": build_dsgan_sr, "ifrnet": build_ifrnet,
            "refine": build_refine, "joint_recsr": build_joint_recsr}


def load_method(workdir: str | os.PathLike) -> Method:
    """The trained method of a workdir, rebuilt from its ``run.json`` and checkpoints.

    Raises ``ValueError`` naming the problem when the workdir holds no trained model.
    """
    record = read_run_record(workdir)
    if record["experiment"] not in BUILDERS:
        raise UserInputError(f"{workdir} was trained by experiments.{record['experiment']}, which "
                         f"has no predictor (known: {sorted(BUILDERS)})")
    presets = importlib.import_module(f"experiments.{record['experiment']}").PRESETS
    if record["preset"] not in presets:
        raise UserInputError(f"{workdir}/run.json names preset {record['preset']!r}, which "
                         f"experiments.{record['experiment']} does not have ({sorted(presets)})")
    flags = argparse.Namespace(**record["flags"], preset=record["preset"],
                               experiment=record["experiment"])
    return BUILDERS[record["experiment"]](presets[record["preset"]], flags, Path(workdir))
