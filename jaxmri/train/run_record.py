"""``run.json``: the preset and flags that trained a workdir, so a trained model can be rebuilt.

:func:`jaxmri.train.cli.setup_from_args` writes it when training starts; ``--predict`` (see
:mod:`jaxmri.predict`) reads it back to build the same model before restoring its checkpoints.
The record holds the experiment's name, the preset's name and every command-line flag that
has a JSON value (paths as strings), e.g.::

    {"experiment": "invsharp", "preset": "smoke",
     "flags": {"seed": 0, "steps": 3, "batch_size": null, "data": null, "recon_model": 1, ...}}
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from jaxmri.errors import UserInputError

__all__ = ["RUN_RECORD", "write_run_record", "read_run_record", "flag_json_value"]

RUN_RECORD = "run.json"
# Flags that select what a command does rather than what was trained.
_NOT_RECORDED = {"predict", "out", "all_methods", "workdir", "seeds", "combine", "coordinator",
                 "num_processes", "process_id", "resume"}


def flag_json_value(value: Any) -> Any:
    """A flag's value as ``run.json`` records it: paths as text, tuples as lists."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def write_run_record(workdir: str | os.PathLike, args: argparse.Namespace) -> Path:
    """Write ``<workdir>/run.json`` from parsed experiment flags; returns its path.

    ``args`` comes from :func:`jaxmri.train.cli.experiment_parser` (it carries ``experiment``
    and ``preset``). Private attributes (``_presets``) and flags without a JSON value are left
    out.
    """
    flags = {}
    for name, value in vars(args).items():
        if name.startswith("_") or name in _NOT_RECORDED or name in ("experiment", "preset"):
            continue
        value = flag_json_value(value)
        try:
            json.dumps(value)
        except TypeError:
            continue
        flags[name] = value
    record = {"experiment": args.experiment, "preset": args.preset, "flags": flags}
    path = Path(workdir) / RUN_RECORD
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_run_record(workdir: str | os.PathLike, *, experiment: str | None = None) -> dict:
    """Read ``<workdir>/run.json``; ``ValueError`` naming the folder when it holds no record.

    Args:
      workdir: a folder written by a training run.
      experiment: when given, the record must come from this experiment.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UserInputError(
            f"--workdir {workdir} does not exist: pass the folder of a trained run")
    path = workdir / RUN_RECORD
    if not path.is_file():
        raise UserInputError(f"{workdir} holds no trained model ({RUN_RECORD} is missing): "
                             "train one with the same --workdir first")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(record, dict) or not {"experiment", "preset", "flags"} <= set(record):
        raise UserInputError(f"{path} is not a run record (needs experiment, preset and flags)")
    if experiment is not None and record["experiment"] != experiment:
        raise UserInputError(f"{workdir} was trained by experiments.{record['experiment']}, not "
                         f"experiments.{experiment}")
    return record
