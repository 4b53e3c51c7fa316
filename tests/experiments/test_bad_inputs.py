"""Bad input through the five entry modules: one line ``error: ...`` on stderr, exit code 2.

Each case builds its bad input in a fresh folder and calls the module's ``main(argv)`` in
process with ``--preset smoke`` (the same code path as ``python -m experiments.NAME``; one case
runs the real subprocess). The workdir is a fresh path, which must not exist afterwards: nothing
half-written is left behind. A bug (an unexpected exception on valid input) must keep its
traceback, which the last tests check.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from jaxmri.data.fastmri import write_fastmri_h5
from jaxmri.errors import MissingCheckpointError, UserInputError
from jaxmri.train.cli import exit_on_user_error

ROOT = Path(__file__).resolve().parents[2]


def _volume(n: int = 40) -> np.ndarray:
    """A bright ellipsoid in a dark cube (a volume the readers accept)."""
    grid = np.mgrid[:n, :n, :n] / (n - 1) - 0.5
    return ((grid**2 / np.array([0.16, 0.12, 0.1])[:, None, None, None] ** 1).sum(0) < 1
            ).astype(np.float32)


def _nifti(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), path)
    return str(path)


def _kspace(slices: int = 4, size: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.random((slices, size, size)) + 0.1
    return np.fft.fftshift(np.fft.fft2(images, norm="ortho"), axes=(-2, -1)).astype(np.complex64)


def _h5(path: Path, **datasets) -> str:
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    return str(path)


def _truncated(path: Path, source: Path) -> str:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return str(path)


def _text(path: Path) -> str:
    path.write_text("not an image\n")
    return str(path)


# Case: (module, extra argv given the case folder, what the error line must say). The data
# builders take the case folder and return the argv after --preset/--workdir.
def _data(build: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    return lambda d: ["--data", build(d)]


def _good_h5(d: Path) -> Path:
    path = d / "good.h5"
    write_fastmri_h5(path, _kspace())
    return path


CASES = {
    "missing nifti": ("ifrnet", _data(lambda d: str(d / "missing.nii.gz")), "does not exist"),
    "missing folder": ("dsgan_sr", _data(lambda d: str(d / "no_such_folder")),
                       "does not exist"),
    "empty folder": ("joint_recsr", _data(lambda d: (d / "empty").mkdir() or str(d / "empty")),
                     "holds no fastMRI files"),
    "text file": ("invsharp", _data(lambda d: _text(d / "notes.txt")),
                  "neither a NIfTI file"),
    "text file named .nii.gz": ("refine", _data(lambda d: _text(d / "fake.nii.gz")),
                                "not a readable NIfTI file"),
    "text file named .h5": ("ifrnet", _data(lambda d: _text(d / "fake.h5")),
                            "not an HDF5 file"),
    "truncated nifti": ("dsgan_sr", _data(lambda d: _truncated(
        d / "cut.nii.gz", Path(_nifti(d / "whole.nii.gz", _volume())))),
        "not a readable NIfTI file"),
    "nifti with NaN": ("joint_recsr", _data(lambda d: _nifti(
        d / "nan.nii.gz", np.where(_volume() > 0, np.nan, 0).astype(np.float32))),
        "non-finite voxels"),
    "2-D nifti": ("invsharp", _data(lambda d: _nifti(d / "flat.nii.gz", _volume()[0])),
                  "must hold a 3-D volume"),
    "4-D nifti": ("refine", _data(lambda d: _nifti(
        d / "series.nii.gz", np.stack([_volume(), _volume()], -1))), "4-D with 2 volumes"),
    "all-zero volume": ("ifrnet", _data(lambda d: _nifti(
        d / "zeros.nii.gz", np.zeros((40, 40, 40), np.float32))), "volume is constant"),
    "volume smaller than the image size": ("dsgan_sr", _data(lambda d: _nifti(
        d / "tiny.nii.gz", _volume(8))), "is empty for a volume of shape (8, 8, 8)"),
    "complex nifti": ("ifrnet", _data(lambda d: _nifti(
        d / "complex.nii.gz", (1j * _volume()).astype(np.complex64))),
        "holds complex values"),
    "hdf5 without kspace": ("joint_recsr", _data(lambda d: _h5(
        d / "nokspace.h5", reconstruction_esc=np.ones((2, 8, 8), np.float32))),
        "has no 'kspace' dataset"),
    "truncated hdf5": ("invsharp", _data(lambda d: _truncated(d / "cut.h5", _good_h5(d))),
                       "cannot be read"),
    "kspace of wrong dtype": ("ifrnet", _data(lambda d: _h5(
        d / "real.h5", kspace=np.ones((2, 8, 8), np.float32))), "must be complex"),
    "kspace of wrong rank": ("dsgan_sr", _data(lambda d: _h5(
        d / "flat.h5", kspace=np.ones((8, 8), np.complex64))), "must be complex (slices"),
    "NaN kspace": ("joint_recsr", _data(lambda d: _h5(
        d / "nan.h5", kspace=np.full((2, 8, 8), np.nan, np.complex64))), "non-finite values"),
    "all-zero kspace": ("invsharp", _data(lambda d: _h5(
        d / "zeros.h5", kspace=np.zeros((4, 24, 24), np.complex64))),
        "zeros.h5' is all zeros"),
    "truncated file in a folder": ("ifrnet", _data(lambda d: (
        (d / "set").mkdir(), write_fastmri_h5(d / "set" / "a.h5", _kspace()),
        _truncated(d / "set" / "b.h5", d / "set" / "a.h5"), str(d / "set"))[-1]),
        "b.h5' cannot be read"),
    "fastMRI data for the segmentation experiment": ("refine", _data(
        lambda d: str(_good_h5(d))), "needs segmentation labels"),
    "batch size larger than the preset's training set": (
        "ifrnet", lambda d: ["--batch-size", "64"],
        "--batch-size 64 is larger than the 8 training slices of the preset"),
    "batch size larger than the loaded training set": (
        "refine", lambda d: ["--batch-size", "100000"],
        "--batch-size 100000 is larger than the"),
    "resume without a checkpoint": ("joint_recsr", lambda d: ["--resume"],
                                    "--resume was given but"),
    "several processes without a coordinator": ("joint_recsr",
                                                lambda d: ["--num-processes", "2"],
                                                "--coordinator HOST:PORT is required"),
    "workdir below a file": ("refine", lambda d: ["--workdir", _text(d / "file") + "/run"],
                             "lies below the file"),
    "rows without Proposed": ("joint_recsr", lambda d: ["--rows", "Recon+SR"],
                              "must include Proposed"),
    "workdir is a file": ("ifrnet", lambda d: ["--workdir", _text(d / "file")], "is a file"),
}


def run_main(module: str, argv: list[str], capsys) -> tuple[int | str | None, str]:
    main = importlib.import_module(f"experiments.{module}").main
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["--preset", "smoke", *argv])
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_exit_code_2(case, tmp_path, capsys):
    module, make_argv, expected = CASES[case]
    workdir = tmp_path / "run"
    argv = ["--workdir", str(workdir), *make_argv(tmp_path)]
    code, err = run_main(module, argv, capsys)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert not workdir.exists(), f"{case}: left {sorted(workdir.rglob('*'))}"


def test_resume_without_checkpoint_names_the_flag(tmp_path, capsys):
    workdir = tmp_path / "run"
    code, err = run_main("joint_recsr", ["--workdir", str(workdir), "--resume"], capsys)
    assert code == 2
    assert err == (f"error: --resume was given but {workdir} holds no readable checkpoint; run "
                   "without --resume to start training (or pass the --workdir of the run to "
                   "continue)\n")
    # The same when fit finds no checkpoint for one of the models (the API names resume=True).
    with pytest.raises(SystemExit) as info, exit_on_user_error():
        raise MissingCheckpointError("resume=True but there is no checkpoint in /x/checkpoints",
                                     Path("/x/checkpoints"))
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: --resume was given but /x/checkpoints holds no readable checkpoint; run without")


def test_unwritable_workdir(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write into any folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = run_main("ifrnet", ["--workdir", str(locked / "run")], capsys)
    assert code == 2 and err.startswith("error: --workdir") and "not writable" in err


def test_the_real_command_prints_one_line(tmp_path):
    """The subprocess a user runs: ``python -m experiments.ifrnet --data <missing>``."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.ifrnet", "--preset", "smoke", "--workdir",
         str(tmp_path / "run"), "--data", str(tmp_path / "missing.nii.gz")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: data path {str(tmp_path / 'missing.nii.gz')!r} does not exist\n"
    assert not (tmp_path / "run").exists()


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """An unexpected exception on valid input is not turned into a one-line user error."""
    from experiments import ifrnet

    def broken(*args, **kwargs):
        raise KeyError("a bug inside jaxmri")

    monkeypatch.setattr(ifrnet, "load_splits", broken)
    with pytest.raises(KeyError, match="a bug inside jaxmri"):
        ifrnet.main(["--preset", "smoke", "--workdir", str(tmp_path / "run")])


def test_handler_passes_other_errors_and_flattens_messages(capsys):
    with pytest.raises(ValueError, match="plain"), exit_on_user_error():
        raise ValueError("plain ValueError: a bug, not bad input")
    with pytest.raises(SystemExit) as info, exit_on_user_error():
        raise UserInputError("first line\n  second line")
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: first line second line\n"


_LARGE_BUFFER_PROGRAM = """
import experiments  # noqa: F401  (what `python -m experiments.NAME` imports first)
import jax, jax.numpy as jnp
x = jnp.ones((3000, 3000))
print(float(jax.jit(lambda a: (jnp.sin(a) @ jnp.cos(a)).sum())(x)))
"""


@pytest.mark.parametrize("user_level, warnings_shown", [(None, False), ("0", True)])
def test_entry_modules_hide_xla_heap_warnings_unless_the_user_asks(user_level, warnings_shown):
    """A 36 MB buffer under a 32 MiB heap cap makes XLA warn; the experiments hide that noise."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_multiheap_size_constraint_per_heap=33554432")
    if user_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = user_level
    proc = subprocess.run([sys.executable, "-c", _LARGE_BUFFER_PROGRAM], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ("larger than the per-heap size limit" in proc.stderr) == warnings_shown, proc.stderr
