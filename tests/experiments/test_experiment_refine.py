"""End to end: the smoke preset of ``python -m experiments.refine`` writes its tables and
figures with finite numbers, and a second run resumes every stage instead of retraining."""

import dataclasses
import json
import math

import matplotlib.image

import pytest

from experiments import refine
from jaxmri.predict import predict_command
from jaxmri.train.cli import run_experiment
from _claims_helpers import assert_claims_recompute

STAGES = ("segmenter", "recnet", "refine", "joint")


@pytest.mark.slow
def test_smoke_preset_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMRI_NO_PROGRESS", "1")
    workdir = tmp_path / "refine"
    out = refine.main(["--preset", "smoke", "--workdir", str(workdir)])

    table = json.loads((workdir / "table1.json").read_text())
    methods = ["Zero-filled", "CS TV", "RecNet", "Joint MSE+adv+VGG (from RecNet)",
               "Proposed (refined)"]
    for method in methods:
        for metric in ("PSNR", "SSIM", "LPIPS", "Dice", "SIS"):
            assert math.isfinite(table[method][metric]["mean"]), (method, metric)
    assert table["Ground truth"]["SIS"]["mean"] == pytest.approx(1.0)
    # SIS is Dice relative to the segmenter's Dice on the ground truth.
    gt = table["Ground truth"]["Dice"]["mean"]
    assert table["RecNet"]["SIS"]["mean"] == pytest.approx(table["RecNet"]["Dice"]["mean"] / gt,
                                                           rel=1e-6)
    pvalues = json.loads((workdir / "wilcoxon.json").read_text())
    assert set(pvalues) == set(methods) - {"Proposed (refined)"}
    assert all(0.0 <= p <= 1.0 for row in pvalues.values() for p in row.values())
    for name in ("table1.md", "wilcoxon.md", "fig2_segmentation.png", "fig2_panel.png"):
        assert (workdir / name).stat().st_size > 0
    # The panel keeps all four rows (images, errors, zoom, k-space) of 300 px each.
    assert matplotlib.image.imread(workdir / "fig2_panel.png").shape[0] == 4 * 300
    assert out["summary"] == table

    logs = {stage: (workdir / stage / "metrics.jsonl").read_text() for stage in STAGES}
    checkpoints = {stage: sorted(p.name for p in (workdir / stage / "checkpoints").iterdir())
                   for stage in STAGES}
    assert all(logs.values())

    again = refine.main(["--preset", "smoke", "--workdir", str(workdir)])
    for stage in STAGES:  # nothing retrained: no new log lines, no new checkpoints
        assert (workdir / stage / "metrics.jsonl").read_text() == logs[stage]
        assert sorted(p.name for p in (workdir / stage / "checkpoints").iterdir()) == \
            checkpoints[stage]
    assert again["summary"] == out["summary"]


def test_recnet_adam_uses_the_papers_beta1():
    """Paper 003: both networks use Adam with lr 2e-4, beta1 = 0.5, beta2 = 0.999. Two steps
    against the Adam update written out by hand."""
    import jax.numpy as jnp
    import numpy as np

    lr, b1, b2, eps = 1e-3, 0.5, 0.999, 1e-8
    grads = [np.array([1.0, -2.0]), np.array([-3.0, 0.5])]
    opt = refine.recnet_optimizer(lr)
    params = jnp.zeros(2)
    state = opt.init(params)
    m = v = np.zeros(2)
    for t, g in enumerate(grads, start=1):
        updates, state = opt.update(jnp.asarray(g, jnp.float32), state, params)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        expected = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-5)


def test_recnet_cosine_decay_is_adam_with_a_cosine_learning_rate():
    """``decay_steps``: Adam (beta1 0.5) whose step t (from 0) uses
    lr * (0.01 + 0.99 * (1 + cos(pi * min(t, T) / T)) / 2), written out by hand; after T steps
    the rate stays at 1 % of lr."""
    import jax.numpy as jnp
    import numpy as np

    lr, decay, b1, b2, eps = 2e-3, 4, 0.5, 0.999, 1e-8
    rng = np.random.default_rng(0)
    opt = refine.recnet_optimizer(lr, decay)
    params = jnp.zeros(3)
    state = opt.init(params)
    m = v = np.zeros(3)
    for t in range(decay + 2):
        g = rng.normal(size=3)
        updates, state = opt.update(jnp.asarray(g, jnp.float32), state, params)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        rate = lr * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * min(t, decay) / decay)))
        expected = -rate * (m / (1 - b1 ** (t + 1))) / (np.sqrt(v / (1 - b2 ** (t + 1))) + eps)
        np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-5)


def test_cpu_long_changes_only_training_lengths():
    """cpu-long lengthens RecNet's training (the regime row) and gives the two adversarial
    stages one longer length; networks, losses, segmenter and data are cpu's."""
    cpu, long = refine.PRESETS["cpu"], refine.PRESETS["cpu-long"]
    changed = {f.name for f in dataclasses.fields(cpu)
               if getattr(cpu, f.name) != getattr(long, f.name)}
    assert changed == {"description", "recnet_steps", "recnet_lr", "recnet_lr_decay",
                       "refine_steps", "joint_steps", "checkpoint_every"}
    assert long.recnet_lr_decay and not cpu.recnet_lr_decay
    assert long.recnet_steps > 30 * cpu.recnet_steps
    # The proposed refinement and the adversarial baseline it is compared with train equally.
    assert long.refine_steps == long.joint_steps > cpu.refine_steps


@pytest.mark.parametrize("argv, expected", [
    ([], {}),
    (["--steps", "7"], {"seg_steps": 7, "recnet_steps": 7, "refine_steps": 7, "joint_steps": 7}),
    (["--refine-steps", "600"], {"refine_steps": 600}),
    (["--steps", "7", "--refine-steps", "600", "--joint-steps", "450"],
     {"seg_steps": 7, "recnet_steps": 7, "refine_steps": 600, "joint_steps": 450}),
    (["--batch-size", "2", "--joint-steps", "9"],
     {"seg_batch": 2, "recnet_batch": 2, "refine_batch": 2, "joint_batch": 2, "joint_steps": 9}),
])
def test_per_stage_step_flags_set_only_their_stage_and_win_over_steps(argv, expected):
    base = refine.PRESETS["cpu"]
    args = refine.build_parser().parse_args(argv)
    preset = refine.preset_from_flags(base, args)
    changed = {f.name: getattr(preset, f.name) for f in dataclasses.fields(base)
               if getattr(preset, f.name) != getattr(base, f.name)}
    assert changed == expected


def test_predict_gives_a_run_from_before_the_per_stage_flags_their_defaults(tmp_path):
    """A run.json written before --refine-steps/--joint-steps existed: --predict rebuilds the
    preset with those flags at their defaults (the shared run_experiment/predict_command path,
    with the builder replaced by one that records what it is given)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "experiment": "refine", "preset": "cpu",
        "flags": {"steps": None, "batch_size": 3, "seed": 1, "data": None}}))
    built = {}

    class Built(Exception):
        pass

    def build(preset, flags, workdir):
        built["preset"] = refine.preset_from_flags(preset, flags)
        built["seed"] = flags.seed
        raise Built

    with pytest.raises(Built):
        run_experiment(refine.main, refine.build_parser(),
                       ["--workdir", str(run), "--predict", str(tmp_path / "scan.nii.gz")],
                       train=None, predict=lambda args: predict_command(args, build=build))
    assert built["seed"] == 1
    assert built["preset"] == dataclasses.replace(refine.PRESETS["cpu"], seg_batch=3,
                                                  recnet_batch=3, refine_batch=3, joint_batch=3)


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_per_stage_step_flags_refuse_what_is_not_a_positive_integer(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        refine.main(["--refine-steps", value])
    assert exit_info.value.code == 2
    assert "--refine-steps" in capsys.readouterr().err


def test_lpips_rows_see_outputs_clipped_to_its_range():
    """A reconstruction that overshoots 1 gets the LPIPS of its [0, 1] clip, like every row."""
    import numpy as np

    from jaxmri.data import load_slices

    slices = load_slices(None, image_size=32, split="val")
    target = slices["image"][:2]
    test_acq = {"target": target.astype(np.complex64), "labels": slices["labels"][:2]}
    over = 1.4 * target  # bright regions above 1
    assert over.max() > 1.2

    def segment(_variables, image):  # a perfect segmenter: SIS is defined, LPIPS is the point
        del image
        return slices["labels"][:2].astype(np.int32)

    per_slice, _ = refine.evaluate({"over": over, "clipped": np.clip(over, 0.0, 1.0)}, test_acq,
                                   segment, None, eval_batch=2)
    np.testing.assert_allclose(per_slice["over"]["LPIPS"], per_slice["clipped"]["LPIPS"],
                               rtol=1e-6)
    assert per_slice["over"]["PSNR"].mean() < per_slice["clipped"]["PSNR"].mean()


def test_paper_claims_and_regime_rows():
    claims = refine.paper_claims("Joint")
    assert [(c.metric, c.baseline, c.direction) for c in claims] == [
        ("SIS", "RecNet", "higher"), ("PSNR", "RecNet", "lower"), ("SIS", "Joint", "higher"),
        ("PSNR", "Joint", "higher"), ("SIS", "CS TV", "higher"),
        ("LPIPS", "RecNet", "lower"), ("SIS CSF", "RecNet", "higher")]
    rows = refine.regime_rows("Joint")
    assert (rows[0].row, rows[0].paper_psnr, rows[0].paper_ssim) == ("RecNet", 32.46, None)


@pytest.mark.slow
def test_smoke_run_claims_equal_statistics_of_its_per_slice_json(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMRI_NO_PROGRESS", "1")
    out = refine.main(["--preset", "smoke", "--workdir", str(tmp_path)])
    joint = "Joint MSE+adv+VGG (from RecNet)"
    files = assert_claims_recompute(tmp_path, refine.paper_claims(joint),
                                    refine.regime_rows(joint))
    assert out["claims"] == files["claims"]["claims"]


def test_cpu_preset_acquisition_follows_the_authors_simulation():
    """The cpu preset simulates what the authors' code does (docs/refine_regime.md): real-valued
    images, a 1-D Gaussian mask keeping 12.5 % of the columns (8x) of which the 8 central ones
    always, a fresh mask per slice."""
    import numpy as np

    from jaxmri.data import load_slices

    preset = refine.PRESETS["cpu"]
    size = preset.image_size
    slices = load_slices(None, image_size=size, split="val", orientations=(preset.orientation,),
                         fractions=preset.split_fractions)
    acq = refine._acquire(slices, np.arange(3), preset=preset, seed=7)
    np.testing.assert_array_equal(acq["target"].imag, 0.0)
    np.testing.assert_allclose(acq["target"].real, slices["image"][:3], atol=1e-6)
    columns = acq["mask"][:, 0, :]  # (slices, W): a column mask is constant along H
    np.testing.assert_array_equal(acq["mask"], np.broadcast_to(columns[:, None], acq["mask"].shape))
    np.testing.assert_array_equal(columns.sum(axis=1), size // 8)
    centre = slice(size // 2 - 4, size // 2 + 4)
    assert np.all(columns[:, centre] == 1)
    assert not np.array_equal(columns[0], columns[1])  # a fresh mask per slice


def test_per_class_sis_scores_each_tissue_alone():
    """A segmenter that loses every CSF pixel on one reconstruction: that row's CSF Dice and
    SIS are 0 on exactly the slices holding CSF, its grey- and white-matter SIS stay 1, and its
    foreground SIS is the mean over the classes present."""
    import numpy as np

    from jaxmri.data import load_slices

    slices = load_slices(None, image_size=32, split="val")
    labels = slices["labels"][:4].astype(np.int32)
    target = slices["image"][:4]
    test_acq = {"target": target.astype(np.complex64), "labels": labels}

    def segment(_variables, image):  # perfect, except that dim images lose their CSF
        return np.where((np.max(image) < 0.6) & (labels == 1), 0, labels)

    per_slice, _ = refine.evaluate({"dim": 0.5 * target, "same": target}, test_acq, segment,
                                   None, eval_batch=4)
    holds = {k: np.any(labels == k, axis=(-2, -1)) for k in (1, 2, 3)}
    assert holds[1].sum() >= 2
    np.testing.assert_array_equal(per_slice["dim"]["Dice CSF"], np.zeros(holds[1].sum()))
    np.testing.assert_array_equal(per_slice["dim"]["SIS CSF"], np.zeros(holds[1].sum()))
    for tissue, k in (("GM", 2), ("WM", 3)):
        np.testing.assert_allclose(per_slice["dim"][f"SIS {tissue}"], np.ones(holds[k].sum()))
    np.testing.assert_allclose(per_slice["same"]["SIS CSF"], 1.0)
    present = np.stack([holds[k] for k in (1, 2, 3)], -1)
    want = np.sum(present[:, 1:], -1) / np.sum(present, -1)  # CSF scores 0, the others 1
    np.testing.assert_allclose(per_slice["dim"]["SIS"], want[present.any(-1)], rtol=1e-6)


def test_cs_row_is_tv_or_dlmri_as_the_preset_says():
    """The cpu presets' CS row is TV with the validation's weight; the paper preset's is DLMRI,
    the paper's baseline, run slice by slice with its own key."""
    import jax
    import numpy as np

    from jaxmri.data import load_slices
    from jaxmri.physics.cs import tv_primal_dual
    from jaxmri.physics.dlmri import dlmri

    assert refine.PRESETS["cpu"].cs_method == "tv"
    assert refine.PRESETS["cpu-long"].cs_method == "tv"
    assert (refine.PRESETS["paper"].cs_method, refine.PRESETS["paper"].cs_iters) == ("dlmri", 20)

    preset = dataclasses.replace(refine.PRESETS["smoke"], cs_iters=2)
    slices = load_slices(None, image_size=32, split="val")
    acq = refine._acquire(slices, np.arange(2), preset=preset, seed=0)
    rec, choice = refine.cs_reconstruct(preset, acq, acq, seed=3)
    assert choice == {"method": "tv", "lambda": preset.cs_lams[0]}
    want = tv_primal_dual(acq["kspace"], acq["mask"][:, None], acq["maps"],
                          lam=preset.cs_lams[0], num_iters=2)
    np.testing.assert_allclose(rec, np.asarray(want), rtol=1e-6)

    preset = dataclasses.replace(preset, cs_method="dlmri")
    rec, choice = refine.cs_reconstruct(preset, acq, acq, seed=3)
    assert choice == {"method": "dlmri", "num_iters": 2}
    key = jax.random.split(jax.random.key(30_003), 2)[1]
    want = dlmri(acq["kspace"][1], acq["mask"][1], acq["maps"][1], key, num_iters=2)
    np.testing.assert_allclose(rec[1], np.asarray(want), rtol=1e-5, atol=1e-6)
    claims = refine.paper_claims("Joint", refine.CS_NAMES["dlmri"])
    assert ("SIS", "CS DLMRI") in [(c.metric, c.baseline) for c in claims]


def test_unknown_cs_method_is_refused_when_the_preset_is_made():
    """Before any training: the preset itself refuses it."""
    with pytest.raises(ValueError, match="cs_method must be one of"):
        dataclasses.replace(refine.PRESETS["smoke"], cs_method="wavelet")
