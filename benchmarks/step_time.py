"""Training-step time of every method: jit-compiled pmapped JAX against eager PyTorch; roofline.

``python -m benchmarks.step_time [--paper] [--only NAME ...] [--no-torch] [--repeats R]
[--profile DIR]``

For each method's training step (InvSharpNet backward and forward refinement, IFR-Net, DSGAN
generator+discriminator, EDSR, RecNet and its refinement GAN step, joint Rec+SR) the script
builds the JAX step exactly as the experiment trains it (``benchmarks/cases_*.py``) and an eager
PyTorch implementation (``benchmarks/torch_ref/``) of the same architecture, batch, image size
and dtype (float32) started from the same parameters, checks that both compute the same thing
(each cases module asserts it at build time; the parameter counts must match here), then times
them alternately A, B, A, B after warm-up and reports the medians and their ratio (< 1: JAX is
faster). Each turn times the mean of back-to-back calls filling ``--window`` seconds (one call
for steps longer than that), and the ratio comes with a 90 % bootstrap interval over the paired
turns: the issue's target (ratio <= 0.8) is "yes" / "no" when the whole interval is on one side
of 0.8, "within noise" when it straddles it.

Roofline columns: the FLOPs of one step counted by XLA's cost analysis of the compiled step,
the achieved GFLOP/s of each implementation (the same FLOP count divided by its time) and the
JAX figure as a percentage of the machine's measured float32 matmul throughput (the better of
JAX's and PyTorch's 2048^3 product), i.e. how close the step comes to what this machine can do.

Default sizes are the cpu presets (2 CPU cores); ``--paper`` builds the paper presets (for a
GPU: a paper-preset step on 2 CPU cores takes seconds to minutes). PyTorch is the optional
extra ``pip install -e '.[bench]'``; without it the PyTorch columns are empty.
Writes ``<out>/step_time.{md,json,png}`` and ``<out>/step_time_ratio.png`` (the ratios with
their intervals against the target). ``--profile DIR`` also records, after timing, five JAX
steps of each case with ``jax.profiler`` (``DIR/<case>/plugins/profile/...trace.json.gz``; open
it in Perfetto or TensorBoard): a timeline of the step's XLA operations.
"""

from __future__ import annotations

import gc
import importlib
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    benchmark_parser,
    machine_info,
    matmul_gflops,
    median,
    profile_calls,
    ratio_interval,
    save_bar_plot,
    save_interval_plot,
    target_verdict,
    time_alternating,
    write_table,
)
from jaxmri.train.report import folder_name

CASE_MODULES = ("cases_invsharp", "cases_ifrnet", "cases_refine", "cases_dsgan",
                "cases_joint_recsr")
TARGET_RATIO = 0.8  # issue 9: JAX step time <= 0.8 x PyTorch eager


def _selected(name: str, only) -> bool:
    """Whether a case is selected by ``--only`` (substring match, case-insensitive)."""
    return not only or any(s.lower() in name.lower() for s in only)


def torch_available() -> bool:
    """Whether PyTorch imports (the ``bench`` extra)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_matmul_gflops(*, size: int = 2048, repeats: int = 5) -> float:
    """PyTorch's float32 ``size^3`` matmul throughput on the CPU, GFLOP/s (best of runs)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def save_ratio_plot(path, labels: list[str], ratios: list[float],
                    intervals: list[tuple[float, float]], *, target: float = TARGET_RATIO,
                    title: str) -> np.ndarray:
    """JAX/PyTorch per method with its interval against the target and PyTorch's 1.0, as PNG
    (:func:`benchmarks._common.save_interval_plot`); returns the error-bar lengths drawn."""
    return save_interval_plot(path, labels, ratios, intervals, target=target,
                              xlabel="JAX / PyTorch step time (90 % interval; < 1: JAX faster)",
                              reference=(1.0, "PyTorch eager"), title=title)


def case_row(case, times: dict[str, list[float]], peak_gflops: float) -> dict:
    """One table row from a built case and its alternating timings."""
    jax_s = median(times["JAX"])
    torch_s = median(times["PyTorch"]) if "PyTorch" in times else None
    ratio = None if torch_s is None else jax_s / torch_s
    low, high = ((None, None) if torch_s is None
                 else ratio_interval(times["JAX"], times["PyTorch"]))
    gflop = case.jax_flops / 1e9
    row = {
        "method": case.name,
        "batch": case.batch_size,
        "px": case.image_size,
        "params": case.jax_params,
        "JAX ms": 1e3 * jax_s,
        "PyTorch ms": None if torch_s is None else 1e3 * torch_s,
        "JAX/PyTorch": ratio,
        "90% interval": None if ratio is None else f"{low:.2f}-{high:.2f}",
        "meets 0.8": None if ratio is None else target_verdict(ratio, low, high, TARGET_RATIO),
        "GFLOP/step": gflop,
        "JAX GFLOP/s": gflop / jax_s,
        "PyTorch GFLOP/s": None if torch_s is None else gflop / torch_s,
        "JAX % of matmul peak": 100.0 * gflop / jax_s / peak_gflops,
    }
    row["_times"] = {k: list(v) for k, v in times.items()}
    row["_interval"] = None if ratio is None else [low, high]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    """Build, check and time every selected case; write and return the table rows."""
    parser = benchmark_parser(__doc__, name="step_time")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only the cases whose name contains one of these strings")
    parser.add_argument("--no-torch", action="store_true", help="time the JAX steps only")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also trace 5 JAX steps of each case with jax.profiler into "
                             "DIR/<case> (Perfetto / TensorBoard)")
    args = parser.parse_args(argv)
    with_torch = not args.no_torch and torch_available()
    if not args.no_torch and not with_torch:
        print("step_time: PyTorch is not installed (pip install -e '.[bench]'); "
              "timing JAX only")

    jax_peak = matmul_gflops()
    torch_peak = torch_matmul_gflops() if with_torch else None
    peak = max(jax_peak, torch_peak or 0.0)
    print(f"float32 2048^3 matmul: JAX {jax_peak:.1f} GFLOP/s"
          + (f", PyTorch {torch_peak:.1f} GFLOP/s" if torch_peak else ""))

    rows = []
    for module_name in CASE_MODULES:
        module = importlib.import_module(f"benchmarks.{module_name}")
        if not any(_selected(name, args.only) for name in module.CASE_NAMES):
            continue  # building a module's cases costs seconds to minutes
        start = time.perf_counter()
        cases = module.cases(paper=args.paper, with_torch=with_torch)
        print(f"{module_name}: built {len(cases)} case(s) in {time.perf_counter() - start:.0f} s")
        unknown = {c.name for c in cases} - set(module.CASE_NAMES)
        assert not unknown, f"{module_name}.CASE_NAMES misses {sorted(unknown)}"
        for case in cases:
            if not _selected(case.name, args.only):
                continue
            fns = {"JAX": case.jax_step}
            if case.torch_step is not None:
                if case.torch_params != case.jax_params:
                    raise SystemExit(f"{case.name}: the PyTorch reference has "
                                     f"{case.torch_params} parameters, JAX {case.jax_params}; "
                                     "the architectures differ")
                fns["PyTorch"] = case.torch_step
            times = time_alternating(fns, repeats=args.repeats, warmup=args.warmup,
                                     min_timed_s=args.window)
            rows.append(case_row(case, times, peak))
            r = rows[-1]
            print(f"  {case.name}: JAX {r['JAX ms']:.1f} ms"
                  + (f", PyTorch {r['PyTorch ms']:.1f} ms, ratio {r['JAX/PyTorch']:.2f} "
                     f"({r['90% interval']}, meets 0.8: {r['meets 0.8']})"
                     if r["PyTorch ms"] is not None else ""))
            if args.profile is not None:
                folder = args.profile / folder_name(case.name)
                print(f"    jax.profiler trace: {profile_calls(case.jax_step, folder)}")
        del cases, module
        gc.collect()
    if not rows:
        raise SystemExit(f"step_time: no case matches --only {args.only}")

    preset = "paper" if args.paper else "cpu"
    info = machine_info()
    title = (f"Training step time, {preset} presets, float32, median of {args.repeats} "
             f"alternating turns (each settled for 50 ms, then >= {args.window:g} s of calls "
             f"timed) after {args.warmup} warm-up; JAX/PyTorch with its 90 % paired-bootstrap "
             f"interval over turns; "
             f"{info['cpu_count']} CPU cores "
             f"({info['cpu']}), {len(info['devices'])} JAX device(s); matmul peak "
             f"{peak:.1f} GFLOP/s")
    columns = [c for c in rows[0] if not c.startswith("_")]
    write_table([{c: r[c] for c in columns} for r in rows], args.out, "step_time",
                title=title, columns=columns,
                extra={"preset": preset, "matmul_gflops": {"jax": jax_peak, "torch": torch_peak},
                       "times_s": {r["method"]: r["_times"] for r in rows},
                       "ratio_interval_90": {r["method"]: r["_interval"] for r in rows},
                       "target_ratio": TARGET_RATIO})
    series = {"JAX (jit + pmap)": [r["JAX ms"] for r in rows]}
    if with_torch:
        series["PyTorch eager"] = [r["PyTorch ms"] or np.nan for r in rows]
    save_bar_plot(args.out / "step_time.png", [r["method"] for r in rows], series,
                  ylabel="ms per training step (log)", title=f"Step time, {preset} presets",
                  log=True)
    compared = [r for r in rows if r["JAX/PyTorch"] is not None]
    if compared:
        save_ratio_plot(args.out / "step_time_ratio.png", [r["method"] for r in compared],
                        [r["JAX/PyTorch"] for r in compared],
                        [r["_interval"] for r in compared],
                        title=f"JAX / PyTorch eager, {preset} presets, {info['cpu_count']} cores")
    return rows


if __name__ == "__main__":
    main()
