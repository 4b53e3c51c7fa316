"""``python -m experiments.NAME --workdir RUN --predict PATH``: the command of every experiment.

Fast: the one-line errors for a RUN without a trained model. Slow (``pytest -m slow``, a smoke
training per experiment, minutes each on 2 cores): each experiment's trained models predict on
a NIfTI volume and a fastMRI file written here, with every output (``--all-methods``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
from pathlib import Path

import h5py
import jax
import nibabel as nib
import numpy as np
import pytest

import jaxmri
from jaxmri.data import simulate_acquisition, write_fastmri_h5
from jaxmri.train.run_record import read_run_record, write_run_record

EXPERIMENTS = ("invsharp", "dsgan_sr", "ifrnet", "refine", "joint_recsr")


def _main(name):
    return importlib.import_module(f"experiments.{name}").main


def _one_line_error(capsys, call) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_missing_run_is_a_one_line_error(name, tmp_path, capsys):
    err = _one_line_error(capsys, lambda: _main(name)(
        ["--workdir", str(tmp_path / "nowhere"), "--predict", str(tmp_path / "x.nii.gz")]))
    assert "nowhere does not exist" in err


def test_run_without_a_model_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _one_line_error(capsys, lambda: _main("ifrnet")(
        ["--workdir", str(empty), "--predict", str(tmp_path / "x.nii.gz")]))
    assert "holds no trained model (run.json is missing)" in err
    # A run that recorded its flags but never saved a checkpoint.
    write_run_record(empty, argparse.Namespace(experiment="ifrnet", preset="smoke", seed=0))
    nifti = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((40, 40, 3), np.float32), np.eye(4)), nifti)
    err = _one_line_error(capsys, lambda: _main("ifrnet")(
        ["--workdir", str(empty), "--predict", str(nifti)]))
    assert "holds no trained model (no checkpoint in" in err
    err = _one_line_error(capsys, lambda: _main("refine")(
        ["--workdir", str(empty), "--predict", str(nifti)]))
    assert "was trained by experiments.ifrnet, not experiments.refine" in err


def test_training_records_its_preset_and_flags(tmp_path):
    from jaxmri.train.cli import experiment_parser, setup_from_args

    parser = experiment_parser("demo", presets={"cpu": object(), "smoke": object()},
                               name="demo")
    parser.add_argument("--recon-model", type=int, default=1)
    args = parser.parse_args(["--preset", "smoke", "--workdir", str(tmp_path), "--seed", "4",
                              "--recon-model", "2"])
    setup_from_args(args)
    record = read_run_record(tmp_path, experiment="demo")
    assert record["preset"] == "smoke"
    assert record["flags"]["seed"] == 4 and record["flags"]["recon_model"] == 2
    assert "workdir" not in record["flags"] and "_presets" not in record["flags"]
    # ... and what ran it: two runs that differ in their last digits can be told apart.
    environment = record["environment"]
    assert environment["packages"]["jax"] == jax.__version__
    assert environment["packages"]["numpy"] == np.__version__
    assert environment["python"] == platform.python_version()
    assert environment["devices"] == f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    assert environment["cpu_count"] == os.cpu_count()
    assert environment["xla_flags"] == os.environ.get("XLA_FLAGS")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(jaxmri.__file__).parents[1],
                          capture_output=True, text=True).stdout.strip()
    if head:  # a checkout (CI's clone is one); an installed copy records no commit
        assert environment["commit"] in (head, head + "+dirty")
    # A record written before the environment was recorded still reads.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "run.json").write_text(json.dumps(
        {"experiment": "demo", "preset": "smoke", "flags": {"seed": 1}}))
    assert read_run_record(legacy, experiment="demo")["flags"] == {"seed": 1}


def test_run_environment_reads_the_cpu_model_and_vector_extensions(tmp_path):
    from jaxmri.train.run_record import cpu_model_and_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n"
        "flags\t\t: fpu sse2 fma avx2 avx512f avx512_bf16 avx512_vnni\n\n"
        "processor\t: 1\nmodel name\t: Another CPU\nflags\t\t: fpu amx_tile\n")
    assert cpu_model_and_flags(cpuinfo) == (
        "AMD EPYC 9B14", ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"])
    model, flags = cpu_model_and_flags(tmp_path / "missing")
    assert flags is None and model == (platform.processor() or platform.machine())


# --------------------------------------------------------------------------------------------
# Slow: every experiment end to end


def _inputs(tmp_path, size):
    """A NIfTI volume (a few axial slices of the 2 mm MNI template, flipped) and single- and
    multi-coil fastMRI files of ``size + 8`` x ``size`` k-space with recon size ``size``."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    volume = np.asarray(template.get_fdata(), np.float32)[::-1, :, 40:46]
    nifti = tmp_path / "user.nii.gz"
    nib.save(nib.Nifti1Image(volume, template.affine), nifti)
    y, x = np.mgrid[:size + 8, :size]
    images = np.stack([np.exp(-((y - (size + 8) / 2) ** 2 + (x - size / 2 - i) ** 2)
                              / (2 * (size / 4) ** 2)) for i in range(3)]).astype(np.float32)
    files = {}
    for coils in (1, 4):
        acq = simulate_acquisition(images, mask_fn=lambda r, s: (np.ones(s), 1.0), seed=0,
                                   num_coils=coils, snr_db=40.0)
        kspace = acq["kspace"] if coils > 1 else acq["kspace"][:, 0]
        files[coils] = tmp_path / f"coils{coils}.h5"
        write_fastmri_h5(files[coils], kspace, recon_size=(size, size))
    return nifti, volume, template.affine, files


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_trained_experiment_predicts_on_nifti_and_fastmri(name, tmp_path, capsys):
    module = importlib.import_module(f"experiments.{name}")
    run = tmp_path / "run"
    extra = ["--no-ablation"] if name == "invsharp" else []
    module.main(["--preset", "smoke", "--workdir", str(run), "--steps", "1", *extra])
    size = module.PRESETS["smoke"].image_size
    nifti, volume, affine, files = _inputs(tmp_path, size)
    single = name in ("ifrnet", "refine")
    h5_input = files[1 if single else 4]

    results = module.main(["--workdir", str(run), "--predict", str(nifti), "--out",
                           str(tmp_path / "out"), "--all-methods"])
    image = nib.load(tmp_path / "out" / "user.nii.gz")
    assert image.shape == volume.shape and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, affine)
    assert np.all(np.isfinite(image.get_fdata()))
    assert len(results[0]["metrics"]) > 1  # every output evaluated against the volume

    results = module.main(["--workdir", str(run), "--predict", str(h5_input), "--out",
                           str(tmp_path / "out"), "--all-methods"])
    with h5py.File(tmp_path / "out" / h5_input.name) as f, h5py.File(h5_input) as g:
        recon = f["reconstruction"][()]
        assert recon.dtype == np.float32 and recon.shape == (3, size, size)
        assert dict(f.attrs) == dict(g.attrs)
    assert np.all(np.isfinite(recon)) and recon.max() > 0
    written = results[0]["files"]
    assert len(written) == len(results[0]["metrics"]) + 1  # one file per output + the PNG
    assert (tmp_path / "out" / "metrics.md").is_file()
    capsys.readouterr()

    # From Python: the same method, the same file, the same values.
    from experiments.predictors import load_method
    from jaxmri.predict import predict_path

    method = load_method(run)
    # A NIfTI volume is sliced as the training slices were (coronal, or invsharp's axial).
    preset = module.PRESETS["smoke"]
    assert method.orientation == getattr(preset, "orientation", None) or \
        (method.orientation,) == getattr(preset, "orientations", None)
    (again,) = predict_path(method, h5_input, tmp_path / "py", progress=False)
    with h5py.File(tmp_path / "py" / h5_input.name) as f:
        np.testing.assert_allclose(f["reconstruction"][()], recon, rtol=1e-5, atol=1e-7)

    if single:  # a multi-coil file for a single-coil model
        err = _one_line_error(capsys, lambda: module.main(
            ["--workdir", str(run), "--predict", str(files[4]), "--out", str(tmp_path / "o")]))
        assert "trained on single-coil k-space, this file has 4 coils" in err
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((size // 2, size // 2, 3)),
                             np.eye(4)), small)
    err = _one_line_error(capsys, lambda: module.main(
        ["--workdir", str(run), "--predict", str(small), "--out", str(tmp_path / "o")]))
    assert f"smaller than the model's image size {size}x{size}" in err
