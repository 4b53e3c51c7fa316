"""Turn a 3-D volume into square 2-D training slices, and split them by slice position.

Everything here is host-side numpy/scipy. A *slices dict* is the common currency of
:mod:`jaxmri.data`; every reader returns one:

* ``image``: ``(N, S, S)`` ``float32`` magnitude in ``[0, 1]`` (``S`` = ``image_size``).
* ``labels``: ``(N, S, S)`` ``uint8`` segmentation labels; present only when the source has them.
* ``orientation``: ``(N,)`` ``int32``: 0 sagittal, 1 coronal, 2 axial (the slicing axis of the
  RAS-canonical volume), ``-1`` when unknown (fastMRI).
* ``position``: ``(N,)`` ``int32`` slice index along that axis in the source volume.
* ``volume``: ``(N,)`` ``int32`` index of the source volume (file) the slice came from.
* ``kspace``: ``(N, C, S, S)`` ``complex64`` measured, fully sampled k-space; fastMRI only.

Slicing rule (:func:`volume_to_slices`): the volume is min-max normalised to ``[0, 1]`` (per
volume), cropped to the bounding box of its foreground (``> foreground_threshold``) plus a
margin, and sliced along each requested axis. A 2-D slice is rotated by 90 degrees so that the
superior (or anterior) direction points up, zero-padded to a square *in millimetres* (the voxel
spacing is honoured, so anisotropic voxels are not stretched), and resized to ``(S, S)`` with
:func:`resize_2d` (linear interpolation after a Gaussian anti-aliasing filter; the same maths as
``skimage.transform.resize(..., order=1, mode="constant", anti_aliasing=True)``). Nearly empty
slices are skipped: a slice is kept when its foreground area is at least ``min_foreground``
times the largest foreground area along that axis.

Split rule (:func:`split_assignment`): within one orientation, the kept range of slice
positions is cut into ``max(1, round(L / cycle))`` cycles; each cycle is laid out as
``train (f_train / 2) | val (f_val) | train (f_train / 2) | test (f_test)``, so that every split
samples the whole anatomy instead of one end of it. Then every position that has a position of
a *different* split within ``guard`` slices before it is dropped. Hence two slices of different
splits are always more than ``guard`` slices apart, so no slice or its near neighbours appears
in two splits. The split is per position *within one orientation*, so a split (``train``, ``val``,
``test``) is only made of one orientation: slices of two orientations of the same volume
intersect along a line of shared voxels (a sagittal test slice meets every axial training
slice), so a position split over several orientations would put test voxels into training.
:func:`volume_to_slices` refuses that (ValueError) and the loaders default to the single
``DEFAULT_ORIENTATIONS`` (coronal: the most usable slices of the embedded template, 161 of 197
positions). With one orientation the split planes are disjoint and, with the guard, more than
``guard`` voxels apart: no test voxel is in any training slice (tested on an index volume).
``split="all"`` may still mix orientations (nothing is held out there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxmri._checks import check_finite, check_ndim, check_positive
from jaxmri.errors import UserInputError

__all__ = [
    "DEFAULT_ORIENTATIONS",
    "ORIENTATIONS",
    "SPLITS",
    "SPLIT_SEEDS",
    "resize_2d",
    "split_assignment",
    "volume_to_slices",
]

ORIENTATIONS = ("sagittal", "coronal", "axial")
# One orientation: a position split over several would share voxels between splits.
DEFAULT_ORIENTATIONS = ("coronal",)
SPLITS = ("train", "val", "test")
# The simulation seed of each split in the experiments: every split draws its own masks, phases
# and noise (train 0, val 1, test 2; 3 is left for data that belong to no split).
SPLIT_SEEDS = {split: number for number, split in enumerate(SPLITS)}
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def resize_2d(image: np.ndarray, shape: Sequence[int], *, order: int = 1) -> np.ndarray:
    """Resize a 2-D array to ``shape`` (pixel-area aligned, zero outside the image).

    For ``order > 0`` a Gaussian with ``sigma = max(0, (in / out - 1) / 2)`` per axis first
    removes frequencies that the smaller grid cannot hold (anti-aliasing), then
    ``scipy.ndimage.zoom(..., grid_mode=True)`` interpolates; ``order=0`` (nearest neighbour, for
    integer labels) does no filtering.

    Args:
      image: ``(h, w)`` real array.
      shape: output ``(H, W)``.
      order: spline order, 0 (nearest) or 1 (linear).

    Returns:
      ``(H, W)`` array; ``float32`` for ``order=1``, the input dtype for ``order=0``.
    """
    check_ndim(image, "image", ndim=2)
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order}")
    out_shape = tuple(int(s) for s in shape)
    factors = np.asarray(image.shape, np.float64) / np.asarray(out_shape, np.float64)
    if order == 0:
        return ndimage.zoom(image, 1 / factors, order=0, mode="grid-constant", grid_mode=True)
    x = np.asarray(image, np.float64)
    sigma = np.maximum(0.0, (factors - 1) / 2)
    if np.any(sigma > 0):
        x = ndimage.gaussian_filter(x, sigma, mode="constant")
    out = ndimage.zoom(x, 1 / factors, order=1, mode="grid-constant", grid_mode=True)
    return out.astype(np.float32)


def split_assignment(
    positions: np.ndarray,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cycle: int = 64,
    guard: int = 4,
) -> np.ndarray:
    """Assign slice positions to splits; see the module docstring for the rule.

    Args:
      positions: ``(n,)`` integer slice positions (any order; gaps allowed).
      fractions: ``(f_train, f_val, f_test)``, non-negative, summing to 1.
      cycle: approximate number of positions per ``train | val | train | test`` cycle.
      guard: a position is dropped when a position of another split lies within ``guard``
        positions before it.

    Returns:
      ``(n,)`` ``int32``: 0 train, 1 val, 2 test, -1 dropped (guard gap).
    """
    positions = np.asarray(positions)
    check_ndim(positions, "positions", ndim=1)
    fractions = np.asarray(fractions, np.float64)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1):
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}"
        )
    check_positive(cycle, "cycle")
    check_positive(guard, "guard", allow_zero=True)
    if positions.size == 0:
        return np.zeros((0,), np.int32)
    start = int(positions.min())
    length = int(positions.max()) - start + 1
    n_cycles = max(1, round(length / cycle))
    # Segment layout of one cycle: (split id, width as a fraction of the cycle).
    layout = [(0, fractions[0] / 2), (1, fractions[1]), (0, fractions[0] / 2), (2, fractions[2])]
    edges = np.cumsum([w for _, w in layout])
    ids = np.array([s for s, _ in layout])

    def raw(offsets: np.ndarray) -> np.ndarray:
        # Position centres, so that segment boundaries fall between slices.
        phase = np.mod((offsets + 0.5) * n_cycles / length, 1.0)
        return ids[np.minimum(np.searchsorted(edges, phase, side="right"), len(ids) - 1)]

    every = np.arange(length)
    raw_all = raw(every)
    out = raw_all[positions - start].astype(np.int32)
    for i, off in enumerate(positions - start):
        before = raw_all[max(0, off - guard) : off]
        if np.any(before != raw_all[off]):
            out[i] = -1
    return out


def _foreground_box(foreground: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(foreground)
    return tuple(
        slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + 1 + margin))
        for i, n in zip(idx, foreground.shape)
    )


def _pad_to_square_mm(x: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Zero-pad a 2-D array centrally so that its extent in millimetres is square."""
    side_mm = max(x.shape[0] * spacing[0], x.shape[1] * spacing[1])
    target = [max(n, int(round(side_mm / d))) for n, d in zip(x.shape, spacing)]
    pads = [((t - n) // 2, t - n - (t - n) // 2) for t, n in zip(target, x.shape)]
    return np.pad(x, pads)


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    # rot90 turns (i, j) into (j reversed, i): superior (axial: anterior) ends up at the top.
    return np.rot90(volume[(slice(None),) * axis + (int(index),)])


def _parse_split(split: str) -> int | None:
    if split == "all":
        return None
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
    return SPLITS.index(split)


def _parse_orientations(orientations: Sequence[str]) -> list[int]:
    if isinstance(orientations, str) or len(orientations) == 0:
        raise ValueError(f"orientations must be a non-empty sequence of {ORIENTATIONS}")
    bad = [o for o in orientations if o not in ORIENTATIONS]
    if bad:
        raise ValueError(f"orientations must be among {ORIENTATIONS}, got {bad}")
    return sorted({ORIENTATIONS.index(o) for o in orientations})


def volume_to_slices(
    volume: np.ndarray,
    *,
    image_size: int,
    split: str = "train",
    orientations: Sequence[str] = DEFAULT_ORIENTATIONS,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    tissue: Sequence[np.ndarray] | None = None,
    label_volume: np.ndarray | None = None,
    min_foreground: float = 0.2,
    foreground_threshold: float = 0.05,
    margin: int = 2,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cycle: int = 64,
    guard: int = 4,
) -> dict[str, np.ndarray]:
    """Slice one 3-D volume into a slices dict (see the module docstring for every rule).

    Args:
      volume: ``(X, Y, Z)`` real intensities in RAS-canonical voxel order, finite.
      image_size: side ``S`` of the square output slices.
      split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every kept slice, no guard gaps).
      orientations: subset of ``("sagittal", "coronal", "axial")``; exactly one unless
        ``split == "all"`` (see the module docstring: orientations intersect).
      spacing: voxel size in mm along the three axes.
      tissue: optional ``(csf, gm, wm)`` probability volumes, same shape as ``volume``; labels are
        ``argmax(background, csf, gm, wm)`` of the resized maps, ``background = 1 - clip(csf + gm
        + wm, 0, 1)``, giving 0 background, 1 CSF, 2 GM, 3 WM.
      label_volume: optional integer label volume (same shape, values in ``[0, 255]``), resized
        by nearest neighbour.
      min_foreground: keep slices whose foreground area is at least this fraction of the
        largest along the same axis.
      foreground_threshold: foreground = normalised intensity above this value.
      margin: voxels added around the foreground bounding box.
      fractions, cycle, guard: split rule, see :func:`split_assignment`.

    Returns:
      A slices dict with ``image``, ``orientation``, ``position``, ``volume`` and, when
      ``tissue`` or ``label_volume`` is given, ``labels``.

    Raises:
      ValueError: wrong shapes, non-finite values, a constant volume, an empty split, or
        several orientations for a held-out split.
    """
    volume = np.asarray(volume)
    check_ndim(volume, "volume", ndim=3)
    check_finite(volume, "volume")
    check_positive(image_size, "image_size")
    if tissue is not None and label_volume is not None:
        raise ValueError("give at most one of tissue and label_volume")
    for name, extra in [("label_volume", label_volume)] + [
        (f"tissue[{i}]", t) for i, t in enumerate(tissue or [])
    ]:
        if extra is not None and np.shape(extra) != volume.shape:
            raise ValueError(
                f"{name} must have the volume's shape {volume.shape}, got {np.shape(extra)}"
            )
    if label_volume is not None:
        label_volume = np.asarray(label_volume)
        if not np.all((label_volume == np.round(label_volume)) & (label_volume >= 0)) or (
            label_volume.max() > 255
        ):
            raise ValueError("label_volume must hold integer labels in [0, 255]")
    if tissue is not None and len(tissue) != 3:
        raise ValueError(f"tissue must hold three maps (csf, gm, wm), got {len(tissue)}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive voxel sizes, got {spacing}")
    wanted = _parse_split(split)
    axes = _parse_orientations(orientations)
    if wanted is not None and len(axes) > 1:
        raise ValueError(
            f"split {split!r} of several orientations {tuple(orientations)} would leak test "
            "voxels into training (slices of different orientations intersect); pass one "
            "orientation, or split='all'"
        )

    lo, hi = float(volume.min()), float(volume.max())
    if hi <= lo:
        raise UserInputError(f"volume is constant (all values {lo}); nothing to slice")
    norm = ((volume - lo) / (hi - lo)).astype(np.float32)
    foreground = norm > foreground_threshold
    box = _foreground_box(foreground, margin)
    norm, foreground = norm[box], foreground[box]
    offsets = [b.start for b in box]
    maps = [np.asarray(t, np.float32)[box] for t in tissue] if tissue is not None else None
    labels_in = np.asarray(label_volume)[box] if label_volume is not None else None

    out: dict[str, list] = {"image": [], "labels": [], "orientation": [], "position": []}
    for axis in axes:
        area = foreground.sum(axis=tuple(a for a in range(3) if a != axis))
        kept = np.nonzero(area >= min_foreground * area.max())[0]
        positions = kept + offsets[axis]
        if wanted is not None:
            assignment = split_assignment(positions, fractions=fractions, cycle=cycle, guard=guard)
            kept, positions = kept[assignment == wanted], positions[assignment == wanted]
        plane_spacing = tuple(reversed([spacing[a] for a in range(3) if a != axis]))

        def square(vol, index, axis=axis, plane_spacing=plane_spacing):
            return _pad_to_square_mm(_plane(vol, axis, index), plane_spacing)

        size = (image_size, image_size)
        for index, position in zip(kept, positions):
            out["image"].append(np.clip(resize_2d(square(norm, index), size), 0.0, 1.0))
            if maps is not None:
                probs = np.stack([resize_2d(square(m, index), size) for m in maps])
                background = 1.0 - np.clip(probs.sum(0), 0.0, 1.0)
                labels = np.argmax(np.concatenate([background[None], probs]), axis=0)
                out["labels"].append(labels.astype(np.uint8))
            elif labels_in is not None:
                out["labels"].append(resize_2d(square(labels_in, index), size, order=0))
            out["orientation"].append(axis)
            out["position"].append(position)

    if not out["image"]:
        raise UserInputError(
            f"split {split!r} is empty for a volume of shape {volume.shape}: too few usable "
            "slices for the split rule; use split='all', a smaller guard or a larger volume"
        )
    result = {
        "image": np.stack(out["image"]).astype(np.float32),
        "orientation": np.asarray(out["orientation"], np.int32),
        "position": np.asarray(out["position"], np.int32),
        "volume": np.zeros(len(out["image"]), np.int32),
    }
    if out["labels"]:
        result["labels"] = np.stack(out["labels"]).astype(np.uint8)
    return result
