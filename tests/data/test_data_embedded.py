"""The embedded MNI152 default: offline, real content, labels and split disjointness."""

import numpy as np
import pytest

from jaxmri.data.embedded import load_mni152, mni152_slices
from jaxmri.data.slicing import DEFAULT_ORIENTATIONS, ORIENTATIONS

SIZE = 32


@pytest.fixture(scope="module")
def splits():
    return {s: mni152_slices(image_size=SIZE, split=s) for s in ("train", "val", "test")}


def test_volumes_load_offline_with_derived_csf():
    vols = load_mni152()
    assert set(vols) == {"t1", "gm", "wm", "csf"}
    for v in vols.values():
        assert v.shape == (197, 233, 189) and v.dtype == np.float32
        assert np.all(np.isfinite(v)) and v.min() >= 0 and v.max() <= 1
    mask = vols["t1"] > 0.2
    np.testing.assert_allclose(vols["csf"], np.clip(mask - vols["gm"] - vols["wm"], 0, 1))
    # The ventricles (centre of the brain, dark on T1) are CSF; deep white matter is WM.
    assert vols["csf"][98, 120, 90] > 0.5 or vols["csf"][90:106, 110:130, 85:95].mean() > 0.3
    assert vols["t1"][vols["wm"] > 0.9].mean() > vols["t1"][vols["gm"] > 0.9].mean()


def test_slices_are_finite_unit_range_images(splits):
    for out in splits.values():
        assert out["image"].shape[1:] == (SIZE, SIZE) and out["image"].dtype == np.float32
        assert np.all(np.isfinite(out["image"]))
        assert out["image"].min() >= 0 and out["image"].max() <= 1
        assert out["labels"].shape == out["image"].shape and out["labels"].dtype == np.uint8
        assert set(np.unique(out["labels"]).tolist()) <= {0, 1, 2, 3}
        # One orientation per split (the default, coronal): orientations intersect.
        assert set(out["orientation"].tolist()) == {ORIENTATIONS.index("coronal")}


def test_content_is_a_brain():
    train = mni152_slices(image_size=SIZE, split="train", orientations=("axial",))
    axial = train["orientation"] == 2
    mid = axial & (np.abs(train["position"] - 90) <= 15)
    assert mid.any()
    brain_fraction = (train["labels"][mid] > 0).mean(axis=(1, 2))
    assert np.all((brain_fraction > 0.3) & (brain_fraction < 0.9))
    # Mid-axial slices hold grey and white matter; CSF (thin at 32 px) shows up among them.
    for labels in train["labels"][mid]:
        assert {2, 3} <= set(np.unique(labels).tolist())
        assert (labels == 3).mean() > 0.05
    assert (train["labels"][mid] == 1).any()
    # T1 contrast: WM brighter than GM brighter than CSF, background dark.
    image, labels = train["image"], train["labels"]
    means = [image[labels == c].mean() for c in range(4)]
    assert means[3] > means[2] > means[1] > means[0]
    assert means[0] < 0.05


def test_splits_disjoint_including_neighbours(splits):
    guard = 4
    for out in splits.values():  # one orientation per split: slices of two would intersect
        assert set(out["orientation"].tolist()) == {ORIENTATIONS.index("coronal")}
    pos = {s: out["position"] for s, out in splits.items()}
    for a in pos:
        assert pos[a].size > 0
        for b in pos:
            if a != b:
                assert np.min(np.abs(pos[a][:, None] - pos[b][None, :])) > guard


def test_all_split_is_the_union_plus_guards(splits):
    every = mni152_slices(image_size=SIZE, split="all", orientations=DEFAULT_ORIENTATIONS)
    kept = {s: set(out["position"].tolist()) for s, out in splits.items()}
    union = kept["train"] | kept["val"] | kept["test"]
    assert union < set(every["position"].tolist())
    # Guard slices (in 'all' only) are few: at most 4 per split boundary.
    assert len(set(every["position"].tolist()) - union) <= 4 * 4 * 3
    # The same slice gives the same pixels whichever split it is loaded through.
    k = 0
    j = int(np.nonzero(every["position"] == splits["val"]["position"][k])[0][0])
    np.testing.assert_array_equal(every["image"][j], splits["val"]["image"][k])
