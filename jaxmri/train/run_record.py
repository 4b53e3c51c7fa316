"""``run.json``: the preset and flags that trained a workdir, so a trained model can be rebuilt.

:func:`jaxmri.train.cli.setup_from_args` writes it when training starts; ``--predict`` (see
:mod:`jaxmri.predict`) reads it back to build the same model before restoring its checkpoints.
The record holds the experiment's name, the preset's name and every command-line flag that
has a JSON value (paths as strings), and the environment that ran it (:func:`run_environment`:
package versions, CPU, devices, jaxmri's commit), e.g.::

    {"experiment": "invsharp", "preset": "smoke",
     "flags": {"seed": 0, "steps": 3, "batch_size": null, "data": null, "recon_model": 1, ...},
     "environment": {"python": "3.11.9", "packages": {"jax": "0.10.2", ...},
                     "cpu": "Intel(R) Xeon(R) Processor", "devices": "1 x cpu", ...}}

The environment is there because a training is reproducible to the digit only on the same
CPU type and packages: an adversarial training (001's DSGAN, 003's refinement) can take a
different path when a kernel rounds differently or a package changes, and two runs that differ
can be told apart only by what their records say.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from jaxmri.errors import UserInputError

__all__ = ["RUN_RECORD", "write_run_record", "read_run_record", "flag_json_value",
           "run_environment", "cpu_model_and_flags"]

RUN_RECORD = "run.json"
# Flags that select what a command does rather than what was trained.
_NOT_RECORDED = {"predict", "out", "all_methods", "workdir", "seeds", "combine", "coordinator",
                 "num_processes", "process_id", "resume"}
# The distributions whose versions decide a run's numbers.
_RECORDED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "orbax-checkpoint",
                      "chex", "jaxmri")


# The CPU features that choose XLA:CPU's kernels (a virtual machine's model name is often just
# "Intel(R) Xeon(R) Processor", which does not tell two such machines apart).
_RECORDED_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_model_and_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo"
                        ) -> tuple[str, list[str] | None]:
    """The CPU's model name and which of ``_RECORDED_CPU_FLAGS`` it has, in that order, read
    from the first processor of ``cpuinfo`` (Linux); without it ``platform.processor()`` and
    ``None``."""
    model, flags = None, None
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and flags is None:
                    present = set(value.split())
                    flags = [flag for flag in _RECORDED_CPU_FLAGS if flag in present]
                if model is not None and flags is not None:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def _git_commit() -> str | None:
    """jaxmri's git commit when it runs from a checkout (``+dirty`` with uncommitted changes to
    tracked files), else ``None``."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def run_environment() -> dict:
    """What ran this process, as ``run.json`` records it.

    Returns ``{"python", "platform", "cpu", "cpu_flags", "cpu_count", "xla_flags", "devices",
    "packages", "commit"}``: Python's version, the OS, the CPU's model name, which of the
    vector extensions that choose XLA:CPU's kernels it has (``None`` where unknown), its
    logical core count, the ``XLA_FLAGS`` variable, the JAX devices (``"<count> x <device
    kind>"``; this initialises JAX's backend), the installed versions of the packages that
    decide the numbers (``None`` for one not installed) and jaxmri's git commit (``None``
    outside a checkout).
    """
    import jax  # here, not at import: reading the record needs no JAX

    packages = {}
    for name in _RECORDED_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    devices = jax.devices()
    cpu, cpu_flags = cpu_model_and_flags()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_flags": cpu_flags,
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "packages": packages,
        "commit": _git_commit(),
    }


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
    out. ``environment`` is :func:`run_environment` of this process: a resumed run records the
    environment it resumed in.
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
    record = {"experiment": args.experiment, "preset": args.preset, "flags": flags,
              "environment": run_environment()}
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
