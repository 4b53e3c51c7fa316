"""The shared reconstruction networks: data consistency holds at the output of the cascade."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmri.models.recon import DCCascade, UNetRecon
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
