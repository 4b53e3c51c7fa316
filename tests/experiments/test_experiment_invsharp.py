"""The InvSharpNet experiment end to end on the smoke preset, and its resumption."""

import json

import numpy as np
import pytest

from experiments import invsharp


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("invsharp")
    argv = ["--preset", "smoke", "--workdir", str(workdir), "--steps", "3"]
    summary = invsharp.main(argv)
    return workdir, argv, summary


def test_smoke_run_writes_tables_and_figures(smoke_run):
    workdir, _, summary = smoke_run
    table2 = summary["table2"]
    assert list(table2) == ["Recon model 1"] + [label for label, _, _ in invsharp.METHOD_RUNS]
    for row in table2.values():
        for metric in ("PSNR", "SSIM", "Contrast", "LPIPS"):
            assert np.isfinite(row[metric]["mean"])
            assert row[metric]["n"] == summary["table2"]["Recon model 1"]["PSNR"]["n"] > 0
    # Every refinement ends with data consistency, so it cannot be worse than random: the
    # SSIM contrast term is a bounded similarity in (0, 1].
    assert all(0 < row["Contrast"]["mean"] <= 1 for row in table2.values())
    on_disk = json.loads((workdir / "table2.json").read_text())
    assert on_disk["InvSharpNet(back)"]["PSNR"]["mean"] == pytest.approx(
        table2["InvSharpNet(back)"]["PSNR"]["mean"])
    assert "| InvSharpNet(back) |" in (workdir / "table2.md").read_text()
    assert "LPIPS" in (workdir / "table3.md").read_text()
    ablation = summary["ablation"]
    assert set(ablation) == {"c=0.6", "c=0.7", "c=0.8", "small c=0.7"}
    # The small network really is smaller.
    assert ablation["small c=0.7"]["parameters"]["mean"] < ablation["c=0.7"]["parameters"]["mean"]
    for name in ("fig2_panel.png", "figA1_profile.png", "fig3b_inversion_error.png",
                 "recon1_outputs.npz", "summary.json"):
        assert (workdir / name).stat().st_size > 0


def test_claims_and_regime_tables_cover_the_paper_rows(smoke_run):
    workdir, _, summary = smoke_run
    claims = json.loads((workdir / "claims.json").read_text())
    rows = set(summary["table2"])
    keys = [c.key for c in invsharp.paper_claims(1)]
    assert [c["key"] for c in claims["claims"]] == keys
    assert all(c.method in rows and c.baseline in rows for c in invsharp.paper_claims(1))
    assert {c["verdict"] for c in claims["claims"]} <= {"reproduced", "contradicted",
                                                         "inconclusive"}
    regime = json.loads((workdir / "regime.json").read_text())["rows"]
    assert {r["row"] for r in regime} == {"Recon model 1", "CG-SENSE", "Zero-filled"}
    recon_rows = [r for r in regime if r["row"] == "Recon model 1"]
    assert {r["paper_psnr"] for r in recon_rows} == {40.2, 38.9, 32.5}
    assert "| Recon model 1 |" in (workdir / "regime.md").read_text()


def test_combine_reads_the_runs_tables_and_refuses_one_seed_twice(smoke_run, tmp_path, capsys):
    workdir, _, _ = smoke_run
    out = invsharp.main(["--combine", str(workdir), "--workdir", str(tmp_path / "over")])
    claims = json.loads((workdir / "claims.json").read_text())["claims"]
    combined = json.loads((tmp_path / "over" / "claims_over_seeds.json").read_text())
    assert combined == out["claims"] and combined["seeds"] == [0]
    assert [c["per_seed"]["0"]["p_value"] for c in combined["claims"]] == [
        c["p_value"] for c in claims]
    assert (tmp_path / "over" / "regime_over_seeds.md").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        invsharp.main(["--combine", str(workdir), str(workdir), "--workdir", str(tmp_path)])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are both runs of seed 0" in err


def test_every_row_gets_the_same_final_dc(smoke_run):
    # The recon row is its cached output after the one final DC, exactly as the methods'
    # outputs are; without it the row would differ (the coil-wise DC is not idempotent).
    workdir, _, _ = smoke_run
    preset = invsharp.PRESETS["smoke"]
    test = invsharp.load_acquisitions(None, preset, 0, splits=("test",))["test"]
    with np.load(workdir / "recon1_outputs.npz") as f:
        recon = f["test"]
    per_slice = json.loads((workdir / "per_slice.json").read_text())["Recon model 1"]
    with_dc = invsharp.image_metrics(invsharp.final_dc(recon, test, 4), test["target"])
    without = invsharp.image_metrics(recon, test["target"])
    np.testing.assert_allclose(per_slice["PSNR"], with_dc["PSNR"], rtol=1e-5)
    assert np.max(np.abs(with_dc["PSNR"] - without["PSNR"])) > 1e-3
    with pytest.raises(ValueError, match="final DC"):
        invsharp.final_dc(recon, test, 4, kind="soft")


def test_noisy_reference_preset_makes_the_target_the_noisy_scan():
    # Preset.noisy_reference reaches the simulation: with the same masks, the target gains the
    # k-space noise with per-pixel variance sigma^2 (the library test checks the rest).
    import dataclasses

    preset = invsharp.PRESETS["smoke"]
    clean = invsharp.load_acquisitions(None, preset, 0, splits=("test",))["test"]
    noisy = invsharp.load_acquisitions(
        None, dataclasses.replace(preset, noisy_reference=True), 0, splits=("test",))["test"]
    np.testing.assert_array_equal(noisy["mask"], clean["mask"])
    # sigma^2 from the SNR definition (jaxmri.data.simulate): mean |x|^2 / C / 10^(SNR / 10).
    sigma2 = (np.mean(np.abs(clean["target"]) ** 2, axis=(1, 2)) / preset.num_coils
              / 10 ** (preset.snr_db / 10))
    noise_power = np.mean(np.abs(noisy["target"] - clean["target"]) ** 2, axis=(1, 2))
    assert np.mean(noise_power / sigma2) == pytest.approx(1.0, abs=0.15)


def test_recon_input_is_the_regularised_cg_sense_solution():
    # The recon models start from CG-SENSE: the image must satisfy the normal equations
    # (A^H A + lam I) x = A^H y (checked with the dense operator), be far closer to the target
    # than the zero-filled adjoint, and "zero_filled" must give the adjoint itself.
    import dataclasses

    preset = dataclasses.replace(invsharp.PRESETS["smoke"], cg_iters=200)
    test = invsharp.load_acquisitions(None, preset, 0, splits=("test",))["test"]
    x = test["recon_input"]
    k, maps, mask = test["kspace"][0], test["maps"][0], test["mask"][0]
    size = x.shape[-1]
    basis = np.eye(size * size, dtype=np.complex64).reshape(-1, size, size)
    forward = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps[None] * basis[:, None],
                                                          axes=(-2, -1)), norm="ortho"),
                              axes=(-2, -1)) * mask
    a = forward.reshape(size * size, -1).T                      # (C*H*W, H*W)
    lhs = a.conj().T @ a + preset.cg_lam * np.eye(size * size)
    rhs = a.conj().T @ (k * mask).reshape(-1)
    np.testing.assert_allclose(lhs @ x[0].reshape(-1), rhs, atol=2e-4 * np.abs(rhs).max())

    def error(y):
        return np.linalg.norm(np.abs(y) - np.abs(test["target"])) / np.linalg.norm(
            test["target"])

    assert error(x) < 0.7 * error(test["zero_filled"])
    adjoint = invsharp.recon_input_images(
        dataclasses.replace(preset, recon_input="zero_filled"), test)
    np.testing.assert_array_equal(adjoint, test["zero_filled"])
    with pytest.raises(ValueError, match="recon_input"):
        invsharp.recon_input_images(dataclasses.replace(preset, recon_input="sense"), test)


def test_presets_use_one_orientation_and_a_true_4x_mask():
    for name, preset in invsharp.PRESETS.items():
        assert preset.orientations == ("axial",), name
    # The cpu preset's 64 px slices: 15-16 of 64 columns (the plain equispaced mask with the
    # centre on top keeps 20, i.e. 3.2x).
    data = invsharp.load_acquisitions(None, invsharp.PRESETS["cpu"], 0, splits=("val",))
    achieved = 1 / data["val"]["mask"].mean(axis=(1, 2))
    assert np.all((achieved > 3.7) & (achieved < 4.3))
    assert abs(achieved.mean() - 4.0) < 0.1


def test_second_run_resumes_instead_of_retraining(smoke_run):
    workdir, argv, summary = smoke_run
    logs = {p: p.read_text() for p in workdir.glob("*/metrics.jsonl")}
    assert len(logs) == 1 + len(invsharp.METHOD_RUNS) + 3  # recon, methods, ablation runs
    again = invsharp.main(argv)
    # Nothing was trained again (logs untouched) and the evaluation is reproduced exactly.
    assert {p: p.read_text() for p in workdir.glob("*/metrics.jsonl")} == logs
    assert again["table2"] == summary["table2"]


# A second smoke run (30 CPU-seconds); `pytest -m slow` runs it.
@pytest.mark.slow
def test_recon_model_2_and_generalisation_to_another_volume(tmp_path):
    """Table A1 (U-Net recon) and --eval-data on a user NIfTI volume, without the ablation."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_template

    # Another volume: the 2 mm template, flipped left-right, written as the user's NIfTI.
    template = load_mni152_template(resolution=2)
    volume = np.asarray(template.get_fdata(), np.float32)[::-1]
    path = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(volume, template.affine), path)
    workdir = tmp_path / "run"
    summary = invsharp.main(["--preset", "smoke", "--workdir", str(workdir), "--steps", "2",
                             "--recon-model", "2", "--no-ablation", "--eval-data", str(path)])
    assert "Recon model 2" in summary["table2"] and "ablation" not in summary
    general = summary["generalisation"]
    assert set(general) == set(summary["table2"])
    assert all(np.isfinite(row["PSNR"]["mean"]) and row["PSNR"]["n"] > 0
               for row in general.values())
    for name in ("tableA1.md", "tableA1_lpips.md", "generalisation.md", "recon2_outputs.npz"):
        assert (workdir / name).stat().st_size > 0
    # The paper's claims are judged on the other volume's slices too: each claim compares
    # exactly the two rows of the generalisation table it names (paired over all its slices).
    judged = summary["generalisation_claims"]["claims"]
    assert {c["key"] for c in judged} == {c.key for c in invsharp.paper_claims(2)}
    for claim in judged:
        method, baseline = general[claim["method"]], general[claim["baseline"]]
        assert claim["n"] == method[claim["metric"]]["n"]
        np.testing.assert_allclose(claim["method_mean"], method[claim["metric"]]["mean"],
                                   rtol=1e-6)
        np.testing.assert_allclose(claim["mean_difference"],
                                   claim["method_mean"] - claim["baseline_mean"],
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(claim["baseline_mean"], baseline[claim["metric"]]["mean"],
                                   rtol=1e-6)
    for name in ("claims.md", "claims.json", "per_slice.json"):
        assert (workdir / "generalisation" / name).stat().st_size > 0
