"""fastMRI HDF5 writer/reader round trips, training slices, and bad files."""

import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
from _data_helpers import np_fft2c, np_ifft2c, random_kspace

from jaxmri.data.fastmri import load_fastmri_slices, read_fastmri_h5, write_fastmri_h5
from jaxmri.errors import UserInputError


def _np_crop(x, h, w):
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


@pytest.mark.parametrize("coils", [None, 4])
def test_round_trip_with_centre_crop_and_header(tmp_path, rng, coils):
    kspace = random_kspace(rng, 3, coils, 24, 20)
    path = tmp_path / "vol.h5"
    write_fastmri_h5(path, kspace, recon_size=(16, 12), acquisition="AXT2")
    got = read_fastmri_h5(path)
    np.testing.assert_array_equal(got["kspace"], kspace)
    assert got["multicoil"] == (coils is not None)
    assert got["encoded_size"] == (24, 20) and got["recon_size"] == (16, 12)
    # Target: magnitude / RSS of the centre-cropped image, computed here with numpy.
    images = np_ifft2c(kspace if coils else kspace[:, None])
    expected = _np_crop(np.sqrt((np.abs(images) ** 2).sum(axis=1)), 16, 12)
    np.testing.assert_allclose(got["reconstruction"], expected, rtol=1e-5, atol=1e-6)
    assert got["attrs"]["acquisition"] == "AXT2" and got["attrs"]["patient_id"] == "vol"
    np.testing.assert_allclose(got["attrs"]["max"], expected.max(), rtol=1e-5)
    np.testing.assert_allclose(got["attrs"]["norm"], np.linalg.norm(expected), rtol=1e-5)
    with h5py.File(path, "r") as f:
        name = "reconstruction_rss" if coils else "reconstruction_esc"
        assert name in f and f["kspace"].dtype == np.complex64
        # The header parses the way fastMRI's mri_data.py queries it.
        root = ET.fromstring(f["ismrmrd_header"][()])
    ns = {"m": "http://www.ismrm.org/ISMRMRD"}
    enc_x = root.find("m:encoding/m:encodedSpace/m:matrixSize/m:x", ns).text
    rec_y = root.find("m:encoding/m:reconSpace/m:matrixSize/m:y", ns).text
    centre = root.find("m:encoding/m:encodingLimits/m:kspace_encoding_step_1/m:center", ns).text
    assert (enc_x, rec_y, centre) == ("24", "12", "10")


def test_given_reconstruction_is_stored(tmp_path, rng):
    kspace = random_kspace(rng, 2, 3, 16, 16)
    recon = rng.random((2, 8, 10)).astype(np.float32)
    write_fastmri_h5(tmp_path / "a.h5", kspace, reconstruction=recon)
    got = read_fastmri_h5(tmp_path / "a.h5")
    np.testing.assert_array_equal(got["reconstruction"], recon)
    assert got["recon_size"] == (8, 10)


def test_slices_at_recon_size_equal_the_stored_target(tmp_path, rng):
    kspace = random_kspace(rng, 4, 3, 30, 26)
    write_fastmri_h5(tmp_path / "v.h5", kspace, recon_size=(16, 16))
    out = load_fastmri_slices(tmp_path / "v.h5", image_size=16, split="all")
    recon = read_fastmri_h5(tmp_path / "v.h5")["reconstruction"]
    np.testing.assert_allclose(out["image"], recon / recon.max(), rtol=1e-4, atol=1e-5)
    # The k-space is consistent with the image, and the volume max is 1.
    rss = np.sqrt((np.abs(np_ifft2c(out["kspace"])) ** 2).sum(axis=1))
    np.testing.assert_allclose(out["image"], rss, rtol=1e-4, atol=1e-5)
    assert out["image"].max() == pytest.approx(1.0)
    assert out["position"].tolist() == [0, 1, 2, 3] and np.all(out["orientation"] == -1)


def test_fourier_resampling_to_image_size(tmp_path, rng):
    kspace = random_kspace(rng, 2, None, 24, 24)
    write_fastmri_h5(tmp_path / "s.h5", kspace, recon_size=(20, 16))
    out = load_fastmri_slices(tmp_path / "s.h5", image_size=10, split="all")
    assert out["kspace"].shape == (2, 1, 10, 10)
    # Reference: crop to recon size, then to a 16 x 16 square, keep the central 10 x 10 of its
    # centred spectrum (DC stays at index n // 2), rescale by 10 / 16, normalise per volume.
    square = _np_crop(_np_crop(np_ifft2c(kspace), 20, 16), 16, 16)
    spectrum = np_fft2c(square)[:, 8 - 5 : 8 + 5, 8 - 5 : 8 + 5] * (10 / 16)
    image = np.abs(np_ifft2c(spectrum))
    np.testing.assert_allclose(out["image"], image / image.max(), rtol=1e-4, atol=1e-5)


def test_folder_split_by_file(tmp_path, rng):
    for i in range(4):
        write_fastmri_h5(tmp_path / f"file{i}.h5", random_kspace(rng, 2, 2, 12, 12))
    (tmp_path / "readme.txt").write_text("not data")
    vols = {s: set(load_fastmri_slices(tmp_path, image_size=12, split=s)["volume"].tolist())
            for s in ("train", "val", "test", "all")}
    assert vols["train"] == {0, 1} and vols["val"] == {2} and vols["test"] == {3}
    assert vols["all"] == {0, 1, 2, 3}


def test_one_file_splits_by_slice_position(tmp_path, rng):
    write_fastmri_h5(tmp_path / "v.h5", random_kspace(rng, 40, 2, 8, 8))
    pos = {s: load_fastmri_slices(tmp_path / "v.h5", image_size=8, split=s, guard=2)["position"]
           for s in ("train", "val", "test")}
    for a in pos:
        for b in pos:
            if a != b:
                assert np.min(np.abs(pos[a][:, None] - pos[b][None, :])) > 2


def test_bad_files(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_fastmri_h5(tmp_path / "missing.h5")
    text = tmp_path / "renamed.h5"
    text.write_text("plain text")
    with pytest.raises(ValueError, match="is not an HDF5 file"):
        read_fastmri_h5(text)
    with h5py.File(tmp_path / "nok.h5", "w") as f:
        f["image"] = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="has no 'kspace' dataset"):
        read_fastmri_h5(tmp_path / "nok.h5")
    with h5py.File(tmp_path / "real.h5", "w") as f:
        f["kspace"] = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="must be complex"):
        read_fastmri_h5(tmp_path / "real.h5")
    kspace = random_kspace(rng, 2, 2, 8, 8)
    kspace[0, 0, 0, 0] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["kspace"] = kspace
    with pytest.raises(ValueError, match="non-finite"):
        read_fastmri_h5(tmp_path / "nan.h5")
    with h5py.File(tmp_path / "mismatch.h5", "w") as f:
        f["kspace"] = random_kspace(rng, 2, 2, 8, 8)
        f["reconstruction_rss"] = np.zeros((3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="mismatched shapes"):
        read_fastmri_h5(tmp_path / "mismatch.h5")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no fastMRI files"):
        load_fastmri_slices(empty, image_size=8)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_fastmri_h5(mixed / "a.h5", random_kspace(rng, 2, 2, 8, 8))
    write_fastmri_h5(mixed / "b.h5", random_kspace(rng, 2, 3, 8, 8))
    with pytest.raises(ValueError, match="mismatched shapes.*coils"):
        load_fastmri_slices(mixed, image_size=8, split="all")


def test_damaged_files_are_named(tmp_path, rng):
    good = tmp_path / "good.h5"
    write_fastmri_h5(good, random_kspace(rng, 3, 2, 8, 8))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    # h5py's own error ("Unable to synchronously open file (truncated file ...)") names no file.
    with pytest.raises(UserInputError, match=r"HDF5 file '.*cut.h5' cannot be read \(.*trunc"):
        read_fastmri_h5(cut)
    zeros = tmp_path / "zeros.h5"
    with h5py.File(zeros, "w") as f:
        f["kspace"] = np.zeros((3, 8, 8), np.complex64)
    with pytest.raises(UserInputError, match=r"fastMRI file '.*zeros.h5' is all zeros"):
        load_fastmri_slices(zeros, image_size=8, split="all")


def test_blank_slices_are_skipped_up_front_with_a_warning(tmp_path, rng):
    kspace = random_kspace(rng, 5, 2, 8, 8)
    kspace[3] = 0  # one slice of the scan recorded nothing
    write_fastmri_h5(tmp_path / "scan.h5", kspace)
    with pytest.warns(UserWarning, match=r"scan.h5'.*skipping 1 blank slice\(s\) at position"
                                         r"\(s\) \[3\]"):
        out = load_fastmri_slices(tmp_path / "scan.h5", image_size=8, split="all")
    np.testing.assert_array_equal(out["position"], [0, 1, 2, 4])
    assert out["image"].max(axis=(1, 2)).min() > 0  # every kept target has a peak
    assert out["kspace"].shape[0] == 4


def test_writer_bad_input(tmp_path, rng):
    with pytest.raises(TypeError, match="kspace must be complex"):
        write_fastmri_h5(tmp_path / "x.h5", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="kspace must be"):
        write_fastmri_h5(tmp_path / "x.h5", np.zeros((8, 8), np.complex64))
    with pytest.raises(ValueError, match="kspace contains"):
        write_fastmri_h5(tmp_path / "x.h5", np.full((1, 8, 8), np.inf, np.complex64))
    with pytest.raises(ValueError, match="recon_size must be"):
        write_fastmri_h5(tmp_path / "x.h5", random_kspace(rng, 1, 2, 8, 8), recon_size=(9, 8))
    with pytest.raises(ValueError, match="mismatched shapes: reconstruction"):
        write_fastmri_h5(tmp_path / "x.h5", random_kspace(rng, 2, 2, 8, 8),
                         reconstruction=np.zeros((3, 8, 8)), recon_size=(8, 8))


def test_file_without_header_uses_dataset_shapes(tmp_path, rng):
    kspace = random_kspace(rng, 2, 2, 12, 10)
    with h5py.File(tmp_path / "bare.h5", "w") as f:
        f["kspace"] = kspace
        f["reconstruction_rss"] = np.zeros((2, 8, 6), np.float32)
    got = read_fastmri_h5(tmp_path / "bare.h5")
    assert got["encoded_size"] == (12, 10) and got["recon_size"] == (8, 6)
    out = load_fastmri_slices(tmp_path / "bare.h5", image_size=6, split="all")
    expected = _np_crop(np.sqrt((np.abs(np_ifft2c(kspace)) ** 2).sum(axis=1)), 6, 6)
    np.testing.assert_allclose(out["image"], expected / expected.max(), rtol=1e-4, atol=1e-5)
