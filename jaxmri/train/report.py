"""Results tables: mean ± sd of per-slice metrics, as markdown (to read) and JSON (to compare).

Input convention: ``per_slice[method][metric]`` is a 1-D array with one value per test slice.
``sd`` is the sample standard deviation (``ddof=1``); it is reported as 0.0 when a method has a
single slice. Methods and metrics keep the order in which they appear in the input.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "summarise",
    "markdown_table",
    "write_results",
    "folder_name",
    "markdown_grid",
    "write_table",
    "write_per_slice",
    "read_per_slice",
]

Summary = dict[str, dict[str, dict[str, float | int]]]


def summarise(per_slice: Mapping[str, Mapping[str, np.ndarray]]) -> Summary:
    """``{method: {metric: {'mean': float, 'sd': float, 'n': int}}}`` from per-slice values.

    Raises ``ValueError`` naming the method and metric for an empty, non-1-D or non-finite array.
    """
    if not isinstance(per_slice, Mapping) or not per_slice:
        raise ValueError("per_slice must be a non-empty mapping {method: {metric: values}}")
    summary: Summary = {}
    for method, metrics in per_slice.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"per_slice[{method!r}] must be a mapping {{metric: values}}")
        summary[str(method)] = {}
        for metric, values in metrics.items():
            name = f"per_slice[{method!r}][{metric!r}]"
            values = np.asarray(values, dtype=np.float64)
            if values.ndim != 1 or values.size == 0:
                raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{name} contains non-finite values")
            n = int(values.size)
            summary[str(method)][str(metric)] = {
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if n > 1 else 0.0,
                "n": n,
            }
    return summary


def _all_metrics(summary: Summary) -> list[str]:
    names: list[str] = []
    for metrics in summary.values():
        names.extend(name for name in metrics if name not in names)
    return names


def markdown_table(
    summary: Summary,
    *,
    metrics: Sequence[str],
    title: str | None = None,
    precision: int | Mapping[str, int] = 3,
) -> str:
    """A markdown table, one row per method, cells ``"mean ± sd"``.

    Args:
      summary: output of :func:`summarise`.
      metrics: the columns, in order; a method without a metric gets ``"–"``.
      title: optional heading line (``### title``) above the table.
      precision: decimals, for all metrics or per metric name (default 3 for missing names).
    """
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    known = _all_metrics(summary)
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in the summary (it has {known})")

    def decimals(metric: str) -> int:
        return precision.get(metric, 3) if isinstance(precision, Mapping) else int(precision)

    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| method | " + " | ".join(metrics) + " |")
    lines.append("|---|" + "---|" * len(metrics))
    for method, values in summary.items():
        cells = []
        for metric in metrics:
            if metric in values:
                d = decimals(metric)
                cells.append(f"{values[metric]['mean']:.{d}f} ± {values[metric]['sd']:.{d}f}")
            else:
                cells.append("–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_grid(
    columns: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None
) -> str:
    """A markdown table of already formatted cells: a header of ``columns``, one line per row.

    ``|`` inside a cell is escaped so that a cell cannot split the row. Raises ``ValueError``
    for a row whose length differs from ``columns``.
    """
    if not columns:
        raise ValueError("columns must name at least one column")
    lines = [f"### {title}", ""] if title else []

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines += [line(columns), "|" + "---|" * len(columns)]
    for number, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"row {number} has {len(row)} cells, expected {len(columns)}")
        lines.append(line(row))
    return "\n".join(lines) + "\n"


def write_table(
    markdown: str, payload: object, workdir: str | os.PathLike, name: str, *, echo: bool = True
) -> tuple[Path, Path]:
    """Write ``<workdir>/<name>.md`` (``markdown``) and ``<workdir>/<name>.json`` (``payload``,
    JSON-serialisable), print the markdown (unless ``echo`` is false), return both paths."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = workdir / f"{name}.md", workdir / f"{name}.json"
    md_path.write_text(markdown)
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    if echo:
        print(markdown)
    return md_path, json_path


def write_per_slice(
    per_slice: Mapping[str, Mapping[str, np.ndarray]],
    workdir: str | os.PathLike,
    name: str = "per_slice",
) -> Path:
    """Write the per-slice values ``{method: {metric: [float, ...]}}`` to ``<workdir>/<name>.json``.

    Values are written as float64 (a float32 input round-trips exactly), so any statistic can be
    recomputed from the file. Raises ``ValueError`` as :func:`summarise` does for bad arrays.
    """
    summarise(per_slice)  # the same checks: non-empty, 1-D, finite
    payload = {
        str(method): {str(metric): np.asarray(values, np.float64).tolist()
                      for metric, values in metrics.items()}
        for method, metrics in per_slice.items()
    }
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    return path


def read_per_slice(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Read a file of :func:`write_per_slice` back as float64 arrays."""
    data = json.loads(Path(path).read_text())
    return {method: {metric: np.asarray(values, np.float64) for metric, values in metrics.items()}
            for method, metrics in data.items()}


def _plain(value):
    # JSON wants Python scalars; numpy ones (and non-finite floats) would not serialise cleanly.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.integer | int) and not isinstance(value, bool):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"summary holds a non-finite value {value}")
    return value


def write_results(
    summary: Summary,
    workdir: str | os.PathLike,
    name: str,
    *,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    precision: int | Mapping[str, int] = 3,
) -> tuple[Path, Path]:
    """Write ``<workdir>/<name>.md`` and ``<workdir>/<name>.json``, print the table, return paths.

    ``metrics`` defaults to every metric in the summary, ``title`` to ``name``. Call it on
    process 0 only in a multi-process run.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(
        summary,
        metrics=list(metrics) if metrics is not None else _all_metrics(summary),
        title=name if title is None else title,
        precision=precision,
    )
    md_path, json_path = workdir / f"{name}.md", workdir / f"{name}.json"
    md_path.write_text(table)
    json_path.write_text(json.dumps(_plain(summary), indent=2) + "\n")
    print(table)
    return md_path, json_path


def folder_name(label: str) -> str:
    """ASCII folder name for a method or case label: 'cWGAN γ=0.01' -> 'cwgan_gamma_0_01',
    'InvSharpNet backward' -> 'invsharpnet_backward' (runs of other characters become one
    ``_``, none at either end)."""
    ascii_label = label.replace("γ", "gamma").encode("ascii", "ignore").decode()
    name = re.sub(r"[^0-9a-zA-Z]+", "_", ascii_label).strip("_").lower()
    if not name:
        raise ValueError(f"label {label!r} has no ASCII letter or digit to name a folder")
    return name
