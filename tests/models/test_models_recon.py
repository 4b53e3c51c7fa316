"""The shared reconstruction networks: data consistency holds at the output of the cascade."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmri.models.recon import DCCascade, MoDL, UNetRecon
from jaxmri.physics import equispaced_column_mask, fft2c, sense_adjoint, simulate_coil_maps


def _problem(num_coils, size=16, seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.normal(size=(2, size, size)) + 1j * rng.normal(size=(2, size, size))).astype(
        np.complex64)
    maps = np.broadcast_to(simulate_coil_maps((size, size), num_coils),
                           (2, num_coils, size, size)).astype(np.complex64)
    mask, _ = equispaced_column_mask(rng, (size, size), center_fraction=0.125, acceleration=4)
    kspace = np.asarray(fft2c(maps * image[:, None])) * mask
    zero_filled = np.asarray(sense_adjoint(kspace, maps))
    return image, kspace, mask, maps, zero_filled


def test_cascade_output_keeps_the_measured_single_coil_kspace():
    image, kspace, mask, maps, zf = _problem(num_coils=1)
    net = DCCascade(num_cascades=2, convs_per_cascade=3, features=8)
    params = net.init(jax.random.key(0), zf, kspace, mask, maps)
    out = np.asarray(net.apply(params, zf, kspace, mask, maps))
    k_out = np.asarray(fft2c(out[:, None] * maps))
    sampled = np.broadcast_to(mask, k_out.shape) > 0
    np.testing.assert_allclose(k_out[sampled], kspace[sampled], atol=1e-5)
    # The CNN changed the unsampled k-space (the network is not the identity).
    assert np.abs(k_out[~sampled]).max() > 1e-3


def test_dc_variants_of_one_cascade_follow_the_dc_cnn_formula():
    """lambda = 0 keeps the CNN's k-space c; hard DC puts k0 on the mask; lambda = 1 averages."""
    _, kspace, mask, maps, zf = _problem(num_coils=1, seed=1)
    nets = {lam: DCCascade(num_cascades=1, convs_per_cascade=2, features=4, noise_lambda=lam)
            for lam in (None, 0.0, 1.0)}
    params = nets[None].init(jax.random.key(0), zf, kspace, mask, maps)
    # Single coil: the one coil map is a unit-modulus phase, k-space is F(S x).
    k = {lam: np.asarray(fft2c(net.apply(params, zf, kspace, mask, maps)[:, None] * maps))[:, 0]
         for lam, net in nets.items()}
    m = np.broadcast_to(mask, k[None].shape) > 0
    k0, c = kspace[:, 0], k[0.0]
    np.testing.assert_allclose(k[None][m], k0[m], atol=1e-5)
    np.testing.assert_allclose(k[None][~m], c[~m], atol=1e-5)
    np.testing.assert_allclose(k[1.0][m], (c[m] + k0[m]) / 2, atol=1e-5)
    np.testing.assert_allclose(k[1.0][~m], c[~m], atol=1e-5)


def test_unet_recon_is_a_residual_on_the_zero_filled_image():
    _, kspace, mask, maps, zf = _problem(num_coils=1, size=16, seed=3)
    net = UNetRecon(features=(4, 8))
    variables = net.init(jax.random.key(0), zf)
    assert np.abs(np.asarray(net.apply(variables, zf)) - zf).max() > 1e-3
    # Zero the final 1x1 conv of the U-Net: the residual vanishes and the output is the input.
    params = jax.tree.map(lambda x: x, variables["params"])
    params["UNet_0"]["Conv_0"] = jax.tree.map(jnp.zeros_like, params["UNet_0"]["Conv_0"])
    np.testing.assert_allclose(np.asarray(net.apply({"params": params}, zf)), zf, atol=1e-6)


def _dense_sense(maps, mask):
    """``A = M F S`` of one slice as a dense matrix (numpy FFT matrices, independent of jaxmri)."""
    num_coils, size, _ = maps.shape
    eye = np.eye(size * size).reshape(size * size, size, size)
    unitary = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps[None] * eye[:, None],
                                                           axes=(-2, -1)), norm="ortho"),
                              axes=(-2, -1))
    columns = (unitary * mask).reshape(size * size, -1)
    return columns.T  # (C H W, H W)


def test_modl_iterations_are_regularised_sense_solves_with_a_shared_denoiser():
    """With the denoiser at its identity start, x_1 = (A^H A + lam I)^{-1} (A^H b + lam A^H b)
    and x_2 = (A^H A + lam I)^{-1} (A^H b + lam x_1): dense solves of the same problem."""
    image, kspace, mask, maps, zf = _problem(num_coils=2, size=8, seed=3)
    lam = 0.3
    outs = {}
    for k in (1, 2):
        net = MoDL(num_iterations=k, convs=3, features=4, lam_init=lam, cg_iters=200,
                   cg_tol=1e-7)
        params = net.init(jax.random.key(0), zf, kspace, mask[None, None], maps)
        outs[k] = np.asarray(net.apply(params, zf, kspace, mask[None, None], maps))
        count = sum(x.size for x in jax.tree.leaves(params))
        if k == 1:
            count_one = count
    assert count == count_one  # one denoiser, shared by every iteration
    for n in range(2):
        a = _dense_sense(maps[n].astype(np.complex128), mask)
        normal = a.conj().T @ a + lam * np.eye(64)
        aty = a.conj().T @ kspace[n].ravel()
        np.testing.assert_allclose(aty.reshape(8, 8), zf[n], atol=1e-4)
        x1 = np.linalg.solve(normal, aty + lam * aty)
        x2 = np.linalg.solve(normal, aty + lam * x1)
        np.testing.assert_allclose(outs[1][n], x1.reshape(8, 8), atol=2e-4, rtol=1e-3)
        np.testing.assert_allclose(outs[2][n], x2.reshape(8, 8), atol=2e-4, rtol=1e-3)


def test_modl_gradient_reaches_the_denoiser_and_lambda():
    _, kspace, mask, maps, zf = _problem(num_coils=2, size=8, seed=4)
    net = MoDL(num_iterations=2, convs=3, features=4, cg_iters=20)
    params = net.init(jax.random.key(1), zf, kspace, mask[None, None], maps)

    def loss(p):
        return jnp.mean(jnp.abs(net.apply(p, zf, kspace, mask[None, None], maps)) ** 2)

    grads = jax.grad(loss)(params)["params"]
    assert float(jnp.abs(grads["log_lam"])) > 0
    last = [v for k, v in grads["ResidualDenoiser_0"].items()][-1]["kernel"]
    assert float(jnp.max(jnp.abs(last))) > 0
