"""The DSGAN + EDSR experiment end to end on the smoke preset, and its resume."""

import json

import numpy as np
import pytest

from experiments import dsgan_sr as exp
from _claims_helpers import assert_claims_recompute


def test_relative_kernel_error():
    truth = np.eye(3)
    assert exp.relative_kernel_error(truth, truth) == 0.0
    np.testing.assert_allclose(exp.relative_kernel_error(2 * truth, truth), 1.0)


# About 1 CPU-minute (every network of the paper compiled twice over); `pytest -m slow` runs it.
@pytest.mark.slow
def test_smoke_experiment_end_to_end_and_resume(tmp_path):
    argv = ["--preset", "smoke", "--workdir", str(tmp_path)]
    out = exp.main(argv)
    assert list(out["table2"]) == ["Bicubic", "ZF + EDSR", "GB + EDSR", "DSGAN + EDSR"]
    assert list(out["table3"]) == ["DSN + EDSR", "DSGAN + EDSR"]
    for table in (out["table2"], out["table3"]):
        for method in table.values():
            for metric in exp.METRICS:
                assert np.isfinite(method[metric]["mean"])
    # The Gaussian's kernel error is computed against the true kernel: a fixed, positive number.
    # Its sigma is the one selected on the training pairs (one of GB_SIGMAS), named in the row.
    (gaussian,) = [row for row in out["kernel"] if row.startswith("Gaussian sigma ")]
    assert float(gaussian.split()[-1]) in exp.GB_SIGMAS
    assert out["kernel"][gaussian]["rel. kernel error"]["mean"] > 0.2
    for name in ("table2.md", "table2.json", "table3.md", "kernel_error.md", "fig4_outputs.png",
                 "fig5_mscn.png", "fig6_profiles.png", "kernels.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "table2.json").read_text())["DSGAN + EDSR"]["SSIM"]
    logs = {name: (tmp_path / name / "metrics.jsonl").read_text()
            for name in ("dsgan", "dsn", "edsr_dsgan", "edsr_gb")}
    again = exp.main(argv)  # resumes: nothing is retrained, the numbers are the same
    for name, text in logs.items():
        assert (tmp_path / name / "metrics.jsonl").read_text() == text
    assert again["table2"] == out["table2"]


def test_mscn_histogram_uses_the_papers_one_pixel_window():
    """Paper 001 section 2.C.3: 7x7 Gaussian weights of standard deviation 1 pixel (BRISQUE's
    own 7/6 stays in jaxmri.metrics.brisque)."""
    from jaxmri.metrics import mscn_coefficients

    rng = np.random.default_rng(0)
    images = rng.random((2, 24, 24)).astype(np.float32)
    bins = np.linspace(-3.0, 3.0, 61)

    def hist(sigma):
        coeffs = np.asarray(mscn_coefficients(255.0 * images, sigma=sigma))
        return np.histogram(coeffs.ravel(), bins=bins, density=True)[0]

    np.testing.assert_allclose(exp.mscn_histogram(images, bins), hist(1.0), atol=1e-6)
    assert np.abs(hist(1.0) - hist(7 / 6)).max() > 1e-3


def test_paper_claims_and_regime_rows():
    claims = exp.paper_claims()
    # DSGAN + EDSR above each of four rows, on PSNR and on SSIM.
    assert [(c.baseline, c.metric) for c in claims] == [
        (b, m) for b in ("GB + EDSR", "ZF + EDSR", "Bicubic", "DSN + EDSR")
        for m in ("PSNR", "SSIM")]
    assert all(c.method == "DSGAN + EDSR" and c.direction == "higher" for c in claims)
    assert claims[0].paper.startswith("22.3 vs 19.5 dB (+2.8); Table 2")
    rows = {r.row: (r.paper_psnr, r.paper_ssim) for r in exp.regime_rows()}
    assert rows["Bicubic"] == (22.2, 0.605) and rows["ZF + EDSR"] == (22.2, 0.601)


@pytest.mark.slow
def test_smoke_run_claims_equal_statistics_of_its_per_slice_json(tmp_path):
    out = exp.main(["--preset", "smoke", "--workdir", str(tmp_path)])
    files = assert_claims_recompute(tmp_path, exp.paper_claims(), exp.regime_rows())
    assert out["claims"] == files["claims"]["claims"]
