"""PNG figure panels for a person to look at: images, error maps, zooms, k-space, line profiles.

Images are 2-D ``(H, W)`` arrays, real or complex; the panels show magnitudes. All images of a
panel share one grey scale ``[0, max |target|]``; error maps show ``| |x| - |target| |`` on a
shared scale ``[0, max |target| / error_scale]`` (``error_scale=5`` magnifies errors five
times). k-space rows show ``log(1 + |fft2c(x)|)`` with the centred, orthonormal FFT of the
image as given (complex images keep their phase).

Figures are built as ``matplotlib.figure.Figure`` on an Agg canvas: no display, and pyplot's
global state and the user's chosen backend are left alone. Each function returns the arrays it
drew (read back from the figure) so that callers and tests can check what is on the page.
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
    "save_panel",
    "save_line_profile",
    "read_training_logs",
    "save_loss_curves",
]


def error_map(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``| |image| - |target| |`` as float32 ``(H, W)``."""
    return np.abs(np.abs(image) - np.abs(target)).astype(np.float32)


def log_kspace(image: np.ndarray) -> np.ndarray:
    """``log(1 + |fft2c(image)|)``, centred orthonormal 2-D FFT, float32 ``(H, W)``."""
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))
    return np.log1p(np.abs(kspace)).astype(np.float32)


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


def save_panel(
    path: str | os.PathLike,
    images: Mapping[str, np.ndarray],
    *,
    target_key: str | None = None,
    zoom_box: tuple[int, int, int, int] | None = None,
    kspace: bool = False,
    error_scale: float = 1.0,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> dict[str, dict[str, np.ndarray]]:
    """Save a grid: a column per image; rows images, error maps, [zooms], [k-space].

    Args:
      path: PNG file to write (parent folders are created).
      images: ``{label: (H, W) array}`` in column order, e.g. input, outputs, target.
      target_key: the reference image; default ``'target'`` if present, else the last entry.
        Its error-map cell stays empty.
      zoom_box: ``(y0, x0, h, w)``: outlined on the images and shown enlarged in an extra row.
      kspace: add a row of k-space log-magnitudes.
      error_scale: error maps use grey scale ``[0, max|target| / error_scale]``.
      panel_inches, dpi: each cell is ``panel_inches`` square; the PNG measures
        ``(rows * panel_inches * dpi, columns * panel_inches * dpi)`` pixels.

    Returns:
      The arrays drawn, read back from the figure: ``{'images': ..., 'errors': ...,
      'zooms': ..., 'kspace': ...}``, each ``{label: array}`` (absent rows give empty dicts).
    """
    arrays = _check_images(images)
    if target_key is None:
        target_key = "target" if "target" in arrays else list(arrays)[-1]
    if target_key not in arrays:
        raise ValueError(f"target_key {target_key!r} is not one of the images {list(arrays)}")
    if not error_scale > 0:
        raise ValueError(f"error_scale must be > 0, got {error_scale}")
    box = _check_box(zoom_box, arrays[target_key].shape) if zoom_box is not None else None

    target = arrays[target_key]
    vmax = float(np.max(np.abs(target))) or 1.0
    rows = ["images", "errors"] + (["zooms"] if box else []) + (["kspace"] if kspace else [])
    fig = Figure(figsize=(len(arrays) * panel_inches, len(rows) * panel_inches), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(arrays), squeeze=False)
    drawn: dict[str, dict[str, np.ndarray]] = {
        row: {} for row in ("images", "errors", "zooms", "kspace")
    }
    for col, (label, image) in enumerate(arrays.items()):
        cells = dict(zip(rows, axes[:, col], strict=True))
        for ax in axes[:, col]:
            ax.set_axis_off()
        magnitude = np.abs(image).astype(np.float32)
        im = cells["images"].imshow(magnitude, cmap="gray", vmin=0.0, vmax=vmax)
        cells["images"].set_title(label, fontsize=8)
        drawn["images"][label] = np.asarray(im.get_array())
        if label != target_key:
            im = cells["errors"].imshow(
                error_map(image, target), cmap="inferno", vmin=0.0, vmax=vmax / error_scale
            )
            title = "|error|" if error_scale == 1 else f"|error| x{error_scale:g}"
            cells["errors"].set_title(title, fontsize=8)
            drawn["errors"][label] = np.asarray(im.get_array())
        if box:
            y0, x0, h, w = box
            cells["images"].add_patch(
                Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, edgecolor="yellow", lw=1)
            )
            im = cells["zooms"].imshow(
                magnitude[y0 : y0 + h, x0 : x0 + w], cmap="gray", vmin=0.0, vmax=vmax
            )
            cells["zooms"].set_title("zoom", fontsize=8)
            drawn["zooms"][label] = np.asarray(im.get_array())
        if kspace:
            im = cells["kspace"].imshow(log_kspace(image), cmap="gray")
            cells["kspace"].set_title("log |k-space|", fontsize=8)
            drawn["kspace"][label] = np.asarray(im.get_array())
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.05, hspace=0.15)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return drawn


def save_line_profile(
    path: str | os.PathLike,
    images: Mapping[str, np.ndarray],
    row: int,
    *,
    inches: tuple[float, float] = (6.0, 3.0),
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
    ax.set_xlabel("column")
    ax.set_ylabel("magnitude")
    ax.set_title(f"row {row}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
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
                ax.plot(steps, values, lw=1, label=key)
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
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return logs
