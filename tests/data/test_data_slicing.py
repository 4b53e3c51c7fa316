"""Slicing, resizing and the split rule of jaxmri.data.slicing."""

import numpy as np
import pytest
from _data_helpers import ellipsoid_volume
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.transform import resize as sk_resize

from jaxmri.data.slicing import ORIENTATIONS, resize_2d, split_assignment, volume_to_slices


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(8, 60), w=st.integers(8, 60), out=st.integers(4, 40), seed=st.integers(0, 99)
)
def test_resize_matches_skimage(h, w, out, seed):
    image = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    expected = sk_resize(image, (out, out), order=1, mode="constant", anti_aliasing=True,
                         clip=False)  # skimage clips to the input range; we do not
    np.testing.assert_allclose(resize_2d(image, (out, out)), expected, atol=1e-5)


def test_resize_nearest_keeps_label_values():
    labels = np.random.default_rng(0).integers(0, 4, (40, 30)).astype(np.uint8)
    out = resize_2d(labels, (20, 15), order=0)
    expected = sk_resize(labels, (20, 15), order=0, mode="constant", anti_aliasing=False,
                         preserve_range=True)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=20, deadline=None)
@given(
    start=st.integers(0, 50),
    length=st.integers(1, 300),
    guard=st.integers(0, 6),
    cycle=st.integers(8, 100),
    holes=st.integers(0, 2**31),
)
def test_split_separates_neighbours(start, length, guard, cycle, holes):
    positions = start + np.arange(length)
    # Random gaps in the kept positions (skipped empty slices) must not break the rule.
    keep = np.random.default_rng(holes).random(length) > 0.2
    positions = positions[keep] if keep.any() else positions
    split = split_assignment(positions, cycle=cycle, guard=guard)
    for a in range(3):
        for b in range(3):
            if a == b:
                continue
            pa, pb = positions[split == a], positions[split == b]
            if pa.size and pb.size:
                assert np.min(np.abs(pa[:, None] - pb[None, :])) > guard


def test_split_fractions_and_coverage():
    positions = np.arange(1000)
    split = split_assignment(positions, fractions=(0.7, 0.15, 0.15), cycle=100, guard=0)
    counts = np.bincount(split, minlength=3) / 1000
    np.testing.assert_allclose(counts, [0.7, 0.15, 0.15], atol=0.01)
    # Interleaved cycles: every tenth of the range holds val and test slices.
    for part in np.split(split, 10):
        assert {0, 1, 2} <= set(part.tolist())


def test_split_guard_drops_only_after_boundaries():
    positions = np.arange(200)
    with_guard = split_assignment(positions, cycle=50, guard=3)
    without = split_assignment(positions, cycle=50, guard=0)
    dropped = with_guard == -1
    assert np.all(with_guard[~dropped] == without[~dropped])
    boundaries = np.count_nonzero(np.diff(without) != 0)
    assert dropped.sum() == 3 * boundaries


def test_volume_slices_crop_pad_and_resize():
    volume = np.zeros((40, 50, 30), np.float32)
    volume[10:20, 5:35, 8:22] = 2.0  # foreground box 10 x 30 x 14 voxels
    volume[12, 6, 9] = 4.0
    out = volume_to_slices(volume, image_size=30, split="all", orientations=("axial",),
                           margin=0, min_foreground=0.0)
    norm = volume / 4.0
    box = norm[10:20, 5:35, 8:22]
    assert out["position"].tolist() == list(range(8, 22))
    for k, z in enumerate(range(14)):
        plane = np.rot90(box[:, :, z])  # (30, 10): pad columns to 30 -> (30, 30)
        square = np.pad(plane, ((0, 0), (10, 10)))
        expected = sk_resize(square, (30, 30), order=1, mode="constant", anti_aliasing=False)
        np.testing.assert_allclose(out["image"][k], expected, atol=1e-6)
    assert np.all(out["orientation"] == 2) and np.all(out["volume"] == 0)


def test_anisotropic_voxels_are_not_stretched():
    # A 24 mm cube sampled with 1 x 1 x 3 mm voxels must look square in sagittal slices.
    volume = np.zeros((30, 30, 12), np.float32)
    volume[3:27, 3:27, 2:10] = 1.0
    out = volume_to_slices(volume, image_size=32, split="all", orientations=("sagittal",),
                           spacing=(1.0, 1.0, 3.0), margin=0)
    middle = out["image"][len(out["image"]) // 2] > 0.5
    rows, cols = np.nonzero(middle)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert abs(height - width) <= 1 and height >= 28


def test_skips_nearly_empty_slices():
    volume = ellipsoid_volume()
    out = volume_to_slices(volume, image_size=16, split="all", orientations=("axial",),
                           min_foreground=0.5)
    areas = (volume > 0.05).sum(axis=(0, 1))
    expected = np.nonzero(areas >= 0.5 * areas.max())[0]
    assert out["position"].tolist() == expected.tolist()


def test_tissue_labels_are_argmax_with_background():
    shape = (20, 20, 20)
    volume = np.zeros(shape, np.float32)
    volume[4:16, 4:16, 4:16] = 1.0
    csf, gm, wm = (np.zeros(shape, np.float32) for _ in range(3))
    csf[4:16, 4:8, 4:16] = 0.9
    gm[4:16, 8:12, 4:16] = 0.8
    wm[4:16, 12:16, 4:16] = 0.7
    out = volume_to_slices(volume, image_size=16, split="all", orientations=("axial",),
                           tissue=(csf, gm, wm), margin=0)
    labels = out["labels"][len(out["labels"]) // 2]
    # After rot90 the y axis (CSF, GM, WM bands) runs from bottom to top of the slice.
    assert labels[14, 8] == 1 and labels[8, 8] == 2 and labels[1, 8] == 3
    assert set(np.unique(out["labels"]).tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(volume=np.zeros((4, 4))), "volume must have ndim == 3"),
        (dict(volume=np.full((8, 8, 8), np.nan)), "volume contains"),
        (dict(volume=np.ones((8, 8, 8))), "volume is constant"),
        (dict(split="validation"), "split must be one of"),
        (dict(orientations=("transverse",)), "orientations must be among"),
        (dict(orientations="axial"), "orientations must be a non-empty sequence"),
        (dict(tissue=(np.zeros((2, 2, 2)),) * 3), "tissue\\[0\\] must have the volume's shape"),
        (dict(label_volume=np.full((30, 36, 44), 0.5)), "label_volume must hold integer"),
        (dict(spacing=(1.0, 0.0, 1.0)), "spacing must be"),
        (dict(image_size=0), "image_size must be > 0"),
    ],
)
def test_volume_to_slices_bad_input(kwargs, match):
    args = dict(volume=ellipsoid_volume(), image_size=16, split="all")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        volume_to_slices(args.pop("volume"), **args)


def test_empty_split_names_the_split():
    with pytest.raises(ValueError, match="split 'val' is empty"):
        volume_to_slices(ellipsoid_volume(shape=(12, 12, 12), radii=(5, 5, 5)), image_size=8,
                         split="val", guard=10)


def test_split_assignment_bad_fractions():
    with pytest.raises(ValueError, match="fractions must be"):
        split_assignment(np.arange(10), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="cycle must be > 0"):
        split_assignment(np.arange(10), cycle=0)


def _index_volume(side: int = 40) -> np.ndarray:
    """A cube whose voxels all hold different values (a shuffled index), every one foreground."""
    values = np.random.default_rng(0).permutation(side**3).reshape(side, side, side)
    return (1000.0 + values).astype(np.float32)


def _voxels(out: dict) -> set:
    # With a cube, no padding and image_size equal to the side, resize_2d is the identity, so
    # every pixel is one voxel's (normalised) value.
    return set(np.round(out["image"].ravel() * 2e5).astype(np.int64).tolist())


def test_no_test_voxel_in_any_training_slice():
    volume = _index_volume()
    assert np.unique(volume).size == volume.size
    kwargs = dict(image_size=40, margin=0, min_foreground=0.0, cycle=20, guard=2)
    every = volume_to_slices(volume, split="all", orientations=("axial",), **kwargs)
    assert len(_voxels(every)) == volume.size  # the identity resize keeps values distinct
    # The default (one orientation) and each single orientation: disjoint voxel sets.
    for orientations in (None, ("sagittal",), ("coronal",), ("axial",)):
        extra = {} if orientations is None else {"orientations": orientations}
        voxels = {s: _voxels(volume_to_slices(volume, split=s, **kwargs, **extra))
                  for s in ("train", "val", "test")}
        assert voxels["test"] and voxels["train"]
        assert not voxels["test"] & voxels["train"]
        assert not voxels["val"] & voxels["train"] and not voxels["val"] & voxels["test"]
    # Several orientations split by position would share voxels: refused, naming the problem.
    with pytest.raises(ValueError, match="leak test voxels into training"):
        volume_to_slices(volume, split="train", orientations=ORIENTATIONS, **kwargs)
    mixed = volume_to_slices(volume, split="all", orientations=ORIENTATIONS, **kwargs)
    assert len(mixed["image"]) == 3 * 40  # "all" holds nothing out, so it may mix them
