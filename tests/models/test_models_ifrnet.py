"""IFR-Net, IFR-CS and ADMM-Net: values against numpy/scipy/dense references, training, API."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage, signal

from jaxmri.data import load_slices
from jaxmri.metrics import hfen, psnr
from jaxmri.models import ifrnet as ifr
from jaxmri.nn.dct import dct_filters
from jaxmri.physics import fft2c, ifft2c, pseudo_radial_mask
from jaxmri.train import AXIS_NAME, create_train_state, replicate, unreplicate


def _np_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1))


@functools.lru_cache(maxsize=1)
def _real_problem(size=32, rate=0.25):
    """Noise-free single-coil measurements of real MNI slices with a pseudo-radial mask."""
    image = load_slices(None, image_size=size, split="test",
                        orientations=("sagittal",))["image"][:4].astype(np.float32)
    mask, _ = pseudo_radial_mask(0, (size, size), sampling_rate=rate)
    kspace = (mask * _np_fft2c(image)).astype(np.complex64)
    return jnp.asarray(kspace), jnp.asarray(mask), image


# ------------------------------------------------------------------------------------ loss


def test_normalised_error_matches_numpy_real_and_complex():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.complex64):
        pred = rng.normal(size=(3, 5, 6)).astype(dtype)
        target = rng.normal(size=(3, 5, 6)).astype(dtype)
        if dtype == np.complex64:
            pred = pred + 1j * rng.normal(size=pred.shape).astype(np.float32)
            target = target + 1j * rng.normal(size=pred.shape).astype(np.float32)
        expected = np.mean([np.linalg.norm(p - t) / np.linalg.norm(t)
                            for p, t in zip(pred, target, strict=True)])
        np.testing.assert_allclose(ifr.normalised_error(pred, target), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="pred and target"):
        ifr.normalised_error(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    assert np.isfinite(jax.grad(ifr.normalised_error)(jnp.ones((1, 4, 4)),
                                                      jnp.ones((1, 4, 4)))).all()


# -------------------------------------------------------------------- reconstruction module


def test_reconstruction_step_solves_its_quadratic_problem():
    """x = argmin ||M (F x - y)||^2 + rho ||x - x_t||^2, checked with a dense solve."""
    rng = np.random.default_rng(1)
    h, w, rho = 6, 8, 0.3
    eye = np.eye(h * w).reshape(h * w, h, w)
    f = _np_fft2c(eye).reshape(h * w, h * w).T  # column j = F e_j
    mask = (rng.uniform(size=(h, w)) < 0.4).astype(np.float32)
    y = (rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))) * mask
    x_t = rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))
    m = np.diag(mask.ravel())
    lhs = f.conj().T @ m @ f + rho * np.eye(h * w)
    rhs = f.conj().T @ m @ y.ravel() + rho * x_t.ravel()
    expected = np.linalg.solve(lhs, rhs).reshape(h, w)
    args = (jnp.asarray(x_t[None], jnp.complex64), jnp.asarray(y[None], jnp.complex64),
            jnp.asarray(mask))
    out = ifr.reconstruction_step(*args, rho=rho, real_valued=False)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    real = ifr.reconstruction_step(*args, rho=jnp.float32(-rho), real_valued=True)  # |rho|
    np.testing.assert_allclose(real[0], expected.real, atol=1e-5)
    assert real.dtype == jnp.float32


# ------------------------------------------------------------------- feature refinement


def _reference_descriptor(u, v, sigma, size, window):
    """Independent numpy/scipy T map: 'same' zero-padded correlations like MATLAB filter2."""
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    box = np.ones((window, window)) / window**2
    q = signal.correlate2d(u, kernel, mode="same")
    mean = functools.partial(signal.correlate2d, in2=box, mode="same")
    mp, mq = mean(u), mean(q)
    cov = mean(u * q) - mp * mq
    top = 2 * cov + abs(v)
    bottom = mean(u * u) - mp**2 + mean(q * q) - mq**2 + abs(v)
    return 1 - np.abs(top / bottom)


@pytest.mark.parametrize(("sigma", "size", "window"), [(50.0, 51, 5), (2.0, 7, 3)])
def test_feature_descriptor_matches_numpy(sigma, size, window):
    rng = np.random.default_rng(2)
    u = rng.uniform(size=(2, 24, 20))
    t = ifr.feature_descriptor(jnp.asarray(u, jnp.float32), v=-0.008, blur_sigma=sigma,
                               blur_size=size, window=window)
    expected = np.stack([_reference_descriptor(a, -0.008, sigma, size, window) for a in u])
    np.testing.assert_allclose(t, expected, atol=2e-4)
    np.testing.assert_allclose(jax.jit(functools.partial(
        ifr.feature_descriptor, blur_sigma=sigma, blur_size=size, window=window))(
        jnp.asarray(u, jnp.float32), v=0.008), t, atol=1e-5)


def test_feature_refinement_and_descriptor_errors():
    np.testing.assert_allclose(ifr.feature_refinement(jnp.float32(3.0), jnp.float32(1.0),
                                                      jnp.float32(0.25)), 1.5)
    with pytest.raises(ValueError, match="window"):
        ifr.feature_descriptor(jnp.zeros((8, 8)), v=0.1, window=4)
    with pytest.raises(TypeError, match="u"):
        ifr.feature_descriptor(jnp.zeros((8, 8), jnp.complex64), v=0.1)
    with pytest.raises(ValueError, match="blur_sigma"):
        ifr.feature_descriptor(jnp.zeros((8, 8)), v=0.1, blur_sigma=0.0)


# ------------------------------------------------------------------------ IFR-CS pieces


def test_dct_shrinkage_identity_and_numpy_reference():
    rng = np.random.default_rng(3)
    u = rng.normal(size=(2, 12, 10)).astype(np.float32)
    np.testing.assert_allclose(ifr.dct_shrinkage(jnp.asarray(u), threshold=0.0), u, atol=1e-5)
    bank = dct_filters(3, include_dc=True)
    tau = 0.3
    expected = []
    for img in u:
        acc = np.zeros_like(img, dtype=np.float64)
        for c in range(9):
            coef = ndimage.correlate(img.astype(np.float64), bank[:, :, c], mode="wrap")
            if c:
                coef = np.sign(coef) * np.maximum(np.abs(coef) - tau, 0)
            acc += ndimage.correlate(coef, bank[::-1, ::-1, c], mode="wrap")
        expected.append(acc / 9)
    np.testing.assert_allclose(ifr.dct_shrinkage(jnp.asarray(u), threshold=tau), expected,
                               atol=1e-5)


def test_transfer_functions_diagonalise_circular_convolution():
    rng = np.random.default_rng(4)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 2)), jnp.float32)
    x = rng.normal(size=(1, 8, 10)).astype(np.float32)
    gain = ifr.transfer_functions(kernel, (8, 10))
    conv = ifr.circular_conv(jnp.asarray(x)[..., None], kernel)[0]  # (H, W, 2)
    lhs = fft2c(jnp.moveaxis(conv, -1, 0).astype(jnp.complex64))
    np.testing.assert_allclose(lhs, gain * fft2c(jnp.asarray(x[0], jnp.complex64)), atol=1e-4)


def test_ifr_cs_improves_over_zero_filling_on_real_slices():
    kspace, mask, image = _real_problem()
    zero_filled = np.abs(np.asarray(ifft2c(kspace)))
    out = np.abs(np.asarray(ifr.ifr_cs(kspace, mask, num_iters=30, threshold=0.04)))
    assert np.all(np.asarray(psnr(out, image)) > np.asarray(psnr(zero_filled, image)) + 1.0)
    assert np.mean(hfen(out, image)) < np.mean(hfen(zero_filled, image))
    # Slices are independent: one slice alone gives the same result (vmap-like consistency).
    single = ifr.ifr_cs(kspace[1:2], mask, num_iters=30, threshold=0.04)
    np.testing.assert_allclose(np.abs(np.asarray(single[0])), out[1], atol=1e-4)


def test_ifr_cs_stages_and_errors():
    kspace, mask, _ = _real_problem()
    out, maps = ifr.ifr_cs(kspace, mask, num_iters=3, return_stages=True)
    np.testing.assert_allclose(out, ifr.ifr_cs(kspace, mask, num_iters=3), atol=1e-5)
    assert maps.shape == (4, 3, 32, 32) and np.all(np.asarray(maps) <= 1.0)
    with pytest.raises(ValueError, match="num_iters"):
        ifr.ifr_cs(kspace, mask, num_iters=0)
    with pytest.raises(TypeError, match="kspace"):
        ifr.ifr_cs(jnp.abs(kspace), mask)
    with pytest.raises(ValueError, match="mask"):
        ifr.ifr_cs(kspace, mask[:16])
    with pytest.raises(ValueError, match="rho"):
        ifr.ifr_cs(kspace, mask, rho=0.0)


# ----------------------------------------------------------------------------- IFR-Net


def test_ifrnet_initial_filters_and_stage_outputs():
    kspace, mask, _ = _real_problem()
    net = ifr.IFRNet(num_stages=2, num_blocks=2)
    variables = net.init(jax.random.PRNGKey(0), kspace, mask)
    params = variables["params"]
    np.testing.assert_allclose(params["stage0_block0"]["w1"]["kernel"][:, :, 0], dct_filters(3))
    np.testing.assert_allclose(params["stage1_block1"]["w2"]["kernel"][:, :, :, 0],
                               0.125 * dct_filters(3)[::-1, ::-1], atol=1e-7)
    out, stages = net.apply(variables, kspace, mask, return_stages=True)
    # The pieces compose as documented: x^(1) is the stage-1 reconstruction, T = T(u, V).
    x1 = ifr.reconstruction_step(jnp.zeros(kspace.shape), kspace, mask, rho=0.02,
                                 real_valued=True)
    np.testing.assert_allclose(stages["x"][:, 0], x1, atol=1e-5)
    np.testing.assert_allclose(stages["t"][:, 1],
                               ifr.feature_descriptor(stages["u"][:, 1], v=0.008), atol=1e-5)
    x_t = ifr.feature_refinement(stages["x"][:, 1], stages["u"][:, 1], stages["t"][:, 1])
    np.testing.assert_allclose(out, ifr.reconstruction_step(x_t, kspace, mask, rho=0.02,
                                                            real_valued=True), atol=1e-5)
    np.testing.assert_allclose(jax.jit(net.apply)(variables, kspace, mask),
                               net.apply(variables, kspace, mask), atol=1e-5)


def test_ifrnet_weight_sharing_and_random_init():
    kspace, mask, _ = _real_problem()
    shared = ifr.IFRNet(num_stages=3, num_blocks=2, share_weights=True)
    params = shared.init(jax.random.PRNGKey(0), kspace, mask)["params"]
    blocks = [k for k in params if "block" in k]
    assert sorted(blocks) == ["shared_block0", "shared_block1"]
    assert {f"rho{n}" for n in range(4)} | {f"v{n}" for n in range(3)} <= set(params)
    wide = ifr.IFRNet(num_stages=1, num_blocks=1, features=16, filter_init="random")
    kernel = wide.init(jax.random.PRNGKey(0), kspace, mask)["params"]["stage0_block0"]["w1"]
    assert 0.05 < float(jnp.std(kernel["kernel"])) < 0.2
    with pytest.raises(ValueError, match="features=16"):
        ifr.IFRNet(num_stages=1, features=16).init(jax.random.PRNGKey(0), kspace, mask)


def _train(module, kspace, mask, target, steps=8, lr=3e-3):
    """A few pmapped steps of make_train_step on every local device; returns the losses."""
    variables = module.init(jax.random.PRNGKey(0), kspace, mask)
    state = replicate(create_train_state(module, optax.adam(lr), variables))
    step = jax.pmap(ifr.make_train_step(lambda v, b: module.apply(v, b["kspace"], b["mask"])),
                    axis_name=AXIS_NAME)
    ndev = jax.local_device_count()  # 2 in the test suite; the batch of 4 splits evenly
    batch = jax.tree.map(lambda a: jnp.asarray(a).reshape(ndev, -1, *a.shape[1:]),
                         {"kspace": kspace, "mask": jnp.broadcast_to(mask, kspace.shape),
                          "target": target})
    keys = jax.random.split(jax.random.PRNGKey(1), ndev)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch, keys)
        losses.append(float(metrics["loss"][0]))
    return losses, unreplicate(state)


def test_tiny_ifrnet_train_step_lowers_the_loss_real_and_complex():
    kspace, mask, image = _real_problem()
    losses, _ = _train(ifr.IFRNet(num_stages=2, num_blocks=1), kspace, mask,
                       jnp.asarray(image))
    assert losses[-1] < 0.95 * losses[0]
    phase = jnp.exp(1j * jnp.linspace(0, 1, 32))[None, None, :]
    target_c = (jnp.asarray(image) * phase).astype(jnp.complex64)
    kspace_c = fft2c(target_c) * mask
    losses_c, _ = _train(ifr.IFRNet(num_stages=2, num_blocks=1, real_valued=False), kspace_c,
                         mask, target_c)
    assert losses_c[-1] < 0.95 * losses_c[0]


def test_admm_net_first_layer_closed_form_and_training():
    kspace, mask, image = _real_problem()
    # With z = beta = 0 the first X layer (alone: zero stages) is
    # F^-1(M y / (M + sum_l rho_l |H_l|^2)).
    first = ifr.ADMMNet(num_stages=0)
    variables = first.init(jax.random.PRNGKey(0), kspace, mask)
    gain = ifr.transfer_functions(variables["params"]["recon_filters0"], (32, 32))
    denom = mask + 0.2 * jnp.sum(jnp.abs(gain) ** 2, axis=0)
    x1 = jnp.real(ifft2c(mask * kspace / denom))
    np.testing.assert_allclose(first.apply(variables, kspace, mask), x1, atol=1e-5)
    net = ifr.ADMMNet(num_stages=2)
    variables = net.init(jax.random.PRNGKey(0), kspace, mask)
    losses, _ = _train(net, kspace, mask, jnp.asarray(image))
    assert losses[-1] < 0.95 * losses[0]
    with pytest.raises(TypeError, match="kspace"):
        net.apply(variables, jnp.abs(kspace), mask)
