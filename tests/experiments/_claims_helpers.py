"""Checks shared by the experiment tests: a run's claims.json and regime.json hold exactly the
defined claims and rows, and their numbers are the statistics of that run's per_slice.json,
recomputed here independently of jaxmri.train.claims (numpy and scipy only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats


def assert_claims_recompute(workdir: Path, claims, regime_rows=()) -> dict:
    """Assert the files of ``workdir`` against ``claims`` (and ``regime_rows``); return them."""
    saved = json.loads((workdir / "claims.json").read_text())
    values = {row: {m: np.asarray(v, np.float64) for m, v in metrics.items()}
              for row, metrics in json.loads((workdir / "per_slice.json").read_text()).items()}
    assert [c["key"] for c in saved["claims"]] == [
        f"{c.method} vs {c.baseline}: {c.metric}" for c in claims]
    assert len(saved["claims"]) == len(claims) > 0
    for entry, claim in zip(saved["claims"], claims, strict=True):
        assert (entry["method"], entry["baseline"], entry["metric"], entry["direction"]) == (
            claim.method, claim.baseline, claim.metric, claim.direction)
        a, b = values[claim.method][claim.metric], values[claim.baseline][claim.metric]
        assert a.shape == b.shape and entry["n"] == a.size
        diff = a - b
        np.testing.assert_allclose(entry["mean_difference"], diff.mean(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(entry["method_mean"], a.mean(), rtol=1e-12)
        np.testing.assert_allclose(entry["baseline_mean"], b.mean(), rtol=1e-12)
        p = 1.0 if np.all(diff == 0) else stats.wilcoxon(a, b).pvalue
        np.testing.assert_allclose(entry["p_value"], p, rtol=1e-9)
        rng = np.random.default_rng(saved["bootstrap_seed"])
        means = diff[rng.integers(0, diff.size, (saved["n_bootstrap"], diff.size))].mean(1)
        np.testing.assert_allclose([entry["ci_low"], entry["ci_high"]],
                                   np.quantile(means, [0.025, 0.975]), rtol=1e-12, atol=1e-15)
        sign = 1 if claim.direction == "higher" else -1
        if p < 0.05 and diff.mean() != 0:
            expected = "reproduced" if np.sign(diff.mean()) == sign else "contradicted"
        else:
            expected = "inconclusive"
        assert entry["verdict"] == expected
    regime = json.loads((workdir / "regime.json").read_text())["rows"] if regime_rows else []
    assert [e["row"] for e in regime] == [r.row for r in regime_rows]
    for entry, row in zip(regime, regime_rows, strict=True):
        psnr = values[row.row]["PSNR"].mean()
        np.testing.assert_allclose(entry["ours_psnr"], psnr, rtol=1e-12)
        checks = []
        if row.paper_psnr is not None:
            checks.append(abs(psnr - row.paper_psnr) <= 3.0 + 1e-9)
        if row.paper_ssim is not None:
            ssim = values[row.row]["SSIM"].mean()
            np.testing.assert_allclose(entry["ours_ssim"], ssim, rtol=1e-12)
            checks.append(abs(ssim - row.paper_ssim) <= 0.05 + 1e-9)
        assert entry["in_regime"] == (all(checks) if checks else None)
    return {"claims": saved, "regime": regime}
