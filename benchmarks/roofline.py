"""Roofline of InvSharpNet's training steps at the paper's network width: achieved GFLOP/s
against this machine's float32 matmul (issue 9: the paper-width step >= 40 % of it).

``python -m benchmarks.roofline [--paper] [--repeats R] [--window S] [--out DIR]``

The paper preset (12 blocks x 5 convs x 128 channels at 320 px, batch 8) needs more than a
2-core / 24 GiB machine's memory and minutes per step. How well the paper-width network uses
the machine does not hinge on the image size, so by default each step runs the paper's network
(``experiments.invsharp.PRESETS["paper"].network``) at the cpu preset's image size and batch
(48 px, batch 4), next to the cpu preset's own network (4 x 5 x 32) for comparison; ``--paper``
runs the paper preset as it is (for a GPU).

Each step is the experiment's own step, built as :mod:`benchmarks.step_time` builds it
(:func:`benchmarks.cases_invsharp.preset_cases`, pmapped over all devices); its FLOPs are XLA's
cost analysis of the compiled step. The step and a ``2048^3`` float32 JAX matmul are timed in
alternating turns (each settled, then ``>= --window`` seconds of calls), so throughput and
ceiling are measured under the same machine load. "% of matmul" is ``(FLOPs / step time) /
(2 * 2048^3 / matmul time)``: its median over turns with a 90 % paired-bootstrap interval, and
"meets 40 %" judged on that interval. Writes ``<out>/roofline.{md,json,png}``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from benchmarks._common import (
    StepCase,
    benchmark_parser,
    matmul_fn,
    median,
    ratio_interval,
    save_interval_plot,
    target_verdict,
    time_alternating,
    write_table,
)

TARGET_PERCENT = 40.0  # issue 9: paper-width step >= 40 % of the measured matmul throughput
MATMUL_SIZE = 2048


def roofline_row(network: str, case: StepCase, matmul: Callable[[], None], matmul_flops: float,
                 *, repeats: int, warmup: int, window: float) -> dict:
    """One table row: ``case``'s step timed against ``matmul`` in alternating turns."""
    times = time_alternating({"step": case.jax_step, "matmul": matmul}, repeats=repeats,
                             warmup=warmup, min_timed_s=window)
    step_s, matmul_s = median(times["step"]), median(times["matmul"])
    # % of matmul = (F / t_step) / (M / t_matmul) = (F / M) * (t_matmul / t_step).
    scale = 100.0 * case.jax_flops / matmul_flops
    percent = scale * matmul_s / step_s
    low, high = (scale * bound for bound in ratio_interval(times["matmul"], times["step"]))
    return {"network": network, "step": case.name, "batch": case.batch_size,
            "px": case.image_size, "params": case.jax_params,
            "GFLOP/step": case.jax_flops / 1e9, "ms/step": 1e3 * step_s,
            "GFLOP/s": case.jax_flops / step_s / 1e9,
            "matmul GFLOP/s": matmul_flops / matmul_s / 1e9,
            "% of matmul": percent, "90% interval": f"{low:.0f}-{high:.0f}",
            f"meets {TARGET_PERCENT:g} %": target_verdict(percent, low, high, TARGET_PERCENT,
                                                           higher_is_better=True),
            "_interval": (low, high)}


def _networks(paper: bool) -> list[tuple[str, object]]:
    """``(label, preset)`` pairs to measure (see the module docstring)."""
    from experiments.invsharp import PRESETS

    def label(config) -> str:
        return f"{config.num_blocks} x {config.depth} x {config.hidden}"

    if paper:
        return [(f"paper {label(PRESETS['paper'].network)}", PRESETS["paper"])]
    cpu = PRESETS["cpu"]
    paper_width = dataclasses.replace(cpu, network=PRESETS["paper"].network)
    return [(f"cpu {label(cpu.network)}", cpu),
            (f"paper {label(paper_width.network)}", paper_width)]


def main(argv: list[str] | None = None) -> list[dict]:
    """Build and time every step; write and return the table rows."""
    from benchmarks.cases_invsharp import preset_cases

    parser = benchmark_parser(__doc__, name="roofline")
    args = parser.parse_args(argv)
    matmul, matmul_flops = matmul_fn(MATMUL_SIZE)
    rows = []
    for network, preset in _networks(args.paper):
        start = time.perf_counter()
        cases = preset_cases(preset, with_torch=False)
        print(f"{network}: built {len(cases)} steps in {time.perf_counter() - start:.0f} s")
        for case in cases:
            rows.append(roofline_row(network, case, matmul, matmul_flops, repeats=args.repeats,
                                     warmup=args.warmup, window=args.window))
            r = rows[-1]
            print(f"  {case.name}: {r['GFLOP/s']:.1f} GFLOP/s, {r['% of matmul']:.0f} % of "
                  f"matmul ({r['90% interval']})")
        del cases
    sizes = "paper preset" if args.paper else "cpu preset's image size and batch"
    title = (f"Roofline of InvSharpNet's steps ({sizes}), "
             f"float32, median of {args.repeats} turns alternating with a {MATMUL_SIZE}^3 "
             f"matmul (>= {args.window:g} s of calls each); target >= {TARGET_PERCENT:g} % of "
             f"the matmul's GFLOP/s")
    columns = [c for c in rows[0] if not c.startswith("_")]
    write_table([{c: r[c] for c in columns} for r in rows], args.out, "roofline", title=title,
                columns=columns, extra={"target_percent": TARGET_PERCENT,
                                        "interval_90": [list(r["_interval"]) for r in rows]})
    save_interval_plot(args.out / "roofline.png", [f"{r['step']} ({r['network']})" for r in rows],
                       [r["% of matmul"] for r in rows], [r["_interval"] for r in rows],
                       target=TARGET_PERCENT, higher_is_better=True,
                       xlabel=f"% of the {MATMUL_SIZE}^3 float32 matmul's GFLOP/s (90 % interval)",
                       reference=(100.0, "matmul"), title="InvSharpNet step throughput")
    return rows


if __name__ == "__main__":
    main()
