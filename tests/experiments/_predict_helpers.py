"""A check shared by the experiment tests: ``--predict`` rebuilds a trained run from its
``run.json`` and writes every slice of a user's NIfTI volume back on that volume's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def assert_predicts_a_user_nifti(main, workdir: Path) -> dict:
    """Run ``main(["--workdir", workdir, "--predict", NIFTI, ...])`` on three axial slices of
    the 2 mm MNI template (the volume and the output go into ``workdir`` too); the output
    volume must have the input's shape, be finite and not all zero, and metrics must be
    reported. Returns the prediction's result dict."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    nifti = workdir / "user.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(template.get_fdata(), np.float32)[:, :, 40:43],
                             template.affine), nifti)
    (result,) = main(["--workdir", str(workdir), "--predict", str(nifti), "--out",
                      str(workdir / "out")])
    predicted = nib.load(workdir / "out" / "user.nii.gz").get_fdata()
    assert predicted.shape == template.shape[:2] + (3,) and np.all(np.isfinite(predicted))
    assert predicted.max() > 0 and result["metrics"]
    return result
