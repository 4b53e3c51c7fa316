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


def test_lr_snr_gain_follows_the_papers_table1():
    """LR voxel 2.7^3 mm^3 in 4.6 s vs HR 1.25 x 1.25 x 2.7 mm^3 in 11.0 s: SNR ~ volume *
    sqrt(time) gives 19.683 / 4.21875 * sqrt(0.41818) = 3.0171."""
    assert exp.LR_SNR_GAIN == pytest.approx(3.0171, abs=1e-4)
    assert exp.lr_noise_std(0.04) == pytest.approx(0.04 / 3.0171, rel=1e-4)


def test_cpu_preset_scans_are_two_independent_noisy_acquisitions(monkeypatch):
    """The HR reference is a noisy scan (sigma = the preset's, measured on a constant anatomy
    where Rician ~ Gaussian), the LR scan has its own noise realisation at sigma / LR_SNR_GAIN,
    and the two are uncorrelated (separate scans). The old cpu preset had a noiseless HR."""
    monkeypatch.setattr(exp, "denoise_nlm", lambda images, noise_std: images)  # raw LR noise
    preset = exp.PRESETS["cpu"]
    anatomy = np.full((6, preset.image_size, preset.image_size), 0.5, np.float32)
    scans = exp.scanner_data(anatomy, preset, seed=3)
    hr_noise, lr_noise = scans["hr"] - 0.5, scans["lr"] - 0.5
    assert preset.hr_noise_std > 0
    assert hr_noise.std() == pytest.approx(preset.hr_noise_std, rel=0.03)
    assert lr_noise.std() == pytest.approx(preset.hr_noise_std / 3.0171, rel=0.03)
    # The HR noise seen through the LR grid (2x2 means) against the LR noise: uncorrelated.
    h = preset.image_size // 2
    hr_on_lr = hr_noise.reshape(6, h, 2, h, 2).mean(axis=(2, 4))
    assert abs(np.corrcoef(hr_on_lr.ravel(), lr_noise.ravel())[0, 1]) < 0.05


def test_cpu_preset_bicubic_row_is_in_the_papers_regime():
    """The issue's regime criterion on the row that needs no training (same in every seed):
    bicubic x2 of the cpu preset's NLM-denoised scanner LR against its noisy HR scan within
    3 dB / 0.05 SSIM of the paper's Bicubic row (22.2 dB / 0.605). The old cpu preset (64 px,
    noiseless HR) gave 24.03 / 0.694."""
    import jax.numpy as jnp

    from jaxmri.data import SPLIT_SEEDS, load_splits
    from jaxmri.metrics import psnr, ssim
    from jaxmri.physics import bicubic_resize

    preset = exp.PRESETS["cpu"]
    anatomy = load_splits(None, image_size=preset.image_size, orientation=preset.orientation,
                          fractions=preset.split_fractions, splits=("test",))["test"]["image"]
    test = exp.scanner_data(exp._subset(anatomy, preset.num_test), preset, SPLIT_SEEDS["test"])
    out = jnp.clip(bicubic_resize(jnp.asarray(test["lr"]), test["hr"].shape[-2:]), 0.0, 1.0)
    paper_psnr, paper_ssim = exp.PAPER["Bicubic"]
    assert abs(float(psnr(out, test["hr"], data_range=1.0).mean()) - paper_psnr) <= 3.0
    assert abs(float(ssim(out, test["hr"], data_range=1.0).mean()) - paper_ssim) <= 0.05


def test_cpu_preset_trains_the_papers_dsgan():
    """Section 2.A of the paper: 3000 iterations, each on one 64 x 64 HR crop and one 26 x 26
    LR crop (the generator's output size). The cpu preset trains that GAN, not a reduced one
    (until 2026-12-07 it ran 500 iterations on 48 px crops, and its DSGAN + EDSR row moved
    4.7 dB over ten seeds). The LR crop ``train_dsgan`` draws, ``output_size``, is the shape
    the generator really returns."""
    import jax
    import jax.numpy as jnp

    from jaxmri.models import dsgan

    fields = ("gan_features", "gan_hr_crop", "gan_steps", "gan_batch", "gan_learning_rate")
    cpu, paper = exp.PRESETS["cpu"], exp.PRESETS["paper"]
    assert {f: getattr(cpu, f) for f in fields} == {f: getattr(paper, f) for f in fields}
    assert (paper.gan_steps, paper.gan_hr_crop, paper.gan_batch) == (3000, 64, 1)
    generator = dsgan.DeepLinearGenerator(features=8)
    assert generator.kernel_size == 13
    assert generator.output_size(paper.gan_hr_crop) == 26
    x = jnp.zeros((1, paper.gan_hr_crop, paper.gan_hr_crop, 1))
    out = jax.eval_shape(lambda v: generator.init_with_output(jax.random.PRNGKey(0), v)[0], x)
    assert out.shape == (1, 26, 26, 1)
