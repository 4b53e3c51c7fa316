"""The command line shared by every experiment module (``python -m experiments.NAME ...``).

An experiment builds its parser with :func:`experiment_parser`, passing its presets (frozen
dataclasses whose docstrings give the command, minutes and expected table), adds its own flags
and hands the rest to :func:`run_experiment`: parsing, ``--predict``, ``--combine``,
``--seeds``, then :func:`setup_from_args` (which joins a multi-process run when asked and
creates the workdir) and the experiment's own ``train(args, setup)``::

    @exit_on_user_error()
    def main(argv=None):
        parser = experiment_parser(__doc__, presets=PRESETS, name="demo", predict=True)
        return run_experiment(main, parser, argv, train=train_and_evaluate,
                              predict=functools.partial(predict_command, build=build_demo))

Flags left unset are ``None`` (``--steps``, ``--batch-size``, ``--data``) so that the preset's
value applies; ``--resume`` is ``None`` unless given, which :func:`jaxmri.train.loop.fit` reads
as "resume automatically when the workdir holds a checkpoint".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxmri import cpu as jaxmri_cpu
from jaxmri.errors import MissingCheckpointError, UserInputError
from jaxmri.train import distributed
from jaxmri.train.claims import combine_runs, run_over_seeds
from jaxmri.train.run_record import RUN_RECORD, write_run_record
from jaxmri.train.loop import NonFiniteLossError, TrainingInterrupted

__all__ = ["ExperimentSetup", "SplitPreset", "experiment_parser", "setup_from_args",
           "preset_summary", "override_preset", "exit_on_training_stop", "exit_on_user_error",
           "check_batch_size", "positive_int", "name_list", "argv_for_seed", "repeat_over_seeds",
           "add_predict_flags", "run_experiment", "OneLineErrorParser"]

# Workdirs that setup_from_args created in this process (the top-most folder it made), so that
# exit_on_user_error can take them away again when the input turns out to be unusable.
_created_workdirs: list[Path] = []


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _remove_empty_folders(root: Path) -> None:
    """Remove ``root`` and the folders below it that hold no file (bottom-up); files stay.

    ``root`` was created by this run, so the ``run.json`` records it wrote are its own and go
    too: a run refused before training leaves nothing behind."""
    if not root.is_dir():
        return
    for folder, _, files in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if RUN_RECORD in files:
            (Path(folder) / RUN_RECORD).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something was written, keep it
            os.rmdir(folder)


@contextlib.contextmanager
def exit_on_user_error():
    """Turn a :class:`jaxmri.errors.UserInputError` into ``error: <message>`` and exit code 2.

    Used by every experiment's ``main`` (as a decorator or a ``with`` block). The message is
    printed on one line on stderr, without a traceback; a workdir that :func:`setup_from_args`
    created for this run is removed again if nothing was written into it (folders only, never a
    file; only during the run that created it). ``--resume`` without a checkpoint is reported in
    terms of the flag. Every other exception passes through with its traceback: on valid input it
    is a bug.
    """
    try:
        yield
    except UserInputError as err:
        if isinstance(err, MissingCheckpointError):
            message = (f"--resume was given but {err.directory} holds no readable "
                       "checkpoint; run without --resume to start training (or pass the "
                       "--workdir of the run to continue)")
        else:
            message = _one_line(str(err))
        while _created_workdirs:
            _remove_empty_folders(_created_workdirs.pop())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        # The run is over: its workdir is no longer this process's to take away. Without this a
        # later user error in the same process (a --predict on a bad file after training, from
        # Python) would delete the finished run's run.json.
        _created_workdirs.clear()


@contextlib.contextmanager
def exit_on_training_stop():
    """Turn the two ways :func:`jaxmri.train.fit` stops early into a message and an exit code.

    * Ctrl-C or SIGTERM (:class:`TrainingInterrupted`): the checkpoint is saved; say how to
      continue and exit with the shell's code for the signal (130 for SIGINT, 143 for SIGTERM).
    * A non-finite loss (:class:`NonFiniteLossError`): print its message (step and last good
      checkpoint) and exit with 1.
    """
    try:
        yield
    except TrainingInterrupted as err:
        print(f"\n{err}; rerun the same command (or add --resume) to continue",
              file=sys.stderr)
        raise SystemExit(128 + err.signum) from None
    except NonFiniteLossError as err:
        print(f"\nstopped: {err}", file=sys.stderr)
        raise SystemExit(1) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitPreset:
    """Base of the presets of experiments that train on slices: which slices form the splits.

    A subclass (a frozen dataclass) adds the experiment's own fields, with or without defaults
    (these two are keyword-only, so they may come first); pass them to
    :func:`jaxmri.data.load_splits`. ``--predict`` slices a user's NIfTI volume along
    ``orientation`` too, as the model was trained.

    Attributes:
      orientation: the one slicing axis of every split (``"sagittal"``, ``"coronal"`` or
        ``"axial"``). Slices of two orientations intersect, so a split by position over several
        would leak test voxels into training (:mod:`jaxmri.data.slicing`); coronal has the most
        slices of the embedded template.
      split_fractions: ``(train, val, test)`` fractions of the slice positions; the large test
        fraction keeps about as many test slices as three orientations gave.
    """

    orientation: str = "coronal"
    split_fractions: tuple[float, float, float] = (0.55, 0.15, 0.3)


def override_preset(preset: Any, **fields: Any) -> Any:
    """``preset`` (a frozen dataclass) with ``fields`` replaced, except those whose value is
    ``None``: a flag left unset (``--steps``, ``--batch-size``) keeps the preset's value.

    One flag may set several fields, e.g. every training stage's steps:
    ``override_preset(preset, seg_steps=args.steps, recnet_steps=args.steps)``.
    """
    return dataclasses.replace(preset, **{k: v for k, v in fields.items() if v is not None})


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


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (exit status 2), like every
    other user error of the experiments and benchmarks: ``error: argument --steps: expected a
    positive integer, got 0 (python -m experiments.x --help lists the flags)``. argparse's own
    prints the usage block (a dozen lines of flags) above it."""

    def error(self, message: str):
        self.exit(2, f"error: {message} ({self.prog} --help lists the flags)\n")


def positive_int(text: str) -> int:
    """argparse ``type``: the int of ``text`` if it is one and ``> 0``, else a one-line error."""
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


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 0 such as 0,1,2, got {text!r}") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected distinct comma-separated integers >= 0 such as 0,1,2, got {text!r}")
    return seeds


def name_list(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """argparse ``type`` for a comma-separated list of names from ``choices``, each once.

    ``name_list(("gauss1d", "poisson2d"), "mask setting")("gauss1d, poisson2d")`` is
    ``("gauss1d", "poisson2d")`` (the order given, spaces stripped); an unknown, empty or
    repeated name is a one-line ``ArgumentTypeError`` that names it (``what`` says what a name
    is) and lists the choices.
    """
    choices = tuple(choices)

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(","))
        unknown = [n for n in names if n not in choices]  # '' too: "--masks ''" or "a,"
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(choices)} (comma-separated)")
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"a {what} is named twice in {text!r}")
        return names

    return parse


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
    predict: bool = False,
) -> argparse.ArgumentParser:
    """The argparse parser of an experiment module.

    Args:
      description: shown at the top of ``--help`` (typically the module docstring).
      presets: ``{preset name: preset object}``; the help lists each name with the first line
        of its docstring.
      default_preset: the preset used without ``--preset``; must be a key of ``presets``.
      name: the experiment's name for the default workdir ``runs/<name>/<preset>``; default
        the running script's file stem (``invsharp`` for ``python -m experiments.invsharp``).
      predict: also add the ``--predict`` flags (:func:`add_predict_flags`).
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
    parser = OneLineErrorParser(
        prog=f"python -m experiments.{name}",
        description=description,
        formatter_class=_HelpFormatter,
    )
    parser.set_defaults(experiment=name, _presets=dict(presets))
    parser.add_argument(
        "--preset",
        choices=list(presets),
        default=default_preset,
        # argparse %-formats help strings: a literal "%" ("20 % sampled") must be doubled.
        help=f"model size and schedule to run (default: {default_preset}):\n"
        + listing.replace("%", "%%"),
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
        type=positive_int,
        default=None,
        help="number of training steps, overriding the preset's",
    )
    parser.add_argument(
        "--batch-size",
        metavar="N",
        type=positive_int,
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
        "--seeds",
        metavar="N,N,...",
        type=_seed_list,
        default=None,
        help="run the whole preset once per seed, in <workdir>/seed<k>/, then write "
        "claims_over_seeds.md (in how many seeds each paper claim holds); replaces --seed",
    )
    parser.add_argument(
        "--combine",
        metavar="RUN",
        nargs="+",
        type=Path,
        default=None,
        help="train nothing: write claims_over_seeds.md and regime_over_seeds.md into "
        "--workdir from finished runs of this experiment that differ only in --seed (e.g. one "
        "job per seed, or seed<k> folders of --seeds runs)",
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
        type=positive_int,
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
    if predict:
        add_predict_flags(parser)
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
    work. Raises :class:`jaxmri.errors.UserInputError` naming the flag for inconsistent
    multi-process flags, ``--resume`` with a workdir that holds no checkpoint (checked before
    any data is read), and a workdir that cannot be created or written.
    Process 0 records the preset and flags in ``<workdir>/run.json``
    (:mod:`jaxmri.train.run_record`), which ``--predict`` reads to rebuild the model.

    The XLA:CPU settings (:func:`jaxmri.cpu.configure`) are applied first, before JAX starts
    its backend, and ``args.conv_general_dilated`` is set to the convolution the run's models
    use (:func:`jaxmri.cpu.conv_for`: the XLA:CPU one on a CPU device, else plain XLA's).
    """
    jaxmri_cpu.configure()
    if args.num_processes > 1 and args.coordinator is None:
        raise UserInputError("--coordinator HOST:PORT is required when --num-processes > 1")
    if args.process_id >= args.num_processes:
        raise UserInputError(
            f"--process-id must be < --num-processes ({args.num_processes}), got {args.process_id}"
        )
    preset = args._presets[args.preset]
    if args.coordinator is not None:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if args.workdir is None:
        args.workdir = Path("runs") / args.experiment / args.preset
    workdir = Path(args.workdir)
    _created_workdirs.clear()  # only this run's workdir is ever taken away again
    if args.resume and not _holds_checkpoint(workdir):
        raise MissingCheckpointError(
            f"--resume was given but {workdir} holds no checkpoint", workdir)
    created = _make_workdir(workdir)
    if created is not None:
        _created_workdirs.append(created)
    if args.process_id == 0:
        write_run_record(workdir, args)
    args.conv_general_dilated = jaxmri_cpu.conv_for()
    return ExperimentSetup(preset_name=args.preset, preset=preset, workdir=workdir)


def _holds_checkpoint(workdir: Path) -> bool:
    """Whether any ``checkpoints/<step>`` folder of :func:`jaxmri.train.fit` lies in ``workdir``
    (an experiment trains its models in subfolders of the workdir)."""
    if not workdir.is_dir():
        return False
    return any(step.is_dir() and step.name.isdigit()
               for folder in workdir.rglob("checkpoints") if folder.is_dir()
               for step in folder.iterdir())


def _make_workdir(workdir: Path) -> Path | None:
    """Create ``workdir`` (and its parents); return the top-most folder created, or ``None``.

    Raises :class:`UserInputError` naming ``--workdir`` when it is a file, lies below a file, or
    cannot be written.
    """
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == workdir else f"lies below the file {existing}"
        raise UserInputError(f"--workdir {workdir} {where}; choose a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"--workdir {workdir} is not writable ({existing}: permission "
                             "denied); choose another --workdir")
    top = None
    if existing != workdir:
        top = workdir
        while top.parent != existing:
            top = top.parent
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".jaxmri_write_test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        if top is not None:
            _remove_empty_folders(top)
        raise UserInputError(f"--workdir {workdir} cannot be written ({err.strerror}); choose "
                             "another --workdir") from None
    return top


def check_batch_size(batch_size: int | None, num_examples: int, *,
                     what: str = "training slices") -> None:
    """Raise :class:`UserInputError` naming ``--batch-size`` if it exceeds ``num_examples``.

    For experiments that draw distinct examples per batch: call it as soon as the number is
    known (a preset's ``num_train`` before loading, the loaded split right after loading), so
    the error comes before minutes of data simulation or training. ``None`` (flag not given)
    passes.
    """
    if batch_size is not None and batch_size > num_examples:
        raise UserInputError(f"--batch-size {batch_size} is larger than the {num_examples} "
                             f"{what}; use --batch-size {num_examples} or less")


def _without_flags(argv: Sequence[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` without ``--flag value`` and ``--flag=value`` for each of ``flags``."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in flags:
            skip = True
        elif not any(token.startswith(flag + "=") for flag in flags):
            out.append(token)
    return out


def argv_for_seed(argv: Sequence[str], seed: int, workdir: str | os.PathLike) -> list[str]:
    """The command line of one seed of a ``--seeds`` run: ``argv`` without ``--seeds``,
    ``--seed`` and ``--workdir``, then ``--seed <seed> --workdir <workdir>``."""
    rest = _without_flags(list(argv), ("--seeds", "--seed", "--workdir"))
    return [*rest, "--seed", str(seed), "--workdir", str(workdir)]


def repeat_over_seeds(main: Callable[[list[str]], object], argv: Sequence[str] | None,
                      args: argparse.Namespace) -> dict:
    """Run an experiment's ``main`` once per seed of ``args.seeds`` and aggregate its claims.

    Call it right after parsing, before :func:`setup_from_args`::

        args = parser.parse_args(argv)
        if args.seeds is not None:
            return repeat_over_seeds(main, argv, args)

    Each seed runs ``main(argv_for_seed(argv, seed, <workdir>/seed<seed>))`` in this process;
    see :func:`jaxmri.train.claims.run_over_seeds` for what is written. ``argv`` ``None`` means
    ``sys.argv[1:]``. Multi-process runs are refused (each seed would join the run again).
    """
    if args.coordinator is not None or args.num_processes > 1:
        raise ValueError("--seeds runs the seeds one after another in one process; it cannot be "
                         "combined with --coordinator/--num-processes (run one --seed per job, "
                         "then --combine their workdirs)")
    argv = list(sys.argv[1:] if argv is None else argv)
    workdir = args.workdir if args.workdir is not None else (
        Path("runs") / args.experiment / args.preset)
    return run_over_seeds(lambda seed, folder: main(argv_for_seed(argv, seed, folder)),
                          args.seeds, workdir)


def add_predict_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--predict PATH``, ``--out DIR`` and ``--all-methods`` to an experiment's parser.

    :func:`jaxmri.predict.predict_command` reads them; ``experiment_parser(..., predict=True)``
    adds them."""
    group = parser.add_argument_group("use a trained model (with --workdir RUN)")
    group.add_argument("--predict", metavar="PATH", default=None,
                       help="run the model trained in --workdir on every slice of PATH (a "
                       "NIfTI volume, a fastMRI .h5 file or a folder of them) instead of "
                       "training; --batch-size sets the slices per batch (default 8)")
    group.add_argument("--out", metavar="DIR", type=Path, default=None,
                       help="folder for --predict's outputs (default: RUN/predictions)")
    group.add_argument("--all-methods", action="store_true",
                       help="with --predict: write every output of the method (baselines, "
                       "variants), not only its main one")


def run_experiment(main: Callable[[list[str]], object], parser: argparse.ArgumentParser,
                   argv: Sequence[str] | None, *,
                   train: Callable[[argparse.Namespace, ExperimentSetup], object],
                   predict: Callable[[argparse.Namespace], object] | None = None) -> object:
    """The body every experiment's ``main`` shares: parse, then predict, repeat or train.

    1. ``argv`` is parsed (``None``: ``sys.argv[1:]``) by ``parser``, from
       :func:`experiment_parser` (with ``predict=True`` when ``predict`` is given).
    2. ``--predict PATH``: returns ``predict(args)`` (a trained model applied to files, e.g.
       :func:`jaxmri.predict.predict_command` with the experiment's builder); nothing is
       trained and no workdir is created. ``args._flag_defaults`` holds every flag's default
       (the parser on an empty command line).
    3. ``--combine RUN ...``: returns :func:`jaxmri.train.claims.combine_runs` of those
       finished runs into ``--workdir`` (required); nothing is trained.
    4. ``--seeds``: returns :func:`repeat_over_seeds` of ``main`` (which calls ``main`` again
       once per seed, each time without ``--seeds``).
    5. Otherwise :func:`setup_from_args` (CPU settings, multi-process join, workdir,
       ``run.json``), then returns ``train(args, setup)`` inside :func:`exit_on_training_stop`
       (Ctrl-C: exit 130 after the checkpoint; a non-finite loss: exit 1).

    ``main`` is the experiment's entry point, normally wrapped in :func:`exit_on_user_error`,
    which turns a :class:`jaxmri.errors.UserInputError` raised anywhere here into one line.
    """
    args = parser.parse_args(argv)
    # What each flag is when not given: a run.json written before a flag existed lacks it, and
    # the run it records used that default (read by --predict and --combine).
    flag_defaults = vars(parser.parse_args([]))
    if predict is not None and getattr(args, "predict", None) is not None:
        args._flag_defaults = flag_defaults
        return predict(args)
    if args.combine is not None:
        if args.workdir is None or args.seeds is not None:
            parser.error("--combine writes its tables into --workdir DIR (required) and cannot "
                         "be used with --seeds")
        return combine_runs(args.combine, args.workdir, experiment=args.experiment,
                            flag_defaults=flag_defaults)
    if args.seeds is not None:
        return repeat_over_seeds(main, argv, args)
    setup = setup_from_args(args)
    with exit_on_training_stop():
        return train(args, setup)
