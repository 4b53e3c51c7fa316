"""jaxmri.predict: a trained model applied to files (fastMRI HDF5, NIfTI) and its outputs.

The fast tests train a tiny model for two steps with :func:`jaxmri.train.fit` (a real orbax
checkpoint) and wrap it as a :class:`Method`; the experiments' own models are covered by the
slow end-to-end tests in tests/experiments/test_experiment_predict.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import optax
import pytest

from jaxmri.data import simulate_acquisition, write_fastmri_h5
from jaxmri.data._host_fft import host_fft2c, host_ifft2c, host_rss
from jaxmri.physics import equispaced_column_mask
from jaxmri.predict import (
    Method,
    calibration_maps,
    draw_masks,
    measured_acquisition,
    predict_path,
    predict_slices,
    restore_variables,
    _volume_metrics,
)
from jaxmri.train import apply_mean_gradients, create_train_state, fit

SIZE = 16
MASK_FN = functools.partial(equispaced_column_mask, center_fraction=0.25, acceleration=2.0)


class TinyNet(nn.Module):
    """|zero-filled| -> one 3x3 convolution: enough to tell a trained model from another."""

    @nn.compact
    def __call__(self, x):
        return nn.Conv(1, (3, 3))(x[..., None])[..., 0]


def _train_step(state, batch, key):
    del key

    def loss_fn(params):
        return jnp.mean((state.apply_fn({"params": params}, batch["x"]) - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return apply_mean_gradients(state, grads), {"loss": loss}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, trained variables)`` of TinyNet after two steps of fit."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    module = TinyNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE)))
    state = create_train_state(module, optax.adam(1e-2), variables)
    rng = np.random.default_rng(0)
    data = {"x": rng.random((4, SIZE, SIZE), np.float32),
            "y": rng.random((4, SIZE, SIZE), np.float32)}
    state = fit(train_step=_train_step, state=state, batch_fn=lambda step: data, num_steps=2,
                key=jax.random.key(0), workdir=workdir / "model", checkpoint_every=1)
    return workdir, jax.device_get(state.variables())


def make_method(variables, *, single_coil=False, seen_masks=None) -> Method:
    module = TinyNet()

    def apply(variables, b):
        zero_filled = jnp.abs(b["zero_filled"])
        return {"net": module.apply(variables["net"], zero_filled), "zero-filled": zero_filled}

    def acquire_image(images, ids):
        acq = simulate_acquisition(images, mask_fn=MASK_FN, seed=3, slice_index=ids,
                                   num_coils=2, snr_db=None)
        return {k: acq[k] for k in ("kspace", "mask", "maps", "zero_filled")}

    def acquire_kspace(kspace, mask, ids):
        if seen_masks is not None:
            seen_masks.append(mask)
        masks = (np.broadcast_to(mask, (len(kspace), SIZE, SIZE)) if mask is not None
                 else draw_masks(MASK_FN, 3, ids, (SIZE, SIZE)))
        return measured_acquisition(kspace, masks,
                                    calibration_maps(kspace * masks[:, None], masks))

    return Method("tiny", SIZE, ("net", "zero-filled"), {"net": variables}, apply,
                  acquire_image, acquire_kspace, single_coil=single_coil)


def _phantom_kspace(num_slices=5, coils=2, shape=(SIZE, SIZE), seed=0):
    y, x = np.mgrid[:shape[0], :shape[1]]
    images = np.stack([np.exp(-((y - shape[0] / 2 + i) ** 2 + (x - shape[1] / 2) ** 2)
                              / (2 * (shape[1] / 5) ** 2)) for i in range(num_slices)])
    acq = simulate_acquisition(images.astype(np.float32), mask_fn=lambda r, s: (np.ones(s), 1.0),
                               seed=seed, num_coils=coils, snr_db=40.0)
    return acq["kspace"] if coils > 1 else acq["kspace"][:, 0]


# --------------------------------------------------------------------------------------------
# Restoring


def test_restore_variables_returns_the_trained_variables(trained):
    workdir, variables = trained
    template = jax.eval_shape(TinyNet().init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE)))
    restored = restore_variables(workdir / "model", template=template)
    jax.tree.map(np.testing.assert_array_equal, restored, variables)


def test_restore_variables_of_an_earlier_step(trained):
    workdir, variables = trained
    newest = restore_variables(workdir / "model", step=2)
    jax.tree.map(np.testing.assert_array_equal, newest, variables)
    # Step 1 is the state after one update: one Adam step from the initial weights (the data
    # do not change between steps), not the final state.
    initial = TinyNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE)))
    first = restore_variables(workdir / "model", step=1)
    moved = jax.tree.map(lambda a, b, c: (np.abs(a - b).max(), np.abs(c - b).max()),
                         first, initial, variables)
    for to_first, to_final in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple)):
        # Adam's first update moves every weight by about its learning rate (1e-2).
        assert 0.5e-2 < to_first < 1.5e-2 and to_final > 1.5e-2


def test_restore_variables_errors(trained, tmp_path):
    workdir, _ = trained
    with pytest.raises(ValueError, match="holds no trained model"):
        restore_variables(tmp_path)
    with pytest.raises(ValueError, match="no checkpoint of step 5 \\(it has steps 1, 2\\)"):
        restore_variables(workdir / "model", step=5)
    wider = jax.eval_shape(nn.Conv(2, (3, 3)).init, jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="does not hold this preset's model"):
        restore_variables(workdir / "model", template={"params": {"Conv_0": wider["params"]}})


# --------------------------------------------------------------------------------------------
# fastMRI HDF5


def test_h5_prediction_has_fastmri_layout_and_equals_the_model(trained, tmp_path):
    _, variables = trained
    method = make_method(variables)
    kspace = _phantom_kspace() * 1e-3  # file units: not 1
    source = tmp_path / "file_a.h5"
    write_fastmri_h5(source, kspace, acquisition="AXT1", patient_id="p7")
    out = tmp_path / "out"
    (result,) = predict_path(method, source, out, batch_size=3, progress=False)

    with h5py.File(out / "file_a.h5") as f, h5py.File(source) as g:
        recon = f["reconstruction"][()]
        assert recon.dtype == np.float32 and recon.shape == (5, SIZE, SIZE)
        assert dict(f.attrs) == dict(g.attrs)
        gt = g["reconstruction_rss"][()]
    # The model run directly on the same slices: normalised k-space (RSS max 1), the same
    # per-slice masks, one jitted call on all slices, then back to the file's units.
    scale = host_rss(host_ifft2c(kspace), axis=1).max()
    arrays = method.acquire_kspace(kspace / scale, None, np.arange(5))
    direct = TinyNet().apply(variables, jnp.abs(arrays["zero_filled"])) * scale
    np.testing.assert_allclose(recon, direct, rtol=1e-5, atol=1e-6 * scale)
    # The metrics are fastMRI's volume evaluation of that file.
    assert result["metrics"]["net"] == pytest.approx(_volume_metrics(gt, recon))
    assert (out / "file_a.png").stat().st_size > 0
    assert result["slices"] == 5 and result["files"][0] == str(out / "file_a.h5")


def test_h5_folder_and_all_methods(trained, tmp_path):
    _, variables = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.h5", "a.h5"):
        write_fastmri_h5(folder / name, _phantom_kspace(num_slices=3))
    results = predict_path(make_method(variables), folder, tmp_path / "out", all_methods=True,
                           progress=False)
    assert [r["input"] for r in results] == [str(folder / "a.h5"), str(folder / "b.h5")]
    for name in ("a.h5", "b.h5"):
        for where in (tmp_path / "out", tmp_path / "out" / "zero_filled"):
            with h5py.File(where / name) as f:
                assert f["reconstruction"].shape == (3, SIZE, SIZE)
    # The second output is the zero-filled image: exactly |adjoint| times the scale.
    assert results[0]["metrics"].keys() == {"net", "zero-filled"}


def test_h5_with_its_own_mask_keeps_it(trained, tmp_path):
    _, variables = trained
    kspace = _phantom_kspace()
    columns = np.zeros(SIZE, bool)
    columns[[0, 3, 6, 7, 8, 9, 12]] = True
    source = tmp_path / "under.h5"
    write_fastmri_h5(source, kspace * columns)
    with h5py.File(source, "a") as f:
        f.create_dataset("mask", data=columns)
        del f["reconstruction_rss"]
    seen = []
    (result,) = predict_path(make_method(variables, seen_masks=seen), source, tmp_path / "out",
                             progress=False)
    # Same grid (W == s == S): the file's mask reaches the method unchanged, as (S, S).
    np.testing.assert_array_equal(seen[0], np.broadcast_to(columns, (SIZE, SIZE)))
    assert result["metrics"] == {}  # no ground truth in an under-sampled file


def test_h5_errors(trained, tmp_path):
    _, variables = trained
    multi = tmp_path / "multi.h5"
    write_fastmri_h5(multi, _phantom_kspace())
    with pytest.raises(ValueError, match="trained on single-coil k-space, this file has 2 coils"):
        predict_path(make_method(variables, single_coil=True), multi, tmp_path / "o",
                     progress=False)
    small = tmp_path / "small.h5"
    write_fastmri_h5(small, _phantom_kspace(shape=(SIZE, SIZE)), recon_size=(12, 12))
    with pytest.raises(ValueError, match="recon size 12x12 is smaller than the model's image"):
        predict_path(make_method(variables), small, tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="is neither a NIfTI file"):
        text = tmp_path / "notes.txt"
        text.write_text("x")
        predict_path(make_method(variables), text, tmp_path / "o", progress=False)


# --------------------------------------------------------------------------------------------
# NIfTI


def _nifti(tmp_path, shape, affine, seed=0):
    rng = np.random.default_rng(seed)
    volume = (rng.random(shape) * 100 + 20).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path, volume


def _identity_method(size=SIZE):
    """A "model" returning its input image: the geometry round trip must give the volume back."""
    return Method("identity", size, ("image",), {}, lambda v, b: {"image": b["image"]},
                  lambda images, ids: {"image": images})


@pytest.mark.parametrize("orientation", ["sagittal", "coronal", "axial"])
def test_nifti_round_trip_keeps_voxels_shape_affine_and_orientation(orientation, tmp_path):
    # An LPS-ordered, anisotropic volume: canonical reorientation, slicing along the model's
    # axis and back must be exact when the slices need no resizing (in-plane 16 x 16 voxels of
    # equal size, S = 16; 7 thicker voxels along the slicing axis).
    axis = ["sagittal", "coronal", "axial"].index(orientation)
    shape, spacing = [SIZE] * 3, [1.0] * 3
    shape[axis], spacing[axis] = 7, 2.5
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (10, 5, -3)
    path, volume = _nifti(tmp_path, tuple(shape), affine)
    method = dataclasses.replace(_identity_method(), orientation=orientation)
    (result,) = predict_path(method, path, tmp_path / "out", progress=False)
    image = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert image.shape == volume.shape and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, affine)
    np.testing.assert_allclose(image.get_fdata(), volume, rtol=1e-5)
    assert result["metrics"]["image"]["NMSE"] < 1e-10
    assert (tmp_path / "out" / "scan.png").stat().st_size > 0


def test_nifti_prediction_equals_the_model_on_the_acquired_slices(trained, tmp_path):
    _, variables = trained
    method = make_method(variables)
    path, _ = _nifti(tmp_path, (20, 24, 5), np.diag([1.2, 1.0, 3.0, 1.0]))
    (result,) = predict_path(method, path, tmp_path / "out", all_methods=True, progress=False)
    image = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert image.shape == (20, 24, 5)
    np.testing.assert_allclose(image.affine, np.diag([1.2, 1.0, 3.0, 1.0]))
    assert (tmp_path / "out" / "zero_filled" / "scan.nii.gz").is_file()
    assert set(result["metrics"]) == {"net", "zero-filled"}
    # Batched, sharded prediction equals one direct call of the model on the same slices.
    images = np.random.default_rng(1).random((5, SIZE, SIZE), np.float32)
    arrays = method.acquire_image(images, np.arange(5))
    got = predict_slices(method, arrays, batch_size=2, progress=False)
    direct = TinyNet().apply(variables, jnp.abs(arrays["zero_filled"]))
    np.testing.assert_allclose(got["net"], direct, rtol=1e-5, atol=1e-6)


def test_nifti_is_sliced_as_the_model_was_trained(tmp_path):
    # A model trained on coronal slices must see the coronal slices of the user's volume, cut by
    # the training rule (jaxmri.data.slicing), not its axial ones.
    from jaxmri.data import load_nifti_slices

    seen = []

    def acquire_image(images, ids):
        seen.append(images)
        return {"image": images}

    method = Method("coronal", SIZE, ("image",), {}, lambda v, b: {"image": b["image"]},
                    acquire_image, orientation="coronal")
    # LPS voxel order, anisotropic voxels, 24 coronal positions but 12 axial ones; foreground
    # everywhere, so the training box is the whole volume and every position is a slice.
    path, _ = _nifti(tmp_path, (20, 24, 12), np.diag([-1.2, -1.0, 2.0, 1.0]))
    predict_path(method, path, tmp_path / "out", progress=False)
    training = load_nifti_slices(path, image_size=SIZE, split="all", orientations=("coronal",),
                                 min_foreground=0.0)["image"]
    (images,) = seen
    assert images.shape == training.shape == (24, SIZE, SIZE)
    np.testing.assert_allclose(images, training, atol=1e-6)
    with pytest.raises(ValueError, match="orientation must be one of"):
        dataclasses.replace(method, orientation="oblique")


def test_nifti_smaller_than_the_model_is_an_error(tmp_path):
    path, _ = _nifti(tmp_path, (8, 10, 4), np.eye(4))
    with pytest.raises(ValueError, match="smaller than the model's image size 16x16"):
        predict_path(_identity_method(), path, tmp_path / "out", progress=False)


# --------------------------------------------------------------------------------------------
# Pieces


def test_calibration_maps_of_fully_sampled_data_are_the_normalised_coil_images():
    kspace = _phantom_kspace(num_slices=2, coils=3)
    maps = calibration_maps(kspace, np.ones((SIZE, SIZE)))
    coil_images = host_ifft2c(kspace)
    np.testing.assert_allclose(maps, coil_images / host_rss(coil_images, axis=1)[:, None],
                               rtol=1e-4, atol=1e-6)
    # Under-sampled: unit sum of squares and built from the centre columns only (the other
    # sampled columns do not change the maps).
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[:, 6:11] = 1
    with_far = mask.copy()
    with_far[:, [0, 2]] = 1
    low = calibration_maps(kspace * mask, mask)
    np.testing.assert_allclose(np.sum(np.abs(low) ** 2, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(calibration_maps(kspace * with_far, with_far), low, atol=1e-6)


def test_volume_metrics_match_fastmri_evaluate():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    gt = rng.random((3, 20, 24)) * 5
    pred = gt + rng.normal(scale=0.3, size=gt.shape)
    got = _volume_metrics(gt, pred)
    assert got["NMSE"] == pytest.approx(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)
    assert got["PSNR"] == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))
    ssim = np.mean([structural_similarity(g, p, data_range=gt.max()) for g, p in zip(gt, pred)])
    assert got["SSIM"] == pytest.approx(ssim, abs=1e-5)


def test_metrics_json_is_written_by_the_command_helpers(trained, tmp_path):
    # predict_path's results are plain JSON (what predict_command writes to metrics.json).
    _, variables = trained
    source = tmp_path / "c.h5"
    write_fastmri_h5(source, _phantom_kspace(num_slices=2))
    results = predict_path(make_method(variables), source, tmp_path / "out", progress=False)
    assert json.loads(json.dumps(results))[0]["metrics"]["net"]["SSIM"] <= 1.0


def test_equispaced_mask_draws_are_those_of_acquisition_from_kspace():
    from jaxmri.data import acquisition_from_kspace

    kspace = host_fft2c(host_ifft2c(_phantom_kspace(num_slices=3)))
    ids = np.array([4, 9, 1])
    acq = acquisition_from_kspace(kspace, mask_fn=MASK_FN, seed=3, slice_index=ids)
    np.testing.assert_array_equal(draw_masks(MASK_FN, 3, ids, (SIZE, SIZE)), acq["mask"])


def test_complex_nifti_is_refused_by_predict_as_by_the_reader(trained, tmp_path):
    # predict reads NIfTI through jaxmri.data.read_nifti: never the real part of a complex volume.
    nib = pytest.importorskip("nibabel")
    _, variables = trained
    volume = (1j * np.ones((20, 20, 6))).astype(np.complex64)
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    with pytest.raises(ValueError, match="holds complex values"):
        predict_path(make_method(variables), path, tmp_path / "out", progress=False)
