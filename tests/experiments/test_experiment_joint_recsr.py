"""The joint Rec/SR experiment: its data pipeline (eq. 1) and the smoke preset end to end."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import joint_recsr as exp
from jaxmri.data import acquire_slices, load_slices
from jaxmri.nn.vgg_discriminator import VGGDiscriminator
from _claims_helpers import assert_claims_recompute
from _predict_helpers import assert_predicts_a_user_nifti


def _fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1))


def _ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1))


def test_simulated_split_follows_the_forward_model():
    slices = load_slices(None, image_size=32, split="val")
    indices = np.arange(3)
    data = exp.simulate_split(slices, indices, mask_name="gauss1d", seed=1, num_coils=4,
                              snr_db=None)
    # b = M H F C x computed directly from the simulated object and coils.
    truth = acquire_slices(slices, indices, mask_fn=exp._full_mask, seed=1, num_coils=4,
                           snr_db=None)
    full = _fft2c(truth["maps"] * truth["target"][:, None])
    expected = data["mask"][:, None] * full[..., 8:24, 8:24] / 2
    np.testing.assert_allclose(data["kspace"], expected, atol=1e-5)
    # 1-D Gaussian 2.5x on the 16 LR columns: int(16 / 2.5) = 6 whole columns per slice.
    np.testing.assert_array_equal(data["mask"].sum(axis=-1), 6)
    np.testing.assert_array_equal(data["mask"].min(axis=-2), data["mask"].max(axis=-2))
    # The zero-filled input is the LR SENSE adjoint with the LR ESPIRiT maps.
    zf = np.sum(np.conj(data["maps"]) * _ifft2c(data["kspace"]), axis=1)
    np.testing.assert_allclose(data["zero_filled"], zf, atol=1e-5)
    # ESPIRiT coil combination of the fully sampled HR data recovers the magnitude image.
    image = slices["image"][indices]
    fg = image > 0.1
    np.testing.assert_allclose(np.abs(data["target"])[fg], image[fg], atol=0.03)
    # The LR target has the HR target's intensity scale (H divides by the SR factor).
    ratio = np.abs(data["target_lr"]).max(axis=(1, 2)) / np.abs(data["target"]).max(axis=(1, 2))
    assert np.all((ratio > 0.8) & (ratio < 1.2))


def test_vwi_setting_samples_a_quarter_of_the_lr_grid_in_2d_with_a_full_centre():
    """The paper's VWI setting (``poisson2d``): a 2-D Poisson-disc mask at 4x on the LR grid
    (16x with the x2 SR) with a fully sampled calibration block, under the same forward model."""
    slices = load_slices(None, image_size=32, split="val")
    data = exp.simulate_split(slices, np.arange(3), mask_name="poisson2d", seed=1, num_coils=4,
                              snr_db=None)
    mask = data["mask"]
    assert mask.shape == (3, 16, 16)
    # 4x within the mask's tolerance, +-4 samples on this tiny grid (16 / 16**2 relative).
    np.testing.assert_allclose(mask.sum(axis=(1, 2)), 64, atol=4)
    # Calibration block max(4, 16 // 8) = 4 at the centre (index 8 = DC of the centred FFT).
    np.testing.assert_array_equal(mask[:, 6:10, 6:10], 1.0)
    # Two-dimensional: unlike gauss1d, sampled columns are not fully sampled.
    assert np.any(mask.min(axis=-2) != mask.max(axis=-2))
    truth = acquire_slices(slices, np.arange(3), mask_fn=exp._full_mask, seed=1, num_coils=4,
                           snr_db=None)
    full = _fft2c(truth["maps"] * truth["target"][:, None])
    np.testing.assert_allclose(data["kspace"], mask[:, None] * full[..., 8:24, 8:24] / 2,
                               atol=1e-5)


def test_masks_flag_selects_the_papers_settings_also_from_run_json():
    import argparse

    assert exp.mask_settings("poisson2d") == ("poisson2d",)
    assert exp.mask_settings("gauss1d, poisson2d") == ("gauss1d", "poisson2d")
    for bad, says in (("vwi", "unknown mask setting 'vwi'"), ("poisson2d,poisson2d", "twice")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            exp.mask_settings(bad)
    cpu = exp.PRESETS["cpu"]
    unset = argparse.Namespace(steps=None, batch_size=None, masks=None)
    assert exp.preset_from_flags(cpu, unset) == cpu
    # run.json stores the tuple as a list; predict must rebuild the same preset.
    recorded = argparse.Namespace(steps=7, batch_size=None, masks=["poisson2d"])
    assert exp.preset_from_flags(cpu, recorded) == dataclasses.replace(
        cpu, steps=7, masks=("poisson2d",))
    # The VWI rows are judged against the paper's VWI tables, not the brain ones.
    claims = exp.paper_claims({"poisson2d": ["Recon+SR", "Proposed"]})
    assert claims[0].paper == "32.91 vs 32.72 (VWI, Tables 2/4)"
    assert [r.paper_psnr for r in exp.regime_rows({"poisson2d": ["CG-SENSE+bicubic"]})] == [26.15]


def test_rows_flag_replaces_both_tables_in_the_papers_order_also_from_run_json():
    import argparse

    assert exp.table_rows("Proposed, Recon+SR") == ("Proposed", "Recon+SR")
    for bad, says in (("Recon+SR", "must include Proposed"), ("Proposed,Proposed", "twice"),
                      ("EDSR,Proposed", "unknown row 'EDSR'")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            exp.table_rows(bad)
    smoke, cpu = exp.PRESETS["smoke"], exp.PRESETS["cpu"]
    flags = dict(steps=None, batch_size=None, masks=None)
    # The smoke preset's Table 1 has no Recon+SR: the flag's rows replace the preset's tables.
    title = argparse.Namespace(**flags, rows=("Proposed", "Recon+SR"))
    assert exp.preset_from_flags(smoke, title) == dataclasses.replace(
        smoke, table1=("Recon+SR", "Proposed"), table3=("Proposed",))
    # run.json stores the tuple as a list; a Table 3 row leaves Table 1 with Proposed alone.
    recorded = argparse.Namespace(**flags, rows=["MoDL+bicubic", "Proposed"])
    assert exp.preset_from_flags(cpu, recorded) == dataclasses.replace(
        cpu, table1=("Proposed",), table3=("MoDL+bicubic", "Proposed"))
    assert exp.preset_from_flags(cpu, argparse.Namespace(**flags, rows=None)) == cpu


@pytest.mark.slow
def test_smoke_run_of_the_vwi_setting_writes_its_tables_and_claims(tmp_path):
    out = exp.main(["--preset", "smoke", "--masks", "poisson2d", "--workdir", str(tmp_path)])
    assert list(out) == ["poisson2d"]
    assert (tmp_path / "poisson2d" / "Proposed").is_dir() and not (tmp_path / "gauss1d").exists()
    table = json.loads((tmp_path / "table3_poisson2d.json").read_text())
    assert table["CG-SENSE+bicubic"]["PSNR"]["mean"] > 15.0
    rows = {"poisson2d": ["SR", "Proposed", "CG-SENSE+bicubic"]}
    assert_claims_recompute(tmp_path, exp.paper_claims(rows), exp.regime_rows(rows))
    # --predict rebuilds the VWI run from run.json: its models lie under poisson2d/ only.
    assert_predicts_a_user_nifti(exp.main, tmp_path)


def test_every_model_trains_on_its_papers_loss():
    """Eq. 12 with the paper's weights for the models with an SR output (SR has no
    reconstruction term), L1 alone for the reconstruction-only models."""
    full = exp.build("Proposed", exp.PRESETS["smoke"])[2]
    assert full == exp.jr.LossWeights()
    assert (full.perceptual, full.pixel, full.rec, full.adversarial) == (1.0, 1e-2, 1.0, 5e-3)
    sr_only = exp.build("SR", exp.PRESETS["smoke"])[2]
    assert sr_only.rec == 0.0 and sr_only.perceptual == 1.0 and sr_only.adversarial == 5e-3
    recon = exp.build("Recon", exp.PRESETS["smoke"])[2]
    assert recon.pixel == recon.perceptual == recon.adversarial == 0.0 and recon.rec > 0


def _learning_rates(train_state, num_updates=2):
    """The step sizes of the first ``num_updates`` Adam updates under a constant gradient
    (Adam's normalised step is then 1, so each update is minus the learning rate of its step)."""
    tx, params = train_state.tx, train_state.params
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = tx.init(params)
    rates = []
    for _ in range(num_updates):
        updates, opt_state = tx.update(grads, opt_state, params)
        rates.append(-float(jax.tree.leaves(updates)[0].ravel()[0]))
    return rates


def test_training_phase_states_optimisers_and_discriminator():
    preset = exp.PRESETS["smoke"]  # learning rate 1e-3 halved at step 1
    slices = load_slices(None, image_size=preset.image_size, split="train",
                         orientations=(preset.orientation,), fractions=preset.split_fractions)
    split = exp.simulate_split(slices, np.arange(2), mask_name="gauss1d", seed=0,
                               num_coils=preset.num_coils, snr_db=preset.snr_db)
    key = jax.random.PRNGKey(7)
    variables = exp.init_generator("Proposed", preset, split, key=key)
    module = exp.build("Proposed", preset)[0]
    expected = jax.jit(module.init)(key, *exp._inputs("Proposed", split, 1))
    chex.assert_trees_all_equal(variables, expected)

    step, state = exp.training_phase("Proposed", preset, variables, key=key, hr_size=32)
    assert callable(step) and set(state) == {"generator", "discriminator"}
    chex.assert_trees_all_equal(state["generator"].params, variables["params"])
    assert int(state["generator"].step) == 0
    np.testing.assert_allclose(_learning_rates(state["generator"]), [1e-3, 5e-4],
                               rtol=1e-4)
    np.testing.assert_allclose(_learning_rates(state["discriminator"]),
                               [1e-3, 5e-4], rtol=1e-4)
    # A fresh discriminator from fold_in(key, 1) on HR magnitudes.
    disc = VGGDiscriminator(features=preset.disc_features, hidden=2 * preset.disc_features[-1])
    d_vars = disc.init(jax.random.fold_in(key, 1), jnp.zeros((1, 32, 32, 1), jnp.float32))
    chex.assert_trees_all_close(state["discriminator"].params, d_vars["params"], rtol=1e-6)

    # Reconstruction-only models (L1) train without a discriminator.
    rec_vars = exp.init_generator("Recon", preset, split, key=key)
    _, rec = exp.training_phase("Recon", preset, rec_vars, key=key, hr_size=32)
    assert set(rec) == {"generator"}


def test_the_rate_halves_at_fractions_of_the_eq12_phase_whatever_its_length():
    assert exp.halving_steps(exp.PRESETS["paper"]) == (50_000, 100_000, 200_000, 300_000)
    assert exp.halving_steps(exp.PRESETS["cpu"]) == (200, 300)
    # --steps moves the halvings with the phase (absolute milestones would stay at 200 and 300,
    # past the end of a 100-step phase, and leave the rate constant without a word).
    short = exp.override_preset(exp.PRESETS["cpu"], steps=8)
    assert exp.halving_steps(short) == (4, 6)
    slices = load_slices(None, image_size=32, split="train",
                         orientations=(short.orientation,), fractions=short.split_fractions)
    smoke = dataclasses.replace(exp.PRESETS["smoke"], steps=8, halve_at=short.halve_at)
    split = exp.simulate_split(slices, np.arange(1), mask_name="gauss1d", seed=0,
                               num_coils=smoke.num_coils, snr_db=smoke.snr_db)
    variables = exp.init_generator("SR", smoke, split, key=jax.random.PRNGKey(0))
    _, state = exp.training_phase("SR", smoke, variables, key=jax.random.PRNGKey(0), hr_size=32)
    np.testing.assert_allclose(_learning_rates(state["generator"], 8),
                               [1e-3] * 4 + [5e-4] * 2 + [2.5e-4] * 2, rtol=1e-4)
    # The cpu presets train eq. 12 long enough to leave its dip: its first ~100 steps darken
    # every SR output and the next ~200 undo it (docs/joint_recsr_regime.md, "eq. 12 length").
    for name in ("cpu", "cpu-long"):
        assert exp.PRESETS[name].steps >= 300, name
    for bad in ((0.75, 0.5), (0.0, 0.5), (0.5, 1.0), (0.5, 0.5)):
        with pytest.raises(ValueError, match="halve_at"):
            dataclasses.replace(exp.PRESETS["cpu"], halve_at=bad)


# About 4 CPU-minutes of XLA compilation (VGG16 gradients, DEQ, discriminator, LPIPS, run twice
# for the resume check): too long for the default suite; `python -m pytest -m slow` runs it.
@pytest.mark.slow
def test_smoke_experiment_end_to_end_and_resume(tmp_path):
    argv = ["--preset", "smoke", "--workdir", str(tmp_path)]
    out = exp.main(argv)
    table1, table3 = out["gauss1d"]["table1"], out["gauss1d"]["table3"]
    assert list(table1) == ["SR", "Proposed"]
    assert list(table3) == ["CG-SENSE+bicubic", "Proposed"]
    for row in (*table1.values(), *table3.values()):
        for metric in exp.METRICS:
            assert np.isfinite(row[metric]["mean"])
    # CG-SENSE + bicubic needs no training, so it must already beat chance (a blank image).
    assert table3["CG-SENSE+bicubic"]["PSNR"]["mean"] > 15.0
    for name in ("table1_gauss1d.md", "table1_gauss1d.json", "table3_gauss1d.md",
                 "fig4_gauss1d.png", "fig5_gauss1d.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "table1_gauss1d.json").read_text())["Proposed"]["PSNR"]
    log = tmp_path / "gauss1d" / "Proposed" / "metrics.jsonl"
    # Eq. 12 from the first step, as in the paper: perceptual and adversarial terms logged.
    first = json.loads(log.read_text().splitlines()[0])
    assert {"perceptual", "adversarial", "pixel"} <= set(first), first
    before = log.read_text()
    again = exp.main(argv)  # resumes: nothing is retrained, the numbers are the same
    assert log.read_text() == before
    np.testing.assert_allclose(again["gauss1d"]["table1"]["Proposed"]["PSNR"]["mean"],
                               table1["Proposed"]["PSNR"]["mean"], rtol=1e-5)


def test_bicubic_baseline_upsamples_on_the_kspace_crop_grid():
    """The +bicubic rows upsample an LR image that the k-space crop put on HR pixels 2 i: the
    fully sampled LR target upsampled is much closer to the HR target than the same image
    shifted by half an HR pixel either way (the half-pixel grid of jax.image.resize, which
    the rows used before, is one of the two)."""
    import jax

    from jaxmri.metrics import psnr

    slices = load_slices(None, image_size=64, split="val")
    data = exp.simulate_split(slices, np.arange(4), mask_name="gauss1d", seed=1, num_coils=4,
                              snr_db=None)
    hr = np.abs(data["target"]).astype(np.float32)
    lr = np.abs(data["target_lr"]).astype(np.float32)

    def score(up):
        return float(np.mean(np.asarray(psnr(np.asarray(up)[:, 4:-4, 4:-4], hr[:, 4:-4, 4:-4]))))

    ours = score(exp._upsample(lr))
    half_pixel = score(jax.image.resize(lr, (4, 64, 64), "bicubic"))
    assert ours > half_pixel + 2.0


def test_paper_claims_and_regime_rows():
    rows = {"gauss1d": ["SR", "Proposed", "CG-SENSE+bicubic"]}
    claims = exp.paper_claims(rows)
    assert [(c.baseline, c.metric, c.direction) for c in claims] == [
        (f"gauss1d: {b}", m, d) for b in ("CG-SENSE+bicubic", "SR")
        for m, d in (("PSNR", "higher"), ("SSIM", "higher"), ("LPIPS", "lower"))]
    assert claims[0].paper == "30.32 vs 22.41 (brain, Tables 1/3)"
    regime = exp.regime_rows(rows)
    assert [(r.row, r.paper_psnr, r.paper_ssim) for r in regime] == [
        ("gauss1d: CG-SENSE+bicubic", 22.41, 0.5805), ("gauss1d: SR", 28.88, 0.8462)]
    # The cpu preset's rows: proposed against all six others on three metrics.
    every = {"gauss1d": list(exp.TABLE1) + list(exp.TABLE3)}
    assert len(exp.paper_claims(every)) == 18


@pytest.mark.slow
def test_smoke_run_claims_equal_statistics_of_its_per_slice_json(tmp_path):
    exp.main(["--preset", "smoke", "--workdir", str(tmp_path)])
    rows = {"gauss1d": ["SR", "Proposed", "CG-SENSE+bicubic"]}
    assert_claims_recompute(tmp_path, exp.paper_claims(rows), exp.regime_rows(rows))


def test_cg_lambda_is_chosen_by_psnr_on_the_split():
    """Noisy data need Tikhonov regularisation, noiseless data do not: the selection follows
    the scores, and the score of lam is CG-SENSE(lam) + bicubic against the HR magnitude."""
    from jaxmri.metrics import psnr
    from jaxmri.physics import cg_sense

    slices = load_slices(None, image_size=32, split="val")
    lams = (0.0, 0.03, 1.0)
    picks = {}
    for snr in (0.0, None):
        data = exp.simulate_split(slices, np.arange(3), mask_name="gauss1d", seed=2,
                                  num_coils=4, snr_db=snr)
        scores = exp.cg_lambda_scores(data, lams, max_iter=20)
        picks[snr] = exp.select_cg_lambda(data, lams, max_iter=20)
        assert scores[picks[snr]] == max(scores.values())
        rec = cg_sense(data["kspace"], data["maps"], data["mask"][:, None], lam=1.0,
                       max_iter=20).image
        direct = float(np.mean(psnr(exp._upsample(rec), np.abs(data["target"]))))
        np.testing.assert_allclose(scores[1.0], direct, rtol=1e-5)
    assert picks[0.0] > 0.0  # at 0 dB the unregularised solve amplifies the noise
    assert picks[None] < 1.0  # without noise strong regularisation only biases the image


def test_cpu_long_size_lifts_the_bicubic_ceiling_above_the_papers_modl_row():
    """Why cpu-long exists: no "+bicubic" row can beat bicubic of the exact (fully sampled) LR
    image. On the cpu preset's data (64 px) that ceiling lies below the paper's MoDL+bicubic
    (29.33 dB), so the row cannot reach the paper's regime; on cpu-long's (128 px, 12 coils, the
    same noisy references) it lies above."""
    from jaxmri.metrics import psnr

    def ceiling(preset):
        slices = load_slices(None, image_size=preset.image_size, split="val")
        data = exp.simulate_split(slices, np.arange(0, 12, 4), mask_name="gauss1d", seed=1,
                                  num_coils=preset.num_coils, snr_db=preset.snr_db)
        up = exp._upsample(np.abs(data["target_lr"]).astype(np.float32))
        return float(np.mean(np.asarray(psnr(up, np.abs(data["target"]).astype(np.float32)))))

    paper_modl = exp.PAPER["gauss1d"]["MoDL+bicubic"][0]
    long_preset = exp.PRESETS["cpu-long"]
    assert (long_preset.image_size, long_preset.num_coils) == (128, 12)
    assert long_preset.snr_db == exp.PRESETS["cpu"].snr_db
    assert ceiling(exp.PRESETS["cpu"]) < paper_modl < ceiling(long_preset)
