"""Tests for jaxmri.physics.masks.

Tolerances used below (stated once, here):
* fastMRI random mask and 2-D variable-density mask: the *mean* number of samples over many
  seeds is within 2 % (1 % for 2-D) of ``H * W / acceleration``; single masks vary binomially.
* equispaced and Gaussian Cartesian masks: exact column counts (no tolerance).
* pseudo-radial: achieved rate within 0.01 (absolute) of the request on 128 x 128, and the line
  count is the best available one.
* Poisson disc: every mask within the function's ``tol`` (2 % relative).
"""

import itertools
import math

import jax
import numpy as np
import pytest

from jaxmri.physics import masks
from jaxmri.physics.masks import (
    as_numpy_generator,
    equispaced_column_mask,
    equispaced_fraction_column_mask,
    gaussian_cartesian_mask,
    poisson_disc_mask,
    pseudo_radial_lines,
    pseudo_radial_mask,
    random_column_mask,
    variable_density_random_mask,
)

# One small, valid request per mask function, used by the convention and determinism tests.
CASES = {
    "random_column": (random_column_mask, dict(center_fraction=0.08, acceleration=4)),
    "equispaced_column": (equispaced_column_mask, dict(center_fraction=0.08, acceleration=4)),
    "equispaced_fraction": (equispaced_fraction_column_mask,
                            dict(center_fraction=0.08, acceleration=4)),
    "gaussian_cartesian": (gaussian_cartesian_mask, dict(acceleration=4, center_lines=4)),
    "variable_density": (variable_density_random_mask, dict(acceleration=4)),
    "pseudo_radial": (pseudo_radial_mask, dict(sampling_rate=0.25)),
    "poisson_disc": (poisson_disc_mask, dict(acceleration=3, calib_size=(8, 8))),
}
SHAPE = (32, 40)


def _fastmri_centre_columns(width, center_fraction):
    """fastMRI: n_low = round(W * cf) columns starting at pad = (W - n_low + 1) // 2."""
    n_low = round(width * center_fraction)
    pad = (width - n_low + 1) // 2
    return list(range(pad, pad + n_low))


# ---------------------------------------------------------------------------------------------
# Conventions shared by every mask
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_api_conventions(name):
    fn, kwargs = CASES[name]
    mask, acceleration = fn(0, SHAPE, **kwargs)
    assert isinstance(mask, np.ndarray) and mask.dtype == np.float32 and mask.shape == SHAPE
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert type(acceleration) is float
    assert acceleration == pytest.approx(SHAPE[0] * SHAPE[1] / mask.sum(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_given_rng_and_varies_with_it(name):
    fn, kwargs = CASES[name]
    same = [fn(seed, SHAPE, **kwargs)[0] for seed in (7, 7)]
    np.testing.assert_array_equal(same[0], same[1])
    key = jax.random.key(3)
    np.testing.assert_array_equal(fn(key, SHAPE, **kwargs)[0], fn(key, SHAPE, **kwargs)[0])
    raw_key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(
        fn(raw_key, SHAPE, **kwargs)[0], fn(raw_key, SHAPE, **kwargs)[0]
    )
    gen_masks = [fn(np.random.default_rng(11), SHAPE, **kwargs)[0] for _ in range(2)]
    np.testing.assert_array_equal(gen_masks[0], gen_masks[1])
    different = {fn(seed, SHAPE, **kwargs)[0].tobytes() for seed in range(6)}
    assert len(different) > 1


def test_as_numpy_generator_kinds():
    gen = np.random.default_rng(0)
    assert as_numpy_generator(gen) is gen
    np.testing.assert_array_equal(
        as_numpy_generator(5).uniform(size=4), np.random.default_rng(5).uniform(size=4)
    )
    key = jax.random.key(0)
    a = as_numpy_generator(key).uniform(size=4)
    np.testing.assert_array_equal(a, as_numpy_generator(key).uniform(size=4))
    k1, k2 = jax.random.split(key)
    assert not np.array_equal(
        as_numpy_generator(k1).uniform(size=4), as_numpy_generator(k2).uniform(size=4)
    )
    # A raw PRNGKey and the typed key wrapping the same data give the same stream.
    raw = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(
        as_numpy_generator(raw).uniform(size=4),
        as_numpy_generator(jax.random.wrap_key_data(raw)).uniform(size=4),
    )


@pytest.mark.parametrize("bad", [None, 1.5, True, np.random.RandomState(0), "seed"])
def test_as_numpy_generator_rejects_bad_rng(bad):
    with pytest.raises(TypeError, match=r"\brng must be"):
        as_numpy_generator(bad)


def test_as_numpy_generator_rejects_negative_seed():
    with pytest.raises(ValueError, match=r"\brng .*>= 0"):
        as_numpy_generator(-1)


# ---------------------------------------------------------------------------------------------
# fastMRI column masks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width, center_fraction, expected",
    [
        # Worked from the formula by hand: round(), then pad = (W - n_low + 1) // 2.
        (64, 0.08, [30, 31, 32, 33, 34]),  # n_low = round(5.12) = 5, pad = 30
        (63, 0.08, [29, 30, 31, 32, 33]),  # n_low = round(5.04) = 5, pad = 29
        (64, 0.1, [29, 30, 31, 32, 33, 34]),  # n_low = round(6.4) = 6, pad = 29
        (65, 0.1, [30, 31, 32, 33, 34, 35]),  # n_low = round(6.5) = 6 (half to even), pad = 30
        (20, 0.0, []),
    ],
)
def test_fastmri_centre_placement(width, center_fraction, expected):
    assert _fastmri_centre_columns(width, center_fraction) == expected
    # acceleration = W / n_low makes the random-line probability exactly 0 (and an equispaced
    # spacing this large would not be an integer), so the random mask is the centre alone.
    if expected:
        acceleration = width / len(expected)
        mask, achieved = random_column_mask(
            0, (3, width), center_fraction=center_fraction, acceleration=acceleration
        )
        assert np.flatnonzero(mask[0]).tolist() == expected
        assert achieved == pytest.approx(acceleration)
    for seed in range(20):
        for fn in (random_column_mask, equispaced_column_mask):
            mask, _ = fn(seed, (3, width), center_fraction=center_fraction, acceleration=4)
            assert np.all(mask[:, expected] == 1)
            assert np.all(mask == mask[:1])  # whole columns


def test_random_column_line_probability_and_mean_acceleration():
    height, width, cf, acc = 2, 64, 0.08, 4.0
    centre = _fastmri_centre_columns(width, cf)
    n_low = len(centre)
    prob = (width / acc - n_low) / (width - n_low)
    gen = np.random.default_rng(0)
    n_masks = 2000
    rows = np.stack(
        [
            random_column_mask(gen, (height, width), center_fraction=cf, acceleration=acc)[0][0]
            for _ in range(n_masks)
        ]
    )
    outside = np.setdiff1d(np.arange(width), centre)
    freq = rows[:, outside].mean(axis=0)
    sigma_all = math.sqrt(prob * (1 - prob) / (n_masks * outside.size))
    assert abs(freq.mean() - prob) < 4 * sigma_all
    # Every non-centre column has the same probability (no hidden position dependence).
    assert np.all(np.abs(freq - prob) < 5 * math.sqrt(prob * (1 - prob) / n_masks))
    assert abs(rows.sum(axis=1).mean() - width / acc) < 0.02 * width / acc


@pytest.mark.parametrize("width, acc", [(64, 4), (63, 4), (50, 8), (37, 3)])
def test_equispaced_spacing_and_offsets(width, acc):
    cf = 0.08
    centre = set(_fastmri_centre_columns(width, cf))
    offsets = set()
    for seed in range(60):
        mask, achieved = equispaced_column_mask(
            seed, (2, width), center_fraction=cf, acceleration=acc
        )
        cols = set(np.flatnonzero(mask[0]).tolist())
        matching = [o for o in range(acc) if cols == centre | set(range(o, width, acc))]
        assert len(matching) == 1
        offsets.add(matching[0])
        assert achieved == pytest.approx(width / len(cols))
    assert offsets == set(range(acc))  # offset drawn from [0, acc)


@pytest.mark.parametrize("width, acc", [(64, 4), (96, 4), (320, 4), (368, 8), (50, 3)])
def test_equispaced_fraction_is_a_true_acceleration(width, acc):
    # fastMRI's EquispacedMaskFractionFunc: centre included, about W / acc columns are kept
    # (the plain equispaced mask keeps the centre on top and is nearer W / acc + n_low).
    cf = 0.08
    centre = set(_fastmri_centre_columns(width, cf))
    n_low = len(centre)
    spacing = acc * (width - n_low) / (width - acc * n_low)
    offsets = set()
    for seed in range(200):
        mask, achieved = equispaced_fraction_column_mask(
            seed, (2, width), center_fraction=cf, acceleration=acc)
        cols = set(np.flatnonzero(mask[0]).tolist())
        assert centre <= cols
        outer = sorted(cols - centre)
        assert np.all(np.diff(outer) >= np.floor(spacing))  # stretched, not every acc-th
        matching = [o for o in range(round(spacing))
                    if cols == centre | set(np.round(np.arange(o, width - 1, spacing))
                                            .astype(int).tolist())]
        assert len(matching) == 1
        offsets.add(matching[0])
        assert abs(len(cols) - width / acc) <= n_low / 2 + 1
        assert achieved == pytest.approx(width / len(cols))
    assert offsets == set(range(round(spacing)))


def test_equispaced_accepts_integral_float():
    a = equispaced_column_mask(1, (4, 32), center_fraction=0.1, acceleration=4.0)[0]
    b = equispaced_column_mask(1, (4, 32), center_fraction=0.1, acceleration=4)[0]
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Gaussian Cartesian (DC-CNN)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, acc, centre_lines", [(64, 8, 4), (96, 2.5, 10), (65, 4, 5)])
def test_gaussian_cartesian_counts_and_centre(width, acc, centre_lines):
    n_lines = int(width / acc)
    start = width // 2 - centre_lines // 2
    for seed in range(10):
        mask, achieved = gaussian_cartesian_mask(
            seed, (3, width), acceleration=acc, center_lines=centre_lines
        )
        assert np.all(mask == mask[:1])
        assert mask[0].sum() == n_lines
        assert achieved == pytest.approx(width / n_lines)
        assert np.all(mask[:, start : start + centre_lines] == 1)
        assert mask[0, width // 2] == 1  # DC always kept


def test_gaussian_cartesian_draws_columns_like_numpy_weighted_choice():
    """Inclusion frequencies of the random columns match DC-CNN's draw, numpy's
    ``choice(p=weight / sum, replace=False)``, within sampling error (4000 masks each)."""
    width, acc, centre_lines, draws = 32, 4, 2, 4000
    gen = np.random.default_rng(1)
    ours = np.mean([gaussian_cartesian_mask(gen, (1, width), acceleration=acc,
                                            center_lines=centre_lines)[0][0]
                    for _ in range(draws)], axis=0)
    j = np.arange(width)
    weight = np.exp(-((j - width / 2) ** 2) / (2 * (width / 10) ** 2)) + 1 / (2 * acc)
    weight[width // 2 - 1:width // 2 + 1] = 0
    reference = np.zeros(width)
    for _ in range(draws):
        picked = gen.choice(width, size=width // acc - centre_lines, replace=False,
                            p=weight / weight.sum())
        reference[picked] += 1 / draws
    reference[width // 2 - 1:width // 2 + 1] = 1
    # Two independent estimates of the same frequency: difference std <= sqrt(2 * 0.25 / n).
    np.testing.assert_allclose(ours, reference, atol=4 * np.sqrt(0.5 / draws))
    assert np.ptp(reference[weight > 0]) > 0.3  # the weights matter, so the check has teeth


def test_gaussian_cartesian_density_falls_off_from_centre():
    width, acc, centre_lines = 128, 4, 8
    gen = np.random.default_rng(0)
    rows = [
        gaussian_cartesian_mask(gen, (1, width), acceleration=acc, center_lines=centre_lines)[0][0]
        for _ in range(400)
    ]
    freq = np.mean(rows, axis=0)
    dist = np.abs(np.arange(width) - width // 2)
    near = freq[(dist > centre_lines // 2) & (dist <= width // 10)].mean()
    middle = freq[(dist > width // 5) & (dist <= 3 * width // 10)].mean()
    edge = freq[dist > 2 * width // 5].mean()
    assert near > middle > edge > 0  # Gaussian bump on a positive uniform floor
    assert near > 3 * edge


# ---------------------------------------------------------------------------------------------
# 2-D variable-density random
# ---------------------------------------------------------------------------------------------


def test_variable_density_mean_acceleration_centre_and_falloff():
    shape, acc, cf = (64, 64), 4.0, 0.125
    gen = np.random.default_rng(0)
    draws = [
        variable_density_random_mask(gen, shape, acceleration=acc, center_fraction=cf)
        for _ in range(100)
    ]
    stack = np.stack([m for m, _ in draws])
    target = shape[0] * shape[1] / acc
    assert abs(stack.sum(axis=(1, 2)).mean() - target) < 0.01 * target
    assert all(abs(a - acc) < 0.1 * acc for _, a in draws)
    assert np.all(stack[:, 28:36, 28:36] == 1)  # round(64 * 0.125) = 8 lines around DC (32)
    ky, kx = np.meshgrid(np.arange(64) - 32, np.arange(64) - 32, indexing="ij")
    r = np.hypot(ky, kx)
    freq = stack.mean(axis=0)
    ring = [freq[(r >= lo) & (r < lo + 6)].mean() for lo in (6, 14, 22, 30)]
    assert all(a > b for a, b in itertools.pairwise(ring))


def test_variable_density_uniform_when_decay_is_zero():
    # decay = 0: every non-centre point has the same probability (target - centre) / outside.
    shape, acc = (32, 32), 5.0
    gen = np.random.default_rng(1)
    stack = np.stack(
        [
            variable_density_random_mask(
                gen, shape, acceleration=acc, center_fraction=0.25, decay=0.0
            )[0]
            for _ in range(300)
        ]
    )
    outside = np.ones(shape, bool)
    outside[12:20, 12:20] = False  # round(32 * 0.25) = 8 lines around DC (16)
    prob = (32 * 32 / acc - 64) / outside.sum()
    freq = stack[:, outside].mean()
    assert abs(freq - prob) < 4 * math.sqrt(prob * (1 - prob) / (300 * outside.sum()))


# ---------------------------------------------------------------------------------------------
# Pseudo-radial
# ---------------------------------------------------------------------------------------------


def _brute_force_radial(shape, num_lines, theta0):
    """Distance of each pixel to each of the lines, computed directly."""
    height, width = shape
    ky, kx = np.meshgrid(
        np.arange(height) - height // 2, np.arange(width) - width // 2, indexing="ij"
    )
    theta = theta0 + np.arange(num_lines) * np.pi / num_lines
    dist = np.abs(kx[..., None] * np.sin(theta) - ky[..., None] * np.cos(theta)).min(axis=-1)
    return dist


@pytest.mark.parametrize(
    "shape, num_lines, theta0", [((32, 32), 3, 0.0), ((33, 40), 7, 0.3), ((64, 48), 20, 1.1)]
)
def test_pseudo_radial_lines_match_brute_force(shape, num_lines, theta0):
    dist = _brute_force_radial(shape, num_lines, theta0)
    mask = pseudo_radial_lines(shape, num_lines=num_lines, theta0=theta0)
    clear = np.abs(dist - 0.5) > 1e-6  # pixels exactly at 1/2 are decided by rounding
    np.testing.assert_array_equal(mask[clear], (dist < 0.5)[clear])


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.25, 0.3, 0.4])
def test_pseudo_radial_rate_and_geometry(rate):
    shape = (128, 128)
    key = jax.random.key(int(rate * 100))
    mask, acceleration = pseudo_radial_mask(key, shape, sampling_rate=rate)
    assert abs(mask.mean() - rate) < 0.01
    assert acceleration == pytest.approx(1 / mask.mean())
    assert mask[64, 64] == 1  # DC
    # Lines through DC are point-symmetric: (ky, kx) -> (-ky, -kx) on the part of the grid
    # where the mirror exists (rows/columns 1..127 for an even size).
    inner = mask[1:, 1:]
    np.testing.assert_array_equal(inner, inner[::-1, ::-1])


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.4])
def test_pseudo_radial_picks_best_line_count(rate):
    shape = (48, 48)
    mask, _ = pseudo_radial_mask(None, shape, sampling_rate=rate)
    rates = np.array(
        [(_brute_force_radial(shape, m, 0.0) < 0.5).mean() for m in range(1, 80)]
    )
    assert abs(mask.mean() - rate) <= np.abs(rates - rate).min() + 1e-6
    # rng=None means theta0 = 0: the kx axis (row H//2) and, for an even count, the ky axis.
    assert np.all(mask[24] == 1)


# ---------------------------------------------------------------------------------------------
# Poisson disc
# ---------------------------------------------------------------------------------------------


def _brute_force_greedy(candidates, radius, priority):
    """Visit candidates in priority order, keep one unless it conflicts with a kept one."""
    kept = []
    for flat in np.argsort(priority, axis=None):
        p = np.unravel_index(flat, candidates.shape)
        if not candidates[p]:
            continue
        if all(math.dist(p, q) >= 0.5 * (radius[p] + radius[q]) for q in kept):
            kept.append(p)
    out = np.zeros(candidates.shape, bool)
    for p in kept:
        out[p] = True
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_disc_packing_equals_sequential_dart_throwing(seed):
    rng = np.random.default_rng(seed)
    shape = (20, 24)
    candidates = rng.uniform(size=shape) < 0.9
    radius = rng.uniform(0.8, 3.5, size=shape)
    priority = rng.permutation(shape[0] * shape[1]).reshape(shape).astype(float)
    np.testing.assert_array_equal(
        masks._greedy_disc_packing(candidates, radius, priority),
        _brute_force_greedy(candidates, radius, priority),
    )


def _poisson_geometry(shape, calib, radius_ratio):
    """Documented radius profile: 1 + (ratio - 1) r, r the normalised distance from the block."""
    height, width = shape
    dy = np.maximum(np.abs(np.arange(height) - height // 2) - calib[0] / 2, 0)
    dx = np.maximum(np.abs(np.arange(width) - width // 2) - calib[1] / 2, 0)
    r = np.hypot((dy / dy.max())[:, None], (dx / dx.max())[None, :])
    return r, 1 + (radius_ratio - 1) * r


@pytest.mark.parametrize("shape, acc", [((32, 32), 3.0), ((32, 40), 5.0), ((40, 32), 2.0)])
def test_poisson_disc_is_a_maximal_variable_density_packing(shape, acc):
    calib, ratio = (8, 8), 3.0
    mask, achieved = poisson_disc_mask(3, shape, acceleration=acc, calib_size=calib)
    assert abs(achieved - acc) <= 0.02 * acc
    block = np.zeros(shape, bool)
    rows = slice(shape[0] // 2 - 4, shape[0] // 2 + 4)
    cols = slice(shape[1] // 2 - 4, shape[1] // 2 + 4)
    block[rows, cols] = True
    assert np.all(mask[block] == 1)  # calibration fully sampled
    r, profile = _poisson_geometry(shape, calib, ratio)
    assert np.all(mask[~block & (r >= 1)] == 0)  # corners cropped
    # Brute force over all pairs: some scale s makes the samples outside the block a Poisson-disc
    # set (every pair at distance >= s (P_p + P_q) / 2) that is also maximal (every candidate left
    # out is closer than that to a sample).
    pts = np.argwhere((mask == 1) & ~block)
    left_out = np.argwhere((mask == 0) & ~block & (r < 1))
    d = np.linalg.norm(pts[:, None] - pts[None, :], axis=-1)
    p = profile[pts[:, 0], pts[:, 1]]
    pair = 2 * d / (p[:, None] + p[None, :])
    np.fill_diagonal(pair, np.inf)
    s_max = pair.min()  # separation holds for s <= s_max
    d_out = np.linalg.norm(left_out[:, None] - pts[None, :], axis=-1)
    p_out = profile[left_out[:, 0], left_out[:, 1]]
    s_min = (2 * d_out / (p_out[:, None] + p[None, :])).min(axis=1).max()  # maximal for s > s_min
    assert s_min < s_max


def test_poisson_disc_density_and_tolerance_over_seeds():
    shape, acc = (64, 64), 4.0
    stack = []
    for seed in range(8):
        mask, achieved = poisson_disc_mask(
            jax.random.key(seed), shape, acceleration=acc, calib_size=(12, 12)
        )
        assert abs(achieved - acc) <= 0.02 * acc
        stack.append(mask)
    freq = np.mean(stack, axis=0)
    r, _ = _poisson_geometry(shape, (12, 12), 3.0)
    inner = freq[(r > 0) & (r < 0.3)].mean()
    outer = freq[(r > 0.6) & (r < 1)].mean()
    assert inner > 2 * outer > 0


def test_poisson_disc_reaches_low_acceleration():
    mask, achieved = poisson_disc_mask(0, (48, 48), acceleration=2.0, calib_size=(8, 8))
    assert abs(achieved - 2.0) <= 0.04


# ---------------------------------------------------------------------------------------------
# Impossible requests
# ---------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    (random_column_mask, (32, 32), dict(center_fraction=0.08, acceleration=0.5), "acceleration"),
    (random_column_mask, (32, 32), dict(center_fraction=0.5, acceleration=4), "center_fraction"),
    (random_column_mask, (32, 32), dict(center_fraction=1.5, acceleration=1), "center_fraction"),
    (random_column_mask, (0, 32), dict(center_fraction=0.08, acceleration=4), "shape"),
    (random_column_mask, (32,), dict(center_fraction=0.08, acceleration=4), "shape"),
    (equispaced_column_mask, (32, 32), dict(center_fraction=0.08, acceleration=2.5), "integer"),
    (equispaced_column_mask, (32, 32), dict(center_fraction=0.3, acceleration=4), "center_frac"),
    (gaussian_cartesian_mask, (32, 32), dict(acceleration=8), "center_lines"),
    (gaussian_cartesian_mask, (32, 32), dict(acceleration=64, center_lines=0), "acceleration"),
    (gaussian_cartesian_mask, (32, -4), dict(acceleration=4), "shape"),
    (variable_density_random_mask, (32, 32), dict(acceleration=0.9), "acceleration"),
    (
        variable_density_random_mask,
        (32, 32),
        dict(acceleration=20, center_fraction=0.3),
        "center_fraction",
    ),
    (pseudo_radial_mask, (32, 32), dict(sampling_rate=0.0), "sampling_rate"),
    (pseudo_radial_mask, (32, 32), dict(sampling_rate=1.5), "sampling_rate"),
    (poisson_disc_mask, (32, 32), dict(acceleration=4), "calib_size"),  # 24x24 > 256 points
    (poisson_disc_mask, (16, 16), dict(acceleration=2, calib_size=(20, 4)), "calib_size"),
    (poisson_disc_mask, (32, 32), dict(acceleration=1.05, calib_size=(4, 4)), "densest"),
    (
        poisson_disc_mask,
        (32, 32),
        dict(acceleration=4, calib_size=(4, 4), radius_ratio=0.5),
        "radius_ratio",
    ),
]


@pytest.mark.parametrize("fn, shape, kwargs, match", BAD_REQUESTS)
def test_impossible_requests_raise_value_error(fn, shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(0, shape, **kwargs)


@pytest.mark.parametrize("name", sorted(set(CASES) - {"pseudo_radial"}))
def test_rng_is_required(name):
    fn, kwargs = CASES[name]
    with pytest.raises(TypeError, match=r"\brng must be"):
        fn(None, SHAPE, **kwargs)
