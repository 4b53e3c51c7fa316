"""The shared benchmark pieces: A/B interleaving, FLOP and memory counts, tables, pmap check."""

import gzip
import itertools
import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks._common import (
    benchmark_parser,
    compiled_flops,
    compiled_memory,
    count_params,
    jax_case,
    profile_calls,
    ratio_interval,
    target_verdict,
    time_alternating,
    write_table,
)
from benchmarks.pmap import parameter_disagreement
from jaxmri.train import apply_mean_gradients, create_train_state, pmean_tree


def test_time_alternating_interleaves_after_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_alternating(fns, repeats=3, warmup=2, settle_s=0.0)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeats"):
        time_alternating(fns, repeats=0)


def test_time_alternating_settles_each_turn_before_timing_one_call():
    """Each turn: untimed calls for >= settle_s, then exactly one timed call (the last)."""
    calls = []

    def slow(name):
        def fn():
            calls.append((name, time.perf_counter()))
            time.sleep(0.004)
        return fn

    times = time_alternating({"a": slow("a"), "b": slow("b")}, repeats=2, warmup=0,
                             settle_s=0.02)
    turns = [(n, [t for _, t in g]) for n, g in itertools.groupby(calls, key=lambda c: c[0])]
    assert [n for n, _ in turns] == ["a", "b", "a", "b"]  # strict alternation of turns
    # Every turn settles for >= 0.02 s before its timed (last) call starts: measured from the
    # start of the turn's first call (a sleep may overrun, so the number of calls varies).
    for _, starts in turns:
        assert len(starts) >= 2 and starts[-1] - starts[0] >= 0.02 - 1e-3, starts
    assert all(0.004 <= t < 0.1 for v in times.values() for t in v)


def test_time_alternating_times_the_mean_call_of_a_window():
    """With ``min_timed_s`` each turn times n back-to-back calls (n fixed after warm-up from one
    call) and reports seconds per call, not the window."""
    durations = iter([0.004] * 1000)
    calls = []

    def fn():
        calls.append(time.perf_counter())
        time.sleep(next(durations))

    times = time_alternating({"a": fn}, repeats=3, warmup=1, settle_s=0.0, min_timed_s=0.03)
    # warm-up 1 + calibration 1 + 3 turns of n calls, n = ceil(0.03 / t) with t >= 4 ms
    n = (len(calls) - 2) / 3
    assert n == int(n) and 1 <= n <= 8, len(calls)
    assert all(0.004 <= t < 0.025 for t in times["a"]), times  # per call, not the >= 30 ms window
    # The per-call mean of a window is the window's wall time over n.
    starts = calls[2:]
    first_turn = starts[int(n)] - starts[0]
    assert times["a"][0] == pytest.approx(first_turn / n, rel=0.3)
    with pytest.raises(ValueError, match="min_timed_s"):
        time_alternating({"a": fn}, repeats=1, min_timed_s=-1.0)


def _numpy_paired_bootstrap(a, b, *, resamples, confidence, seed):
    # Independent reference: resample turn indices with replacement, percentile interval.
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    stats = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    tail = 100 * (1 - confidence) / 2
    return np.percentile(stats, tail), np.percentile(stats, 100 - tail)


def test_ratio_interval_matches_a_plain_paired_bootstrap_and_covers_the_truth():
    rng = np.random.default_rng(3)
    load = np.exp(rng.normal(0.0, 0.3, 12))  # shared per-turn machine load: pairs matter
    b = 0.1 * load * np.exp(rng.normal(0.0, 0.1, 12))
    a = 0.075 * load * np.exp(rng.normal(0.0, 0.1, 12))
    low, high = ratio_interval(a, b, resamples=4000)
    ref_low, ref_high = _numpy_paired_bootstrap(a, b, resamples=20000, confidence=0.9, seed=1)
    assert low == pytest.approx(ref_low, abs=0.015) and high == pytest.approx(ref_high, abs=0.015)
    assert low <= np.median(a) / np.median(b) <= high
    # The interval is widened to hold the measured ratio if the percentile interval misses it.
    from types import SimpleNamespace

    from scipy import stats

    def missing(*args, **kwargs):
        return SimpleNamespace(confidence_interval=SimpleNamespace(low=0.9, high=1.0))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats, "bootstrap", missing)
        # Turn ratios 0.5, 0.5, 0.6 (not all equal, so the bootstrap runs); medians 2 / 4.
        assert ratio_interval([1.0, 2.0, 3.0], [2.0, 4.0, 5.0]) == (0.5, 1.0)
    # Unpaired resampling would mix loads of different turns and give a much wider interval.
    assert high - low < 0.5 * (np.percentile(a, 90) / np.percentile(b, 10)
                               - np.percentile(a, 10) / np.percentile(b, 90))
    # Coverage: over 100 runs with a true ratio of 0.75 the 90 % interval holds it ~90 % of times.
    hits = 0
    for trial in range(100):
        load = np.exp(rng.normal(0.0, 0.3, 10))
        b = load * np.exp(rng.normal(0.0, 0.15, 10))
        a = 0.75 * load * np.exp(rng.normal(0.0, 0.15, 10))
        lo, hi = ratio_interval(a, b, resamples=1000, seed=trial)
        hits += lo <= 0.75 <= hi
    assert 78 <= hits <= 99, hits


def test_ratio_interval_is_a_point_without_spread_and_rejects_bad_input():
    b = np.array([0.2, 0.3, 0.25, 0.4])
    assert ratio_interval(0.5 * b, b) == pytest.approx((0.5, 0.5))
    with pytest.raises(ValueError, match="same length"):
        ratio_interval(b, b[:3])
    with pytest.raises(ValueError, match="same length"):
        ratio_interval(b[:1], b[:1])
    with pytest.raises(ValueError, match="finite"):
        ratio_interval(b, np.array([0.2, np.nan, 0.25, 0.4]))


def test_target_verdict_says_when_the_target_is_within_noise():
    assert target_verdict(0.7, 0.65, 0.75, 0.8) == "yes"
    assert target_verdict(0.78, 0.7, 0.85, 0.8) == "yes, within noise"
    assert target_verdict(0.82, 0.75, 0.9, 0.8) == "no, within noise"
    assert target_verdict(0.9, 0.85, 0.95, 0.8) == "no"
    assert target_verdict(0.8, 0.8, 0.8, 0.8) == "yes"  # the target itself meets it
    # Throughput ratios: at least the target.
    assert target_verdict(7.0, 6.0, 8.0, 5.0, higher_is_better=True) == "yes"
    assert target_verdict(5.5, 4.5, 6.0, 5.0, higher_is_better=True) == "yes, within noise"
    assert target_verdict(4.8, 4.0, 5.5, 5.0, higher_is_better=True) == "no, within noise"
    assert target_verdict(4.0, 3.5, 4.5, 5.0, higher_is_better=True) == "no"
    assert target_verdict(5.0, 5.0, 5.0, 5.0, higher_is_better=True) == "yes"
    with pytest.raises(ValueError, match="outside"):
        target_verdict(0.9, 0.6, 0.7, 0.8)


def test_step_time_row_reports_ratio_interval_and_roofline():
    from types import SimpleNamespace

    from benchmarks.step_time import case_row

    case = SimpleNamespace(name="m", batch_size=4, image_size=48, jax_params=10,
                           jax_flops=2e9)
    torch_s = [0.10, 0.12, 0.11, 0.13, 0.10, 0.12]
    jax_s = [0.5 * t for t in torch_s]  # every turn at exactly half
    row = case_row(case, {"JAX": jax_s, "PyTorch": torch_s}, peak_gflops=100.0)
    assert row["JAX/PyTorch"] == pytest.approx(0.5)
    assert row["90% interval"] == "0.50-0.50" and row["meets 0.8"] == "yes"
    assert row["JAX ms"] == pytest.approx(1e3 * np.median(jax_s))
    assert row["JAX GFLOP/s"] == pytest.approx(2.0 / np.median(jax_s))
    assert row["JAX % of matmul peak"] == pytest.approx(2.0 / np.median(jax_s))
    row = case_row(case, {"JAX": jax_s}, peak_gflops=100.0)
    assert row["JAX/PyTorch"] is None and row["meets 0.8"] is None


def test_compiled_flops_counts_a_matmul_and_replicas():
    n = 64
    x = jnp.ones((n, n), jnp.float32)
    assert compiled_flops(jax.jit(jnp.dot), x, x) == pytest.approx(2 * n**3, rel=0.01)
    assert compiled_flops(jax.jit(jnp.dot), x, x, num_replicas=2) == pytest.approx(4 * n**3,
                                                                                    rel=0.01)


def test_matmul_fn_counts_what_xla_counts_and_blocks(monkeypatch):
    from benchmarks import _common

    call, flops = _common.matmul_fn(64)
    x = jnp.ones((64, 64), jnp.float32)
    assert flops == pytest.approx(compiled_flops(jax.jit(jnp.dot), x, x), rel=0.01)
    blocked = []
    monkeypatch.setattr(_common, "block", lambda tree: blocked.append(tree.shape))
    call()
    assert blocked == [(64, 64)]  # timed calls wait for the product, not just its dispatch


def test_compiled_memory_sees_arguments_outputs_and_temporaries():
    n = 128
    x = jnp.ones((n, n), jnp.float32)
    plain = compiled_memory(jax.jit(lambda a: a @ a), x)
    assert plain["argument"] == 4 * n * n and plain["output"] == 4 * n * n
    # Keeping 8 products alive at once needs temporaries the single product does not.
    chained = compiled_memory(jax.jit(lambda a: sum(jnp.sin(a @ (a + i)) for i in range(8))), x)
    assert chained["peak"] > plain["peak"]


def _hlo_op_counts(trace_path) -> dict[str, int]:
    """``{HLO instruction: number of thunk launches}`` in a trace written by profile_calls."""
    with gzip.open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    counts: dict[str, int] = {}
    for event in events:
        op = event.get("args", {}).get("hlo_op") if event.get("ph") == "X" else None
        if op is not None:
            counts[op] = counts.get(op, 0) + 1
    return counts


def test_profile_calls_traces_every_op_of_every_call(tmp_path):
    """The trace names each convolution, product and fusion of the compiled program, once per
    call, for each of two traces written into the same folder within the same second."""

    def layer(x, w, m):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y).reshape(-1, 8) @ m

    fn = jax.jit(layer)
    args = (jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8)), jnp.ones((8, 8)))
    entry = fn.lower(*args).compile().as_text().split("ENTRY", 1)[1]
    # The program's convolution, dot and fusion (elementwise or YNNPACK) instructions: at least
    # the convolution (or the YNNPACK fusion holding it) and the product.
    ops = set(re.findall(r"^\s*(?:ROOT )?%?([\w.-]+) = \S+ (?:convolution|dot|fusion)\(",
                         entry, re.M))
    assert len(ops) >= 2, entry
    jax.block_until_ready(fn(*args))
    for calls in (3, 2):
        counts = _hlo_op_counts(
            profile_calls(lambda: jax.block_until_ready(fn(*args)), tmp_path, calls=calls))
        assert {op: counts.get(op) for op in ops} == dict.fromkeys(ops, calls)
    with pytest.raises(ValueError, match="calls"):
        profile_calls(lambda: None, tmp_path, calls=0)


def test_jax_case_runs_the_pmapped_step_and_advances_the_state():
    import flax.linen as nn

    module = nn.Dense(3)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))
    state = create_train_state(module, optax.sgd(0.1), variables)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(4, 5)).astype(np.float32),
             "y": rng.normal(size=(4, 3)).astype(np.float32)}

    def step(state, batch, key):
        def loss_fn(params):
            return jnp.mean((module.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_mean_gradients(state, grads), {"loss": loss}

    case = jax_case("dense", train_step=step, state=state, batch=batch, params=state.params,
                    image_size=5)
    assert case.jax_params == count_params(state.params) == 5 * 3 + 3
    assert case.batch_size == 4
    # Forward + backward of a 4x5 @ 5x3 layer on the whole global batch: a few hundred FLOPs.
    assert 2 * 4 * 5 * 3 <= case.jax_flops <= 100 * 4 * 5 * 3

    # Each call is one SGD update on the whole global batch (pmean over the devices).
    def loss_fn(params):
        return jnp.mean((module.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)

    params = state.params
    for _ in range(3):
        case.jax_step()
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss_fn)(params))
    got = case.jax_state()
    assert int(got.step) == 3
    for r, v in zip(jax.tree.leaves(params), jax.tree.leaves(got.params), strict=True):
        np.testing.assert_allclose(v, r, rtol=1e-5, atol=1e-6)


def test_write_table_writes_markdown_and_json(tmp_path):
    rows = [{"method": "a", "ms": 1.5, "n": 3}, {"method": "b", "ms": 2.25e-6, "n": None}]
    table = write_table(rows, tmp_path, "t", title="T")
    md = (tmp_path / "t.md").read_text()
    assert md == table and "| a | 1.5 | 3 |" in md and "| b | 2.250e-06 | – |" in md
    payload = json.loads((tmp_path / "t.json").read_text())
    assert payload["rows"] == rows and payload["title"] == "T"
    assert payload["machine"]["cpu_count"] >= 1
    # The same CPU description as a training's run.json (one reader of /proc/cpuinfo).
    from jaxmri.train.run_record import cpu_model_and_flags

    assert [payload["machine"]["cpu"], payload["machine"]["cpu_flags"]] == list(
        cpu_model_and_flags())
    with pytest.raises(ValueError, match="rows"):
        write_table([], tmp_path, "empty", title="x")


def test_parameter_disagreement_is_the_worst_relative_leaf_difference():
    ref = {"w": np.array([1.0, -2.0]), "b": np.array([0.5])}
    other = {"w": np.array([1.0, -2.002]), "b": np.array([0.5005])}
    assert parameter_disagreement(other, ref) == pytest.approx(max(0.002 / 2.0, 0.0005 / 0.5))
    assert parameter_disagreement(ref, ref) == 0.0
    with pytest.raises(ValueError, match="parameter trees"):
        parameter_disagreement({"w": ref["w"]}, ref)


def test_step_time_ratio_plot_draws_each_interval_around_its_ratio(tmp_path):
    from benchmarks.step_time import save_ratio_plot

    errors = save_ratio_plot(tmp_path / "r.png", ["a", "b"], [0.7, 0.85],
                             [(0.6, 0.75), (0.8, 0.95)], title="t")
    np.testing.assert_allclose(errors, [[0.1, 0.05], [0.05, 0.1]], atol=1e-12)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="inside"):
        save_ratio_plot(tmp_path / "bad.png", ["a"], [0.9], [(0.6, 0.7)], title="t")


def test_input_pipeline_row_times_delivery_against_the_step_in_turns():
    from types import SimpleNamespace

    from benchmarks.input_pipeline import pipeline_row

    steps_seen = []

    def batch_fn(step):
        steps_seen.append(step)
        time.sleep(0.002)
        return {"x": np.zeros((4, 3), np.float32)}

    case = SimpleNamespace(name="c", batch_size=4, jax_step=lambda: time.sleep(0.04))
    row = pipeline_row("p", case, batch_fn, repeats=4, warmup=1, window=0.03)
    # The step takes 20x as long as making a batch; the batch's shard + device_put and sleeps
    # that overrun on a loaded machine can only lower the ratio, by a bounded amount.
    assert 9.0 <= row["delivered / consumed"] <= 20.5, row
    assert row["consumed samples/s"] == pytest.approx(4 / 0.04, rel=0.25)
    assert row["delivered samples/s"] == pytest.approx(
        row["delivered / consumed"] * row["consumed samples/s"], rel=1e-9)
    low, high = map(float, row["90% interval"].split("-"))
    assert low <= round(row["delivered / consumed"], 2) <= high
    assert row["_interval"] == pytest.approx([low, high], abs=0.005)  # the JSON's numbers
    assert row["meets 5x"] == "yes", row  # the whole interval is far above 5
    # Every delivery asked for a fresh step's batch.
    assert steps_seen == list(range(len(steps_seen))) and len(steps_seen) > 4 * 3


def _sum_step(state, batch, key):
    # A pure step that costs almost nothing: the loop's own time per update dominates.
    return {"count": state["count"] + 1}, {"loss": pmean_tree(jnp.mean(batch["x"]))}


def test_fit_step_time_is_the_loops_time_per_update():
    from benchmarks.input_pipeline import fit_step_time

    def slow_batches(step):
        time.sleep(0.03)
        return {"x": np.full((2, 3), step, np.float32)}

    per_step = fit_step_time(_sum_step, {"count": jnp.zeros((), jnp.int32)}, slow_batches,
                             steps=6)
    # Every update waits for a 30 ms batch; fit's start and final checkpoint (hundreds of ms)
    # are left out, so the time is one update's, not the run's or a share of it.
    assert 0.03 <= per_step < 0.03 * 6, per_step
    with pytest.raises(ValueError, match="steps must be >= 3"):
        fit_step_time(_sum_step, {"count": jnp.zeros((), jnp.int32)}, slow_batches, steps=2)


def test_fit_slowdown_compares_the_data_path_with_a_fixed_batch():
    from benchmarks.input_pipeline import DataPath, fit_slowdown

    calls = []

    def slow_batches(step):
        calls.append(step)
        time.sleep(0.03)
        return {"x": np.full((2, 3), step, np.float32)}

    path = DataPath(slow_batches, case=None, train_step=_sum_step,
                    state={"count": jnp.zeros((), jnp.int32)})
    row = fit_slowdown(path, steps=5, repeats=3)
    data_ms, fixed_ms = map(float, row["fit ms/step, data path / fixed batch"].split(" / "))
    ratio, interval = row["fit slowdown"].split(" ")
    low, high = map(float, interval.strip("()").split("-"))
    # The data arm waits >= 30 ms per update; the fixed arm builds no batch at all (the loop
    # of a step this small takes a few ms even on a loaded machine).
    assert data_ms >= 30.0 and fixed_ms < data_ms / 2, row
    assert float(ratio) == pytest.approx(data_ms / fixed_ms, rel=0.02)  # 3 digits each
    assert low <= float(ratio) <= high
    numbers = row["_fit"]  # unrounded, for the JSON
    assert 1e3 * numbers["data_s"] == pytest.approx(data_ms, rel=0.005)
    assert numbers["slowdown"] == pytest.approx(numbers["data_s"] / numbers["fixed_batch_s"])
    assert numbers["interval_90"] == pytest.approx([low, high], abs=0.005)
    # Only the data arm asks for batches (one warm-up run of 3 steps, 3 timed runs of 5); the
    # fixed arm reuses the one batch_fn(0) made up front.
    assert len(calls) == 1 + 3 + 3 * 5 and max(calls) == 4


def test_roofline_row_is_the_steps_share_of_the_matmul_measured_in_turns():
    from types import SimpleNamespace

    from benchmarks.roofline import roofline_row

    def case(flops):
        return SimpleNamespace(name="s", batch_size=4, image_size=48, jax_params=10,
                               jax_flops=flops, jax_step=lambda: time.sleep(0.02))

    def matmul():
        time.sleep(0.01)

    # The step does 4e9 FLOPs in 20 ms (200 GFLOP/s), the matmul 1e9 in 10 ms (100): 200 %.
    # Sleeps overrun by a bounded amount under load, both alike.
    row = roofline_row("n", case(4e9), matmul, 1e9, repeats=4, warmup=1, window=0.03)
    assert 130 <= row["% of matmul"] <= 300, row
    assert row["% of matmul"] == pytest.approx(
        100 * row["GFLOP/s"] / row["matmul GFLOP/s"], rel=1e-9)
    low, high = row["_interval"]
    assert low <= row["% of matmul"] <= high and row["meets 40 %"] == "yes"
    # 1e8 FLOPs per 20 ms is 5 % of the matmul: far below the target.
    assert roofline_row("n", case(1e8), matmul, 1e9, repeats=4, warmup=1,
                        window=0.03)["meets 40 %"] == "no"


def test_roofline_paper_width_is_the_paper_network_at_the_cpu_sizes():
    from benchmarks.roofline import _networks
    from experiments.invsharp import PRESETS

    (cpu_label, cpu), (paper_label, paper_width) = _networks(False)
    assert cpu == PRESETS["cpu"] and cpu_label == "cpu 4 x 5 x 32"
    assert paper_width.network == PRESETS["paper"].network and paper_label == "paper 12 x 5 x 128"
    assert (paper_width.image_size, paper_width.batch_size) == (cpu.image_size, cpu.batch_size)
    assert _networks(True) == [("paper 12 x 5 x 128", PRESETS["paper"])]


def test_interval_plot_reads_targets_either_way(tmp_path):
    from benchmarks._common import save_interval_plot

    errors = save_interval_plot(tmp_path / "p.png", ["a", "b"], [50.0, 30.0],
                                [(45.0, 60.0), (20.0, 45.0)], target=40.0,
                                higher_is_better=True, xlabel="%", title="t",
                                reference=(100.0, "matmul"))
    np.testing.assert_allclose(errors, [[5.0, 10.0], [10.0, 15.0]])
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_benchmark_flag_is_one_line_naming_it(capsys):
    with pytest.raises(SystemExit) as info:
        benchmark_parser(None, name="demo").parse_args(["--repeats", "many"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --repeats: invalid int value: 'many'"), err
    assert err.count("\n") == 1 and "(python -m benchmarks.demo --help" in err, err
