"""NIfTI reader: round trip against an independent resize, reorientation, labels, bad files."""

import nibabel as nib
import numpy as np
import pytest
from _data_helpers import ellipsoid_volume, write_nifti
from skimage.transform import resize as sk_resize

from jaxmri.data.nifti import load_nifti_slices, read_nifti
from jaxmri.errors import MissingInputError, UserInputError


def _expected_axial(volume, size, margin=2, threshold=0.05):
    """Independent reference: normalise, crop to the foreground box, rot90, pad, skimage."""
    norm = (volume - volume.min()) / (volume.max() - volume.min())
    idx = np.nonzero(norm > threshold)
    box = tuple(slice(max(0, i.min() - margin), min(n, i.max() + 1 + margin))
                for i, n in zip(idx, volume.shape))
    crop = norm[box]
    out = []
    for z in range(crop.shape[2]):
        plane = np.rot90(crop[:, :, z])
        side = max(plane.shape)
        pads = [((side - n) // 2, side - n - (side - n) // 2) for n in plane.shape]
        out.append(sk_resize(np.pad(plane, pads), (size, size), order=1, mode="constant",
                             anti_aliasing=True))
    return np.stack(out), box[2].start


def test_round_trip_matches_independent_resize(tmp_path):
    volume = 3.0 * ellipsoid_volume() + 1.0  # background 1: normalisation must subtract it
    path = write_nifti(tmp_path / "head.nii.gz", volume)
    out = load_nifti_slices(path, image_size=20, split="all", orientations=("axial",),
                            min_foreground=0.0)
    expected, z0 = _expected_axial(volume, 20)
    assert out["image"].shape == expected.shape
    np.testing.assert_allclose(out["image"], expected, atol=1e-5)
    assert out["position"].tolist() == list(range(z0, z0 + len(expected)))
    assert "labels" not in out


def test_reorients_to_ras(tmp_path):
    volume = ellipsoid_volume(centre=(12, 20, 25))  # off-centre, so a flip would show
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip_x[0, 3] = volume.shape[0] - 1
    ras = write_nifti(tmp_path / "ras.nii", volume)
    las = write_nifti(tmp_path / "las.nii", volume[::-1], affine=flip_x)
    a = load_nifti_slices(ras, image_size=16, split="all")
    b = load_nifti_slices(las, image_size=16, split="all")
    for key in ("image", "orientation", "position"):
        np.testing.assert_array_equal(a[key], b[key])


def test_labels_volume(tmp_path):
    volume = ellipsoid_volume()
    labels = (volume > 0).astype(np.int16) + (volume > 0.8).astype(np.int16)
    img = write_nifti(tmp_path / "img.nii.gz", volume)
    lab = write_nifti(tmp_path / "lab.nii.gz", labels)
    out = load_nifti_slices(img, image_size=24, split="all", labels_path=lab)
    assert out["labels"].dtype == np.uint8
    assert set(np.unique(out["labels"]).tolist()) == {0, 1, 2}
    # Labels follow the anatomy: label 2 sits on the bright core of the image.
    assert out["image"][out["labels"] == 2].mean() > out["image"][out["labels"] == 1].mean()
    assert out["image"][out["labels"] == 0].mean() < 0.05


def test_4d_with_several_volumes_is_refused_and_one_volume_is_read(tmp_path):
    volume = ellipsoid_volume()
    path = write_nifti(tmp_path / "fmri.nii.gz", np.stack([volume, 2 * volume + 5], axis=-1))
    with pytest.raises(UserInputError, match=r"fmri.nii.gz.*4-D with 2 volumes"):
        read_nifti(path)
    single = write_nifti(tmp_path / "one.nii.gz", volume[..., None])
    data, spacing = read_nifti(single)
    np.testing.assert_array_equal(data, volume)
    assert spacing == (1.0, 1.0, 1.0)


def test_complex_volume_is_refused_never_its_real_part(tmp_path):
    volume = ellipsoid_volume()
    # A complex image whose real part is zero: taking the real part would give a blank volume.
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image((1j * volume).astype(np.complex64), np.eye(4)), path)
    with pytest.raises(UserInputError, match=r"complex.nii.gz.*complex values.*magnitude"):
        read_nifti(path)
    with pytest.raises(UserInputError, match="complex values"):
        load_nifti_slices(path, image_size=16)
    # What the message asks for works: the magnitude, saved as a real volume.
    magnitude = write_nifti(tmp_path / "magnitude.nii.gz", np.abs(1j * volume))
    np.testing.assert_allclose(read_nifti(magnitude)[0], volume)


def test_voxel_spacing_from_header(tmp_path):
    path = tmp_path / "aniso.nii.gz"
    nib.save(nib.Nifti1Image(ellipsoid_volume(), np.diag([0.5, 0.5, 3.0, 1.0])), path)
    assert read_nifti(path)[1] == (0.5, 0.5, 3.0)


def test_bad_files(tmp_path):
    with pytest.raises(MissingInputError, match="does not exist"):
        load_nifti_slices(tmp_path / "missing.nii.gz", image_size=16)
    fake = tmp_path / "notes.nii.gz"
    fake.write_text("this is a text file, not an image")
    with pytest.raises(UserInputError, match="is not a readable NIfTI file"):
        load_nifti_slices(fake, image_size=16)
    whole = write_nifti(tmp_path / "whole.nii.gz", ellipsoid_volume())
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(UserInputError, match=r"truncated.nii.gz.*not a readable NIfTI"):
        load_nifti_slices(truncated, image_size=16)
    zeros = write_nifti(tmp_path / "zeros.nii", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(UserInputError, match=r"zeros.nii.*constant"):
        load_nifti_slices(zeros, image_size=16)
    bad = write_nifti(tmp_path / "nan.nii", np.full((8, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        load_nifti_slices(bad, image_size=16)
    flat = write_nifti(tmp_path / "flat.nii", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="must hold a 3-D volume"):
        load_nifti_slices(flat, image_size=16)
    img = write_nifti(tmp_path / "img.nii", ellipsoid_volume())
    lab = write_nifti(tmp_path / "lab.nii", np.zeros((5, 5, 5), np.int16))
    with pytest.raises(ValueError, match="mismatched shapes"):
        load_nifti_slices(img, image_size=16, labels_path=lab)
