"""Tests for jaxmri.metrics.brisque: MSCN, GGD/AGGD moment matching, the 36 features.

Agreement with the published BRISQUE (the `brisque` package): test_brisque_published.py.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.optimize import brentq
from scipy.special import gamma as G
from scipy.special import gammaln
from scipy.stats import gennorm

from jaxmri.metrics import brisque_features, fit_aggd, fit_ggd, mscn_coefficients
from jaxmri.metrics.brisque import half_scale

# ----------------------------------------------------------------------------------------------
# Independent float64 numpy re-implementation (scipy filters, direct gamma functions, brentq).


def _mscn_ref(x, mode="reflect"):
    f = lambda a: ndi.gaussian_filter(a, 7 / 6, radius=3, mode=mode, cval=0.0)  # noqa: E731
    mu = f(x)
    return (x - mu) / (np.sqrt(np.abs(f(x * x) - mu * mu)) + 1.0)


def _shape_from_ratio(r):
    """The a with G(2/a)^2 / (G(1/a) G(3/a)) = r."""
    f = lambda a: np.exp(2 * gammaln(2 / a) - gammaln(1 / a) - gammaln(3 / a)) - r  # noqa: E731
    if f(20.0) < 0:  # beyond the ratio's range on [0.05, 20]: the nearest end, as jaxmri
        return 20.0
    return brentq(f, 0.05, 20.0, xtol=1e-12)


def _ggd_ref(x):
    return _shape_from_ratio(np.mean(np.abs(x)) ** 2 / np.mean(x**2)), np.mean(x**2)


def _aggd_ref(x):
    lv, rv = np.mean(x[x < 0] ** 2), np.mean(x[x >= 0] ** 2)
    g = np.sqrt(lv / rv)
    r = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    a = _shape_from_ratio(r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2)
    mean = (np.sqrt(rv) - np.sqrt(lv)) * G(2 / a) / np.sqrt(G(1 / a) * G(3 / a))
    return a, mean, lv, rv


def _features_ref(x):
    """18 features of one scale as the brisque package defines them (see the module doc)."""
    m = _mscn_ref(x, mode="constant")
    a, _, lv, rv = _aggd_ref(m)
    out = [a, (lv + rv) / 2]
    for p in (m[:, :-1] * m[:, 1:], m[:-1, :] * m[1:, :], m[:-1, :-1] * m[1:, 1:],
              m[1:, :-1] * m[:-1, 1:]):
        out.extend(_aggd_ref(p))
    return np.array(out)


def _sample_aggd(rng, shape, a, left_scale, right_scale):
    n = int(np.prod(shape))
    left = rng.random(n) < left_scale / (left_scale + right_scale)
    mag = np.abs(gennorm.rvs(a, size=n, random_state=rng))
    return np.where(left, -left_scale * mag, right_scale * mag).reshape(shape)


# ----------------------------------------------------------------------------------------------


def test_mscn_of_constant_image_is_zero():
    np.testing.assert_array_equal(mscn_coefficients(np.full((2, 17, 20), 137.0)), 0.0)


def test_mscn_matches_scipy_reference():
    x = 255 * ndi.gaussian_filter(np.random.default_rng(0).random((30, 26)), 1.0)
    np.testing.assert_allclose(mscn_coefficients(x.astype(np.float32)), _mscn_ref(x),
                               atol=1e-4)


@pytest.mark.parametrize("beta", [0.6, 1.0, 2.0, 3.0])
def test_fit_ggd_recovers_shape(beta):
    rng = np.random.default_rng(int(beta * 10))
    x = gennorm.rvs(beta, scale=0.7, size=(256, 256), random_state=rng).astype(np.float32)
    shape, var = fit_ggd(x)
    assert abs(float(shape) - beta) < 0.05 * beta
    np.testing.assert_allclose(var, 0.49 * G(3 / beta) / G(1 / beta), rtol=0.03)


@pytest.mark.parametrize("a,sl,sr", [(0.8, 0.5, 1.5), (1.5, 1.0, 0.6), (2.0, 1.0, 1.0)])
def test_fit_aggd_recovers_parameters(a, sl, sr):
    x = _sample_aggd(np.random.default_rng(7), (256, 256), a, sl, sr).astype(np.float32)
    shape, mean, lv, rv = fit_aggd(x)
    assert abs(float(shape) - a) < 0.06 * a
    np.testing.assert_allclose(lv, sl**2 * G(3 / a) / G(1 / a), rtol=0.03)
    np.testing.assert_allclose(rv, sr**2 * G(3 / a) / G(1 / a), rtol=0.03)
    # AGGD mean (s_r - s_l) G(2/a) / G(1/a) in scale units equals the sample mean.
    np.testing.assert_allclose(mean, x.mean(), atol=0.02)


def test_fits_match_numpy_moment_matching_on_random_data():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 40, 40)) * rng.random((4, 1, 1)) + 0.3).astype(np.float32)
    ggd = np.stack(fit_ggd(x), -1)
    aggd = np.stack(fit_aggd(x), -1)
    for i in range(4):
        xi = x[i].astype(np.float64)
        np.testing.assert_allclose(ggd[i], _ggd_ref(xi), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(aggd[i], _aggd_ref(xi), rtol=2e-4, atol=1e-6)


def test_aggd_counts_zeros_on_the_right():
    x = np.array([[-2.0, 0.0, 0.0, 1.0]], np.float32)
    _, _, left_var, right_var = fit_aggd(x)
    assert float(left_var) == 4.0 and float(right_var) == pytest.approx(1 / 3)


def test_mscn_zero_border_matches_scipy_reference():
    x = 255 * ndi.gaussian_filter(np.random.default_rng(1).random((30, 26)), 1.0)
    x[:8, :8] = 0.0  # a background corner: exactly 0 in both
    ours = np.asarray(mscn_coefficients(x.astype(np.float32), border="zero"))
    np.testing.assert_allclose(ours, _mscn_ref(x, mode="constant"), atol=2e-5)
    assert np.all(ours[:5, :5] == 0.0)


def test_brisque_features_match_numpy_reimplementation():
    rng = np.random.default_rng(4)
    x = 255 * ndi.gaussian_filter(rng.random((2, 48, 40)), (0, 1.2, 1.2))
    x += 8 * rng.standard_normal(x.shape)
    feats = np.asarray(brisque_features(x.astype(np.float32)))
    assert feats.shape == (2, 36)
    # The half scale (OpenCV's cubic, tested in test_brisque_published.py) is given to the
    # reference as computed.
    half = np.asarray(half_scale(x.astype(np.float32)), np.float64)
    for i in range(2):
        ref = np.concatenate([_features_ref(x[i]), _features_ref(half[i])])
        np.testing.assert_allclose(feats[i], ref, rtol=2e-4, atol=1e-6)


def test_brisque_features_data_range_and_finite_on_mri():
    from nilearn.datasets import load_mni152_template

    vol = np.asarray(load_mni152_template(resolution=2).get_fdata(), np.float32)
    s = vol[:, :, vol.shape[2] // 2]
    s = s / s.max()
    # The template holds float32 subnormals (down to 1e-45): numpy's 255 * s keeps them, XLA's
    # CPU flushes them to zero, and near MR background the AGGD fits see the signs of such
    # values. Zero them so that both calls see the same image.
    s[np.abs(s) < np.finfo(np.float32).tiny] = 0.0
    f1 = brisque_features(s, data_range=1.0)
    np.testing.assert_allclose(f1, brisque_features(255.0 * s), rtol=1e-4, atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(f1)))
    # Noise makes the MSCN histogram less peaked: the fitted GGD shape rises towards 2.
    noisy = s + 0.05 * np.random.default_rng(5).standard_normal(s.shape).astype(np.float32)
    assert brisque_features(noisy, data_range=1.0)[0] > f1[0]


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="image"):
        brisque_features(np.ones((20, 20), np.complex64))
    with pytest.raises(ValueError, match="image"):
        brisque_features(np.ones((10, 20), np.float32))
    with pytest.raises(ValueError, match="image"):
        mscn_coefficients(np.ones(20, np.float32))
    with pytest.raises(ValueError, match="sigma"):
        mscn_coefficients(np.ones((20, 20)), sigma=0.0)
    with pytest.raises(ValueError, match="border"):
        mscn_coefficients(np.ones((20, 20)), border="wrap")
    with pytest.raises(TypeError, match="x"):
        fit_ggd(np.ones((8, 8), np.complex64))
    with pytest.raises(ValueError, match="data_range"):
        brisque_features(np.ones((20, 20)), data_range=-1.0)
