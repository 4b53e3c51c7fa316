"""Tests for jaxmri.metrics.quality against scikit-image / scipy / direct numpy references, plus
the API-convention test over every public function of jaxmri.metrics."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import convolve2d
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import jaxmri.metrics as M
from jaxmri.metrics import hfen, ms_ssim, ms_ssim_num_scales, nmse, psnr, ssim, ssim_contrast

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


@pytest.fixture(scope="module")
def mri_slice():
    """Middle axial slice of the MNI152 T1 template (ships with nilearn), max-normalised."""
    from nilearn.datasets import load_mni152_template

    vol = np.asarray(load_mni152_template(resolution=2).get_fdata(), np.float64)
    s = vol[:, :, vol.shape[2] // 2]
    return (s / s.max()).astype(np.float32)


def _pair(rng, shape, noise=0.1):
    t = rng.random(shape).astype(np.float32)
    p = np.clip(t + noise * rng.standard_normal(shape), 0, None).astype(np.float32)
    return p, t


# ----------------------------------------------------------------------------------------------
# PSNR / NMSE


@settings(max_examples=10, deadline=None)
@given(h=st.sampled_from([8, 21]), w=st.sampled_from([8, 30]), seed=st.integers(0, 2**16))
def test_psnr_matches_skimage(h, w, seed):
    p, t = _pair(np.random.default_rng(seed), (h, w))
    ref = peak_signal_noise_ratio(t.astype(np.float64), p.astype(np.float64), data_range=t.max())
    np.testing.assert_allclose(psnr(p, t), ref, rtol=1e-5)
    np.testing.assert_allclose(psnr(p, t, data_range=2.0),
                               peak_signal_noise_ratio(t, p, data_range=2.0), rtol=1e-5)


def test_psnr_on_mri_with_volume_range(mri_slice):
    t = mri_slice
    p = ndi.gaussian_filter(t, 1.0)
    ref = peak_signal_noise_ratio(t.astype(np.float64), p.astype(np.float64), data_range=1.3)
    np.testing.assert_allclose(psnr(p, t, data_range=1.3), ref, rtol=1e-5)


def test_nmse_matches_numpy():
    p, t = _pair(np.random.default_rng(0), (3, 20, 24))
    ref = [np.sum((ti - pi) ** 2) / np.sum(ti**2) for pi, ti in zip(p.astype(float), t)]
    np.testing.assert_allclose(nmse(p, t), ref, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# SSIM


@settings(max_examples=10, deadline=None)
@given(
    h=st.sampled_from([11, 24, 37]),
    w=st.sampled_from([11, 30]),
    win=st.sampled_from([3, 7, 11]),
    scale=st.sampled_from([1.0, 255.0, 1e-3]),
    seed=st.integers(0, 2**16),
)
def test_ssim_uniform_matches_skimage(h, w, win, scale, seed):
    p, t = _pair(np.random.default_rng(seed), (h, w))
    p, t = p * scale, t * scale
    dr = float(t.max())
    ref = structural_similarity(p.astype(np.float64), t.astype(np.float64), win_size=win,
                                data_range=dr)
    np.testing.assert_allclose(ssim(p, t, win_size=win), ref, atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(h=st.sampled_from([11, 24, 37]), w=st.sampled_from([11, 30]),
       sigma=st.sampled_from([0.8, 1.5]),
       seed=st.integers(0, 2**16))
def test_ssim_gaussian_matches_skimage_wang(h, w, sigma, seed):
    p, t = _pair(np.random.default_rng(seed), (h, w), noise=0.3)
    ref = structural_similarity(p.astype(np.float64), t.astype(np.float64), data_range=1.0,
                                gaussian_weights=True, sigma=sigma, use_sample_covariance=False)
    np.testing.assert_allclose(ssim(p, t, data_range=1.0, window="gaussian", sigma=sigma), ref,
                               atol=1e-4)


def test_ssim_on_mri_slice(mri_slice):
    t = mri_slice
    rng = np.random.default_rng(1)
    for p in (ndi.gaussian_filter(t, 1.2), t + 0.05 * rng.standard_normal(t.shape)):
        p = p.astype(np.float32)
        ref = structural_similarity(p.astype(np.float64), t.astype(np.float64), data_range=1.0)
        np.testing.assert_allclose(ssim(p, t, data_range=1.0), ref, atol=1e-4)


def test_ssim_per_image_data_range_broadcasts():
    rng = np.random.default_rng(2)
    p, t = _pair(rng, (2, 3, 16, 16))
    dr = np.array([[1.5], [3.0]], np.float32)  # broadcast over the second axis
    out = ssim(p, t, data_range=dr)
    assert out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            ref = structural_similarity(p[i, j].astype(float), t[i, j].astype(float),
                                        data_range=float(dr[i, 0]))
            np.testing.assert_allclose(out[i, j], ref, atol=1e-4)
    # default data_range = per-image target maximum
    ref = structural_similarity(p[1, 2].astype(float), t[1, 2].astype(float),
                                data_range=float(t[1, 2].max()))
    np.testing.assert_allclose(ssim(p, t)[1, 2], ref, atol=1e-4)


def test_ssim_gradient_matches_finite_difference():
    p, t = _pair(np.random.default_rng(3), (20, 20))
    f = lambda x: ssim(x, t, data_range=1.0)  # noqa: E731
    g = jax.grad(f)(jnp.asarray(p))
    v = np.random.default_rng(4).standard_normal(p.shape).astype(np.float32)
    h = 1e-2
    fd = (f(p + h * v) - f(p - h * v)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=2e-2)


# ----------------------------------------------------------------------------------------------
# SSIM contrast term


def _contrast_reference(p, t, data_range, win=7, k2=0.03):
    p, t = p.astype(np.float64), t.astype(np.float64)
    f = functools.partial(ndi.uniform_filter, size=win)
    n = win * win
    vx = n / (n - 1) * (f(p * p) - f(p) ** 2)
    vy = n / (n - 1) * (f(t * t) - f(t) ** 2)
    c2 = (k2 * data_range) ** 2
    c = (2 * np.sqrt(np.maximum(vx, 0) * np.maximum(vy, 0)) + c2) / (vx + vy + c2)
    r = (win - 1) // 2
    return c[r:-r, r:-r].mean()


@settings(max_examples=10, deadline=None)
@given(h=st.sampled_from([8, 21, 33]), w=st.sampled_from([8, 30]), seed=st.integers(0, 2**16))
def test_ssim_contrast_matches_scipy_reference(h, w, seed):
    p, t = _pair(np.random.default_rng(seed), (h, w), noise=0.3)
    np.testing.assert_allclose(ssim_contrast(p, t, data_range=1.0),
                               _contrast_reference(p, t, 1.0), atol=1e-5)


def test_ssim_contrast_uses_std_product_not_covariance():
    t = np.random.default_rng(5).random((24, 24)).astype(np.float32)
    # 1 - t has the same local standard deviations as t but negative covariance: c = 1, cs < 0.
    np.testing.assert_allclose(ssim_contrast(1.0 - t, t, data_range=1.0), 1.0, atol=1e-5)
    assert ssim(1.0 - t, t, data_range=1.0) < 0


def test_ssim_contrast_identity_and_blur(mri_slice):
    t = mri_slice
    # 1 up to float32 rounding of the windowed moments (a few ulp of the image's second moment).
    np.testing.assert_allclose(ssim_contrast(t, t), 1.0, atol=1e-5)
    values = [float(ssim_contrast(ndi.gaussian_filter(t, s), t)) for s in (0.5, 1.0, 2.0)]
    assert values[0] < 1.0
    assert values[0] > values[1] > values[2]
    g = jax.grad(lambda x: ssim_contrast(x, t))(jnp.asarray(t))
    assert bool(jnp.all(jnp.isfinite(g)))


# ----------------------------------------------------------------------------------------------
# MS-SSIM


def _ms_ssim_reference(p, t, data_range, n_scales, win=11, sigma=1.5):
    """Straightforward float64 MS-SSIM: 2-D valid convolution, 2x2 mean pooling."""
    x = np.arange(win) - win // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    k = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    w = WEIGHTS[:n_scales] / WEIGHTS[:n_scales].sum()
    p, t = p.astype(np.float64), t.astype(np.float64)
    out = 1.0
    for j in range(n_scales):
        if j:
            h, wd = p.shape[0] // 2, p.shape[1] // 2
            p = p[: 2 * h, : 2 * wd].reshape(h, 2, wd, 2).mean(axis=(1, 3))
            t = t[: 2 * h, : 2 * wd].reshape(h, 2, wd, 2).mean(axis=(1, 3))
        f = lambda a: convolve2d(a, k, mode="valid")  # noqa: E731
        mx, my = f(p), f(t)
        vx, vy, vxy = f(p * p) - mx**2, f(t * t) - my**2, f(p * t) - mx * my
        cs = (2 * vxy + c2) / (vx + vy + c2)
        term = cs if j < n_scales - 1 else cs * (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        out *= max(term.mean(), 0.0) ** w[j]
    return out


def test_ms_ssim_full_scales_matches_reference():
    p, t = _pair(np.random.default_rng(6), (176, 176), noise=0.2)
    p = ndi.gaussian_filter(p, 0.7)  # some structure at coarse scales too
    assert ms_ssim_num_scales((176, 176)) == 5
    np.testing.assert_allclose(ms_ssim(p, t, data_range=1.0),
                               _ms_ssim_reference(p, t, 1.0, 5), atol=1e-4)


def test_ms_ssim_reduced_scales_rule():
    assert ms_ssim_num_scales((64, 64)) == 3  # 64, 32, 16 >= 11 > 8
    assert ms_ssim_num_scales((175, 400)) == 4  # 175 -> 87 -> 43 -> 21 -> 10
    assert ms_ssim_num_scales((11, 11)) == 1
    p, t = _pair(np.random.default_rng(7), (2, 64, 64), noise=0.2)
    out = ms_ssim(p, t, data_range=1.0)
    ref = [_ms_ssim_reference(p[i], t[i], 1.0, 3) for i in range(2)]
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # One scale is exactly the Gaussian (Wang 2004) SSIM.
    q, s = p[:, :16, :16], t[:, :16, :16]
    np.testing.assert_allclose(ms_ssim(q, s, data_range=1.0),
                               ssim(q, s, data_range=1.0, window="gaussian"), atol=1e-5)
    np.testing.assert_allclose(ms_ssim(t, t), 1.0, atol=1e-5)


def test_ms_ssim_gradient_finite_and_correct():
    p, t = _pair(np.random.default_rng(8), (48, 48))
    f = lambda x: ms_ssim(x, t, data_range=1.0)  # noqa: E731
    g = jax.grad(f)(jnp.asarray(p))
    v = np.random.default_rng(9).standard_normal(p.shape).astype(np.float32)
    h = 1e-2
    fd = (f(p + h * v) - f(p - h * v)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=2e-2)
    # Anti-correlated input drives cs negative: the floor keeps the gradient finite.
    g_neg = jax.grad(f)(jnp.asarray(1.0 - t))
    assert bool(jnp.all(jnp.isfinite(g_neg)))


# ----------------------------------------------------------------------------------------------
# HFEN


@settings(max_examples=6, deadline=None)
@given(h=st.sampled_from([15, 32]), w=st.sampled_from([15, 27]), seed=st.integers(0, 2**16))
def test_hfen_matches_scipy_gaussian_laplace(h, w, seed):
    p, t = _pair(np.random.default_rng(seed), (h, w))
    # 15x15 kernel = radius 7; scipy's default border mode='reflect' is the one reproduced.
    log = lambda a: ndi.gaussian_laplace(a.astype(np.float64), 1.5, radius=7)  # noqa: E731
    ref = np.linalg.norm(log(p) - log(t)) / np.linalg.norm(log(t))
    np.testing.assert_allclose(hfen(p, t), ref, rtol=1e-4)


def test_hfen_on_mri_and_identity(mri_slice):
    t = mri_slice
    p = ndi.gaussian_filter(t, 1.0)
    log = lambda a: ndi.gaussian_laplace(a.astype(np.float64), 1.5, radius=7)  # noqa: E731
    np.testing.assert_allclose(hfen(p, t), np.linalg.norm(log(p) - log(t)) /
                               np.linalg.norm(log(t)), rtol=1e-4)
    assert float(hfen(t, t)) == 0.0


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("fn", [psnr, nmse, ssim, ssim_contrast, ms_ssim, hfen])
def test_bad_inputs_name_the_argument(fn):
    x = np.ones((16, 16), np.float32)
    with pytest.raises(TypeError, match="pred"):
        fn(x.astype(np.complex64), x)
    with pytest.raises(TypeError, match="target"):
        fn(x, x.astype(np.complex64))
    with pytest.raises(ValueError, match="pred and target"):
        fn(x, np.ones((16, 15), np.float32))
    with pytest.raises(ValueError, match="pred"):
        fn(np.ones(16, np.float32), np.ones(16, np.float32))


def test_bad_options_name_the_argument():
    x = np.ones((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x, x, win_size=9)
    with pytest.raises(ValueError, match="win_size"):
        ssim(x, x, win_size=4)
    with pytest.raises(ValueError, match="window"):
        ssim(x, x, window="box")
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=np.ones(3))
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, x, data_range=-1.0)
    with pytest.raises(ValueError, match="win_size"):
        ms_ssim(x, x)  # 8 < 11
    with pytest.raises(ValueError, match="weights"):
        ms_ssim(np.ones((16, 16)), np.ones((16, 16)), weights=(0.5, -0.5))
    with pytest.raises(ValueError, match="size"):
        hfen(x, x)  # 8 < 15
    with pytest.raises(ValueError, match="sigma"):
        hfen(np.ones((16, 16)), np.ones((16, 16)), sigma=0.0)


# ----------------------------------------------------------------------------------------------
# API conventions of every public function of jaxmri.metrics (cf. dm-pix's api_test).

B, H, W = 3, 32, 40

_PAIR_FNS = {
    "psnr": psnr,
    "nmse": nmse,
    "ssim": ssim,
    "ssim_contrast": ssim_contrast,
    "ms_ssim": ms_ssim,
    "hfen": hfen,
    "lpips": M.lpips,
}
# name -> (function of one batch, trailing output shape)
_SINGLE_FNS = {
    "mscn_coefficients": (M.mscn_coefficients, (H, W)),
    "brisque_features": (functools.partial(M.brisque_features, data_range=1.0), (36,)),
    "fit_ggd": (lambda x: M.fit_ggd(x - 0.5)[0], ()),
    "fit_aggd": (lambda x: M.fit_aggd(x - 0.5)[1], ()),
}
# Volume pairs (..., S, H, W) -> (...).
_VOLUME_FNS = {"volume_psnr": M.volume_psnr, "volume_nmse": M.volume_nmse,
               "volume_ssim": M.volume_ssim}
# Not image -> value functions: covered by their own tests.
# brisque_score is an eager float64 evaluation (tests/metrics/test_brisque_published.py).
_NOT_IMAGE_FNS = {"ms_ssim_num_scales", "features", "load_pretrained", "dice", "soft_dice_loss",
                  "fastmri_volume_metrics", "brisque_score", "load_brisque_model"}


def test_api_table_covers_every_public_function():
    assert (set(_PAIR_FNS) | set(_SINGLE_FNS) | set(_VOLUME_FNS) | _NOT_IMAGE_FNS
            == set(M.__all__))


def _check_conventions(fn, args, out_trailing):
    eager = fn(*args)
    assert eager.shape == (B,) + out_trailing
    np.testing.assert_allclose(jax.jit(fn)(*args), eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn)(*args), eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(_PAIR_FNS))
def test_api_pair_metrics_batch_jit_vmap(name):
    p, t = _pair(np.random.default_rng(10), (B, H, W))
    p = np.clip(p, 0, 1)
    _check_conventions(_PAIR_FNS[name], (jnp.asarray(p), jnp.asarray(t)), ())


@pytest.mark.parametrize("name", sorted(_VOLUME_FNS))
def test_api_volume_metrics_batch_jit_vmap(name):
    p, t = _pair(np.random.default_rng(13), (B, 4, H, W))
    _check_conventions(_VOLUME_FNS[name], (jnp.asarray(p), jnp.asarray(t)), ())


@pytest.mark.parametrize("name", sorted(_SINGLE_FNS))
def test_api_single_image_functions_batch_jit_vmap(name):
    fn, trailing = _SINGLE_FNS[name]
    x = jnp.asarray(np.random.default_rng(11).random((B, H, W)), jnp.float32)
    _check_conventions(fn, (x,), trailing)


def test_api_dice_and_soft_dice_batch_jit_vmap():
    rng = np.random.default_rng(12)
    a = jnp.asarray(rng.integers(0, 4, (B, H, W)))
    b = jnp.asarray(rng.integers(0, 3, (B, H, W)))
    _check_conventions(functools.partial(M.dice, num_classes=4), (a, b), (4,))
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((B, H, W, 4)), jnp.float32))
    onehot = jax.nn.one_hot(b, 4)
    _check_conventions(M.soft_dice_loss, (probs, onehot), ())


def test_api_leading_axes_are_kept():
    p, t = _pair(np.random.default_rng(13), (2, 3, 20, 20))
    for fn in (psnr, nmse, ssim, ssim_contrast, ms_ssim, hfen):
        out = fn(p, t)
        assert out.shape == (2, 3)
        np.testing.assert_allclose(out[1, 2], fn(p[1, 2], t[1, 2]), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Value contract: NaN, zero peaks, blank targets (concrete inputs checked; traced documented)

PEAK_METRICS = {"psnr": psnr, "ssim": ssim, "ssim_contrast": ssim_contrast, "ms_ssim": ms_ssim}
ALL_METRICS = {**PEAK_METRICS, "nmse": nmse, "hfen": hfen}


@pytest.mark.parametrize("name", list(ALL_METRICS))
def test_non_finite_inputs_are_refused(name):
    metric = ALL_METRICS[name]
    p, t = _pair(np.random.default_rng(0), (2, 24, 24))
    bad_pred = p.copy()
    bad_pred[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match="pred contains 1 non-finite values"):
        metric(bad_pred, t)
    bad_target = t.copy()
    bad_target[0, :2, 0] = np.inf
    with pytest.raises(ValueError, match="target contains 2 non-finite values"):
        metric(jnp.asarray(p), jnp.asarray(bad_target))  # JAX arrays are checked as well


@pytest.mark.parametrize("name", list(PEAK_METRICS))
@pytest.mark.parametrize("data_range", [np.float32(0), jnp.zeros(2), np.array([1.0, 0.0]),
                                        jnp.array(-1.0), np.nan, 0])
def test_zero_or_invalid_data_range_is_refused_in_any_form(name, data_range):
    p, t = _pair(np.random.default_rng(1), (2, 24, 24))
    with pytest.raises(ValueError, match="data_range must be finite and > 0"):
        PEAK_METRICS[name](p, t, data_range=data_range)


@pytest.mark.parametrize("name", list(ALL_METRICS))
def test_all_zero_target_image_is_refused_naming_the_image(name):
    p, t = _pair(np.random.default_rng(2), (2, 3, 24, 24))
    t[1, 2] = 0.0
    expected = "target image (1, 2) " + ("has maximum 0.0 <= 0" if name in PEAK_METRICS
                                         else "is all zero")
    with pytest.raises(ValueError, match=re.escape(expected)):
        ALL_METRICS[name](p, t)
    if name in PEAK_METRICS:  # with an explicit peak the blank image has a defined score
        assert np.all(np.isfinite(np.asarray(ALL_METRICS[name](p, t, data_range=1.0))))


def test_traced_values_are_not_checked_as_documented_and_checkify_finds_them():
    from jax.experimental import checkify

    p, t = _pair(np.random.default_rng(3), (2, 24, 24))
    p[0, 0, 0] = np.nan
    # Under jit nothing can look at the values: the documented result is NaN, not an error.
    assert np.isnan(np.asarray(jax.jit(psnr)(p, t))[0])
    assert np.isfinite(np.asarray(jax.jit(psnr)(p, t))[1])
    error, _ = checkify.checkify(jax.jit(psnr), errors=checkify.float_checks)(p, t)
    assert "nan generated" in error.get()
    # As a loss under grad the checks stay out of the way (pred is a tracer).
    grad = jax.grad(lambda x: jnp.mean(ssim(x, t + 0.1, data_range=1.0)))(t)
    assert np.all(np.isfinite(np.asarray(grad)))


# ----------------------------------------------------------------------------------------------
# fastMRI's volume evaluation


def _fastmri_reference(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """fastMRI evaluate.py by hand: numpy PSNR/NMSE over the volume, skimage SSIM per slice
    with the volume maximum, averaged."""
    peak = gt.max()
    mse = np.mean((gt.astype(np.float64) - pred) ** 2)
    return {
        "PSNR": 10 * np.log10(peak**2 / mse),
        "NMSE": np.sum((gt.astype(np.float64) - pred) ** 2) / np.sum(gt.astype(np.float64) ** 2),
        "SSIM": np.mean([structural_similarity(gt[s], pred[s], data_range=peak)
                         for s in range(gt.shape[0])]),
    }


def test_volume_metrics_match_fastmri_evaluate_by_hand(mri_slice):
    rng = np.random.default_rng(4)
    # A volume of 6 slices of varying brightness, one of them blank (the end of a scan).
    gains = np.array([1.0, 0.8, 0.6, 0.9, 0.3, 0.0], np.float32)
    gt = (gains[:, None, None] * mri_slice[None]).astype(np.float32)
    pred = np.clip(gt + 0.03 * rng.standard_normal(gt.shape), 0, None).astype(np.float32)
    want = _fastmri_reference(gt, pred)
    got = M.fastmri_volume_metrics(pred, gt)
    assert float(got["PSNR"]) == pytest.approx(want["PSNR"], abs=1e-3)
    assert float(got["PSNR"]) == pytest.approx(
        peak_signal_noise_ratio(gt, pred, data_range=gt.max()), abs=1e-3)
    assert float(got["NMSE"]) == pytest.approx(want["NMSE"], rel=1e-4)
    assert float(got["SSIM"]) == pytest.approx(want["SSIM"], abs=1e-4)
    assert float(M.volume_psnr(pred, gt)) == float(got["PSNR"])
    # Not the per-slice convention: the per-image functions refuse the blank slice, and on the
    # other slices their mean PSNR (own peak per slice) is a different number.
    with pytest.raises(ValueError, match="target image"):
        psnr(pred, gt)
    per_slice = float(np.mean(np.asarray(psnr(pred[:5], gt[:5]))))
    assert abs(per_slice - float(M.volume_psnr(pred[:5], gt[:5]))) > 0.5
    # Leading axes: a batch of two volumes gives the two volume scores.
    both = M.volume_ssim(np.stack([pred, gt]), np.stack([gt, gt]))
    np.testing.assert_allclose(np.asarray(both), [want["SSIM"], 1.0], atol=1e-4)
    with pytest.raises(ValueError, match="ndim >= 3"):
        M.volume_psnr(pred[0], gt[0])
    with pytest.raises(ValueError, match="volume has maximum <= 0"):
        M.volume_ssim(pred, np.zeros_like(gt))
