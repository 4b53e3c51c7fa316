"""TFDS array_record cache: prepared once, reused, identical arrays, no TensorFlow."""

import os
import sys

import numpy as np
import pytest
from _data_helpers import ellipsoid_volume, random_kspace, write_nifti

from jaxmri.data import tfds_cache
from jaxmri.data.fastmri import write_fastmri_h5
from jaxmri.data.sources import load_slices

OPTIONS = dict(orientations=("axial",), guard=2)


@pytest.fixture
def counted(monkeypatch):
    """Count calls of the preparation function the builder uses."""
    calls = []
    real = tfds_cache.load_slices

    def counting(*args, **kwargs):
        calls.append(kwargs.get("split"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tfds_cache, "load_slices", counting)
    return calls


def test_cache_is_prepared_once_and_reused(tmp_path, counted):
    nii = write_nifti(tmp_path / "head.nii.gz", ellipsoid_volume())
    cache = tmp_path / "tfds"
    first = {s: tfds_cache.cached_slices(nii, image_size=16, split=s, data_dir=cache, **OPTIONS)
             for s in ("train", "val", "test")}
    assert sorted(counted) == ["test", "train", "val"]  # one preparation of every split
    files = sorted(p for p in cache.rglob("*.array_record*"))
    assert len(files) == 3
    mtimes = [os.stat(p).st_mtime_ns for p in files]

    counted.clear()
    builder = tfds_cache.prepare_slice_cache(nii, image_size=16, data_dir=cache, **OPTIONS)
    second = tfds_cache.cached_slices(nii, image_size=16, split="val", data_dir=cache, **OPTIONS)
    assert counted == []  # reused: the preparation function was not called again
    assert [os.stat(p).st_mtime_ns for p in files] == mtimes
    for key in first["val"]:
        np.testing.assert_array_equal(second[key], first["val"][key])

    # The cache holds exactly what load_slices gives, record i == slice i, by random access.
    for split in ("train", "val", "test"):
        direct = load_slices(nii, image_size=16, split=split, **OPTIONS)
        assert set(first[split]) == set(direct)
        for key in direct:
            assert first[split][key].dtype == direct[key].dtype
            np.testing.assert_array_equal(first[split][key], direct[key])
    source = builder.as_data_source(split="train")
    direct = load_slices(nii, image_size=16, split="train", **OPTIONS)
    np.testing.assert_array_equal(source[5]["image"], direct["image"][5])
    # A random-access batch keeps the order of its indices (repeats allowed).
    picked = np.array([7, 2, 7, 0, len(source) - 1])
    batch = tfds_cache.read_slices(source, picked)
    for key in direct:
        assert batch[key].dtype == direct[key].dtype
        np.testing.assert_array_equal(batch[key], direct[key][picked])
    with pytest.raises(IndexError, match=r"\[-1, 9999\] are outside"):
        tfds_cache.read_slices(source, [0, -1, 9999])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        tfds_cache.read_slices(source, [])
    with pytest.raises(ValueError, match="integers"):
        tfds_cache.read_slices(source, [0.5])
    assert "tensorflow" not in sys.modules


def test_config_separates_sizes_sources_and_edits(tmp_path):
    nii = write_nifti(tmp_path / "head.nii.gz", ellipsoid_volume())
    a = tfds_cache.slice_config(nii, image_size=16, **OPTIONS)
    b = tfds_cache.slice_config(nii, image_size=24, **OPTIONS)
    c = tfds_cache.slice_config(nii, image_size=16, orientations=("coronal",), guard=2)
    assert a.name.startswith("head_16px_") and b.name.startswith("head_24px_")
    assert len({a.name, b.name, c.name}) == 3
    assert tfds_cache.slice_config(nii, image_size=16, **OPTIONS).name == a.name
    write_nifti(nii, 2 * ellipsoid_volume() + 1)  # the user edits the file
    os.utime(nii, ns=(0, 10**18))
    assert tfds_cache.slice_config(nii, image_size=16, **OPTIONS).name != a.name
    assert tfds_cache.slice_config(None, image_size=16).name.startswith("mni152_16px_")
    with pytest.raises(ValueError, match="split is not a slice_config option"):
        tfds_cache.slice_config(nii, image_size=16, split="train")


def test_fastmri_kspace_survives_the_cache(tmp_path, rng):
    folder = tmp_path / "knee"
    folder.mkdir()
    for i in range(3):
        write_fastmri_h5(folder / f"v{i}.h5", random_kspace(rng, 2, 3, 12, 12))
    got = tfds_cache.cached_slices(folder, image_size=8, split="test", data_dir=tmp_path / "c")
    direct = load_slices(folder, image_size=8, split="test")
    assert got["kspace"].dtype == np.complex64 and "labels" not in got
    for key in direct:
        np.testing.assert_array_equal(got[key], direct[key])


def test_cached_slices_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        tfds_cache.cached_slices(None, image_size=16, split="all", data_dir=tmp_path)
