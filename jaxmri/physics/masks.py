"""k-space sampling masks, built on the host in numpy.

Conventions
-----------
* Every mask function takes the randomness first: ``rng`` is a ``numpy.random.Generator``, an
  ``int`` seed, or a ``jax.random`` key (see :func:`as_numpy_generator`). The same ``rng`` value
  (a fresh Generator, the same seed, the same key) gives the same mask; nothing global is read or
  written. A Generator passed in is advanced, as numpy functions do.
* Every mask function returns ``(mask, acceleration)``: ``mask`` is a ``float32`` numpy array of
  shape ``(H, W)`` holding 0 and 1, laid out on *centred* k-space (the DC sample at
  ``(H // 2, W // 2)``, as produced by :func:`jaxmri.physics.fft.fft2c`); ``acceleration`` is the
  achieved ``H * W / mask.sum()`` as a Python float.
* Cartesian (column) masks select whole phase-encode columns, i.e. indices along the last axis
  ``W``; they are still returned as full ``(H, W)`` arrays with identical rows.
* A request that no mask of the given shape can satisfy (acceleration < 1, a fully sampled centre
  that already exceeds the sample budget, a sampling rate outside ``(0, 1]``, a bad shape) raises
  a ``ValueError`` that names the argument and says why.

Masks are data-pipeline objects: they are made once per example on the host, then passed to the
jit-compiled physics as ordinary arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmri._checks import check_positive, check_shape_2d

__all__ = [
    "as_numpy_generator",
    "random_column_mask",
    "equispaced_column_mask",
    "equispaced_fraction_column_mask",
    "gaussian_cartesian_mask",
    "variable_density_random_mask",
    "pseudo_radial_mask",
    "pseudo_radial_lines",
    "poisson_disc_mask",
]

RngLike = np.random.Generator | int | jax.Array


# --------------------------------------------------------------------------------------------
# Randomness and shared helpers
# --------------------------------------------------------------------------------------------


def _is_jax_key(rng) -> bool:
    if not isinstance(rng, jax.Array):
        return False
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return True
    # Legacy raw keys from ``jax.random.PRNGKey``: uint32 arrays of shape (2,).
    return rng.dtype == jnp.uint32 and rng.shape == (2,)


def as_numpy_generator(rng: RngLike) -> np.random.Generator:
    """Turn ``rng`` into a ``numpy.random.Generator``, deterministically.

    Args:
      rng: a ``numpy.random.Generator`` (returned unchanged), a non-negative ``int`` seed
        (``numpy.random.default_rng(seed)``), or a ``jax.random`` key, either typed
        (``jax.random.key``) or raw (``jax.random.PRNGKey``). A key is turned into 128 random
        bits with ``jax.random.bits`` that seed a ``numpy.random.SeedSequence``, so the same key
        always gives the same Generator and split keys give independent ones.

    Returns:
      A ``numpy.random.Generator``.

    Raises:
      TypeError: ``rng`` is none of the accepted kinds (e.g. ``None``, a float, a legacy
        ``numpy.random.RandomState``).
      ValueError: ``rng`` is a negative int.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ValueError(f"rng as an int seed must be >= 0, got {rng}")
        return np.random.default_rng(int(rng))
    if _is_jax_key(rng):
        words = np.asarray(jax.random.bits(rng, (4,), dtype=jnp.uint32))
        return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))
    raise TypeError(
        "rng must be a numpy.random.Generator, a non-negative int seed or a jax.random key, "
        f"got {type(rng).__name__}"
    )


def _finish(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the float32 mask and its achieved acceleration ``H * W / mask.sum()``."""
    mask = np.asarray(mask, dtype=np.float32)
    n_sampled = float(mask.sum())
    acceleration = float(mask.size / n_sampled) if n_sampled > 0 else math.inf
    return mask, acceleration


def _check_acceleration(acceleration: float) -> float:
    if not (isinstance(acceleration, (int, float, np.number)) and math.isfinite(acceleration)):
        raise ValueError(f"acceleration must be a finite number >= 1, got {acceleration!r}")
    if acceleration < 1:
        raise ValueError(
            f"acceleration must be >= 1 (a mask cannot sample more than all of k-space), "
            f"got {acceleration}"
        )
    return float(acceleration)


def _check_fraction(value: float, name: str) -> float:
    if not (isinstance(value, (int, float, np.number)) and 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _centre_slice(n: int, n_centre: int) -> slice:
    """Indices of ``n_centre`` consecutive lines around DC index ``n // 2``.

    For even ``n_centre`` the block is ``[n//2 - n_centre//2, n//2 + n_centre//2)``; for odd
    ``n_centre`` it is centred exactly on ``n // 2``. In both cases it contains DC.
    """
    start = n // 2 - n_centre // 2
    return slice(start, start + n_centre)


def _columns_to_mask(columns: np.ndarray, height: int) -> np.ndarray:
    return np.broadcast_to(columns.astype(np.float32), (height, columns.size)).copy()


# --------------------------------------------------------------------------------------------
# fastMRI column masks
# --------------------------------------------------------------------------------------------


def _fastmri_centre(width: int, center_fraction: float, acceleration: float) -> np.ndarray:
    """fastMRI's fully sampled centre: ``round(W * cf)`` columns starting at ``(W - n + 1)//2``."""
    n_low = round(width * center_fraction)
    if n_low > width / acceleration:
        raise ValueError(
            f"center_fraction={center_fraction} keeps {n_low} of {width} columns, more than the "
            f"{width / acceleration:.2f} columns allowed by acceleration={acceleration}: "
            "lower center_fraction or acceleration"
        )
    centre = np.zeros(width, dtype=bool)
    pad = (width - n_low + 1) // 2
    centre[pad : pad + n_low] = True
    return centre


def random_column_mask(
    rng: RngLike,
    shape: Sequence[int],
    *,
    center_fraction: float,
    acceleration: float,
) -> tuple[np.ndarray, float]:
    """fastMRI ``RandomMaskFunc``: fully sampled centre plus i.i.d. random columns.

    With ``n_low = round(W * center_fraction)``, columns ``[pad, pad + n_low)`` with
    ``pad = (W - n_low + 1) // 2`` are always kept, and every column is kept independently with
    probability ``(W / acceleration - n_low) / (W - n_low)``, so that the *expected* number of
    columns is ``W / acceleration``. The achieved acceleration of one mask varies around the
    request (binomial column count). Semantics match fastMRI; the random stream does not (numpy
    Generator instead of the legacy RandomState), so masks are not bit-identical to fastMRI's.

    Args:
      rng: Generator, int seed or jax key (see :func:`as_numpy_generator`).
      shape: ``(H, W)`` of the k-space; columns are drawn along ``W``.
      center_fraction: fraction of columns in the fully sampled centre, in ``[0, 1]``.
      acceleration: requested acceleration ``>= 1`` (may be fractional).

    Returns:
      ``(mask, acceleration)``: ``float32`` ``(H, W)`` column mask and achieved acceleration.

    Raises:
      ValueError: bad ``shape``, ``acceleration < 1``, ``center_fraction`` outside ``[0, 1]``, or
        a centre wider than ``W / acceleration`` columns.
    """
    height, width = check_shape_2d(shape, "shape")
    acceleration = _check_acceleration(acceleration)
    center_fraction = _check_fraction(center_fraction, "center_fraction")
    gen = as_numpy_generator(rng)
    centre = _fastmri_centre(width, center_fraction, acceleration)
    n_low = int(centre.sum())
    prob = (width / acceleration - n_low) / (width - n_low) if n_low < width else 0.0
    columns = (gen.uniform(size=width) < prob) | centre
    return _finish(_columns_to_mask(columns, height))


def equispaced_column_mask(
    rng: RngLike,
    shape: Sequence[int],
    *,
    center_fraction: float,
    acceleration: float,
) -> tuple[np.ndarray, float]:
    """fastMRI ``EquiSpacedMaskFunc``: fully sampled centre OR every ``acceleration``-th column.

    This is the plain ``EquiSpacedMaskFunc`` (exact spacing, GRAPPA style), not
    ``EquispacedMaskFractionFunc`` (which stretches the spacing to compensate for the centre).
    The centre is fastMRI's (see :func:`random_column_mask`); the other columns are
    ``offset, offset + acceleration, ...`` with ``offset`` drawn uniformly from
    ``[0, acceleration)``. Because the centre is added on top, the achieved acceleration is
    *lower* than the request (by about ``n_low`` extra columns), exactly as in fastMRI.

    Args:
      rng: Generator, int seed or jax key (see :func:`as_numpy_generator`).
      shape: ``(H, W)`` of the k-space; columns are drawn along ``W``.
      center_fraction: fraction of columns in the fully sampled centre, in ``[0, 1]``.
      acceleration: the integer column spacing ``>= 1`` (``4`` and ``4.0`` are accepted).

    Returns:
      ``(mask, acceleration)``: ``float32`` ``(H, W)`` column mask and achieved acceleration.

    Raises:
      ValueError: bad ``shape``, non-integer or ``< 1`` ``acceleration``, ``center_fraction``
        outside ``[0, 1]``, or a centre wider than ``W / acceleration`` columns.
    """
    height, width = check_shape_2d(shape, "shape")
    acceleration = _check_acceleration(acceleration)
    if acceleration != int(acceleration):
        raise ValueError(
            f"acceleration must be an integer spacing for an equispaced mask, got {acceleration}"
        )
    spacing = int(acceleration)
    center_fraction = _check_fraction(center_fraction, "center_fraction")
    gen = as_numpy_generator(rng)
    centre = _fastmri_centre(width, center_fraction, acceleration)
    offset = int(gen.integers(0, spacing))
    columns = centre.copy()
    columns[offset::spacing] = True
    return _finish(_columns_to_mask(columns, height))


def equispaced_fraction_column_mask(
    rng: RngLike,
    shape: Sequence[int],
    *,
    center_fraction: float,
    acceleration: float,
) -> tuple[np.ndarray, float]:
    """fastMRI ``EquispacedMaskFractionFunc``: the centre plus equispaced columns, ``W / a`` in all.

    Unlike :func:`equispaced_column_mask` the spacing of the outer columns is stretched so that,
    centre included, about ``W / acceleration`` columns are kept (a true ``acceleration``-fold
    mask). With ``n_low`` centre columns (fastMRI's centre, see :func:`random_column_mask`) the
    outer spacing ``s`` solves ``n_low + (W - n_low) / s = W / a``, i.e.
    ``s = a (W - n_low) / (W - a n_low)``; the outer columns are ``round(offset + k s)`` for
    ``offset + k s < W - 1``, with ``offset`` drawn uniformly from ``[0, round(s))``. Some outer
    columns fall inside the centre, so the achieved acceleration is close to, not exactly, ``a``.

    Args:
      rng: Generator, int seed or jax key (see :func:`as_numpy_generator`).
      shape: ``(H, W)`` of the k-space; columns are drawn along ``W``.
      center_fraction: fraction of columns in the fully sampled centre, in ``[0, 1]``.
      acceleration: requested acceleration ``>= 1`` (may be fractional).

    Returns:
      ``(mask, acceleration)``: ``float32`` ``(H, W)`` column mask and achieved acceleration.

    Raises:
      ValueError: bad ``shape``, ``acceleration < 1``, ``center_fraction`` outside ``[0, 1]``, or
        a centre that leaves no budget for outer columns (``n_low >= W / acceleration``).
    """
    height, width = check_shape_2d(shape, "shape")
    acceleration = _check_acceleration(acceleration)
    center_fraction = _check_fraction(center_fraction, "center_fraction")
    gen = as_numpy_generator(rng)
    centre = _fastmri_centre(width, center_fraction, acceleration)
    n_low = int(centre.sum())
    if width - acceleration * n_low <= 0:
        raise ValueError(
            f"center_fraction={center_fraction} keeps {n_low} of {width} columns, the whole "
            f"budget of acceleration={acceleration}: lower center_fraction or acceleration"
        )
    spacing = acceleration * (width - n_low) / (width - acceleration * n_low)
    offset = int(gen.integers(0, max(1, round(spacing))))
    columns = centre.copy()
    columns[np.round(np.arange(offset, width - 1, spacing)).astype(int)] = True
    return _finish(_columns_to_mask(columns, height))


# --------------------------------------------------------------------------------------------
# DC-CNN 1-D Gaussian Cartesian mask
# --------------------------------------------------------------------------------------------


def gaussian_cartesian_mask(
    rng: RngLike,
    shape: Sequence[int],
    *,
    acceleration: float,
    center_lines: int = 10,
) -> tuple[np.ndarray, float]:
    """1-D Gaussian variable-density Cartesian column mask (DC-CNN ``cartesian_mask``).

    Column ``j`` of ``W`` gets weight ``exp(-(j - W/2)^2 / (2 sigma^2)) + lambda / W`` with
    ``sigma = W / 10`` and ``lambda = W / (2 acceleration)`` (a Gaussian around the centre on a
    uniform floor). ``center_lines`` columns around DC are always kept, and the remaining
    ``int(W / acceleration) - center_lines`` columns are drawn without replacement with
    probability proportional to that weight (zero on the kept centre). The mask therefore holds
    exactly ``int(W / acceleration)`` columns and achieves ``W / int(W / acceleration)``.

    Deviation from DC-CNN: it samples along the row axis of its own layout; here columns run
    along ``W`` (jaxmri's phase-encode axis), and the mask is centred (DC at ``W // 2``), which is
    DC-CNN's ``centred=True``. For odd ``center_lines`` the kept block is centred on DC
    (DC-CNN keeps ``2 * (center_lines // 2)`` lines but still counts ``center_lines``).

    Args:
      rng: Generator, int seed or jax key (see :func:`as_numpy_generator`).
      shape: ``(H, W)`` of the k-space.
      acceleration: requested acceleration ``>= 1`` (may be fractional: 8 keeps 12.5 %).
      center_lines: number of central columns always kept, ``0 <= center_lines <= W/acc``
        (DC-CNN's ``sample_n``, default 10).

    Returns:
      ``(mask, acceleration)``: ``float32`` ``(H, W)`` column mask and achieved acceleration.

    Raises:
      ValueError: bad ``shape``, ``acceleration < 1`` or so large that no column is kept, or
        ``center_lines`` negative or more than ``int(W / acceleration)``.
    """
    height, width = check_shape_2d(shape, "shape")
    acceleration = _check_acceleration(acceleration)
    n_lines = int(width / acceleration)
    if n_lines < 1:
        raise ValueError(
            f"acceleration={acceleration} keeps int({width} / {acceleration}) = 0 columns "
            f"of W={width}"
        )
    if not (isinstance(center_lines, (int, np.integer)) and 0 <= center_lines <= n_lines):
        raise ValueError(
            f"center_lines must be an int in [0, int(W / acceleration)] = [0, {n_lines}] for "
            f"W={width} and acceleration={acceleration}, got {center_lines!r}"
        )
    gen = as_numpy_generator(rng)
    j = np.arange(width, dtype=np.float64)
    sigma = width / 10.0
    weight = np.exp(-((j - width / 2) ** 2) / (2 * sigma**2)) + (width / (2 * acceleration)) / width
    centre = _centre_slice(width, int(center_lines))
    weight[centre] = 0.0
    columns = np.zeros(width, dtype=bool)
    columns[centre] = True
    n_random = n_lines - int(center_lines)
    if n_random > 0:
        # Weighted draws without replacement, one after another, each with probability
        # proportional to the weight of the columns left (DC-CNN: np.random.choice(p=...,
        # replace=False)). The n smallest of independent exponentials E_j / w_j are such a draw
        # (the first to arrive in a race with rates w_j; zero weight never arrives): one vector
        # of draws instead of numpy's loop of redraws, 3.5 instead of 31 us at W = 48.
        with np.errstate(divide="ignore", invalid="ignore"):  # centre: inf or nan, sort last
            arrival = gen.standard_exponential(width) / weight
        columns[np.argpartition(arrival, n_random - 1)[:n_random]] = True
    return _finish(_columns_to_mask(columns, height))


# --------------------------------------------------------------------------------------------
# 2-D variable-density random points
# --------------------------------------------------------------------------------------------


def _normalised_radius(height: int, width: int) -> np.ndarray:
    """Distance from DC on a grid scaled so that the edge midpoints are at radius 1."""
    ky = (np.arange(height) - height // 2) / max(height / 2, 1)
    kx = (np.arange(width) - width // 2) / max(width / 2, 1)
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def variable_density_random_mask(
    rng: RngLike,
    shape: Sequence[int],
    *,
    acceleration: float,
    center_fraction: float = 0.08,
    decay: float = 2.0,
) -> tuple[np.ndarray, float]:
    """2-D i.i.d. variable-density random mask with a fully sampled centre (paper 002 "2D random").

    A centred block of ``round(H * cf) x round(W * cf)`` points is always sampled. Every other
    point is sampled independently with probability ``min(1, s * (1 - r / sqrt(2))^decay)``,
    where ``r`` is the distance from DC with the edge midpoints at ``r = 1`` (corners at
    ``sqrt(2)``), and the scale ``s`` is found by bisection so that the *expected* number of
    samples is exactly ``H * W / acceleration``. One draw deviates from it by a binomial
    fluctuation (about 3 % for 64 x 64 at 4x).

    Args:
      rng: Generator, int seed or jax key (see :func:`as_numpy_generator`).
      shape: ``(H, W)`` of the k-space.
      acceleration: requested acceleration ``>= 1`` (4 gives the 25 % of paper 002).
      center_fraction: side of the fully sampled centre as a fraction of ``H`` and ``W``.
      decay: power of the polynomial density fall-off (0 gives uniform density), ``>= 0``.

    Returns:
      ``(mask, acceleration)``: ``float32`` ``(H, W)`` mask and achieved acceleration.

    Raises:
      ValueError: bad ``shape``, ``acceleration < 1``, ``center_fraction`` outside ``[0, 1]``,
        negative ``decay``, or a centre block that already holds more than
        ``H * W / acceleration`` points.
    """
    height, width = check_shape_2d(shape, "shape")
    acceleration = _check_acceleration(acceleration)
    center_fraction = _check_fraction(center_fraction, "center_fraction")
    check_positive(decay, "decay", allow_zero=True)
    gen = as_numpy_generator(rng)

    target = height * width / acceleration
    centre = np.zeros((height, width), dtype=bool)
    rows = _centre_slice(height, round(height * center_fraction))
    cols = _centre_slice(width, round(width * center_fraction))
    centre[rows, cols] = True
    n_centre = int(centre.sum())
    if n_centre > target:
        raise ValueError(
            f"center_fraction={center_fraction} fully samples {n_centre} points, more than the "
            f"{target:.1f} allowed by acceleration={acceleration} on shape {(height, width)}"
        )
    # The sqrt(2) normalisation keeps the density positive up to the corners, so every
    # acceleration >= 1 is reachable.
    density = (1.0 - _normalised_radius(height, width) / (math.sqrt(2) + 1e-6)) ** decay
    density = np.where(centre, 0.0, density)
    outside_target = target - n_centre

    def expected(scale: float) -> float:
        return float(np.minimum(1.0, scale * density).sum())

    # expected() is monotone in the scale: bracket by doubling, then bisect to full precision.
    low, high = 0.0, 1.0
    while expected(high) < outside_target:
        if high > 1e300:  # a density that underflows to zero (huge ``decay``) far out
            raise ValueError(
                f"decay={decay} leaves too few points with a non-zero probability to reach "
                f"acceleration={acceleration} on shape {(height, width)}"
            )
        low, high = high, 2.0 * high
    for _ in range(100):
        mid = 0.5 * (low + high)
        if expected(mid) < outside_target:
            low = mid
        else:
            high = mid
    prob = np.minimum(1.0, high * density)
    mask = centre | (gen.uniform(size=(height, width)) < prob)
    return _finish(mask)


# --------------------------------------------------------------------------------------------
# Pseudo-radial
# --------------------------------------------------------------------------------------------


def pseudo_radial_lines(
    shape: Sequence[int], *, num_lines: int, theta0: float = 0.0
) -> np.ndarray:
    """Cartesian pseudo-radial mask made of ``num_lines`` lines through the DC sample.

    Pixel ``(i, j)`` with integer offsets ``(ky, kx) = (i - H//2, j - W//2)`` from DC is sampled
    when its distance to one of the lines at angles ``theta_m = theta0 + m * pi / num_lines``
    (``m = 0 .. num_lines - 1``, measured from the ``+kx`` axis towards ``+ky``) is ``< 1/2``.
    The mask is point-symmetric about DC wherever the mirrored pixel lies on the grid.

    Args:
      shape: ``(H, W)`` of the k-space.
      num_lines: number of lines ``M >= 1``.
      theta0: angle of the first line in radians.

    Returns:
      ``float32`` ``(H, W)`` mask of 0 and 1.

    Raises:
      ValueError: bad ``shape`` or ``num_lines < 1``.
    """
    height, width = check_shape_2d(shape, "shape")
    if not (isinstance(num_lines, (int, np.integer)) and num_lines >= 1):
        raise ValueError(f"num_lines must be an int >= 1, got {num_lines!r}")
    radius, phi = _canonical_polar(height, width)
    return _radial_from_polar(radius, phi, int(num_lines), float(theta0)).astype(np.float32)


def _canonical_polar(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Polar coordinates of every pixel, with the angle folded into ``[0, pi)``.

    A line through the origin is invariant under ``(ky, kx) -> (-ky, -kx)``; folding each pixel
    onto its representative in the upper half-plane *before* any floating-point work makes the
    mask exactly point-symmetric and reduces the distance to ``r * sin(angle to nearest line)``.
    """
    ky = (np.arange(height) - height // 2)[:, None] * np.ones((1, width))
    kx = (np.arange(width) - width // 2)[None, :] * np.ones((height, 1))
    flip = (ky < 0) | ((ky == 0) & (kx < 0))
    ky = np.where(flip, -ky, ky)
    kx = np.where(flip, -kx, kx)
    phi = np.arctan2(ky, kx)  # in [0, pi]
    return np.hypot(ky, kx), phi


def _radial_from_polar(
    radius: np.ndarray, phi: np.ndarray, num_lines: int, theta0: float
) -> np.ndarray:
    spacing = np.pi / num_lines
    delta = np.mod(phi - theta0, spacing)
    angle = np.minimum(delta, spacing - delta)  # angle to the nearest line, <= pi / 2
    return radius * np.sin(angle) < 0.5


def pseudo_radial_mask(
    rng: RngLike | None,
    shape: Sequence[int],
    *,
    sampling_rate: float,
) -> tuple[np.ndarray, float]:
    """Pseudo-radial mask with the line count chosen to reach ``sampling_rate`` (paper 002).

    Builds :func:`pseudo_radial_lines` with the number of lines ``M`` whose sampled fraction is
    closest to ``sampling_rate``: a bisection finds a count ``M0`` where the rate crosses the
    request, then every ``M`` in ``[0.8 M0, 1.25 M0 + 2]`` is tried (the fraction grows with
    ``M`` only up to lattice dips of about a percent, so the best count lies in that window).
    The grid quantises the rate: on 128 x 128 one line adds about 0.8 % of the points, so the
    achieved rate is within about 0.5 % (absolute) of the request. The first angle is
    ``theta0 = u * pi / M`` with ``u`` uniform from ``rng`` (``rng=None``: ``theta0 = 0``, lines
    along the axes).

    Args:
      rng: Generator, int seed, jax key, or ``None`` for ``theta0 = 0``.
      shape: ``(H, W)`` of the k-space.
      sampling_rate: requested fraction of sampled points in ``(0, 1]`` (0.1 .. 0.4 in
        paper 002, i.e. 10x .. 2.5x).

    Returns:
      ``(mask, acceleration)``: ``float32`` ``(H, W)`` mask and achieved acceleration
      (``1 / achieved rate``).

    Raises:
      ValueError: bad ``shape`` or ``sampling_rate`` outside ``(0, 1]``.
    """
    height, width = check_shape_2d(shape, "shape")
    if not (isinstance(sampling_rate, (int, float, np.number)) and 0 < sampling_rate <= 1):
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    u = 0.0 if rng is None else float(as_numpy_generator(rng).uniform())
    radius, phi = _canonical_polar(height, width)

    def rate(num_lines: int) -> float:
        theta0 = u * np.pi / num_lines
        return float(_radial_from_polar(radius, phi, num_lines, theta0).mean())

    # With M > pi * r_max every pixel is within 1/2 of a line, so the rate reaches 1 there.
    low, high = 1, int(math.ceil(np.pi * radius.max())) + 1
    if rate(low) >= sampling_rate:
        high = low
    while high - low > 1:  # invariant: rate(low) < sampling_rate <= rate(high)
        mid = (low + high) // 2
        if rate(mid) >= sampling_rate:
            high = mid
        else:
            low = mid
    # The rate is not monotone in M (lattice dips of up to about a percent), so the
    # crossing found above is refined by scanning the line counts around it.
    window = range(max(1, int(0.8 * high)), int(1.25 * high) + 3)
    best = min(window, key=lambda m: (abs(rate(m) - sampling_rate), m))
    mask = _radial_from_polar(radius, phi, best, u * np.pi / best)
    return _finish(mask)


# --------------------------------------------------------------------------------------------
# Variable-density Poisson disc
# --------------------------------------------------------------------------------------------


def _greedy_disc_packing(
    candidates: np.ndarray, radius: np.ndarray, priority: np.ndarray
) -> np.ndarray:
    """Keep candidates greedily in ``priority`` order, rejecting any that conflicts with a kept one.

    Pixels ``p`` and ``q`` conflict when ``|p - q| < (R(p) + R(q)) / 2``. The result equals
    visiting the candidates one by one in increasing priority (random-order dart throwing on the
    grid), but is computed in parallel rounds: a candidate whose priority is lowest among its
    live conflicting neighbours is kept, and its neighbours are removed. Each round touches the
    whole grid once per neighbour offset, and the number of rounds grows only logarithmically.
    """
    height, width = candidates.shape
    reach = int(math.ceil(radius[candidates].max())) if candidates.any() else 0
    offsets = [
        (dy, dx)
        for dy in range(-reach, reach + 1)
        for dx in range(-reach, reach + 1)
        if 0 < dy * dy + dx * dx < reach * reach
    ]
    pad = reach
    radius_pad = np.pad(radius, pad, constant_values=0.0)
    # conflict[k] marks pixel p conflicting with p + offsets[k] (symmetric by construction).
    conflicts = []
    for dy, dx in offsets:
        shifted = radius_pad[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        conflicts.append(math.hypot(dy, dx) < 0.5 * (radius + shifted))
    alive = candidates.copy()
    kept = np.zeros_like(candidates)
    big = np.inf
    while alive.any():
        prio_pad = np.pad(np.where(alive, priority, big), pad, constant_values=big)
        lowest = np.ones_like(alive)
        for (dy, dx), conflict in zip(offsets, conflicts):
            neighbour = prio_pad[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
            lowest &= ~(conflict & (neighbour < priority))
        chosen = alive & lowest
        kept |= chosen
        alive &= ~chosen
        chosen_pad = np.pad(chosen, pad, constant_values=False)
        for (dy, dx), conflict in zip(offsets, conflicts):
            neighbour = chosen_pad[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
            alive &= ~(conflict & neighbour)
    return kept


# Largest disc radius (pixels) tried at the edge of k-space. 64 already means a few dozen points
# (around 30x and more); one packing at larger radii would take seconds, so such requests are
# rejected instead.
_MAX_POISSON_RADIUS = 64.0


def poisson_disc_mask(
    rng: RngLike,
    shape: Sequence[int],
    *,
    acceleration: float,
    calib_size: Sequence[int] = (24, 24),
    radius_ratio: float = 3.0,
    crop_corner: bool = True,
    tol: float = 0.02,
    max_iterations: int = 40,
) -> tuple[np.ndarray, float]:
    """2-D variable-density Poisson-disc mask with a fully sampled calibration block (paper 004).

    Outside the centred ``calib_size`` block, ``r`` is the distance from the block normalised to
    1 at the edge midpoints (as in SigPy's ``mri.poisson``), and the disc radius in pixels grows
    linearly with it, ``R(r) = scale * (1 + (radius_ratio - 1) * r)``. For a given ``scale`` the
    points form a maximal random packing on the grid: grid points are visited in one random
    order (drawn once from ``rng`` and kept for every ``scale``) and a point ``p`` is kept unless
    it lies closer than ``(R(p) + R(q)) / 2`` to an already kept point ``q``. ``scale`` is
    bracketed by doubling and then bisected until the achieved acceleration is within ``tol``
    (relative) of the request. With ``crop_corner`` the points with ``r >= 1`` are never sampled,
    as in SigPy.

    Differences from SigPy: SigPy bisects the slope of ``R = 1 + slope * r`` and draws continuous
    Bridson proposals. On the integer grid any ``R > 1`` already excludes the 4 nearest
    neighbours, so that family cannot produce accelerations between fully sampled and about 3x;
    scaling the whole radius profile instead lets the region with ``R <= 1`` (fully sampled)
    grow or shrink continuously, so low accelerations such as 2x are reachable too. Discs are
    isotropic in pixels, and ``tol`` is relative.

    Args:
      rng: Generator, int seed or jax key (see :func:`as_numpy_generator`).
      shape: ``(H, W)`` of the k-space.
      acceleration: requested acceleration ``>= 1`` (4 in paper 004).
      calib_size: ``(h, w)`` of the centred, fully sampled calibration block.
      radius_ratio: disc radius at ``r = 1`` over that next to the calibration block, ``>= 1``;
        the sampling density falls by about ``radius_ratio ** 2`` towards the edge.
      crop_corner: never sample the corners beyond ``r = 1``.
      tol: allowed relative deviation of the achieved acceleration, ``> 0``.
      max_iterations: number of packings tried before giving up.

    Returns:
      ``(mask, acceleration)``: ``float32`` ``(H, W)`` mask and achieved acceleration.

    Raises:
      ValueError: bad ``shape``, ``calib_size`` or ``radius_ratio``, ``acceleration < 1``, a
        calibration block holding more than ``H * W / acceleration`` points, or an acceleration
        outside what a Poisson-disc pattern can reach on this grid (below the fully sampled
        pattern, or needing discs larger than 64 pixels).
    """
    height, width = check_shape_2d(shape, "shape")
    acceleration = _check_acceleration(acceleration)
    if (
        len(calib_size) != 2
        or any(int(c) != c or c < 0 for c in calib_size)
        or calib_size[0] > height
        or calib_size[1] > width
    ):
        raise ValueError(
            f"calib_size must be two non-negative ints no larger than shape {(height, width)}, "
            f"got {tuple(calib_size)}"
        )
    if not radius_ratio >= 1:
        raise ValueError(f"radius_ratio must be >= 1, got {radius_ratio}")
    check_positive(tol, "tol")
    calib_h, calib_w = int(calib_size[0]), int(calib_size[1])
    target = height * width / acceleration
    calib = np.zeros((height, width), dtype=bool)
    calib[_centre_slice(height, calib_h), _centre_slice(width, calib_w)] = True
    if calib.sum() > target:
        raise ValueError(
            f"calib_size={(calib_h, calib_w)} fully samples {int(calib.sum())} points, more than "
            f"the {target:.1f} allowed by acceleration={acceleration} on shape {(height, width)}"
        )
    gen = as_numpy_generator(rng)

    r = _distance_outside_block(height, width, calib_h, calib_w)
    candidates = ~calib
    if crop_corner:
        candidates &= r < 1
    dense = _finish(candidates | calib)[1]
    if acceleration < dense * (1 - tol):
        raise ValueError(
            f"acceleration={acceleration} is below {dense:.3f}, the acceleration of the densest "
            f"Poisson-disc pattern on shape {(height, width)} with calib_size={(calib_h, calib_w)}"
            f" and crop_corner={crop_corner}"
        )
    priority = gen.permutation(height * width).reshape(height, width).astype(np.float64)
    profile = 1.0 + (radius_ratio - 1.0) * r

    # Bracket the scale by doubling from 1 before bisecting: the cost of one packing grows with
    # the square of the largest radius, so overshooting to a huge scale is what would be slow.
    max_scale = _MAX_POISSON_RADIUS / radius_ratio
    low, high, scale = 0.0, None, 1.0
    best: tuple[np.ndarray, float] | None = None
    for _ in range(max_iterations):
        kept = _greedy_disc_packing(candidates, scale * profile, priority)
        mask, achieved = _finish(kept | calib)
        if best is None or abs(achieved - acceleration) < abs(best[1] - acceleration):
            best = (mask, achieved)
        if abs(achieved - acceleration) <= tol * acceleration:
            return mask, achieved
        if achieved < acceleration:
            low = scale
            if high is None and 2 * scale > max_scale:
                break
            scale = 2 * scale if high is None else 0.5 * (low + high)
        else:
            high = scale
            scale = 0.5 * (low + high)
    raise ValueError(
        f"acceleration={acceleration} cannot be reached within tol={tol} by a Poisson-disc mask "
        f"on shape {(height, width)} with calib_size={(calib_h, calib_w)} and discs of at most "
        f"{_MAX_POISSON_RADIUS:g} pixels in {max_iterations} packings: the closest found gives "
        f"{best[1]:.2f}"
    )


def _distance_outside_block(height: int, width: int, block_h: int, block_w: int) -> np.ndarray:
    """Distance from a centred block, per axis normalised to 1 at the grid edge (SigPy's ``r``)."""
    dy = np.maximum(np.abs(np.arange(height) - height // 2) - block_h / 2, 0.0)
    dx = np.maximum(np.abs(np.arange(width) - width // 2) - block_w / 2, 0.0)
    dy = dy / max(dy.max(), 1.0)
    dx = dx / max(dx.max(), 1.0)
    return np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
