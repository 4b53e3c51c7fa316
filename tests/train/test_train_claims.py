"""Claims: paired statistics against hand-checked values, verdicts, regime criterion, seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmri.train import claims as cl
from jaxmri.train.cli import argv_for_seed, experiment_parser, repeat_over_seeds
from jaxmri.train.report import read_per_slice, write_per_slice


# --------------------------------------------------------------------------------------------
# Paired comparison


@pytest.mark.parametrize("diff, expected_p", [
    # Exact two-sided signed-rank p by counting the 2^n sign patterns by hand:
    ([1, 2, 3, 4, 5], 2 / 32),          # W- = 0: only the all-positive pattern (x2 sides)
    ([1, 2, 3, 4, 5, 6], 2 / 64),
    ([1, -2, 3, 4, 5, 6], 6 / 64),      # W- = 2: {}, {1}, {2} have rank sums <= 2 (x2 sides)
    ([-1, -2, -3, -4, -5, -6, -7], 2 / 128),
])
def test_wilcoxon_p_is_the_exact_small_sample_value(diff, expected_p):
    baseline = np.linspace(20.0, 30.0, len(diff))
    result = cl.paired_comparison(baseline + np.asarray(diff, float), baseline)
    np.testing.assert_allclose(result.p_value, expected_p, rtol=1e-12)
    np.testing.assert_allclose(result.mean_difference, np.mean(diff), rtol=1e-12)
    np.testing.assert_allclose(result.method_mean, np.mean(baseline + np.asarray(diff)))
    np.testing.assert_allclose(result.baseline_mean, np.mean(baseline))
    assert result.n == len(diff)


def test_wilcoxon_large_sample_matches_normal_approximation():
    # 60 distinct differences: scipy uses the normal approximation; recompute it by hand.
    rng = np.random.default_rng(3)
    diff = rng.permutation(np.arange(1, 61) * 0.1) * np.where(rng.random(60) < 0.3, -1, 1)
    result = cl.paired_comparison(diff, np.zeros(60))
    ranks = np.argsort(np.argsort(np.abs(diff))) + 1.0
    w_plus = ranks[diff > 0].sum()
    mean, sd = 60 * 61 / 4, np.sqrt(60 * 61 * 121 / 24)
    from math import erfc, sqrt
    expected = erfc(abs(w_plus - mean) / sd / sqrt(2))
    np.testing.assert_allclose(result.p_value, expected, rtol=1e-9)


def test_all_equal_pairs_give_p_one_and_zero_interval():
    x = np.array([0.5, 0.6, 0.7])
    result = cl.paired_comparison(x, x.copy())
    assert result.p_value == 1.0
    assert result.mean_difference == result.ci_low == result.ci_high == 0.0
    assert cl.verdict(result.mean_difference, result.p_value, "higher") == cl.INCONCLUSIVE


def test_bootstrap_interval_of_a_known_shift():
    rng = np.random.default_rng(0)
    baseline = rng.normal(30.0, 2.0, 200)
    shift, noise = 0.4, 0.5
    method = baseline + shift + rng.normal(0.0, noise, 200)
    result = cl.paired_comparison(method, baseline, seed=1)
    assert result.ci_low < shift < result.ci_high        # covers the true mean difference
    assert result.ci_low > 0.0                           # a clear shift excludes 0
    # Its half width is the normal one, 1.96 sd / sqrt(n), within sampling error.
    diff = method - baseline
    half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    np.testing.assert_allclose((result.ci_high - result.ci_low) / 2, half, rtol=0.1)
    # The interval is around the observed mean, and a fixed seed repeats it exactly.
    np.testing.assert_allclose((result.ci_high + result.ci_low) / 2, diff.mean(), atol=0.02)
    assert cl.paired_comparison(method, baseline, seed=1) == result
    assert cl.paired_comparison(method, baseline, seed=2).ci_low != result.ci_low


def test_bootstrap_interval_coverage_near_95_percent():
    # 300 synthetic paired samples of 40 slices with true mean difference 0.2: the percentile
    # interval should cover 0.2 about 95 % of the time (a bit less at n = 40).
    rng = np.random.default_rng(11)
    covered = 0
    for trial in range(300):
        baseline = rng.normal(0.8, 0.05, 40)
        method = baseline + 0.2 + rng.normal(0.0, 0.3, 40)
        r = cl.paired_comparison(method, baseline, seed=trial, n_bootstrap=2000)
        covered += r.ci_low <= 0.2 <= r.ci_high
    assert 0.89 <= covered / 300 <= 0.99


def test_bad_pairs_are_named():
    with pytest.raises(ValueError, match="one length"):
        cl.paired_comparison(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        cl.paired_comparison(np.array([1.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="n_bootstrap"):
        cl.paired_comparison(np.zeros(3), np.ones(3), n_bootstrap=0)
    with pytest.raises(ValueError, match="direction"):
        cl.Claim("x", "PSNR", "a", "b", "better", "")
    with pytest.raises(ValueError, match="itself"):
        cl.Claim("x", "PSNR", "a", "a", "higher", "")


# --------------------------------------------------------------------------------------------
# Verdicts


def _per_slice():
    rng = np.random.default_rng(5)
    base = rng.normal(25.0, 2.0, 30)
    return {
        "baseline": {"PSNR": base, "LPIPS": rng.uniform(0.1, 0.3, 30)},
        # clearly above on PSNR; LPIPS clearly below (better)
        "better": {"PSNR": base + 1.0 + rng.normal(0, 0.3, 30),
                   "LPIPS": rng.uniform(0.05, 0.08, 30)},
        # clearly below on PSNR
        "worse": {"PSNR": base - 1.0 + rng.normal(0, 0.3, 30), "LPIPS": rng.uniform(0.1, 0.3, 30)},
        # the same up to symmetric noise
        "same": {"PSNR": base + rng.normal(0, 0.3, 30) * np.resize([1, -1], 30),
                 "LPIPS": rng.uniform(0.1, 0.3, 30)},
    }


def test_three_verdicts_on_constructed_data():
    per_slice = _per_slice()
    claims = [
        cl.Claim("better above baseline", "PSNR", "better", "baseline", "higher", "+1 dB"),
        cl.Claim("worse above baseline", "PSNR", "worse", "baseline", "higher", "+1 dB"),
        cl.Claim("same above baseline", "PSNR", "same", "baseline", "higher", "+1 dB"),
        cl.Claim("better has lower LPIPS", "LPIPS", "better", "baseline", "lower", "0.06"),
    ]
    results = cl.judge_claims(claims, per_slice)
    assert [r.verdict for r in results] == [cl.REPRODUCED, cl.CONTRADICTED, cl.INCONCLUSIVE,
                                            cl.REPRODUCED]
    (lower,) = cl.judge_claims(
        [cl.Claim("worse has lower PSNR", "PSNR", "worse", "baseline", "lower", "-1 dB")],
        per_slice)
    assert lower.verdict == cl.REPRODUCED
    assert results[2].comparison.p_value > 0.05
    assert results[0].comparison.p_value < 1e-6
    np.testing.assert_allclose(results[1].comparison.mean_difference,
                               np.mean(per_slice["worse"]["PSNR"] - per_slice["baseline"]["PSNR"]))


@pytest.mark.parametrize("diff, p, direction, expected", [
    (0.5, 0.049, "higher", cl.REPRODUCED),
    (0.5, 0.05, "higher", cl.INCONCLUSIVE),       # p must be strictly below alpha
    (-0.5, 0.01, "higher", cl.CONTRADICTED),
    (-0.5, 0.01, "lower", cl.REPRODUCED),
    (0.5, 0.01, "lower", cl.CONTRADICTED),
    (0.0, 0.01, "higher", cl.INCONCLUSIVE),
    (0.5, float("nan"), "higher", cl.INCONCLUSIVE),
])
def test_verdict_rule(diff, p, direction, expected):
    assert cl.verdict(diff, p, direction) == expected


def test_judge_claims_names_missing_rows_and_metrics():
    per_slice = _per_slice()
    with pytest.raises(ValueError, match="'nope'"):
        cl.judge_claims([cl.Claim("t", "PSNR", "nope", "baseline", "higher", "")], per_slice)
    with pytest.raises(ValueError, match="SSIM"):
        cl.judge_claims([cl.Claim("t", "SSIM", "better", "baseline", "higher", "")], per_slice)
    twice = cl.Claim("t", "PSNR", "better", "baseline", "higher", "")
    with pytest.raises(ValueError, match="distinct"):
        cl.judge_claims([twice, twice], per_slice)


# --------------------------------------------------------------------------------------------
# Regime


@pytest.mark.parametrize("ours_psnr, ours_ssim, expected", [
    (25.0, 0.655, True),     # exactly 3 dB and 0.05 away: inclusive
    (19.0, 0.555, True),
    (25.01, 0.60, False),    # 3.01 dB
    (22.0, 0.6551, False),   # 0.0501 SSIM
    (22.0, 0.5549, False),
])
def test_regime_criterion_boundaries(ours_psnr, ours_ssim, expected):
    assert cl.within_regime(ours_psnr, 22.0, ours_ssim, 0.605) is expected


def test_regime_criterion_without_paper_ssim():
    assert cl.within_regime(34.9, 32.46, None, None)  # RecNet of paper 003: no SSIM
    assert not cl.within_regime(35.5, 32.46, 0.9, None)
    with pytest.raises(ValueError, match="PSNR or SSIM"):
        cl.within_regime(30.0, None, 0.5, None)


def test_regime_table_values(tmp_path):
    per_slice = {"ZF": {"PSNR": np.array([20.0, 22.0, 24.0]), "SSIM": np.array([0.5, 0.6, 0.7])},
                 "Bicubic": {"PSNR": np.array([26.0, 26.0]), "SSIM": np.array([0.6, 0.7])}}
    rows = [cl.RegimeRow("ZF", "ZF+EDSR (Table 2)", 22.2, 0.601),
            cl.RegimeRow("Bicubic", "Bicubic (Table 2)", 22.2, None, note="no SSIM"),
            cl.RegimeRow("ZF", "none: the paper has no zero-filled row", None, None)]
    entries = cl.regime_table(rows, per_slice)
    np.testing.assert_allclose(entries[0]["ours_psnr"], 22.0)
    np.testing.assert_allclose(entries[0]["ours_psnr_sd"], 2.0)
    np.testing.assert_allclose(entries[0]["delta_psnr"], -0.2)
    np.testing.assert_allclose(entries[0]["delta_ssim"], -0.001)
    assert entries[0]["in_regime"] is True and entries[0]["n"] == 3
    np.testing.assert_allclose(entries[1]["delta_psnr"], 3.8)
    assert entries[1]["delta_ssim"] is None and entries[1]["in_regime"] is False
    assert entries[2]["in_regime"] is None and entries[2]["ours_ssim"] == 0.6
    cl.write_regime(entries, tmp_path)
    saved = json.loads((tmp_path / "regime.json").read_text())
    assert saved["rows"][1]["in_regime"] is False
    text = (tmp_path / "regime.md").read_text()
    assert "| Bicubic | Bicubic (Table 2) | 22.20 | 26.00 ± 0.00 | +3.80 | n.s." in text
    assert "n.a. (no paper number)" in text


# --------------------------------------------------------------------------------------------
# Writers


def test_report_claims_files_recompute_from_per_slice_json(tmp_path, capsys):
    per_slice = _per_slice()
    claims = [cl.Claim("better above baseline", "PSNR", "better", "baseline", "higher", "+1 dB"),
              cl.Claim("better has lower LPIPS", "LPIPS", "better", "baseline", "lower", "0.06")]
    regime = [cl.RegimeRow("baseline", "paper's baseline", 25.0, None)]
    out = cl.report_claims(claims, per_slice, tmp_path, regime=regime, seed=3)
    printed = capsys.readouterr().out
    assert "better above baseline" in printed and "paper's baseline" in printed
    saved = json.loads((tmp_path / "claims.json").read_text())
    assert saved["bootstrap_seed"] == 3 and saved["claims"] == out["claims"]
    values = read_per_slice(tmp_path / "per_slice.json")
    for entry in saved["claims"]:
        again = cl.paired_comparison(values[entry["method"]][entry["metric"]],
                                     values[entry["baseline"]][entry["metric"]],
                                     seed=saved["bootstrap_seed"],
                                     n_bootstrap=saved["n_bootstrap"])
        for field in ("mean_difference", "ci_low", "ci_high", "p_value", "method_mean"):
            assert entry[field] == getattr(again, field)
        assert entry["verdict"] == cl.REPRODUCED
    md = (tmp_path / "claims.md").read_text()
    assert md.count("**reproduced**") == 2
    assert json.loads((tmp_path / "regime.json").read_text())["rows"][0]["row"] == "baseline"


def test_per_slice_json_round_trips_float32_exactly(tmp_path):
    values = np.random.default_rng(0).normal(size=7).astype(np.float32)
    write_per_slice({"a": {"PSNR": values}}, tmp_path)
    back = read_per_slice(tmp_path / "per_slice.json")["a"]["PSNR"]
    assert np.array_equal(back, values.astype(np.float64))


def test_setting_rows():
    flat = cl.setting_rows({"radial20": {"IFR-Net": {"PSNR": [1.0]}},
                            "2d_random": {"IFR-Net": {"PSNR": [2.0]}}})
    assert flat == {"radial20: IFR-Net": {"PSNR": [1.0]}, "2d_random: IFR-Net": {"PSNR": [2.0]}}


# --------------------------------------------------------------------------------------------
# Seeds


def _fake_experiment(shifts):
    """A run function whose method beats the baseline by ``shifts[seed]`` dB on 12 slices."""
    calls = []

    def run_one(seed, workdir):
        calls.append((seed, workdir))
        rng = np.random.default_rng(seed)
        base = rng.normal(30.0, 1.0, 12)
        per_slice = {"baseline": {"PSNR": base, "SSIM": np.full(12, 0.8)},
                     "method": {"PSNR": base + shifts[seed] + rng.normal(0, 0.1, 12),
                                "SSIM": np.full(12, 0.8) + shifts[seed] / 100}}
        claims = [cl.Claim("method above baseline", "PSNR", "method", "baseline", "higher",
                           "+1 dB")]
        regime = [cl.RegimeRow("baseline", "paper baseline", 31.0, 0.8)]
        cl.report_claims(claims, per_slice, workdir, regime=regime, seed=seed)

    return run_one, calls


def test_run_over_seeds_counts_seeds_where_a_claim_holds(tmp_path):
    shifts = {0: 1.0, 1: -1.0, 2: 1.0, 5: 0.0}
    run_one, calls = _fake_experiment(shifts)
    out = cl.run_over_seeds(run_one, [0, 1, 2, 5], tmp_path)
    assert calls == [(s, tmp_path / f"seed{s}") for s in (0, 1, 2, 5)]
    (claim,) = out["claims"]["claims"]
    assert (claim["reproduced"], claim["contradicted"], claim["inconclusive"]) == (2, 1, 1)
    assert claim["seeds_run"] == 4
    for seed in (0, 1, 2, 5):
        per_seed = json.loads((tmp_path / f"seed{seed}" / "claims.json").read_text())["claims"][0]
        assert claim["per_seed"][str(seed)]["mean_difference"] == per_seed["mean_difference"]
        assert claim["per_seed"][str(seed)]["p_value"] == per_seed["p_value"]
    np.testing.assert_allclose(claim["per_seed"]["1"]["mean_difference"], -1.0, atol=0.1)
    saved = json.loads((tmp_path / "claims_over_seeds.json").read_text())
    assert saved == out["claims"]
    md = (tmp_path / "claims_over_seeds.md").read_text()
    assert "**2/4** seeds" in md and "1/4 seeds" in md
    regime = json.loads((tmp_path / "regime_over_seeds.json").read_text())
    assert regime["rows"][0]["in_regime_seeds"] == 4  # 30 +- noise vs 31: within 3 dB


def test_run_over_seeds_needs_claims_and_valid_seeds(tmp_path):
    with pytest.raises(FileNotFoundError, match="seed 0"):
        cl.run_over_seeds(lambda seed, wd: None, [0], tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        cl.run_over_seeds(lambda seed, wd: None, [1, 1], tmp_path)
    with pytest.raises(ValueError, match=">= 0"):
        cl.run_over_seeds(lambda seed, wd: None, [-1], tmp_path)


def _separate_runs(tmp_path, shifts, flags=None):
    """One folder per seed, as separate jobs leave them: run.json (experiment "demo", preset
    "cpu") and the claims of ``_fake_experiment``."""
    import argparse

    from jaxmri.train.run_record import write_run_record

    run_one, _ = _fake_experiment(shifts)
    folders = []
    for seed in shifts:
        folder = tmp_path / f"job{seed}"
        folder.mkdir(parents=True)
        run_one(seed, folder)
        args = argparse.Namespace(experiment="demo", preset="cpu", seed=seed, steps=400,
                                  **(flags or {}).get(seed, {}))
        write_run_record(folder, args)
        folders.append(folder)
    return folders


def test_combine_runs_equals_the_seeds_run_and_adds_the_spread_over_seeds(tmp_path):
    shifts = {2: 1.0, 0: -1.0, 1: 0.5}
    folders = _separate_runs(tmp_path / "jobs", shifts)
    out = cl.combine_runs(folders, tmp_path / "combined", experiment="demo")
    run_one, _ = _fake_experiment(shifts)
    together = cl.run_over_seeds(run_one, list(shifts), tmp_path / "together")
    (claim,) = out["claims"]["claims"]
    (same,) = together["claims"]["claims"]
    assert out["claims"]["seeds"] == [2, 0, 1]
    assert claim["per_seed"] == same["per_seed"]
    assert (claim["reproduced"], claim["contradicted"]) == (2, 1)
    assert out["regime"] == together["regime"]
    assert out["claims"]["runs"] == {str(s): str(f) for s, f in zip(shifts, folders)}
    # The spread over seeds, from the per-seed files by hand: mean and sample sd (n - 1).
    diffs = [json.loads((f / "claims.json").read_text())["claims"][0]["mean_difference"]
             for f in folders]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    np.testing.assert_allclose([claim["mean_over_seeds"], claim["sd_over_seeds"]], [mean, sd],
                               rtol=1e-12)
    np.testing.assert_allclose(mean, 0.5 / 3, atol=0.1)
    # 95 % t-interval with 2 degrees of freedom: t(0.975, 2) = 4.302652729911275 (tables).
    half = 4.302652729911275 * sd / 3 ** 0.5
    np.testing.assert_allclose(claim["ci_over_seeds"], [mean - half, mean + half], rtol=1e-9)
    assert claim["ci_over_seeds"][0] < 0 < claim["ci_over_seeds"][1]  # -1, +0.5, +1: no verdict
    md = (tmp_path / "combined" / "claims_over_seeds.md").read_text()
    lo, hi = claim["ci_over_seeds"]
    assert f"{mean:+.4g} ({sd:.2g}) [{lo:+.3g}, {hi:+.3g}]" in md and "**2/3** seeds" in md
    assert json.loads((tmp_path / "combined" / "claims_over_seeds.json").read_text()) == out[
        "claims"]
    assert (tmp_path / "combined" / "regime_over_seeds.md").exists()
    # Every job here ran in this process: one environment, named under the table.
    from jaxmri.train.run_record import run_environment

    here = run_environment()
    assert out["claims"]["environments"] == {str(s): here for s in shifts}
    assert f"Every seed ran on: {cl.describe_environment(here)}." in md
    # One seed has no spread.
    single = cl.combine_runs(folders[:1], tmp_path / "one")["claims"]["claims"][0]
    assert single["sd_over_seeds"] is None and single["ci_over_seeds"] is None
    assert single["mean_over_seeds"] == diffs[0]


def test_combine_runs_refuses_runs_of_different_settings(tmp_path):
    from jaxmri.errors import UserInputError

    folders = _separate_runs(tmp_path, {0: 1.0, 1: 1.0, 2: 1.0}, {2: {"masks": ["radial10"]}})
    cl.combine_runs(folders[:2], tmp_path / "ok")
    with pytest.raises(UserInputError, match=r"job2 ran --masks \['radial10'\] and .*job0 ran "
                                             r"None: combine runs that differ only in --seed"):
        cl.combine_runs(folders, tmp_path / "out")
    # A record from before --masks existed reads as the flag's default, when one is given.
    with pytest.raises(UserInputError, match="--masks"):
        cl.combine_runs(folders[1:], tmp_path / "out", flag_defaults={"masks": ("radial20",)})
    cl.combine_runs(folders[1:], tmp_path / "both", flag_defaults={"masks": ("radial10",)})
    with pytest.raises(UserInputError, match="trained by experiments.demo, not experiments.other"):
        cl.combine_runs(folders[:2], tmp_path / "out", experiment="other")
    with pytest.raises(UserInputError, match="job0 and .*job0 are both runs of seed 0"):
        cl.combine_runs([folders[0], folders[0]], tmp_path / "out")
    with pytest.raises(UserInputError, match="at least one"):
        cl.combine_runs([], tmp_path / "out")
    (folders[1] / "claims.json").unlink()
    with pytest.raises(UserInputError, match="job1 has no claims.json: its run did not finish"):
        cl.combine_runs(folders[:2], tmp_path / "out")
    (folders[1] / "claims.json").write_text("{not json")
    with pytest.raises(UserInputError, match="claims.json is not valid JSON"):
        cl.combine_runs(folders[:2], tmp_path / "out")
    with pytest.raises(UserInputError, match="nowhere does not exist: name the --workdir of a "):
        cl.combine_runs([folders[0], tmp_path / "nowhere"], tmp_path / "out")
    with pytest.raises(UserInputError, match="holds no trained model"):
        cl.combine_runs([folders[0], tmp_path], tmp_path / "out")
    # Same flags but other claims judged (e.g. an older version of the experiment).
    payload = json.loads((folders[0] / "claims.json").read_text())
    payload["claims"][0]["key"] = "renamed"
    (folders[1] / "claims.json").write_text(json.dumps(payload))
    with pytest.raises(UserInputError, match="cannot be combined: seed 1 judged claims"):
        cl.combine_runs(folders[:2], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_seeds_flag_and_argv_for_seed(tmp_path):
    parser = experiment_parser("Demo.", presets={"cpu": object()}, name="demo")
    assert parser.parse_args([]).seeds is None
    assert parser.parse_args(["--seeds", "0,1,2"]).seeds == (0, 1, 2)
    for bad in ("0,0", "a,1", "-1,2", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(["--seeds", bad])
    argv = ["--preset", "cpu", "--seeds=0,1", "--seed", "7", "--workdir", "x", "--steps", "3"]
    assert argv_for_seed(argv, 1, tmp_path / "seed1") == [
        "--preset", "cpu", "--steps", "3", "--seed", "1", "--workdir", str(tmp_path / "seed1")]


def test_repeat_over_seeds_calls_main_per_seed(tmp_path):
    parser = experiment_parser("Demo.", presets={"cpu": object()}, name="demo")
    run_one, _ = _fake_experiment({3: 1.0, 4: 1.0})
    seen = []

    def main(argv):
        args = parser.parse_args(argv)
        if args.seeds is not None:
            return repeat_over_seeds(main, argv, args)
        seen.append((args.seed, args.workdir))
        run_one(args.seed, args.workdir)
        return "one run"

    # Without --seeds: unchanged, one run.
    assert main(["--seed", "3", "--workdir", str(tmp_path / "single")]) == "one run"
    assert seen == [(3, tmp_path / "single")]
    out = main(["--seeds", "3,4", "--workdir", str(tmp_path)])
    assert seen[1:] == [(3, tmp_path / "seed3"), (4, tmp_path / "seed4")]
    assert out["claims"]["claims"][0]["reproduced"] == 2
    args = parser.parse_args(["--seeds", "1", "--coordinator", "h:1"])
    with pytest.raises(ValueError, match="--coordinator"):
        repeat_over_seeds(main, [], args)


def test_combine_runs_says_when_the_seeds_ran_on_different_machines(tmp_path):
    """A run from another CPU type (or from before run.json recorded its environment) is still
    combined, and the table says which seed ran where."""
    shifts = {0: 1.0, 1: 0.5}
    folders = _separate_runs(tmp_path / "jobs", shifts)
    record = json.loads((folders[1] / "run.json").read_text())
    other = dict(record["environment"], cpu="AMD EPYC 9B14", cpu_flags=["avx2", "fma"])
    (folders[1] / "run.json").write_text(json.dumps(dict(record, environment=other)))
    out = cl.combine_runs(folders, tmp_path / "combined", experiment="demo")
    md = (tmp_path / "combined" / "claims_over_seeds.md").read_text()
    jax_version = record["environment"]["packages"]["jax"]
    assert (f"seed 1: AMD EPYC 9B14 [avx2 fma], {other['devices']}, jax {jax_version}"
            in md)
    assert "The seeds ran in 2 environments (seed 0: " in md
    assert out["claims"]["environments"]["1"]["cpu"] == "AMD EPYC 9B14"
    del record["environment"]
    (folders[1] / "run.json").write_text(json.dumps(record))
    cl.combine_runs(folders, tmp_path / "legacy", experiment="demo")
    assert "seed 1: not recorded" in (tmp_path / "legacy" / "claims_over_seeds.md").read_text()
    # A hand-edited environment that is not a mapping is described, not a traceback.
    (folders[1] / "run.json").write_text(json.dumps(dict(record, environment="my laptop")))
    cl.combine_runs(folders, tmp_path / "edited", experiment="demo")
    assert "seed 1: not recorded" in (tmp_path / "edited" / "claims_over_seeds.md").read_text()
    assert cl.describe_environment({"cpu": "X", "cpu_flags": "avx2", "packages": None}) == (
        "X, unknown devices, jax ?")
