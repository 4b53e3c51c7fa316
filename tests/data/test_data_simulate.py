"""Simulated acquisition: determinism per slice, masking, SNR, zero-filled image, k-space path."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from _data_helpers import ellipsoid_volume, np_fft2c, np_ifft2c, random_kspace

from jaxmri.data._host_fft import host_fft2c, host_ifft2c, host_rss, host_sense_adjoint
from jaxmri.data.simulate import (
    acquire_slices,
    acquisition_from_kspace,
    simulate_acquisition,
    slice_rng,
    smooth_phase,
)
from jaxmri.physics.fft import fft2c, ifft2c
from jaxmri.physics.masks import random_column_mask
from jaxmri.physics.sense import rss, sense_adjoint, simulate_coil_maps

MASK = functools.partial(random_column_mask, center_fraction=0.125, acceleration=4)


def full_mask(rng, shape):
    return np.ones(shape, np.float32), 1.0


@pytest.fixture(scope="module")
def images():
    vol = ellipsoid_volume(shape=(24, 32, 32), radii=(11, 14, 14))
    return np.stack([vol[i] for i in (6, 10, 12, 14, 18)])  # (5, 32, 32) in [0, 1]


def test_host_fft_matches_physics(rng):
    x = (rng.standard_normal((2, 3, 12, 9)) + 1j * rng.standard_normal((2, 3, 12, 9)))
    x = x.astype(np.complex64)
    maps = x[0] / np.sqrt((np.abs(x[0]) ** 2).sum(0))
    np.testing.assert_allclose(host_fft2c(x), np.asarray(fft2c(jnp.asarray(x))), atol=1e-5)
    np.testing.assert_allclose(host_ifft2c(x), np.asarray(ifft2c(jnp.asarray(x))), atol=1e-5)
    np.testing.assert_allclose(host_rss(x, axis=1), np.asarray(rss(x, axis=1)), rtol=1e-5)
    np.testing.assert_allclose(host_sense_adjoint(x, maps), np.asarray(sense_adjoint(x, maps)),
                               atol=1e-5)


def test_deterministic_per_slice_whatever_the_batch(images):
    kw = dict(mask_fn=MASK, seed=7, num_coils=4, snr_db=20.0)
    full = simulate_acquisition(images, slice_index=np.arange(5), **kw)
    part = simulate_acquisition(images[[3, 1]], slice_index=np.array([3, 1]), **kw)
    for key in ("target", "kspace", "mask", "maps", "zero_filled", "acceleration", "noise_std"):
        np.testing.assert_array_equal(part[key][0], full[key][3], err_msg=key)
        np.testing.assert_array_equal(part[key][1], full[key][1], err_msg=key)
    # Slice by slice (batches of one) gives the same bits as the batched transforms.
    for i in range(5):
        one = simulate_acquisition(images[i:i + 1], slice_index=np.array([i]), **kw)
        for key in ("target", "kspace", "mask", "zero_filled"):
            np.testing.assert_array_equal(one[key][0], full[key][i], err_msg=key)
    again = simulate_acquisition(images, slice_index=np.arange(5), **kw)
    np.testing.assert_array_equal(again["kspace"], full["kspace"])
    other_seed = simulate_acquisition(images, slice_index=np.arange(5), **{**kw, "seed": 8})
    assert not np.allclose(other_seed["kspace"], full["kspace"])
    # Same image under another slice index gets another phase, noise and mask.
    shifted = simulate_acquisition(images, slice_index=np.arange(5) + 100, **kw)
    assert not np.allclose(shifted["target"], full["target"])


def test_target_is_image_with_smooth_phase(images):
    out = simulate_acquisition(images, mask_fn=MASK, seed=3, num_coils=2, max_phase=1.0)
    np.testing.assert_allclose(np.abs(out["target"]), images, atol=1e-6)
    for i in range(len(images)):
        rng = slice_rng(3, i)  # a slice's stream: its mask, then its phase
        MASK(rng, (32, 32))
        phi = smooth_phase(rng, (32, 32), max_phase=1.0)
        inside = images[i] > 0.1
        np.testing.assert_allclose(np.angle(out["target"][i])[inside], phi[inside], atol=1e-5)
    # Smooth: the phase map's spectrum lies within the cut-off disc (radius 2 cycles / FOV).
    phi = smooth_phase(np.random.default_rng(0), (32, 32), max_phase=np.pi, phase_cutoff=2.0)
    assert np.abs(phi).max() == pytest.approx(np.pi, rel=1e-6)
    spectrum = np.abs(np_fft2c(phi.astype(np.complex64))) ** 2
    ky, kx = np.meshgrid(np.arange(32) - 16, np.arange(32) - 16, indexing="ij")
    assert spectrum[ky**2 + kx**2 > 4].sum() < 1e-8 * spectrum.sum()


@pytest.mark.parametrize("shape, cutoff", [((32, 32), 2.0), ((17, 24), 3.5), ((48, 40), 0.0)])
def test_smooth_phase_is_the_inverse_fft_of_the_disc_coefficients(shape, cutoff):
    """The plane-wave sum equals numpy's centred inverse FFT of the grid holding the drawn disc
    coefficients (real parts first, in row-major order) and zero elsewhere."""
    ky = np.arange(shape[0]) - shape[0] // 2
    kx = np.arange(shape[1]) - shape[1] // 2
    disc = ky[:, None] ** 2 + kx[None, :] ** 2 <= cutoff**2
    real, imag = np.random.default_rng(4).standard_normal((2, disc.sum()))
    grid = np.zeros(shape, np.complex128)
    grid[disc] = real + 1j * imag
    field = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(grid))).real
    expected = 0.5 * field / np.abs(field).max()
    phi = smooth_phase(np.random.default_rng(4), shape, max_phase=0.5, phase_cutoff=cutoff)
    np.testing.assert_allclose(phi, expected, atol=1e-6)


def test_mask_applied_and_zero_filled_is_the_adjoint(images):
    out = simulate_acquisition(images, mask_fn=MASK, seed=1, num_coils=4, snr_db=25.0)
    mask = out["mask"][:, None]
    assert np.all(out["kspace"][np.broadcast_to(mask == 0, out["kspace"].shape)] == 0)
    assert np.all(np.abs(out["kspace"][np.broadcast_to(mask == 1, out["kspace"].shape)]) > 0)
    expected = np.sum(np.conj(out["maps"]) * np_ifft2c(out["kspace"]), axis=1)
    np.testing.assert_allclose(out["zero_filled"], expected, atol=1e-5)
    np.testing.assert_allclose(out["acceleration"], 32 * 32 / out["mask"].sum(axis=(1, 2)),
                               rtol=1e-6)
    assert len({m.tobytes() for m in out["mask"]}) > 1  # fresh mask per slice
    fixed = simulate_acquisition(images, mask_fn=MASK, seed=1, num_coils=4, fixed_mask=True)
    assert len({m.tobytes() for m in fixed["mask"]}) == 1


def test_noise_matches_the_snr_definition(images):
    snr_db = 10.0
    out = simulate_acquisition(images, mask_fn=full_mask, seed=5, num_coils=4, snr_db=snr_db)
    coil_images = out["maps"] * out["target"][:, None]
    signal_power = np.mean(np.abs(coil_images) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(out["noise_std"] ** 2, signal_power / 10 ** (snr_db / 10),
                               rtol=1e-5)
    noise = out["kspace"] - np_fft2c(coil_images)
    measured_snr = 10 * np.log10(np.mean(np.abs(np_fft2c(coil_images)) ** 2, axis=(1, 2, 3))
                                 / np.mean(np.abs(noise) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(measured_snr, snr_db, atol=0.3)  # 4096 samples per slice
    # Circularly symmetric: real and imaginary parts carry half the variance each.
    ratio = np.var(noise.real) / np.var(noise.imag)
    assert 0.9 < ratio < 1.1 and abs(np.mean(noise)) < 0.05 * np.std(noise)


def test_undersampled_noise_has_the_snr_variance_where_the_mask_keeps(images):
    """Noise is drawn only at kept samples; there it has variance sigma^2 (unbiased, circular),
    and the rest stays exactly 0."""
    out = simulate_acquisition(images, mask_fn=MASK, seed=6, num_coils=4, snr_db=10.0)
    coil_images = out["maps"] * out["target"][:, None]
    kept = np.broadcast_to(out["mask"][:, None] == 1, out["kspace"].shape)
    noise = (out["kspace"] - np_fft2c(coil_images))[kept]
    sigma2 = np.repeat(out["noise_std"] ** 2, kept.reshape(5, -1).sum(axis=1))
    assert len(noise) > 5000
    assert np.mean(np.abs(noise) ** 2 / sigma2) == pytest.approx(1.0, abs=0.05)
    assert np.mean(noise.real**2 / sigma2) == pytest.approx(0.5, abs=0.03)
    assert abs(np.mean(noise / np.sqrt(sigma2))) < 0.03
    assert np.all(out["kspace"][~kept] == 0)


def test_noisy_reference_is_the_fully_sampled_scan_whose_lines_are_measured(images):
    """noisy_reference: the target is x + S^H F^-1 n (per-pixel noise variance sigma^2), the
    measured lines carry that same noise, and without noise nothing changes."""
    clean = simulate_acquisition(images, mask_fn=MASK, seed=7, num_coils=4, snr_db=None)
    same = simulate_acquisition(images, mask_fn=MASK, seed=7, num_coils=4, snr_db=None,
                                noisy_reference=True)
    for key in ("target", "kspace", "mask", "maps"):
        np.testing.assert_allclose(same[key], clean[key], atol=1e-5)
    noisy = simulate_acquisition(images, mask_fn=MASK, seed=7, num_coils=4, snr_db=10.0,
                                 noisy_reference=True)
    np.testing.assert_array_equal(noisy["mask"], clean["mask"])  # masks are drawn first
    sigma2 = noisy["noise_std"][:, None, None] ** 2
    reference_noise = noisy["target"] - clean["target"]
    assert np.mean(np.abs(reference_noise) ** 2 / sigma2) == pytest.approx(1.0, abs=0.06)
    kept = np.broadcast_to(noisy["mask"][:, None] == 1, noisy["kspace"].shape)
    assert np.all(noisy["kspace"][~kept] == 0)
    line_noise = (noisy["kspace"] - clean["kspace"])[kept]
    assert np.mean(np.abs(line_noise) ** 2) / np.mean(sigma2) == pytest.approx(1.0, abs=0.06)
    # One coil (a unit-magnitude map): the measured lines are exactly the reference's k-space.
    single = simulate_acquisition(images, mask_fn=MASK, seed=7, num_coils=1, snr_db=10.0,
                                  noisy_reference=True)
    np.testing.assert_allclose(single["kspace"][:, 0],
                               single["mask"] * np_fft2c(single["maps"][:, 0] * single["target"]),
                               atol=1e-4)
    # The default keeps the noiseless image as the target.
    default = simulate_acquisition(images, mask_fn=MASK, seed=7, num_coils=4, snr_db=10.0)
    np.testing.assert_allclose(default["target"], clean["target"], atol=1e-6)


@pytest.mark.parametrize("num_coils", [1, 3])
def test_full_mask_without_noise_recovers_target(images, num_coils):
    out = simulate_acquisition(images, mask_fn=full_mask, seed=0, num_coils=num_coils,
                               snr_db=None)
    assert out["kspace"].shape == (5, num_coils, 32, 32)
    np.testing.assert_allclose(np.sum(np.abs(out["maps"]) ** 2, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["zero_filled"], out["target"], atol=1e-5)
    assert np.all(out["noise_std"] == 0)


def test_coil_radius_sets_the_simulated_maps(images):
    from jaxmri.physics.sense import simulate_coil_maps

    near = simulate_acquisition(images, mask_fn=full_mask, seed=0, num_coils=4, snr_db=None,
                                coil_radius=1.0)
    np.testing.assert_allclose(near["maps"][0], simulate_coil_maps((32, 32), 4, radius=1.0),
                               atol=1e-6)
    far = simulate_acquisition(images, mask_fn=full_mask, seed=0, num_coils=4, snr_db=None)
    np.testing.assert_allclose(far["maps"][0], simulate_coil_maps((32, 32), 4, radius=1.5),
                               atol=1e-6)
    # Closer coils: each coil's sensitivity varies more over the image (better SENSE coverage).
    spread = [np.ptp(np.abs(out["maps"][0]), axis=(-2, -1)).mean() for out in (near, far)]
    assert spread[0] > spread[1]


def test_from_kspace_uses_rss_maps_and_the_same_masks(rng):
    kspace = random_kspace(rng, 3, 4, 16, 16)
    out = acquisition_from_kspace(kspace, mask_fn=MASK, seed=9)
    coil_images = np_ifft2c(kspace)
    rss_image = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1))
    np.testing.assert_allclose(out["target"].real, rss_image, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["target"].imag, 0, atol=1e-5)
    np.testing.assert_allclose(np.sum(np.abs(out["maps"]) ** 2, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["kspace"], kspace * out["mask"][:, None])
    expected = np.sum(np.conj(out["maps"]) * np_ifft2c(out["kspace"]), axis=1)
    np.testing.assert_allclose(out["zero_filled"], expected, atol=1e-5)
    simulated = simulate_acquisition(np.abs(coil_images[:, 0]), mask_fn=MASK, seed=9)
    np.testing.assert_array_equal(out["mask"], simulated["mask"])
    given = acquisition_from_kspace(kspace, mask_fn=full_mask, seed=9,
                                    maps=np.ones((4, 16, 16), np.complex64) / 2)
    np.testing.assert_allclose(given["target"], coil_images.sum(axis=1) / 2, atol=1e-5)


def test_acquire_slices_dispatches_and_passes_labels(images, rng):
    slices = {"image": images, "labels": (images > 0.5).astype(np.uint8)}
    out = acquire_slices(slices, np.array([4, 0]), mask_fn=MASK, seed=2, num_coils=2)
    direct = simulate_acquisition(images[[4, 0]], slice_index=np.array([4, 0]), mask_fn=MASK,
                                  seed=2, num_coils=2)
    np.testing.assert_array_equal(out["kspace"], direct["kspace"])
    np.testing.assert_array_equal(out["labels"], slices["labels"][[4, 0]])
    kspace = random_kspace(rng, 3, 2, 16, 16)
    measured = acquire_slices({"image": np.zeros((3, 16, 16)), "kspace": kspace}, np.array([2]),
                              mask_fn=MASK, seed=2)
    np.testing.assert_array_equal(measured["kspace"][0], kspace[2] * measured["mask"][0])


def test_acquire_slices_real_valued_images_with_max_phase_zero(images):
    """``max_phase=0`` reaches the simulation: the target is the magnitude image itself (no
    phase), while the default draws a phase of up to pi."""
    slices = {"image": images}
    real = acquire_slices(slices, np.array([1, 3]), mask_fn=full_mask, seed=5, num_coils=1,
                          snr_db=None, max_phase=0.0)
    np.testing.assert_array_equal(real["target"].imag, 0.0)
    np.testing.assert_allclose(real["target"].real, images[[1, 3]], atol=1e-6)
    np.testing.assert_allclose(real["zero_filled"], real["target"], atol=1e-5)
    phased = acquire_slices(slices, np.array([1, 3]), mask_fn=full_mask, seed=5, num_coils=1,
                            snr_db=None)
    assert np.abs(phased["target"].imag).max() > 0.1
    np.testing.assert_allclose(np.abs(phased["target"]), images[[1, 3]], atol=1e-6)


def test_coil_maps_are_reused_but_never_shared_writable(images):
    """The coil maps are computed once per (shape, coils); a caller editing its result cannot
    change the next batch's."""
    first = simulate_acquisition(images, mask_fn=MASK, seed=0, num_coils=3)
    first["maps"][:] = 0
    second = simulate_acquisition(images, mask_fn=MASK, seed=0, num_coils=3)
    expected = simulate_coil_maps(images.shape[1:], 3)
    for maps in second["maps"]:
        np.testing.assert_array_equal(maps, expected)
    assert second["maps"].flags.writeable


@pytest.mark.parametrize(
    "args, error, match",
    [
        (dict(images=np.zeros((32, 32))), ValueError, "images must have ndim == 3"),
        (dict(images=np.zeros((2, 8, 8), np.complex64)), TypeError, "images must be real"),
        (dict(images=np.full((2, 8, 8), np.nan)), ValueError, "images contains"),
        (dict(slice_index=np.array([0])), ValueError, "slice_index must be 2"),
        (dict(slice_index=np.array([0.0, 1.0])), ValueError, "slice_index must be"),
        (dict(seed=-1), ValueError, "seed must be"),
        (dict(mask_fn=lambda rng, shape: (np.ones((4, 4)), 1.0)), ValueError, "mask_fn must"),
        (dict(num_coils=0), ValueError, "num_coils"),
        (dict(num_coils=2.5), ValueError, "num_coils"),
    ],
)
def test_simulate_bad_input(args, error, match):
    kw = dict(images=np.ones((2, 8, 8), np.float32), mask_fn=full_mask, seed=0)
    kw.update(args)
    with pytest.raises(error, match=match):
        simulate_acquisition(kw.pop("images"), **kw)


def test_from_kspace_bad_input():
    with pytest.raises(TypeError, match="kspace must be complex"):
        acquisition_from_kspace(np.zeros((1, 2, 8, 8)), mask_fn=full_mask, seed=0)
    with pytest.raises(ValueError, match="kspace must have ndim == 4"):
        acquisition_from_kspace(np.zeros((2, 8, 8), np.complex64), mask_fn=full_mask, seed=0)
