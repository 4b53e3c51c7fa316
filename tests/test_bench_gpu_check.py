"""benchmarks.gpu_check: the table logic with given values (fast) and ``--smoke`` (slow)."""

import json

import pytest

from benchmarks import gpu_check as gc
from benchmarks import paper_plan as pp


def _analysis(flops=2e12, bytes_accessed=1e10, temp=3 * pp.GiB):
    return pp.StepAnalysis(argument_bytes=pp.GiB, output_bytes=pp.GiB, temp_bytes=temp,
                           alias_bytes=0, flops=flops, bytes_accessed=bytes_accessed)


def test_loss_metric_picks_the_training_loss():
    assert gc.loss_metric({"d_loss": 1.0, "loss": 2.0}) == 2.0
    assert gc.loss_metric({"d_loss": 1.0, "g_loss": 3.0}) == 3.0
    assert gc.loss_metric({"l1": 0.5}) == 0.5
    assert gc.loss_metric({"b_loss": 4.0, "a_loss": 5.0}) == 5.0
    with pytest.raises(KeyError, match="no loss"):
        gc.loss_metric({"psnr": 30.0})


def test_result_rows_from_values():
    ok = gc.StepResult(name="A", batch=8, times=[0.03, 0.01, 0.02], losses=[1.0, 0.9, 0.8],
                       compile_s=12.0, analysis=_analysis(), peak_bytes=6 * pp.GiB)
    f32 = gc.StepResult(name="A", batch=8, times=[0.05, 0.04, 0.06], losses=[1.0, 0.9, 0.82])
    bf16 = gc.StepResult(name="A", batch=8, error="XlaRuntimeError: boom")
    failed = gc.StepResult(name="B", batch=2, error="XlaRuntimeError: RESOURCE_EXHAUSTED")
    rows = gc.result_rows([ok, failed], precision={"A": {"float32": f32, "bfloat16": bf16}},
                          torch_ms={"A": 40.0}, device_kind="NVIDIA H100 80GB HBM3")
    a, b = rows
    assert a["JAX ms"] == pytest.approx(20.0)  # the median of 10, 20 and 30 ms
    assert a["PyTorch ms"] == 40.0 and a["JAX/PyTorch"] == pytest.approx(0.5)
    assert a["XLA GiB"] == pytest.approx(5.0)
    assert a["peak GiB so far"] == pytest.approx(6.0)
    assert a["GFLOP/step"] == pytest.approx(2000.0)
    assert a["TFLOP/s"] == pytest.approx(100.0)  # 2 TFLOP in 20 ms
    expected = pp.predicted_step_seconds(2e12, 1e10, pp.CHIPS["H100 SXM"])
    assert a["predicted ms"] == pytest.approx(1e3 * expected)
    # float32: 50 ms median; final loss 0.82 against the default's 0.8 -> 2.5e-2 relative.
    assert a["float32 (time, loss vs default)"] == "50 ms, loss rel diff 2.5e-02"
    assert a["bfloat16 (time, loss vs default)"] == "XlaRuntimeError: boom"
    assert b["JAX ms"] is None and "RESOURCE_EXHAUSTED" in b["error"]
    # No chip prediction on a device that is not an H100/H200; no torch entry -> None.
    (c,) = gc.result_rows([ok], precision={}, torch_ms={}, device_kind="cpu")
    assert c["predicted ms"] is None and c["PyTorch ms"] is None and c["JAX/PyTorch"] is None
    assert c["float32 (time, loss vs default)"] is None
    (d,) = gc.result_rows([ok], precision={}, torch_ms={"A": "skipped (budget)"},
                          device_kind="NVIDIA H200")
    assert d["PyTorch ms"] == "skipped (budget)" and d["JAX/PyTorch"] is None
    assert d["predicted ms"] == pytest.approx(
        1e3 * pp.predicted_step_seconds(2e12, 1e10, pp.CHIPS["H200 SXM"]))


def test_training_row_verdict_uses_the_fixed_batch_loss():
    losses = [1.0, 0.9, 1.1, 0.8, 0.7, 0.75]
    row = gc.training_row(losses, 120.0, 8, fixed_before=0.5, fixed_after=0.4, window=2)
    assert row["loss fell"] == "yes" and row["updates"] == 6
    assert row["first 2 mean loss"] == pytest.approx(0.95)
    assert row["last 2 mean loss"] == pytest.approx(0.725)
    row = gc.training_row(losses, 120.0, 8, fixed_before=0.4, fixed_after=0.41)
    assert row["loss fell"] == "NO"
    assert "first 3 mean loss" in row  # the window shrinks to half the updates
    with pytest.raises(ValueError, match="at least 2"):
        gc.training_row([1.0], 1.0, 1, fixed_before=1.0, fixed_after=0.5)


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    rows = gc.main(["--smoke", "--only", "EDSR", "training", "--train-s", "3",
                    "--out", str(tmp_path)])
    (row,) = rows
    assert row["step"] == "EDSR" and row["error"] is None and row["JAX ms"] > 0
    assert row["GFLOP/step"] > 0 and row["XLA GiB"] > 0
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["training"]["loss fell"] == "yes"
    assert saved["training"]["updates"] >= 20
    assert "InvSharpNet training" in (tmp_path / "gpu_check.md").read_text()


def test_fitting_size_cuts_the_batch_to_what_should_fit():
    gib = pp.GiB
    # 200 GiB at batch 8 with a 1 GiB state: (200 - 2) / 8 per example, (80 - 2) / that = 3.
    assert gc.fitting_size(200 * gib, gib, 8, 1, 80 * gib) == 3
    # Two devices: 4 per device, 1 fits per device -> global 2.
    assert gc.fitting_size(200 * gib, gib, 8, 2, 80 * gib) == 2
    # Nearly fitting still halves at least; never below one example per device.
    assert gc.fitting_size(81 * gib, gib, 8, 1, 80 * gib) == 4
    assert gc.fitting_size(10_000 * gib, gib, 8, 2, 80 * gib) == 2
    assert gc.fitting_size(50 * gib, gib, 8, 1, 80 * gib) == 8  # fits
    assert gc.fitting_size(500 * gib, gib, 8, 1, None) == 8  # no limit known (CPU)


def test_first_of_each_experiment_goes_first():
    def step(name, experiment):
        return pp.PlanStep(name=name, experiment=experiment, train_step=None, state=None,
                           batch={}, params=None, paper_params=None, steps=1, runs=1,
                           schedule="", image="", family="")

    steps = [step("a1", "a"), step("a2", "a"), step("b1", "b"), step("a3", "a"),
             step("c1", "c"), step("b2", "b")]
    assert [s.name for s in gc.first_of_each_experiment(steps)] == [
        "a1", "b1", "c1", "a2", "a3", "b2"]
