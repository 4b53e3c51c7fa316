"""One prepared command for a lent GPU: the paper presets' training steps, timed and checked.

``python -m benchmarks.gpu_check [--only NAME ...] [--smoke] [--budget-s S] [--train-s S]
[--out DIR]``

Made for a short GPU slot (about 15 minutes, start-up included) and meant to finish in under 8
minutes on one H100/H200, compilation included (not yet run on a GPU): ``--budget-s`` (240 s)
for the step checks (a check that has not started when it is spent is skipped and its row
says so; one already started runs to its end) plus ``--train-s`` (120 s) of training and its
set-up. What it does, in this order:

1. **Step time and memory.** For each training step of the experiments' ``paper`` presets
   (the steps of :mod:`benchmarks.paper_plan`, at the preset's image size and batch; the
   state initialised by the experiment's own code, the batch from the experiment's data code as
   ``benchmarks/cases_*.py`` build it) the step is pmapped as :func:`jaxmri.train.fit` runs it,
   compiled once (XLA's memory and cost analysis of the GPU program are kept), run 3 updates,
   then ``--warmup`` untimed and ``--repeats`` timed updates, each ending with the metrics on
   the host as ``fit`` does: the median ms per step. Peak device memory is
   ``device.memory_stats()["peak_bytes_in_use"]`` after the step (the process's peak so far:
   it only grows; the per-step figure is XLA's analysis). Default matmul precision (on
   Ampere/Hopper JAX runs float32 convolutions and matmuls as TF32). A step that runs out of
   memory is retried with half the per-device batch (the row says which batch ran).
2. **Training.** InvSharpNet (method ``back``, paper preset network and batch, or the largest
   halving of it that fits) trains for ``--train-s`` seconds on random batches of a pool of
   simulated 320 px multi-coil slices; the row compares the mean loss of the first and the
   last ten updates and says whether it fell (the check fails otherwise).
3. **Precision**, while ``--budget-s`` lasts: each step again under
   ``jax.default_matmul_precision("float32")`` (full float32) and ``("bfloat16")``: the median
   step time and the loss after 3 updates from the same state and batch, as the relative
   difference to full float32.
4. **PyTorch**, while the budget lasts and only when torch with CUDA imports: the eager
   reference of ``benchmarks/cases_*.py`` (built on the GPU as the default torch device),
   median step time.

Prints and writes one markdown table (``<out>/gpu_check.md``, ``.json``; default
``runs/benchmarks``). ``--smoke`` runs the smoke presets on whatever device there is (the CPU
here: seconds per step; the test suite's slow set runs it). For more GPU memory than JAX's
default 75 % preallocation, start it as ``XLA_PYTHON_CLIENT_MEM_FRACTION=.95 python -m
benchmarks.gpu_check``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks._common import benchmark_parser, machine_info, write_table
from benchmarks.paper_plan import (
    CHIPS,
    GiB,
    PlanStep,
    analyse,
    plan_steps,
    predicted_step_seconds,
)
from benchmarks.paper_plan import max_fitting_batch as pp_max_fitting_batch

__all__ = ["StepResult", "main", "precision_cell", "result_rows", "run_step", "train_for",
           "training_row", "loss_metric"]

LOSS_STEPS = 3  # updates before the loss is compared across precisions
PRECISIONS = ("float32", "bfloat16")  # compared with the default (TF32 on Hopper)
TRAIN_STEP_NAME = "InvSharpNet backward"
COLUMNS = ("step", "batch", "JAX ms", "PyTorch ms", "JAX/PyTorch", "XLA GiB", "peak GiB so far",
           "GFLOP/step", "TFLOP/s", "predicted ms", "compile s",
           *(f"{p} (time, loss vs default)" for p in PRECISIONS), "error")
# Case modules of the PyTorch references and the step names their rows use.
TORCH_MODULES = ("cases_invsharp", "cases_ifrnet", "cases_dsgan", "cases_refine",
                 "cases_joint_recsr")


@dataclasses.dataclass
class StepResult:
    """Measurements of one step (times in seconds, memory in bytes).

    ``losses``: the loss after each of the first :data:`LOSS_STEPS` updates; ``times``: the
    timed updates; ``analysis``: XLA's analysis of the compiled program
    (:class:`benchmarks.paper_plan.StepAnalysis`); ``batch``: the per-device batch that ran;
    ``error``: why nothing ran (``None`` when it did).
    """

    name: str
    batch: int
    times: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    compile_s: float | None = None
    analysis: Any = None
    peak_bytes: int | None = None
    error: str | None = None
    compiled: Any = dataclasses.field(default=None, repr=False)


def loss_metric(metrics: Mapping[str, float]) -> float:
    """The step's training loss among its metrics: ``loss``, else ``g_loss`` (DSGAN), else
    ``l1`` (EDSR), else the first name containing ``loss`` (alphabetically)."""
    for name in ("loss", "g_loss", "l1"):
        if name in metrics:
            return float(metrics[name])
    names = sorted(k for k in metrics if "loss" in k)
    if not names:
        raise KeyError(f"no loss among the metrics {sorted(metrics)}")
    return float(metrics[names[0]])


def _peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def _bytes_limit() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else int(stats.get("bytes_limit", 0)) or None


def fitting_size(total_bytes: int, state_bytes: int, size: int, devices: int,
                 limit: int | None) -> int:
    """The global batch to try next when a compiled step needs ``total_bytes`` per device.

    ``size`` itself when it fits ``limit`` (or there is no limit: CPU); otherwise the largest
    multiple of ``devices`` that :func:`benchmarks.paper_plan.max_fitting_batch` says fits (the
    state in and out fixed, the rest linear in the batch), at most half of ``size`` and at
    least ``devices``.
    """
    if limit is None or total_bytes <= limit:
        return size
    per_device = pp_max_fitting_batch(total_bytes, 2 * state_bytes, size // devices, limit)
    return max(devices, min(size // 2, per_device * devices) // devices * devices)


def _is_oom(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def _halve(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[:size] for k, v in batch.items()}


def run_step(step: PlanStep, *, precision: str | None = None, warmup: int = 2,
             repeats: int = 10, loss_steps: int = LOSS_STEPS, state: Any = None,
             batch: Mapping[str, np.ndarray] | None = None) -> StepResult:
    """Compile and run ``step`` as ``fit`` does; see the module doc (1.) for what is measured.

    ``precision`` is a ``jax.default_matmul_precision`` value (``None``: JAX's default).
    ``state`` / ``batch`` default to ``step.make_state(key 0)`` / ``step.make_batch()``. On an
    out-of-memory error the per-device batch is halved and the step retried (down to 1);
    when XLA's analysis of the compiled step already exceeds the device's ``bytes_limit`` the
    batch is first cut to what should fit (:func:`fitting_size`) without running it.
    """
    from jaxmri.train import make_parallel_step, replicate, shard_batch

    state = jax.jit(step.make_state)(jax.random.key(0)) if state is None else state
    batch = step.make_batch() if batch is None else batch
    size = int(np.shape(next(iter(batch.values())))[0])
    state_bytes = sum(int(np.size(x)) * np.dtype(x.dtype).itemsize
                      for x in jax.tree.leaves(state) if hasattr(x, "dtype"))
    while True:
        result = StepResult(name=step.name, batch=size)
        try:
            with (jax.default_matmul_precision(precision) if precision
                  else contextlib.nullcontext()):
                # A fresh pmapped function per precision: nothing compiled is shared.
                pstep = make_parallel_step(step.train_step)
                n = jax.local_device_count()
                rstate = replicate(state)
                rbatch = jax.pmap(lambda x: x)(shard_batch(_halve(batch, size),
                                                           num_local_devices=n))
                key, stop = jax.random.key(1), np.zeros((n,), np.int32)
                start = time.perf_counter()
                compiled = pstep.lower(rstate, rbatch, key, 0, stop).compile()
                result.compile_s = time.perf_counter() - start
                result.analysis = analyse(compiled)
                smaller = fitting_size(result.analysis.total_bytes, state_bytes, size, n,
                                       _bytes_limit())
                if smaller < size:
                    size = smaller
                    del compiled
                    gc.collect()
                    continue
                result.compiled = compiled
                count = 0

                def update():
                    nonlocal rstate, count
                    rstate, metrics, _ = compiled(rstate, rbatch, key, count, stop)
                    count += 1
                    return jax.tree.map(lambda m: float(np.asarray(m)[0]), metrics)

                result.losses = [loss_metric(update()) for _ in range(loss_steps)]
                for _ in range(warmup):
                    update()
                for _ in range(repeats):
                    start = time.perf_counter()
                    update()
                    result.times.append(time.perf_counter() - start)
            result.peak_bytes = _peak_bytes()
            return result
        except Exception as err:  # noqa: BLE001 -- report any failure as the row, go on
            if _is_oom(err) and size > 1:
                size //= 2
                gc.collect()
                continue
            result.error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            return result


def train_for(step: PlanStep, pool: Mapping[str, np.ndarray], *, seconds: float,
              batch_size: int, min_updates: int = 20, seed: int = 0,
              compiled: Any = None) -> dict[str, Any]:
    """Train ``step`` from its initial state on random batches of ``pool`` for ``seconds``
    (and at least ``min_updates`` updates); returns the losses and the wall time.

    Batches are ``batch_size`` slices drawn without replacement per update with
    ``np.random.default_rng(seed)``. The clock starts after compilation. ``fixed_before`` /
    ``fixed_after`` are the loss on one fixed batch (the pool's first ``batch_size`` slices)
    at the initial and the final parameters: the step's metrics are computed before its
    update, so calling the step on that batch and dropping the new state evaluates the loss
    without training on it (the training losses of random batches are too noisy to compare).
    ``compiled``: the step already compiled for this batch size (from :func:`run_step`).
    """
    from jaxmri.train import make_parallel_step, replicate, shard_batch

    n_pool = int(np.shape(next(iter(pool.values())))[0])
    rng = np.random.default_rng(seed)
    pstep = make_parallel_step(step.train_step)
    n = jax.local_device_count()
    rstate = replicate(jax.jit(step.make_state)(jax.random.key(0)))
    key, stop = jax.random.key(1), np.zeros((n,), np.int32)
    to_devices = jax.pmap(lambda x: x)

    def batch(idx):
        return to_devices(shard_batch({k: np.asarray(v)[idx] for k, v in pool.items()},
                                      num_local_devices=n))

    def host(metrics):
        return loss_metric(jax.tree.map(lambda m: float(np.asarray(m)[0]), metrics))

    fixed = batch(np.arange(batch_size) % n_pool)
    start = time.perf_counter()
    if compiled is None:
        compiled = pstep.lower(rstate, fixed, key, 0, stop).compile()
    compile_s = time.perf_counter() - start
    fixed_before = host(compiled(rstate, fixed, key, 0, stop)[1])
    losses: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(losses) < min_updates:
        idx = np.sort(rng.choice(n_pool, batch_size, replace=batch_size > n_pool))
        rstate, metrics, _ = compiled(rstate, batch(idx), key, len(losses), stop)
        losses.append(host(metrics))
    seconds_run = time.perf_counter() - start
    fixed_after = host(compiled(rstate, fixed, key, len(losses), stop)[1])
    return {"losses": losses, "seconds": seconds_run, "compile_s": compile_s,
            "batch": batch_size, "fixed_before": fixed_before, "fixed_after": fixed_after}


def training_row(losses: Sequence[float], seconds: float, batch: int, *, fixed_before: float,
                 fixed_after: float, window: int = 10) -> dict[str, Any]:
    """The training row: the fixed-batch loss before and after (the verdict: it must fall),
    and the mean training loss of the first and last ``window`` updates."""
    if len(losses) < 2:
        raise ValueError(f"need at least 2 losses, got {len(losses)}")
    w = max(1, min(window, len(losses) // 2))
    return {"updates": len(losses), "seconds": seconds, "batch": batch,
            "fixed-batch loss before": fixed_before, "fixed-batch loss after": fixed_after,
            f"first {w} mean loss": float(np.mean(losses[:w])),
            f"last {w} mean loss": float(np.mean(losses[-w:])),
            "loss fell": "yes" if fixed_after < fixed_before else "NO"}


def precision_cell(default: StepResult, other: StepResult | None) -> str | None:
    """``"<ms> ms, loss rel diff <d>"`` of ``other`` against ``default``'s final loss."""
    if other is None:
        return None
    if other.error:
        return other.error
    loss_ref, loss = default.losses[-1], other.losses[-1]
    rel = abs(loss - loss_ref) / max(abs(loss_ref), 1e-30)
    return f"{1e3 * statistics.median(other.times):.3g} ms, loss rel diff {rel:.1e}"


def _chip_for(device_kind: str) -> tuple[str, Mapping[str, float]] | None:
    for name, chip in CHIPS.items():
        if name.split()[0].lower() in device_kind.lower():
            return name, chip
    return None


def result_rows(results: Sequence[StepResult], *, precision: Mapping[str, Mapping[str, Any]],
                torch_ms: Mapping[str, float | str], device_kind: str) -> list[dict[str, Any]]:
    """The table: one row per step from the measured results (pure; tested with values).

    ``precision[name][p]`` is the :class:`StepResult` of step ``name`` under precision ``p``
    (or absent: skipped); ``torch_ms[name]`` the PyTorch median ms or why there is none.
    The "predicted ms" column is :mod:`benchmarks.paper_plan`'s roofline on the GPU program's
    cost analysis when the device is an H100/H200 (to judge the plan's assumptions).
    """
    chip = _chip_for(device_kind)
    rows = []
    for r in results:
        row: dict[str, Any] = {"step": r.name, "batch": r.batch}
        if r.error:
            row.update({"JAX ms": None, "error": r.error})
            rows.append(row)
            continue
        ms = 1e3 * statistics.median(r.times)
        row["JAX ms"] = ms
        torch = torch_ms.get(r.name)
        row["PyTorch ms"] = torch
        row["JAX/PyTorch"] = ms / torch if isinstance(torch, (int, float)) else None
        row["XLA GiB"] = r.analysis.total_bytes / GiB if r.analysis else None
        row["peak GiB so far"] = None if r.peak_bytes is None else r.peak_bytes / GiB
        row["GFLOP/step"] = r.analysis.flops / 1e9 if r.analysis else None
        row["TFLOP/s"] = r.analysis.flops / (ms / 1e3) / 1e12 if r.analysis else None
        row["predicted ms"] = (
            1e3 * predicted_step_seconds(r.analysis.flops, r.analysis.bytes_accessed, chip[1])
            if chip and r.analysis else None)
        row["compile s"] = r.compile_s
        for p in PRECISIONS:
            row[f"{p} (time, loss vs default)"] = precision_cell(r, precision.get(r.name, {})
                                                                   .get(p))
        row["error"] = None
        rows.append(row)
    return rows


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _torch_times(module_name: str, names: set[str], *, repeats: int, paper: bool
                 ) -> dict[str, float | str]:
    """Median ms of the PyTorch reference steps of one cases module, built on the GPU."""
    import torch

    torch.set_default_device("cuda")
    try:
        module = importlib.import_module(f"benchmarks.{module_name}")
        out: dict[str, float | str] = {}
        for case in module.cases(paper=paper, with_torch=True):
            if case.name not in names or case.torch_step is None:
                continue
            for _ in range(2):
                case.torch_step()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                case.torch_step()  # ends with .item(): synchronised
                times.append(time.perf_counter() - start)
            out[case.name] = 1e3 * statistics.median(times)
        return out
    finally:
        torch.set_default_device("cpu")


def first_of_each_experiment(steps: Sequence[PlanStep]) -> list[PlanStep]:
    """``steps`` reordered: the first step of every experiment, then the others in order (so
    that a spent budget still leaves every experiment measured)."""
    seen: set[str] = set()
    firsts, rest = [], []
    for step in steps:
        (rest if step.experiment in seen else firsts).append(step)
        seen.add(step.experiment)
    return firsts + rest


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the checks of the module doc; write and return the step rows."""
    parser = benchmark_parser(__doc__, name="gpu_check")
    parser.add_argument("--only", nargs="+", default=None,
                        help="only the steps whose name contains one of these strings "
                             "(\"training\" selects the InvSharpNet training)")
    parser.add_argument("--smoke", action="store_true",
                        help="smoke presets on any device (tests; seconds per step)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="seconds for steps 1, 3 and 4 together: what has not started when "
                             "they are spent is skipped (default 240)")
    parser.add_argument("--train-s", type=float, default=120.0,
                        help="seconds of InvSharpNet training (default 120)")
    parser.add_argument("--train-pool", type=int, default=32,
                        help="simulated slices the training draws its batches from (default 32)")
    args = parser.parse_args(argv)
    start_all = time.perf_counter()
    preset = "smoke" if args.smoke else "paper"
    repeats = min(args.repeats, 3) if args.smoke else args.repeats
    only = args.only

    def selected(name: str) -> bool:
        return not only or any(s.lower() in name.lower() for s in only)

    def budget_left() -> float:
        return args.budget_s - (time.perf_counter() - start_all - train_s)

    steps = [s for s in plan_steps(preset, paper_px=False) if selected(s.name)]
    steps = first_of_each_experiment(steps)
    want_training = selected("InvSharpNet training")
    if not steps and not want_training:
        raise SystemExit(f"gpu_check: nothing matches --only {only}")
    info = machine_info()
    print(f"gpu_check: {info['device_kind']} ({info['backend']}), {len(steps)} step(s), "
          f"preset {preset}", flush=True)

    train_s = 0.0
    results, inputs = [], {}
    for step in steps:
        if budget_left() <= 0:
            results.append(StepResult(name=step.name, batch=step.batch_size,
                                      error=f"skipped (--budget-s {args.budget_s:g} spent)"))
            continue
        state = jax.jit(step.make_state)(jax.random.key(0))
        batch = step.make_batch()
        r = run_step(step, warmup=args.warmup, repeats=repeats, state=state, batch=batch)
        results.append(r)
        inputs[step.name] = (step, _halve(batch, r.batch))
        print(f"  {step.name}: " + (r.error or f"{1e3 * statistics.median(r.times):.2f} ms "
                                                f"(batch {r.batch}, compile {r.compile_s:.0f} s)"),
              flush=True)
        del state, batch
        gc.collect()

    training = None
    if want_training:
        train_start = time.perf_counter()
        step = next(s for s in plan_steps(preset, paper_px=False, only=[TRAIN_STEP_NAME])
                    if s.name == TRAIN_STEP_NAME)
        from benchmarks.cases_invsharp import invsharp_batch

        exp_preset = importlib.import_module("experiments.invsharp").PRESETS[preset]
        pool = invsharp_batch(exp_preset, max(args.train_pool, exp_preset.batch_size))
        done = next((r for r in results if r.name == TRAIN_STEP_NAME and not r.error), None)
        size = done.batch if done else exp_preset.batch_size
        compiled = done.compiled if done else None
        while True:
            try:
                out = train_for(step, pool, seconds=args.train_s, batch_size=size,
                                compiled=compiled)
                training = training_row(out["losses"], out["seconds"], out["batch"],
                                        fixed_before=out["fixed_before"],
                                        fixed_after=out["fixed_after"])
                training["compile s"] = out["compile_s"]
                break
            except Exception as err:  # noqa: BLE001
                if _is_oom(err) and size > 1:
                    size, compiled = size // 2, None
                    continue
                training = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
                break
        train_s = time.perf_counter() - train_start
        print(f"  training: {training}", flush=True)
        del pool, compiled
    for r in results:
        r.compiled = None  # the executables are not needed any more
    gc.collect()

    precision: dict[str, dict[str, StepResult]] = {}
    for r in results:
        if r.error:
            continue
        step, batch = inputs[r.name]
        for p in PRECISIONS:
            if budget_left() <= 0:
                break
            state = jax.jit(step.make_state)(jax.random.key(0))
            other = run_step(step, precision=p, warmup=1, repeats=3, state=state, batch=batch)
            other.compiled = None
            precision.setdefault(r.name, {})[p] = other
            print(f"  {r.name} @ {p}: {precision_cell(r, other)}", flush=True)

    torch_ms: dict[str, float | str] = {}
    if _torch_cuda():
        names = {r.name for r in results if not r.error}
        for module_name in TORCH_MODULES:
            module = importlib.import_module(f"benchmarks.{module_name}")
            wanted = names & set(module.CASE_NAMES)
            if not wanted:
                continue
            if budget_left() <= 0:
                torch_ms.update(dict.fromkeys(wanted, "skipped (budget)"))
                continue
            try:
                torch_ms.update(_torch_times(module_name, wanted, repeats=repeats,
                                             paper=not args.smoke))
            except Exception as err:  # noqa: BLE001
                torch_ms.update(dict.fromkeys(wanted, f"failed: {type(err).__name__}"))
    rows = result_rows(results, precision=precision, torch_ms=torch_ms,
                       device_kind=info["device_kind"])
    run_s = time.perf_counter() - start_all
    title = (f"GPU check, {preset} presets, {len(info['devices'])} x {info['device_kind']} "
             f"({info['backend']}; batch = global batch over the devices), "
             f"median of {repeats} updates after {LOSS_STEPS}+{args.warmup}; default matmul "
             f"precision; run {run_s:.0f} s")
    if rows:
        write_table(rows, args.out, "gpu_check", title=title, columns=COLUMNS,
                    extra={"preset": preset, "training": training, "run_seconds": run_s,
                           "times_s": {r.name: r.times for r in results},
                           "losses": {r.name: r.losses for r in results}})
    if training is not None:
        lines = ["", f"**InvSharpNet training** (method back, {preset} preset): "
                 + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in training.items()), ""]
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "gpu_check.md", "a") as f:
            f.write("\n".join(lines))
        print("\n".join(lines))
    print(f"gpu_check: done in {run_s:.0f} s")
    return rows


if __name__ == "__main__":
    main()
