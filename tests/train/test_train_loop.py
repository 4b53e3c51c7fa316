"""The generic pmapped training loop on a tiny regression problem and 2 CPU devices."""

from __future__ import annotations

import functools
import io
import json
import shutil
import signal
import sys
import time
import types
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmri.train import loop
from jaxmri.train.loop import (
    AXIS_NAME,
    NonFiniteLossError,
    ReplicaDivergenceError,
    TrainingInterrupted,
    apply_mean_gradients,
    fit,
    make_parallel_step,
    pmean_tree,
    replicate,
    shard_batch,
    unreplicate,
)
from jaxmri.train.state import TrainState, create_train_state

GLOBAL_BATCH = 8
NUM_STEPS = 6
WEIGHTS = np.array([[1.0], [-2.0], [0.5]], np.float32)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))


@functools.cache
def make_state() -> TrainState:
    """The initial state (immutable, so shared; one model instance keeps jit caches warm)."""
    model = MLP()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 3), jnp.float32))
    return create_train_state(model, optax.adam(0.05), variables)


def batch_fn(step: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(step).normal(size=(GLOBAL_BATCH, 3)).astype(np.float32)
    return {"x": x, "y": x @ WEIGHTS}


def mse(apply_fn, params, batch):
    return jnp.mean((apply_fn({"params": params}, batch["x"]) - batch["y"]) ** 2)


def train_step(state, batch, key):
    loss, grads = jax.value_and_grad(lambda p: mse(state.apply_fn, p, batch))(state.params)
    return apply_mean_gradients(state, grads), {"loss": loss}


def run(workdir, num_steps=NUM_STEPS, **kwargs):
    options = dict(checkpoint_every=100, log_every=1)
    options.update(kwargs)
    return fit(
        train_step=options.pop("train_step", train_step),
        state=options.pop("state", None) or make_state(),
        batch_fn=options.pop("batch_fn", batch_fn),
        num_steps=num_steps,
        key=jax.random.key(7),
        workdir=workdir,
        **options,
    )


def read_log(workdir) -> list[dict]:
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(workdir) -> list[float]:
    return [r["loss"] for r in read_log(workdir) if r["split"] == "train"]


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


REFERENCE_TX = optax.adam(0.05)


@jax.jit
def reference_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda p: mse(make_state().apply_fn, p, batch))(params)
    updates, opt_state = REFERENCE_TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def full_batch_reference(num_steps):
    """Plain single-device optax on the whole global batch: what 2 devices must reproduce."""
    params = make_state().params
    opt_state = REFERENCE_TX.init(params)
    losses = []
    for s in range(num_steps):
        params, opt_state, loss = reference_step(params, opt_state, batch_fn(s))
        losses.append(float(loss))
    return params, losses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state = run(workdir)
    return state, train_losses(workdir)


def test_two_devices_match_full_batch_reference_and_learn(uninterrupted, tmp_path):
    assert jax.local_device_count() == 2
    state, losses = uninterrupted
    ref_params, ref_losses = full_batch_reference(NUM_STEPS)
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert int(state.step) == NUM_STEPS
    # Learning: the loss on a fixed held-out batch falls well below its initial value.
    held_out = batch_fn(10_000)
    before = float(mse(state.apply_fn, make_state().params, held_out))
    after = float(mse(state.apply_fn, state.params, held_out))
    assert after < 0.5 * before


def test_metrics_jsonl_and_eval_schedule(tmp_path):
    evaluated = []

    def eval_fn(state):
        evaluated.append(int(state.step))
        return {"held_out_mse": mse(state.apply_fn, state.params, batch_fn(10_000))}

    run(tmp_path, num_steps=5, log_every=2, eval_fn=eval_fn, eval_every=2)
    records = read_log(tmp_path)
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [2, 4, 5]  # every log_every steps and the last
    assert [r["step"] for r in val] == [2, 4, 5] == evaluated  # eval saw the state of its step
    assert all(set(r) == {"step", "split", "loss", "time"} for r in train)
    assert all(isinstance(r["held_out_mse"], float) for r in val)
    times = [r["time"] for r in records]
    assert times == sorted(times)
    _, losses = full_batch_reference(5)
    expected = [losses[1], losses[3], losses[4]]
    np.testing.assert_allclose([r["loss"] for r in train], expected, rtol=1e-5)


def test_parallel_step_keeps_replicas_identical():
    pstep = make_parallel_step(train_step)
    rstate = replicate(make_state())
    stop = np.zeros((2,), np.int32)
    for s in range(3):
        rstate, metrics, _ = pstep(rstate, shard_batch(batch_fn(s)), jax.random.key(0), s, stop)
    for leaf in jax.tree.leaves(rstate):
        shards = [np.asarray(shard.data) for shard in leaf.addressable_shards]
        assert len(shards) == 2
        np.testing.assert_array_equal(shards[0], shards[1])
    # The returned metric is the device mean, held by every replica.
    loss = np.asarray(metrics["loss"])
    assert loss.shape == (2,) and loss[0] == loss[1]


def test_forgotten_pmean_is_caught(tmp_path):
    def local_only_step(state, batch, key):
        loss, grads = jax.value_and_grad(lambda p: mse(state.apply_fn, p, batch))(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    with pytest.raises(ReplicaDivergenceError, match="pmean"):
        run(tmp_path, num_steps=2, train_step=local_only_step)


def test_step_keys_are_folded_by_step_then_device(tmp_path):
    def key_step(state, batch, key):
        return state, {"u": jax.random.uniform(key)}

    key = jax.random.key(7)
    fit(
        train_step=key_step,
        state={"w": np.zeros(2, np.float32)},
        batch_fn=batch_fn,
        num_steps=3,
        key=key,
        workdir=tmp_path,
        log_every=1,
    )
    logged = [r["u"] for r in read_log(tmp_path)]
    expected = [
        np.mean([float(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, s), d)))
                 for d in range(2)])
        for s in range(3)
    ]
    np.testing.assert_allclose(logged, expected, rtol=1e-6)


class CountingModel(nn.Module):
    """Dense layer with a 'spectral' collection updated on every training call."""

    @nn.compact
    def __call__(self, x):
        calls = self.variable("spectral", "calls", lambda: jnp.zeros((), jnp.int32))
        if self.is_mutable_collection("spectral"):
            calls.value += 1
        return nn.Dense(1)(x)


def test_model_state_collections_are_split_carried_and_updated(tmp_path):
    model = CountingModel()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    state = create_train_state(model, optax.sgd(0.01), variables)
    assert set(state.model_state) == {"spectral"} and "spectral" not in state.params
    calls_at_init = int(state.model_state["spectral"]["calls"])  # init runs the model once

    def step(state, batch, key):
        def loss_fn(params):
            out, new_model_state = state.apply_fn(
                state.variables(params), batch["x"], mutable=list(state.model_state)
            )
            return jnp.mean((out - batch["y"]) ** 2), new_model_state

        (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_mean_gradients(state, grads, model_state=new_model_state), {"loss": loss}

    final = run(tmp_path, num_steps=4, train_step=step, state=state)
    assert int(final.model_state["spectral"]["calls"]) == calls_at_init + 4
    assert int(final.step) == 4


def test_create_train_state_needs_params():
    with pytest.raises(ValueError, match="params"):
        create_train_state(MLP(), optax.sgd(0.1), {"batch_stats": {}})
    with pytest.raises(TypeError, match="variables"):
        create_train_state(MLP(), optax.sgd(0.1), [1, 2])


@pytest.mark.parametrize("how", ["exception", "SIGINT", "SIGTERM"])
def test_interrupt_saves_and_resume_reproduces_trajectory(uninterrupted, tmp_path, how):
    raised = []

    def interrupting_batch_fn(step):
        if step == 3 and not raised:
            raised.append(step)
            if how == "exception":
                raise KeyboardInterrupt
            # Handled by fit: finish the running step, one more, save.
            signal.raise_signal(signal.Signals[how])
        return batch_fn(step)

    # fit must restore exactly the handlers that were in place before it, whatever they are (a
    # shell job may start Python with SIGINT ignored): install handlers of our own to compare.
    def outer_handler(signum, frame):
        raise AssertionError(f"fit's own handler should have taken this {signum}")

    before = {s: signal.signal(s, outer_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(TrainingInterrupted) as info:
            run(tmp_path, batch_fn=interrupting_batch_fn)
        after = {s: signal.getsignal(s) for s in before}
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    stopped = 3 if how == "exception" else 4
    assert info.value.step == stopped
    assert info.value.checkpoint_path == tmp_path / "checkpoints" / str(stopped)
    assert (info.value.checkpoint_path / "state").is_dir()
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.signum == (signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    assert ("by SIGTERM" in str(info.value)) == (how == "SIGTERM")
    assert all(h is outer_handler for h in after.values())  # the handlers before fit, restored
    assert len(train_losses(tmp_path)) == stopped

    resumed = run(tmp_path, resume=True)
    state, losses = uninterrupted
    assert_trees_equal(resumed.params, state.params)
    assert_trees_equal(resumed.opt_state, state.opt_state)
    assert train_losses(tmp_path) == losses


def test_next_batch_is_built_while_the_step_runs(tmp_path):
    # batch_fn(s) is called after step s - 1 is dispatched but before its metrics are checked
    # and logged: the log then holds s - 1 records (a loop that built the batch afterwards
    # would find s).
    records_seen = {}

    def recording_batch_fn(step):
        log = tmp_path / "metrics.jsonl"
        records_seen[step] = len(log.read_text().splitlines()) if log.exists() else 0
        return batch_fn(step)

    run(tmp_path, batch_fn=recording_batch_fn)
    assert records_seen == {s: max(s - 1, 0) for s in range(NUM_STEPS)}


def corrupt_at_3(step):
    """``batch_fn`` whose batch 3 cannot be built (as a corrupt file would do)."""
    if step == 3:
        raise OSError("slice 17 of train.h5 is corrupt")
    return batch_fn(step)


def test_data_error_checkpoints_completed_steps_then_resume_matches(uninterrupted, tmp_path):
    with pytest.raises(OSError, match="corrupt") as info:
        run(tmp_path, batch_fn=corrupt_at_3)
    # Step 2 was in flight while batch 3 failed: it still completed, was logged and is kept.
    assert len(train_losses(tmp_path)) == 3
    assert (tmp_path / "checkpoints" / "3" / "state").is_dir()
    assert any("checkpoints/3" in note and "batch_fn(3)" in note for note in info.value.__notes__)
    resumed = run(tmp_path, resume=True)  # the data fixed
    state, losses = uninterrupted
    assert_trees_equal(resumed.params, state.params)
    assert train_losses(tmp_path) == losses
    # A run that fails before completing any step has nothing to keep and saves nothing.
    with pytest.raises(OSError, match="corrupt"):
        run(tmp_path / "first", batch_fn=lambda step: corrupt_at_3(3))
    assert not any((tmp_path / "first" / "checkpoints").iterdir())


def test_data_error_with_several_processes_raises_without_a_save(tmp_path, monkeypatch):
    # The other processes would not join the save (they wait in the next step's collectives).
    monkeypatch.setattr(loop, "_single_process", lambda: False)

    with pytest.raises(OSError, match="corrupt") as info:
        run(tmp_path, batch_fn=corrupt_at_3)
    assert not any((tmp_path / "checkpoints").iterdir())
    assert not getattr(info.value, "__notes__", [])


def test_keep_last_checkpoints_and_automatic_resume(uninterrupted, tmp_path):
    run(tmp_path, num_steps=4, checkpoint_every=1, keep_checkpoints=2)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [3, 4]
    # A torn line and a record past the checkpoint (from a crash) must not survive the resume.
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "split": "train", "loss": 123.0}) + "\n{broken")
    resumed = run(tmp_path, checkpoint_every=1, keep_checkpoints=2)  # resume=None: automatic
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [5, 6]
    state, losses = uninterrupted
    assert_trees_equal(resumed.params, state.params)
    assert train_losses(tmp_path) == losses
    # Already at num_steps: returns the checkpoint without training.
    again = run(tmp_path, resume=True)
    assert_trees_equal(again.params, state.params)
    assert train_losses(tmp_path) == losses


def fake_clock_batch_fn(clock: list[float], seconds_per_batch: float):
    """``batch_fn`` that advances ``clock[0]`` (what ``loop.time.monotonic`` reads in the test)
    by ``seconds_per_batch`` per call: a step that takes that long on the wall clock."""
    def advancing(step):
        clock[0] += seconds_per_batch
        return batch_fn(step)
    return advancing


def test_checkpoint_minutes_saves_by_wall_time_and_a_kill_loses_at_most_that(
        uninterrupted, tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: clock[0],
                                                            time=time.time))
    # Each batch takes 25 s; batch s + 1 is built while step s runs, so step s ends at
    # 25 (s + 1) s. A save at least a minute after the last (or the start): after steps 2
    # (75 s) and 5 (150 s), and at the end; none by step count (every 100).
    run(tmp_path, checkpoint_minutes=1, keep_checkpoints=10,
        batch_fn=fake_clock_batch_fn(clock, 25.0))
    checkpoints = tmp_path / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [2, 5, 6]
    # Killed before the last two saves (SIGKILL leaves nothing to catch): resume from step 2.
    shutil.rmtree(checkpoints / "6")
    shutil.rmtree(checkpoints / "5")
    resumed = run(tmp_path, checkpoint_minutes=1, keep_checkpoints=10)
    state, losses = uninterrupted
    assert_trees_equal(resumed.params, state.params)
    assert_trees_equal(resumed.opt_state, state.opt_state)
    assert train_losses(tmp_path) == losses
    # None: by step count only; with several processes the clocks could disagree, so the same.
    for name, minutes in [("steps_only", None), ("multi", 1)]:
        with monkeypatch.context() as patch:
            if name == "multi":
                patch.setattr(loop, "_single_process", lambda: False)
            run(tmp_path / name, batch_fn=fake_clock_batch_fn(clock, 25.0),
                checkpoint_minutes=minutes)
        assert [p.name for p in (tmp_path / name / "checkpoints").iterdir()] == ["6"]


def truncate_array_files(checkpoint: Path) -> list[Path]:
    """Cut every array data file of an orbax checkpoint to 10 bytes (a disk-full or copy
    accident); the metadata stays intact, so the checkpoint still looks complete."""
    files = [p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array files found under {checkpoint}"
    for path in files:
        path.write_bytes(path.read_bytes()[:10])
    return files


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path,
                                                                   capfd):
    run(tmp_path, num_steps=4, checkpoint_every=1, keep_checkpoints=2)
    checkpoints = tmp_path / "checkpoints"
    truncate_array_files(checkpoints / "4")
    capfd.readouterr()
    resumed = run(tmp_path, checkpoint_every=1, keep_checkpoints=2)  # resume=None: automatic
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fit:")]
    assert len(lines) == 2, err
    assert lines[0].startswith(f"fit: skipped checkpoint {checkpoints / '4'}: it cannot be read")
    assert "not valid for value of size 10" in lines[0]  # why: the truncated file
    assert lines[0].endswith(f"moved to {tmp_path / 'corrupt_checkpoints' / '4'}")
    assert lines[1] == "fit: resuming from the newest readable checkpoint, step 3"
    assert "Event loop is closed" not in err and "Traceback" not in err
    # Resumed from step 3, the run is the uninterrupted one, and step 4 was saved afresh.
    state, losses = uninterrupted
    assert_trees_equal(resumed.params, state.params)
    assert_trees_equal(resumed.opt_state, state.opt_state)
    assert train_losses(tmp_path) == losses
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [5, 6]
    assert (tmp_path / "corrupt_checkpoints" / "4" / "state").is_dir()  # kept for inspection


def test_finished_run_whose_only_checkpoint_is_corrupt_is_trained_again(uninterrupted,
                                                                          tmp_path, capfd):
    run(tmp_path, keep_checkpoints=1)
    truncate_array_files(tmp_path / "checkpoints" / str(NUM_STEPS))
    with pytest.raises(FileNotFoundError, match="no checkpoint .* can be read"):
        run(tmp_path, resume=True)  # demanded a resume: refused, the folder set aside
    run(tmp_path, keep_checkpoints=1)
    truncate_array_files(tmp_path / "checkpoints" / str(NUM_STEPS))
    capfd.readouterr()
    again = run(tmp_path, keep_checkpoints=1)
    err = capfd.readouterr().err
    assert f"fit: no readable checkpoint in {tmp_path / 'checkpoints'}; training from step 0" in err
    assert "Event loop is closed" not in err
    state, losses = uninterrupted
    assert_trees_equal(again.params, state.params)
    assert train_losses(tmp_path) == losses  # the log restarted with the training


def test_resume_flags_refuse_the_wrong_situation(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume=True"):
        run(tmp_path / "empty", resume=True)
    run(tmp_path / "done", num_steps=1)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        run(tmp_path / "done", num_steps=2, resume=False)
    # A checkpoint of another model is refused, naming the checkpoint and the leaf.
    wider = MLP().init(jax.random.key(0), jnp.zeros((1, 4), jnp.float32))
    other = create_train_state(MLP(), optax.adam(0.05), wider)
    with pytest.raises(ValueError, match=r"checkpoints/1 does not match.*\[4, 8\] in the state"):
        run(tmp_path / "done", num_steps=2, state=other)


def test_non_finite_loss_stops_and_keeps_last_good_state(tmp_path):
    def exploding_step(state, batch, key):
        new_state, metrics = train_step(state, batch, key)
        poison = jnp.where(state.step == 3, jnp.nan, 1.0)  # the update from step 3 to 4
        new_params = jax.tree.map(lambda p: p * poison, new_state.params)
        return new_state.replace(params=new_params), {"loss": metrics["loss"] * poison}

    with pytest.raises(NonFiniteLossError, match="step 4") as info:
        run(tmp_path, train_step=exploding_step)
    assert info.value.step == 4
    assert str(info.value.checkpoint_path) in str(info.value)
    assert info.value.checkpoint_path == tmp_path / "checkpoints" / "3"
    assert np.isnan(info.value.metrics["loss"])
    restored = run(tmp_path, num_steps=3, resume=True)  # the checkpoint, no training
    ref_params, _ = full_batch_reference(3)
    for x, y in zip(jax.tree.leaves(restored.params), jax.tree.leaves(ref_params), strict=True):
        assert np.all(np.isfinite(np.asarray(x)))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_gan_style_dict_state_with_two_optimisers(tmp_path):
    generator = create_train_state(
        nn.Dense(2), optax.adam(1e-2), nn.Dense(2).init(jax.random.key(1), jnp.zeros((1, 2)))
    )
    discriminator = create_train_state(
        nn.Dense(1), optax.sgd(1e-2), nn.Dense(1).init(jax.random.key(2), jnp.zeros((1, 2)))
    )
    initial = {"generator": generator, "discriminator": discriminator}

    def gan_batch_fn(step):
        return {"real": np.random.default_rng(step).normal(1.0, 0.1, (4, 2)).astype(np.float32)}

    def gan_step(state, batch, key):
        gen, disc = state["generator"], state["discriminator"]
        noise = jax.random.normal(key, batch["real"].shape)
        fake = gen.apply_fn({"params": gen.params}, noise)

        def d_loss_fn(d_params):
            real_logit = disc.apply_fn({"params": d_params}, batch["real"])
            fake_logit = disc.apply_fn({"params": d_params}, fake)
            return jnp.mean(optax.sigmoid_binary_cross_entropy(real_logit, 1.0)) + jnp.mean(
                optax.sigmoid_binary_cross_entropy(fake_logit, 0.0)
            )

        def g_loss_fn(g_params):
            fake = gen.apply_fn({"params": g_params}, noise)
            logit = disc.apply_fn({"params": disc.params}, fake)
            return jnp.mean(optax.sigmoid_binary_cross_entropy(logit, 1.0))

        d_loss, d_grads = jax.value_and_grad(d_loss_fn)(disc.params)
        g_loss, g_grads = jax.value_and_grad(g_loss_fn)(gen.params)
        new_state = {
            "generator": apply_mean_gradients(gen, g_grads),
            "discriminator": apply_mean_gradients(disc, d_grads),
        }
        return new_state, {"g_loss": g_loss, "d_loss": d_loss}

    final = fit(
        train_step=gan_step,
        state=initial,
        batch_fn=gan_batch_fn,
        num_steps=3,
        key=jax.random.key(0),
        workdir=tmp_path,
        log_every=1,
    )
    for name in ("generator", "discriminator"):
        assert int(final[name].step) == 3
        pairs = zip(jax.tree.leaves(final[name].params), jax.tree.leaves(initial[name].params))
        moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in pairs]
        assert min(moved) > 0
    records = read_log(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["g_loss"]) and np.isfinite(r["d_loss"]) for r in records)


def test_shard_batch_takes_this_process_rows():
    batch = {"x": np.arange(16 * 3).reshape(16, 3), "y": np.arange(16)}
    shards = shard_batch(batch, num_processes=2, process_index=1, num_local_devices=2)
    np.testing.assert_array_equal(shards["x"], batch["x"][8:16].reshape(2, 4, 3))
    np.testing.assert_array_equal(shards["y"], batch["y"][8:16].reshape(2, 4))
    np.testing.assert_array_equal(shard_batch(batch)["y"], batch["y"].reshape(2, 8))


def test_bad_batches_and_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="batch.*not divisible.*devices"):
        shard_batch({"x": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="leading batch axis"):
        shard_batch({"x": np.zeros((4, 2)), "y": np.zeros((2,))})
    with pytest.raises(ValueError, match="not divisible"):
        run(tmp_path / "odd", num_steps=1, batch_fn=lambda s: {"x": batch_fn(s)["x"][:3]})
    with pytest.raises(ValueError, match="num_steps"):
        run(tmp_path / "neg", num_steps=-1)
    with pytest.raises(ValueError, match="checkpoint_every"):
        run(tmp_path / "zero", checkpoint_every=0)
    for minutes in (-1, float("nan"), "10", True):
        with pytest.raises(ValueError, match="checkpoint_minutes must be None or a finite"):
            run(tmp_path / "minutes", checkpoint_minutes=minutes)
    with pytest.raises(ValueError, match="resume"):
        run(tmp_path / "flag", resume="yes")

    def vector_metric_step(state, batch, key):
        return state, {"loss": jnp.zeros(2)}

    with pytest.raises(ValueError, match="metrics\\['loss'\\] must be a scalar"):
        run(tmp_path / "vector", num_steps=1, train_step=vector_metric_step)


def test_progress_bar_shows_step_loss_and_rate_only_when_wanted(tmp_path, monkeypatch):
    class FakeTerminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("JAXMRI_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    run(tmp_path / "tty", num_steps=3, desc="pretrain")
    shown = sys.stderr.getvalue()
    assert "pretrain" in shown and "3/3" in shown and "loss=" in shown and "step/s" in shown

    monkeypatch.setenv("JAXMRI_NO_PROGRESS", "1")
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    run(tmp_path / "quiet", num_steps=3)
    assert sys.stderr.getvalue() == ""

    monkeypatch.delenv("JAXMRI_NO_PROGRESS")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar either
    run(tmp_path / "pipe", num_steps=3)
    assert sys.stderr.getvalue() == ""


def test_pmean_helpers_average_over_the_axis():
    # vmap with an axis name stands in for pmap: the same collectives, no devices needed.
    values = np.arange(6.0, dtype=np.float32).reshape(3, 2)
    averaged = jax.jit(jax.vmap(pmean_tree, axis_name=AXIS_NAME))({"g": values})
    np.testing.assert_allclose(averaged["g"], np.broadcast_to(values.mean(0), (3, 2)))
    state = make_state()
    per_device = jax.tree.map(lambda p: jnp.stack([jnp.ones_like(p), 3 * p]), state.params)
    step = jax.jit(jax.vmap(lambda g: apply_mean_gradients(state, g), axis_name=AXIS_NAME))
    stepped = step(per_device)
    mean_grads = jax.tree.map(lambda p: (1 + 3 * p) / 2, state.params)
    expected = jax.jit(lambda g: state.apply_gradients(grads=g))(mean_grads)
    for got, want in zip(jax.tree.leaves(stepped.params), jax.tree.leaves(expected.params)):
        np.testing.assert_allclose(got[0], want, rtol=1e-6)
        np.testing.assert_allclose(got[1], want, rtol=1e-6)


def test_unreplicate_returns_first_replica_on_host():
    tree = {"a": np.arange(6.0).reshape(2, 3)}
    out = unreplicate(replicate({"a": np.arange(3.0)}))
    np.testing.assert_array_equal(out["a"], tree["a"][0])
    assert isinstance(out["a"], np.ndarray)
    assert AXIS_NAME == "batch"
