"""The load_slices dispatcher: each kind of --data, and clear errors for bad ones."""

import numpy as np
import pytest
from _data_helpers import ellipsoid_volume, random_kspace, write_nifti

from jaxmri.data.fastmri import load_fastmri_slices, write_fastmri_h5
from jaxmri.data.nifti import load_nifti_slices
from jaxmri.data.sources import load_slices, load_splits, source_kind


def test_dispatch_to_each_reader(tmp_path, rng):
    nii = write_nifti(tmp_path / "head.nii.gz", ellipsoid_volume())
    folder = tmp_path / "knee"
    folder.mkdir()
    write_fastmri_h5(folder / "v.h5", random_kspace(rng, 3, 2, 12, 12))
    h5_other_suffix = tmp_path / "single.hdf5"
    write_fastmri_h5(h5_other_suffix, random_kspace(rng, 3, None, 12, 12))
    assert source_kind(None) == "mni152"
    assert source_kind(nii) == "nifti"
    assert source_kind(folder) == "fastmri" and source_kind(h5_other_suffix) == "fastmri"

    got = load_slices(nii, image_size=16, split="all")
    expected = load_nifti_slices(nii, image_size=16, split="all")
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    got = load_slices(folder, image_size=12, split="all")
    expected = load_fastmri_slices(folder, image_size=12, split="all")
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert load_slices(h5_other_suffix, image_size=8, split="all")["kspace"].shape == (3, 1, 8, 8)
    mni = load_slices(None, image_size=16, split="val", orientations=("axial",))
    assert "labels" in mni and np.all(mni["orientation"] == 2)


def test_bad_data_paths(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="data path .* does not exist"):
        load_slices(tmp_path / "nowhere", image_size=16)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ValueError, match="neither a NIfTI file .* nor an HDF5 file"):
        load_slices(notes, image_size=16)
    renamed = tmp_path / "scan.h5"
    renamed.write_text("hello")
    with pytest.raises(ValueError, match="is not an HDF5 file"):
        load_slices(renamed, image_size=16)
    renamed_nii = tmp_path / "scan.nii"
    renamed_nii.write_text("hello")
    with pytest.raises(ValueError, match="not a readable NIfTI file"):
        load_slices(renamed_nii, image_size=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no fastMRI files"):
        load_slices(empty, image_size=16)
    folder = tmp_path / "knee"
    folder.mkdir()
    write_fastmri_h5(folder / "v.h5", random_kspace(rng, 2, 2, 8, 8))
    with pytest.raises(ValueError, match="labels_path is only supported for NIfTI"):
        load_slices(folder, image_size=8, labels_path=tmp_path / "labels.nii")


def test_load_splits_slices_one_orientation_into_disjoint_splits(tmp_path):
    nii = write_nifti(tmp_path / "head.nii.gz", ellipsoid_volume(
        shape=(40, 90, 44), radii=(16, 42, 18)))
    fractions = (0.5, 0.2, 0.3)
    got = load_splits(nii, image_size=16, orientation="coronal", fractions=fractions)
    assert list(got) == ["train", "val", "test"]
    for split, slices in got.items():
        expected = load_slices(nii, image_size=16, split=split, orientations=("coronal",),
                               fractions=fractions)
        for key in expected:
            np.testing.assert_array_equal(slices[key], expected[key])
        assert np.all(slices["orientation"] == 1)  # coronal
    positions = [set(got[s]["position"].tolist()) for s in got]
    assert not (positions[0] & positions[1] or positions[0] & positions[2]
                or positions[1] & positions[2])
    only = load_splits(nii, image_size=16, orientation="axial", splits=("test",))
    assert list(only) == ["test"] and np.all(only["test"]["orientation"] == 2)
