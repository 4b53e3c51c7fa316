"""The graded-distortion no-reference score (paper 001's BRISQUE stand-in)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from jaxmri.data import load_slices
from jaxmri.metrics.graded_quality import fit_quality_regressor, graded_distortions


def test_graded_set_levels_and_labels():
    images = load_slices(None, image_size=32, split="val", orientations=("sagittal",))["image"][:2]
    out, labels = graded_distortions(np.random.default_rng(0), images, levels=(0.0, 0.5, 1.0))
    assert out.shape == (2 * 3 * 3, 32, 32)
    np.testing.assert_array_equal(labels[:9], [0, 50, 100] * 3)
    np.testing.assert_allclose(out[0], images[0], atol=1e-6)  # level 0 = clean
    np.testing.assert_allclose(out[2], gaussian_filter(images[0].astype(np.float64), 2.5),
                               atol=1e-5)  # blur at level 1
    with pytest.raises(ValueError, match="levels"):
        graded_distortions(np.random.default_rng(0), images, levels=(1.5,))


def test_score_orders_held_out_blur_levels():
    # Validation slices of all three orientations (each split by position on its own), in the
    # order sagittal, coronal, axial.
    slices = np.concatenate([load_slices(None, image_size=48, split="val",
                                         orientations=(o,))["image"]
                             for o in ("sagittal", "coronal", "axial")])
    train, held = slices[:10], slices[20:26]
    images, labels = graded_distortions(np.random.default_rng(1), train)
    regressor = fit_quality_regressor(images, labels)
    clean = regressor.score(held).mean()
    blurred = regressor.score(np.stack([gaussian_filter(x, 2.0) for x in held])).mean()
    assert blurred > clean + 20  # held-out slices: strong blur scores clearly worse
    with pytest.raises(ValueError, match="labels"):
        fit_quality_regressor(images, labels[:-1])
