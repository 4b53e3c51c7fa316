"""Will the paper presets fit on one GPU, and how long would their schedules take? Compile only.

``python -m benchmarks.paper_plan [--only NAME ...] [--no-paper-px] [--smoke] [--out DIR]
[--compute-fraction F] [--memory-fraction F]``

For every training step of the five experiments' ``paper`` presets (InvSharpNet backward, bi,
cWGAN and forward refinement; IFR-Net; DSGAN and EDSR; RecNet and the refinement GAN; joint
Rec+SR) the script builds the step with the experiment's own builders, makes the state with
:func:`jax.eval_shape` (nothing is initialised or allocated) and the batch as
:class:`jax.ShapeDtypeStruct` s of the experiment's batch layout at the preset's image size and
batch, wraps the step in :func:`jaxmri.train.make_parallel_step` exactly as
:func:`jaxmri.train.fit` does (one device: the per-device batch is the preset's batch), and
lowers and compiles it (``.lower(...).compile()``; nothing is executed). Where a preset shrinks
the paper's image (IFR-Net 128 vs the paper's 320 px knee, refinement 192 vs 512, joint Rec+SR
128 vs 256x232), a second row compiles the same step at the paper's size ("paper px"; the joint
model at 256x256, square as the experiment builds it).

Per step it reports the trainable parameters (next to the paper's count where the paper states
one), XLA's memory analysis of the compiled program (``compiled.memory_analysis()``: arguments,
outputs, temporaries; total = arguments + outputs + temporaries - aliased, what the program
needs live on one device), the FLOPs of one step (``compiled.cost_analysis()``) and a predicted
step time and schedule time on an H100 SXM and an H200 SXM (see :data:`CHIPS` and
:func:`predicted_step_seconds`: a roofline with an assumed fraction of the datasheet peaks).

Caveats, all stated in the output: the compile target is this machine's CPU, so the memory
figures are XLA:CPU's buffer assignment of the same program (XLA:GPU fuses more, so its
temporaries are usually smaller; cuDNN workspaces are not counted) and the byte traffic is
XLA:CPU's count; XLA's cost analysis counts the body of a ``while``/``fori_loop`` once, so a
step with a data-dependent loop (joint Rec+SR's DEQ: up to ``deq_max_iter`` iterations forward
and in the implicit backward) has its FLOPs and predicted time undercounted by up to that
factor; the loops of the other steps are unrolled or run once (InvSharpNet's two inverse
iterations, one power iteration). The step's state is not donated (``fit`` does not donate), so
the outputs hold a second copy of the state.

Writes ``<out>/paper_plan.{md,json,png}`` (default ``runs/benchmarks``): the table, a list of
what to change for every step over 80 GiB, and a bar plot of the memory per step against the
80 GiB line. ``--smoke`` builds the smoke presets (seconds; what the tests use).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import benchmark_parser, count_params, write_table

__all__ = [
    "CHIPS",
    "GiB",
    "PlanStep",
    "StepAnalysis",
    "abstract",
    "analyse",
    "compile_step",
    "plan_steps",
    "predicted_step_seconds",
    "max_fitting_batch",
    "plan_row",
    "main",
]

GiB = 1024**3
HBM_LIMIT_GIB = 80.0  # an H100's memory; the H200's 141 GB (131 GiB) is reported beside it

# Datasheet peaks of the SXM boards (NVIDIA H100 Tensor Core GPU datasheet and NVIDIA H200
# Tensor Core GPU datasheet; tensor-core figures there are quoted "with sparsity", the dense
# figures used here are half of them). Both chips have the same compute; the H200 has more and
# faster memory. TFLOP/s; bandwidth TB/s; memory GB (1e9 bytes).
CHIPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "hbm_tb_s": 3.35, "memory_gb": 80.0},
    "H200 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "hbm_tb_s": 4.8, "memory_gb": 141.0},
}
PEAK_SOURCE = ("NVIDIA H100 and H200 Tensor Core GPU datasheets (SXM): FP32 67 TFLOP/s; TF32 "
               "989 and BF16 1979 TFLOP/s with sparsity, i.e. 494.7 and 989.4 dense; HBM3 "
               "3.35 TB/s (H100, 80 GB) and HBM3e 4.8 TB/s (H200, 141 GB)")
# JAX on Hopper runs float32 convolutions and matmuls on TF32 tensor cores unless
# jax.default_matmul_precision asks for "highest"; the prediction uses that default.
DEFAULT_PRECISION = "tf32"
COMPUTE_FRACTION = 0.3  # assumed share of the dense peak a conv-net training step reaches
MEMORY_FRACTION = 0.6  # assumed share of the HBM bandwidth its memory-bound parts reach


@dataclasses.dataclass(frozen=True)
class PlanStep:
    """One training step of a paper preset, ready to compile.

    Attributes:
      name: row label; experiment: the experiments/ module it comes from.
      train_step: the experiment's pure ``(state, batch, key) -> (state, metrics)``.
      state: the step's state as a pytree of :class:`jax.ShapeDtypeStruct` (from
        :func:`jax.eval_shape` of the experiment's initialisation).
      batch: ``{key: ShapeDtypeStruct}``, the global batch (leading axis = batch).
      params: the trainable part of ``state`` (abstract), counted for the table.
      paper_params: the paper's stated parameter count, or ``None`` when not stated.
      steps: updates of this step in the preset's schedule, per run; runs: how many such runs
        the experiment trains (e.g. one per mask setting); schedule: the text of both.
      image: the network input's size as ``"HxW"``; family: picks the remedy text.
      make_state: ``key -> state``, the experiment's initialisation (``state`` is its
        :func:`jax.eval_shape`); make_batch: ``() -> {key: numpy array}``, a real batch of
        ``batch``'s layout from the experiment's data code (for :mod:`benchmarks.gpu_check`).
    """

    name: str
    experiment: str
    train_step: Callable
    state: Any
    batch: Mapping[str, jax.ShapeDtypeStruct]
    params: Any
    paper_params: float | None
    steps: int
    runs: int
    schedule: str
    image: str
    family: str
    make_state: Callable | None = None
    make_batch: Callable | None = None

    @property
    def batch_size(self) -> int:
        return int(next(iter(self.batch.values())).shape[0])


@dataclasses.dataclass(frozen=True)
class StepAnalysis:
    """What XLA says about one compiled step (bytes and FLOPs of one device's program)."""

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    flops: float
    bytes_accessed: float

    @property
    def total_bytes(self) -> int:
        """Bytes the program needs live: arguments + outputs + temporaries - aliased."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


def abstract(tree: Any) -> Any:
    """Every array leaf of ``tree`` as a :class:`jax.ShapeDtypeStruct` (others unchanged)."""
    def leaf(x):
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
        return x
    return jax.tree.map(leaf, tree)


def _first(analysis: Any) -> Any:
    # cost_analysis()/memory_analysis() give a dict/stats object or a one-element list of them,
    # depending on the jax version.
    if isinstance(analysis, (list, tuple)):
        return analysis[0] if analysis else {}
    return analysis


def analyse(compiled: Any) -> StepAnalysis:
    """Memory and cost analysis of a compiled program (``jax.stages.Compiled``)."""
    mem = _first(compiled.memory_analysis())
    cost = _first(compiled.cost_analysis()) or {}
    return StepAnalysis(
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
        flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)))


def compile_step(train_step: Callable, state: Any, batch: Mapping[str, Any]) -> Any:
    """Lower and compile ``train_step`` as :func:`jaxmri.train.fit` runs it, on one device.

    The step is wrapped by :func:`jaxmri.train.make_parallel_step` (pmap over one device: the
    per-device batch is the whole ``batch``); ``state`` and ``batch`` may be abstract
    (``ShapeDtypeStruct`` leaves). Returns the ``Compiled`` object; nothing runs.
    """
    from jaxmri.train import make_parallel_step

    def one_device(x):
        return jax.ShapeDtypeStruct((1, *np.shape(x)), x.dtype)

    pstep = make_parallel_step(train_step)
    key = jax.eval_shape(lambda: jax.random.key(0))
    stop = jax.ShapeDtypeStruct((1,), jnp.int32)
    lowered = pstep.lower(jax.tree.map(one_device, abstract(state)),
                          jax.tree.map(one_device, abstract(dict(batch))), key, 0, stop)
    return lowered.compile()


def predicted_step_seconds(flops: float, bytes_accessed: float, chip: Mapping[str, float], *,
                           precision: str = DEFAULT_PRECISION,
                           compute_fraction: float = COMPUTE_FRACTION,
                           memory_fraction: float = MEMORY_FRACTION) -> float:
    """Roofline estimate of one step: ``max(flops / (f_c peak), bytes / (f_m bandwidth))``.

    ``chip`` is one of :data:`CHIPS`; ``precision`` picks its dense peak (``"fp32"``,
    ``"tf32"``, ``"bf16"``). The fractions are assumptions (not measurements): the share of the
    peak a real step reaches. The estimate ignores launch overheads and host work, so small
    steps take longer than predicted.
    """
    if not (0 < compute_fraction <= 1 and 0 < memory_fraction <= 1):
        raise ValueError(f"fractions must lie in (0, 1], got {compute_fraction}, "
                         f"{memory_fraction}")
    if precision not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"precision must be fp32, tf32 or bf16, got {precision!r}")
    compute = flops / (compute_fraction * chip[precision] * 1e12)
    memory = bytes_accessed / (memory_fraction * chip["hbm_tb_s"] * 1e12)
    return max(compute, memory)


def max_fitting_batch(total_bytes: int, fixed_bytes: int, batch_size: int,
                      limit_bytes: float) -> int:
    """Largest per-device batch under ``limit_bytes``, memory taken as linear in the batch.

    ``total = fixed + batch * per_example``: ``fixed_bytes`` is what does not grow with the
    batch (the state as argument and as output), the rest is split evenly over the examples.
    Returns 0 when even the fixed part does not fit.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per_example = max(total_bytes - fixed_bytes, 1) / batch_size
    return max(0, int(math.floor((limit_bytes - fixed_bytes) / per_example)))


_REMEDY = {
    "invsharp": "jax.checkpoint (remat) each invertible block, or recompute block inputs from "
                "the outputs with the exact inverse (the network is invertible: activation "
                "memory independent of depth); bfloat16 activations halve the rest",
    "ifrnet": "jax.checkpoint each unrolled stage; bfloat16 feature maps",
    "dsgan": "jax.checkpoint the generator's layers; bfloat16",
    "refine": "jax.checkpoint the RecNet cascades and the refinement U-Net's encoder blocks; "
              "bfloat16 for the PatchGAN discriminator and the VGG features",
    "joint": "jax.checkpoint each RRDB-SFT block of the 23-block trunk (the trunk's activations "
             "dominate); bfloat16 for the trunk and the VGG16 perceptual features",
}


def plan_row(step: PlanStep, analysis: StepAnalysis, compile_s: float, *,
             compute_fraction: float = COMPUTE_FRACTION,
             memory_fraction: float = MEMORY_FRACTION) -> dict[str, Any]:
    """One table row: sizes, XLA's numbers, predictions and the fit verdict with its remedy."""
    state_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                      for x in jax.tree.leaves(abstract(step.state)))
    total_gib = analysis.total_bytes / GiB
    fits = total_gib <= HBM_LIMIT_GIB
    row: dict[str, Any] = {
        "step": step.name,
        "image": step.image,
        "batch/device": step.batch_size,
        "params": count_params(abstract(step.params)),
        "paper params": step.paper_params,
        "GFLOP/step": analysis.flops / 1e9,
        "args GiB": analysis.argument_bytes / GiB,
        "temp GiB": analysis.temp_bytes / GiB,
        "out GiB": analysis.output_bytes / GiB,
        "total GiB": total_gib,
        "fits 80 GiB": "yes" if fits else "NO",
    }
    hours = {}
    for chip_name, chip in CHIPS.items():
        short = chip_name.split()[0]
        seconds = predicted_step_seconds(analysis.flops, analysis.bytes_accessed, chip,
                                         compute_fraction=compute_fraction,
                                         memory_fraction=memory_fraction)
        row[f"{short} ms/step"] = 1e3 * seconds
        hours[short] = seconds * step.steps * step.runs / 3600.0
        row[f"{short} h"] = hours[short]
    row["schedule"] = step.schedule
    row["compile s"] = compile_s
    fixed = 2 * state_bytes  # the state in and out (not donated)
    row["_state_bytes"] = state_bytes
    row["_bytes_accessed"] = analysis.bytes_accessed
    row["_advice"] = None
    if not fits:
        limit = HBM_LIMIT_GIB * GiB
        batch = max_fitting_batch(analysis.total_bytes, fixed, step.batch_size, limit)
        devices = math.ceil(analysis.total_bytes / limit)
        row["_advice"] = (
            f"{step.name} ({step.image}, batch {step.batch_size}): {total_gib:.1f} GiB > "
            f"{HBM_LIMIT_GIB:g} GiB. Per-device batch <= {batch} fits (memory taken as linear "
            f"in the batch), i.e. the batch of {step.batch_size} over >= {devices} devices "
            f"(data parallel, as fit does); or {_REMEDY[step.family]}."
            + (" Fits the H200's 141 GB." if analysis.total_bytes <= 141e9 else ""))
    return row


# --------------------------------------------------------------------------------------------
# The steps, built with the experiments' own code
# --------------------------------------------------------------------------------------------


def _spec(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), jnp.dtype(dtype))


def _state_maker(module: Any, tx: Any, *example: jax.ShapeDtypeStruct) -> Callable:
    """``key -> create_train_state(module, tx, module.init(key, *zeros like example))``."""
    from jaxmri.train import create_train_state

    def make(key):
        return create_train_state(module, tx, module.init(
            key, *(jnp.zeros(x.shape, x.dtype) for x in example)))
    return make


def _shape_of(make_state: Callable) -> Any:
    return jax.eval_shape(make_state, jax.random.key(0))


def invsharp_steps(preset: Any, label: str = "") -> list[PlanStep]:
    """InvSharpNet (paper 000): the four method steps of Table 2 at ``preset``'s network.

    Batch (as ``experiments.invsharp.train_method`` feeds it): ``recon``, ``target``,
    ``zero_filled`` complex64 ``(B, S, S)``; state from
    :func:`jaxmri.models.invsharp.create_states`.
    """
    from jaxmri.models import invsharp as isn

    config, size, b = preset.network, preset.image_size, preset.batch_size
    batch = {k: _spec((b, size, size), jnp.complex64) for k in ("recon", "target", "zero_filled")}
    network = isn.build_network(config)
    critic = isn.Critic(tuple(config.critic_features))
    rows = []
    # (label, method, runs): cWGAN is trained twice (gamma 0.01 and 0.02).
    for name, method, runs in (("backward", "back", 1), ("bi", "bi", 1),
                               ("cWGAN", "cwgan", 2), ("forward refinement", "forward", 1)):
        make_state = functools.partial(isn.create_states, config=config, method=method,
                                       image_shape=(size, size),
                                       learning_rate=preset.learning_rate)
        state = _shape_of(make_state)
        params = ({"generator": state["generator"].params, "critic": state["critic"].params}
                  if method == "cwgan" else state.params)
        rows.append(PlanStep(
            name=f"InvSharpNet {name}{label}", experiment="invsharp",
            train_step=isn.make_train_step(network, config, method, critic), state=state,
            batch=batch, params=params,
            # The 5.4M of section 3.3 is the invertible network (the critic is extra).
            paper_params=5.4e6, steps=preset.steps, runs=runs,
            schedule=f"{preset.steps} steps" + (f" x {runs} (gamma 0.01, 0.02)" if runs > 1
                                                else ""),
            image=f"{size}x{size}", family="invsharp", make_state=make_state,
            make_batch=functools.partial(_invsharp_batch, preset)))
    return rows


def _invsharp_batch(preset: Any) -> dict[str, np.ndarray]:
    from benchmarks.cases_invsharp import invsharp_batch

    return invsharp_batch(preset, preset.batch_size)


def ifrnet_steps(preset: Any, label: str = "") -> list[PlanStep]:
    """IFR-Net (paper 002), the real-valued variant the experiment trains (eq. 12, Adam).

    Batch as :func:`experiments.ifrnet.real_valued_acquisition` returns it: ``target`` and
    ``mask`` float32, ``kspace`` and ``zero_filled`` complex64, all ``(B, S, S)``.
    """
    import optax

    from experiments import ifrnet as exp
    from jaxmri.models import ifrnet as ifr

    size, b = preset.image_size, preset.batch_size
    batch = {"target": _spec((b, size, size), jnp.float32),
             "kspace": _spec((b, size, size), jnp.complex64),
             "mask": _spec((b, size, size), jnp.float32),
             "zero_filled": _spec((b, size, size), jnp.complex64)}
    module = exp.build_model("IFR-Net", preset)
    make_state = _state_maker(module, optax.adam(preset.learning_rate),
                              _spec((1, size, size), jnp.complex64),
                              _spec((1, size, size), jnp.float32))
    state = _shape_of(make_state)
    runs = len(preset.table_iv_rates) + len(preset.table_v_masks)
    return [PlanStep(
        name=f"IFR-Net{label}", experiment="ifrnet",
        train_step=ifr.make_train_step(exp.predictor("IFR-Net", module)), state=state,
        batch=batch, params=state.params, paper_params=None, steps=preset.steps, runs=runs,
        schedule=f"{preset.steps} steps x {runs} mask settings (Tables IV, V)",
        image=f"{size}x{size}", family="ifrnet", make_state=make_state,
        make_batch=functools.partial(_ifrnet_batch, preset))]


def _ifrnet_batch(preset: Any) -> dict[str, np.ndarray]:
    """As ``benchmarks/cases_ifrnet.py``: phantoms, pseudo-radial mask at the first rate."""
    from benchmarks.cases_ifrnet import phantom_images
    from experiments import ifrnet as exp

    size, b = preset.image_size, preset.batch_size
    acq = exp.real_valued_acquisition(
        {"image": phantom_images(b, size, seed=0)}, np.arange(b),
        mask_fn=exp.mask_function(f"radial{round(100 * preset.table_iv_rates[0])}"),
        seed=0, snr_db=preset.snr_db)
    return {k: np.asarray(v) for k, v in acq.items()}


def dsgan_steps(preset: Any, label: str = "") -> list[PlanStep]:
    """DSGAN (generator + discriminator, one update each) and EDSR (L1) of paper 001.

    As ``experiments.dsgan_sr`` (and ``benchmarks/cases_dsgan.py``) build them: the GAN on
    ``gan_batch`` HR crops ``hr`` ``(B, C, C)`` and LR crops ``lr`` ``(B, c, c)`` (``c = (C -
    kernel) // 2 + 1``), EDSR x2 on ``edsr_batch`` LR crops ``input`` ``(B, c, c, 1)`` and HR
    ``target`` ``(B, 2c, 2c)``, float32.
    """
    import optax

    from jaxmri.models import dsgan
    from jaxmri.nn.edsr import EDSR

    generator = dsgan.DeepLinearGenerator(features=preset.gan_features)
    discriminator = dsgan.PatchDiscriminator(features=preset.gan_features)
    update_every = max(1, min(200, preset.gan_steps // 3))
    make_gan_state = functools.partial(
        dsgan.create_gan_state, generator=generator, discriminator=discriminator,
        hr_crop=preset.gan_hr_crop, learning_rate=preset.gan_learning_rate, lr_decay_every=750)
    gan_state = _shape_of(make_gan_state)
    hr, b = preset.gan_hr_crop, preset.gan_batch
    lr = generator.output_size(hr)
    gan_batch = {"hr": _spec((b, hr, hr), jnp.float32), "lr": _spec((b, lr, lr), jnp.float32)}
    gan_params = {k: v.params for k, v in gan_state.items() if hasattr(v, "params")}

    module = EDSR(num_blocks=preset.edsr_blocks, features=preset.edsr_features, scale=2)
    crop, eb = preset.edsr_lr_crop, preset.edsr_batch
    make_edsr_state = _state_maker(module, optax.adam(preset.edsr_learning_rate),
                                   _spec((1, crop, crop, 1), jnp.float32))
    edsr_state = _shape_of(make_edsr_state)
    edsr_batch = {"input": _spec((eb, crop, crop), jnp.float32),
                  "target": _spec((eb, 2 * crop, 2 * crop), jnp.float32)}
    return [
        PlanStep(name=f"DSGAN generator+discriminator{label}", experiment="dsgan_sr",
                 train_step=dsgan.make_gan_train_step(generator, update_every=update_every),
                 state=gan_state, batch=gan_batch, params=gan_params, paper_params=None,
                 steps=preset.gan_steps, runs=1,
                 schedule=f"{preset.gan_steps} steps (the paper: one GAN per LR slice)",
                 image=f"{hr}x{hr}", family="dsgan", make_state=make_gan_state,
                 make_batch=functools.partial(_dsgan_batch, preset, "gan")),
        PlanStep(name=f"EDSR{label}", experiment="dsgan_sr",
                 train_step=dsgan.make_l1_train_step(input_key="input", target_key="target"),
                 state=edsr_state, batch=edsr_batch, params=edsr_state.params,
                 paper_params=None, steps=preset.edsr_steps, runs=4,
                 schedule=f"{preset.edsr_steps} steps x 4 pair sets (ZF, GB, DSN, DSGAN)",
                 image=f"{crop}x{crop}", family="dsgan", make_state=make_edsr_state,
                 make_batch=functools.partial(_dsgan_batch, preset, "edsr")),
    ]


def _dsgan_batch(preset: Any, which: str) -> dict[str, np.ndarray]:
    """The crops ``benchmarks/cases_dsgan.py`` trains on (phantoms, scanner-kernel LR)."""
    from benchmarks import cases_dsgan

    setup = cases_dsgan._gan_setup(preset) if which == "gan" else cases_dsgan._edsr_setup(preset)
    return setup["batch"]


def refine_steps(preset: Any, label: str = "") -> list[PlanStep]:
    """RecNet and the refinement GAN step of paper 003, as ``experiments.refine`` builds them.

    Batch (``experiments.refine.RECON_KEYS``, single coil): ``zero_filled``, ``target``
    complex64 ``(B, S, S)``, ``kspace``, ``maps`` complex64 ``(B, 1, S, S)``, ``mask``
    float32 ``(B, S, S)``.
    """
    from experiments import refine as exp
    from jaxmri.models import refine as refine_model
    from jaxmri.train import create_train_state

    size, seed = preset.image_size, 0
    prog = exp.programs(preset, seed)

    def batch(b: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {"zero_filled": _spec((b, size, size), jnp.complex64),
                "kspace": _spec((b, 1, size, size), jnp.complex64),
                "mask": _spec((b, size, size), jnp.float32),
                "maps": _spec((b, 1, size, size), jnp.complex64),
                "target": _spec((b, size, size), jnp.complex64)}

    def example() -> dict[str, jax.Array]:
        return {k: jnp.zeros(v.shape, v.dtype) for k, v in batch(1).items()}

    def rec_state(key):
        ex = example()
        variables = prog.init_recnet(key, ex["zero_filled"], ex["kspace"], ex["mask"][:, None],
                                     ex["maps"])
        return create_train_state(prog.recnet, exp._adam(preset.recnet_lr), variables)

    def ref_state(key):
        k1, k2, k3 = jax.random.split(key, 3)
        ex = example()
        recnet_vars = prog.init_recnet(k1, ex["zero_filled"], ex["kspace"],
                                       ex["mask"][:, None], ex["maps"])
        gen_vars = prog.init_refiner(k2, jnp.zeros((1, size, size)))
        return {"gen": create_train_state(prog.refiner, exp._adam(preset.gan_lr, b1=0.5),
                                          gen_vars),
                "disc": exp._discriminator_state(preset, seed, k3),
                "recnet": recnet_vars,
                **refine_model.init_refine_extras(pool_size=preset.pool_size,
                                                  image_shape=(size, size))}

    rstate, fstate = _shape_of(rec_state), _shape_of(ref_state)
    return [
        PlanStep(name=f"RecNet{label}", experiment="refine",
                 train_step=refine_model.recnet_train_step, state=rstate,
                 batch=batch(preset.recnet_batch), params=rstate.params, paper_params=None,
                 steps=preset.recnet_steps, runs=1,
                 schedule=f"{preset.recnet_steps} steps (1500 epochs of 1248 / 20)",
                 image=f"{size}x{size}", family="refine", make_state=rec_state,
                 make_batch=functools.partial(_refine_batch, preset, preset.recnet_batch)),
        PlanStep(name=f"RecNet + refinement GAN{label}", experiment="refine",
                 train_step=prog.refine_step, state=fstate, batch=batch(preset.refine_batch),
                 params={"gen": fstate["gen"].params, "disc": fstate["disc"].params},
                 paper_params=None, steps=preset.refine_steps, runs=1,
                 schedule=f"{preset.refine_steps} steps (200 epochs of 1248 / 5)",
                 image=f"{size}x{size}", family="refine", make_state=ref_state,
                 make_batch=functools.partial(_refine_batch, preset, preset.refine_batch)),
    ]


def _refine_batch(preset: Any, batch_size: int) -> dict[str, np.ndarray]:
    """As ``benchmarks/cases_refine.py``: phantoms through the experiment's 1-D Gaussian mask."""
    from benchmarks.cases_ifrnet import phantom_images
    from experiments import refine as exp
    from jaxmri.data import acquire_slices

    acq = acquire_slices({"image": phantom_images(batch_size, preset.image_size, seed=0)},
                         np.arange(batch_size), mask_fn=exp._mask_fn(preset), seed=0,
                         num_coils=1)
    return {key: np.asarray(acq[key]) for key in exp.RECON_KEYS}


def joint_steps(preset: Any, label: str = "") -> list[PlanStep]:
    """The proposed joint Rec+SR step (eq. 12, generator and VGG discriminator) of paper 004.

    Batch as :func:`experiments.joint_recsr.simulate_split` returns it (``S`` HR, ``s = S/2``
    LR, ``C`` coils): ``target`` ``(B, S, S)``, ``maps_hr`` ``(B, C, S, S)``, ``target_lr``,
    ``zero_filled`` ``(B, s, s)``, ``kspace``, ``maps`` ``(B, C, s, s)`` complex64 and
    ``mask`` ``(B, s, s)`` float32.
    """
    from experiments import joint_recsr as exp

    size, b, c = preset.image_size, preset.batch_size, preset.num_coils
    lr = size // 2
    cx = jnp.complex64
    batch = {"target": _spec((b, size, size), cx), "maps_hr": _spec((b, c, size, size), cx),
             "target_lr": _spec((b, lr, lr), cx), "zero_filled": _spec((b, lr, lr), cx),
             "kspace": _spec((b, c, lr, lr), cx), "maps": _spec((b, c, lr, lr), cx),
             "mask": _spec((b, lr, lr), jnp.float32)}
    example = {k: jnp.zeros((1, *v.shape[1:]), v.dtype) for k, v in batch.items()}

    steps = {}

    def make(key):
        """The experiment's own eq. 12 phase (``experiments.joint_recsr.training_phase``)."""
        variables = exp.init_generator("Proposed", preset, example, key=key)
        train_step, state = exp.training_phase("Proposed", preset, variables, key=key,
                                               hr_size=size)
        steps.setdefault("train_step", train_step)  # a plain function: same for every key
        return state

    state = _shape_of(make)  # traces make once (shapes only), which records the step
    runs = len(preset.masks)
    return [PlanStep(
        name=f"Joint Rec+SR (SFT){label}", experiment="joint_recsr",
        train_step=steps["train_step"], state=state, batch=batch,
        params={"generator": state["generator"].params,
                "discriminator": state["discriminator"].params},
        paper_params=None, steps=preset.steps, runs=runs,
        schedule=f"{preset.steps} steps x {runs} masks (Proposed only)",
        image=f"{lr}x{lr} LR -> {size}x{size}", family="joint", make_state=make,
        make_batch=functools.partial(_joint_batch, preset))]


def _joint_batch(preset: Any) -> dict[str, np.ndarray]:
    from benchmarks.cases_joint_recsr import _batch

    return {k: np.asarray(v) for k, v in _batch(preset).items()}


# The paper's image size where a paper preset uses a smaller one (extra "paper px" rows).
PAPER_IMAGE_SIZE = {"ifrnet": 320, "refine": 512, "joint_recsr": 256}
_BUILDERS = {"invsharp": invsharp_steps, "ifrnet": ifrnet_steps, "dsgan_sr": dsgan_steps,
             "refine": refine_steps, "joint_recsr": joint_steps}


def plan_steps(preset_name: str = "paper", *, paper_px: bool = True,
               only: list[str] | None = None) -> list[PlanStep]:
    """The steps of every experiment's ``preset_name`` preset (plus the "paper px" rows).

    ``only`` keeps the experiments or steps whose name contains one of its strings
    (case-insensitive); the filter runs before a builder is called where the experiment's name
    decides it.
    """
    import importlib

    def selected(*names: str) -> bool:
        return not only or any(s.lower() in n.lower() for s in only for n in names)

    out = []
    for experiment, builder in _BUILDERS.items():
        preset = importlib.import_module(f"experiments.{experiment}").PRESETS[preset_name]
        variants = [(preset, "")]
        if paper_px and preset_name == "paper" and experiment in PAPER_IMAGE_SIZE:
            size = PAPER_IMAGE_SIZE[experiment]
            variants.append((dataclasses.replace(preset, image_size=size), " (paper px)"))
        for p, label in variants:
            steps = builder(p, label)
            out += [s for s in steps if selected(s.name, experiment)]
    return out


# --------------------------------------------------------------------------------------------
# Script
# --------------------------------------------------------------------------------------------


def save_memory_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """Stacked bars of arguments, outputs and temporaries (GiB, log) per step, 80 GiB line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["step"] for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(8.0, 0.42 * len(rows) + 1.8), layout="constrained")
    left = np.zeros(len(rows))
    for key, color in (("args GiB", "tab:blue"), ("out GiB", "tab:cyan"),
                       ("temp GiB", "tab:orange")):
        values = np.array([r[key] for r in rows])
        ax.barh(y, values, left=left, color=color, label=key.replace(" GiB", ""))
        left += values
    ax.axvline(HBM_LIMIT_GIB, color="k", linestyle="--", linewidth=1, label="80 GiB (H100)")
    ax.axvline(141e9 / GiB, color="0.5", linestyle=":", linewidth=1, label="141 GB (H200)")
    ax.set_xscale("log")
    ax.set_yticks(y, labels)
    ax.set_xlabel("GiB per device (XLA:CPU buffer assignment of the compiled step, log)")
    ax.set_title("Paper presets: memory of one training step")
    fig.legend(loc="outside lower center", ncol=3, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Compile every selected step, write the table, the advice and the plot; return the rows."""
    parser = benchmark_parser(__doc__, name="paper_plan")
    parser.add_argument("--only", nargs="+", default=None,
                        help="only the steps or experiments whose name contains one of these")
    parser.add_argument("--no-paper-px", action="store_true",
                        help="skip the extra rows at the paper's image size")
    parser.add_argument("--smoke", action="store_true",
                        help="the smoke presets (seconds; for tests) instead of the paper presets")
    parser.add_argument("--compute-fraction", type=float, default=COMPUTE_FRACTION,
                        help=f"assumed share of the dense peak (default {COMPUTE_FRACTION})")
    parser.add_argument("--memory-fraction", type=float, default=MEMORY_FRACTION,
                        help=f"assumed share of the HBM bandwidth (default {MEMORY_FRACTION})")
    args = parser.parse_args(argv)
    preset = "smoke" if args.smoke else "paper"
    start_all = time.perf_counter()
    steps = plan_steps(preset, paper_px=not args.no_paper_px, only=args.only)
    if not steps:
        raise SystemExit(f"paper_plan: no step matches --only {args.only}")
    rows = []
    for step in steps:
        start = time.perf_counter()
        compiled = compile_step(step.train_step, step.state, step.batch)
        compile_s = time.perf_counter() - start
        rows.append(plan_row(step, analyse(compiled), compile_s,
                             compute_fraction=args.compute_fraction,
                             memory_fraction=args.memory_fraction))
        del compiled
        r = rows[-1]
        print(f"  {step.name}: {r['total GiB']:.2f} GiB, {r['GFLOP/step']:.1f} GFLOP, "
              f"H100 {r['H100 ms/step']:.1f} ms/step, {r['H100 h']:.1f} h "
              f"(compiled in {compile_s:.0f} s)", flush=True)
    run_s = time.perf_counter() - start_all
    title = (f"Paper presets ({preset}), one device, float32 state, compile only (XLA:CPU "
             f"memory/cost analysis); predicted times: roofline at {args.compute_fraction:g} of "
             f"the dense {DEFAULT_PRECISION.upper()} peak and {args.memory_fraction:g} of the "
             f"HBM bandwidth (H100/H200 SXM datasheets); run {run_s:.0f} s")
    columns = [c for c in rows[0] if not c.startswith("_")]
    table = write_table([{c: r[c] for c in columns} for r in rows], args.out, "paper_plan",
                        title=title, columns=columns,
                        extra={"preset": preset, "chips": CHIPS, "peak_source": PEAK_SOURCE,
                               "precision": DEFAULT_PRECISION,
                               "compute_fraction": args.compute_fraction,
                               "memory_fraction": args.memory_fraction,
                               "run_seconds": run_s,
                               "state_bytes": {r["step"]: r["_state_bytes"] for r in rows},
                               "bytes_accessed": {r["step"]: r["_bytes_accessed"]
                                                  for r in rows},
                               "advice": [r["_advice"] for r in rows if r["_advice"]]})
    notes = ["", "**Over 80 GiB, and what to change:**", ""]
    notes += [f"* {r['_advice']}" for r in rows if r["_advice"]] or ["* none"]
    notes += ["", f"Peaks: {PEAK_SOURCE}. Memory: XLA:CPU buffer assignment of the same "
              "program (GPU fusion usually needs less; cuDNN workspaces not counted); the state "
              "is not donated, so outputs hold a second copy. FLOPs: XLA cost analysis, which "
              "counts a while-loop body once (the joint model's DEQ runs up to deq_max_iter "
              "iterations: its FLOPs and times are lower bounds).", ""]
    with open(args.out / "paper_plan.md", "a") as f:
        f.write("\n".join(notes))
    print("\n".join(notes))
    save_memory_plot(args.out / "paper_plan.png", rows)
    del table
    return rows


if __name__ == "__main__":
    main()
