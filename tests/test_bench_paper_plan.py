"""benchmarks.paper_plan: XLA's memory and FLOP figures as reported, a hand count, predictions.

Compile only, smoke sizes (the EDSR step of dsgan_sr's smoke preset: a few seconds).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from benchmarks import paper_plan as pp
from jaxmri.train import apply_mean_gradients, make_parallel_step


def _conv_flops(n, h, w, cin, cout, k):
    """Hand count of a stride-1 'VALID' forward convolution: one multiply and one add per tap."""
    return 2 * n * (h - k + 1) * (w - k + 1) * cin * cout * k * k


def test_one_conv_flops_match_the_hand_count():
    n, h, w, cin, cout, k = 2, 17, 13, 3, 5, 3
    conv = jax.jit(lambda x, kernel: jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    compiled = conv.lower(jax.ShapeDtypeStruct((n, h, w, cin), jnp.float32),
                          jax.ShapeDtypeStruct((k, k, cin, cout), jnp.float32)).compile()
    analysis = pp.analyse(compiled)
    assert analysis.flops == _conv_flops(n, h, w, cin, cout, k)
    # Arguments: input and kernel; output: the feature map; all float32.
    assert analysis.argument_bytes == 4 * (n * h * w * cin + k * k * cin * cout)
    assert analysis.output_bytes == 4 * n * (h - k + 1) * (w - k + 1) * cout


class _OneConv(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(5, (3, 3), padding="VALID", use_bias=False)(x)


def test_one_conv_train_step_counts_forward_and_weight_gradient():
    # L1 training of a single conv on its input: forward conv + the kernel gradient (another
    # conv of the same size; no input gradient is needed), plus elementwise work and Adam.
    n, h, w, cin, cout, k = 2, 16, 16, 3, 5, 3
    module = _OneConv()
    make_state = pp._state_maker(module, optax.adam(1e-3),
                                 jax.ShapeDtypeStruct((1, h, w, cin), jnp.float32))

    def train_step(state, batch, key):
        def loss_fn(params):
            out = state.apply_fn({"params": params}, batch["x"])
            return jnp.mean(jnp.abs(out - batch["y"]))
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_mean_gradients(state, grads), {"loss": loss}

    state = jax.eval_shape(make_state, jax.random.key(0))
    batch = {"x": jax.ShapeDtypeStruct((n, h, w, cin), jnp.float32),
             "y": jax.ShapeDtypeStruct((n, h - 2, w - 2, cout), jnp.float32)}
    flops = pp.analyse(pp.compile_step(train_step, state, batch)).flops
    conv = _conv_flops(n, h, w, cin, cout, k)
    elementwise = n * (h - 2) * (w - 2) * cout + k * k * cin * cout
    assert 2 * conv <= flops <= 2 * conv + 30 * elementwise


@pytest.fixture(scope="module")
def edsr():
    (step,) = [s for s in pp.plan_steps("smoke", only=["EDSR"]) if s.name == "EDSR"]
    return step


def test_edsr_row_reports_what_the_compiled_real_step_reports(edsr):
    row = pp.plan_row(edsr, pp.analyse(pp.compile_step(edsr.train_step, edsr.state, edsr.batch)),
                      compile_s=0.0)
    # The same step compiled from a real initialised state and a real batch, as fit pmaps it
    # over one device: XLA must report the same program.
    state = jax.jit(edsr.make_state)(jax.random.key(0))
    batch = edsr.make_batch()
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (v.shape, v.dtype) for k, v in edsr.batch.items()}
    one = jax.tree.map(lambda x: np.asarray(x)[None], (state, batch))
    real = make_parallel_step(edsr.train_step).lower(
        *one, jax.random.key(0), 0, np.zeros((1,), np.int32)).compile()
    mem = real.memory_analysis()
    cost = real.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert row["GFLOP/step"] * 1e9 == pytest.approx(cost["flops"], rel=1e-12)
    assert row["args GiB"] * pp.GiB == mem.argument_size_in_bytes
    assert row["out GiB"] * pp.GiB == mem.output_size_in_bytes
    assert row["temp GiB"] * pp.GiB == mem.temp_size_in_bytes
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - mem.alias_size_in_bytes)
    assert row["total GiB"] * pp.GiB == pytest.approx(total)
    assert row["params"] == sum(np.size(x) for x in jax.tree.leaves(state.params))
    assert row["fits 80 GiB"] == "yes" and row["_advice"] is None
    # The predicted time is the roofline of those same numbers on the H100.
    expected = pp.predicted_step_seconds(cost["flops"], cost["bytes accessed"],
                                         pp.CHIPS["H100 SXM"])
    assert row["H100 ms/step"] == pytest.approx(1e3 * expected)
    assert row["H100 h"] == pytest.approx(expected * edsr.steps * edsr.runs / 3600)


def test_predicted_step_seconds_is_the_slower_of_compute_and_memory():
    chip = {"fp32": 10.0, "tf32": 100.0, "bf16": 200.0, "hbm_tb_s": 2.0}
    # 3e12 FLOP at 0.3 x 100 TFLOP/s = 0.1 s; 1.2e11 B at 0.6 x 2 TB/s = 0.1 s -> tie.
    assert pp.predicted_step_seconds(3e12, 1.2e11, chip) == pytest.approx(0.1)
    assert pp.predicted_step_seconds(6e12, 1.2e11, chip) == pytest.approx(0.2)  # compute
    assert pp.predicted_step_seconds(3e12, 2.4e11, chip) == pytest.approx(0.2)  # memory
    assert pp.predicted_step_seconds(3e12, 0.0, chip, precision="fp32") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fractions"):
        pp.predicted_step_seconds(1.0, 1.0, chip, compute_fraction=0.0)
    with pytest.raises(ValueError, match="precision"):
        pp.predicted_step_seconds(1.0, 1.0, chip, precision="fp8")


def test_max_fitting_batch_is_linear_in_the_batch():
    # 10 GiB fixed + 8 x 20 GiB per example = 170 GiB; 80 GiB fits (80 - 10) / 20 = 3.
    assert pp.max_fitting_batch(170 * pp.GiB, 10 * pp.GiB, 8, 80 * pp.GiB) == 3
    assert pp.max_fitting_batch(170 * pp.GiB, 90 * pp.GiB, 8, 80 * pp.GiB) == 0
    with pytest.raises(ValueError, match="batch_size"):
        pp.max_fitting_batch(1, 0, 0, 1.0)


def test_a_step_over_80_gib_is_flagged_with_what_to_change(edsr):
    big = pp.StepAnalysis(argument_bytes=pp.GiB, output_bytes=pp.GiB, temp_bytes=198 * pp.GiB,
                          alias_bytes=0, flops=1e12, bytes_accessed=1e9)
    row = pp.plan_row(edsr, big, compile_s=0.0)
    assert row["total GiB"] == pytest.approx(200.0)
    assert row["fits 80 GiB"] == "NO"
    assert "Per-device batch <=" in row["_advice"] and ">= 3 devices" in row["_advice"]
    assert "jax.checkpoint" in row["_advice"]
