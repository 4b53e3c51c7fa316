"""Simulated acquisition on the host: from slices to (measured k-space, zero-filled, target).

Every function returns an *acquisition dict* of numpy arrays (``N`` slices, ``C`` coils):

=================  ==================  ==========  ============================================
key                shape               dtype       meaning
=================  ==================  ==========  ============================================
``target``         ``(N, H, W)``       complex64   noiseless complex image ``x`` (with
                                                   ``noisy_reference``: the fully sampled
                                                   scan ``x + S^H F^-1 n``, see below)
``kspace``         ``(N, C, H, W)``    complex64   measured k-space ``M (F S x + n)``, 0 where
                                                   the mask is 0
``mask``           ``(N, H, W)``       float32     0/1 sampling mask ``M``
``maps``           ``(N, C, H, W)``    complex64   coil sensitivities, ``sum_c |S_c|^2 = 1``
``zero_filled``    ``(N, H, W)``       complex64   SENSE adjoint ``sum_c conj(S_c) ifft2c(y_c)``
``acceleration``   ``(N,)``            float32     achieved acceleration of each mask
``noise_std``      ``(N,)``            float32     ``sigma`` of the added noise (0: none)
``slice_index``    ``(N,)``            int64       the per-slice seed index used
=================  ==================  ==========  ============================================

Determinism: slice ``i`` draws all its randomness from one generator, :func:`slice_rng`
``(seed, slice_index[i])``, in a fixed order: its mask, then its phase, then its noise. So a
slice's sample depends only on ``(seed, slice_index[i])``, never on which other slices share the
batch, and :func:`acquisition_from_kspace` draws a slice the same mask as
:func:`simulate_acquisition`. A mask shared by all slices (``fixed_mask=True``) is drawn from
``default_rng(SeedSequence(seed, spawn_key=(1,)))`` instead, and each slice's own stream then
starts with its phase.

Noise: circularly-symmetric complex Gaussian noise ``n`` (real and imaginary parts i.i.d.
``N(0, sigma^2 / 2)``, so ``E|n|^2 = sigma^2``) on every k-space sample of every coil, with

    SNR_dB = 10 log10( mean_{c, k} |(F S x)_{c,k}|^2 / sigma^2 ),

the mean over all coils and all (fully sampled) k-space positions of one slice. Because ``F`` is
unitary and ``sum_c |S_c|^2 = 1``, this equals ``mean |x|^2 / C`` over the pixels. Only the
samples the mask keeps are drawn (the mask multiplies the others by 0, so ``M (F S x + n)`` has
the same distribution, from a quarter of the draws for a 4x mask): the real parts at the kept
samples of the ``(C, H, W)`` array in row-major order, then the imaginary parts likewise.
``snr_db=None`` adds none.

Reference: by default the target is the noiseless image ``x``. ``noisy_reference=True`` makes it
what fastMRI calls the ground truth, the coil combination of the *fully sampled noisy* scan,
``sum_c conj(S_c) ifft2c(F S_c x + n_c) = x + S^H F^-1 n`` (per-pixel noise variance
``sigma^2``), and the measured k-space is that scan's masked samples ``M (F S x + n)``: the noise
on the measured lines is the reference's own, as in retrospectively undersampled data. Noise is
then drawn at every sample (real parts of the whole ``(C, H, W)`` array, then imaginary parts).

Phase: ``x = |image| exp(i phi)`` with ``phi = max_phase * f / max|f|``, ``f`` the real part of
the inverse FFT of i.i.d. complex Gaussian coefficients on the k-space disc of radius
``phase_cutoff`` (in cycles per field of view): a smooth random field. Only the ``K`` disc
coefficients are drawn (their real parts in row-major order of the centred grid, then their
imaginary parts), and ``f`` is their sum of ``K`` plane waves (:func:`_phase_basis`), which is the
inverse FFT of the grid that is zero off the disc.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from jaxmri._checks import check_complex, check_finite, check_ndim, check_real
from jaxmri.data._host_fft import host_fft2c, host_ifft2c, host_rss, host_sense_adjoint
from jaxmri.physics.sense import simulate_coil_maps

__all__ = [
    "slice_rng",
    "smooth_phase",
    "simulate_acquisition",
    "acquisition_from_kspace",
    "acquire_slices",
]

MaskFn = Callable[[np.random.Generator, tuple[int, int]], tuple[np.ndarray, float]]


def slice_rng(seed: int, slice_index: int) -> np.random.Generator:
    """The generator of one slice (see the module docstring): draws its mask, phase and noise."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, int(slice_index))))


def smooth_phase(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    max_phase: float = np.pi,
    phase_cutoff: float = 2.0,
) -> np.ndarray:
    """A smooth random phase map ``(H, W)`` ``float32`` in ``[-max_phase, max_phase]``.

    Draws the ``K`` coefficients on the cut-off disc from ``rng`` as the module docstring says;
    the map's spectrum is zero outside the disc.
    """
    coef = _phase_coefficients(rng, tuple(shape), phase_cutoff)
    return _phases_from_coefficients(coef[None], tuple(shape), phase_cutoff, max_phase)[0]


@functools.lru_cache(maxsize=16)
def _phase_basis(shape: tuple[int, int], phase_cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    # The real and imaginary parts, each (K, H * W) float64, of the K plane waves
    # exp(2 pi i (ky (m - H//2) / H + kx (p - W//2) / W)) whose frequencies (ky, kx) lie on the
    # disc, in row-major order of the centred grid. Pixel (m, p) of the centred inverse FFT
    # fftshift(ifft2(ifftshift(c))) of a grid c that is zero off the disc is
    # sum_k c_k wave_k(m, p) / (H W); the 1 / (H W) drops out when the field is normalised.
    height, width = shape
    ky = np.arange(height) - height // 2
    kx = np.arange(width) - width // 2
    on_disc = (ky[:, None] ** 2 + kx[None, :] ** 2) <= phase_cutoff**2
    freq_y, freq_x = np.nonzero(on_disc)
    angle = 2 * np.pi * (ky[freq_y, None, None] * ky[None, :, None] / height
                         + kx[freq_x, None, None] * kx[None, None, :] / width)
    angle = angle.reshape(len(freq_y), height * width)
    basis = (np.cos(angle), np.sin(angle))
    for part in basis:
        part.setflags(write=False)
    return basis


def _phase_coefficients(rng: np.random.Generator, shape: tuple[int, int],
                        phase_cutoff: float) -> np.ndarray:
    # (K,) complex128: the disc's coefficients, real parts drawn first, then imaginary parts.
    num_coefficients = _phase_basis(shape, float(phase_cutoff))[0].shape[0]
    real, imag = rng.standard_normal((2, num_coefficients))
    return real + 1j * imag


def _phases_from_coefficients(coef: np.ndarray, shape: tuple[int, int], phase_cutoff: float,
                              max_phase: float) -> np.ndarray:
    # (N, K) disc coefficients -> (N, H, W) float32 phases: the real part of the plane-wave sum
    # as two small real matmuls (8 slices at 48 px: 0.05 ms, a tenth of a batched 48 px FFT).
    cos, sin = _phase_basis(shape, float(phase_cutoff))
    field = (coef.real @ cos - coef.imag @ sin).reshape(len(coef), *shape)
    peak = np.max(np.abs(field), axis=(-2, -1), keepdims=True)
    safe = np.where(peak == 0, 1.0, peak)
    return np.where(peak == 0, 0.0, max_phase * field / safe).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _coil_maps(shape: tuple[int, int], num_coils: int, radius: float = 1.5) -> np.ndarray:
    # Deterministic in (shape, num_coils) and needed by every batch (0.3 ms at 48 px, a sixth
    # of a RecNet batch of 8): computed once, read-only so that no caller can change the
    # cached copy.
    maps = simulate_coil_maps(shape, num_coils, radius=radius)
    maps.setflags(write=False)
    return maps


def _check_batch(x: np.ndarray, name: str, ndim: int) -> np.ndarray:
    x = np.asarray(x)
    check_ndim(x, name, ndim=ndim)
    check_finite(x, name)
    return x


def _slice_ids(slice_index, n: int) -> np.ndarray:
    ids = np.arange(n) if slice_index is None else np.asarray(slice_index)
    if ids.shape != (n,) or ids.dtype.kind not in "iu" or np.any(ids < 0):
        raise ValueError(
            f"slice_index must be {n} non-negative ints (one per slice), got {np.shape(ids)} "
            f"of dtype {ids.dtype}"
        )
    return ids.astype(np.int64)


def _masks(mask_fn: MaskFn, rngs: list[np.random.Generator], shape, fixed_mask: bool,
           seed: int):
    # ``rngs``: each slice's generator (:func:`slice_rng`); a fresh mask is its first draw.
    if fixed_mask:
        mask, acc = mask_fn(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))),
                            shape)
        masks = [np.asarray(mask, np.float32)] * len(rngs)
        accs = [acc] * len(rngs)
    else:
        pairs = [mask_fn(rng, shape) for rng in rngs]
        masks = [np.asarray(m, np.float32) for m, _ in pairs]
        accs = [a for _, a in pairs]
    masks = np.stack(masks)
    if masks.shape[1:] != tuple(shape):
        raise ValueError(f"mask_fn must return a mask of shape {tuple(shape)}, "
                         f"got {masks.shape[1:]}")
    return masks, np.asarray(accs, np.float32)


def _add_masked_noise(kspace: np.ndarray, masks: np.ndarray, noise_std: np.ndarray,
                      rngs: list[np.random.Generator]) -> None:
    # In place on the masked (N, C, H, W) k-space: add M n where the mask keeps a sample. Slice
    # i's noise comes from its own generator, real parts then imaginary parts, each in the order
    # of its kept samples in the (C, H, W) array (boolean indexing is row-major, so the draws
    # line up with the positions of one indexing over the whole batch).
    weights = np.broadcast_to(masks[:, None], kspace.shape)
    kept = weights != 0
    per_slice = np.count_nonzero(kept.reshape(len(kspace), -1), axis=1)
    real, imag = np.concatenate([rng.standard_normal((2, count))
                                 for rng, count in zip(rngs, per_slice)], axis=1)
    sigma = np.repeat(noise_std / np.sqrt(2.0), per_slice)
    kspace[kept] += weights[kept] * sigma * (real + 1j * imag)


def _finish(target, kspace, maps, masks, accs, noise_std, ids) -> dict[str, np.ndarray]:
    kspace = np.asarray(kspace, np.complex64)
    zero_filled = host_sense_adjoint(kspace, maps)
    return {
        "target": np.asarray(target, np.complex64),
        "kspace": kspace,
        "mask": masks,
        "maps": np.array(maps, np.complex64),  # a real copy, not a broadcast view
        "zero_filled": zero_filled,
        "acceleration": accs,
        "noise_std": np.asarray(noise_std, np.float32),
        "slice_index": ids,
    }


def simulate_acquisition(
    images: np.ndarray,
    *,
    mask_fn: MaskFn,
    seed: int,
    slice_index: np.ndarray | None = None,
    num_coils: int = 8,
    snr_db: float | None = 30.0,
    fixed_mask: bool = False,
    max_phase: float = np.pi,
    phase_cutoff: float = 2.0,
    coil_radius: float = 1.5,
    noisy_reference: bool = False,
) -> dict[str, np.ndarray]:
    """Simulate a multi-coil (or single-coil) Cartesian acquisition of magnitude slices.

    Args:
      images: ``(N, H, W)`` real magnitude images (e.g. ``slices["image"]``), finite.
      mask_fn: ``mask_fn(rng, (H, W)) -> (mask, acceleration)``; bind a
        :mod:`jaxmri.physics.masks` function's options with ``functools.partial``.
      seed: non-negative int; see the module docstring for how slices derive their streams.
      slice_index: ``(N,)`` non-negative ints identifying the slices (e.g. their indices in the
        dataset); default ``arange(N)``.
      num_coils: number of simulated coils ``>= 1`` (1: single-coil, a unit-magnitude map).
      snr_db: k-space SNR in dB as defined in the module docstring; ``None``: no noise.
      fixed_mask: one mask for every slice instead of a fresh mask per slice.
      max_phase, phase_cutoff: the smooth random phase, see :func:`smooth_phase`.
      coil_radius: radius of the coil circle in units of the half field of view, see
        :func:`jaxmri.physics.sense.simulate_coil_maps` (1.5: coils well outside the image;
        1.0: coils on the inscribed circle, close to a head that fills the field of view).
      noisy_reference: the target is the fully sampled noisy scan (fastMRI's ground truth)
        instead of the noiseless image; see the module docstring.

    Returns:
      The acquisition dict described in the module docstring.
    """
    images = _check_batch(images, "images", 3)
    check_real(images, "images")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    n, height, width = images.shape
    ids = _slice_ids(slice_index, n)
    # A bad num_coils goes to simulate_coil_maps, which validates it and names the problem.
    maps = (_coil_maps((height, width), int(num_coils), float(coil_radius))
            if isinstance(num_coils, (int, np.integer)) and num_coils >= 1
            else simulate_coil_maps((height, width), num_coils, radius=coil_radius))
    rngs = [slice_rng(seed, i) for i in ids]
    masks, accs = _masks(mask_fn, rngs, (height, width), fixed_mask, seed)  # the first draws
    coefs = np.stack([_phase_coefficients(rng, (height, width), phase_cutoff) for rng in rngs])
    phases = _phases_from_coefficients(coefs, (height, width), phase_cutoff, max_phase)
    # |x| exp(i phi) from float32 cos and sin: numpy's complex exponential is 16x slower.
    magnitude = np.abs(images).astype(np.float32)
    target = np.empty((n, height, width), np.complex64)
    target.real = magnitude * np.cos(phases)
    target.imag = magnitude * np.sin(phases)
    # With a noisy reference the whole scan is acquired (and noisy) before the mask applies.
    acquired = np.ones_like(masks) if noisy_reference else masks
    kspace = host_fft2c(maps[None] * target[:, None]) * acquired[:, None]
    if snr_db is None:
        noise_std = np.zeros(n)
    else:
        signal_power = np.mean(np.square(magnitude, dtype=np.float64), axis=(1, 2)) / len(maps)
        noise_std = np.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
        _add_masked_noise(kspace, acquired, noise_std, rngs)
    if noisy_reference:
        target = host_sense_adjoint(kspace, maps)
        kspace = kspace * masks[:, None]
    return _finish(target, kspace, np.broadcast_to(maps, (n, *maps.shape)), masks, accs,
                   noise_std, ids)


def acquisition_from_kspace(
    kspace: np.ndarray,
    *,
    mask_fn: MaskFn,
    seed: int,
    slice_index: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    fixed_mask: bool = False,
) -> dict[str, np.ndarray]:
    """The acquisition dict from measured, fully sampled k-space (fastMRI): only the mask is new.

    No coils or noise are simulated (the data carry their own). Coil maps are, unless given,
    the RSS-normalised coil images ``S_c = x_c / rss(x)`` of the fully sampled data (an oracle
    estimate, like fastMRI's RSS target; pixels where ``rss(x) == 0`` get ``1 / sqrt(C)``), so
    ``sum_c |S_c|^2 = 1`` and the target ``sum_c conj(S_c) x_c`` is the RSS image (real,
    stored as complex64). Pass ``maps`` (e.g. from :func:`jaxmri.physics.sense.espirit_maps`)
    for a complex target with the maps' phase.

    Args:
      kspace: ``(N, C, H, W)`` complex centred k-space, fully sampled, finite.
      mask_fn, seed, slice_index, fixed_mask: as in :func:`simulate_acquisition` (the mask uses
        the same per-slice stream, so a slice gets the same mask from either function).
      maps: optional ``(N, C, H, W)`` or ``(C, H, W)`` coil sensitivities.

    Returns:
      The acquisition dict; ``noise_std`` is 0 (nothing was added).
    """
    kspace = _check_batch(kspace, "kspace", 4)
    check_complex(kspace, "kspace")
    n, num_coils, height, width = kspace.shape
    ids = _slice_ids(slice_index, n)
    coil_images = host_ifft2c(kspace.astype(np.complex64))
    if maps is None:
        combined = host_rss(coil_images, axis=1)[:, None]
        safe = np.where(combined > 0, combined, 1.0)
        maps = np.where(combined > 0, coil_images / safe, 1.0 / np.sqrt(num_coils))
    maps = np.broadcast_to(np.asarray(maps, np.complex64), kspace.shape)
    target = np.sum(np.conj(maps) * coil_images, axis=1)
    masks, accs = _masks(mask_fn, [slice_rng(seed, i) for i in ids], (height, width),
                         fixed_mask, seed)
    return _finish(target, kspace * masks[:, None], maps, masks, accs, np.zeros(n), ids)


def acquire_slices(
    slices: dict[str, np.ndarray],
    indices: np.ndarray,
    *,
    mask_fn: MaskFn,
    seed: int,
    num_coils: int = 8,
    snr_db: float | None = 30.0,
    fixed_mask: bool = False,
    coil_radius: float = 1.5,
    max_phase: float = np.pi,
    noisy_reference: bool = False,
) -> dict[str, np.ndarray]:
    """One batch: the acquisition of ``slices`` at ``indices`` (the indices seed the slices).

    Uses :func:`acquisition_from_kspace` when the slices dict has measured ``kspace``
    (fastMRI), else :func:`simulate_acquisition` on ``slices["image"]`` (``num_coils``,
    ``snr_db``, ``coil_radius``, ``max_phase`` and ``noisy_reference`` apply to that simulation
    only; ``max_phase=0`` simulates real-valued images; measured data are their own noisy
    reference). ``labels``, if present, are passed through as ``labels``
    ``(B, H, W)`` ``uint8``.
    """
    indices = np.asarray(indices)
    if "kspace" in slices:
        out = acquisition_from_kspace(slices["kspace"][indices], mask_fn=mask_fn, seed=seed,
                                      slice_index=indices, fixed_mask=fixed_mask)
    else:
        out = simulate_acquisition(slices["image"][indices], mask_fn=mask_fn, seed=seed,
                                   slice_index=indices, num_coils=num_coils, snr_db=snr_db,
                                   fixed_mask=fixed_mask, coil_radius=coil_radius,
                                   max_phase=max_phase, noisy_reference=noisy_reference)
    if "labels" in slices:
        out["labels"] = slices["labels"][indices]
    return out
