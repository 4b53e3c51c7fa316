"""Host-side batching shared by every experiment: training batches by step, chunked inference.

Training batches are a pure function of the step (:func:`random_batches`), which is what lets
:func:`jaxmri.train.fit` resume an interrupted run on exactly the same trajectory. Inference
over a whole split goes through :func:`map_batches`, which pads the last chunk so that a jitted
function compiles once; :func:`timed_map_batches` also measures its time per example, compilation
excluded. :func:`spread_indices` picks a subset of a split spread over all of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import jax
import numpy as np

from jaxmri.errors import UserInputError

__all__ = ["random_batches", "map_batches", "timed_map_batches", "spread_indices"]


def _num_examples(arrays: Mapping[str, np.ndarray]) -> int:
    if not arrays:
        raise ValueError("arrays must hold at least one array")
    sizes = {name: np.shape(a)[0] for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must share their leading (example) axis, got sizes {sizes}")
    return next(iter(sizes.values()))


def random_batches(arrays: Mapping[str, np.ndarray], *, batch_size: int,
                   seed: int) -> Callable[[int], dict[str, np.ndarray]]:
    """``batch_fn(step)`` drawing ``batch_size`` distinct examples, deterministic per step.

    Args:
      arrays: dict of arrays sharing the leading axis ``N`` (one split of a dataset).
      batch_size: global batch size (``<= N``).
      seed: the draw of step ``s`` uses ``np.random.SeedSequence([seed, s])``, so it depends
        on nothing but ``(seed, s)``.

    Returns:
      ``batch_fn(step) -> {name: array[indices]}``.
    """
    n = _num_examples(arrays)
    if not 0 < batch_size <= n:
        raise UserInputError(f"batch size {batch_size} does not fit the {n} training examples: "
                             f"use a batch size from 1 to {n} (--batch-size)")

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([seed, step]))
        indices = np.sort(rng.choice(n, size=batch_size, replace=False))
        return {name: np.asarray(a)[indices] for name, a in arrays.items()}

    return batch_fn


def map_batches(fn: Callable[..., object], arrays: Mapping[str, np.ndarray], *,
                batch_size: int) -> object:
    """Apply ``fn(**chunk)`` over the leading axis in chunks and concatenate the outputs.

    The last chunk is padded (by repeating its final example) to ``batch_size`` and the padding
    is cut from the output, so a jitted ``fn`` sees one shape and compiles once.

    Args:
      fn: function of keyword arrays ``(batch_size, ...)`` returning a pytree of arrays with a
        leading axis of ``batch_size``.
      arrays: dict of arrays sharing the leading axis ``N``.
      batch_size: chunk size.

    Returns:
      The pytree of ``fn``'s outputs with leading axis ``N``, as numpy arrays.
    """
    n = _num_examples(arrays)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outputs = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        index = np.minimum(np.arange(start, start + batch_size), stop - 1)
        out = fn(**{name: np.asarray(a)[index] for name, a in arrays.items()})
        outputs.append(jax.tree.map(lambda x, k=stop - start: np.asarray(x)[:k], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outputs)


def timed_map_batches(fn: Callable[..., object], arrays: Mapping[str, np.ndarray], *,
                      batch_size: int) -> tuple[object, float]:
    """:func:`map_batches` of ``fn`` and its wall time in seconds per example.

    ``fn`` is first called once on the first ``batch_size`` examples (a warm-up that compiles a
    jitted ``fn``, results dropped), so the time is that of the run over all ``N`` examples
    alone: ``elapsed / N``. The outputs wait for the device (``map_batches`` copies them to the
    host), so asynchronous dispatch does not shorten the time.

    Returns:
      ``(outputs, seconds per example)``; ``outputs`` as :func:`map_batches` returns them.
    """
    n = _num_examples(arrays)
    map_batches(fn, {name: np.asarray(a)[:batch_size] for name, a in arrays.items()},
                batch_size=batch_size)
    start = time.perf_counter()
    out = map_batches(fn, arrays, batch_size=batch_size)
    return out, (time.perf_counter() - start) / n


def spread_indices(num_examples: int, count: int) -> np.ndarray:
    """At most ``count`` indices into ``range(num_examples)``, spread evenly over the whole range.

    ``count >= num_examples`` gives every index; otherwise the rounded points of
    ``linspace(0, num_examples - 1, count)`` (first and last included; duplicates, possible
    only when rounding merges neighbours, are dropped). So a subset of a split samples the
    whole anatomy, not one end of it.

    Returns:
      ``(k,)`` int64 sorted distinct indices, ``k <= min(count, num_examples)``.
    """
    if num_examples < 0 or count < 1:
        raise ValueError(f"need num_examples >= 0 and count >= 1, got {num_examples}, {count}")
    if count >= num_examples:
        return np.arange(num_examples, dtype=np.int64)
    return np.unique(np.linspace(0, num_examples - 1, count).round().astype(np.int64))
