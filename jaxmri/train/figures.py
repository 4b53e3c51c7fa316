"""PNG figure panels for a person to look at: images, error maps, zooms, k-space, line profiles.

Images are 2-D ``(H, W)`` arrays, real or complex; the panels show magnitudes, pixel for pixel
(nearest-neighbour display, no smoothing). A panel (:func:`save_panel`) is a grid with one column
per image and these rows:

* **images**: one grey scale ``[0, max |target|]`` for all columns;
* **error maps** ``| |x| - |target| |``: ONE colour scale ``[0, e]`` for every method, with a
  colour bar, ``e`` = the largest 99.5th percentile of the methods' errors (so that a few
  outlier pixels do not wash the maps out), or ``max |target| / error_scale`` when
  ``error_scale`` is given;
* **zooms** (optional): the ``zoom_box`` of every image enlarged by pixel repetition
  (nearest neighbour) to about the size of the full image; the box is outlined in the images;
* **k-space** (optional): ``log10 |fft2c(x)|`` with a floor of ``max * kspace_floor`` (default
  1e-6, i.e. 120 dB shown) on one scale for all columns, with a colour bar; ``fft2c`` is the
  centred orthonormal FFT of the image as given (complex images keep their phase).

:func:`save_maps` draws maps that are themselves the quantity shown (e.g. inversion errors) in
one row on one colour scale with a colour bar; :func:`save_line_profile` one image row of every
image; :func:`save_loss_curves` every stage's ``metrics.jsonl``.

Figures are built as ``matplotlib.figure.Figure`` on an Agg canvas: no display, and pyplot's
global state and the user's chosen backend are left alone. Each function returns the arrays it
drew and the colour limits of each drawn artist (read back from the figure) so that callers and
tests can check what is on the page.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "error_map",
    "log_kspace",
    "enlarge_nearest",
    "structure_box",
    "save_panel",
    "save_maps",
    "save_line_profile",
    "read_training_logs",
    "save_loss_curves",
]

ERROR_PERCENTILE = 99.5


def error_map(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``| |image| - |target| |`` as float32 ``(H, W)``."""
    return np.abs(np.abs(image) - np.abs(target)).astype(np.float32)


def _kspace_magnitude(image: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho")))


def log_kspace(image: np.ndarray, *, floor: float = 1e-6,
               reference: float | None = None) -> np.ndarray:
    """``log10(max(|fft2c(image)|, floor * reference))`` as float32 ``(H, W)``.

    ``fft2c`` is the centred orthonormal 2-D FFT. ``reference`` is the magnitude the floor is
    relative to; default the image's own k-space maximum (pass a common one to put several images
    on one scale). Without a floor the empty k-space of a masked acquisition is ``-inf`` and the
    few central samples take the whole grey scale.
    """
    if not 0.0 < floor < 1.0:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    magnitude = _kspace_magnitude(image)
    reference = float(np.max(magnitude)) if reference is None else float(reference)
    lowest = floor * reference if reference > 0 else np.finfo(np.float32).tiny
    return np.log10(np.maximum(magnitude, lowest)).astype(np.float32)


def enlarge_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of ``(h, w)`` to ``(h * factor, w * factor)`` (each pixel
    becomes a ``factor x factor`` block)."""
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    return np.repeat(np.repeat(np.asarray(image), int(factor), axis=0), int(factor), axis=1)


def structure_box(target: np.ndarray, *, fraction: float = 0.25) -> tuple[int, int, int, int]:
    """``(y0, x0, h, w)`` of the square box, ``fraction`` of the image side, with the most edge
    energy (sum of absolute finite differences of ``|target|``, ``(H, W)``): where sharpness
    and artefacts show."""
    magnitude = np.abs(np.asarray(target, np.float64))
    if magnitude.ndim != 2:
        raise ValueError(f"target must be a 2-D (H, W) array, got shape {magnitude.shape}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    height, width = magnitude.shape
    side = max(2, round(fraction * min(height, width)))
    edges = np.zeros_like(magnitude)
    edges[:-1, :] += np.abs(np.diff(magnitude, axis=0))
    edges[:, :-1] += np.abs(np.diff(magnitude, axis=1))
    # Box sums of every side x side window from a summed-area table.
    table = np.pad(edges.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (table[side:, side:] - table[:-side, side:] - table[side:, :-side]
            + table[:-side, :-side])
    y0, x0 = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y0), int(x0), side, side


def _shared_limit(maps) -> float:
    """The largest ``ERROR_PERCENTILE``-th percentile of the maps (0.0 for none): one colour
    scale that a few outlier pixels do not wash out."""
    return max((float(np.percentile(m, ERROR_PERCENTILE)) for m in maps), default=0.0)


def _write_png(fig: Figure, path: str | os.PathLike, dpi: int) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")


def _check_images(images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(images, Mapping) or not images:
        raise ValueError("images must be a non-empty mapping {label: (H, W) array}")
    arrays = {str(k): np.asarray(v) for k, v in images.items()}
    shapes = {k: v.shape for k, v in arrays.items()}
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"images must all be 2-D arrays of one shape, got shapes {shapes}")
    for label, image in arrays.items():
        if not np.all(np.isfinite(image)):
            raise ValueError(f"images[{label!r}] contains non-finite values")
    return arrays


def _check_box(zoom_box, shape) -> tuple[int, int, int, int]:
    if len(zoom_box) != 4:
        raise ValueError(f"zoom_box must be (y0, x0, h, w), got {zoom_box}")
    y0, x0, h, w = (int(v) for v in zoom_box)
    if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > shape[0] or x0 + w > shape[1]:
        raise ValueError(f"zoom_box {tuple(zoom_box)} must lie inside the image of shape {shape}")
    return y0, x0, h, w


_ROW_TITLES = {
    "images": "image",
    "errors": "|error| vs {target}",
    "zooms": "zoom x{factor} (nearest)",
    "kspace": "log10 |k-space|",
}


def save_panel(
    path: str | os.PathLike,
    images: Mapping[str, np.ndarray],
    *,
    target_key: str | None = None,
    zoom_box: tuple[int, int, int, int] | None = None,
    kspace: bool = False,
    error_scale: float | None = None,
    kspace_floor: float = 1e-6,
    title: str | None = None,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> dict[str, dict]:
    """Save a grid: a column per image; rows images, error maps, [zooms], [k-space].

    Args:
      path: PNG file to write (parent folders are created).
      images: ``{label: (H, W) array}`` in column order, e.g. input, outputs, target.
      target_key: the reference image; default ``'target'`` if present, else the last entry.
        Its error-map cell stays empty.
      zoom_box: ``(y0, x0, h, w)``: outlined on the images and shown enlarged in an extra row
        (e.g. from :func:`structure_box`).
      kspace: add a row of k-space log magnitudes (floor ``kspace_floor`` x the largest).
      error_scale: ``None`` (default): error maps share ``[0, largest 99.5th percentile of the
        errors]``; a number ``s``: they share ``[0, max|target| / s]``.
      title: a heading above the grid (say what the panel shows: data, setting, slice).
      panel_inches, dpi: each cell is ``panel_inches`` square; the PNG measures
        ``(rows * panel_inches * dpi, columns * panel_inches * dpi)`` pixels.

    Returns:
      ``{'images': ..., 'errors': ..., 'zooms': ..., 'kspace': ...}``, each ``{label: array
      drawn}`` (absent rows give empty dicts), and ``'clims'``: ``{row: {label: (vmin, vmax)}}``
      read back from the drawn artists.
    """
    arrays = _check_images(images)
    if target_key is None:
        target_key = "target" if "target" in arrays else list(arrays)[-1]
    if target_key not in arrays:
        raise ValueError(f"target_key {target_key!r} is not one of the images {list(arrays)}")
    if error_scale is not None and not error_scale > 0:
        raise ValueError(f"error_scale must be > 0, got {error_scale}")
    box = _check_box(zoom_box, arrays[target_key].shape) if zoom_box is not None else None

    target = arrays[target_key]
    vmax = float(np.max(np.abs(target))) or 1.0
    errors = {label: error_map(image, target) for label, image in arrays.items()
              if label != target_key}
    if error_scale is not None:
        error_vmax = vmax / error_scale
    else:
        error_vmax = _shared_limit(errors.values()) or vmax
    factor = 1
    if box:
        factor = max(1, min(target.shape[0] // box[2], target.shape[1] // box[3]))
    if kspace:
        k_reference = max(float(np.max(_kspace_magnitude(x))) for x in arrays.values()) or 1.0
        k_limits = (float(np.log10(kspace_floor * k_reference)), float(np.log10(k_reference)))

    rows = ["images", "errors"] + (["zooms"] if box else []) + (["kspace"] if kspace else [])
    height = len(rows) * panel_inches
    # "compressed", not "constrained": with square images the constrained solver could place
    # a colour bar's label past the right edge (measured on 004's fig4); compressed packs
    # fixed-aspect grids and keeps every label inside the PNG.
    fig = Figure(figsize=(len(arrays) * panel_inches, height), dpi=dpi, layout="compressed")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=10)
    axes = fig.subplots(len(rows), len(arrays), squeeze=False)
    drawn: dict[str, dict] = {row: {} for row in ("images", "errors", "zooms", "kspace")}
    drawn["clims"] = {row: {} for row in ("images", "errors", "zooms", "kspace")}
    mappables = {}

    def show(ax, row, label, array, **kwargs):
        im = ax.imshow(array, interpolation="nearest", **kwargs)
        drawn[row][label] = np.asarray(im.get_array())
        drawn["clims"][row][label] = tuple(float(v) for v in im.get_clim())
        mappables[row] = im
        return im

    for col, (label, image) in enumerate(arrays.items()):
        cells = dict(zip(rows, axes[:, col], strict=True))
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        magnitude = np.abs(image).astype(np.float32)
        show(cells["images"], "images", label, magnitude, cmap="gray", vmin=0.0, vmax=vmax)
        cells["images"].set_title(label, fontsize=9)
        if label != target_key:
            show(cells["errors"], "errors", label, errors[label], cmap="inferno", vmin=0.0,
                 vmax=error_vmax)
        if box:
            y0, x0, h, w = box
            cells["images"].add_patch(
                Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, edgecolor="yellow", lw=1)
            )
            show(cells["zooms"], "zooms", label,
                 enlarge_nearest(magnitude[y0 : y0 + h, x0 : x0 + w], factor),
                 cmap="gray", vmin=0.0, vmax=vmax)
        if kspace:
            show(cells["kspace"], "kspace", label,
                 log_kspace(image, floor=kspace_floor, reference=k_reference),
                 cmap="gray", vmin=k_limits[0], vmax=k_limits[1])
    # Row names on the first column's y axis, so every row says what it shows.
    names = {row: _ROW_TITLES[row].format(target=target_key, factor=factor) for row in rows}
    for row, ax in zip(rows, axes[:, 0], strict=True):
        ax.set_ylabel(names[row], fontsize=9)
    if "errors" in mappables:
        bar = fig.colorbar(mappables["errors"], ax=list(axes[rows.index("errors")]),
                           shrink=0.9, pad=0.01)
        bar.set_label("|error| (one scale for all)", fontsize=8)
    if "kspace" in mappables:
        bar = fig.colorbar(mappables["kspace"], ax=list(axes[rows.index("kspace")]),
                           shrink=0.9, pad=0.01)
        bar.set_label(f"log10 |k| (floor {kspace_floor:g} x max)", fontsize=8)
    _write_png(fig, path, dpi)
    return drawn


def save_maps(
    path: str | os.PathLike,
    maps: Mapping[str, np.ndarray],
    *,
    label: str,
    title: str | None = None,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> dict[str, dict]:
    """Save one row of non-negative maps (e.g. per-pixel errors) on ONE colour scale.

    Unlike :func:`save_panel` there is no reference image: each map is shown as it is, in
    ``inferno`` on the shared scale ``[0, largest 99.5th percentile of |map|]``, with one colour
    bar labelled ``label``. Use it for maps that are themselves the quantity of interest, such
    as Fig. 3b's inversion errors per Lipschitz constant.

    Args:
      path: PNG file to write (parent folders are created).
      maps: ``{title: (H, W) array}`` in column order; magnitudes are shown.
      label: what the colour bar measures (with its unit or normalisation).
      title: a heading above the row.
      panel_inches, dpi: each cell is ``panel_inches`` square; the PNG measures
        ``(panel_inches * dpi, columns * panel_inches * dpi)`` pixels.

    Returns:
      ``{'maps': {title: array drawn}, 'clims': {title: (vmin, vmax)}}``.
    """
    arrays = {name: np.abs(a).astype(np.float32) for name, a in _check_images(maps).items()}
    vmax = _shared_limit(arrays.values()) or max(float(a.max()) for a in arrays.values()) or 1.0
    fig = Figure(figsize=(len(arrays) * panel_inches, panel_inches), dpi=dpi,
                 layout="compressed")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=10)
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    drawn: dict[str, dict] = {"maps": {}, "clims": {}}
    for ax, (name, array) in zip(axes, arrays.items(), strict=True):
        im = ax.imshow(array, interpolation="nearest", cmap="inferno", vmin=0.0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        drawn["maps"][name] = np.asarray(im.get_array())
        drawn["clims"][name] = tuple(float(v) for v in im.get_clim())
    bar = fig.colorbar(im, ax=list(axes), shrink=0.9, pad=0.01)
    bar.set_label(f"{label} (one scale for all)", fontsize=8)
    _write_png(fig, path, dpi)
    return drawn


def save_line_profile(
    path: str | os.PathLike,
    images: Mapping[str, np.ndarray],
    row: int,
    *,
    title: str | None = None,
    inches: tuple[float, float] = (8.0, 4.0),
    dpi: int = 100,
) -> dict[str, np.ndarray]:
    """Plot ``|image[row, :]|`` of every image on one axis; return the profiles drawn."""
    arrays = _check_images(images)
    height = next(iter(arrays.values())).shape[0]
    if isinstance(row, bool) or not isinstance(row, int | np.integer) or not 0 <= row < height:
        raise ValueError(f"row must be an int in [0, {height}), got {row!r}")
    fig = Figure(figsize=inches, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    drawn = {}
    for label, image in arrays.items():
        (line,) = ax.plot(np.abs(image[row, :]), label=label, lw=1)
        drawn[label] = np.asarray(line.get_ydata())
    ax.set_xlabel("column (pixel)")
    ax.set_ylabel("magnitude")
    ax.set_title(title or f"intensity profile along row {row}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _write_png(fig, path, dpi)
    return drawn


def read_training_logs(workdir: str | os.PathLike) -> dict[str, dict[str, tuple]]:
    """The train/val curves of every stage under ``workdir`` (each ``metrics.jsonl``).

    Returns:
      ``{stage: {"<split>/<metric>": (steps int array, values float array)}}``; ``stage`` is
      the folder of the log relative to ``workdir`` (``"."`` for ``workdir`` itself), sorted.
    """
    import json
    from pathlib import Path

    root = Path(workdir)
    logs = {}
    for path in sorted(root.rglob("metrics.jsonl")):
        curves: dict[str, list] = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
            for name, value in record.items():
                if name in ("step", "split", "time") or not isinstance(value, int | float):
                    continue
                curves.setdefault(f"{record.get('split', 'train')}/{name}", []).append(
                    (record["step"], value))
        logs[path.parent.relative_to(root).as_posix()] = {
            key: (np.array([s for s, _ in pts]), np.array([v for _, v in pts], np.float64))
            for key, pts in curves.items()}
    return logs


def save_loss_curves(workdir: str | os.PathLike, path: str | os.PathLike | None = None, *,
                     dpi: int = 100) -> dict[str, dict[str, tuple]]:
    """Draw every stage's logged curves (one panel per stage) to ``loss_curves.png``.

    Train metrics are lines, validation metrics dots; the y axis is logarithmic for a panel
    whose values are all positive. Writes nothing if ``workdir`` holds no ``metrics.jsonl``.

    Args:
      workdir: the experiment folder; every ``metrics.jsonl`` below it is one stage.
      path: output file; default ``<workdir>/loss_curves.png``.

    Returns:
      What was drawn: :func:`read_training_logs` of ``workdir``.
    """
    logs = read_training_logs(workdir)
    if not logs:
        return logs
    path = os.path.join(workdir, "loss_curves.png") if path is None else path
    cols = min(3, len(logs))
    rows = -(-len(logs) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (stage, curves) in zip(axes, logs.items(), strict=False):
        for key, (steps, values) in curves.items():
            if key.startswith("train/"):
                # A line through one point draws nothing: mark single-record curves.
                ax.plot(steps, values, lw=1, marker="_" if len(steps) == 1 else None, ms=8,
                        label=key)
            else:
                ax.plot(steps, values, "o", ms=3, label=key)
        values = [v for _, v in curves.values() if len(v)]
        if values and all(np.all(v > 0) for v in values):
            ax.set_yscale("log")
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    for ax in axes[len(logs):]:
        ax.set_visible(False)
    fig.suptitle("Training logs, one panel per stage: lines train, dots validation",
                 fontsize=10)
    fig.tight_layout()
    _write_png(fig, path, dpi)
    return logs
