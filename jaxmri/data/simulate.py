"""Simulated acquisition on the host: from slices to (measured k-space, zero-filled, target).

Every function returns an *acquisition dict* of numpy arrays (``N`` slices, ``C`` coils):

=================  ==================  ==========  ============================================
key                shape               dtype       meaning
=================  ==================  ==========  ============================================
``target``         ``(N, H, W)``       complex64   noiseless complex image ``x``
``kspace``         ``(N, C, H, W)``    complex64   measured k-space ``M (F S x + n)``, 0 where
                                                   the mask is 0
``mask``           ``(N, H, W)``       float32     0/1 sampling mask ``M``
``maps``           ``(N, C, H, W)``    complex64   coil sensitivities, ``sum_c |S_c|^2 = 1``
``zero_filled``    ``(N, H, W)``       complex64   SENSE adjoint ``sum_c conj(S_c) ifft2c(y_c)``
``acceleration``   ``(N,)``            float32     achieved acceleration of each mask
``noise_std``      ``(N,)``            float32     ``sigma`` of the added noise (0: none)
``slice_index``    ``(N,)``            int64       the per-slice seed index used
=================  ==================  ==========  ============================================

Determinism: slice ``i`` draws all its randomness from
``numpy.random.SeedSequence(seed, spawn_key=(0, slice_index[i]))`` (its three children seed the
phase, the noise and the mask, in that order), so a slice's sample depends only on
``(seed, slice_index[i])`` and never on which other slices share the batch. A mask shared by all
slices (``fixed_mask=True``) is drawn from ``SeedSequence(seed, spawn_key=(1,))``.

Noise: circularly-symmetric complex Gaussian noise ``n`` (real and imaginary parts i.i.d.
``N(0, sigma^2 / 2)``, so ``E|n|^2 = sigma^2``) is added to every k-space sample of every coil
before masking, with

    SNR_dB = 10 log10( mean_{c, k} |(F S x)_{c,k}|^2 / sigma^2 ),

the mean over all coils and all (fully sampled) k-space positions of one slice. Because ``F`` is
unitary this equals the mean of ``|S_c x|^2`` over coils and pixels. ``snr_db=None`` adds none.

Phase: ``x = |image| exp(i phi)`` with ``phi = max_phase * f / max|f|``, ``f`` the real part of
the inverse FFT of i.i.d. complex Gaussian coefficients on the k-space disc of radius
``phase_cutoff`` (in cycles per field of view): a smooth random field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from jaxmri._checks import check_complex, check_finite, check_ndim, check_real
from jaxmri.data._host_fft import host_fft2c, host_ifft2c, host_rss, host_sense_adjoint
from jaxmri.physics.sense import simulate_coil_maps

__all__ = [
    "slice_seed_sequences",
    "smooth_phase",
    "simulate_acquisition",
    "acquisition_from_kspace",
    "acquire_slices",
]

MaskFn = Callable[[np.random.Generator, tuple[int, int]], tuple[np.ndarray, float]]


def slice_seed_sequences(seed: int, slice_index: int) -> tuple[np.random.SeedSequence, ...]:
    """The ``(phase, noise, mask)`` seed sequences of one slice (see the module docstring)."""
    return tuple(np.random.SeedSequence(seed, spawn_key=(0, int(slice_index))).spawn(3))


def smooth_phase(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    max_phase: float = np.pi,
    phase_cutoff: float = 2.0,
) -> np.ndarray:
    """A smooth random phase map ``(H, W)`` ``float32`` in ``[-max_phase, max_phase]``."""
    coef = _phase_coefficients(rng, shape, phase_cutoff)
    return _phases_from_coefficients(coef[None], max_phase)[0]


def _phase_coefficients(rng: np.random.Generator, shape: tuple[int, int],
                        phase_cutoff: float) -> np.ndarray:
    # Centred k-space coefficients (H, W) complex128, zero outside the cut-off disc. The draws
    # (real part, then imaginary part, of the whole grid) define the phase of a seed.
    height, width = shape
    ky = np.arange(height) - height // 2
    kx = np.arange(width) - width // 2
    disc = (ky[:, None] ** 2 + kx[None, :] ** 2) <= phase_cutoff**2
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * disc


def _phases_from_coefficients(coef: np.ndarray, max_phase: float) -> np.ndarray:
    # (N, H, W) coefficients -> (N, H, W) float32 phases. One batched inverse FFT: the same
    # 1-D transforms as slice by slice (bit for bit), without numpy's per-call overhead, which
    # dominated at 48 px.
    field = np.real(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(coef, axes=(-2, -1))),
                                    axes=(-2, -1)))
    peak = np.max(np.abs(field), axis=(-2, -1), keepdims=True)
    safe = np.where(peak == 0, 1.0, peak)
    return np.where(peak == 0, 0.0, max_phase * field / safe).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _coil_maps(shape: tuple[int, int], num_coils: int) -> np.ndarray:
    # Deterministic in (shape, num_coils) and needed by every batch (0.3 ms at 48 px, 4 % of a
    # RecNet batch): computed once, read-only so that no caller can change the cached copy.
    maps = simulate_coil_maps(shape, num_coils)
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


def _masks(mask_fn: MaskFn, mask_seeds, shape, fixed_mask: bool, seed: int):
    # ``mask_seeds``: each slice's mask SeedSequence (the third child of its slice sequence).
    if fixed_mask:
        mask, acc = mask_fn(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))),
                            shape)
        masks = [np.asarray(mask, np.float32)] * len(mask_seeds)
        accs = [acc] * len(mask_seeds)
    else:
        pairs = [mask_fn(np.random.default_rng(ss), shape) for ss in mask_seeds]
        masks = [np.asarray(m, np.float32) for m, _ in pairs]
        accs = [a for _, a in pairs]
    masks = np.stack(masks)
    if masks.shape[1:] != tuple(shape):
        raise ValueError(f"mask_fn must return a mask of shape {tuple(shape)}, "
                         f"got {masks.shape[1:]}")
    return masks, np.asarray(accs, np.float32)


def _finish(target, kspace_full, maps, masks, accs, noise_std, ids) -> dict[str, np.ndarray]:
    kspace = (kspace_full * masks[:, None]).astype(np.complex64)
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

    Returns:
      The acquisition dict described in the module docstring.
    """
    images = _check_batch(images, "images", 3)
    check_real(images, "images")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    n, height, width = images.shape
    ids = _slice_ids(slice_index, n)
    maps = (_coil_maps((height, width), int(num_coils))
            if isinstance(num_coils, (int, np.integer)) and num_coils >= 1
            else simulate_coil_maps((height, width), num_coils))  # validates, names the problem
    coefs, noises, mask_seeds = [], [], []
    for i in ids:
        phase_ss, noise_ss, mask_ss = slice_seed_sequences(seed, i)
        coefs.append(_phase_coefficients(np.random.default_rng(phase_ss), (height, width),
                                         phase_cutoff))
        noise_rng = np.random.default_rng(noise_ss)
        shape = (num_coils, height, width)
        noises.append(noise_rng.standard_normal(shape) + 1j * noise_rng.standard_normal(shape))
        mask_seeds.append(mask_ss)
    phases = _phases_from_coefficients(np.stack(coefs), max_phase)
    target = (np.abs(images) * np.exp(1j * phases)).astype(np.complex64)
    coil_images = maps[None] * target[:, None]
    kspace_full = host_fft2c(coil_images)
    if snr_db is None:
        noise_std = np.zeros(n)
    else:
        signal_power = np.mean(np.abs(coil_images) ** 2, axis=(1, 2, 3))
        noise_std = np.sqrt(signal_power / 10.0 ** (snr_db / 10.0))
        kspace_full = kspace_full + (noise_std[:, None, None, None] / np.sqrt(2.0)) * np.stack(
            noises
        )
    masks, accs = _masks(mask_fn, mask_seeds, (height, width), fixed_mask, seed)
    return _finish(target, kspace_full, np.broadcast_to(maps, (n, *maps.shape)), masks, accs,
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
    mask_seeds = [slice_seed_sequences(seed, i)[2] for i in ids]
    masks, accs = _masks(mask_fn, mask_seeds, (height, width), fixed_mask, seed)
    return _finish(target, kspace, maps, masks, accs, np.zeros(n), ids)


def acquire_slices(
    slices: dict[str, np.ndarray],
    indices: np.ndarray,
    *,
    mask_fn: MaskFn,
    seed: int,
    num_coils: int = 8,
    snr_db: float | None = 30.0,
    fixed_mask: bool = False,
) -> dict[str, np.ndarray]:
    """One batch: the acquisition of ``slices`` at ``indices`` (the indices seed the slices).

    Uses :func:`acquisition_from_kspace` when the slices dict has measured ``kspace``
    (fastMRI), else :func:`simulate_acquisition` on ``slices["image"]``. ``labels``, if present,
    are passed through as ``labels`` ``(B, H, W)`` ``uint8``.
    """
    indices = np.asarray(indices)
    if "kspace" in slices:
        out = acquisition_from_kspace(slices["kspace"][indices], mask_fn=mask_fn, seed=seed,
                                      slice_index=indices, fixed_mask=fixed_mask)
    else:
        out = simulate_acquisition(slices["image"][indices], mask_fn=mask_fn, seed=seed,
                                   slice_index=indices, num_coils=num_coils, snr_db=snr_db,
                                   fixed_mask=fixed_mask)
    if "labels" in slices:
        out["labels"] = slices["labels"][indices]
    return out
