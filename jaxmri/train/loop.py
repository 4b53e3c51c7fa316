"""The one training loop of jaxmri: a method's pure step function, pmapped over all devices.

Contract for ``train_step(state, batch, key) -> (state, metrics)``
-----------------------------------------------------------------
* Pure and traceable. :func:`fit` wraps it in ``jax.pmap(..., axis_name=AXIS_NAME)``; inside,
  ``state`` is one replica, ``batch`` is this device's slice of the global batch (leading axis =
  global batch / number of devices) and ``key`` is this device's key.
* It must average gradients over devices itself: ``grads = pmean_tree(grads)`` or simply
  ``state = apply_mean_gradients(state, grads)``. Anything else that depends on the local batch
  (``batch_stats``) must be averaged too. :func:`fit` checks at every checkpoint that the local
  replicas are still identical and raises :class:`ReplicaDivergenceError` if they are not, which
  is what forgetting the ``pmean`` looks like.
* ``metrics`` is a flat ``dict[str, scalar]``; :func:`fit` averages it across devices. A
  non-finite value of ANY metric stops training (:class:`NonFiniteLossError`), so return only
  quantities that are finite on a healthy run.
* ``state`` may be any pytree: a :class:`jaxmri.train.state.TrainState`, or a dict of several
  (``{'generator': ..., 'discriminator': ...}`` for a GAN). Two-stage training is two ``fit``
  calls with different workdirs.

Steps, batches and keys
-----------------------
``step`` counts completed updates: the checkpoint of step ``s`` holds the state after ``s``
updates, and the update from ``s`` to ``s + 1`` uses ``batch_fn(s)`` (the GLOBAL batch, a pytree
of arrays whose leading axis is the global batch size) and, on the device with
``lax.axis_index(AXIS_NAME) == d``, the key ``fold_in(fold_in(key, s), d)``. Because batches and
keys are functions of the step, a resumed run reproduces the uninterrupted trajectory exactly.
Logged train metrics carry the step reached (``s + 1``), evaluations the step they evaluated.
The metrics of every step are copied to the host to check them for NaN before the next step is
dispatched (a few scalars; the price of naming the exact step and keeping the state before it).
While a step runs (dispatch is asynchronous), the host already builds the next step's batch, so
the host's data work (e.g. simulating an acquisition) overlaps the step instead of adding to it;
an error from ``batch_fn`` is raised once the step in flight has completed and been kept, and
after the steps this run completed are checkpointed (single-process runs; a note on the error
names the checkpoint).

Multi-host: every process calls :func:`fit` with the same arguments; each takes its contiguous
share of the global batch (``process_index``-th slice) and feeds its ``jax.local_devices()``;
collectives in ``train_step`` span all processes. Only process 0 writes ``metrics.jsonl`` and
shows progress; checkpoints go through orbax's multi-process protocol (every process calls
save, the primary host writes the host-side arrays). The workdir must be on a filesystem that
every process sees.

Checkpoints (orbax ``CheckpointManager`` in ``<workdir>/checkpoints/<step>``) hold the
unreplicated state (as host numpy arrays) and ``{'step': s}``. Orbax writes each checkpoint into
a temporary directory and renames it when complete, so a crash mid-save never leaves a
checkpoint that looks valid; half-written temporary directories are removed on the next start.
A checkpoint damaged afterwards (a truncated array file, a disk error) is skipped on resume: the
newest readable one is used, with a line on stderr naming the skipped one and why.

When to save: every ``checkpoint_every`` steps, at the end, after Ctrl-C or SIGTERM (the state
at the step reached), and, in a single process, after any step that ends ``checkpoint_minutes``
(default 10) after the last save: a run killed without a signal it can catch loses at most
about that much, even when ``checkpoint_every`` is half of a two-hour run.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax
from tqdm.auto import tqdm

from jaxmri._checks import check_int
from jaxmri.errors import MissingCheckpointError
from jaxmri.train.tensorboard import TensorBoardLog

__all__ = [
    "AXIS_NAME",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "ReplicaDivergenceError",
    "pmean_tree",
    "apply_mean_gradients",
    "make_parallel_step",
    "replicate",
    "unreplicate",
    "shard_batch",
    "fit",
    "show_progress",
]

AXIS_NAME = "batch"

PyTree = Any
TrainStep = Callable[[PyTree, Any, jax.Array], tuple[PyTree, dict[str, jax.Array]]]


class NonFiniteLossError(FloatingPointError):
    """A train step returned a non-finite metric; the state before that step was saved.

    Attributes: ``step`` (the step the failing update would have reached),
    ``checkpoint_path`` (the checkpoint holding the last good state, at ``step - 1``),
    ``metrics`` (the offending metrics, host floats).
    """

    def __init__(self, step: int, checkpoint_path: Path, metrics: Mapping[str, float]):
        self.step = step
        self.checkpoint_path = checkpoint_path
        self.metrics = dict(metrics)
        shown = ", ".join(f"{name}={value:.6g}" for name, value in self.metrics.items())
        super().__init__(
            f"non-finite metric at step {step} ({shown}); the last good state (step {step - 1}) "
            f"is saved in {checkpoint_path}"
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`fit` after Ctrl-C (SIGINT) or SIGTERM once the current state has been
    checkpointed.

    Subclasses ``KeyboardInterrupt`` so that an uncaught one still ends the program the usual
    way. Attributes: ``step``, ``checkpoint_path`` and ``signum`` (the signal that stopped
    training; ``signal.SIGINT`` also for a ``KeyboardInterrupt`` raised inside the loop).
    """

    def __init__(self, step: int, checkpoint_path: Path, signum: int = signal.SIGINT):
        self.step = step
        self.checkpoint_path = checkpoint_path
        self.signum = int(signum)
        by = "" if self.signum == signal.SIGINT else f" by {signal.Signals(self.signum).name}"
        super().__init__(f"interrupted{by} at step {step}, checkpoint saved in {checkpoint_path}")


class ReplicaDivergenceError(RuntimeError):
    """The per-device copies of the state differ: ``train_step`` did not average something."""


def pmean_tree(tree: PyTree) -> PyTree:
    """Average every leaf of ``tree`` over the devices of :data:`AXIS_NAME` (inside pmap only)."""
    return lax.pmean(tree, axis_name=AXIS_NAME)


def apply_mean_gradients(state: PyTree, grads: PyTree, **updates: Any) -> PyTree:
    """``state.apply_gradients`` with the gradients averaged over devices (inside pmap only).

    ``updates`` are passed on (e.g. ``model_state=new_model_state``).
    """
    return state.apply_gradients(grads=pmean_tree(grads), **updates)


def _to_float_scalars(metrics: Mapping[str, Any]) -> dict[str, jax.Array]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"train_step must return (state, metrics dict), got {type(metrics)}")
    out = {}
    for name, value in metrics.items():
        value = jnp.asarray(value)
        if value.shape != ():
            raise ValueError(f"metrics[{name!r}] must be a scalar, got shape {value.shape}")
        out[name] = value.astype(jnp.float32)
    return out


def make_parallel_step(train_step: TrainStep) -> Callable:
    """Pmap ``train_step`` over the local devices with per-step, per-device keys.

    Returns ``pstep(rstate, sharded_batch, key, step, stop) -> (rstate, metrics, stop_any)``:
    ``rstate`` is replicated (leading axis = local devices), ``sharded_batch`` comes from
    :func:`shard_batch`, ``key`` and ``step`` are broadcast to all devices, and the device with
    axis index ``d`` calls ``train_step`` with ``fold_in(fold_in(key, step), d)``. ``metrics``
    are averaged over all devices (every replica holds the mean). ``stop`` is a per-device int32
    flag; ``stop_any`` is its maximum over all devices of all processes, which lets every
    process agree on stopping after Ctrl-C reached only some of them.
    """

    def parallel_step(state, batch, key, step, stop):
        device_key = jax.random.fold_in(jax.random.fold_in(key, step), lax.axis_index(AXIS_NAME))
        new_state, metrics = train_step(state, batch, device_key)
        metrics = pmean_tree(_to_float_scalars(metrics))
        return new_state, metrics, lax.pmax(stop, AXIS_NAME)

    return jax.pmap(parallel_step, axis_name=AXIS_NAME, in_axes=(0, 0, None, None, 0))


# Each fit() of the same train_step (resumed runs, tests) reuses one pmapped function and so
# its compiled executables, as jax.jit does for a function it has seen.
_cached_parallel_step = functools.lru_cache(maxsize=4)(make_parallel_step)


def _host_array(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(x))


# Replicated states are moved to the devices by a pmapped identity so that they are laid out
# exactly like the outputs of the train step: this version of pmap compiles the step again for
# inputs that arrive differently (host numpy vs. device arrays), which would double compile time.
_to_devices = jax.pmap(lambda tree: tree, axis_name=AXIS_NAME)


def replicate(tree: PyTree) -> PyTree:
    """One copy of every leaf per local device (leading axis = local device count), on device."""
    n = jax.local_device_count()
    return _to_devices(jax.tree.map(lambda x: np.stack([_host_array(x)] * n), tree))


def _first_replica(x: Any) -> np.ndarray:
    # Through the host: indexing a device array would compile one slicing kernel per leaf shape.
    # addressable_shards also works for multi-process pmap outputs, where only local shards exist.
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_shards[0].data)[0]
    return np.asarray(x)[0]


def unreplicate(tree: PyTree) -> PyTree:
    """The first local replica of a replicated pytree, as host numpy arrays."""
    return jax.tree.map(_first_replica, tree)


def shard_batch(
    batch: PyTree,
    *,
    num_processes: int | None = None,
    process_index: int | None = None,
    num_local_devices: int | None = None,
) -> PyTree:
    """Split a GLOBAL batch into this process's per-device shards.

    Every leaf of ``batch`` has the global batch size ``B`` as leading axis. Process ``p`` of
    ``P`` keeps rows ``[p * B / P, (p + 1) * B / P)`` and reshapes them to
    ``(num_local_devices, B / (P * num_local_devices), ...)``. Defaults come from ``jax``.
    Raises ``ValueError`` naming ``batch`` if ``B`` is not divisible by the total device count.
    """
    num_processes = jax.process_count() if num_processes is None else num_processes
    process_index = jax.process_index() if process_index is None else process_index
    n_local = jax.local_device_count() if num_local_devices is None else num_local_devices
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch must contain at least one array")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [np.shape(leaf) for leaf in leaves]
        raise ValueError(f"batch arrays must share a leading batch axis, got shapes {shapes}")
    (size,) = sizes
    n_total = num_processes * n_local
    if size % n_total:
        raise ValueError(
            f"batch has global batch size {size}, which is not divisible by the number of "
            f"devices ({n_total} = {num_processes} processes x {n_local} local devices)"
        )
    per_process = size // num_processes

    def split(x):
        x = np.asarray(x)[process_index * per_process : (process_index + 1) * per_process]
        return x.reshape((n_local, per_process // n_local) + x.shape[1:])

    return jax.tree.map(split, batch)


# --------------------------------------------------------------------------------------------
# Checkpoints and logs


def _checkpoint_manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _savable(state: PyTree) -> PyTree:
    # Orbax restores into numpy templates but rejects numpy scalars; 0-d arrays are fine.
    return jax.tree.map(lambda x: np.asarray(_host_array(x)), state)


def _save(manager: ocp.CheckpointManager, step: int, host_state: PyTree) -> Path:
    if step not in manager.all_steps():
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave({"step": step})
            ),
            force=True,
        )
    return Path(manager.directory) / str(step)


class _UnreadableCheckpoint(Exception):
    """A checkpoint whose files cannot be read (truncated, deleted, overwritten)."""


@contextmanager
def _quiet_closed_event_loop() -> Iterator[None]:
    """Drop the "Event loop is closed" reports of a failed orbax restore, nothing else.

    When one array of a checkpoint cannot be read, orbax's restore raises at once and closes its
    asyncio loop while tensorstore still completes the other reads; their callbacks then find
    the loop closed and each is reported through ``sys.unraisablehook`` (a screenful of
    tracebacks that hide the real message). They arrive within milliseconds of the failure, so
    the filter stays a little longer after an error, and the previous hook is restored.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except BaseException:
        time.sleep(0.2)
        raise
    finally:
        sys.unraisablehook = previous


def _short_reason(error: BaseException) -> str:
    """One line of an orbax/tensorstore error: the innermost causes, without the JSON spec."""
    text = " ".join(str(error).split("[tensorstore_spec")[0].split()) or type(error).__name__
    parts = text.split(": ")
    return ": ".join(parts[-2:]) if len(text) > 160 else text


def _restore(manager: ocp.CheckpointManager, step: int, template: PyTree) -> PyTree:
    """The state of checkpoint ``step``, restored into ``template``'s structure.

    Raises ``_UnreadableCheckpoint`` when the checkpoint's own files cannot be read, and
    ``ValueError`` (another model or optimiser) when they can but do not fit ``template``.
    """
    path = Path(manager.directory) / str(step)
    mismatch = f"checkpoint {path} does not match the given state (another model or optimiser?)"
    target = _savable(template)
    try:
        with _quiet_closed_event_loop():
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )["state"]
    except Exception as err:  # noqa: BLE001 - classified just below
        # Reading it as saved (no template) tells a damaged file from a different model.
        try:
            with _quiet_closed_event_loop():
                manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        except Exception as probe_err:  # noqa: BLE001 - any failure to read is "unreadable"
            raise _UnreadableCheckpoint(_short_reason(probe_err)) from None
        if isinstance(err, ValueError | KeyError | TypeError):
            raise ValueError(f"{mismatch}: {err}") from err
        raise
    # Orbax restores the saved shapes whatever the template says; a mismatch must not surface
    # later as an obscure error inside the compiled step.
    for (where, want), have in zip(
        jax.tree_util.tree_leaves_with_path(target), jax.tree.leaves(restored), strict=True
    ):
        if np.shape(have) != np.shape(want) or np.result_type(have) != np.result_type(want):
            raise ValueError(
                f"{mismatch}: {jax.tree_util.keystr(where)} is {np.result_type(have)}"
                f"{list(np.shape(have))} there but {np.result_type(want)}{list(np.shape(want))} "
                f"in the state"
            )
    return restored


def _set_aside(checkpoint: Path, workdir: Path) -> Path:
    """Move an unreadable checkpoint folder to ``<workdir>/corrupt_checkpoints/`` (kept for
    inspection; out of orbax's sight, so the step can be saved again)."""
    folder = workdir / "corrupt_checkpoints"
    folder.mkdir(exist_ok=True)
    dest, n = folder / checkpoint.name, 1
    while dest.exists():
        dest, n = folder / f"{checkpoint.name}.{n}", n + 1
    os.replace(checkpoint, dest)
    return dest


def _restore_newest_readable(
    manager: ocp.CheckpointManager, template: PyTree, workdir: Path
) -> tuple[PyTree, int | None]:
    """``(state, step)`` of the newest checkpoint that can be read, or ``(template, None)``.

    Every newer checkpoint that cannot be read is reported on stderr (which one, why, where it
    was moved) and set aside (:func:`_set_aside`, process 0). A checkpoint that reads but does
    not fit ``template`` raises ``ValueError``: older ones would not fit either.
    """
    directory = Path(manager.directory)
    skipped = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state = _restore(manager, step, template)
        except _UnreadableCheckpoint as err:
            skipped.append((step, str(err)))
            continue
        break
    else:
        state, step = template, None
    if skipped and jax.process_index() == 0:
        for bad, reason in skipped:
            moved = _set_aside(directory / str(bad), workdir)
            print(f"fit: skipped checkpoint {directory / str(bad)}: it cannot be read "
                  f"({reason}); moved to {moved}", file=sys.stderr)
        manager.reload()
        if step is None:
            print(f"fit: no readable checkpoint in {directory}; training from step 0",
                  file=sys.stderr)
        else:
            print(f"fit: resuming from the newest readable checkpoint, step {step}",
                  file=sys.stderr)
    return state, step


class _MetricsLog:
    """Append-only ``metrics.jsonl`` writer; a no-op on processes other than 0."""

    def __init__(self, path: Path, *, enabled: bool):
        self.path = path
        self.enabled = enabled

    def keep_until(self, step: int) -> None:
        """Drop records past ``step`` (and a torn last line) left by a run that went further
        than its last checkpoint, so that the log of a resumed run equals an uninterrupted one.
        """
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", math.inf) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **metrics, "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


#: The signals that stop :func:`fit` cleanly: Ctrl-C, and what ``kill``, batch schedulers
#: (SLURM before its time limit or a preemption) and container runtimes send first.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stop_signals_as_flag() -> Iterator[Callable[[], int]]:
    """Turn the first SIGINT or SIGTERM into a flag that the loop polls between steps.

    Yields a function returning the number of the first stop signal received (0 if none). A
    second signal of the same kind meets the handler that was in place before (for Ctrl-C an
    immediate ``KeyboardInterrupt``, for SIGTERM Python's default: the process ends). The
    previous handlers are restored on exit. Outside the main thread no handler can be installed
    and both signals keep their previous behaviour.
    """
    received: list[int] = []
    previous: dict[int, Any] = {}

    def handler(signum, frame):
        received.append(signum)
        signal.signal(signum, previous[signum])

    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        for signum, old in previous.items():
            signal.signal(signum, old)
        yield lambda: 0
        return
    try:
        yield lambda: received[0] if received else 0
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def show_progress() -> bool:
    """Whether a progress bar should show: on process 0, with stderr a terminal, unless
    ``JAXMRI_NO_PROGRESS=1``."""
    if os.environ.get("JAXMRI_NO_PROGRESS") == "1" or jax.process_index() != 0:
        return False
    return sys.stderr.isatty()


def _replica_fingerprint(tree: PyTree) -> jax.Array:
    def leaf_stats(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        x = jnp.abs(x.astype(jnp.float32)) if jnp.iscomplexobj(x) else x.astype(jnp.float32)
        return jnp.stack([jnp.sum(x), jnp.sum(x * x)])

    leaves = [leaf_stats(x) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves) if leaves else jnp.zeros((0, 2), jnp.float32)


_pmapped_fingerprint = jax.pmap(_replica_fingerprint)


def _check_replicas(rstate: PyTree, step: int) -> None:
    """Raise ``ReplicaDivergenceError`` unless all local replicas agree (sum and sum of squares
    of every leaf, to float32 round-off)."""
    if jax.local_device_count() == 1:
        return
    prints = np.stack(
        [np.asarray(shard.data)[0] for shard in _pmapped_fingerprint(rstate).addressable_shards]
    )
    if not np.allclose(prints, prints[:1], rtol=1e-5, atol=1e-6, equal_nan=True):
        raise ReplicaDivergenceError(
            f"the per-device copies of the train state differ at step {step}: train_step must "
            f"average its gradients (and batch-dependent collections such as batch_stats) with "
            f"pmean_tree / apply_mean_gradients over axis {AXIS_NAME!r}"
        )


# --------------------------------------------------------------------------------------------
# The loop


def fit(
    *,
    train_step: TrainStep,
    state: PyTree,
    batch_fn: Callable[[int], PyTree],
    num_steps: int,
    key: jax.Array,
    workdir: str | os.PathLike,
    checkpoint_every: int = 500,
    checkpoint_minutes: float | None = 10.0,
    keep_checkpoints: int = 3,
    eval_fn: Callable[[PyTree], Mapping[str, float]] | None = None,
    eval_every: int = 500,
    log_every: int = 10,
    resume: bool | None = None,
    desc: str = "train",
) -> PyTree:
    """Train ``state`` for ``num_steps`` updates of ``train_step``; checkpoint, log, resume.

    Args:
      train_step: pure ``(state, batch, key) -> (state, metrics)``; see the module docstring
        for the contract (it must ``pmean`` its gradients over :data:`AXIS_NAME`).
      state: the initial unreplicated state, any pytree. On resume it is the template the
        checkpoint is restored into (same structure, shapes and dtypes).
      batch_fn: ``step -> global batch`` (pytree of arrays, leading axis divisible by the
        total number of devices). Must depend only on ``step`` for exact resumption.
      num_steps: total number of updates (counting those of earlier runs in ``workdir``).
      key: ``jax.random`` key; step ``s`` on device ``d`` uses ``fold_in(fold_in(key, s), d)``.
      workdir: folder for ``checkpoints/``, ``metrics.jsonl`` and TensorBoard event files
        (:mod:`jaxmri.train.tensorboard`); created if missing.
      checkpoint_every: save every this many steps, and always at the end.
      checkpoint_minutes: in a single-process run, save also after any step that ends at
        least this many minutes (wall clock) after the last save or the start, so that a run
        killed without warning (SIGKILL, a power cut, a session that ends) loses at most about
        that much work, whatever ``checkpoint_every`` is. ``None``: by step count only. With
        several processes the processes could disagree on the time; only ``checkpoint_every``
        applies there.
      keep_checkpoints: how many of the newest checkpoints to keep.
      eval_fn: optional host-side ``state -> dict of floats``, given the unreplicated state,
        run on process 0 every ``eval_every`` steps and at the end; logged with split 'val'.
        Values that are images (``(H, W)`` or ``(H, W, 1|3)`` arrays) are shown in
        TensorBoard only.
      eval_every: see ``eval_fn``.
      log_every: write train metrics every this many steps (and at the end).
      resume: ``None`` continues from the newest checkpoint in ``workdir`` if there is one and
        starts fresh otherwise; ``True`` requires a readable checkpoint
        (:class:`jaxmri.errors.MissingCheckpointError`, a ``FileNotFoundError``, if none);
        ``False`` requires that there is none (``FileExistsError`` rather than overwriting one).
        A checkpoint whose files cannot be read (truncated, damaged) is skipped: fit resumes
        from the newest readable one, or from step 0 when none is (a finished run is then
        trained again), says so on stderr and moves the unreadable ones to
        ``<workdir>/corrupt_checkpoints/``.
      desc: label of the progress bar.

    Returns:
      The final unreplicated state (leaves on the default device). If the checkpoint
      already reached ``num_steps``, that state is returned without training.

    Raises:
      TrainingInterrupted: after Ctrl-C (SIGINT) or SIGTERM, once the state at the step
        reached is checkpointed. The first signal finishes the running step (and, to let all
        processes agree, one more); a second one of the same kind acts at once (Ctrl-C: a
        ``KeyboardInterrupt``; SIGTERM: the process ends). A ``KeyboardInterrupt`` raised inside
        the loop (e.g. by ``batch_fn``) saves the last completed step the same way.
      NonFiniteLossError: a metric of step ``s`` was NaN or infinite; the state before that
        update is checkpointed (as step ``s - 1``) and named in the message.
      ReplicaDivergenceError: the replicas differ at a checkpoint (``train_step`` forgot a pmean).
      Exception: whatever ``batch_fn`` (or sharding its batch) raised for step ``s``; if this
        run completed steps before it (and is a single process), the state after ``s`` steps
        is checkpointed first and a note on the exception names the checkpoint.
    """
    num_steps = check_int(num_steps, "num_steps", minimum=0)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", minimum=1)
    is_number = (isinstance(checkpoint_minutes, numbers.Real)
                 and not isinstance(checkpoint_minutes, bool))
    if checkpoint_minutes is not None and not (
            is_number and math.isfinite(checkpoint_minutes) and checkpoint_minutes >= 0):
        raise ValueError(f"checkpoint_minutes must be None or a finite number >= 0, got "
                         f"{checkpoint_minutes!r}")
    keep_checkpoints = check_int(keep_checkpoints, "keep_checkpoints", minimum=1)
    eval_every = check_int(eval_every, "eval_every", minimum=1)
    log_every = check_int(log_every, "log_every", minimum=1)
    if resume not in (None, True, False):
        raise ValueError(f"resume must be None, True or False, got {resume!r}")
    if not callable(train_step) or not callable(batch_fn):
        raise TypeError("train_step and batch_fn must be callables")

    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    manager = _checkpoint_manager(workdir / "checkpoints", keep_checkpoints)
    log = TensorBoardLog(_MetricsLog(workdir / "metrics.jsonl", enabled=is_main), workdir,
                         enabled=is_main)
    try:
        latest = manager.latest_step()
        if resume is True and latest is None:
            raise MissingCheckpointError(
                f"resume=True but there is no checkpoint in {workdir / 'checkpoints'}",
                workdir / "checkpoints",
            )
        if resume is False and latest is not None:
            raise FileExistsError(
                f"{workdir / 'checkpoints'} already holds a checkpoint (step {latest}); resume it "
                f"(resume=None or True) or choose another workdir instead of overwriting it"
            )
        start = 0
        if latest is not None:
            state, restored_step = _restore_newest_readable(manager, state, workdir)
            if restored_step is None and resume is True:
                raise MissingCheckpointError(
                    f"resume=True but no checkpoint in {workdir / 'checkpoints'} can be read",
                    workdir / "checkpoints",
                )
            start = restored_step or 0
        log.keep_until(start)
        if start >= num_steps:
            return jax.device_put(state)
        final = _train(
            train_step=train_step,
            state=state,
            batch_fn=batch_fn,
            start=start,
            num_steps=num_steps,
            key=key,
            manager=manager,
            log=log,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=(None if checkpoint_minutes is None or not _single_process()
                                else 60.0 * checkpoint_minutes),
            eval_fn=eval_fn if is_main else None,
            eval_every=eval_every,
            log_every=log_every,
            desc=desc,
        )
    finally:
        manager.wait_until_finished()
        manager.close()
        log.close()
    return final


def _single_process() -> bool:
    return jax.process_count() == 1


def _prepare_batch(batch_fn: Callable[[int], PyTree], step: int,
                   n_local: int) -> tuple[PyTree | None, BaseException | None]:
    """``(sharded batch of step, None)``, or ``(None, error)`` with what ``batch_fn`` or
    :func:`shard_batch` raised (``KeyboardInterrupt`` included). The loop raises the error when
    it needs that batch, so a step that was in flight while it was built still completes and is
    kept (and an interrupt saves it) exactly as if the batch had been built afterwards."""
    try:
        return shard_batch(batch_fn(step), num_local_devices=n_local), None
    except BaseException as error:  # noqa: BLE001 - re-raised by the loop, see above
        return None, error


def _train(
    *,
    train_step,
    state,
    batch_fn,
    start,
    num_steps,
    key,
    manager,
    log,
    checkpoint_every,
    checkpoint_seconds,
    eval_fn,
    eval_every,
    log_every,
    desc,
):
    pstep = _cached_parallel_step(train_step)
    n_local = jax.local_device_count()
    rstate = replicate(state)
    current = start
    bar = tqdm(
        total=num_steps, initial=start, desc=desc, unit="step", disable=not show_progress()
    )

    last_save = time.monotonic()

    def save(step, replicated):
        nonlocal last_save
        _check_replicas(replicated, step)
        path = _save(manager, step, _savable(unreplicate(replicated)))
        last_save = time.monotonic()
        return path

    def save_due(step):
        if step % checkpoint_every == 0 or step == num_steps:
            return True
        return (checkpoint_seconds is not None
                and time.monotonic() - last_save >= checkpoint_seconds)

    with _stop_signals_as_flag() as stop_signal:
        try:
            pending = _prepare_batch(batch_fn, start, n_local)
            for step in range(start, num_steps):
                batch, error = pending
                if error is not None:
                    if (current > start and _single_process()
                            and not isinstance(error, KeyboardInterrupt)):
                        # A batch that cannot be built (a corrupt file) must not cost the
                        # steps done since the last checkpoint. (An interrupt saves below. With
                        # several processes the others would not join the save: no save.)
                        path = save(current, rstate)
                        error.add_note(f"fit: batch_fn({step}) failed; the state after "
                                       f"{current} steps is checkpointed at {path} and a "
                                       f"rerun resumes from it")
                    raise error
                stop = np.full((n_local,), int(stop_signal() != 0), np.int32)
                new_rstate, pmetrics, stop_any = pstep(rstate, batch, key, step, stop)
                if step + 1 < num_steps:  # on the host, while the step runs
                    pending = _prepare_batch(batch_fn, step + 1, n_local)
                metrics = {k: float(v) for k, v in unreplicate(pmetrics).items()}
                if not all(math.isfinite(v) for v in metrics.values()):
                    path = save(step, rstate)
                    raise NonFiniteLossError(step + 1, path, metrics)
                rstate, current = new_rstate, step + 1

                bar.update(1)
                if "loss" in metrics:
                    bar.set_postfix(loss=f"{metrics['loss']:.4g}", refresh=False)
                if current % log_every == 0 or current == num_steps:
                    log.write(current, "train", metrics)
                if eval_fn is not None and (current % eval_every == 0 or current == num_steps):
                    scores = eval_fn(jax.device_put(unreplicate(rstate)))
                    log.write(current, "val", scores)  # images go to TensorBoard only
                if save_due(current):
                    save(current, rstate)
                if int(unreplicate(stop_any)):
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            path = save(current, rstate)
            manager.wait_until_finished()
            raise TrainingInterrupted(current, path, stop_signal() or signal.SIGINT) from None
        finally:
            bar.close()
    return jax.device_put(unreplicate(rstate))
