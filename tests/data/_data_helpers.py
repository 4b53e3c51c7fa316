"""Small synthetic volumes, NIfTI files and fastMRI k-space shared by the data tests.

Imported by the test modules as ``_data_helpers`` (pytest puts this folder on ``sys.path``).
"""

import nibabel as nib
import numpy as np


def np_fft2c(x):
    """Centred orthonormal FFT in plain numpy (independent of jaxmri.physics)."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def np_ifft2c(k):
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), norm="ortho"), axes=axes)


def ellipsoid_volume(shape=(30, 36, 44), centre=None, radii=(10, 13, 17)):
    """A smooth ellipsoidal 'head' in a zero background, with an inner brighter core."""
    centre = [n / 2 for n in shape] if centre is None else centre
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    vol = np.where(r2 <= 1.0, 0.5 + 0.5 * np.exp(-2 * r2) + 0.1 * np.sin(grids[0] / 3), 0.0)
    return vol.astype(np.float32)


def write_nifti(path, volume, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(volume), np.eye(4) if affine is None else affine), path)
    return path


def random_kspace(rng, slices, coils, height, width):
    """k-space of smooth random coil images (complex64); ``coils=None`` for single-coil."""
    shape = (slices, height, width) if coils is None else (slices, coils, height, width)
    images = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    yy, xx = np.meshgrid(np.arange(height) - height / 2, np.arange(width) - width / 2,
                         indexing="ij")
    envelope = np.exp(-(yy**2 + xx**2) / (0.1 * height * width)) + 0.05
    return np_fft2c(images * envelope).astype(np.complex64)
