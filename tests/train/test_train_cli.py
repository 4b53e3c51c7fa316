"""The experiment command line: defaults, help text, validation, set-up."""

from __future__ import annotations

import dataclasses
import signal
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
    err = capsys.readouterr().err
    # One line, as every user error: no usage block above it.
    assert err.startswith(f"error: argument {flag}") and err.count("\n") == 1, err
    assert err.endswith("(python -m experiments.demo --help lists the flags)\n"), err


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
        raise TrainingInterrupted(7, tmp_path / "checkpoints" / "7", signal.SIGTERM)
    assert info.value.code == 143  # the shell's code for SIGTERM
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM at step 7" in err and "rerun the same command" in err
    with pytest.raises(SystemExit) as info, exit_on_training_stop():
        raise NonFiniteLossError(3, tmp_path / "checkpoints" / "2", {"loss": float("nan")})
    assert info.value.code == 1
    assert "step 3" in capsys.readouterr().err
    with exit_on_training_stop():  # a normal run passes through untouched
        value = 1 + 1
    assert value == 2


def test_user_error_removes_only_the_empty_folders_this_run_created(tmp_path, capsys):
    from jaxmri.errors import UserInputError
    from jaxmri.train.cli import exit_on_user_error

    (tmp_path / "existing").mkdir()
    workdir = tmp_path / "existing" / "new" / "run"
    with pytest.raises(SystemExit) as info, exit_on_user_error():
        setup_from_args(parser().parse_args(["--workdir", str(workdir)]))
        assert workdir.is_dir()
        (workdir / "model" / "checkpoints").mkdir(parents=True)  # what fit makes first
        raise UserInputError("bad data")
    assert info.value.code == 2 and capsys.readouterr().err == "error: bad data\n"
    assert not (tmp_path / "existing" / "new").exists()
    assert (tmp_path / "existing").is_dir()  # there before the run: kept
    # A folder with a file in it (a checkpoint, a table) is never removed.
    with pytest.raises(SystemExit), exit_on_user_error():
        setup_from_args(parser().parse_args(["--workdir", str(workdir)]))
        (workdir / "table.md").write_text("kept")
        raise UserInputError("bad data")
    assert (workdir / "table.md").read_text() == "kept"


def test_check_batch_size_names_the_flag():
    from jaxmri.errors import UserInputError
    from jaxmri.train.cli import check_batch_size

    check_batch_size(None, 3)
    check_batch_size(3, 3)
    with pytest.raises(UserInputError, match="--batch-size 4 is larger than the 3 training"):
        check_batch_size(4, 3)


def test_resume_needs_a_checkpoint_before_anything_is_created(tmp_path):
    from jaxmri.errors import MissingCheckpointError

    with pytest.raises(MissingCheckpointError, match="--resume was given"):
        setup_from_args(parser().parse_args(["--workdir", str(tmp_path / "w"), "--resume"]))
    assert not (tmp_path / "w").exists()
    (tmp_path / "w" / "model" / "checkpoints" / "7").mkdir(parents=True)
    assert setup_from_args(parser().parse_args(["--workdir", str(tmp_path / "w"),
                                                "--resume"])).workdir == tmp_path / "w"


def test_run_experiment_predicts_repeats_or_trains(tmp_path, monkeypatch, capsys):
    import json

    from jaxmri.train.cli import exit_on_user_error, run_experiment
    from jaxmri.train.loop import TrainingInterrupted

    calls = []

    def train(args, setup):
        calls.append(("train", args.seed, setup.preset_name, setup.workdir))
        if args.steps == 13:  # stands for Ctrl-C during fit
            raise TrainingInterrupted(step=5, checkpoint_path=setup.workdir / "ckpt")
        return {"trained": args.seed}

    def predict(args):
        calls.append(("predict", args.predict, args.all_methods))
        return "predicted"

    @exit_on_user_error()
    def main(argv=None):
        parser = experiment_parser("Demo experiment.", presets=PRESETS, name="demo",
                                   predict=True)
        return run_experiment(main, parser, argv, train=train, predict=predict)

    # Training: the workdir is created and records the run before train is called.
    assert main(["--preset", "smoke", "--workdir", str(tmp_path / "run"), "--seed", "2"]) == {
        "trained": 2}
    assert calls == [("train", 2, "smoke", tmp_path / "run")]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["preset"] == "smoke"
    # --predict: the flags exist, predict is called, nothing is trained or created.
    calls.clear()
    assert main(["--workdir", str(tmp_path / "other"), "--predict", "x.nii.gz",
                 "--all-methods"]) == "predicted"
    assert calls == [("predict", "x.nii.gz", True)] and not (tmp_path / "other").exists()
    # --seeds: main again per seed, in <workdir>/seed<k>, then the claims summary.
    calls.clear()
    monkeypatch.setattr("jaxmri.train.cli.run_over_seeds",
                        lambda run, seeds, workdir: [run(s, workdir / f"seed{s}") for s in seeds])
    assert main(["--seeds", "3,4", "--workdir", str(tmp_path / "many")]) == [
        {"trained": 3}, {"trained": 4}]
    assert [c[1] for c in calls] == [3, 4]
    assert [c[3] for c in calls] == [tmp_path / "many" / "seed3", tmp_path / "many" / "seed4"]
    # --combine: the finished runs' tables into --workdir, nothing trained.
    calls.clear()
    monkeypatch.setattr("jaxmri.train.cli.combine_runs",
                        lambda runs, workdir, experiment, flag_defaults: (
                            "combined", runs, workdir, experiment, flag_defaults["steps"],
                            flag_defaults["seed"]))
    assert main(["--combine", "a", "b/seed1", "--workdir", str(tmp_path / "sum")]) == (
        "combined", [Path("a"), Path("b/seed1")], tmp_path / "sum", "demo", None, 0)
    assert calls == [] and not (tmp_path / "sum").exists()
    for bad in (["--combine", "a"], ["--combine", "a", "--workdir", "w", "--seeds", "0,1"]):
        with pytest.raises(SystemExit) as refused:
            main(bad)
        assert refused.value.code == 2
    assert "--combine writes its tables into --workdir DIR (required)" in capsys.readouterr().err
    # A training stopped by Ctrl-C exits with the shell's code for SIGINT.
    with pytest.raises(SystemExit) as stopped:
        main(["--workdir", str(tmp_path / "run"), "--steps", "13"])
    assert stopped.value.code == 130


def test_predict_flags_only_when_asked(tmp_path, capsys):
    from jaxmri.train.cli import run_experiment

    with pytest.raises(SystemExit):
        run_experiment(None, parser(), ["--predict", "x"], train=lambda a, s: None)
    assert "unrecognized arguments: --predict" in capsys.readouterr().err
    args = experiment_parser("Demo.", presets=PRESETS, predict=True).parse_args(
        ["--predict", "x.nii.gz", "--out", "o"])
    assert (args.predict, args.out, args.all_methods) == ("x.nii.gz", Path("o"), False)


def test_help_shows_a_percent_sign_of_a_preset_description(capsys):
    # argparse %-formats help strings: "20 % only" once made --help raise a TypeError.
    @dataclasses.dataclass(frozen=True)
    class Percent:
        description: str = "Table IV at 20 % only (numbers meaningless)."

    with pytest.raises(SystemExit):
        experiment_parser("Demo.", presets={"cpu": Percent()}, name="demo").parse_args(["--help"])
    assert "Table IV at 20 % only" in capsys.readouterr().out


def test_split_preset_gives_one_orientation_to_every_subclass():
    from jaxmri.train.cli import SplitPreset

    @dataclasses.dataclass(frozen=True)
    class Demo(SplitPreset):
        description: str  # no default after the base's defaulted fields: allowed (kw_only)
        steps: int = 3

    demo = Demo(description="d")
    assert (demo.orientation, demo.split_fractions, demo.steps) == (
        "coronal", (0.55, 0.15, 0.3), 3)
    assert sum(demo.split_fractions) == pytest.approx(1.0)
    axial = Demo(description="d", orientation="axial")
    assert axial.orientation == "axial" and axial != demo
    assert dataclasses.replace(demo, steps=5).orientation == "coronal"
    assert hash(demo) == hash(Demo(description="d"))  # presets key caches (refine's programs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.orientation = "axial"


def test_override_preset_replaces_only_the_flags_given():
    from jaxmri.train.cli import override_preset

    @dataclasses.dataclass(frozen=True)
    class Stages:
        seg_steps: int = 10
        gan_steps: int = 20
        batch: int = 4

    preset = Stages()
    assert override_preset(preset, seg_steps=None, batch=None) == preset  # flags not given
    both = override_preset(preset, seg_steps=7, gan_steps=7, batch=None)
    assert (both.seg_steps, both.gan_steps, both.batch) == (7, 7, 4)
    assert preset.seg_steps == 10  # a new preset; the registry's stays as it was
    with pytest.raises(TypeError):
        override_preset(preset, no_such_field=1)


def test_a_later_user_error_leaves_a_finished_run_alone(tmp_path, capsys):
    # Train, then (same process, as from Python) a --predict that is refused: the trained
    # run's folder and run.json stay. Only a run refused before training leaves nothing behind.
    from jaxmri.errors import UserInputError
    from jaxmri.train.cli import exit_on_user_error, run_experiment

    def refuse(args):
        raise UserInputError("this file has 4 coils")

    @exit_on_user_error()
    def main(argv=None):
        parser = experiment_parser("Demo.", presets=PRESETS, name="demo", predict=True)
        return run_experiment(main, parser, argv, train=lambda args, setup: "trained",
                              predict=refuse)

    run = tmp_path / "run"
    assert main(["--workdir", str(run)]) == "trained"
    with pytest.raises(SystemExit) as refused:
        main(["--workdir", str(run), "--predict", "x.h5"])
    assert refused.value.code == 2 and "4 coils" in capsys.readouterr().err
    assert (run / "run.json").is_file()

    def bad_data(args, setup):
        raise UserInputError("data path does not exist")

    @exit_on_user_error()
    def refused_run(argv):
        return run_experiment(refused_run, parser(), argv, train=bad_data)

    with pytest.raises(SystemExit):
        refused_run(["--workdir", str(tmp_path / "new" / "run")])
    assert not (tmp_path / "new").exists()
