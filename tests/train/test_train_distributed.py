"""Multi-process training on localhost: two CPU processes (gloo collectives) vs one process."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmri.train.distributed import initialize, parse_coordinator

WORKER = Path(__file__).with_name("_two_process_worker.py")


def _load_worker():
    spec = importlib.util.spec_from_file_location("two_process_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    assert jax.local_device_count() == 2, "the reference run needs the 2 test devices"
    coordinator = f"localhost:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    outs = [tmp_path / f"params_{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), coordinator, "2", str(i), str(tmp_path / "mp"), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-3000:]

    # Single process, 2 local devices, same global batch: the same devices in the same order.
    worker = _load_worker()
    reference = worker.run(str(tmp_path / "single"))
    ref_flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(reference.params)
    }
    results = [dict(np.load(out)) for out in outs]
    for index, result in enumerate(results):
        assert int(result.pop("device_count")) == 2  # both processes saw the global device set
        assert int(result.pop("process_index")) == index
        assert set(result) == set(ref_flat)
    for name, ref in ref_flat.items():
        np.testing.assert_array_equal(results[0][name], results[1][name])
        np.testing.assert_allclose(results[0][name], ref, rtol=1e-5, atol=1e-6)
    mp_log = _read_log(tmp_path / "mp" / "metrics.jsonl")
    single_log = _read_log(tmp_path / "single" / "metrics.jsonl")
    assert [r["step"] for r in mp_log] == list(range(1, worker.NUM_STEPS + 1))
    np.testing.assert_allclose(
        [r["loss"] for r in mp_log], [r["loss"] for r in single_log], rtol=1e-5
    )
    # Training moved the parameters: the agreement is not between untouched initialisations.
    init = jax.tree.leaves(worker.initial_state().params)
    final = jax.tree.leaves(reference.params)
    moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(final, init)]
    assert min(moved) > 1e-3
    # Orbax's multi-process save produced the same checkpoints as the single process.
    assert sorted(os.listdir(tmp_path / "mp" / "checkpoints")) == ["3", "6"]


def test_bad_distributed_arguments_are_named():
    with pytest.raises(ValueError, match="coordinator"):
        parse_coordinator("localhost")
    with pytest.raises(ValueError, match="coordinator"):
        parse_coordinator("localhost:99999")
    assert parse_coordinator("10.0.0.1:1234") == ("10.0.0.1", 1234)
    with pytest.raises(ValueError, match="num_processes"):
        initialize("localhost:1234", 0, 0)
    with pytest.raises(ValueError, match="process_id"):
        initialize("localhost:1234", 2, 2)
