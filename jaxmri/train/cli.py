"""The command line shared by every experiment module (``python -m experiments.NAME ...``).

An experiment builds its parser with :func:`experiment_parser`, passing its presets (frozen
dataclasses whose docstrings give the command, minutes and expected table), parses, and calls
:func:`setup_from_args`, which joins a multi-process run when asked and creates the workdir::

    parser = experiment_parser(__doc__, presets=PRESETS)
    args = parser.parse_args()
    setup = setup_from_args(args)
    config = setup.preset
    ...

Flags left unset are ``None`` (``--steps``, ``--batch-size``, ``--data``) so that the preset's
value applies; ``--resume`` is ``None`` unless given, which :func:`jaxmri.train.loop.fit` reads
as "resume automatically when the workdir holds a checkpoint".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxmri import cpu as jaxmri_cpu
from jaxmri.train import distributed
from jaxmri.train.loop import NonFiniteLossError, TrainingInterrupted

__all__ = ["ExperimentSetup", "experiment_parser", "setup_from_args", "preset_summary",
           "exit_on_training_stop"]


@contextlib.contextmanager
def exit_on_training_stop():
    """Turn the two ways :func:`jaxmri.train.fit` stops early into a message and an exit code.

    * Ctrl-C (:class:`TrainingInterrupted`): the checkpoint is saved; say how to continue and
      exit with 130 (the shell's code for SIGINT).
    * A non-finite loss (:class:`NonFiniteLossError`): print its message (step and last good
      checkpoint) and exit with 1.
    """
    try:
        yield
    except TrainingInterrupted as err:
        print(f"\ninterrupted at step {err.step}, checkpoint saved in {err.checkpoint_path}; "
              "rerun the same command (or add --resume) to continue", file=sys.stderr)
        raise SystemExit(130) from None
    except NonFiniteLossError as err:
        print(f"\nstopped: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def preset_summary(preset: object) -> str:
    """First line of the preset's ``description`` attribute, else of its own docstring.

    Presets of one experiment are usually instances of one dataclass, so a ``description``
    field (command, minutes, table) is what tells them apart. A dataclass without a docstring
    gets a generated ``Name(field: type, ...)`` one, which says nothing to a user, so it is
    skipped ('' is returned).
    """
    description = getattr(preset, "description", None)
    if isinstance(description, str) and description.strip():
        return description.strip().splitlines()[0].strip()
    doc = inspect.getdoc(preset) or ""
    first = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    generated = dataclasses.is_dataclass(preset) and first.startswith(type(preset).__name__ + "(")
    return "" if generated else first


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description as written and the line breaks of flag help (the preset list),
    wrapping each line to the terminal width."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        # In the preset listing (lines after the first), a wrapped "name: text" line continues
        # indented past the name.
        out = []
        for number, line in enumerate(text.splitlines()):
            indent = " " * (line.index(": ") + 2) if number and ": " in line[:20] else ""
            out += textwrap.wrap(line, width, subsequent_indent=indent) or [""]
        return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _coordinator(text: str) -> str:
    try:
        distributed.parse_coordinator(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _default_experiment_name() -> str:
    # ``python -m experiments.invsharp`` sets argv[0] to .../experiments/invsharp.py.
    return Path(sys.argv[0]).stem or "experiment"


def experiment_parser(
    description: str,
    *,
    presets: Mapping[str, object],
    default_preset: str = "cpu",
    name: str | None = None,
) -> argparse.ArgumentParser:
    """The argparse parser of an experiment module.

    Args:
      description: shown at the top of ``--help`` (typically the module docstring).
      presets: ``{preset name: preset object}``; the help lists each name with the first line
        of its docstring.
      default_preset: the preset used without ``--preset``; must be a key of ``presets``.
      name: the experiment's name for the default workdir ``runs/<name>/<preset>``; default
        the running script's file stem (``invsharp`` for ``python -m experiments.invsharp``).
    """
    if not presets:
        raise ValueError("presets must name at least one preset")
    if default_preset not in presets:
        raise ValueError(f"default_preset {default_preset!r} is not one of {sorted(presets)}")
    name = _default_experiment_name() if name is None else name
    listing = "\n".join(
        f"{key}: {preset_summary(preset)}" if preset_summary(preset) else key
        for key, preset in presets.items()
    )
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=description,
        formatter_class=_HelpFormatter,
    )
    parser.set_defaults(experiment=name, _presets=dict(presets))
    parser.add_argument(
        "--preset",
        choices=list(presets),
        default=default_preset,
        help=f"model size and schedule to run (default: {default_preset}):\n{listing}",
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        type=Path,
        default=None,
        help=f"folder for checkpoints, metrics.jsonl, figures and the results table "
        f"(default: runs/{name}/<preset>)",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="your own data: a NIfTI volume (.nii/.nii.gz) or a folder of fastMRI .h5 files "
        "(default: the MNI152 T1 template that ships with nilearn, no download)",
    )
    parser.add_argument(
        "--steps",
        metavar="N",
        type=_positive_int,
        default=None,
        help="number of training steps, overriding the preset's",
    )
    parser.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=None,
        help="global batch size summed over all devices and processes (must be divisible by "
        "the number of devices), overriding the preset's",
    )
    parser.add_argument(
        "--seed",
        metavar="N",
        type=_non_negative_int,
        default=0,
        help="seed of model initialisation, data simulation and training noise (default: 0)",
    )
    parser.add_argument(
        "--resume",
        action="store_const",
        const=True,
        default=None,
        help="require a checkpoint in --workdir and continue from it; without this flag "
        "training continues automatically when --workdir holds a checkpoint",
    )
    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        type=_coordinator,
        default=None,
        help="multi-process run: HOST:PORT of process 0, reachable from every process "
        "(calls jax.distributed.initialize)",
    )
    parser.add_argument(
        "--num-processes",
        metavar="N",
        type=_positive_int,
        default=1,
        help="multi-process run: total number of processes (default: 1)",
    )
    parser.add_argument(
        "--process-id",
        metavar="N",
        type=_non_negative_int,
        default=0,
        help="multi-process run: this process's index, 0 .. num-processes - 1 (default: 0)",
    )
    return parser


@dataclasses.dataclass(frozen=True)
class ExperimentSetup:
    """What :func:`setup_from_args` resolved: the preset object and the created workdir."""

    preset_name: str
    preset: Any
    workdir: Path


def setup_from_args(args: argparse.Namespace) -> ExperimentSetup:
    """Join the multi-process run if asked, create the workdir, resolve the preset.

    ``args`` comes from a parser of :func:`experiment_parser`. ``args.workdir`` is filled in
    with the default when it was not given. ``jax.distributed.initialize`` runs when
    ``--num-processes`` > 1 or ``--coordinator`` is given, so call this before any other JAX
    work. Raises ``ValueError`` naming the flag for inconsistent multi-process flags.

    The XLA:CPU settings (:func:`jaxmri.cpu.configure`) are applied first, before JAX starts
    its backend, and ``args.conv_general_dilated`` is set to the convolution the run's models
    use (:func:`jaxmri.cpu.conv_for`: the XLA:CPU one on a CPU device, else plain XLA's).
    """
    jaxmri_cpu.configure()
    if args.num_processes > 1 and args.coordinator is None:
        raise ValueError("--coordinator HOST:PORT is required when --num-processes > 1")
    if args.process_id >= args.num_processes:
        raise ValueError(
            f"--process-id must be < --num-processes ({args.num_processes}), got {args.process_id}"
        )
    if args.coordinator is not None:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if args.workdir is None:
        args.workdir = Path("runs") / args.experiment / args.preset
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    args.conv_general_dilated = jaxmri_cpu.conv_for()
    return ExperimentSetup(
        preset_name=args.preset, preset=args._presets[args.preset], workdir=workdir
    )
