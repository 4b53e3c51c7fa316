"""Shared pieces of the benchmark scripts: step cases, timing, throughput, tables and plots.

A :class:`StepCase` is one method's training step, ready to run: ``jax_step()`` performs one full
update with the pmapped step the experiment itself uses (through
:func:`jaxmri.train.make_parallel_step`, including copying the metrics to the host as
:func:`jaxmri.train.fit` does) and returns when the device work is done; ``torch_step()``, when
PyTorch is installed, performs the same update with an eager PyTorch implementation of the same
architecture on the same inputs (batch, image size, float32). Times are wall-clock seconds.

Every script writes ``<out>/<name>.md`` (the table), ``<out>/<name>.json`` (rows and the machine)
and ``<out>/<name>.png``, and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmri.train.cli import OneLineErrorParser
from jaxmri.train.run_record import cpu_model_and_flags

__all__ = [
    "StepCase",
    "benchmark_parser",
    "time_alternating",
    "ratio_interval",
    "target_verdict",
    "compiled_flops",
    "count_params",
    "jax_case",
    "median",
    "compiled_memory",
    "profile_calls",
    "matmul_fn",
    "matmul_gflops",
    "machine_info",
    "write_table",
    "save_bar_plot",
    "block",
]


@dataclasses.dataclass
class StepCase:
    """One method's training step at one size.

    Attributes:
      name: the row label, e.g. ``"InvSharpNet backward"``.
      batch_size: global batch (slices per step); image_size: input side length in pixels.
      jax_step: ``() -> None``; one pmapped update, blocks until the result is ready.
      jax_flops: floating-point operations of one update, from XLA's cost analysis of the
        compiled step (all devices together).
      torch_step: ``() -> None`` or ``None`` when PyTorch is not installed; one eager update.
      torch_params / jax_params: number of trainable scalars of each implementation (the
        architectures must agree; the step-time script refuses to compare otherwise).
      jax_state: ``() -> state``, the current JAX train state (first replica, host arrays).
    """

    name: str
    batch_size: int
    image_size: int
    jax_step: Callable[[], None]
    jax_flops: float
    jax_params: int
    torch_step: Callable[[], None] | None = None
    torch_params: int | None = None
    jax_state: Callable[[], Any] | None = None


def block(tree: Any) -> Any:
    """``jax.block_until_ready`` on every array of ``tree``; returns ``tree``."""
    return jax.block_until_ready(tree)


def benchmark_parser(doc: str | None, *, name: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: ``--paper``, ``--out``, ``--repeats``, ``--warmup``,
    ``--window``."""
    parser = OneLineErrorParser(
        prog=f"python -m benchmarks.{name}", description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true",
                        help="paper-preset sizes (for a GPU) instead of the cpu presets")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"),
                        help="folder for the .md/.json/.png results (default runs/benchmarks)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed runs per implementation after warm-up (default 10)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed runs first (compilation, allocator; default 2)")
    parser.add_argument("--window", type=float, default=0.25,
                        help="seconds of back-to-back calls timed per turn where a script "
                             "alternates implementations (default 0.25; 0 times one call)")
    return parser


def time_alternating(fns: Mapping[str, Callable[[], None]], *, repeats: int,
                     warmup: int = 1, settle_s: float = 0.05,
                     min_timed_s: float = 0.0) -> dict[str, list[float]]:
    """Wall seconds per call of each function, in alternating turns A, B, A, B, ...

    Each function is first called ``warmup`` times untimed. Interleaving means a change of machine
    load during the run affects every implementation alike. Each turn starts with untimed calls
    of that turn's function for at least ``settle_s`` seconds (at least one call when
    ``settle_s > 0``) and then times ``n`` consecutive calls: after a call, PyTorch's OpenMP
    threads and XLA's Eigen threads keep spinning for a few milliseconds, and on a 2-core machine
    the next framework's call then competes with them (measured: a 5 ms XLA convolution took
    10-11 ms right after a PyTorch call, 6-7 ms after 50 ms of its own calls; PyTorch lost
    10-30 % the other way). Settling times every implementation in its own steady state, as a
    user running one of them sees it. ``settle_s = 0`` gives strict A, B, A, B timing.

    ``n`` is 1 when ``min_timed_s = 0``; otherwise each function's ``n`` is fixed once, after
    warm-up, from one timed call, as the number of calls that fill ``min_timed_s`` (at least 1):
    a single call of a 25 ms step on a shared machine varies by +-30 %, the mean of ten calls
    much less. Returns ``{name: [seconds per call, one entry per turn]}``.
    """
    if repeats < 1 or warmup < 0 or settle_s < 0 or min_timed_s < 0:
        raise ValueError(f"repeats must be >= 1, warmup, settle_s and min_timed_s >= 0, got "
                         f"{repeats}, {warmup}, {settle_s}, {min_timed_s}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    calls = dict.fromkeys(fns, 1)
    if min_timed_s > 0:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            calls[name] = max(1, math.ceil(min_timed_s / (time.perf_counter() - start)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle_s > 0:
                settle_start = time.perf_counter()
                fn()
                while time.perf_counter() - settle_start < settle_s:
                    fn()
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            times[name].append((time.perf_counter() - start) / calls[name])
    return times


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float], *,
                   confidence: float = 0.9, resamples: int = 4000,
                   seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of ``median(numerator) / median(denominator)`` over paired turns.

    The two sequences are the per-turn times of two implementations from one
    :func:`time_alternating` run; turn ``i`` of both ran under the same machine load, so turns
    are resampled in pairs (``scipy.stats.bootstrap``, ``paired=True``, percentile method).
    Returns ``(low, high)`` of the two-sided ``confidence`` interval: how far the ratio of one
    run could move if the run were repeated on the same machine. The interval is widened to
    hold the measured ratio itself if needed (a percentile interval of a median of a few values,
    a discrete statistic, can end just short of it).
    """
    from scipy import stats

    a = np.asarray(numerator, np.float64)
    b = np.asarray(denominator, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two 1-D sequences of the same length >= 2, got shapes {a.shape} "
                         f"and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(b > 0)):
        raise ValueError("times must be finite and the denominator's positive")
    if np.ptp(a / b) == 0:  # every turn has the same ratio: no spread to resample
        return float(a[0] / b[0]), float(a[0] / b[0])
    result = stats.bootstrap(
        (a, b), lambda x, y, axis=-1: np.median(x, axis=axis) / np.median(y, axis=axis),
        paired=True, vectorized=True, confidence_level=confidence, n_resamples=resamples,
        method="percentile", random_state=np.random.default_rng(seed))
    ratio = float(np.median(a) / np.median(b))
    return (min(float(result.confidence_interval.low), ratio),
            max(float(result.confidence_interval.high), ratio))


def target_verdict(value: float, low: float, high: float, target: float, *,
                   higher_is_better: bool = False) -> str:
    """Whether a measured value meets its target, and whether its interval says it surely does.

    The target is ``value <= target`` (a time ratio), or ``value >= target`` with
    ``higher_is_better`` (a throughput ratio). ``"yes"`` / ``"no"`` when the whole interval
    ``[low, high]`` lies on one side of the target; ``"yes, within noise"`` / ``"no, within
    noise"`` when the value is on that side but the interval reaches the other (another run on
    the same machine could land there).
    """
    if not low <= value <= high:
        raise ValueError(f"value {value} lies outside its interval [{low}, {high}]")
    if higher_is_better:
        meets, surely, surely_not = value >= target, low >= target, high < target
    else:
        meets, surely, surely_not = value <= target, high <= target, low > target
    word = "yes" if meets else "no"
    return word if surely or surely_not else f"{word}, within noise"


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence of seconds."""
    return float(statistics.median(values))


def _first(analysis: Any) -> Any:
    # cost_analysis()/memory_analysis() return a dict, or a list with one dict per program
    # depending on the jax version and on pmap vs jit.
    if isinstance(analysis, (list, tuple)):
        return analysis[0] if analysis else {}
    return analysis


def compiled_flops(fn: Callable, *args: Any, num_replicas: int = 1, **kwargs: Any) -> float:
    """FLOPs of one call of the jitted or pmapped ``fn`` on these arguments (XLA cost analysis).

    XLA analyses one replica's program; pass ``num_replicas`` (the number of devices a pmapped
    ``fn`` maps over) to count the work of the whole step.
    """
    analysis = _first(fn.lower(*args, **kwargs).compile().cost_analysis())
    return float(analysis.get("flops", 0.0)) * num_replicas


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (trainable parameters when given ``params``)."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))


def jax_case(name: str, *, train_step: Callable, state: Any, batch: Mapping[str, np.ndarray],
             params: Any, image_size: int, seed: int = 0) -> StepCase:
    """A :class:`StepCase` (without the torch side) for a method's pure ``train_step``.

    ``train_step(state, batch, key) -> (state, metrics)`` follows the contract of
    :mod:`jaxmri.train.loop`; it is pmapped with :func:`jaxmri.train.make_parallel_step` over all
    local devices, ``state`` is replicated and the GLOBAL ``batch`` (numpy, leading axis = batch)
    sharded, exactly as :func:`jaxmri.train.fit` does. Each call advances the state by one update
    (step counter included) and copies the metrics to the host, as ``fit`` does every step.
    ``params`` is the trainable pytree counted for the architecture check; ``image_size`` is
    the side of the network's input image in pixels (for the table).
    """
    from jaxmri.train import make_parallel_step, replicate, shard_batch, unreplicate

    pstep = make_parallel_step(train_step)
    n_local = jax.local_device_count()
    rbatch = jax.pmap(lambda x: x)(shard_batch(dict(batch), num_local_devices=n_local))
    key = jax.random.PRNGKey(seed)
    stop = np.zeros((n_local,), np.int32)
    holder = {"state": replicate(state), "step": 0}
    flops = compiled_flops(pstep, holder["state"], rbatch, key, 0, stop, num_replicas=n_local)

    def step() -> None:
        new_state, metrics, _ = pstep(holder["state"], rbatch, key, holder["step"], stop)
        # fit() copies the metrics to the host every step to check them; so does the benchmark.
        jax.tree.map(float, unreplicate(metrics))
        holder["state"], holder["step"] = block(new_state), holder["step"] + 1

    first = next(iter(batch.values()))
    return StepCase(name=name, batch_size=int(np.shape(first)[0]),
                    image_size=int(image_size),
                    jax_step=step, jax_flops=flops, jax_params=count_params(params),
                    jax_state=lambda: unreplicate(holder["state"]))


def compiled_memory(fn: Callable, *args: Any, **kwargs: Any) -> dict[str, int]:
    """XLA's buffer assignment for one call of jitted ``fn``: bytes of arguments, outputs and
    temporaries, and ``peak = argument + output + temp - alias`` (what the program needs live)."""
    stats = _first(fn.lower(*args, **kwargs).compile().memory_analysis())
    out = {k: int(getattr(stats, f"{k}_size_in_bytes"))
           for k in ("argument", "output", "temp", "alias", "generated_code")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def profile_calls(fn: Callable[[], None], log_dir: str | os.PathLike, *, calls: int = 5) -> Path:
    """Run ``fn()`` ``calls`` times under :func:`jax.profiler.trace`; return the trace written.

    The trace (``<log_dir>/plugins/profile/<run>/<host>.trace.json.gz``, Chrome trace-event
    JSON; the ``.xplane.pb`` beside it is TensorBoard's) opens in Perfetto or TensorBoard's
    profile plugin. Each XLA:CPU thunk the calls executed is an event named after its HLO
    instruction (``args.hlo_op``, e.g. ``convolution.3``), on the thread that ran it; the compiled
    HLO (``jax.jit(f).lower(...).compile().as_text()``) says what each instruction is. Call
    ``fn`` (compile, warm up) before profiling it, or the trace is mostly compilation.
    Convolutions run asynchronously on XLA:CPU: an event covers the thunk's launch, and the
    work follows in the thread-pool regions until the next dependent op starts.
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    log_dir = Path(log_dir)

    def traces() -> dict[Path, int]:
        # The run folder is named to the second: a second trace within it overwrites the first.
        return {p: p.stat().st_mtime_ns for p in log_dir.glob("plugins/profile/*/*.trace.json.gz")}

    before = traces()
    with jax.profiler.trace(str(log_dir)):
        for _ in range(calls):
            fn()
    written = sorted(p for p, mtime in traces().items() if before.get(p) != mtime)
    if not written:
        raise RuntimeError(f"jax.profiler wrote no trace under {log_dir}")
    return written[-1]


def matmul_fn(size: int = 2048) -> tuple[Callable[[], None], float]:
    """``(call, flops)``: one jitted float32 ``size x size`` by ``size x size`` JAX product on
    the default device, blocking until done, and its ``2 size^3`` FLOPs (compiled on the first
    call)."""
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (size, size), jnp.float32)
    b = jax.random.normal(key_b, (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)

    def call() -> None:
        block(dot(a, b))

    return call, 2.0 * size**3


def matmul_gflops(*, size: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul throughput of JAX on the default device, GFLOP/s (best of runs).

    The best of ``repeats`` timed :func:`matmul_fn` calls after one compiled warm-up is the
    machine's practical ceiling.
    """
    call, flops = matmul_fn(size)
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU (model and vector extensions, as ``run.json``
    records them), core count, backend, devices and versions."""
    cpu, cpu_flags = cpu_model_and_flags()
    info = {
        "cpu": cpu,
        "cpu_flags": cpu_flags,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        # benchmarks/__init__.py adds jaxmri's CPU convolution setting (jaxmri.cpu.configure).
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return "–" if value is None else str(value)


def write_table(rows: Sequence[Mapping[str, Any]], out: str | os.PathLike, name: str, *,
                title: str, columns: Sequence[str] | None = None,
                extra: Mapping[str, Any] | None = None) -> str:
    """Write ``<out>/<name>.md`` and ``<out>/<name>.json``; print and return the markdown.

    ``rows`` is a list of flat dicts (one per table row); ``columns`` picks and orders the
    columns (default: the keys of the first row). The JSON holds the rows, the machine
    (:func:`machine_info`) and ``extra``.
    """
    if not rows:
        raise ValueError("rows must hold at least one row")
    columns = list(columns or rows[0].keys())
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(table)
    payload = {"title": title, "rows": [dict(r) for r in rows], "machine": machine_info(),
               **(dict(extra) if extra else {})}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(table)
    return table


def save_interval_plot(path: str | os.PathLike, labels: Sequence[str], values: Sequence[float],
                       intervals: Sequence[tuple[float, float]], *, target: float,
                       higher_is_better: bool = False, xlabel: str, title: str,
                       reference: tuple[float, str] | None = None) -> np.ndarray:
    """Horizontal bars of measured values with their intervals as error bars and the target as a
    dashed line (optionally a grey ``(x, label)`` reference line), saved as PNG.

    A bar is green when its whole interval meets the target, orange when only the value does,
    red when the value misses it (as :func:`target_verdict` reads them). Returns the ``(2, n)``
    error-bar lengths drawn (below and above each value); ``ValueError`` if a value lies
    outside its interval.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values_arr = np.asarray(values, np.float64)
    bounds = np.asarray(intervals, np.float64).reshape(-1, 2)
    errors = np.stack([values_arr - bounds[:, 0], bounds[:, 1] - values_arr])
    if np.any(errors < 0):
        raise ValueError("every value must lie inside its interval")
    verdicts = [target_verdict(v, lo, hi, target, higher_is_better=higher_is_better)
                for v, (lo, hi) in zip(values_arr, bounds)]
    colors = ["tab:green" if v == "yes" else "tab:orange" if v.startswith("yes") else "tab:red"
              for v in verdicts]
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(labels) + 1.6), layout="constrained")
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values_arr, xerr=errors, color=colors, capsize=3)
    ax.axvline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:g}")
    right = max(target, float(bounds[:, 1].max()))
    if reference is not None:
        ax.axvline(reference[0], color="0.6", linewidth=1, label=reference[1])
        right = max(right, reference[0])
    ax.set_yticks(y, labels)
    ax.set_xlabel(xlabel)
    ax.set_xlim(0.0, 1.05 * right)
    ax.set_title(title)
    # Below the axes and their label, so that it never hides a bar.
    fig.legend(loc="outside lower center", ncol=2, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return errors


def save_bar_plot(path: str | os.PathLike, labels: Sequence[str],
                  series: Mapping[str, Sequence[float]], *, ylabel: str, title: str,
                  log: bool = False) -> None:
    """A grouped bar chart (one group per label, one bar per series) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.0))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
