"""One entry point for every data source: ``load_slices(data, image_size=..., split=...)``.

``data`` is what a user passes as ``--data``:

* ``None``: the embedded MNI152 template (:mod:`jaxmri.data.embedded`), with tissue labels;
* a ``.nii`` / ``.nii.gz`` file: :func:`jaxmri.data.nifti.load_nifti_slices`;
* a folder of ``.h5`` files or one ``.h5`` / ``.hdf5`` file: fastMRI
  (:func:`jaxmri.data.fastmri.load_fastmri_slices`).

:func:`load_splits` loads several splits of one orientation at once (what every experiment
does). Anything else raises an error that names the problem (missing path, a file that is neither
NIfTI nor HDF5, ...). Every source returns the slices dict described in
:mod:`jaxmri.data.slicing`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np

from jaxmri.data.embedded import mni152_slices
from jaxmri.data.fastmri import H5_SUFFIXES, load_fastmri_slices
from jaxmri.data.nifti import NIFTI_SUFFIXES, load_nifti_slices
from jaxmri.data.slicing import DEFAULT_FRACTIONS, DEFAULT_ORIENTATIONS, SPLITS
from jaxmri.errors import MissingInputError, UserInputError

__all__ = ["source_kind", "load_slices", "load_splits"]


def source_kind(data: str | os.PathLike | None) -> str:
    """Classify ``data`` as ``"mni152"``, ``"nifti"`` or ``"fastmri"``.

    Raises:
      MissingInputError (a ``FileNotFoundError``): the path does not exist.
      UserInputError (a ``ValueError``): a file that is neither NIfTI (by suffix) nor HDF5 (by
        content).
    """
    if data is None:
        return "mni152"
    path = os.fspath(data)
    if not os.path.exists(path):
        raise MissingInputError(f"data path {path!r} does not exist")
    if os.path.isdir(path):
        return "fastmri"
    name = path.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    # HDF5 is recognised by its signature, so a renamed text file is not mistaken for one.
    if h5py.is_hdf5(path):
        return "fastmri"
    if name.endswith(H5_SUFFIXES):
        raise UserInputError(
            f"{path!r} is not an HDF5 file (its content has no HDF5 signature)")
    raise UserInputError(
        f"{path!r} is neither a NIfTI file (.nii, .nii.gz) nor an HDF5 file (fastMRI .h5), "
        "nor a folder of .h5 files"
    )


def load_slices(
    data: str | os.PathLike | None,
    *,
    image_size: int,
    split: str = "train",
    orientations: Sequence[str] = DEFAULT_ORIENTATIONS,
    labels_path: str | os.PathLike | None = None,
    min_foreground: float = 0.2,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cycle: int = 64,
    guard: int = 4,
) -> dict[str, np.ndarray]:
    """Load square 2-D slices from the embedded template, a NIfTI file or fastMRI files.

    Args:
      data: ``None`` (embedded MNI152), a NIfTI file, one fastMRI ``.h5`` file or a folder.
      image_size: side ``S`` of the output slices.
      split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
      orientations: slicing axes for volumes (ignored for fastMRI, whose slices are given).
      labels_path: NIfTI label volume for a NIfTI ``data`` (an error for other sources).
      min_foreground: slice-skipping threshold for volumes (see ``volume_to_slices``).
      fractions, cycle, guard: the split rule (see :mod:`jaxmri.data.slicing`).

    Returns:
      The slices dict (``image``, ``orientation``, ``position``, ``volume``, plus ``labels``
      or ``kspace`` where the source provides them).
    """
    kind = source_kind(data)
    split_options = dict(fractions=fractions, cycle=cycle, guard=guard)
    if labels_path is not None and kind != "nifti":
        raise ValueError(f"labels_path is only supported for NIfTI data, got a {kind} source")
    if kind == "mni152":
        return mni152_slices(image_size=image_size, split=split, orientations=orientations,
                             min_foreground=min_foreground, **split_options)
    if kind == "nifti":
        return load_nifti_slices(data, image_size=image_size, split=split,
                                 labels_path=labels_path, orientations=orientations,
                                 min_foreground=min_foreground, **split_options)
    return load_fastmri_slices(data, image_size=image_size, split=split, **split_options)


def load_splits(
    data: str | os.PathLike | None,
    *,
    image_size: int,
    orientation: str,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    splits: Sequence[str] = SPLITS,
) -> dict[str, dict[str, np.ndarray]]:
    """``{split: slices dict}`` of ``data``: :func:`load_slices` of each of ``splits``.

    Every split is sliced along the one ``orientation`` (``"sagittal"``, ``"coronal"`` or
    ``"axial"``; ignored for fastMRI) with the split ``fractions`` ``(train, val, test)``, so the
    splits share no voxel (:mod:`jaxmri.data.slicing`). ``splits`` may also be ``("all",)``.
    Errors are those of :func:`load_slices` (an empty split, a bad path, ...).
    """
    return {split: load_slices(data, image_size=image_size, split=split,
                               orientations=(orientation,), fractions=fractions)
            for split in splits}
