"""Results tables: mean ± sd against numpy, markdown layout, plain JSON on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmri.train.report import folder_name, markdown_table, summarise, write_results


@pytest.fixture()
def per_slice():
    rng = np.random.default_rng(0)
    return {
        "zero-filled": {"psnr": rng.normal(28, 2, 12), "ssim": rng.uniform(0.6, 0.8, 12)},
        "unet": {
            "psnr": rng.normal(33, 1.5, 12).astype(np.float32),
            "ssim": rng.uniform(0.8, 0.9, 12),
        },
        "single": {"psnr": np.array([30.0])},
    }


def test_summary_matches_numpy(per_slice):
    summary = summarise(per_slice)
    assert list(summary) == ["zero-filled", "unet", "single"]
    for method, metrics in per_slice.items():
        for metric, values in metrics.items():
            values = np.asarray(values, np.float64)
            got = summary[method][metric]
            assert got["n"] == values.size
            np.testing.assert_allclose(got["mean"], values.mean(), rtol=1e-12)
            expected_sd = values.std(ddof=1) if values.size > 1 else 0.0
            np.testing.assert_allclose(got["sd"], expected_sd, rtol=1e-12)
            assert type(got["mean"]) is float and type(got["sd"]) is float and type(got["n"]) is int


def test_markdown_table_cells_are_mean_pm_sd(per_slice):
    summary = summarise(per_slice)
    table = markdown_table(
        summary, metrics=["psnr", "ssim"], title="Knee x4", precision={"psnr": 2, "ssim": 4}
    )
    lines = table.strip().splitlines()
    assert lines[0] == "### Knee x4"
    assert lines[2] == "| method | psnr | ssim |"
    assert lines[3] == "|---|---|---|"
    psnr = np.asarray(per_slice["unet"]["psnr"], np.float64)
    ssim = np.asarray(per_slice["unet"]["ssim"], np.float64)
    expected = (
        f"| unet | {psnr.mean():.2f} ± {psnr.std(ddof=1):.2f} | "
        f"{ssim.mean():.4f} ± {ssim.std(ddof=1):.4f} |"
    )
    assert lines[5] == expected
    assert lines[6] == "| single | 30.00 ± 0.00 | – |"  # missing metric shown as a dash


def test_write_results_writes_plain_json_and_prints(per_slice, tmp_path, capsys):
    summary = summarise(per_slice)
    md_path, json_path = write_results(summary, tmp_path / "out", "results", precision=3)
    assert md_path == tmp_path / "out" / "results.md"
    printed = capsys.readouterr().out
    assert md_path.read_text() in printed
    assert "### results" in md_path.read_text()
    loaded = json.loads(json_path.read_text())  # plain JSON: floats and ints only
    assert loaded == summary
    assert md_path.read_text() == markdown_table(summary, metrics=["psnr", "ssim"], title="results")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"per_slice\['a'\]\['psnr'\].*non-finite"):
        summarise({"a": {"psnr": np.array([1.0, np.inf])}})
    with pytest.raises(ValueError, match=r"per_slice\['a'\]\['psnr'\].*1-D"):
        summarise({"a": {"psnr": np.zeros((2, 2))}})
    with pytest.raises(ValueError, match="per_slice"):
        summarise({})
    summary = summarise({"a": {"psnr": np.array([1.0, 2.0])}})
    with pytest.raises(ValueError, match="ssim"):
        markdown_table(summary, metrics=["ssim"])
    with pytest.raises(ValueError, match="metrics"):
        markdown_table(summary, metrics=[])


@pytest.mark.parametrize("label, name", [
    ("cWGAN γ=0.01", "cwgan_gamma_0_01"),
    ("InvSharpNet backward", "invsharpnet_backward"),
    ("DSGAN generator+discriminator", "dsgan_generator_discriminator"),
    ("Joint Rec+SR (SFT)", "joint_rec_sr_sft"),
    ("  U-Net / 4x  ", "u_net_4x"),
])
def test_folder_name_is_lowercase_ascii_with_single_underscores(label, name):
    assert folder_name(label) == name


def test_folder_name_rejects_a_label_without_letters_or_digits():
    with pytest.raises(ValueError, match="no ASCII letter or digit"):
        folder_name("/ — ·")


def test_write_table_writes_markdown_and_json_and_echoes_on_request(tmp_path, capsys):
    from jaxmri.train.report import markdown_grid, write_table

    # The layout of refine's Wilcoxon table (written by hand before it used these two).
    pvalues = {"RecNet": {"PSNR": 0.0123, "SIS": 0.5}, "CS": {"PSNR": 1.0, "SIS": 2.5e-05}}
    markdown = markdown_grid(["baseline", "PSNR", "SIS"],
                             [[n, *(f"{p:.2g}" for p in row.values())]
                              for n, row in pvalues.items()], title="p-values")
    assert markdown == ("### p-values\n\n| baseline | PSNR | SIS |\n|---|---|---|\n"
                        "| RecNet | 0.012 | 0.5 |\n| CS | 1 | 2.5e-05 |\n")
    md, js = write_table(markdown, pvalues, tmp_path, "wilcoxon")
    assert md.read_text() == markdown and json.loads(js.read_text()) == pvalues
    assert capsys.readouterr().out == markdown + "\n"
    write_table(markdown, pvalues, tmp_path, "quiet", echo=False)
    assert capsys.readouterr().out == "" and (tmp_path / "quiet.md").read_text() == markdown
