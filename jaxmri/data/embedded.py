"""The embedded real default: the MNI152 2009 T1 template that ships inside nilearn's wheel.

nilearn 0.14.1 bundles three 1 mm volumes of the ICBM152 2009 (nonlinear, symmetric) template,
``197 x 233 x 189`` voxels in RAS order, and reads them without any network access:

* ``load_mni152_template(resolution=1)``: skull-stripped T1, rescaled by nilearn to ``[0, 1]``;
* ``load_mni152_gm_template`` / ``load_mni152_wm_template``: grey- and white-matter probability
  maps in ``[0, 1]``.

There is **no CSF map** in the wheel (``fetch_icbm152_2009`` has one but downloads it). We
derive it as ``csf = clip(brain_mask - gm - wm, 0, 1)``, with ``brain_mask`` nilearn's
``load_mni152_brain_mask(resolution=1)`` (T1 above 0.2, recomputed here): inside the
skull-stripped brain, what is neither grey nor white matter is ventricles, sulci and the brain's
outer CSF rim. It is an approximation (partial volume at the brain edge counts as CSF), good
enough for the 4-class segmentation labels (0 background, 1 CSF, 2 GM, 3 WM) used by paper
003's SIS.

This is one template brain, not a cohort of patients; see :mod:`jaxmri.data.slicing` for what
the train/val/test split by slice position does and does not separate.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from jaxmri.data.slicing import DEFAULT_FRACTIONS, DEFAULT_ORIENTATIONS, volume_to_slices

__all__ = ["load_mni152", "mni152_slices"]

_BRAIN_MASK_THRESHOLD = 0.2  # the default threshold of nilearn's load_mni152_brain_mask


@functools.lru_cache(maxsize=1)
def _load_mni152_cached() -> dict[str, np.ndarray]:
    # Imported here: nilearn takes about a second to import and only this loader needs it.
    from nilearn import datasets

    def read(img) -> np.ndarray:
        arr = np.asarray(img.get_fdata(), np.float32)
        arr.setflags(write=False)  # shared by every caller through the cache
        return arr

    t1 = read(datasets.load_mni152_template(resolution=1))
    gm = read(datasets.load_mni152_gm_template(resolution=1))
    wm = read(datasets.load_mni152_wm_template(resolution=1))
    # nilearn's load_mni152_brain_mask(resolution=1) is exactly ``t1 > 0.2``; computing it here
    # saves decompressing the T1 file a second time.
    mask = (t1 > _BRAIN_MASK_THRESHOLD).astype(np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0).astype(np.float32)
    csf.setflags(write=False)
    return {"t1": t1, "gm": gm, "wm": wm, "csf": csf}


def load_mni152() -> dict[str, np.ndarray]:
    """Load the MNI152 2009 template volumes bundled with nilearn (offline, cached).

    Returns:
      ``dict(t1, gm, wm, csf)``, each a read-only ``float32`` ``(197, 233, 189)`` volume in RAS
      voxel order with 1 mm isotropic voxels: ``t1`` intensities in ``[0, 1]``; ``gm``, ``wm``
      tissue probabilities in ``[0, 1]``; ``csf`` derived as described in the module docstring.
    """
    return dict(_load_mni152_cached())


def mni152_slices(
    *,
    image_size: int,
    split: str = "train",
    orientations: Sequence[str] = DEFAULT_ORIENTATIONS,
    min_foreground: float = 0.2,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cycle: int = 64,
    guard: int = 4,
) -> dict[str, np.ndarray]:
    """Square 2-D slices of the MNI152 T1 template with tissue labels.

    See :func:`jaxmri.data.slicing.volume_to_slices` for the slicing, resizing (scipy, linear
    with anti-aliasing) and split rules.

    Args:
      image_size: side ``S`` of the output slices.
      split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
      orientations: subset of ``("sagittal", "coronal", "axial")``.
      min_foreground, fractions, cycle, guard: see ``volume_to_slices``.

    Returns:
      Slices dict: ``image`` ``(N, S, S)`` float32 in ``[0, 1]``, ``labels`` ``(N, S, S)`` uint8
      in ``{0: background, 1: CSF, 2: GM, 3: WM}``, ``orientation``, ``position``, ``volume``
      ``(N,)`` int32.
    """
    vols = _load_mni152_cached()
    return volume_to_slices(
        vols["t1"],
        image_size=image_size,
        split=split,
        orientations=orientations,
        tissue=(vols["csf"], vols["gm"], vols["wm"]),
        min_foreground=min_foreground,
        fractions=fractions,
        cycle=cycle,
        guard=guard,
    )
