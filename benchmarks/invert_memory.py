"""Memory and time of the InvSharpNet backward step: implicit versus unrolled inverse.

``python -m benchmarks.invert_memory [--paper] [--out DIR] [--repeats N] [--warmup N]
[--iterations 1 2 4 8 16] [--no-time]``

The step is the experiment's backward training step (:func:`jaxmri.models.invsharp.
make_train_step`, method ``back``: power iteration, block-by-block fixed-point inverse, L1 loss,
gradients, Adam) at the preset's network, image size and batch (cpu: 4 blocks x 5 convs x 32
channels, 48 px, batch 4; ``--paper``: 12 x 5 x 128, 320 px, batch 8), with the inverse's
gradient mode swapped:

* ``implicit``: :class:`jaxmri.nn.fixed_point.Implicit` with ``max_iter = k`` and ``tol = 1e-30``
  (the API refuses ``tol = 0``; 1e-30 stops only once a float32 step changes nothing, so ``k``
  iterations run unless the iteration has converged to float32 exactly first: the
  ``iterations done`` column is the forward count actually taken, the maximum over blocks). The
  backward pass solves the adjoint fixed point with the same cap, in a ``while_loop`` as well.
* ``unrolled``: :class:`jaxmri.nn.fixed_point.Unrolled` ``(k)``, autodiff through the ``k``
  iterations (the paper's training mode, with ``k = 2``).

For each ``k`` the step is jitted (one device, the global batch; the gradient ``pmean`` is bound
by a size-1 ``vmap``, so the program is the one ``fit`` runs on each device), compiled once, and
measured from that executable: XLA's buffer assignment (arguments + outputs + temporaries - aliased
bytes, as :func:`benchmarks._common.compiled_memory` computes it) and the median wall time of a
step (implicit and unrolled alternating, after warm-up), each step ending with the metrics on the
host. Writes ``invert_memory.md/.json/.png`` under ``--out``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import (
    benchmark_parser,
    block,
    median,
    time_alternating,
    write_table,
)
from jaxmri.cpu import conv_for
from jaxmri.models import invsharp as isn
from jaxmri.nn.fixed_point import Implicit, Unrolled
from jaxmri.train import AXIS_NAME

__all__ = ["ITERATIONS", "MeasuredStep", "build_step", "inverse_mode", "main"]

ITERATIONS = (1, 2, 4, 8, 16)
# Implicit's stopping tolerance: it must be > 0; a float32 relative step is never this small
# unless it is exactly 0, i.e. the iteration has stopped moving.
IMPLICIT_TOL = 1e-30
MIB = 2.0 ** 20


@dataclasses.dataclass(frozen=True)
class _ModeConfig(isn.InvSharpConfig):
    """An :class:`~jaxmri.models.invsharp.InvSharpConfig` whose training inverse uses
    ``inverse_mode`` instead of ``Unrolled(inverse_iterations)``, so that the experiment's own
    ``make_train_step`` builds the step."""

    inverse_mode: Implicit | Unrolled = Unrolled(2)

    @property
    def mode(self) -> Implicit | Unrolled:
        return self.inverse_mode


def inverse_mode(kind: str, iterations: int) -> Implicit | Unrolled:
    """``"implicit"`` -> ``Implicit(1e-30, max_iter=k)``; ``"unrolled"`` -> ``Unrolled(k)``.

    The implicit adjoint solve is unrolled for ``k <= 16`` (XLA:CPU runs short while loops of
    transposed convolutions slowly; the same result)."""
    if kind == "implicit":
        return Implicit(tol=IMPLICIT_TOL, max_iter=iterations, unroll_adjoint=iterations <= 16)
    if kind == "unrolled":
        return Unrolled(num_iter=iterations)
    raise ValueError(f"kind must be 'implicit' or 'unrolled', got {kind!r}")


@dataclasses.dataclass
class MeasuredStep:
    """One compiled backward step.

    Attributes:
      memory: bytes of ``argument``, ``output``, ``temp``, ``alias`` and ``peak`` (XLA buffer
        assignment of the compiled step).
      iterations_done: forward fixed-point iterations the inverse takes on the batch at the
        initial state (maximum over blocks); ``None`` when not counted.
      run: ``() -> None``, one update (advances the state; metrics copied to the host).
    """

    memory: dict[str, int]
    iterations_done: int | None
    run: Callable[[], None]


def _memory(compiled: Any) -> dict[str, int]:
    # The formula of _common.compiled_memory, applied to an executable that is also timed (one
    # compile per configuration instead of two).
    stats = compiled.memory_analysis()
    if isinstance(stats, (list, tuple)):
        stats = stats[0]
    out = {k: int(getattr(stats, f"{k}_size_in_bytes"))
           for k in ("argument", "output", "temp", "alias")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def build_step(config: isn.InvSharpConfig, mode: Implicit | Unrolled,
               batch: dict[str, np.ndarray], *, image_size: int, learning_rate: float = 1e-3,
               seed: int = 0, state: Any = None,
               count_iterations: bool = True) -> MeasuredStep:
    """Compile the backward step of ``config`` with the inverse ``mode`` on ``batch``.

    Args:
      config: the network and loss configuration (e.g. a preset's ``network``).
      mode: the gradient mode of the inverse (see :func:`inverse_mode`).
      batch: ``recon``, ``target``, ``zero_filled`` complex64 ``(B, S, S)``.
      image_size: ``S`` (the spectral-norm state is initialised at ``S x S``).
      state: the initial train state (default: ``create_states(key(seed), config, "back")``);
        pass one to share its (slow, eager) initialisation between modes.
      count_iterations: also run the inverse once to count the implicit iterations.
    """
    network = isn.build_network(config, conv_general_dilated=conv_for())
    if state is None:
        state = _initial_state(config, image_size, learning_rate, seed)
    train_step = isn.make_train_step(network, _ModeConfig(**_fields(config), inverse_mode=mode),
                                     "back")
    # A size-1 vmap binds the pmean axis: the program is one device's step of fit's pmap.
    step = jax.jit(jax.vmap(train_step, in_axes=(0, 0, None), axis_name=AXIS_NAME))
    add_axis = functools.partial(jax.tree.map, lambda x: jnp.asarray(x)[None])
    holder = {"state": add_axis(state)}
    dbatch = add_axis(batch)
    key = jax.random.key(seed)
    compiled = step.lower(holder["state"], dbatch, key).compile()

    def run() -> None:
        new_state, metrics = compiled(holder["state"], dbatch, key)
        jax.tree.map(lambda m: float(m[0]), metrics)  # to the host, as fit does every step
        holder["state"] = block(new_state)

    if isinstance(mode, Unrolled):
        done = mode.num_iter
    elif not count_iterations:
        done = None
    else:
        _, info = jax.jit(functools.partial(network.apply, mode=mode, method="inverse"))(
            state.variables(), isn.pair(batch["target"], batch["zero_filled"]))
        done = int(np.max(np.asarray(info.num_iter)))
    return MeasuredStep(memory=_memory(compiled), iterations_done=done, run=run)


def _initial_state(config, image_size, learning_rate, seed):
    return isn.create_states(jax.random.key(seed), config, "back", (image_size, image_size),
                             learning_rate=learning_rate, conv_general_dilated=conv_for())


def _fields(config: isn.InvSharpConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(isn.InvSharpConfig)}


def measure(config: isn.InvSharpConfig, batch: dict[str, np.ndarray], *, image_size: int,
            iterations: Sequence[int] = ITERATIONS, learning_rate: float = 1e-3,
            repeats: int = 0, warmup: int = 1, count_iterations: bool = True,
            seed: int = 0) -> list[dict[str, Any]]:
    """Table rows for both modes at every iteration count (``repeats = 0``: memory only).

    Each row: ``inverse``, ``iterations``, ``iterations done``, ``peak MiB``, ``temp MiB``,
    ``args+out MiB``, ``ms/step`` (median; ``None`` without timing), ``peak / peak at 1``, and
    the raw byte counts under ``memory``.
    """
    rows = {kind: [] for kind in ("implicit", "unrolled")}
    state = _initial_state(config, image_size, learning_rate, seed)
    for k in iterations:
        built = {kind: build_step(config, inverse_mode(kind, k), batch, image_size=image_size,
                                  learning_rate=learning_rate, seed=seed, state=state,
                                  count_iterations=count_iterations)
                 for kind in rows}
        times = (time_alternating({kind: b.run for kind, b in built.items()}, repeats=repeats,
                                  warmup=warmup, settle_s=0.0)  # one framework: no settling
                 if repeats > 0 else None)
        for kind, b in built.items():
            mem = b.memory
            rows[kind].append({
                "inverse": kind, "iterations": k, "iterations done": b.iterations_done,
                "peak MiB": mem["peak"] / MIB, "temp MiB": mem["temp"] / MIB,
                "args+out MiB": (mem["argument"] + mem["output"] - mem["alias"]) / MIB,
                "ms/step": 1e3 * median(times[kind]) if times else None,
                "memory": mem})
    for kind_rows in rows.values():
        base = kind_rows[0]["memory"]["peak"]
        for row in kind_rows:
            row["peak / peak at 1"] = row["memory"]["peak"] / base
    return rows["implicit"] + rows["unrolled"]


def _plot(path, rows: list[dict[str, Any]], *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = rows[0]["ms/step"] is not None
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(10 if timed else 5.5, 4.0),
                             squeeze=False)
    for kind in ("implicit", "unrolled"):
        sel = [r for r in rows if r["inverse"] == kind]
        its = [r["iterations"] for r in sel]
        axes[0, 0].plot(its, [r["peak MiB"] for r in sel], "o-", label=kind)
        if timed:
            axes[0, 1].plot(its, [r["ms/step"] for r in sel], "o-", label=kind)
    labels = [("peak memory (MiB)", "XLA buffer assignment")] + (
        [("ms / step", "median wall time")] if timed else [])
    for ax, (ylabel, sub) in zip(axes[0], labels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["iterations"] for r in rows}),
                      [str(i) for i in sorted({r["iterations"] for r in rows})])
        ax.set_xlabel("fixed-point iterations")
        ax.set_ylabel(ylabel)
        ax.set_title(sub)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from benchmarks.cases_invsharp import invsharp_batch
    from experiments.invsharp import PRESETS

    parser = benchmark_parser(__doc__, name="invert_memory")
    parser.add_argument("--iterations", type=int, nargs="+", default=list(ITERATIONS),
                        help="fixed-point iteration counts (default 1 2 4 8 16)")
    parser.add_argument("--no-time", action="store_true",
                        help="compile and report memory only (e.g. --paper on a CPU)")
    args = parser.parse_args(argv)
    preset = PRESETS["paper" if args.paper else "cpu"]
    config = preset.network
    batch = invsharp_batch(preset, preset.batch_size)
    started = time.perf_counter()
    rows = measure(config, batch, image_size=preset.image_size, iterations=args.iterations,
                   learning_rate=preset.learning_rate,
                   repeats=0 if args.no_time else args.repeats, warmup=args.warmup)
    size = (f"{config.num_blocks} blocks x {config.depth} convs x {config.hidden}, "
            f"{preset.image_size} px, batch {preset.batch_size}")
    title = f"InvSharpNet backward step: implicit vs unrolled inverse ({size})"
    columns = ["inverse", "iterations", "iterations done", "peak MiB", "temp MiB",
               "args+out MiB", "ms/step", "peak / peak at 1"]
    write_table(rows, args.out, "invert_memory", title=title, columns=columns,
                extra={"preset": "paper" if args.paper else "cpu", "repeats": args.repeats,
                       "implicit_tol": IMPLICIT_TOL,
                       "seconds": time.perf_counter() - started})
    _plot(args.out / "invert_memory.png", rows, title=title)
    implicit = [r for r in rows if r["inverse"] == "implicit"]
    print(f"implicit: peak at {implicit[-1]['iterations']} iterations = "
          f"{implicit[-1]['peak / peak at 1']:.3f} x peak at {implicit[0]['iterations']} "
          "(target <= 1.2)")
    return rows


if __name__ == "__main__":
    main()
