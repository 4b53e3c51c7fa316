"""Figure panels: the PNG decodes at the promised size and shows the promised arrays."""

from __future__ import annotations

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest

from jaxmri.train.figures import (
    enlarge_nearest,
    error_map,
    log_kspace,
    save_line_profile,
    save_loss_curves,
    save_maps,
    save_panel,
    structure_box,
)


@pytest.fixture()
def images():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.0, 1.0, (32, 32)).astype(np.float32)
    phase = np.exp(1j * rng.uniform(-0.3, 0.3, (32, 32)))
    zero_filled = (target * phase + 0.2 * rng.normal(size=(32, 32))).astype(np.complex64)
    output = target + 0.05 * rng.normal(size=(32, 32)).astype(np.float32)
    return {"zero-filled": zero_filled, "output": output, "target": target}


def test_panel_png_size_and_drawn_arrays(images, tmp_path):
    backend = matplotlib.get_backend()
    path = tmp_path / "figs" / "panel.png"
    drawn = save_panel(path, images, zoom_box=(4, 8, 10, 12), kspace=True, error_scale=4.0, dpi=50)
    pixels = mpimg.imread(path)
    # 4 rows (images, errors, zooms, k-space) x 3 columns of 3-inch cells at 50 dpi.
    assert pixels.shape[:2] == (4 * 150, 3 * 150)
    assert pixels[..., :3].std() > 0.05  # something was drawn, not a blank page
    assert matplotlib.get_backend() == backend  # the user's backend is untouched

    target = images["target"]
    kspaces = {label: np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho")))
               for label, image in images.items()}
    k_max = max(k.max() for k in kspaces.values())
    for label, image in images.items():
        np.testing.assert_allclose(drawn["images"][label], np.abs(image), rtol=1e-6)
        # The 10 x 12 box, enlarged x2 (32 // 12) by repeating each pixel into a 2 x 2 block.
        crop = np.abs(image)[4:14, 8:20]
        np.testing.assert_allclose(drawn["zooms"][label], np.kron(crop, np.ones((2, 2))),
                                   rtol=1e-6)
        np.testing.assert_allclose(drawn["kspace"][label],
                                   np.log10(np.maximum(kspaces[label], 1e-6 * k_max)), rtol=1e-5)
    assert set(drawn["errors"]) == {"zero-filled", "output"}  # none for the target itself
    for label in ("zero-filled", "output"):
        expected = np.abs(np.abs(images[label]) - target)
        np.testing.assert_allclose(drawn["errors"][label], expected, rtol=1e-6, atol=1e-7)
        # error_scale=4: the shared scale is [0, max|target| / 4].
        np.testing.assert_allclose(drawn["clims"]["errors"][label], (0.0, target.max() / 4),
                                   rtol=1e-6)


def test_panel_without_optional_rows_and_explicit_target(images, tmp_path):
    path = tmp_path / "small.png"
    drawn = save_panel(path, images, target_key="output", panel_inches=1.5, dpi=40,
                       title="explicit target")
    assert mpimg.imread(path).shape[:2] == (2 * 60, 3 * 60)
    assert drawn["zooms"] == {} and drawn["kspace"] == {}
    np.testing.assert_allclose(
        drawn["errors"]["target"],
        np.abs(np.abs(images["target"]) - np.abs(images["output"])),  # magnitudes, as shown
        atol=1e-7,
    )


@pytest.mark.parametrize("kspace", [False, True])
def test_nothing_is_cut_at_the_figure_edge(kspace, tmp_path):
    """Colour bars, their labels and the title stay inside the PNG: its outer rim is blank.

    With ``layout="constrained"`` this long title over three 128 px columns with a zoom row
    pushed the error row's colour-bar label past the right edge (212 drawn rim pixels; 004's
    fig4 lost half the label's letters).
    """
    rng = np.random.default_rng(0)
    target = rng.uniform(size=(128, 128)).astype(np.float32)
    images = {"Recon+SR": target + 0.20 * rng.uniform(size=target.shape),
              "Proposed": target + 0.21 * rng.uniform(size=target.shape),
              "target": target}
    path = tmp_path / "panel.png"
    save_panel(path, images, zoom_box=(30, 30, 40, 40), kspace=kspace,
               title="Fig. 4 analog: gauss1d + x2 SR, HR magnitude, test slice 0")
    grey = mpimg.imread(path)[..., :3].mean(axis=-1)
    rim = np.concatenate([grey[:, :3].ravel(), grey[:, -3:].ravel(),
                          grey[:3].ravel(), grey[-3:].ravel()])
    assert rim.min() > 0.95, f"{int((rim <= 0.95).sum())} drawn pixels on the figure's rim"


def test_maps_share_one_scale_and_show_each_map_as_is(tmp_path):
    rng = np.random.default_rng(2)
    maps = {"c=0.6": rng.uniform(0, 1e-3, (40, 40)), "c=0.7": rng.uniform(0, 2e-3, (40, 40)),
            "c=0.8": -rng.uniform(0, 4e-3, (40, 40))}  # a signed map is shown as |map|
    path = tmp_path / "maps.png"
    drawn = save_maps(path, maps, label="|I - S(S^-1(I))|", title="inversion error", dpi=40)
    assert mpimg.imread(path).shape[:2] == (120, 3 * 120)
    top = np.percentile(np.abs(maps["c=0.8"]), 99.5)  # the largest 99.5th percentile
    for name, m in maps.items():
        np.testing.assert_allclose(drawn["maps"][name], np.abs(m), rtol=1e-6)
        np.testing.assert_allclose(drawn["clims"][name], (0.0, top), rtol=1e-6)
    with pytest.raises(ValueError, match="non-finite"):
        save_maps(path, {"a": np.full((4, 4), np.nan)}, label="x")


def test_helpers_against_numpy(images):
    x, t = images["zero-filled"], images["target"]
    np.testing.assert_allclose(error_map(x, t), np.abs(np.abs(x) - t), rtol=1e-6)
    # Parseval: with a floor far below every sample, log_kspace inverts to the image's energy.
    energy = np.sum((10.0 ** log_kspace(x, floor=1e-12).astype(np.float64)) ** 2)
    np.testing.assert_allclose(energy, np.sum(np.abs(x) ** 2), rtol=1e-4)


def test_error_maps_share_one_scale_with_a_colour_bar(images, tmp_path):
    drawn = save_panel(tmp_path / "p.png", images)
    errors = {label: np.abs(np.abs(images[label]) - images["target"])
              for label in ("zero-filled", "output")}
    # One scale for every method: the larger 99.5th percentile (here the zero-filled one's).
    shared = max(np.percentile(e, 99.5) for e in errors.values())
    assert np.percentile(errors["output"], 99.5) < 0.5 * shared  # so a per-map scale would differ
    for label in errors:
        np.testing.assert_allclose(drawn["clims"]["errors"][label], (0.0, shared), rtol=1e-5)
    # The figure carries the colour bar: read the PNG's right margin of the error row.
    pixels = mpimg.imread(tmp_path / "p.png")[..., :3]
    cell = pixels.shape[0] // 2  # two rows: images, error maps
    error_row = pixels[cell : 2 * cell]
    right = error_row[:, -int(0.12 * pixels.shape[1]):]
    assert right.std() > 0.05  # the inferno colour bar, not an empty margin


def test_kspace_log_floor_is_applied():
    image = np.zeros((16, 16), np.complex64)
    image[8, 8] = 1.0  # a delta: flat k-space at 1/16 everywhere
    np.testing.assert_allclose(log_kspace(image), np.log10(1 / 16), rtol=1e-6)
    masked = np.zeros((16, 16))
    masked[:, 8] = 1.0  # one column: k-space is non-zero on a single row only
    logs = log_kspace(masked, floor=1e-3)
    peak = np.log10(np.abs(np.fft.fft2(masked, norm="ortho")).max())
    np.testing.assert_allclose(logs.max(), peak, rtol=1e-6)
    np.testing.assert_allclose(logs.min(), peak - 3.0, rtol=1e-6)  # the floor, not -inf
    assert np.isfinite(logs).all()
    with pytest.raises(ValueError, match="floor"):
        log_kspace(masked, floor=0.0)


def test_nearest_enlargement_and_structure_box():
    np.testing.assert_array_equal(enlarge_nearest(np.array([[1, 2], [3, 4]]), 2),
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    with pytest.raises(ValueError, match="factor"):
        enlarge_nearest(np.ones((2, 2)), 0)
    image = np.zeros((40, 40))
    image[22:30, 5:13] = 1.0  # the only edges: an 8 x 8 square
    y0, x0, h, w = structure_box(image, fraction=0.25)
    assert (h, w) == (10, 10)
    assert y0 <= 21 and y0 + h >= 29 and x0 <= 4 and x0 + w >= 12  # holds the square's edges


def test_line_profile(images, tmp_path):
    path = tmp_path / "profile.png"
    drawn = save_line_profile(path, images, 7, inches=(4.0, 2.0), dpi=50)
    assert mpimg.imread(path).shape[:2] == (100, 200)
    for label, image in images.items():
        np.testing.assert_allclose(drawn[label], np.abs(image[7]), rtol=1e-6)


def test_bad_input_is_named(images, tmp_path):
    with pytest.raises(ValueError, match="target_key"):
        save_panel(tmp_path / "a.png", images, target_key="missing")
    with pytest.raises(ValueError, match="zoom_box"):
        save_panel(tmp_path / "a.png", images, zoom_box=(30, 30, 8, 8))
    with pytest.raises(ValueError, match="images"):
        save_panel(tmp_path / "a.png", {"a": np.zeros((4, 4)), "b": np.zeros((4, 5))})
    with pytest.raises(ValueError, match="non-finite"):
        save_panel(tmp_path / "a.png", {"a": np.full((4, 4), np.nan), "target": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="error_scale"):
        save_panel(tmp_path / "a.png", images, error_scale=0.0)
    with pytest.raises(ValueError, match="row"):
        save_line_profile(tmp_path / "b.png", images, 32)


def test_loss_curves_from_every_stage_log(tmp_path):
    import json

    stages = {"gan": [(1, 2.0), (2, 1.0), (3, 0.5)], "edsr_gb": [(10, 0.3), (20, 0.1)]}
    for stage, points in stages.items():
        (tmp_path / stage).mkdir()
        lines = [json.dumps({"step": s, "split": "train", "loss": v, "time": 0.0})
                 for s, v in points]
        lines.append(json.dumps({"step": points[-1][0], "split": "val", "psnr": 30.0}))
        lines.append('{"step": 99, "spl')  # a torn last line of a killed run
        (tmp_path / stage / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    drawn = save_loss_curves(tmp_path)
    assert sorted(drawn) == ["edsr_gb", "gan"]
    steps, values = drawn["gan"]["train/loss"]
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_array_equal(values, [2.0, 1.0, 0.5])
    assert drawn["edsr_gb"]["val/psnr"][0].tolist() == [20]
    png = mpimg.imread(tmp_path / "loss_curves.png")
    assert png.shape[:2] == (300, 840)  # two panels of 4.2 x 3.0 inches at 100 dpi
    assert save_loss_curves(tmp_path / "gan" / "missing") == {}
