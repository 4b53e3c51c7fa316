"""Users' own volumes: any NIfTI file (``.nii`` / ``.nii.gz``) read with nibabel.

The volume is reoriented to the closest RAS-canonical orientation (``nibabel.as_closest_canonical``)
so that the orientation ids 0/1/2 mean sagittal/coronal/axial, its voxel sizes are taken from the
header, and it is sliced exactly like the embedded template
(:func:`jaxmri.data.slicing.volume_to_slices`).

What is refused, with a :class:`jaxmri.errors.UserInputError` naming the file (never guessed):

* a complex-valued image (``complex64``/``complex128`` data type): every pipeline here reads
  real magnitude volumes, and taking the real part (what ``np.asarray(..., float32)`` would do)
  silently drops half the signal. The message says to save the magnitude ``np.abs(volume)``.
* a 4-D file with more than one volume (fMRI, DWI): which volume is meant is the user's choice.
  A 4-D file whose fourth axis has length 1 is read as the 3-D volume it is.
* other dimensionalities, non-finite voxels, a constant volume, and a volume too small to give
  every split slices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jaxmri.data.slicing import DEFAULT_FRACTIONS, DEFAULT_ORIENTATIONS, volume_to_slices
from jaxmri.errors import MissingInputError, UserInputError

__all__ = ["read_nifti", "load_nifti_slices"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a NIfTI volume in RAS-canonical voxel order.

    Args:
      path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
      ``(volume, spacing)``: ``float32`` ``(X, Y, Z)`` array and the voxel size in mm.

    Raises:
      MissingInputError (a ``FileNotFoundError``): ``path`` does not exist.
      UserInputError (a ``ValueError``): the file is not a readable NIfTI image (truncated,
        another format), holds complex values, is not 3-D (or 4-D with one volume), or holds
        non-finite values. See the module docstring.
    """
    import nibabel as nib  # imported lazily: only NIfTI users pay for it

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(f"NIfTI file {path!r} does not exist")
    try:
        img = nib.as_closest_canonical(nib.load(path))
        stored = np.dtype(img.get_data_dtype())
        if stored.kind == "c":
            raise UserInputError(
                f"NIfTI file {path!r} holds complex values ({stored}); jaxmri reads real "
                "magnitude volumes and will not take the real part: save the magnitude "
                "(numpy.abs of the volume) as a real NIfTI and pass that"
            )
        data = np.asarray(img.dataobj, np.float32)
    except UserInputError:
        raise
    except Exception as err:  # nibabel raises several types for a corrupt or foreign file
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserInputError(f"{path!r} is not a readable NIfTI file ({reason}); pass a "
                             "complete .nii or .nii.gz image") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise UserInputError(
            f"NIfTI file {path!r} is 4-D with {data.shape[3]} volumes (shape {data.shape}); "
            "pass one 3-D volume (e.g. save img.slicer[..., 0] with nibabel)"
        )
    if data.ndim != 3:
        raise UserInputError(
            f"NIfTI file {path!r} must hold a 3-D volume, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise UserInputError(
            f"NIfTI file {path!r} contains {bad} non-finite voxels (NaN or inf); fix or mask "
            "them before training")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, spacing


def load_nifti_slices(
    path: str | os.PathLike,
    *,
    image_size: int,
    split: str = "train",
    labels_path: str | os.PathLike | None = None,
    orientations: Sequence[str] = DEFAULT_ORIENTATIONS,
    min_foreground: float = 0.2,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cycle: int = 64,
    guard: int = 4,
) -> dict[str, np.ndarray]:
    """Square 2-D slices of a NIfTI volume (same output as the embedded loader).

    Args:
      path: the image volume (``.nii`` / ``.nii.gz``, 3-D or 4-D).
      image_size: side ``S`` of the output slices.
      split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
      labels_path: optional integer label volume on the same voxel grid; its labels (0..255)
        are resized by nearest neighbour. Without it the result has no ``labels`` key.
      orientations, min_foreground, fractions, cycle, guard: see
        :func:`jaxmri.data.slicing.volume_to_slices`.

    Returns:
      Slices dict: ``image`` ``(N, S, S)`` float32 in ``[0, 1]`` (min-max normalised per
      volume), ``orientation``, ``position``, ``volume`` ``(N,)`` int32, and ``labels``
      ``(N, S, S)`` uint8 when ``labels_path`` is given.

    Raises:
      MissingInputError, UserInputError: see :func:`read_nifti`; also a label volume whose
        shape differs from the image's ("mismatched shapes"), a constant volume and a volume
        too small to give ``split`` any slice (each message names the file).
    """
    volume, spacing = read_nifti(path)
    label_volume = None
    if labels_path is not None:
        label_volume, _ = read_nifti(labels_path)
        if label_volume.shape != volume.shape:
            raise UserInputError(
                f"mismatched shapes: labels {os.fspath(labels_path)!r} has shape "
                f"{label_volume.shape} but image {os.fspath(path)!r} has {volume.shape}"
            )
    try:
        return volume_to_slices(
            volume,
            image_size=image_size,
            split=split,
            orientations=orientations,
            spacing=spacing,
            label_volume=label_volume,
            min_foreground=min_foreground,
            fractions=fractions,
            cycle=cycle,
            guard=guard,
        )
    except UserInputError as err:  # the volume's content: say which file it is
        raise UserInputError(f"NIfTI file {os.fspath(path)!r}: {err}") from None
