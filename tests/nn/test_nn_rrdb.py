"""RRDB / SFT blocks against hand computations in numpy, identities and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmri.nn.rrdb import RRDB, RRDBSFT, ResidualDenseBlock, SFTLayer


def _conv_same(x, kernel, bias):
    """NHWC 'SAME' cross-correlation by explicit patch sums (independent of lax.conv)."""
    kh, kw = kernel.shape[:2]
    pad = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
    xp = np.pad(x, pad)
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w], kernel[i, j])
    return out + bias


def _lrelu(x, slope):
    return np.where(x > 0, x, slope * x)


def _rdb_numpy(p, x, beta):
    parts = [x]
    for i in range(4):
        c = p[f"conv{i + 1}"]
        parts.append(_lrelu(_conv_same(np.concatenate(parts, -1), c["kernel"], c["bias"]), 0.2))
    c = p["conv5"]
    return x + beta * _conv_same(np.concatenate(parts, -1), c["kernel"], c["bias"])


def _randomise(params, key):
    # Non-zero biases too, so that the reference checks them.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, v.shape)
                                     for k, v in zip(keys, leaves, strict=True)])


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _zero_conv5(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "conv5" in jax.tree_util.keystr(path) else v,
        params)


X = np.random.default_rng(0).standard_normal((2, 6, 5, 4)).astype(np.float32)
COND = np.random.default_rng(1).standard_normal((2, 6, 5, 3)).astype(np.float32)


def test_residual_dense_block_matches_numpy_and_scales_the_residual():
    block = ResidualDenseBlock(features=4, growth=3)
    params = _randomise(block.init(jax.random.PRNGKey(0), X)["params"], jax.random.PRNGKey(1))
    out = np.asarray(block.apply({"params": params}, X))
    np.testing.assert_allclose(out, _rdb_numpy(_np(params), X, 0.2), rtol=1e-4, atol=1e-4)
    # The residual is scaled by beta: beta=1 gives five times the beta=0.2 residual.
    full = ResidualDenseBlock(features=4, growth=3, beta=1.0).apply({"params": params}, X)
    np.testing.assert_allclose(np.asarray(full) - X, 5 * (out - X), rtol=1e-4, atol=1e-5)
    # Zeroing the last convolution leaves the identity.
    ident = block.apply({"params": _zero_conv5(params)}, X)
    np.testing.assert_array_equal(np.asarray(ident), X)


def test_rrdb_is_residual_of_three_dense_blocks():
    block = RRDB(features=4, growth=3)
    params = _randomise(block.init(jax.random.PRNGKey(2), X)["params"], jax.random.PRNGKey(3))
    p = _np(params)
    h = X.astype(np.float64)
    for i in range(3):
        h = _rdb_numpy(p[f"rdb{i + 1}"], h, 0.2)
    np.testing.assert_allclose(np.asarray(block.apply({"params": params}, X)), X + 0.2 * h,
                               rtol=1e-4, atol=1e-4)
    # With every dense block the identity, the RRDB is x + beta x.
    out = block.apply({"params": _zero_conv5(params)}, X)
    np.testing.assert_allclose(np.asarray(out), 1.2 * X, rtol=1e-6)


def test_sft_layer_is_affine_modulation_by_the_condition():
    layer = SFTLayer(features=4, hidden=5)
    params = _randomise(layer.init(jax.random.PRNGKey(4), X, COND)["params"],
                        jax.random.PRNGKey(5))
    p = _np(params)

    def branch(name):
        h = _conv_same(COND, p[f"{name}_conv0"]["kernel"], p[f"{name}_conv0"]["bias"])
        return _conv_same(_lrelu(h, 0.1), p[f"{name}_conv1"]["kernel"], p[f"{name}_conv1"]["bias"])

    expected = X * (branch("scale") + 1) + branch("shift")
    out = jax.jit(layer.apply)({"params": params}, X, COND)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(layer.apply({"params": params}, X, COND)),
                               np.asarray(out), rtol=1e-5, atol=1e-6)


def test_rrdb_sft_with_identity_sft_equals_rrdb():
    block = RRDBSFT(features=4, growth=3, sft_hidden=5)
    params = _randomise(block.init(jax.random.PRNGKey(6), X, COND)["params"],
                        jax.random.PRNGKey(7))
    # Zero second convs of both branches: scale = shift = 0, every SFT layer is the identity.
    ident = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "_conv1" in jax.tree_util.keystr(path) else v,
        params)
    rrdb_params = {k: v for k, v in ident.items() if k.startswith("rdb")}
    expected = RRDB(features=4, growth=3).apply({"params": rrdb_params}, X)
    np.testing.assert_allclose(np.asarray(block.apply({"params": ident}, X, COND)),
                               np.asarray(expected), rtol=1e-5, atol=1e-6)
    # And the condition does change the output when the SFT layers are not the identity.
    other = block.apply({"params": params}, X, -COND)
    assert np.max(np.abs(np.asarray(other) - np.asarray(block.apply({"params": params}, X,
                                                                       COND)))) > 1e-3


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="x must have 4 channels"):
        RRDB(features=4, growth=3).init(jax.random.PRNGKey(0), X[..., :3])
    with pytest.raises(ValueError, match="x must be NHWC"):
        ResidualDenseBlock(features=4, growth=3).init(jax.random.PRNGKey(0), X[0])
    with pytest.raises(ValueError, match="cond must be NHWC"):
        SFTLayer(features=4).init(jax.random.PRNGKey(0), X, COND[:, :3])
