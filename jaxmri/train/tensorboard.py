"""TensorBoard event files next to ``metrics.jsonl``: one run folder per training stage.

:func:`jaxmri.train.fit` wraps its ``metrics.jsonl`` log in :class:`TensorBoardLog`, which
writes every logged record also as TensorBoard scalars (tag ``<split>/<name>``, e.g.
``train/loss``, ``val/psnr``) into the stage's workdir, with ``tensorboardX`` (no TensorFlow).
``tensorboard --logdir <experiment workdir>`` then shows one run per stage (``dsgan``,
``edsr_gb``, ...). At eval steps, values of the eval function's dict that are images
(``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` arrays) go to TensorBoard as images (min-max scaled
to [0, 1]) and stay out of ``metrics.jsonl``.

Resume: a resumed :func:`~jaxmri.train.fit` logs only steps after the restored checkpoint
(``metrics.jsonl`` drops later records left by a run that went past its last checkpoint). The
event files of earlier runs cannot be edited, so the new writer is opened with
``purge_step = restored step + 1``: TensorBoard (and its ``EventAccumulator``) discards the older
events at and after that step, and every step is shown once. Only process 0 writes; the writer
is opened at the first record, so a run that has nothing to log creates no file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TensorBoardLog", "split_images"]


def _is_image(value: Any) -> bool:
    shape = np.shape(value)
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3))


def split_images(values: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``(scalars as floats, images as numpy arrays)`` of an eval function's result."""
    scalars, images = {}, {}
    for name, value in values.items():
        if _is_image(value):
            value = np.asarray(value)
            images[name] = (np.abs(value) if np.iscomplexobj(value) else value).astype(np.float32)
        else:
            scalars[name] = float(value)
    return scalars, images


def _unit_range(image: np.ndarray) -> np.ndarray:
    """Min-max scale a finite image to [0, 1] (a constant image gives 0)."""
    image = np.nan_to_num(image)
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


class TensorBoardLog:
    """A ``metrics.jsonl`` log that also writes TensorBoard event files (see the module doc).

    Args:
      log: the wrapped log (``keep_until(step)``, ``write(step, split, metrics)``).
      logdir: the run folder (the stage's workdir).
      enabled: write event files (process 0); otherwise only the wrapped log is written.
    """

    def __init__(self, log, logdir: str | Path, *, enabled: bool):
        self.log = log
        self.logdir = Path(logdir)
        self.enabled = enabled
        self._purge_step: int | None = None
        self._writer = None

    def keep_until(self, step: int) -> None:
        """The run resumes after ``step``: drop later records (see the module doc)."""
        self.log.keep_until(step)
        self._purge_step = step + 1 if step > 0 else None

    def _board(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            # Event file names hold the time in whole seconds: a resume within the same second
            # would reopen (and truncate) the earlier run's file. The suffix keeps them apart
            # and sorts a resumed run's file after the run it continues (readers go by name).
            start = self._purge_step or 0
            self._writer = SummaryWriter(logdir=str(self.logdir), purge_step=self._purge_step,
                                         flush_secs=30,
                                         filename_suffix=f".from{start:09d}.{os.getpid()}")
        return self._writer

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        """Log ``metrics`` of ``step``: scalars to both files, images to TensorBoard only."""
        scalars, images = split_images(metrics)
        self.log.write(step, split, scalars)
        if not self.enabled:
            return
        board = self._board()
        for name, value in scalars.items():
            if math.isfinite(value):
                board.add_scalar(f"{split}/{name}", value, global_step=step)
        for name, image in images.items():
            formats = "HW" if image.ndim == 2 else "HWC"
            board.add_image(f"{split}/{name}", _unit_range(image), global_step=step,
                            dataformats=formats)

    def close(self) -> None:
        """Flush and close the event file (a no-op if none was opened)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
