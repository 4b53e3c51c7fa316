"""TensorBoard event files of fit: every logged step once, equal to metrics.jsonl, across resumes.

The event files are read back with TensorBoard's own ``EventAccumulator`` (what ``tensorboard
--logdir`` uses), which applies the ``purge_step`` that a resumed run's writer records.
"""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from test_train_loop import batch_fn, run  # noqa: I001 - the same tiny problem and jit caches

from jaxmri.train.loop import TrainingInterrupted
from jaxmri.train.tensorboard import TensorBoardLog, split_images

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _board(workdir):
    acc = event_accumulator.EventAccumulator(
        str(workdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    acc.Reload()
    return acc


def _jsonl(workdir, split, name):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[name] for r in records if r["split"] == split and name in r}


def _scalars(acc, tag):
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: duplicated steps {sorted(steps)}"
    return {e.step: e.value for e in events}


def eval_fn(state):
    kernel = np.asarray(state.params["Dense_0"]["kernel"])
    return {"kernel_norm": float(np.linalg.norm(kernel)), "kernel_image": kernel}


def test_interrupt_and_resume_log_every_step_once(tmp_path):
    def interrupting(step):
        if step == 6:
            raise KeyboardInterrupt
        return batch_fn(step)

    with pytest.raises(TrainingInterrupted):
        run(tmp_path, num_steps=10, batch_fn=interrupting, eval_fn=eval_fn, eval_every=4)
    run(tmp_path, num_steps=10, eval_fn=eval_fn, eval_every=4)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2  # one per run

    acc = _board(tmp_path)
    train = _scalars(acc, "train/loss")
    want = _jsonl(tmp_path, "train", "loss")
    assert sorted(train) == sorted(want) == list(range(1, 11))
    np.testing.assert_allclose([train[s] for s in want], list(want.values()), rtol=1e-6)
    val = _scalars(acc, "val/kernel_norm")
    want_val = _jsonl(tmp_path, "val", "kernel_norm")
    assert sorted(val) == sorted(want_val) == [4, 8, 10]
    np.testing.assert_allclose([val[s] for s in want_val], list(want_val.values()), rtol=1e-6)
    # The image went to TensorBoard only (3 x 8 kernel, scaled to [0, 1]).
    assert sorted(e.step for e in acc.Images("val/kernel_image")) == [4, 8, 10]
    assert "kernel_image" not in (tmp_path / "metrics.jsonl").read_text()


def test_steps_logged_past_the_last_checkpoint_are_purged(tmp_path):
    """A run that crashed after its checkpoint logged steps the resumed run logs again."""
    run(tmp_path, num_steps=6, checkpoint_every=4, keep_checkpoints=5)
    shutil.rmtree(tmp_path / "checkpoints" / "6")  # as if it died between steps 4 and 6
    first = _scalars(_board(tmp_path), "train/loss")
    assert sorted(first) == list(range(1, 7))
    run(tmp_path, num_steps=8, checkpoint_every=4, keep_checkpoints=5)
    train = _scalars(_board(tmp_path), "train/loss")  # asserts no step appears twice
    want = _jsonl(tmp_path, "train", "loss")
    assert sorted(train) == sorted(want) == list(range(1, 9))
    np.testing.assert_allclose([train[s] for s in want], list(want.values()), rtol=1e-6)


class _ListLog:
    def __init__(self):
        self.records = []

    def keep_until(self, step):
        self.records = [r for r in self.records if r[0] <= step]

    def write(self, step, split, metrics):
        self.records.append((step, split, dict(metrics)))


def test_disabled_log_writes_no_event_file(tmp_path):
    inner = _ListLog()
    log = TensorBoardLog(inner, tmp_path, enabled=False)
    log.write(1, "val", {"psnr": jnp.float32(30.0), "panel": np.zeros((4, 4))})
    log.close()
    assert inner.records == [(1, "val", {"psnr": 30.0})]
    assert not list(tmp_path.iterdir())


def test_split_images():
    scalars, images = split_images({"a": np.float32(1.5), "b": np.ones((2, 3)),
                                     "c": np.ones((2, 3, 3)), "d": np.array(2.0),
                                     "e": np.ones((2, 3), np.complex64) * 1j})
    assert scalars == {"a": 1.5, "d": 2.0}
    assert sorted(images) == ["b", "c", "e"]
    np.testing.assert_array_equal(images["e"], np.ones((2, 3)))
