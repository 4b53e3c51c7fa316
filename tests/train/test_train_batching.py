"""Batches are a pure function of (seed, step); chunked inference equals one big call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.errors import UserInputError
from jaxmri.train.batching import (
    map_batches,
    random_batches,
    spread_indices,
    timed_map_batches,
)


def test_random_batches_depend_only_on_seed_and_step():
    arrays = {"x": np.arange(20.0), "y": np.arange(20) * 10}
    a, b = random_batches(arrays, batch_size=6, seed=3), random_batches(arrays, batch_size=6,
                                                                         seed=3)
    first = a(7)
    # Same (seed, step) from a fresh batch_fn, asked in another order: identical.
    b(0), b(1)
    np.testing.assert_array_equal(b(7)["x"], first["x"])
    # Rows stay aligned across arrays and are distinct examples.
    np.testing.assert_array_equal(first["y"], first["x"].astype(int) * 10)
    assert len(np.unique(first["x"])) == 6
    # Other steps and seeds draw other batches; over many steps every example is seen.
    assert not np.array_equal(a(8)["x"], first["x"])
    assert not np.array_equal(random_batches(arrays, batch_size=6, seed=4)(7)["x"], first["x"])
    seen = np.unique(np.concatenate([a(s)["x"] for s in range(50)]))
    np.testing.assert_array_equal(seen, np.arange(20.0))


def test_random_batches_reject_bad_input():
    with pytest.raises(UserInputError, match="batch size 5 does not fit the 4 training"):
        random_batches({"x": np.zeros(4)}, batch_size=5, seed=0)
    with pytest.raises(ValueError, match="leading"):
        random_batches({"x": np.zeros(4), "y": np.zeros(5)}, batch_size=2, seed=0)


def test_map_batches_matches_a_single_call_and_compiles_once():
    traces = []

    @jax.jit
    def fn(x, y):
        traces.append(x.shape)
        return {"sum": x + y, "sq": jnp.square(x)}

    x = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32)
    y = np.ones((11, 3), np.float32)
    out = map_batches(fn, {"x": x, "y": y}, batch_size=4)
    np.testing.assert_allclose(out["sum"], x + y)
    np.testing.assert_allclose(out["sq"], x ** 2, rtol=1e-6)
    assert traces == [(4, 3)]  # the padded last chunk reuses the compiled function


def test_timed_map_batches_excludes_compilation_and_divides_by_the_examples(monkeypatch):
    import jaxmri.train.batching as batching

    calls = []

    def fn(x):
        calls.append(len(x))
        return {"double": 2 * x}

    # A fake clock: 10 s pass between the two readings around the timed run.
    ticks = iter([100.0, 110.0])
    monkeypatch.setattr(batching.time, "perf_counter", lambda: next(ticks))
    x = np.arange(10.0)
    out, seconds = timed_map_batches(fn, {"x": x}, batch_size=4)
    np.testing.assert_array_equal(out["double"], 2 * x)
    assert seconds == pytest.approx(10.0 / 10)
    # One warm-up call on the first batch, then the 3 chunks of the timed run.
    assert calls == [4, 4, 4, 4]


def test_spread_indices_cover_the_whole_range():
    np.testing.assert_array_equal(spread_indices(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(spread_indices(5, 5), np.arange(5))
    np.testing.assert_array_equal(spread_indices(5, 9), np.arange(5))
    np.testing.assert_array_equal(spread_indices(100, 1), [0])
    assert spread_indices(0, 3).size == 0
    # Rounding may merge neighbours: distinct, sorted, first and last kept.
    got = spread_indices(7, 6)
    np.testing.assert_array_equal(got, np.unique(got))
    assert got[0] == 0 and got[-1] == 6 and len(got) == 6
    with pytest.raises(ValueError, match="count >= 1"):
        spread_indices(5, 0)
