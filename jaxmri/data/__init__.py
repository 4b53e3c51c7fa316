"""Data for jaxmri: real slices by default, users' own data, and simulated acquisition.

Host-side numpy throughout; nothing here imports :mod:`jaxmri.models` or :mod:`jaxmri.train`.

* :func:`load_slices` (``sources.py``): ``None`` -> the MNI152 T1 template bundled with nilearn
  (real MRI, offline, with CSF/GM/WM labels); a ``.nii``/``.nii.gz`` file -> NIfTI; a folder of
  ``.h5`` files (or one) -> fastMRI. Returns a *slices dict* (``slicing.py`` documents the keys,
  the slicing rule and the train/val/test split by slice position with guard gaps);
  :func:`load_splits` gives several splits of one orientation at once.
* :func:`acquire_slices`, :func:`simulate_acquisition`, :func:`acquisition_from_kspace`
  (``simulate.py``): coils, smooth phase, noise at a set SNR, masks, measured k-space, the
  zero-filled image and the target, deterministic per seed and per slice.
* :func:`write_fastmri_h5` / :func:`read_fastmri_h5` (``fastmri.py``): the fastMRI file format.
* :func:`prepare_slice_cache` / :func:`cached_slices` (``tfds_cache.py``): a TFDS array_record
  cache prepared once and read by random access, without TensorFlow. Import it from
  ``jaxmri.data.tfds_cache`` (it imports tensorflow_datasets, which takes a few seconds).
"""

from jaxmri.data.embedded import load_mni152, mni152_slices
from jaxmri.data.fastmri import (
    center_crop,
    list_fastmri_files,
    load_fastmri_slices,
    read_fastmri_h5,
    write_fastmri_h5,
)
from jaxmri.data.nifti import load_nifti_slices, read_nifti
from jaxmri.data.simulate import (
    acquire_slices,
    acquisition_from_kspace,
    simulate_acquisition,
    slice_rng,
    smooth_phase,
)
from jaxmri.data.slicing import (
    DEFAULT_ORIENTATIONS,
    ORIENTATIONS,
    SPLIT_SEEDS,
    SPLITS,
    resize_2d,
    split_assignment,
    volume_to_slices,
)
from jaxmri.data.sources import load_slices, load_splits, source_kind

__all__ = [
    "DEFAULT_ORIENTATIONS",
    "ORIENTATIONS",
    "SPLITS",
    "SPLIT_SEEDS",
    "acquire_slices",
    "acquisition_from_kspace",
    "center_crop",
    "list_fastmri_files",
    "load_fastmri_slices",
    "load_mni152",
    "load_nifti_slices",
    "load_slices",
    "load_splits",
    "mni152_slices",
    "read_fastmri_h5",
    "read_nifti",
    "resize_2d",
    "simulate_acquisition",
    "slice_rng",
    "smooth_phase",
    "source_kind",
    "split_assignment",
    "volume_to_slices",
    "write_fastmri_h5",
]
