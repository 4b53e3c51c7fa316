"""Where the step time goes: one 3x3 convolution (forward + backward), XLA against PyTorch.

``python -m benchmarks.conv_layers [--split] [--repeats R] [--out DIR]``

The training steps of all five methods are dominated by 3x3 convolutions of small images
(3 to 64 px, 16 to 512 channels). This script times the building block alone, at shapes the
cpu presets use: ``y = tanh(conv3x3(x, w))`` summed, with the gradients for ``x`` and ``w``
(the work a layer does in a training step), jit-compiled in JAX (``lax.conv_general_dilated``,
NHWC / HWIO, the layout Flax uses, with jaxmri's XLA:CPU setting from :func:`jaxmri.cpu.configure`;
``JAXMRI_XLA_DEFAULTS=0`` times jaxlib's own YNNPACK convolutions instead) and eager in PyTorch
(NCHW / OIHW), alternating, float32.
It also times jaxmri's XLA:CPU convolution (:data:`jaxmri.cpu.conv_general_dilated`, which the
networks use on the CPU) and the same convolution written as an im2col matrix product in JAX, to
separate
the convolution kernel from the arithmetic (XLA's CPU matmul is as fast as PyTorch's: see the
matmul row). Writes ``<out>/conv_layers.{md,json,png}``.

``--split`` times the three convolutions of a training step separately instead -- forward,
input gradient and kernel gradient, each alone, jaxmri's against PyTorch's (``aten``'s
``convolution_backward`` with one output selected), with the same value checks -- and writes
``<out>/conv_layers_split.{md,json,png}``: which of the three is slow on the running CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import (
    benchmark_parser,
    matmul_gflops,
    median,
    save_bar_plot,
    time_alternating,
    write_table,
)
from benchmarks.step_time import torch_available, torch_matmul_gflops

# (batch, side, channels in, channels out, where it occurs)
SHAPES = (
    (4, 64, 16, 16, "joint Rec+SR SR module / RRDB (64 px)"),
    (4, 48, 32, 32, "InvSharpNet blocks (48 px, 32 ch)"),
    (4, 48, 32, 4, "InvSharpNet block output (32 -> 4 ch)"),
    (4, 48, 128, 128, "InvSharpNet paper width (128 ch) at 48 px"),
    (4, 64, 64, 64, "VGG16 block 1 of the perceptual loss (64 px)"),
    (4, 16, 256, 256, "VGG16 block 3 (16 px, 256 ch)"),
    (4, 6, 512, 512, "VGG16 block 4 at 48 px input (6 px, 512 ch)"),
    (16, 16, 32, 32, "EDSR body (16 px, batch 16)"),
    (16, 16, 32, 128, "EDSR upsampling, before the pixel shuffle (32 -> 128 ch)"),
    (16, 32, 32, 1, "EDSR tail (32 px, 32 -> 1 ch)"),
    (8, 48, 32, 32, "RecNet cascade (48 px)"),
    (8, 48, 2, 32, "RecNet cascade input (2 -> 32 ch)"),
    (8, 48, 32, 2, "RecNet cascade output (32 -> 2 ch)"),
)


def conv_xla(x: jax.Array, w: jax.Array) -> jax.Array:
    """``(N, H, W, Ci) x (3, 3, Ci, Co) -> (N, H, W, Co)``, zero 'SAME' padding."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_jaxmri(x: jax.Array, w: jax.Array) -> jax.Array:
    """The same convolution through :data:`jaxmri.cpu.conv_general_dilated` (what every
    jaxmri network uses: matrix products for narrow layers, a faster kernel gradient)."""
    from jaxmri.cpu import conv_general_dilated

    return conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_im2col(x: jax.Array, w: jax.Array) -> jax.Array:
    """The same convolution as one matrix product of the 9 shifted copies of ``x``."""
    kh, kw, ci, co = w.shape
    h, wd = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + wd, :] for i in range(kh) for j in range(kw)],
                           axis=-1)
    return jnp.einsum("nhwk,kd->nhwd", cols, w.reshape(kh * kw * ci, co))


def _layer_inputs(batch: int, side: int, c_in: int, c_out: int):
    """``(x, w, dy)`` as float32 numpy arrays (NHWC, HWIO, NHWC), fixed seed."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, side, side, c_in)).astype(np.float32)
    w = (rng.standard_normal((3, 3, c_in, c_out)) / np.sqrt(9 * c_in)).astype(np.float32)
    dy = rng.standard_normal((batch, side, side, c_out)).astype(np.float32)
    return x, w, dy


def layer_fns(batch: int, side: int, c_in: int, c_out: int, *, with_torch: bool):
    """``{name: fn}`` timing one forward + backward of the layer in each implementation."""
    x_np, w_np, _ = _layer_inputs(batch, side, c_in, c_out)
    x, w = jnp.asarray(x_np), jnp.asarray(w_np)
    fns, values = {}, {}
    for name, conv in (("XLA conv", conv_xla), ("jaxmri conv", conv_jaxmri),
                       ("JAX im2col", conv_im2col)):
        grad = jax.jit(jax.value_and_grad(lambda a, b, c=conv: jnp.sum(jnp.tanh(c(a, b))),
                                          argnums=(0, 1)))
        values[name] = float(grad(x, w)[0])
        fns[name] = lambda g=grad: jax.block_until_ready(g(x, w))
    if with_torch:
        import torch

        xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).requires_grad_()
        wt = torch.from_numpy(w_np.transpose(3, 2, 0, 1).copy()).requires_grad_()

        def torch_step():
            loss = torch.tanh(torch.nn.functional.conv2d(xt, wt, padding=1)).sum()
            torch.autograd.grad(loss, (xt, wt))
            return float(loss)

        values["PyTorch"] = torch_step()
        fns["PyTorch"] = torch_step
    ref = values["XLA conv"]
    for name, value in values.items():
        if abs(value - ref) > 1e-3 * max(abs(ref), 1.0):
            raise AssertionError(f"{name} computes {value}, XLA conv {ref}")
    return fns


DIRECTIONS = ("forward", "input grad", "kernel grad")


def jax_direction_fns(conv=conv_jaxmri):
    """``{direction: jitted fn(x, w, dy)}``: the forward convolution ``conv(x, w)`` (``dy``
    unused), its input gradient ``(d conv / d x)^T dy`` and its kernel gradient
    ``(d conv / d w)^T dy``, each compiled alone (XLA drops the primal that a VJP does not
    need), as reverse mode computes them in a training step."""
    return {
        "forward": jax.jit(lambda x, w, dy: conv(x, w)),
        "input grad": jax.jit(lambda x, w, dy: jax.vjp(lambda a: conv(a, w), x)[1](dy)[0]),
        "kernel grad": jax.jit(lambda x, w, dy: jax.vjp(lambda b: conv(x, b), w)[1](dy)[0]),
    }


def _torch_direction_fns(x_np, w_np, dy_np):
    """``{direction: fn() -> numpy array in JAX's layout}`` for PyTorch (NCHW / OIHW, eager,
    no autograd graph): ``conv2d`` and ``aten.convolution_backward`` with one output."""
    import torch

    xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
    wt = torch.from_numpy(w_np.transpose(3, 2, 0, 1).copy())
    dyt = torch.from_numpy(dy_np.transpose(0, 3, 1, 2).copy())

    def backward(mask):
        with torch.no_grad():
            return torch.ops.aten.convolution_backward(
                dyt, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, padding=1)

    def input_grad():
        return backward([True, False, False])[0]

    def kernel_grad():
        return backward([False, True, False])[1]

    timed = {"forward": forward, "input grad": input_grad, "kernel grad": kernel_grad}
    # NCHW -> NHWC for the activations, OIHW -> HWIO for the kernel.
    layouts = {"forward": (0, 2, 3, 1), "input grad": (0, 2, 3, 1), "kernel grad": (2, 3, 1, 0)}
    to_jax = {d: (lambda f=timed[d], p=layouts[d]: f().numpy().transpose(p)) for d in timed}
    return timed, to_jax


def split_fns(batch: int, side: int, c_in: int, c_out: int, *, with_torch: bool):
    """``{"jaxmri <direction>" / "PyTorch <direction>": fn()}`` timing each convolution of a
    training step alone; checks that PyTorch computes the same arrays as jaxmri."""
    x_np, w_np, dy_np = _layer_inputs(batch, side, c_in, c_out)
    x, w, dy = (jnp.asarray(a) for a in (x_np, w_np, dy_np))
    fns = {}
    jax_values = {}
    for direction, fn in jax_direction_fns().items():
        jax_values[direction] = np.asarray(fn(x, w, dy))
        fns[f"jaxmri {direction}"] = lambda f=fn: jax.block_until_ready(f(x, w, dy))
    if with_torch:
        timed, to_jax = _torch_direction_fns(x_np, w_np, dy_np)
        for direction in DIRECTIONS:
            got, want = to_jax[direction](), jax_values[direction]
            scale = max(float(np.max(np.abs(want))), 1e-6)
            if not np.allclose(got, want, rtol=0, atol=1e-4 * scale):
                raise AssertionError(f"{direction}: PyTorch differs from jaxmri by "
                                     f"{np.max(np.abs(got - want)) / scale:.2e} (relative)")
            fns[f"PyTorch {direction}"] = timed[direction]
    return fns


def _split_rows(args, with_torch: bool) -> list[dict]:
    rows = []
    for batch, side, c_in, c_out, where in SHAPES:
        times = time_alternating(split_fns(batch, side, c_in, c_out, with_torch=with_torch),
                                 repeats=args.repeats, warmup=args.warmup,
                                 min_timed_s=args.window)
        gflop = 2 * batch * side * side * 9 * c_in * c_out / 1e9  # one convolution's MACs
        row = {"layer": where, "shape NHWC": f"{batch}x{side}x{side}x{c_in}->{c_out}"}
        for direction in DIRECTIONS:
            jax_s = median(times[f"jaxmri {direction}"])
            row[f"jaxmri {direction} ms"] = 1e3 * jax_s
            row[f"jaxmri {direction} GFLOP/s"] = gflop / jax_s
            if with_torch:
                torch_s = median(times[f"PyTorch {direction}"])
                row[f"PyTorch {direction} ms"] = 1e3 * torch_s
                row[f"PyTorch {direction} GFLOP/s"] = gflop / torch_s
                row[f"{direction} jaxmri/PyTorch"] = jax_s / torch_s
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """Time every shape; write and return the table rows."""
    parser = benchmark_parser(__doc__, name="conv_layers")
    parser.add_argument("--split", action="store_true",
                        help="time forward, input gradient and kernel gradient separately")
    parser.set_defaults(repeats=20)
    args = parser.parse_args(argv)
    with_torch = torch_available()
    if args.split:
        return _main_split(args, with_torch)
    rows = []
    for batch, side, c_in, c_out, where in SHAPES:
        times = time_alternating(layer_fns(batch, side, c_in, c_out, with_torch=with_torch),
                                 repeats=args.repeats, warmup=args.warmup,
                                 min_timed_s=args.window)
        # forward conv + input gradient + weight gradient: three convolutions' worth of MACs.
        gflop = 3 * 2 * batch * side * side * 9 * c_in * c_out / 1e9
        row = {"layer": where, "shape NHWC": f"{batch}x{side}x{side}x{c_in}->{c_out}"}
        for name, values in times.items():
            row[f"{name} ms"] = 1e3 * median(values)
        for name, values in times.items():
            row[f"{name} GFLOP/s"] = gflop / median(values)
        if with_torch:
            row["XLA/PyTorch"] = median(times["XLA conv"]) / median(times["PyTorch"])
            row["jaxmri/PyTorch"] = median(times["jaxmri conv"]) / median(times["PyTorch"])
        rows.append(row)
    jax_mm = matmul_gflops()
    torch_mm = torch_matmul_gflops() if with_torch else None
    title = (f"3x3 conv forward + backward, float32, median of {args.repeats} alternating "
             f"turns (>= {args.window:g} s of calls timed in each); "
             f"2048^3 matmul: JAX {jax_mm:.0f} GFLOP/s"
             + (f", PyTorch {torch_mm:.0f} GFLOP/s" if torch_mm else ""))
    write_table(rows, args.out, "conv_layers", title=title,
                extra={"matmul_gflops": {"jax": jax_mm, "torch": torch_mm}})
    names = [k[:-3] for k in rows[0] if k.endswith(" ms")]
    save_bar_plot(args.out / "conv_layers.png", [r["shape NHWC"] for r in rows],
                  {n: [r[f"{n} GFLOP/s"] for r in rows] for n in names},
                  ylabel="GFLOP/s (higher is better)",
                  title="3x3 conv fwd+bwd throughput by implementation")
    return rows


def _main_split(args, with_torch: bool) -> list[dict]:
    """``--split``: one row per shape, each direction timed alone; writes ``conv_layers_split``."""
    rows = _split_rows(args, with_torch)
    frameworks = ("jaxmri", "PyTorch") if with_torch else ("jaxmri",)
    ms_columns = [f"{who} {d} ms" for d in DIRECTIONS for who in frameworks]
    ratio_columns = [f"{d} jaxmri/PyTorch" for d in DIRECTIONS] if with_torch else []
    title = (f"3x3 conv, each convolution of a training step alone, float32, median of "
             f"{args.repeats} alternating turns (>= {args.window:g} s of calls timed in each)")
    write_table(rows, args.out, "conv_layers_split", title=title,
                columns=["layer", "shape NHWC", *ms_columns, *ratio_columns])
    series = {f"{who} {d}": [r[f"{who} {d} GFLOP/s"] for r in rows]
              for d in DIRECTIONS for who in frameworks}
    save_bar_plot(args.out / "conv_layers_split.png", [r["shape NHWC"] for r in rows], series,
                  ylabel="GFLOP/s (higher is better)",
                  title="3x3 conv: forward, input and kernel gradient by framework")
    return rows


if __name__ == "__main__":
    main()
