"""Input pipeline: samples per second the data path delivers versus what the train step consumes.

``python -m benchmarks.input_pipeline [--paper] [--repeats R] [--out DIR]``

:func:`jaxmri.train.fit` asks ``batch_fn(step)`` for the global batch of every step, splits it
with :func:`jaxmri.train.shard_batch` and hands it to the pmapped step. The time to produce a
batch is therefore paid every step; the data path must deliver samples at least 5x faster than
the step consumes them (issue 9), i.e. cost at most 20 % of a step. Each row pairs one data path
of the experiments with the fastest training step that reads it:

* ``on-the-fly acquisition`` (paper 003, ``experiments.refine.recon_batches``): every step draws
  slices and simulates a fresh mask, smooth phase and noise on the host (numpy), consumed by the
  RecNet step (the fastest step of that experiment);
* ``precomputed pairs`` (paper 001, ``jaxmri.models.dsgan.sr_batches``): random LR/HR crops of
  precomputed image pairs, consumed by the EDSR step (the fastest step per sample of all the
  methods);
* ``TFDS slice cache`` (:mod:`jaxmri.data.tfds_cache`): reading a batch of prepared 64 px
  slices by random access from an array_record cache (the path for data sets too large to hold
  as arrays; a temporary cache is prepared first), compared with the fastest consumer above.

"Delivers" times ``shard_batch(batch_fn(step))`` plus the copy to the device (``device_put``),
over fresh steps; "consumes" is the global batch divided by the median time of the jitted,
pmapped step (as :mod:`benchmarks.step_time` times it). Writes ``<out>/input_pipeline.*``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import (
    benchmark_parser,
    jax_case,
    median,
    save_bar_plot,
    time_alternating,
    write_table,
)
from jaxmri.train import create_train_state, shard_batch

TARGET = 5.0  # delivered / consumed samples per second


def delivered_rate(batch_fn: Callable[[int], dict], *, steps: int) -> tuple[float, int]:
    """Samples per second of ``batch_fn`` + ``shard_batch`` + ``device_put`` over fresh steps."""
    n_local = jax.local_device_count()
    jax.block_until_ready(jax.device_put(shard_batch(batch_fn(0), num_local_devices=n_local)))
    batch_size, seconds = 0, []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        batch = shard_batch(batch_fn(step), num_local_devices=n_local)
        jax.block_until_ready(jax.device_put(batch))
        seconds.append(time.perf_counter() - start)
        batch_size = int(np.shape(next(iter(batch.values())))[0]
                         * np.shape(next(iter(batch.values())))[1])
    return batch_size / median(seconds), batch_size


def consumed_rate(case, *, repeats: int, warmup: int) -> float:
    """Samples per second the step of ``case`` consumes (global batch / median step time)."""
    times = time_alternating({"step": case.jax_step}, repeats=repeats, warmup=warmup,
                             settle_s=0.0)
    return case.batch_size / median(times["step"])


def recnet_path(paper: bool, seed: int = 0):
    """``(batch_fn, case)``: paper 003's on-the-fly acquisition and its RecNet step."""
    from experiments import refine as experiment
    from jaxmri.data import load_slices
    from jaxmri.models import refine as refine_model

    preset = experiment.PRESETS["paper" if paper else "cpu"]
    slices = load_slices(None, image_size=preset.image_size, split="train")
    batch_fn = experiment.recon_batches(slices, preset=preset, batch_size=preset.recnet_batch,
                                        seed=seed)
    prog = experiment.programs(preset, seed)
    ex = batch_fn(0)
    variables = prog.init_recnet(jax.random.key(seed), ex["zero_filled"][:1],
                                 ex["kspace"][:1], ex["mask"][:1, None], ex["maps"][:1])
    state = create_train_state(prog.recnet, experiment._adam(preset.recnet_lr), variables)
    case = jax_case("RecNet", train_step=refine_model.recnet_train_step, state=state,
                    batch=ex, params=state.params, image_size=preset.image_size)
    return batch_fn, case


def edsr_path(paper: bool, seed: int = 0):
    """``(batch_fn, case)``: paper 001's random crops of precomputed pairs and its EDSR step."""
    from experiments import dsgan_sr as experiment
    from jaxmri.data import load_slices
    from jaxmri.models import dsgan
    from jaxmri.nn.edsr import EDSR

    preset = experiment.PRESETS["paper" if paper else "cpu"]
    hr = np.abs(load_slices(None, image_size=preset.image_size, split="train")["image"])
    pairs = experiment.scanner_data(hr.astype(np.float32), preset, seed)
    crops = dsgan.sr_batches(pairs["lr"], pairs["hr"], lr_crop=preset.edsr_lr_crop,
                             batch_size=preset.edsr_batch, seed=seed)

    def batch_fn(step):
        batch = crops(step)
        return {"input": batch["lr"], "target": batch["hr"]}

    module = EDSR(num_blocks=preset.edsr_blocks, features=preset.edsr_features, scale=2)
    ex = batch_fn(0)
    variables = jax.jit(module.init)(jax.random.PRNGKey(seed),
                                     jnp.asarray(ex["input"][:1, ..., None]))
    state = create_train_state(module, optax.adam(preset.edsr_learning_rate), variables)
    step = dsgan.make_l1_train_step(input_key="input", target_key="target")
    case = jax_case("EDSR", train_step=step, state=state, batch=ex, params=state.params,
                    image_size=preset.edsr_lr_crop)
    return batch_fn, case


def tfds_read_rate(*, image_size: int, batch_size: int, steps: int) -> float:
    """Slices per second read by random access from a freshly prepared TFDS slice cache."""
    from jaxmri.data.tfds_cache import prepare_slice_cache, records_to_slices

    with tempfile.TemporaryDirectory() as data_dir:
        source = prepare_slice_cache(None, image_size=image_size,
                                     data_dir=data_dir).as_data_source(split="train")
        rng = np.random.default_rng(0)
        seconds = []
        for _ in range(steps + 1):
            indices = np.sort(rng.choice(len(source), batch_size, replace=False))
            start = time.perf_counter()
            records_to_slices(source.__getitems__([int(i) for i in indices]))
            seconds.append(time.perf_counter() - start)
    return batch_size / median(seconds[1:])


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure every data path against its consumer step; write and return the table rows."""
    parser = benchmark_parser(__doc__, name="input_pipeline")
    args = parser.parse_args(argv)
    rows = []
    for path_name, build in (("on-the-fly acquisition (paper 003)", recnet_path),
                             ("precomputed pairs, random crops (paper 001)", edsr_path)):
        batch_fn, case = build(args.paper)
        delivered, batch_size = delivered_rate(batch_fn, steps=args.repeats)
        consumed = consumed_rate(case, repeats=args.repeats, warmup=args.warmup)
        rows.append({"data path": path_name, "consumer step": case.name, "batch": batch_size,
                     "delivered samples/s": delivered, "consumed samples/s": consumed,
                     "delivered / consumed": delivered / consumed,
                     f"meets {TARGET:g}x": "yes" if delivered >= TARGET * consumed else "no"})
    # The TFDS cache feeds the same consumers; its read rate is compared with the fastest one.
    fastest = max(rows, key=lambda r: r["consumed samples/s"])
    read = tfds_read_rate(image_size=64, batch_size=fastest["batch"], steps=args.repeats)
    rows.append({"data path": "TFDS slice cache, random access (64 px)",
                 "consumer step": fastest["consumer step"], "batch": fastest["batch"],
                 "delivered samples/s": read,
                 "consumed samples/s": fastest["consumed samples/s"],
                 "delivered / consumed": read / fastest["consumed samples/s"],
                 f"meets {TARGET:g}x": "yes" if read >= TARGET * fastest["consumed samples/s"]
                 else "no"})
    title = (f"Input pipeline vs train step ({'paper' if args.paper else 'cpu'} presets, "
             f"median of {args.repeats} steps; target delivered >= {TARGET:g} x consumed)")
    write_table(rows, args.out, "input_pipeline", title=title)
    save_bar_plot(args.out / "input_pipeline.png", [r["consumer step"] for r in rows],
                  {"delivered": [r["delivered samples/s"] for r in rows],
                   "consumed": [r["consumed samples/s"] for r in rows]},
                  ylabel="samples per second (log)", title="Data path vs train step", log=True)
    return rows


if __name__ == "__main__":
    main()
