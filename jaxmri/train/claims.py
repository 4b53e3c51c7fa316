"""A paper's headline claims judged on paired per-slice metrics, and the regime of its baselines.

Input convention (as in :mod:`jaxmri.train.report`): ``per_slice[row][metric]`` is a 1-D array
with one value per test slice; the rows compared in a claim hold the same slices in the same
order. Experiments with several settings (masks, rates) name their rows ``"<setting>: <row>"``
(:func:`setting_rows`). Differences are always ``method - baseline``.

How a :class:`Claim` is judged (:func:`judge_claims`):

* **mean difference** over the slices, and its **95 % bootstrap interval**: the percentile
  interval of the means of ``n_bootstrap`` resamples of the per-slice differences, drawn with
  replacement by ``numpy.random.default_rng(seed)`` (so a run's table is reproducible);
* **Wilcoxon signed-rank p** (two-sided, :func:`scipy.stats.wilcoxon` defaults: zero
  differences dropped, exact distribution for up to 50 slices without ties, normal
  approximation otherwise); p = 1 when every difference is zero;
* **verdict**: ``reproduced`` when the mean difference has the sign the paper reports and
  p < ``alpha`` (0.05); ``contradicted`` when it has the opposite sign and p < ``alpha``;
  ``inconclusive`` otherwise (including a zero mean difference).

The **regime table** (:func:`regime_table`) compares the rows that are not the paper's method
with the paper's own numbers for them: the row is *in the paper's regime* when our mean PSNR is
within 3 dB and our mean SSIM within 0.05 of the paper's (both inclusive; a metric the paper
does not give is not checked).

:func:`report_claims` writes ``per_slice.json`` (the values judged), ``claims.md/.json`` and
``regime.md/.json`` into a run's workdir and prints both tables; :func:`run_over_seeds` runs a
whole experiment once per seed in ``<workdir>/seed<k>/`` and writes ``claims_over_seeds.md/.json``
(in how many seeds each claim is reproduced) and ``regime_over_seeds.md/.json``;
:func:`combine_runs` writes the same tables from runs that finished separately (one job per seed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import stats

from jaxmri.errors import UserInputError
from jaxmri.train.report import markdown_grid, write_per_slice, write_table
from jaxmri.train.run_record import flag_json_value, read_run_record

__all__ = [
    "Claim",
    "ClaimResult",
    "PairedComparison",
    "RegimeRow",
    "REPRODUCED",
    "CONTRADICTED",
    "INCONCLUSIVE",
    "PSNR_TOLERANCE_DB",
    "SSIM_TOLERANCE",
    "paired_comparison",
    "verdict",
    "judge_claims",
    "claims_markdown",
    "write_claims",
    "within_regime",
    "regime_table",
    "write_regime",
    "report_claims",
    "setting_rows",
    "aggregate_claims",
    "aggregate_regime",
    "run_over_seeds",
    "write_over_seeds",
    "combine_runs",
    "describe_environment",
]

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
PSNR_TOLERANCE_DB = 3.0
SSIM_TOLERANCE = 0.05
# Deltas are differences of decimal numbers typed from papers: 0.655 - 0.605 is
# 0.05000000000000004 in binary, which must still count as "within 0.05".
_ROUNDING = 1e-9

Direction = Literal["higher", "lower"]


@dataclasses.dataclass(frozen=True)
class Claim:
    """One headline claim of a paper: ``method`` is ``direction`` than ``baseline`` on ``metric``.

    Attributes:
      text: the claim in words, e.g. ``"DSGAN+EDSR above GB+EDSR"``.
      metric: the per-slice metric name, e.g. ``"PSNR"``.
      method, baseline: row names in the experiment's per-slice results.
      direction: ``"higher"`` when the paper reports the method's value above the baseline's,
        ``"lower"`` when below (LPIPS "better", or a PSNR the paper admits is lower).
      paper: the paper's numbers as text, e.g. ``"22.3 vs 19.5 dB (Table 2)"``.
    """

    text: str
    metric: str
    method: str
    baseline: str
    direction: Direction
    paper: str

    def __post_init__(self):
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"direction must be 'higher' or 'lower', got {self.direction!r}")
        if self.method == self.baseline:
            raise ValueError(f"claim {self.text!r} compares row {self.method!r} with itself")

    @property
    def key(self) -> str:
        """``"<method> vs <baseline>: <metric>"``, the claim's identity across seeds."""
        return f"{self.method} vs {self.baseline}: {self.metric}"


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Paired statistics of ``method - baseline`` over ``n`` slices (float64 throughout)."""

    n: int
    method_mean: float
    baseline_mean: float
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    """A claim, its paired comparison and the verdict."""

    claim: Claim
    comparison: PairedComparison
    verdict: str

    def as_dict(self) -> dict:
        """The claim's fields, its ``key``, the comparison's numbers and the verdict, flat."""
        return {**dataclasses.asdict(self.claim), "key": self.claim.key,
                **dataclasses.asdict(self.comparison), "verdict": self.verdict}


def _paired_arrays(method_values, baseline_values) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(method_values, np.float64)
    b = np.asarray(baseline_values, np.float64)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values must be two non-empty 1-D arrays of one length, got "
                         f"shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired values contain non-finite entries")
    return a, b


def paired_comparison(
    method_values: np.ndarray,
    baseline_values: np.ndarray,
    *,
    seed: int = 0,
    n_bootstrap: int = 10_000,
    confidence: float = 0.95,
) -> PairedComparison:
    """Mean of ``method - baseline``, its percentile bootstrap interval and the Wilcoxon p.

    Args:
      method_values, baseline_values: ``(N,)`` per-slice values of the same N slices.
      seed: seed of the ``numpy.random.Generator`` that draws the bootstrap resamples.
      n_bootstrap: number of resamples (each of N slices drawn with replacement).
      confidence: coverage of the interval, e.g. 0.95 for the 2.5 % and 97.5 % quantiles.
    """
    a, b = _paired_arrays(method_values, baseline_values)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if isinstance(n_bootstrap, bool) or int(n_bootstrap) != n_bootstrap or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive integer, got {n_bootstrap!r}")
    diff = a - b
    rng = np.random.default_rng(seed)
    resampled = diff[rng.integers(0, diff.size, size=(int(n_bootstrap), diff.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    if np.all(diff == 0.0):
        p_value = 1.0  # scipy divides by a zero variance here
    else:
        p_value = float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    return PairedComparison(
        n=int(diff.size), method_mean=float(a.mean()), baseline_mean=float(b.mean()),
        mean_difference=float(diff.mean()), ci_low=float(low), ci_high=float(high),
        p_value=p_value)


def verdict(mean_difference: float, p_value: float, direction: Direction, *,
            alpha: float = 0.05) -> str:
    """``reproduced`` / ``contradicted`` / ``inconclusive`` (rule in the module docstring)."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    if not (p_value < alpha) or mean_difference == 0.0:
        return INCONCLUSIVE
    expected_sign = 1.0 if direction == "higher" else -1.0
    return REPRODUCED if math.copysign(1.0, mean_difference) == expected_sign else CONTRADICTED


def _values(per_slice: Mapping, row: str, metric: str) -> np.ndarray:
    if row not in per_slice:
        raise ValueError(f"row {row!r} is not in the per-slice results (rows: {list(per_slice)})")
    if metric not in per_slice[row]:
        raise ValueError(f"row {row!r} has no metric {metric!r} (it has {list(per_slice[row])})")
    return np.asarray(per_slice[row][metric], np.float64)


def judge_claims(
    claims: Sequence[Claim],
    per_slice: Mapping[str, Mapping[str, np.ndarray]],
    *,
    seed: int = 0,
    n_bootstrap: int = 10_000,
    alpha: float = 0.05,
) -> list[ClaimResult]:
    """Judge every claim on ``per_slice`` (one bootstrap generator seeded ``seed`` per claim)."""
    if not claims:
        raise ValueError("claims must hold at least one Claim")
    keys = [c.key for c in claims]
    if len(set(keys)) != len(keys):
        raise ValueError(f"claims must be distinct (method, baseline, metric), got {keys}")
    results = []
    for claim in claims:
        comparison = paired_comparison(
            _values(per_slice, claim.method, claim.metric),
            _values(per_slice, claim.baseline, claim.metric),
            seed=seed, n_bootstrap=n_bootstrap)
        results.append(ClaimResult(claim, comparison, verdict(
            comparison.mean_difference, comparison.p_value, claim.direction, alpha=alpha)))
    return results


def _num(value: float) -> str:
    return f"{value:.4g}"


def claims_markdown(results: Sequence[ClaimResult], *, title: str | None = None) -> str:
    """The claims table: one row per claim with the paper's and our numbers and the verdict."""
    columns = ["claim", "metric", "paper", "ours: method / baseline", "expected diff.",
               "mean diff. [95 % CI]", "Wilcoxon p", "n", "verdict"]
    rows = []
    for r in results:
        c, s = r.claim, r.comparison
        rows.append([
            c.text, c.metric, c.paper, f"{_num(s.method_mean)} / {_num(s.baseline_mean)}",
            "> 0" if c.direction == "higher" else "< 0",
            f"{s.mean_difference:+.4g} [{s.ci_low:+.4g}, {s.ci_high:+.4g}]",
            f"{s.p_value:.2g}", str(s.n), f"**{r.verdict}**"])
    return markdown_grid(columns, rows, title=title)


def write_claims(
    results: Sequence[ClaimResult],
    workdir: str | os.PathLike,
    *,
    name: str = "claims",
    title: str | None = None,
    seed: int = 0,
    n_bootstrap: int = 10_000,
    alpha: float = 0.05,
) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.json`` into ``workdir``, print the table.

    ``seed``, ``n_bootstrap`` and ``alpha`` are the values the results were judged with; they
    are recorded in the JSON so that the numbers can be recomputed.
    """
    payload = {"alpha": alpha, "bootstrap_seed": seed, "n_bootstrap": n_bootstrap,
               "confidence": 0.95, "claims": [r.as_dict() for r in results]}
    title = title or (f"Paper claims: paired over test slices (Wilcoxon signed-rank, "
                      f"bootstrap 95 % CI); verdict at p < {alpha}")
    return write_table(claims_markdown(results, title=title), payload, workdir, name)


# --------------------------------------------------------------------------------------------
# Regime
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegimeRow:
    """A row that is not the paper's method, with the paper's numbers for it.

    Attributes:
      row: our row name in the per-slice results.
      paper_row: the paper's row (and table) we compare with, e.g. ``"Bicubic (Table 2)"``.
      paper_psnr, paper_ssim: the paper's means; ``None`` where the paper gives none (with
        both ``None`` the row shows our numbers only and ``in_regime`` is ``None``: a row the
        paper lacks, e.g. zero-filling, still tells how hard our setting is).
      note: why this paper row stands for ours, where they differ.
    """

    row: str
    paper_row: str
    paper_psnr: float | None
    paper_ssim: float | None
    note: str = ""


def within_regime(ours_psnr: float, paper_psnr: float | None, ours_ssim: float | None,
                  paper_ssim: float | None, *, psnr_tolerance: float = PSNR_TOLERANCE_DB,
                  ssim_tolerance: float = SSIM_TOLERANCE) -> bool:
    """True when every metric the paper gives is within its tolerance (inclusive) of ours."""
    if paper_psnr is None and paper_ssim is None:
        raise ValueError("a regime row needs the paper's PSNR or SSIM")
    ok = True
    if paper_psnr is not None:
        ok &= abs(ours_psnr - paper_psnr) <= psnr_tolerance + _ROUNDING
    if paper_ssim is not None:
        if ours_ssim is None:
            raise ValueError("the paper gives an SSIM but ours is missing")
        ok &= abs(ours_ssim - paper_ssim) <= ssim_tolerance + _ROUNDING
    return bool(ok)


def regime_table(rows: Sequence[RegimeRow],
                 per_slice: Mapping[str, Mapping[str, np.ndarray]]) -> list[dict]:
    """Per row: the paper's and our mean PSNR/SSIM, the differences and the criterion."""
    out = []
    for r in rows:
        entry: dict = {**dataclasses.asdict(r)}
        for metric, paper in (("PSNR", r.paper_psnr), ("SSIM", r.paper_ssim)):
            values = _values(per_slice, r.row, metric) if (
                paper is not None or metric in per_slice.get(r.row, {})) else None
            key = metric.lower()
            entry[f"ours_{key}"] = None if values is None else float(values.mean())
            entry[f"ours_{key}_sd"] = None if values is None else float(
                values.std(ddof=1) if values.size > 1 else 0.0)
            entry[f"delta_{key}"] = (None if values is None or paper is None
                                     else float(values.mean()) - paper)
        entry["n"] = int(_values(per_slice, r.row, "PSNR").size)
        entry["in_regime"] = None if r.paper_psnr is None and r.paper_ssim is None else (
            within_regime(entry["ours_psnr"], r.paper_psnr, entry["ours_ssim"], r.paper_ssim))
        out.append(entry)
    return out


def _cell(value: float | None, sd: float | None = None, digits: int = 2, sign: bool = False):
    if value is None:
        return "n.s."
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text + (f" ± {sd:.{digits}f}" if sd is not None else "")


def regime_markdown(entries: Sequence[dict], *, title: str | None = None) -> str:
    """The regime table of :func:`regime_table` entries."""
    columns = ["our row", "paper row", "PSNR paper", "PSNR ours", "Δ PSNR", "SSIM paper",
               "SSIM ours", "Δ SSIM",
               f"in regime (|Δ PSNR| ≤ {PSNR_TOLERANCE_DB:g} dB, |Δ SSIM| ≤ {SSIM_TOLERANCE:g})",
               "note"]
    rows = [[e["row"], e["paper_row"], _cell(e["paper_psnr"]),
             _cell(e["ours_psnr"], e["ours_psnr_sd"]), _cell(e["delta_psnr"], sign=True),
             _cell(e["paper_ssim"], digits=3), _cell(e["ours_ssim"], e["ours_ssim_sd"], 3),
             _cell(e["delta_ssim"], digits=3, sign=True),
             {True: "yes", False: "**no**", None: "n.a. (no paper number)"}[e["in_regime"]],
             e["note"]] for e in entries]
    return markdown_grid(columns, rows, title=title)


def write_regime(entries: Sequence[dict], workdir: str | os.PathLike, *, name: str = "regime",
                 title: str | None = None) -> tuple[Path, Path]:
    """Write ``<name>.md`` / ``<name>.json`` of :func:`regime_table` entries, print the table."""
    title = title or ("Regime: rows that are not the paper's method, paper vs ours (mean ± sd "
                      "over test slices)")
    payload = {"psnr_tolerance_db": PSNR_TOLERANCE_DB, "ssim_tolerance": SSIM_TOLERANCE,
               "rows": list(entries)}
    return write_table(regime_markdown(entries, title=title), payload, workdir, name)


def report_claims(
    claims: Sequence[Claim],
    per_slice: Mapping[str, Mapping[str, np.ndarray]],
    workdir: str | os.PathLike,
    *,
    regime: Sequence[RegimeRow] = (),
    seed: int = 0,
    n_bootstrap: int = 10_000,
    alpha: float = 0.05,
    title: str | None = None,
) -> dict:
    """Everything an experiment writes at its end: ``per_slice.json``, the claims table and (when
    ``regime`` rows are given) the regime table; returns ``{'claims': [...], 'regime': [...]}``
    as plain dicts (those of the JSON files)."""
    write_per_slice(per_slice, workdir)
    results = judge_claims(claims, per_slice, seed=seed, n_bootstrap=n_bootstrap, alpha=alpha)
    write_claims(results, workdir, seed=seed, n_bootstrap=n_bootstrap, alpha=alpha, title=title)
    entries = regime_table(regime, per_slice) if regime else []
    if entries:
        write_regime(entries, workdir)
    return {"claims": [r.as_dict() for r in results], "regime": entries}


def setting_rows(per_setting: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> dict:
    """``{setting: {row: metrics}}`` -> ``{"<setting>: <row>": metrics}`` (one flat table)."""
    return {f"{setting}: {row}": metrics
            for setting, rows in per_setting.items() for row, metrics in rows.items()}


# --------------------------------------------------------------------------------------------
# Repeats over seeds
# --------------------------------------------------------------------------------------------


def aggregate_claims(per_seed: Mapping[int, Mapping]) -> dict:
    """Combine the ``claims.json`` payloads of several seeds (``{seed: payload}``).

    Returns ``{'seeds': [...], 'claims': [{<claim fields>, 'per_seed': {seed: {...}},
    'reproduced': k, 'contradicted': k, 'inconclusive': k, 'seeds_run': n,
    'mean_over_seeds': m, 'sd_over_seeds': s, 'ci_over_seeds': [lo, hi]}]}``: ``m`` is the
    mean over seeds of the per-seed mean differences, ``s`` their sample standard deviation and
    ``[lo, hi]`` the 95 % Student-t interval of ``m`` (``m ± t(0.975, n-1) s / sqrt(n)``; both
    ``None`` for one seed). They show the spread that training noise adds to a method's effect,
    which no per-seed test over slices sees: with few seeds the interval is wide, and a paper's
    effect inside it is neither confirmed nor excluded. Claims keep the first seed's order.
    Raises ``ValueError`` when the seeds judged different claims.
    """
    if not per_seed:
        raise ValueError("per_seed must hold at least one seed's claims")
    seeds = list(per_seed)
    first = [c["key"] for c in per_seed[seeds[0]]["claims"]]
    combined = []
    for number, key in enumerate(first):
        entry = {k: v for k, v in per_seed[seeds[0]]["claims"][number].items()
                 if k in ("text", "metric", "method", "baseline", "direction", "paper", "key")}
        entry["per_seed"] = {}
        for seed in seeds:
            by_key = {c["key"]: c for c in per_seed[seed]["claims"]}
            if set(by_key) != set(first):
                raise ValueError(f"seed {seed} judged claims {sorted(by_key)}, seed {seeds[0]} "
                                 f"judged {sorted(first)}")
            c = by_key[key]
            entry["per_seed"][str(seed)] = {k: c[k] for k in (
                "n", "method_mean", "baseline_mean", "mean_difference", "ci_low", "ci_high",
                "p_value", "verdict")}
        verdicts = [s["verdict"] for s in entry["per_seed"].values()]
        for name in (REPRODUCED, CONTRADICTED, INCONCLUSIVE):
            entry[name] = verdicts.count(name)
        entry["seeds_run"] = len(seeds)
        differences = [s["mean_difference"] for s in entry["per_seed"].values()]
        entry["mean_over_seeds"] = float(np.mean(differences))
        entry["sd_over_seeds"] = entry["ci_over_seeds"] = None
        if len(differences) > 1:
            sd = float(np.std(differences, ddof=1))
            half = float(stats.t.ppf(0.975, len(differences) - 1)) * sd / math.sqrt(
                len(differences))
            entry["sd_over_seeds"] = sd
            entry["ci_over_seeds"] = [entry["mean_over_seeds"] - half,
                                      entry["mean_over_seeds"] + half]
        combined.append(entry)
    return {"seeds": [int(s) for s in seeds], "claims": combined}


def aggregate_claims_markdown(aggregate: Mapping, *, title: str | None = None) -> str:
    """One row per claim: per seed ``Δ (p)``, the mean of ``Δ`` over seeds with its sd and
    95 % t-interval, and in how many seeds it is reproduced."""
    seeds = [str(s) for s in aggregate["seeds"]]
    columns = (["claim", "metric", "paper", "expected diff."]
               + [f"seed {s}: mean diff. (p)" for s in seeds]
               + ["mean over seeds (sd) [95 % CI]", "reproduced in", "contradicted in"])
    rows = []
    for c in aggregate["claims"]:
        cells = [c["text"], c["metric"], c["paper"], "> 0" if c["direction"] == "higher" else "< 0"]
        for s in seeds:
            r = c["per_seed"][s]
            cells.append(f"{r['mean_difference']:+.4g} (p={r['p_value']:.2g}, {r['verdict']})")
        # Payloads written before the over-seed statistics existed lack them.
        mean, spread, interval = (c.get(k) for k in (
            "mean_over_seeds", "sd_over_seeds", "ci_over_seeds"))
        cells.append("-" if mean is None else f"{mean:+.4g}" + (
            "" if spread is None else
            f" ({spread:.2g}) [{interval[0]:+.3g}, {interval[1]:+.3g}]"))
        cells += [f"**{c[REPRODUCED]}/{c['seeds_run']}** seeds",
                  f"{c[CONTRADICTED]}/{c['seeds_run']} seeds"]
        rows.append(cells)
    return markdown_grid(columns, rows, title=title)


def aggregate_regime(per_seed: Mapping[int, Mapping]) -> dict:
    """Combine ``regime.json`` payloads of several seeds: our means per seed, and in how many
    seeds each row is in the paper's regime."""
    seeds = list(per_seed)
    rows = []
    for number, first in enumerate(per_seed[seeds[0]]["rows"]):
        entry = {k: first[k] for k in ("row", "paper_row", "paper_psnr", "paper_ssim", "note")}
        entry["per_seed"] = {}
        for seed in seeds:
            other = per_seed[seed]["rows"]
            if [o["row"] for o in other] != [f["row"] for f in per_seed[seeds[0]]["rows"]]:
                raise ValueError(f"seed {seed} has other regime rows than seed {seeds[0]}")
            entry["per_seed"][str(seed)] = {k: other[number][k] for k in (
                "ours_psnr", "ours_ssim", "delta_psnr", "delta_ssim", "in_regime")}
        entry["in_regime_seeds"] = (None if first["in_regime"] is None else
                                    sum(s["in_regime"] for s in entry["per_seed"].values()))
        entry["seeds_run"] = len(seeds)
        rows.append(entry)
    return {"seeds": [int(s) for s in seeds], "rows": rows}


def aggregate_regime_markdown(aggregate: Mapping, *, title: str | None = None) -> str:
    """One row per regime row: our PSNR / SSIM per seed and in how many seeds it is in regime."""
    seeds = [str(s) for s in aggregate["seeds"]]
    columns = (["our row", "paper row", "paper PSNR / SSIM"]
               + [f"seed {s}: ours PSNR / SSIM" for s in seeds] + ["in regime in"])
    rows = []
    for e in aggregate["rows"]:
        cells = [e["row"], e["paper_row"],
                 f"{_cell(e['paper_psnr'])} / {_cell(e['paper_ssim'], digits=3)}"]
        cells += [f"{_cell(e['per_seed'][s]['ours_psnr'])} / "
                  f"{_cell(e['per_seed'][s]['ours_ssim'], digits=3)}" for s in seeds]
        cells.append("n.a." if e["in_regime_seeds"] is None
                     else f"{e['in_regime_seeds']}/{e['seeds_run']} seeds")
        rows.append(cells)
    return markdown_grid(columns, rows, title=title)


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be integers >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return [int(s) for s in seeds]


def run_over_seeds(
    run_one: Callable[[int, Path], object],
    seeds: Sequence[int],
    workdir: str | os.PathLike,
) -> dict:
    """Run ``run_one(seed, workdir / f"seed{seed}")`` per seed, then aggregate their claims.

    ``run_one`` runs the whole experiment and must write ``claims.json`` (e.g. through
    :func:`report_claims`) into the folder it is given; ``regime.json`` is aggregated when every
    seed wrote one. Writes ``claims_over_seeds.md/.json`` (and ``regime_over_seeds.md/.json``)
    into ``workdir``, prints them and returns ``{'claims': aggregate, 'regime': aggregate or
    None}``. Seeds run one after another; an interrupted run resumes per seed folder.
    """
    seeds = _check_seeds(seeds)
    workdir = Path(workdir)
    claims, regimes = {}, {}
    for number, seed in enumerate(seeds):
        folder = workdir / f"seed{seed}"
        print(f"=== seed {seed} ({number + 1} of {len(seeds)}), workdir {folder} ===")
        run_one(seed, folder)
        path = folder / "claims.json"
        if not path.exists():
            raise FileNotFoundError(f"the run of seed {seed} wrote no {path}")
        claims[seed] = json.loads(path.read_text())
        if (folder / "regime.json").exists():
            regimes[seed] = json.loads((folder / "regime.json").read_text())
    return write_over_seeds(claims, regimes, workdir)


def describe_environment(environment: Mapping | None) -> str:
    """One line for a ``run.json`` environment (:func:`jaxmri.train.run_record.run_environment`):
    CPU model [vector extensions], devices, jax version; ``"not recorded"`` for ``None`` or a
    record that is not a mapping (hand-edited), ``?`` for a field it lacks."""
    if not isinstance(environment, Mapping) or not environment:
        return "not recorded"
    flags = environment.get("cpu_flags")
    cpu = str(environment.get("cpu", "unknown CPU")) + (
        f" [{' '.join(map(str, flags))}]" if isinstance(flags, list) and flags else "")
    packages = environment.get("packages")
    jax_version = packages.get("jax", "?") if isinstance(packages, Mapping) else "?"
    return f"{cpu}, {environment.get('devices', 'unknown devices')}, jax {jax_version}"


def _environments_note(seeds: Sequence[int], environments: Mapping[int, Mapping | None]) -> str:
    """A line under the over-seed table saying what the seeds ran on."""
    described = {seed: describe_environment(environments.get(seed)) for seed in seeds}
    kinds = list(dict.fromkeys(described.values()))
    if len(kinds) == 1:
        return f"\nEvery seed ran on: {kinds[0]}.\n"
    listed = "; ".join(f"seed {seed}: {text}" for seed, text in described.items())
    return (f"\nThe seeds ran in {len(kinds)} environments ({listed}): an adversarial training "
            "can take another path on another CPU type or package version.\n")


def write_over_seeds(claims: Mapping[int, Mapping], regimes: Mapping[int, Mapping],
                     workdir: str | os.PathLike, *, runs: Mapping[int, str] | None = None,
                     environments: Mapping[int, Mapping | None] | None = None) -> dict:
    """Aggregate per-seed ``claims.json`` (and ``regime.json``) payloads and write the tables.

    Writes ``claims_over_seeds.md/.json`` into ``workdir`` (created if needed) and, when every
    seed of ``claims`` has a regime payload, ``regime_over_seeds.md/.json``; prints both.
    ``runs`` (``{seed: folder}``), when given, is recorded in the claims JSON as where each
    seed's run lies; ``environments`` (``{seed: run.json environment or None}``), when given,
    as what ran it, and the claims table says whether the seeds ran on one kind of machine.
    Returns ``{'claims': aggregate, 'regime': aggregate or None}``.
    """
    seeds = list(claims)
    label = ", ".join(map(str, seeds))
    aggregate = aggregate_claims(claims)
    if runs is not None:
        aggregate["runs"] = {str(seed): str(runs[seed]) for seed in seeds}
    markdown = aggregate_claims_markdown(
        aggregate, title=f"Paper claims over seeds {label}: per seed the mean difference "
        f"(method - baseline), Wilcoxon p and verdict")
    if environments is not None:
        aggregate["environments"] = {str(seed): environments.get(seed) for seed in seeds}
        markdown += _environments_note(seeds, environments)
    write_table(markdown, aggregate, workdir, "claims_over_seeds")
    regime = None
    if set(regimes) == set(seeds):
        regime = aggregate_regime({seed: regimes[seed] for seed in seeds})
        write_table(aggregate_regime_markdown(
            regime, title=f"Regime over seeds {label}: paper vs our mean "
            f"(in regime: |Δ PSNR| ≤ {PSNR_TOLERANCE_DB:g} dB and |Δ SSIM| ≤ "
            f"{SSIM_TOLERANCE:g})"), regime, workdir, "regime_over_seeds")
    return {"claims": aggregate, "regime": regime}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path} is not valid JSON ({err}); rerun that seed") from None


def combine_runs(folders: Sequence[str | os.PathLike], workdir: str | os.PathLike, *,
                 experiment: str | None = None,
                 flag_defaults: Mapping[str, object] | None = None) -> dict:
    """The over-seed tables of runs that finished separately, e.g. one job per seed.

    Each folder is the ``--workdir`` of a finished run (or a ``seed<k>`` folder of a
    ``--seeds`` run): it holds ``run.json`` and ``claims.json`` (and ``regime.json``). The runs
    must be of the same experiment (``experiment``, when given), preset and flags except
    ``--seed``, and of distinct seeds; their claims are combined as :func:`run_over_seeds`
    combines its own (:func:`write_over_seeds` into ``workdir``, seeds in the order given).
    A flag missing from a record (a run from before the flag existed) counts as its value in
    ``flag_defaults`` (``{flag: default}``, e.g. the parser's defaults), else as ``None``.
    Raises :class:`jaxmri.errors.UserInputError` naming the folder or the flag that differs.
    """
    folders = [Path(folder) for folder in folders]
    if not folders:
        raise UserInputError("name at least one finished run to combine")
    defaults = {k: flag_json_value(v) for k, v in (flag_defaults or {}).items()}
    records, claims, regimes, runs = {}, {}, {}, {}
    for folder in folders:
        if not folder.is_dir():
            raise UserInputError(f"{folder} does not exist: name the --workdir of a finished run")
        record = read_run_record(folder, experiment=experiment)
        seed = record["flags"].get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserInputError(f"{folder / 'run.json'} records no integer seed")
        if seed in records:
            raise UserInputError(f"{runs[seed]} and {folder} are both runs of seed {seed}: "
                                 "combine one run per seed")
        records[seed], runs[seed] = record, folder
        if not (folder / "claims.json").is_file():
            raise UserInputError(f"{folder} has no claims.json: its run did not finish (rerun "
                                 "the same command to complete it)")
        claims[seed] = _read_json(folder / "claims.json")
        if (folder / "regime.json").is_file():
            regimes[seed] = _read_json(folder / "regime.json")
    first_seed = next(iter(records))
    first = records[first_seed]
    for seed, record in records.items():
        for key in ("experiment", "preset"):
            if record[key] != first[key]:
                raise UserInputError(f"{runs[seed]} ran {key} {record[key]!r} and "
                                     f"{runs[first_seed]} ran {first[key]!r}: combine runs of "
                                     "one setting")
        flags = (set(record["flags"]) | set(first["flags"])) - {"seed"}
        for flag in sorted(flags):
            ours, theirs = (r["flags"].get(flag, defaults.get(flag)) for r in (record, first))
            if ours != theirs:
                raise UserInputError(
                    f"{runs[seed]} ran --{flag.replace('_', '-')} {ours!r} and "
                    f"{runs[first_seed]} ran {theirs!r}: combine runs that differ only in --seed")
    try:
        return write_over_seeds(claims, regimes, workdir, runs=runs, environments={
            seed: record.get("environment") for seed, record in records.items()})
    except ValueError as err:  # the runs judged different claims or regime rows
        raise UserInputError(f"the runs cannot be combined: {err}") from None
