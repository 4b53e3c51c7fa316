"""Input pipeline: samples per second the data path delivers versus what the train step consumes.

``python -m benchmarks.input_pipeline [--paper] [--repeats R] [--fit-steps S] [--out DIR]``

:func:`jaxmri.train.fit` asks ``batch_fn(step)`` for the global batch of every step, splits it
with :func:`jaxmri.train.shard_batch` and hands it to the pmapped step; it builds the next batch
while the step runs, but on the host's cores, which the step needs too on a CPU machine. The
data path must deliver samples at least 5x faster than the step consumes them (issue 9), i.e.
cost at most 20 % of a step. Each row pairs one data path of the experiments with the fastest
training step that reads it:

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
over fresh steps (for the cache: reading a random batch, then the same); "consumes" is the
global batch divided by the time of the jitted, pmapped step. The two are timed in alternating
turns (``--repeats`` turns, each ``--window`` seconds of calls after 50 ms of settling, as
:mod:`benchmarks.step_time` does), so a change of machine load hits both alike; the ratio
delivered / consumed is the ratio of the median step time to the median batch time, with a 90 %
paired-bootstrap interval over turns.

"fit slowdown" is what the data path costs the training loop itself: ``fit``'s time per update
(from the times it logs) fed by the data path, over fed one fixed batch, in alternating turns of
``--fit-steps`` updates (:func:`fit_slowdown`); 1.00 means the loop does not notice the data.
Writes ``<out>/input_pipeline.*``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import (
    StepCase,
    benchmark_parser,
    jax_case,
    median,
    ratio_interval,
    save_bar_plot,
    target_verdict,
    time_alternating,
    write_table,
)
from jaxmri.train import create_train_state, fit, shard_batch

TARGET = 5.0  # delivered / consumed samples per second


@dataclasses.dataclass(frozen=True)
class DataPath:
    """One data path of an experiment and the training step that reads it.

    Attributes:
      batch_fn: ``step -> global batch`` (numpy), as the experiment hands it to ``fit``.
      case: the step, ready to time (:func:`benchmarks._common.jax_case`).
      train_step: the pure ``(state, batch, key) -> (state, metrics)`` behind ``case``.
      state: its initial unreplicated train state.
    """

    batch_fn: Callable[[int], dict]
    case: StepCase
    train_step: Callable
    state: Any


def deliver_fn(batch_fn: Callable[[int], dict]) -> Callable[[], None]:
    """``() -> None``: ``batch_fn`` of the next fresh step, sharded and copied to the devices."""
    n_local = jax.local_device_count()
    steps = itertools.count()

    def deliver() -> None:
        batch = shard_batch(batch_fn(next(steps)), num_local_devices=n_local)
        jax.block_until_ready(jax.device_put(batch))

    return deliver


def tfds_batch_fn(source, *, batch_size: int, seed: int = 0) -> Callable[[int], dict]:
    """``batch_fn(step)``: ``batch_size`` random slices read from a TFDS data source
    (:func:`jaxmri.data.tfds_cache.read_slices`), a fresh draw per step."""
    from jaxmri.data.tfds_cache import read_slices

    def batch_fn(step: int) -> dict:
        rng = np.random.default_rng(np.random.SeedSequence([seed, step]))
        indices = np.sort(rng.choice(len(source), batch_size, replace=False))
        return {"image": read_slices(source, indices)["image"]}

    return batch_fn


def pipeline_row(path_name: str, case, batch_fn: Callable[[int], dict], *, repeats: int,
                 warmup: int, window: float) -> dict:
    """One table row: ``batch_fn``'s delivery against ``case``'s step, timed in alternating
    turns; the rates, their ratio with its 90 % interval and the verdict on the 5x target."""
    times = time_alternating({"delivered": deliver_fn(batch_fn), "consumed": case.jax_step},
                             repeats=repeats, warmup=warmup, min_timed_s=window)
    ratio = median(times["consumed"]) / median(times["delivered"])
    low, high = ratio_interval(times["consumed"], times["delivered"])
    return {"data path": path_name, "consumer step": case.name, "batch": case.batch_size,
            "delivered samples/s": case.batch_size / median(times["delivered"]),
            "consumed samples/s": case.batch_size / median(times["consumed"]),
            "delivered / consumed": ratio, "90% interval": f"{low:.2f}-{high:.2f}",
            f"meets {TARGET:g}x": target_verdict(ratio, low, high, TARGET,
                                                 higher_is_better=True),
            "_interval": [low, high]}


def fit_step_time(train_step: Callable, state: Any, batch_fn: Callable[[int], dict], *,
                  steps: int) -> float:
    """Median seconds per update of :func:`jaxmri.train.fit` fed by ``batch_fn``.

    ``fit`` runs ``steps`` updates in a fresh temporary workdir, logging every step; the
    median gap between the times it logs leaves out its start (replicating the state) and its
    one checkpoint at the end, so it is the loop's steady time per update, data path included.
    """
    if steps < 3:
        raise ValueError(f"steps must be >= 3 (two gaps between logged steps), got {steps}")
    with tempfile.TemporaryDirectory() as workdir, \
            mock.patch.dict(os.environ, {"JAXMRI_NO_PROGRESS": "1"}):
        fit(train_step=train_step, state=state, batch_fn=batch_fn, num_steps=steps,
            key=jax.random.key(0), workdir=workdir, checkpoint_every=steps, log_every=1,
            resume=False, desc="benchmark")
        records = [json.loads(line)
                   for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records if r["split"] == "train"]
    return float(np.median(np.diff(times)))


def fit_slowdown(path: DataPath, *, steps: int, repeats: int) -> dict:
    """How much the data path slows the training loop: :func:`fit_step_time` fed by
    ``path.batch_fn`` against fed one fixed batch (``batch_fn(0)`` every step), in ``repeats``
    alternating turns after one untimed run of each (compilation). ``fit`` builds the next
    batch while the step runs, so a data path costs the loop less than its delivery time.

    Returns:
      ``{"fit ms/step, data path / fixed batch": "a / b", "fit slowdown": "r (low-high)"}``
      with the medians over turns, their ratio ``r`` and its 90 % paired-bootstrap interval;
      the same numbers unrounded under ``"_fit"`` (seconds; for the JSON).
    """
    fixed = path.batch_fn(0)
    arms = {"data": path.batch_fn, "fixed": lambda step: fixed}
    for batch_fn in arms.values():
        fit_step_time(path.train_step, path.state, batch_fn, steps=3)
    times = {name: [] for name in arms}
    for _ in range(repeats):
        for name, batch_fn in arms.items():
            times[name].append(fit_step_time(path.train_step, path.state, batch_fn, steps=steps))
    data, fixed_batch = median(times["data"]), median(times["fixed"])
    low, high = ratio_interval(times["data"], times["fixed"])
    return {"fit ms/step, data path / fixed batch": f"{1e3 * data:.3g} / {1e3 * fixed_batch:.3g}",
            "fit slowdown": f"{data / fixed_batch:.2f} ({low:.2f}-{high:.2f})",
            "_fit": {"data_s": data, "fixed_batch_s": fixed_batch,
                     "slowdown": data / fixed_batch, "interval_90": [low, high]}}


def recnet_path(paper: bool, seed: int = 0) -> DataPath:
    """Paper 003's on-the-fly acquisition and its RecNet step."""
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
    return DataPath(batch_fn, case, refine_model.recnet_train_step, state)


def edsr_path(paper: bool, seed: int = 0) -> DataPath:
    """Paper 001's random crops of precomputed pairs and its EDSR step."""
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
    return DataPath(batch_fn, case, step, state)


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure every data path against its consumer step; write and return the table rows."""
    parser = benchmark_parser(__doc__, name="input_pipeline")
    parser.add_argument("--fit-steps", type=int, default=30,
                        help="updates per timed fit run for the slowdown column (default 30)")
    args = parser.parse_args(argv)
    rows, cases = [], []
    for path_name, build in (("on-the-fly acquisition (paper 003)", recnet_path),
                             ("precomputed pairs, random crops (paper 001)", edsr_path)):
        path = build(args.paper)
        rows.append(pipeline_row(path_name, path.case, path.batch_fn, repeats=args.repeats,
                                 warmup=args.warmup, window=args.window))
        rows[-1].update(fit_slowdown(path, steps=args.fit_steps, repeats=args.repeats))
        cases.append(path.case)
    # The TFDS cache feeds the same consumers; it is timed against the fastest one.
    _, fastest = max(zip(rows, cases), key=lambda pair: pair[0]["consumed samples/s"])
    from jaxmri.data.tfds_cache import prepare_slice_cache

    with tempfile.TemporaryDirectory() as data_dir:
        source = prepare_slice_cache(None, image_size=64,
                                     data_dir=data_dir).as_data_source(split="train")
        rows.append(pipeline_row(
            "TFDS slice cache, random access (64 px)", fastest,
            tfds_batch_fn(source, batch_size=fastest.batch_size),
            repeats=args.repeats, warmup=args.warmup, window=args.window))
        # It delivers raw slices, not the step's input: no training loop reads it as is.
        rows[-1].update({"fit ms/step, data path / fixed batch": "-", "fit slowdown": "-"})
    title = (f"Input pipeline vs train step ({'paper' if args.paper else 'cpu'} presets, "
             f"median of {args.repeats} alternating turns of >= {args.window:g} s each, "
             f"90 % interval of the ratio; target delivered >= {TARGET:g} x consumed)")
    columns = [c for c in rows[0] if not c.startswith("_")]
    write_table([{c: r[c] for c in columns} for r in rows], args.out, "input_pipeline",
                title=title, columns=columns,
                extra={"target": TARGET,
                       "ratio_interval_90": {r["data path"]: r["_interval"] for r in rows},
                       "fit_slowdown": {r["data path"]: r.get("_fit") for r in rows}})
    save_bar_plot(args.out / "input_pipeline.png", [r["consumer step"] for r in rows],
                  {"delivered": [r["delivered samples/s"] for r in rows],
                   "consumed": [r["consumed samples/s"] for r in rows]},
                  ylabel="samples per second (log)", title="Data path vs train step", log=True)
    return rows


if __name__ == "__main__":
    main()
