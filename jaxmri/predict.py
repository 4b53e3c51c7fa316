"""Apply a trained method to a user's scans: NIfTI or fastMRI HDF5 in, files and a table out.

``python -m experiments.NAME --workdir RUN --predict PATH [--out DIR] [--all-methods]`` ends
in :func:`predict_command`; from Python, build a :class:`Method` (each experiment's
``experiments.predictors`` function does it from a trained workdir) and call
:func:`predict_path` (files in, files out) or :func:`predict_slices` (arrays in, arrays out).

What a method is here (:class:`Method`): the side ``S`` of its square slices, its trained
variables, a jittable ``apply(variables, batch) -> {output label: (B, S, S) float32
magnitude}`` and two host-side acquisitions that turn a volume's slices into the batch arrays:

* ``acquire_image(images, slice_ids)``: images ``(N, S, S)`` in ``[0, 1]`` (a NIfTI volume's
  slices, or the RSS of fully sampled k-space) through the preset's *simulated* acquisition,
  as in training (seeded by the run's seed and the slice index);
* ``acquire_kspace(kspace, mask, slice_ids)``: measured k-space ``(N, C, S, S)`` on the model
  grid and the file's own mask ``(S, S)`` (``None`` for fully sampled data: the method then
  draws the preset's mask), through the method's own acquisition path.

Geometry (the inverse is applied to the outputs, so they land on the input's grid):

* fastMRI HDF5 (``kspace`` ``(slices, [coils,] H, W)``): as in training
  (:func:`jaxmri.data.fastmri.load_fastmri_slices`), coil images are centre-cropped to the
  header's recon size ``(h, w)``, then to the centred square of side ``s = min(h, w)``, Fourier
  resampled to ``S`` and divided by the volume's maximum RSS (of the fully sampled data; of the
  zero-filled data when the file is under-sampled). The output is resampled back to ``s`` and
  multiplied by that scale: ``reconstruction`` is ``(slices, s, s)`` float32 in the file's
  units, which is fastMRI's layout for the square recon sizes of its knee and brain data (its
  ``evaluate.py`` crops target and reconstruction to ``(w, w)``). A file's own ``mask``
  dataset (``(W,)`` over k-space columns, fastMRI's test files) is carried to the model grid by
  frequency: column ``q`` (centred) of the ``S`` grid is sampled when column
  ``W // 2 + round(q W / s)`` of the file is; exact when ``W == s == S``, otherwise an
  approximation (the cropped, resampled data interpolate between measured and empty columns).
* NIfTI: the volume is reoriented to RAS (``nibabel.as_closest_canonical``), min-max normalised,
  cropped in-plane to its foreground box and sliced along the axis the model was trained on
  (``Method.orientation``: sagittal, coronal or axial, from the run's preset), every slice
  rotated, zero-padded to a square in millimetres and resized to ``S``: the training rule of
  :func:`jaxmri.data.slicing.volume_to_slices`, so a slice of the user's volume reaches the
  model as the training slice at that position would. Outputs are resized back,
  un-normalised, placed in the volume (outside the foreground box: the volume's minimum) and
  reoriented to the input's voxel order, so the ``.nii.gz`` has the input's shape and affine.

Evaluation (when a ground truth exists: ``reconstruction_rss`` / ``reconstruction_esc`` in the
file, or the NIfTI volume itself): fastMRI's volume metrics (``evaluate.py``), NMSE and PSNR over
the whole volume with ``data_range = gt.max()`` and SSIM per slice (7x7 uniform window; a NIfTI
volume's slices along its last voxel axis, as stored, whatever the model's orientation) with the
volume maximum as data range, averaged over slices (:func:`jaxmri.metrics.fastmri_volume_metrics`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxmri.errors import UserInputError
from jaxmri.data._host_fft import host_fft2c, host_ifft2c, host_rss, host_sense_adjoint
from jaxmri.data.fastmri import _fourier_resample, center_crop, list_fastmri_files, read_fastmri_h5
from jaxmri.data.nifti import NIFTI_SUFFIXES, read_nifti
from jaxmri.data.slicing import ORIENTATIONS, resize_2d
from jaxmri.data.sources import source_kind
from jaxmri.metrics import fastmri_volume_metrics
from jaxmri.train.cli import add_predict_flags
from jaxmri.train.report import folder_name
from jaxmri.train.run_record import read_run_record

__all__ = [
    "Method",
    "add_predict_flags",
    "restore_variables",
    "calibration_maps",
    "measured_acquisition",
    "draw_masks",
    "predict_slices",
    "predict_path",
    "metrics_table",
    "predict_command",
]


@dataclasses.dataclass(frozen=True)
class Method:
    """A trained method, ready to run on slices (see the module docstring).

    Attributes:
      name: the experiment's name (``invsharp``), for messages.
      image_size: side ``S`` of the square slices the model was trained on.
      outputs: output labels, the method's main output first (e.g. ``InvSharpNet(back)``).
      variables: the pytree passed to ``apply`` (every trained model's variables).
      apply: jittable ``(variables, batch) -> {label: (B, S, S) float32}`` for every label of
        ``outputs``; ``batch`` is a dict of arrays from one of the acquisitions.
      acquire_image: ``(images (N, S, S) float32 in [0, 1], slice_ids (N,) int) -> arrays``.
      acquire_kspace: ``(kspace (N, C, S, S) complex64, mask (S, S) float32 or None,
        slice_ids) -> arrays``; ``None`` if the method cannot take k-space.
      single_coil: the model was trained on single-coil k-space and rejects multi-coil files.
      undersampled_kspace: the method accepts a file that is already under-sampled (has a mask).
      orientation: the slicing axis of the training slices (``"sagittal"``, ``"coronal"`` or
        ``"axial"``, :data:`jaxmri.data.slicing.ORIENTATIONS`); a NIfTI volume is sliced
        along it. The experiments' builders take it from the run's preset.
    """

    name: str
    image_size: int
    outputs: tuple[str, ...]
    variables: Any
    apply: Callable[[Any, dict], dict]
    acquire_image: Callable[[np.ndarray, np.ndarray], dict]
    acquire_kspace: Callable[[np.ndarray, np.ndarray | None, np.ndarray], dict] | None = None
    single_coil: bool = False
    undersampled_kspace: bool = True
    orientation: str = "axial"

    def __post_init__(self):
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got "
                             f"{self.orientation!r}")


# --------------------------------------------------------------------------------------------
# Restoring trained states


def restore_variables(directory: str | os.PathLike, *, path: Sequence[str] = (),
                      template: Any = None, step: int | None = None) -> dict:
    """The Flax variables of a train state saved by :func:`jaxmri.train.fit` in ``directory``.

    Restores the newest checkpoint of ``<directory>/checkpoints`` (or the one of ``step``)
    without a template (as nested dicts of numpy arrays), walks ``path`` into it (e.g.
    ``("generator",)`` for a GAN state) and returns ``{'params': ..., **model_state}``.

    Args:
      directory: the ``workdir`` a ``fit`` call trained in.
      path: keys leading from the checkpoint's root to the train state.
      template: optional variables (or ``jax.eval_shape`` of ``module.init``) whose structure,
        shapes and dtypes the restored variables must match.
      step: the checkpoint of this step (the state after ``step`` updates) instead of the
        newest, e.g. to follow a metric over training (``fit(keep_checkpoints=...)`` sets how
        many are kept).

    Raises:
      ValueError: no checkpoint there (or none of ``step``, the message lists those there), or
        one that does not match ``template``.
    """
    directory = Path(directory)
    checkpoints = directory / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()) \
        if checkpoints.is_dir() else []
    if not steps:
        raise UserInputError(f"{directory} holds no trained model (no checkpoint in {checkpoints})")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserInputError(f"{checkpoints} has no checkpoint of step {step} (it has steps "
                             f"{', '.join(map(str, steps))})")
    with ocp.CheckpointManager(checkpoints.absolute()) as manager:
        tree = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]
    for key in path:
        tree = tree[key]
    variables = {"params": tree["params"], **(tree.get("model_state") or {})}
    if template is not None:
        _check_structure(variables, template, checkpoints / str(step))
    return variables


def _check_structure(variables: Any, template: Any, where: Path) -> None:
    have = {jax.tree_util.keystr(k): (np.shape(v), np.result_type(v))
            for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    want = {jax.tree_util.keystr(k): (tuple(v.shape), np.dtype(v.dtype))
            for k, v in jax.tree_util.tree_leaves_with_path(template)}
    if have.keys() != want.keys():
        missing = sorted(want.keys() - have.keys())[:3]
        raise UserInputError(f"checkpoint {where} does not hold this preset's model (missing "
                         f"{missing}): was RUN trained with another version of jaxmri?")
    for name, (shape, dtype) in want.items():
        if have[name][0] != shape:
            raise UserInputError(f"checkpoint {where} does not hold this preset's model: {name} is "
                             f"{list(have[name][0])} there, {list(shape)} in the model")


# --------------------------------------------------------------------------------------------
# Acquisition helpers shared by the methods


def draw_masks(mask_fn: Callable, seed: int, slice_ids: np.ndarray,
               shape: tuple[int, int]) -> np.ndarray:
    """``(N, H, W)`` float32 masks, slice ``i`` drawn by ``mask_fn`` from
    :func:`jaxmri.data.simulate.slice_rng` ``(seed, slice_ids[i])`` (its first draw, as
    :func:`jaxmri.data.acquisition_from_kspace` draws it)."""
    from jaxmri.data.simulate import slice_rng

    return np.stack([np.asarray(mask_fn(slice_rng(seed, int(i)), shape)[0], np.float32)
                     for i in slice_ids])


def calibration_maps(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Coil maps estimated from the fully sampled centre of under-sampled k-space.

    The contiguous run of sampled columns around the k-space centre (the auto-calibration
    lines) gives low-resolution coil images ``x_c``; the maps are ``x_c / rss(x)``
    (``1 / sqrt(C)`` where ``rss(x) == 0``), so ``sum_c |S_c|^2 = 1``, the estimate fastMRI's
    VarNet starts from. Single-coil data get the phase of the low-resolution image.

    Args:
      kspace: ``(N, C, H, W)`` complex k-space (zero off the mask).
      mask: ``(N, H, W)`` or ``(H, W)`` 0/1 sampling mask.

    Returns:
      ``(N, C, H, W)`` complex64 maps.
    """
    kspace = np.asarray(kspace, np.complex64)
    masks = np.broadcast_to(np.asarray(mask, np.float32), (kspace.shape[0], *kspace.shape[-2:]))
    width = kspace.shape[-1]
    maps = np.empty_like(kspace)
    for i, m in enumerate(masks):
        sampled = np.all(m > 0, axis=0)  # fully sampled columns
        centre = width // 2
        lo = hi = centre
        while lo > 0 and sampled[lo - 1]:
            lo -= 1
        while hi < width - 1 and sampled[hi + 1]:
            hi += 1
        if not sampled[centre]:
            lo, hi = centre, centre  # no calibration lines: the DC column alone
        window = np.zeros(width, np.float32)
        window[lo:hi + 1] = 1.0
        low = host_ifft2c(kspace[i] * window)
        combined = host_rss(low, axis=0)[None]
        safe = np.where(combined > 0, combined, 1.0)
        maps[i] = np.where(combined > 0, low / safe, 1.0 / np.sqrt(kspace.shape[1]))
    return maps


def measured_acquisition(kspace: np.ndarray, masks: np.ndarray,
                         maps: np.ndarray) -> dict[str, np.ndarray]:
    """``{'kspace', 'mask', 'maps', 'zero_filled'}`` of measured k-space (the acquisition dict
    of :mod:`jaxmri.data.simulate` without a target): ``kspace * mask`` and its SENSE adjoint."""
    masked = (np.asarray(kspace) * masks[:, None]).astype(np.complex64)
    return {"kspace": masked, "mask": masks.astype(np.float32),
            "maps": np.asarray(maps, np.complex64),
            "zero_filled": host_sense_adjoint(masked, maps)}


# --------------------------------------------------------------------------------------------
# Running a method over slices


def predict_slices(method: Method, arrays: Mapping[str, np.ndarray], *, batch_size: int = 8,
                   progress: bool = True, desc: str = "slices",
                   timings: list | None = None) -> dict[str, np.ndarray]:
    """Run ``method.apply`` over arrays with a leading slice axis; ``{label: (N, S, S)}``.

    Batches are jitted once (the last one is padded) and split over every local device (the
    batch size is rounded up to a multiple of the device count); the variables are replicated.
    A tqdm bar counts slices when ``progress`` (stderr). ``timings``, when given, receives
    ``(slices, seconds)`` of every batch (the first one includes compilation).
    """
    n = {np.shape(v)[0] for v in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"arrays must share their leading slice axis, got {sorted(n)}")
    (n,) = n
    devices = jax.local_devices()
    batch = math.ceil(max(1, min(batch_size, n)) / len(devices)) * len(devices)
    mesh = Mesh(np.asarray(devices), ("slices",))
    shard = NamedSharding(mesh, PartitionSpec("slices"))
    variables = jax.device_put(method.variables, NamedSharding(mesh, PartitionSpec()))
    apply = jax.jit(method.apply)
    outputs = []
    with tqdm(total=n, desc=desc, unit="slice", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            index = np.minimum(np.arange(start, start + batch), stop - 1)
            started = time.perf_counter()
            chunk = jax.device_put({k: np.asarray(v)[index] for k, v in arrays.items()}, shard)
            out = apply(variables, chunk)
            outputs.append({k: np.asarray(out[k], np.float32)[:stop - start]
                            for k in method.outputs})
            if timings is not None:
                timings.append((stop - start, time.perf_counter() - started))
            bar.update(stop - start)
    return {k: np.concatenate([o[k] for o in outputs]) for k in method.outputs}


# --------------------------------------------------------------------------------------------
# Volume evaluation (fastMRI evaluate.py)


def _volume_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """:func:`jaxmri.metrics.fastmri_volume_metrics` of ``pred`` against ``gt`` (both
    ``(slices, H, W)`` real) as plain floats, for the metrics table and ``metrics.json``."""
    metrics = fastmri_volume_metrics(np.asarray(pred, np.float32), np.asarray(gt, np.float32))
    return {name: float(value) for name, value in metrics.items()}


# --------------------------------------------------------------------------------------------
# Volumes in, volumes out


@dataclasses.dataclass
class _Volume:
    """One input volume on the model grid and how to carry outputs back to the input's grid."""

    name: str                      # output file stem
    arrays: dict[str, np.ndarray]  # the method's batch arrays (leading axis: slices)
    to_input_grid: Callable[[np.ndarray], np.ndarray]
    ground_truth: np.ndarray | None  # on the input grid, same layout as to_input_grid's output
    write: Callable[[Path, np.ndarray], None]
    suffix: str


def _file_mask(path: str) -> np.ndarray | None:
    with h5py.File(path, "r") as f:
        return np.asarray(f["mask"][()], np.float32) if "mask" in f else None


def _grid_mask(mask: np.ndarray, width: int, side: int, size: int) -> np.ndarray:
    """The file's column mask ``(W,)`` carried to the ``size`` grid (module docstring)."""
    q = np.arange(size) - size // 2
    p = width // 2 + np.round(q * width / side).astype(np.int64)
    inside = (p >= 0) & (p < width) & (np.abs(q) < max(1, min(side, size) // 2) + 1)
    columns = np.where(inside, mask[np.clip(p, 0, width - 1)] > 0, False)
    return np.broadcast_to(columns[None].astype(np.float32), (size, size)).copy()


def _fastmri_volume(path: str, method: Method, seed_ids: np.ndarray | None = None) -> _Volume:
    record = read_fastmri_h5(path)
    size = method.image_size
    coils = record["kspace"] if record["multicoil"] else record["kspace"][:, None]
    num_coils = coils.shape[1]
    if method.single_coil and num_coils != 1:
        raise UserInputError(f"{path}: the {method.name} model was trained on single-coil k-space, "
                         f"this file has {num_coils} coils (use a single-coil file or an image)")
    h, w = record["recon_size"]
    side = min(h, w)
    if side < size:
        raise UserInputError(f"{path}: recon size {h}x{w} is smaller than the model's image size "
                         f"{size}x{size}")
    file_mask = _file_mask(path)
    if file_mask is not None and not method.undersampled_kspace:
        raise UserInputError(f"{path} is under-sampled (it has a 'mask'); {method.name} needs "
                         "fully sampled k-space or an image")
    images = center_crop(host_ifft2c(coils), (h, w))
    images = _fourier_resample(center_crop(images, (side, side)), size)
    kspace = host_fft2c(images)
    mask = None
    if file_mask is not None:
        mask = _grid_mask(file_mask, coils.shape[-1], side, size)
        kspace = kspace * mask
        images = host_ifft2c(kspace)
    scale = float(host_rss(images, axis=1).max())
    if scale <= 0:
        raise UserInputError(f"{path}: the volume is all zeros after cropping")
    kspace = (kspace / scale).astype(np.complex64)
    ids = np.arange(len(kspace))
    if method.acquire_kspace is not None:
        arrays = method.acquire_kspace(kspace, mask, ids)
    else:
        arrays = method.acquire_image(host_rss(host_ifft2c(kspace), axis=1).astype(np.float32),
                                      ids)

    def to_input_grid(out: np.ndarray) -> np.ndarray:
        back = _fourier_resample(np.asarray(out, np.complex64), side).real
        return (back * scale).astype(np.float32)

    gt = record["reconstruction"]
    gt = None if gt is None else center_crop(gt, (side, side))
    attrs = record["attrs"]

    def write(target: Path, recon: np.ndarray) -> None:
        with h5py.File(target, "w") as f:
            f.create_dataset("reconstruction", data=np.asarray(recon, np.float32))
            for key, value in attrs.items():
                f.attrs[key] = value

    return _Volume(Path(path).name.rsplit(".", 1)[0], arrays, to_input_grid, gt, write, ".h5")


def _nifti_volume(path: str, method: Method, *, foreground_threshold: float = 0.05,
                  margin: int = 2) -> _Volume:
    import nibabel as nib

    # The reader's checks (missing, corrupt, complex, several volumes, non-finite) apply here too;
    # it returns the RAS-canonical volume and its voxel spacing.
    volume, spacing = read_nifti(path)
    original = nib.load(path)  # header and affine only: the output goes back to this grid
    size = method.image_size
    lo, hi = float(volume.min()), float(volume.max())
    if hi <= lo:
        raise UserInputError(f"NIfTI file {path!r} is constant ({lo}); nothing to predict")
    norm = (volume - lo) / (hi - lo)
    # The model's slicing axis last: slice k is stack[:, :, k], its two in-plane axes in the
    # volume's order, as jaxmri.data.slicing cuts the training slices.
    axis = ORIENTATIONS.index(method.orientation)
    in_plane = [a for a in range(3) if a != axis]
    stack = np.moveaxis(norm, axis, -1)
    # In-plane foreground box (the training rule), over all slices.
    fg = np.nonzero(np.any(stack > foreground_threshold, axis=2))
    xs = slice(max(0, fg[0].min() - margin), min(stack.shape[0], fg[0].max() + 1 + margin))
    ys = slice(max(0, fg[1].min() - margin), min(stack.shape[1], fg[1].max() + 1 + margin))
    # Rows of rot90(stack[:, :, k]) run along the second in-plane axis.
    plane_spacing = (spacing[in_plane[1]], spacing[in_plane[0]])
    box = stack[xs, ys]
    plane_shape = (box.shape[1], box.shape[0])
    side_mm = max(plane_shape[0] * plane_spacing[0], plane_shape[1] * plane_spacing[1])
    padded = [max(n, int(round(side_mm / d))) for n, d in zip(plane_shape, plane_spacing)]
    if max(padded) < size:
        raise UserInputError(f"{path}: the volume's {method.orientation} slices "
                         f"({stack.shape[0]}x{stack.shape[1]} voxels, {padded[0]}x{padded[1]} "
                         f"padded) are smaller than the model's image size {size}x{size}")
    pads = [((t - n) // 2, t - n - (t - n) // 2) for t, n in zip(padded, plane_shape)]
    slices = np.stack([
        np.clip(resize_2d(np.pad(np.rot90(box[:, :, k]), pads), (size, size)), 0.0, 1.0)
        for k in range(stack.shape[2])]).astype(np.float32)
    arrays = method.acquire_image(slices, np.arange(len(slices)))
    to_original = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")),
        nib.orientations.io_orientation(original.affine))

    def to_input_grid(out: np.ndarray) -> np.ndarray:
        result = np.zeros(stack.shape, np.float32)
        for k, plane in enumerate(out):
            plane = resize_2d(np.asarray(plane, np.float32), padded)
            plane = plane[pads[0][0]:pads[0][0] + plane_shape[0],
                          pads[1][0]:pads[1][0] + plane_shape[1]]
            result[xs, ys, k] = np.rot90(plane, k=-1)
        result = np.moveaxis(result, -1, axis) * (hi - lo) + lo
        return np.asarray(nib.orientations.apply_orientation(result, to_original), np.float32)

    def write(target: Path, data: np.ndarray) -> None:
        image = nib.Nifti1Image(np.asarray(data, np.float32), original.affine)
        image.header.set_xyzt_units(*original.header.get_xyzt_units())
        image.set_qform(original.affine, code=int(original.header["qform_code"]) or 1)
        image.set_sform(original.affine, code=int(original.header["sform_code"]) or 1)
        nib.save(image, target)

    gt = np.asarray(nib.orientations.apply_orientation(volume, to_original), np.float32)
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _Volume(name, arrays, to_input_grid, gt, write, ".nii.gz")


def _nifti_eval_region(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Slices along the last voxel axis (as stored, whatever the model's slicing axis: a thin
    # slab has too few voxels across for SSIM's window in another direction); fastMRI's
    # metrics need (slices, H, W).
    return np.moveaxis(gt, -1, 0), np.moveaxis(pred, -1, 0)


def _inputs(path: str) -> list[tuple[str, str]]:
    kind = source_kind(path)
    if kind == "nifti":
        return [("nifti", os.fspath(path))]
    if kind == "fastmri":
        return [("fastmri", f) for f in list_fastmri_files(path)]
    raise UserInputError(f"--predict needs a NIfTI file, a fastMRI .h5 file or a folder of them, "
                     f"got {path!r}")


def _save_slices_png(path: Path, images: Mapping[str, np.ndarray], *, count: int = 3) -> None:
    """A grid: one row per shown slice (evenly spaced through the middle of the volume), one
    column per image of ``images`` (each ``(slices, H, W)``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = next(iter(images.values())).shape[0]
    shown = np.unique(np.linspace(n * 0.25, n * 0.75, count).round().astype(int).clip(0, n - 1))
    fig = Figure(figsize=(2.0 * len(images), 2.0 * len(shown)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), len(images), squeeze=False)
    for row, index in enumerate(shown):
        vmax = max(float(np.max(v[index])) for v in images.values()) or 1.0
        for col, (label, volume) in enumerate(images.items()):
            ax = axes[row, col]
            ax.imshow(volume[index], cmap="gray", vmin=0.0, vmax=vmax)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(label, fontsize=7)
        axes[row, 0].text(-2, volume.shape[1] / 2, f"slice {index}", rotation=90, fontsize=6,
                          va="center", ha="right")
    fig.tight_layout()
    fig.savefig(path)


def predict_path(method: Method, path: str | os.PathLike, out: str | os.PathLike, *,
                 all_methods: bool = False, batch_size: int = 8,
                 progress: bool = True) -> list[dict]:
    """Run ``method`` on every slice of ``path`` and write the outputs under ``out``.

    Args:
      method: the trained method.
      path: a NIfTI volume, a fastMRI ``.h5`` file or a folder of them.
      out: output folder (created). The main output of volume ``NAME`` goes to ``out/NAME.h5``
        (fastMRI reconstruction layout) or ``out/NAME.nii.gz``; with ``all_methods`` every other
        output to ``out/<output folder>/NAME...``; a PNG panel to ``out/NAME.png``.
      all_methods: also write the method's other outputs.
      batch_size: slices per jitted batch (rounded up to a multiple of the device count).
      progress: show a tqdm bar over slices.

    Returns:
      One dict per volume: ``input``, ``files`` (written), ``slices``, ``prepare_seconds``
      (reading the file and the host-side acquisition), ``seconds`` (prediction wall time
      including compilation), ``seconds_per_slice`` (excluding the first batch, which
      compiles; ``nan`` with a single batch) and ``metrics`` (``{label: {PSNR, NMSE, SSIM}}``,
      empty without a ground truth).
    """
    out = Path(out)
    inputs = _inputs(path)
    out.mkdir(parents=True, exist_ok=True)
    labels = method.outputs if all_methods else method.outputs[:1]
    results = []
    for kind, file in inputs:
        reading = time.perf_counter()
        volume = _nifti_volume(file, method) if kind == "nifti" else _fastmri_volume(file, method)
        prepare_seconds = time.perf_counter() - reading
        n = len(next(iter(volume.arrays.values())))
        timings: list = []
        outputs = predict_slices(method, volume.arrays, batch_size=batch_size,
                                 progress=progress, desc=Path(file).name, timings=timings)
        rest = timings[1:]
        files, metrics, shown = [], {}, {}
        for number, label in enumerate(labels):
            on_grid = volume.to_input_grid(outputs[label])
            folder = out if number == 0 else out / folder_name(label)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{volume.name}{volume.suffix}"
            if target.resolve() == Path(file).resolve():
                raise UserInputError(f"--out {out} would overwrite the input {file}")
            volume.write(target, on_grid)
            files.append(str(target))
            if volume.ground_truth is not None:
                gt, pred = (volume.ground_truth, on_grid) if kind == "fastmri" else \
                    _nifti_eval_region(volume.ground_truth, on_grid)
                metrics[label] = _volume_metrics(gt, pred)
            shown[label] = on_grid if kind == "fastmri" else np.moveaxis(on_grid, -1, 0)
        if volume.ground_truth is not None:
            shown["ground truth"] = volume.ground_truth if kind == "fastmri" else \
                np.moveaxis(volume.ground_truth, -1, 0)
        png = out / f"{volume.name}.png"
        _save_slices_png(png, shown)
        files.append(str(png))
        results.append({
            "input": file, "files": files, "slices": n, "prepare_seconds": prepare_seconds,
            "seconds": sum(seconds for _, seconds in timings),
            "seconds_per_slice": (sum(seconds for _, seconds in rest)
                                  / sum(count for count, _ in rest)) if rest else math.nan,
            "metrics": metrics,
        })
    return results


def metrics_table(results: Sequence[dict]) -> str:
    """Markdown table of :func:`predict_path`'s metrics: one row per (volume, output)."""
    lines = ["| input | output | PSNR (dB) | NMSE | SSIM |", "|---|---|---|---|---|"]
    for result in results:
        for label, row in result["metrics"].items():
            lines.append(f"| {Path(result['input']).name} | {label} | {row['PSNR']:.2f} | "
                         f"{row['NMSE']:.4f} | {row['SSIM']:.4f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Command line


def predict_command(args: argparse.Namespace,
                    build: Callable[[Any, argparse.Namespace, Path], Method]) -> list[dict]:
    """``--predict``: rebuild the method trained in ``args.workdir`` and run it on a path.

    ``build(preset, flags, workdir) -> Method`` restores the experiment's trained models;
    ``flags`` is the training run's flags (from ``run.json``, over the defaults in
    ``args._flag_defaults`` that :func:`jaxmri.train.cli.run_experiment` sets, so that a flag
    added after the run was trained has its default) as a namespace. Prints the files
    written, the time per slice and the metrics table (also ``<out>/metrics.md`` and
    ``metrics.json``). Bad input (a RUN without a trained model, a file the model cannot take)
    raises :class:`jaxmri.errors.UserInputError`, which the experiments' ``main`` (wrapped in
    :func:`jaxmri.train.cli.exit_on_user_error`) prints as one ``error: ...`` line, exit 2.
    """
    if args.workdir is None:
        raise UserInputError("--predict needs --workdir RUN, the folder of a trained run")
    workdir = Path(args.workdir)
    record = read_run_record(workdir, experiment=args.experiment)
    presets = args._presets
    if record["preset"] not in presets:
        raise UserInputError(f"{workdir}/run.json names preset {record['preset']!r}, which "
                         f"experiments.{args.experiment} no longer has ({sorted(presets)})")
    # The recorded flags over today's defaults: a flag added after the run was trained gets the
    # default, which is what that run used.
    flags = argparse.Namespace(**{**getattr(args, "_flag_defaults", {}), **record["flags"],
                                  "preset": record["preset"],
                                  "experiment": record["experiment"]})
    print(f"[predict] {args.experiment}, preset {record['preset']} (from {workdir}/run.json)")
    method = build(presets[record["preset"]], flags, workdir)
    out = args.out if args.out is not None else workdir / "predictions"
    results = predict_path(method, args.predict, out, all_methods=args.all_methods,
                           batch_size=args.batch_size or 8,
                           progress=os.environ.get("JAXMRI_NO_PROGRESS") != "1")
    for result in results:
        per_slice = result["seconds_per_slice"]
        timing = f"{1e3 * per_slice:.1f} ms per slice after compilation" \
            if math.isfinite(per_slice) else "one batch"
        print(f"[predict] {result['input']}: {result['slices']} slices, input prepared in "
              f"{result['prepare_seconds']:.1f} s, predicted in {result['seconds']:.1f} s "
              f"({timing}) -> " + ", ".join(result["files"]))
    if any(r["metrics"] for r in results):
        table = metrics_table(results)
        Path(out, "metrics.md").write_text(
            "Volume evaluation as fastMRI's evaluate.py (NMSE, PSNR over the volume; SSIM per "
            "slice with the volume maximum)\n\n" + table)
        print(table)
    Path(out, "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
