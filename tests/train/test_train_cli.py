"""The experiment command line: defaults, help text, validation, set-up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jaxmri.train.cli import experiment_parser, preset_summary, setup_from_args


@dataclasses.dataclass(frozen=True)
class Smoke:
    """Seconds: 4 steps on 16x16 images, for tests.

    Command: python -m experiments.demo --preset smoke
    """

    steps: int = 4


@dataclasses.dataclass(frozen=True)
class Cpu:
    """About 10 minutes on 2 CPU cores; prints the PSNR/SSIM table."""

    steps: int = 2000


@dataclasses.dataclass(frozen=True)
class Undocumented:
    steps: int = 1


PRESETS = {"smoke": Smoke(), "cpu": Cpu(), "bare": Undocumented()}
FLAGS = [
    "--preset",
    "--workdir",
    "--data",
    "--steps",
    "--batch-size",
    "--seed",
    "--seeds",
    "--resume",
    "--coordinator",
    "--num-processes",
    "--process-id",
]


def parser():
    return experiment_parser("Demo experiment.", presets=PRESETS, name="demo")


def test_defaults():
    args = parser().parse_args([])
    assert args.preset == "cpu"
    assert args.workdir is None and args.data is None
    assert args.steps is None and args.batch_size is None
    assert args.seed == 0
    assert args.resume is None  # fit() then resumes automatically if a checkpoint exists
    assert args.coordinator is None and args.num_processes == 1 and args.process_id == 0


def test_flags_parse():
    args = parser().parse_args(
        "--preset smoke --workdir w --data v.nii.gz --steps 5 --batch-size 4 --seed 3 --resume "
        "--coordinator host:1234 --num-processes 2 --process-id 1".split()
    )
    assert (args.preset, args.workdir, args.data) == ("smoke", Path("w"), "v.nii.gz")
    assert (args.steps, args.batch_size, args.seed, args.resume) == (5, 4, 3, True)
    assert (args.coordinator, args.num_processes, args.process_id) == ("host:1234", 2, 1)


def test_help_mentions_every_flag_and_preset_docstrings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert text.startswith("usage: python -m experiments.demo [-h]")
    assert "Demo experiment." in text
    for flag in FLAGS:
        assert flag in text
    assert "smoke: Seconds: 4 steps on 16x16 images, for tests." in text
    assert "cpu: About 10 minutes on 2 CPU cores; prints the PSNR/SSIM table." in text
    assert "runs/demo/<preset>" in text
    assert "Undocumented(" not in text  # a generated dataclass docstring is not shown


def test_preset_summary():
    assert preset_summary(Smoke()) == "Seconds: 4 steps on 16x16 images, for tests."
    assert preset_summary(Undocumented()) == ""


def test_preset_summary_prefers_the_description_field():
    @dataclasses.dataclass(frozen=True)
    class Preset:
        steps: int
        description: str

    fast = Preset(steps=4, description="Seconds, for tests.\nMore text.")
    slow = Preset(steps=50_000, description="Paper: 50k steps on a GPU.")
    assert preset_summary(fast) == "Seconds, for tests."
    assert preset_summary(slow) == "Paper: 50k steps on a GPU."


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--preset", "gpu"], "--preset"),
        (["--steps", "0"], "--steps"),
        (["--batch-size", "x"], "--batch-size"),
        (["--seed", "-1"], "--seed"),
        (["--coordinator", "nohost"], "--coordinator"),
    ],
)
def test_bad_values_error_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_bad_parser_arguments():
    with pytest.raises(ValueError, match="default_preset"):
        experiment_parser("x", presets=PRESETS, default_preset="paper")
    with pytest.raises(ValueError, match="presets"):
        experiment_parser("x", presets={})


def test_setup_creates_default_workdir_and_resolves_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parser().parse_args(["--preset", "smoke"])
    setup = setup_from_args(args)
    assert setup.workdir == Path("runs/demo/smoke") and setup.workdir.is_dir()
    assert args.workdir == setup.workdir
    assert setup.preset is PRESETS["smoke"] and setup.preset_name == "smoke"
    explicit = setup_from_args(parser().parse_args(["--workdir", str(tmp_path / "w")]))
    assert explicit.workdir == tmp_path / "w" and explicit.workdir.is_dir()
    assert explicit.preset is PRESETS["cpu"]


def test_setup_rejects_inconsistent_process_flags():
    with pytest.raises(ValueError, match="--coordinator"):
        setup_from_args(parser().parse_args(["--num-processes", "2"]))
    with pytest.raises(ValueError, match="--process-id"):
        setup_from_args(parser().parse_args(["--process-id", "1"]))


def test_exit_on_training_stop_maps_stops_to_exit_codes(capsys, tmp_path):
    from jaxmri.train.cli import exit_on_training_stop
    from jaxmri.train.loop import NonFiniteLossError, TrainingInterrupted

    with pytest.raises(SystemExit) as info, exit_on_training_stop():
        raise TrainingInterrupted(7, tmp_path / "checkpoints" / "7")
    assert info.value.code == 130
    assert "interrupted at step 7" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info, exit_on_training_stop():
        raise NonFiniteLossError(3, tmp_path / "checkpoints" / "2", {"loss": float("nan")})
    assert info.value.code == 1
    assert "step 3" in capsys.readouterr().err
    with exit_on_training_stop():  # a normal run passes through untouched
        value = 1 + 1
    assert value == 2
