"""Data parallelism: the same training run on 1, 2 and 4 devices at the same global batch.

``python -m benchmarks.pmap [--devices 1 2 4] [--steps 5] [--paper] [--out DIR]``

Each device count runs in its own process, because the number of (virtual) CPU devices is fixed
when XLA starts (``XLA_FLAGS=--xla_force_host_platform_device_count=N``). Every process trains
the RecNet of paper 003 (:func:`jaxmri.models.refine.recnet_train_step`, a DC-CNN cascade on the
complex MSE; its step uses no randomness and no batch statistics, so the update is a function of
the global batch alone) from the same initial parameters on the same batches for ``--steps``
updates with :func:`jaxmri.train.make_parallel_step`, exactly as ``fit`` does: once with the
experiment's Adam (timed) and once with plain SGD at the same learning rate.

Pmapping must not change the result: gradients are averaged over devices with ``pmean``, so
after ``k`` plain SGD steps the parameters must agree with the 1-device run to float32 rounding
(the check; the table reports the largest difference relative to each leaf's scale). With the
experiment's Adam the same runs are reported too, as the largest difference in units of the
learning rate: Adam divides each gradient by its own running magnitude, so a parameter whose
gradient is rounding noise moves by up to ``lr`` per step in the noise's sign, and the float32
rounding of a different summation order (per-device means averaged by ``pmean``) shows there
at the ``1e-1 lr`` level although the gradients agree. The table also gives the median time
per Adam step (on CPU, virtual devices share the same cores,
so the time shows the overhead of splitting, not a speed-up; on a multi-GPU machine it shows
the scaling).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks._common import benchmark_parser, median, save_bar_plot, write_table

# float32 rounding of a different summation order (per-device means averaged by pmean instead
# of one mean over the batch), accumulated over a few SGD steps (measured: ~7e-6).
RELATIVE_TOLERANCE = 1e-4


def _child(num_devices: int, steps: int, paper: bool, result_path: Path, warmup: int) -> None:
    """Run inside a process started with ``num_devices`` virtual devices; writes npz + json."""
    import time

    import jax
    import optax

    from experiments import refine as experiment
    from jaxmri.data import load_slices
    from jaxmri.models import refine as refine_model
    from jaxmri.train import make_parallel_step, replicate, shard_batch, unreplicate
    from jaxmri.train.state import create_train_state

    if jax.local_device_count() != num_devices:
        raise RuntimeError(f"expected {num_devices} devices, XLA started {jax.devices()}")
    preset = experiment.PRESETS["paper" if paper else "cpu"]
    # The same global batch for every device count: divisible by 1, 2 and 4.
    global_batch = 8
    slices = load_slices(None, image_size=preset.image_size, split="train")
    batch_fn = experiment.recon_batches(slices, preset=preset, batch_size=global_batch, seed=11)
    batches = [batch_fn(s) for s in range(steps + warmup)]
    prog = experiment.programs(preset, 0)
    ex = batches[0]
    variables = prog.init_recnet(jax.random.key(1), ex["zero_filled"][:1], ex["kspace"][:1],
                                 ex["mask"][:1, None], ex["maps"][:1])
    pstep = make_parallel_step(refine_model.recnet_train_step)
    key, stop = jax.random.key(0), np.zeros((num_devices,), np.int32)

    def run(rstate, batch, step):
        rbatch = shard_batch(batch, num_local_devices=num_devices)
        rstate, metrics, _ = pstep(rstate, rbatch, key, step, stop)
        return jax.block_until_ready(rstate), float(unreplicate(metrics)["loss"])

    summary = {"devices": num_devices, "per_device_batch": global_batch // num_devices,
               "global_batch": global_batch, "image_size": preset.image_size,
               "learning_rate": preset.recnet_lr, "backend": jax.default_backend()}
    arrays = {}
    for name, tx in (("adam", experiment._adam(preset.recnet_lr)),
                     ("sgd", optax.sgd(preset.recnet_lr))):
        state = create_train_state(prog.recnet, tx, variables)
        # Compile and warm up on a throw-away copy, then train the measured run from step 0.
        rstate = replicate(state)
        for step in range(warmup):
            run(rstate, batches[step], step)
        rstate, times, losses = replicate(state), [], []
        for step in range(steps):
            start = time.perf_counter()
            rstate, loss = run(rstate, batches[step], step)
            times.append(time.perf_counter() - start)
            losses.append(loss)
        summary[name] = {"times": times, "losses": losses}
        params = unreplicate(rstate).params
        arrays.update({f"{name}/{jax.tree_util.keystr(path)}": np.asarray(leaf)
                       for path, leaf in jax.tree_util.tree_leaves_with_path(params)})
    np.savez(result_path.with_suffix(".npz"), **arrays)
    result_path.with_suffix(".json").write_text(json.dumps(summary))


def run_device_count(num_devices: int, *, steps: int, paper: bool, out: Path,
                     warmup: int = 1) -> tuple[dict, dict[str, np.ndarray]]:
    """Start a child process with ``num_devices`` virtual devices; ``(summary, params)``."""
    out.mkdir(parents=True, exist_ok=True)
    result = out / f"pmap_{num_devices}"
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"])
    cmd = [sys.executable, "-m", "benchmarks.pmap", "--child", str(num_devices), "--steps",
           str(steps), "--warmup", str(warmup), "--result", str(result)]
    if paper:
        cmd.append("--paper")
    subprocess.run(cmd, env=env, check=True, cwd=Path(__file__).resolve().parents[1])
    summary = json.loads(result.with_suffix(".json").read_text())
    with np.load(result.with_suffix(".npz")) as data:
        params = {k: data[k] for k in data.files}
    return summary, params


def parameter_disagreement(params: dict[str, np.ndarray],
                           reference: dict[str, np.ndarray]) -> float:
    """``max_leaf max|p - p_ref| / max(max|p_ref|, 1e-12)``: the worst relative difference."""
    if params.keys() != reference.keys():
        raise ValueError("the runs trained different parameter trees")
    worst = 0.0
    for name, ref in reference.items():
        scale = max(float(np.max(np.abs(ref))), 1e-12)
        worst = max(worst, float(np.max(np.abs(params[name] - ref))) / scale)
    return worst


def _optimiser_params(params: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {k.split("/", 1)[1]: v for k, v in params.items() if k.startswith(f"{name}/")}


def largest_change(params: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """``max |p - p_ref|`` over every parameter (absolute)."""
    return max(float(np.max(np.abs(params[k] - reference[k]))) for k in reference)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every device count, compare parameters with the first, write the table."""
    parser = benchmark_parser(__doc__, name="pmap")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4],
                        help="device counts to compare; the first is the reference")
    parser.add_argument("--steps", type=int, default=5, help="training steps per run")
    parser.add_argument("--child", type=int, help=argparse_hidden())
    parser.add_argument("--result", type=Path, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.steps, args.paper, args.result, args.warmup)
        return []
    if any(8 % n for n in args.devices):
        parser.error(f"--devices must divide the global batch 8, got {args.devices}")
    runs = [run_device_count(n, steps=args.steps, paper=args.paper, out=args.out / "pmap_runs",
                             warmup=args.warmup) for n in args.devices]
    ref_summary, ref_params = runs[0]
    ref_time = median(ref_summary["adam"]["times"])
    lr = ref_summary["learning_rate"]
    rows = []
    for summary, params in runs:
        sgd = parameter_disagreement(_optimiser_params(params, "sgd"),
                                     _optimiser_params(ref_params, "sgd"))
        adam = largest_change(_optimiser_params(params, "adam"),
                              _optimiser_params(ref_params, "adam"))
        step_time = median(summary["adam"]["times"])
        rows.append({
            "devices": summary["devices"],
            "per-device batch": summary["per_device_batch"],
            "ms/step": 1e3 * step_time,
            f"speed-up vs {ref_summary['devices']}": ref_time / step_time,
            "final loss": summary["adam"]["losses"][-1],
            "SGD max rel. param diff": sgd,
            "agrees": "yes" if sgd <= RELATIVE_TOLERANCE else "NO",
            "Adam max |param diff| / lr": adam / lr,
        })
    title = (f"pmap: RecNet (paper 003) training, global batch {ref_summary['global_batch']}, "
             f"{ref_summary['image_size']} px, {args.steps} steps per run, time per Adam step; "
             f"parameters compared after {args.steps} SGD steps (tolerance "
             f"{RELATIVE_TOLERANCE:g} of each leaf's scale) and {args.steps} Adam steps")
    write_table(rows, args.out, "pmap", title=title,
                extra={"steps": args.steps, "tolerance": RELATIVE_TOLERANCE})
    save_bar_plot(args.out / "pmap.png", [f"{r['devices']} dev" for r in rows],
                  {"ms/step": [r["ms/step"] for r in rows]}, ylabel="ms per step",
                  title="RecNet step time by device count (same global batch)")
    if any(r["agrees"] == "NO" for r in rows):
        raise SystemExit("pmap: parameters disagree across device counts (see the table)")
    return rows


def argparse_hidden() -> str:
    """Help text that hides an internal option from ``--help``."""
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
