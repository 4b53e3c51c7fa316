"""fastMRI HDF5 files: reader, writer, and square training slices from measured k-space.

File layout (fastMRI ``data/README.md``, ``data/mri_data.py``; REFERENCES section 6):

* ``kspace``: ``(slices, H, W)`` single-coil or ``(slices, coils, H, W)`` multi-coil
  ``complex64``, centred, ``H`` the readout axis and ``W`` the phase-encode axis;
* ``reconstruction_esc`` (single-coil) or ``reconstruction_rss`` (multi-coil): ``(slices, h, w)``
  ``float32`` magnitude target, centre-cropped to the recon size;
* ``ismrmrd_header``: ISMRMRD XML; ``encoding/encodedSpace/matrixSize/{x, y}`` is the k-space
  size ``(H, W)`` and ``encoding/reconSpace/matrixSize/{x, y}`` the target size ``(h, w)``
  (``x`` pairs with ``H``, ``y`` with ``W``, as fastMRI's ``center_crop`` uses them);
* attributes ``acquisition``, ``max``, ``norm``, ``patient_id``.

:func:`write_fastmri_h5` writes exactly that (a minimal but valid header), so tests can make
small files and users can export simulated data; :func:`read_fastmri_h5` reads it back.

:func:`load_fastmri_slices` turns a file or a folder of files into a slices dict for training:
for each slice, coil images ``ifft2c(kspace)`` are centre-cropped (fastMRI's ``center_crop``
offsets ``(n - m) // 2``) to the header's recon size, then to a centred square of side
``min(h, w)``; if that side differs from ``image_size`` the square is resampled by Fourier
cropping / zero-padding its centred k-space (band-limited, keeps the data's own noise and
phase; scaled by ``image_size / side`` so intensities are preserved). Finally each *volume* is
scaled so that the maximum of its RSS image is 1. The slices dict then holds ``kspace``
``(N, C, S, S)`` (single-coil: ``C = 1``) and ``image = rss(ifft2c(kspace))`` in ``[0, 1]``.

Split rule for fastMRI: with three or more files the split is by file (patient), files sorted
by name, the last ``max(1, round(n * f_test))`` to test, the ``max(1, round(n * f_val))``
before them to val, the rest to train; with one or two files it is by slice position inside
each file (the rule of :mod:`jaxmri.data.slicing`).
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import h5py
import numpy as np

from jaxmri._checks import check_complex, check_finite, check_positive
from jaxmri.data.slicing import DEFAULT_FRACTIONS, SPLITS, split_assignment
from jaxmri.data._host_fft import host_fft2c, host_ifft2c, host_rss
from jaxmri.errors import MissingInputError, UserInputError

__all__ = [
    "write_fastmri_h5",
    "read_fastmri_h5",
    "list_fastmri_files",
    "load_fastmri_slices",
    "center_crop",
]

_NS = "http://www.ismrm.org/ISMRMRD"
H5_SUFFIXES = (".h5", ".hdf5")


def center_crop(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """fastMRI ``center_crop`` over the last two axes: start at ``(n - m) // 2``."""
    h, w = int(shape[0]), int(shape[1])
    n_h, n_w = x.shape[-2:]
    if h > n_h or w > n_w:
        raise ValueError(f"crop size {(h, w)} exceeds the array's last two axes {(n_h, n_w)}")
    top, left = (n_h - h) // 2, (n_w - w) // 2
    return x[..., top : top + h, left : left + w]


def _recon_image(kspace: np.ndarray, recon_size: tuple[int, int]) -> np.ndarray:
    """RSS (multi-coil) or magnitude (single-coil) of the cropped image, ``(slices, h, w)``."""
    coils = kspace if kspace.ndim == 4 else kspace[:, None]
    images = center_crop(host_ifft2c(coils), recon_size)
    return host_rss(images, axis=1)


def _header_xml(encoded: tuple[int, int], recon: tuple[int, int], num_slices: int) -> bytes:
    def size(parent: ET.Element, tag: str, xyz: tuple[int, int, int]) -> None:
        space = ET.SubElement(parent, tag)
        matrix = ET.SubElement(space, "matrixSize")
        fov = ET.SubElement(space, "fieldOfView_mm")
        for axis, n in zip("xyz", xyz):
            ET.SubElement(matrix, axis).text = str(n)
            ET.SubElement(fov, axis).text = f"{float(n):.1f}"  # 1 mm voxels

    def limit(parent: ET.Element, tag: str, maximum: int, center: int) -> None:
        node = ET.SubElement(parent, tag)
        for key, value in (("minimum", 0), ("maximum", maximum), ("center", center)):
            ET.SubElement(node, key).text = str(value)

    root = ET.Element("ismrmrdHeader", xmlns=_NS)
    encoding = ET.SubElement(root, "encoding")
    size(encoding, "encodedSpace", (*encoded, 1))
    size(encoding, "reconSpace", (*recon, 1))
    ET.SubElement(encoding, "trajectory").text = "cartesian"
    limits = ET.SubElement(encoding, "encodingLimits")
    limit(limits, "kspace_encoding_step_1", encoded[1] - 1, encoded[1] // 2)
    limit(limits, "kspace_encoding_step_2", 0, 0)
    limit(limits, "slice", num_slices - 1, num_slices // 2)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root)


def _header_sizes(xml: bytes) -> tuple[tuple[int, int], tuple[int, int]]:
    root = ET.fromstring(xml)
    ns = {"m": _NS}

    def size(space: str) -> tuple[int, int]:
        values = []
        for axis in "xy":
            node = root.find(f"m:encoding/m:{space}/m:matrixSize/m:{axis}", ns)
            if node is None or node.text is None:
                raise UserInputError(
                    f"ismrmrd_header has no encoding/{space}/matrixSize/{axis}")
            values.append(int(node.text))
        return values[0], values[1]

    return size("encodedSpace"), size("reconSpace")


def write_fastmri_h5(
    path: str | os.PathLike,
    kspace: np.ndarray,
    *,
    reconstruction: np.ndarray | None = None,
    recon_size: Sequence[int] | None = None,
    acquisition: str = "CORPD_FBK",
    patient_id: str | None = None,
) -> None:
    """Write one volume as a fastMRI HDF5 file.

    Args:
      path: output file (``.h5``); overwritten if it exists.
      kspace: centred k-space, ``(slices, H, W)`` single-coil or ``(slices, C, H, W)``
        multi-coil, complex (stored as ``complex64``), finite.
      reconstruction: ``(slices, h, w)`` real target; ``None`` computes it as fastMRI defines it
        for our data: the RSS (multi-coil) or magnitude (single-coil) of ``ifft2c(kspace)``
        centre-cropped to ``recon_size``. Stored as ``reconstruction_rss`` (multi-coil) or
        ``reconstruction_esc`` (single-coil).
      recon_size: ``(h, w)`` for the header's reconSpace; default: the reconstruction's shape,
        or ``(H, W)``.
      acquisition: the ``acquisition`` attribute (fastMRI uses e.g. ``CORPD_FBK``, ``AXT2``).
      patient_id: the ``patient_id`` attribute; default: the file name without suffix.

    Raises:
      ValueError / TypeError naming the argument for wrong shapes, dtypes or non-finite data.
    """
    kspace = np.asarray(kspace)
    check_complex(kspace, "kspace")
    if kspace.ndim not in (3, 4):
        raise ValueError(
            f"kspace must be (slices, H, W) or (slices, coils, H, W), got shape {kspace.shape}"
        )
    check_finite(kspace, "kspace")
    kspace = kspace.astype(np.complex64)
    encoded = tuple(int(n) for n in kspace.shape[-2:])
    if recon_size is None:
        recon_size = np.shape(reconstruction)[-2:] if reconstruction is not None else encoded
    recon_size = tuple(int(n) for n in recon_size)
    if len(recon_size) != 2 or not all(0 < r <= e for r, e in zip(recon_size, encoded)):
        raise ValueError(f"recon_size must be 2 positive ints <= {encoded}, got {recon_size}")
    if reconstruction is None:
        reconstruction = _recon_image(kspace, recon_size)
    reconstruction = np.asarray(reconstruction, np.float32)
    expected = (kspace.shape[0], *recon_size)
    if reconstruction.shape != expected:
        raise ValueError(
            f"mismatched shapes: reconstruction must have shape {expected}, "
            f"got {reconstruction.shape}"
        )
    check_finite(reconstruction, "reconstruction")
    multicoil = kspace.ndim == 4
    name = "reconstruction_rss" if multicoil else "reconstruction_esc"
    path = os.fspath(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset(name, data=reconstruction)
        f.create_dataset("ismrmrd_header", data=np.bytes_(_header_xml(encoded, recon_size,
                                                                      kspace.shape[0])))
        f.attrs["acquisition"] = acquisition
        f.attrs["max"] = float(reconstruction.max())
        f.attrs["norm"] = float(np.linalg.norm(reconstruction))
        f.attrs["patient_id"] = (
            patient_id if patient_id is not None else os.path.basename(path).split(".")[0]
        )


def read_fastmri_h5(path: str | os.PathLike) -> dict:
    """Read one fastMRI HDF5 file (fully, into memory).

    Args:
      path: a fastMRI ``.h5`` file.

    Returns:
      dict with ``kspace`` (as stored: ``(slices, [coils,] H, W)`` ``complex64``),
      ``multicoil`` (bool), ``reconstruction`` (``(slices, h, w)`` ``float32`` or ``None``),
      ``encoded_size`` and ``recon_size`` (``(x, y)`` int tuples from the header; without a
      header: the k-space and reconstruction shapes) and ``attrs`` (dict of the file's attrs).

    Raises:
      MissingInputError (a ``FileNotFoundError``): no such file.
      UserInputError (a ``ValueError``), naming the file: not an HDF5 file, a truncated or
        otherwise unreadable one, no ``kspace`` dataset, k-space that is not complex with 3 or
        4 axes, non-finite k-space, a reconstruction or header whose shapes do not match.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(f"fastMRI file {path!r} does not exist")
    if not h5py.is_hdf5(path):
        raise UserInputError(f"{path!r} is not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise UserInputError(
                    f"HDF5 file {path!r} has no 'kspace' dataset (found: {sorted(f.keys())}); "
                    "pass fastMRI files"
                )
            kspace = f["kspace"][()]
            recon = None
            for name in ("reconstruction_rss", "reconstruction_esc"):
                if name in f:
                    recon = np.asarray(f[name][()], np.float32)
            header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except OSError as err:  # h5py's error for a truncated or damaged file names no file
        reason = " ".join(str(err).split())
        raise UserInputError(f"HDF5 file {path!r} cannot be read ({reason}); the file is "
                             "damaged or incomplete: copy it again") from None
    if np.asarray(kspace).dtype.kind != "c" or kspace.ndim not in (3, 4):
        raise UserInputError(
            f"'kspace' in {path!r} must be complex (slices, [coils,] H, W), got dtype "
            f"{kspace.dtype} and shape {kspace.shape}"
        )
    kspace = kspace.astype(np.complex64)
    if not np.all(np.isfinite(kspace)):
        raise UserInputError(f"'kspace' in {path!r} contains non-finite values (NaN or inf)")
    if header is not None:
        try:
            xml = header.encode() if isinstance(header, str) else bytes(header)
            encoded, recon_size = _header_sizes(xml)
        except ET.ParseError as err:
            raise UserInputError(
                f"ismrmrd_header in {path!r} is not valid XML: {err}") from None
        except UserInputError as err:
            raise UserInputError(f"{path!r}: {err}") from None
    else:
        encoded = tuple(kspace.shape[-2:])
        recon_size = tuple(recon.shape[-2:]) if recon is not None else encoded
    if any(r > k for r, k in zip(recon_size, kspace.shape[-2:])):
        raise UserInputError(
            f"mismatched shapes in {path!r}: recon size {recon_size} exceeds the k-space size "
            f"{kspace.shape[-2:]}"
        )
    if recon is not None and recon.shape != (kspace.shape[0], *recon_size):
        raise UserInputError(
            f"mismatched shapes in {path!r}: reconstruction has shape {recon.shape}, expected "
            f"{(kspace.shape[0], *recon_size)} (slices of kspace, recon size of the header)"
        )
    return {
        "kspace": kspace,
        "multicoil": kspace.ndim == 4,
        "reconstruction": recon,
        "encoded_size": tuple(encoded),
        "recon_size": tuple(recon_size),
        "attrs": attrs,
    }


def list_fastmri_files(path: str | os.PathLike) -> list[str]:
    """The ``.h5`` files of a folder, sorted by name (or ``[path]`` for one file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingInputError(f"fastMRI path {path!r} does not exist")
    if os.path.isfile(path):
        return [path]
    files = sorted(
        os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(H5_SUFFIXES)
    )
    if not files:
        raise UserInputError(f"folder {path!r} holds no fastMRI files (*.h5)")
    return files


def _fourier_resample(coil_images: np.ndarray, size: int) -> np.ndarray:
    """Resample ``(..., n, n)`` complex images to ``(..., size, size)`` in k-space."""
    n = coil_images.shape[-1]
    if n == size:
        return coil_images
    k = host_fft2c(coil_images)
    out = np.zeros(k.shape[:-2] + (size, size), np.complex64)
    m = min(n, size)
    # Keep the DC sample at index n // 2 -> size // 2 (centred k-space convention).
    src = slice(n // 2 - m // 2, n // 2 - m // 2 + m)
    dst = slice(size // 2 - m // 2, size // 2 - m // 2 + m)
    out[..., dst, dst] = k[..., src, src]
    return host_ifft2c(out) * np.float32(size / n)


# A slice whose RSS image stays below this fraction of its volume's maximum is blank (all-zero
# k-space, or only float round-off): no metric with the slice's own peak is defined on it.
BLANK_SLICE_FRACTION = 1e-6


def _volume_slices(record: dict, image_size: int,
                   path: str = "") -> tuple[np.ndarray, np.ndarray]:
    kspace = record["kspace"] if record["multicoil"] else record["kspace"][:, None]
    images = center_crop(host_ifft2c(kspace), record["recon_size"])
    side = min(images.shape[-2:])
    images = _fourier_resample(center_crop(images, (side, side)), image_size)
    magnitude = host_rss(images, axis=1)
    scale = float(magnitude.max())
    if scale <= 0:
        raise UserInputError(f"fastMRI file {path!r} is all zeros after cropping to the "
                             "recon size (blank k-space); remove it from the data")
    kspace_out = host_fft2c(images / np.float32(scale))
    return kspace_out, magnitude / scale


def load_fastmri_slices(
    path: str | os.PathLike,
    *,
    image_size: int,
    split: str = "train",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    cycle: int = 64,
    guard: int = 4,
) -> dict[str, np.ndarray]:
    """Square training slices from one fastMRI file or a folder of them.

    See the module docstring for cropping, resampling, normalisation and the split rule.

    Args:
      path: an ``.h5`` file or a folder of ``.h5`` files (all with the same coil count).
      image_size: side ``S`` of the output slices.
      split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
      fractions, cycle, guard: split rule (by file with >= 3 files, else by slice position).

    Blank slices (RSS image below :data:`BLANK_SLICE_FRACTION` of the volume maximum, e.g. an
    all-zero k-space slice) are dropped with a warning naming the file and slice positions:
    a blank target has no PSNR or SSIM and would stop the evaluation at the end of a run.

    Returns:
      Slices dict: ``kspace`` ``(N, C, S, S)`` complex64 (fully sampled, as measured),
      ``image`` ``(N, S, S)`` float32 ``= rss(ifft2c(kspace))`` in ``[0, 1]``, ``orientation``
      (all ``-1``), ``position`` (slice index in its file), ``volume`` (file index) ``(N,)``.

    Raises:
      MissingInputError, UserInputError: see :func:`read_fastmri_h5`; also an empty folder,
        an all-zero volume, files with different coil counts ("mismatched shapes") and an
        empty split.
    """
    check_positive(image_size, "image_size")
    if split not in SPLITS + ("all",):
        raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
    files = list_fastmri_files(path)
    wanted = None if split == "all" else SPLITS.index(split)
    by_file = len(files) >= 3
    if by_file and wanted is not None:
        n = len(files)
        n_test = max(1, round(n * fractions[2]))
        n_val = max(1, round(n * fractions[1]))
        file_split = np.zeros(n, np.int32)
        file_split[n - n_test :] = 2
        file_split[n - n_test - n_val : n - n_test] = 1
        chosen = [i for i in range(n) if file_split[i] == wanted]
    else:
        chosen = list(range(len(files)))

    parts = {"kspace": [], "image": [], "position": [], "volume": []}
    for i in chosen:
        kspace, image = _volume_slices(read_fastmri_h5(files[i]), image_size, files[i])
        positions = np.arange(kspace.shape[0])
        if not by_file and wanted is not None:
            keep = split_assignment(positions, fractions=fractions, cycle=cycle,
                                    guard=guard) == wanted
            kspace, image, positions = kspace[keep], image[keep], positions[keep]
        blank = image.max(axis=(-2, -1)) <= BLANK_SLICE_FRACTION
        if blank.any():
            warnings.warn(f"fastMRI file {files[i]!r}: skipping {int(blank.sum())} blank "
                          f"slice(s) at position(s) {positions[blank].tolist()}", stacklevel=2)
            kspace, image, positions = kspace[~blank], image[~blank], positions[~blank]
        if parts["kspace"] and kspace.shape[1] != parts["kspace"][0].shape[1]:
            raise UserInputError(
                f"mismatched shapes: {files[i]!r} has {kspace.shape[1]} coils, "
                f"{files[chosen[0]]!r} has {parts['kspace'][0].shape[1]}"
            )
        parts["kspace"].append(kspace)
        parts["image"].append(image)
        parts["position"].append(positions)
        parts["volume"].append(np.full(len(positions), i))
    n_slices = sum(len(p) for p in parts["position"])
    if n_slices == 0:
        raise UserInputError(
            f"split {split!r} of {os.fspath(path)!r} is empty ({len(files)} file(s)); use "
            "split='all', a smaller guard, or more files"
        )
    return {
        "kspace": np.concatenate(parts["kspace"]).astype(np.complex64),
        "image": np.concatenate(parts["image"]).astype(np.float32),
        "orientation": np.full(n_slices, -1, np.int32),
        "position": np.concatenate(parts["position"]).astype(np.int32),
        "volume": np.concatenate(parts["volume"]).astype(np.int32),
    }
