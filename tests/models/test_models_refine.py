"""Tests of paper 003's refinement: the lambda = 0 identity, the gate's gradients, the
orthogonal init, scaling, and one pmapped refinement / joint step with a frozen RecNet."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmri.data import acquire_slices
from jaxmri.models import refine as R
from jaxmri.nn.patchgan import PatchGAN
from jaxmri.physics import gaussian_cartesian_mask
from jaxmri.train import create_train_state, make_parallel_step, replicate, shard_batch

S = 32


@functools.lru_cache(maxsize=1)
def _batch(n: int = 4) -> dict:
    y, x = np.mgrid[:S, :S] / S - 0.5
    rng = np.random.default_rng(0)
    images = np.stack([(x**2 / (0.1 + 0.02 * i) + y**2 / 0.15 < 1) * (0.5 + 0.4 * rng.uniform())
                       + 0.1 * rng.uniform(size=(S, S)) for i in range(n)]).astype(np.float32)
    mask_fn = functools.partial(gaussian_cartesian_mask, acceleration=4, center_lines=4)
    acq = acquire_slices({"image": images}, np.arange(n), mask_fn=mask_fn, seed=1, num_coils=1)
    return {k: acq[k] for k in ("zero_filled", "kspace", "mask", "maps", "target")}


@functools.lru_cache(maxsize=1)
def _nets():
    recnet = R.make_recnet(num_cascades=2, convs_per_cascade=2, features=4)
    refiner = R.GatedRefinement((4, 8, 8), (8, 4))
    disc = PatchGAN(features=(4, 8, 8), strides=(2, 2, 1), dropout_after=(1, 2))
    b = _batch()
    rv = jax.jit(recnet.init)(jax.random.key(0), b["zero_filled"], b["kspace"],
                              b["mask"][:, None], b["maps"])
    gv = jax.jit(refiner.init)(jax.random.key(1), jnp.abs(b["target"]))
    dv = jax.jit(disc.init)(jax.random.key(2), jnp.zeros((1, S, S, 1)))
    return recnet, refiner, disc, rv, gv, dv


def test_gated_output_equals_recnet_output_at_init():
    recnet, refiner, _, rv, gv, _ = _nets()
    b = _batch()
    assert float(gv["params"]["gate"]) == 0.0
    refined, base = R.refined_forward(recnet, rv, refiner, gv, b)
    np.testing.assert_allclose(np.asarray(refined), np.asarray(base), rtol=1e-5, atol=1e-6)
    # ... also in training mode (batch statistics) and with a nonzero V output.
    (mag, v), _ = refiner.apply(gv, jnp.abs(base), train=True, mutable=["batch_stats"])
    assert float(jnp.abs(v).mean()) > 1e-3
    np.testing.assert_allclose(np.asarray(mag), np.abs(np.asarray(base)), rtol=1e-5, atol=1e-6)
    # With the gate set, the output moves by lambda * V in the scaled domain.
    gv2 = {**gv, "params": {**gv["params"], "gate": jnp.asarray(0.3)}}
    mag2, v2 = refiner.apply(gv2, jnp.abs(base))
    _, lo, span = R.scale_to_unit_range(jnp.abs(base))
    np.testing.assert_allclose(np.asarray(mag2 - jnp.abs(base)),
                               np.asarray(0.3 * v2 * span / 2), rtol=1e-4, atol=1e-6)


def test_at_lambda_zero_only_the_gate_receives_a_visual_gradient():
    _, refiner, _, _, gv, _ = _nets()
    mag = jnp.abs(_batch()["target"])
    weights = jnp.asarray(np.random.default_rng(5).standard_normal(mag.shape), jnp.float32)

    def visual(params):
        out, _ = refiner.apply({**gv, "params": params}, mag)
        return jnp.sum(out * weights)

    grads = jax.grad(visual)(gv["params"])
    unet = jax.tree.leaves(grads["RefinementUNet_0"])
    assert max(float(jnp.abs(g).max()) for g in unet) == 0.0
    assert abs(float(grads["gate"])) > 0.0


def test_refinement_unet_orthogonal_init_and_shape_check():
    net = R.RefinementUNet((8, 16), (8,), kernel_size=4)
    params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    kernel = np.asarray(params["Conv_1"]["kernel"]).reshape(-1, 8)  # (4*4*8, 8)
    np.testing.assert_allclose(kernel.T @ kernel, 2.0 * np.eye(8), atol=1e-4)  # ReLU gain^2
    with pytest.raises(ValueError, match="divisible"):
        net.init(jax.random.key(0), jnp.zeros((1, 7, 7, 1)))
    with pytest.raises(ValueError, match="decoder_features"):
        R.RefinementUNet((8, 16), (8, 4)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="magnitude"):
        R.GatedRefinement().init(jax.random.key(0), jnp.zeros((8, 8)))


def test_scaling_round_trip_and_phase_transplant():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(0.2, 3.0, (2, 5, 6)), jnp.float32)
    scaled, lo, span = R.scale_to_unit_range(x)
    np.testing.assert_allclose(np.asarray(scaled.min(axis=(1, 2))), [-1, -1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(scaled.max(axis=(1, 2))), [1, 1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(R.unscale_from_unit_range(scaled, lo, span)),
                               np.asarray(x), rtol=1e-6)
    ref = jnp.asarray(rng.standard_normal((2, 5, 6)) + 1j * rng.standard_normal((2, 5, 6)),
                      jnp.complex64)
    out = R.with_magnitude(ref, x)
    np.testing.assert_allclose(np.abs(np.asarray(out)), np.asarray(x), rtol=1e-5)
    np.testing.assert_allclose(np.angle(np.asarray(out)), np.angle(np.asarray(ref)), atol=1e-5)


def _run_step(step, state, batch, n_steps=1):
    pstep = make_parallel_step(step)
    rstate = replicate(state)
    metrics = []
    for s in range(n_steps):
        rstate, m, _ = pstep(rstate, shard_batch(batch), jax.random.key(7), s,
                             np.zeros(jax.local_device_count(), np.int32))
        metrics.append({k: np.asarray(v) for k, v in m.items()})
    return rstate, metrics


def _first(tree):
    return jax.tree.map(lambda x: np.asarray(x)[0], tree)


def test_refine_step_trains_v_and_d_but_not_recnet():
    recnet, refiner, disc, rv, gv, dv = _nets()
    tx = optax.adam(1e-3, b1=0.5)
    state = {"gen": create_train_state(refiner, tx, gv), "disc": create_train_state(disc, tx, dv),
             "recnet": rv, **R.init_refine_extras(pool_size=3, image_shape=(S, S))}
    step = functools.partial(R.refine_train_step, recnet=recnet, discriminator=disc)
    rstate, metrics = _run_step(step, state, _batch(), n_steps=2)
    new = _first(rstate)
    # RecNet is frozen: bit-identical.
    for a, b in zip(jax.tree.leaves(rv), jax.tree.leaves(new["recnet"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    # V, lambda and D moved.
    moved = [not np.array_equal(np.asarray(a), b) for a, b in
             zip(jax.tree.leaves(gv["params"]), jax.tree.leaves(new["gen"].params), strict=True)]
    assert all(moved)
    assert float(new["gen"].params["gate"]) != 0.0
    assert not np.array_equal(np.asarray(dv["params"]["Conv_0"]["kernel"]),
                              new["disc"].params["Conv_0"]["kernel"])
    # Normalisers from the first step: each term is 1 and the penalty 0.1 there (eq. 2).
    m0 = {k: float(v[0]) for k, v in metrics[0].items()}
    np.testing.assert_allclose(m0["loss"], 0.5 * (1 + 1) + 1 + 0.1, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new["scales"]["values"]),
                               [m0["l_adv"], m0["l_feat"], m0["l_vgg"], m0["l_pen"] / 0.1],
                               rtol=1e-5)
    m1 = {k: float(v[0]) for k, v in metrics[1].items()}
    scales = np.asarray(new["scales"]["values"])
    want = 0.5 * (m1["l_adv"] / scales[0] + m1["l_feat"] / scales[1]) + m1["l_vgg"] / scales[2] \
        + m1["l_pen"] / scales[3]
    np.testing.assert_allclose(m1["loss"], want, rtol=1e-5)
    # The replay pool holds the first step's global batch (4 images > size 3: full).
    assert int(new["pool"]["count"]) == 3
    # Replicas agree (pool and normalisers are device-independent).
    for leaf in jax.tree.leaves(rstate):
        arr = np.asarray(leaf)
        if arr.dtype != object and arr.ndim:
            np.testing.assert_allclose(arr[0], arr[-1], rtol=1e-5, atol=1e-6)


def test_joint_step_trains_the_reconstruction_network():
    recnet, _, disc, rv, _, dv = _nets()
    tx = optax.adam(1e-3, b1=0.5)
    state = {"gen": create_train_state(recnet, tx, rv), "disc": create_train_state(disc, tx, dv),
             **R.init_joint_extras()}
    step = functools.partial(R.joint_train_step, discriminator=disc)
    rstate, metrics = _run_step(step, state, _batch())
    new = _first(rstate)
    np.testing.assert_allclose(float(metrics[0]["loss"][0]), 3.0, rtol=1e-5)
    changed = [not np.array_equal(np.asarray(a), b) for a, b in
               zip(jax.tree.leaves(rv["params"]), jax.tree.leaves(new["gen"].params),
                   strict=True)]
    assert all(changed)


def test_recnet_step_reports_the_complex_mse():
    recnet, _, _, rv, _, _ = _nets()
    b = _batch()
    state = create_train_state(recnet, optax.adam(1e-3), rv)
    _, metrics = _run_step(R.recnet_train_step, state, b)
    pred = R.recnet_forward(recnet, rv, b)
    want = float(np.mean(np.abs(np.asarray(pred) - b["target"]) ** 2))
    np.testing.assert_allclose(float(metrics[0]["loss"][0]), want, rtol=1e-4)
