"""The shared benchmark pieces: A/B interleaving, FLOP and memory counts, tables, pmap check."""

import itertools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks._common import (
    compiled_flops,
    compiled_memory,
    count_params,
    jax_case,
    time_alternating,
    write_table,
)
from benchmarks.pmap import parameter_disagreement
from jaxmri.train import apply_mean_gradients, create_train_state


def test_time_alternating_interleaves_after_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_alternating(fns, repeats=3, warmup=2, settle_s=0.0)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeats"):
        time_alternating(fns, repeats=0)


def test_time_alternating_settles_each_turn_before_timing_one_call():
    """Each turn: untimed calls for >= settle_s, then exactly one timed call (the last)."""
    calls = []

    def slow(name):
        def fn():
            calls.append((name, time.perf_counter()))
            time.sleep(0.004)
        return fn

    times = time_alternating({"a": slow("a"), "b": slow("b")}, repeats=2, warmup=0,
                             settle_s=0.02)
    turns = [(n, [t for _, t in g]) for n, g in itertools.groupby(calls, key=lambda c: c[0])]
    assert [n for n, _ in turns] == ["a", "b", "a", "b"]  # strict alternation of turns
    # Every turn settles for >= 0.02 s before its timed (last) call starts: measured from the
    # start of the turn's first call (a sleep may overrun, so the number of calls varies).
    for _, starts in turns:
        assert len(starts) >= 2 and starts[-1] - starts[0] >= 0.02 - 1e-3, starts
    assert all(0.004 <= t < 0.1 for v in times.values() for t in v)


def test_compiled_flops_counts_a_matmul_and_replicas():
    n = 64
    x = jnp.ones((n, n), jnp.float32)
    assert compiled_flops(jax.jit(jnp.dot), x, x) == pytest.approx(2 * n**3, rel=0.01)
    assert compiled_flops(jax.jit(jnp.dot), x, x, num_replicas=2) == pytest.approx(4 * n**3,
                                                                                    rel=0.01)


def test_compiled_memory_sees_arguments_outputs_and_temporaries():
    n = 128
    x = jnp.ones((n, n), jnp.float32)
    plain = compiled_memory(jax.jit(lambda a: a @ a), x)
    assert plain["argument"] == 4 * n * n and plain["output"] == 4 * n * n
    # Keeping 8 products alive at once needs temporaries the single product does not.
    chained = compiled_memory(jax.jit(lambda a: sum(jnp.sin(a @ (a + i)) for i in range(8))), x)
    assert chained["peak"] > plain["peak"]


def test_jax_case_runs_the_pmapped_step_and_advances_the_state():
    import flax.linen as nn

    module = nn.Dense(3)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
    state = create_train_state(module, optax.sgd(0.1), variables)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(4, 5)).astype(np.float32),
             "y": rng.normal(size=(4, 3)).astype(np.float32)}

    def step(state, batch, key):
        def loss_fn(params):
            return jnp.mean((module.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_mean_gradients(state, grads), {"loss": loss}

    case = jax_case("dense", train_step=step, state=state, batch=batch, params=state.params,
                    image_size=5)
    assert case.jax_params == count_params(state.params) == 5 * 3 + 3
    assert case.batch_size == 4
    # Forward + backward of a 4x5 @ 5x3 layer on the whole global batch: a few hundred FLOPs.
    assert 2 * 4 * 5 * 3 <= case.jax_flops <= 100 * 4 * 5 * 3

    # Each call is one SGD update on the whole global batch (pmean over the devices).
    def loss_fn(params):
        return jnp.mean((module.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)

    params = state.params
    for _ in range(3):
        case.jax_step()
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss_fn)(params))
    got = case.jax_state()
    assert int(got.step) == 3
    for r, v in zip(jax.tree.leaves(params), jax.tree.leaves(got.params), strict=True):
        np.testing.assert_allclose(v, r, rtol=1e-5, atol=1e-6)


def test_write_table_writes_markdown_and_json(tmp_path):
    rows = [{"method": "a", "ms": 1.5, "n": 3}, {"method": "b", "ms": 2.25e-6, "n": None}]
    table = write_table(rows, tmp_path, "t", title="T")
    md = (tmp_path / "t.md").read_text()
    assert md == table and "| a | 1.5 | 3 |" in md and "| b | 2.250e-06 | – |" in md
    payload = json.loads((tmp_path / "t.json").read_text())
    assert payload["rows"] == rows and payload["title"] == "T"
    assert payload["machine"]["cpu_count"] >= 1
    with pytest.raises(ValueError, match="rows"):
        write_table([], tmp_path, "empty", title="x")


def test_parameter_disagreement_is_the_worst_relative_leaf_difference():
    ref = {"w": np.array([1.0, -2.0]), "b": np.array([0.5])}
    other = {"w": np.array([1.0, -2.002]), "b": np.array([0.5005])}
    assert parameter_disagreement(other, ref) == pytest.approx(max(0.002 / 2.0, 0.0005 / 0.5))
    assert parameter_disagreement(ref, ref) == 0.0
    with pytest.raises(ValueError, match="parameter trees"):
        parameter_disagreement({"w": ref["w"]}, ref)
