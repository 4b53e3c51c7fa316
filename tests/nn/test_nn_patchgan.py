"""Tests of the PatchGAN discriminator: initialisation, channel-wise dropout, locality, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.nn.patchgan import PatchGAN


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_weights_drawn_from_normal_0_002():
    net = PatchGAN(features=(64, 128), strides=(2, 1), dropout_after=())
    params = jax.jit(net.init)(jax.random.key(0), _x((1, 16, 16, 1)))["params"]
    kernel = np.asarray(params["Conv_1"]["kernel"])  # 4*4*64*128 = 131072 draws
    assert abs(kernel.mean()) < 5 * 0.02 / np.sqrt(kernel.size)
    np.testing.assert_allclose(kernel.std(), 0.02, rtol=0.02)
    assert "bias" not in params["Conv_1"]  # followed by batch norm
    assert "bias" in params["Conv_0"]  # first layer: no normalisation, so a bias
    scale = np.asarray(params["BatchNorm_0"]["scale"])
    assert abs(scale.mean() - 1.0) < 0.02 and 0.005 < scale.std() < 0.04


def test_channelwise_dropout_zeroes_whole_feature_maps():
    rate = 0.5
    net = PatchGAN(features=(8, 64), strides=(1, 1), norm="none", dropout_after=(1,),
                   dropout_rate=rate)
    x = _x((4, 8, 8, 1))
    variables = jax.jit(net.init)(jax.random.key(0), x)
    _, clean = net.apply(variables, x, train=False)
    _, dropped = net.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    clean, dropped = np.asarray(clean[1]), np.asarray(dropped[1])
    nonzero = np.abs(clean).sum(axis=(1, 2)) > 0  # (N, C) channels with some activation
    kept = np.abs(dropped).sum(axis=(1, 2)) > 0
    # Per example and channel: either the whole map is zero or it is the clean map / (1 - p).
    for n in range(4):
        for c in range(64):
            if kept[n, c]:
                np.testing.assert_allclose(dropped[n, :, :, c], clean[n, :, :, c] / (1 - rate),
                                           rtol=1e-5, atol=1e-6)
            else:
                assert np.all(dropped[n, :, :, c] == 0)
    frac = 1 - kept[nonzero].mean()
    assert 0.35 < frac < 0.65  # ~Binomial(256, 0.5) channels dropped


def test_output_is_local_patchwise():
    # Two stride-2 4x4 layers and a 4x4 head: a pixel change in one corner of a 32x32 image
    # cannot reach the logits of the opposite corner.
    net = PatchGAN(features=(4, 8), strides=(2, 2), norm="none", dropout_after=())
    x = _x((1, 32, 32, 1))
    variables = jax.jit(net.init)(jax.random.key(0), x)
    logits, _ = net.apply(variables, x)
    logits2, _ = net.apply(variables, x.at[0, 0, 0, 0].add(10.0))
    diff = np.abs(np.asarray(logits2 - logits))[0, :, :, 0]
    assert logits.shape == (1, 8, 8, 1)
    assert diff[0, 0] > 0
    assert np.all(diff[4:, :] == 0) and np.all(diff[:, 4:] == 0)


def test_taps_are_hidden_layer_outputs_and_jit_matches_eager():
    net = PatchGAN(features=(4, 8, 8), strides=(2, 2, 1), dropout_after=(2,))
    x = _x((2, 16, 16, 1))
    variables = jax.jit(net.init)(jax.random.key(0), x)
    logits, taps = net.apply(variables, x)
    assert [t.shape[-1] for t in taps] == [4, 8, 8]
    assert all(float(t.min()) < 0 for t in taps)  # leaky ReLU lets negatives through
    j_logits, j_taps = jax.jit(net.apply)(variables, x)
    np.testing.assert_allclose(np.asarray(j_logits), np.asarray(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(j_taps[-1]), np.asarray(taps[-1]), rtol=1e-5,
                               atol=1e-6)


def test_bad_arguments_name_the_argument():
    x = _x((1, 16, 16, 1))
    with pytest.raises(ValueError, match="x must be NHWC"):
        PatchGAN(features=(4,), strides=(2,)).init(jax.random.key(0), x[0])
    with pytest.raises(ValueError, match="features and strides"):
        PatchGAN(features=(4, 8), strides=(2,)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="dropout_rate"):
        PatchGAN(features=(4,), strides=(2,), dropout_rate=1.0).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="norm"):
        PatchGAN(features=(4,), strides=(2,), norm="layer").init(jax.random.key(0), x)
