"""MRI physics as pure JAX functions: FFT, masks, SENSE, data consistency, degradations.

Everything here follows the package conventions (``jaxmri/__init__.py``): complex64 images
``(..., H, W)``, coils ``(..., C, H, W)``, centred k-space, float32 0/1 masks. The operators are
jit- and vmap-able and differentiable; mask generation runs on the host (numpy) and is
deterministic given its ``rng``.

* :mod:`~jaxmri.physics.fft`: ``fft2c`` / ``ifft2c`` (fastMRI's centred orthonormal FFT).
* :mod:`~jaxmri.physics.masks`: fastMRI random/equispaced column masks, Gaussian Cartesian,
  2-D variable-density random, pseudo-radial and Poisson-disc masks.
* :mod:`~jaxmri.physics.sense`: ``A = M F S`` and its adjoint/normal operator, RSS and SENSE
  coil combination, simulated birdcage coil maps, ESPIRiT, conjugate gradient and CG-SENSE.
* :mod:`~jaxmri.physics.consistency`: hard, soft (DC-CNN) and proximal (IFR-Net eq. 6) data
  consistency, and ``image_dc`` in image space.
* :mod:`~jaxmri.physics.degrade`: k-space crop / zero-pad, Fermi filter, Gaussian blur, bicubic
  resize, complex Gaussian and Rician noise, and the one sampling-grid convention that crop,
  zero-pad and resize share (``grid_position``: pixel ``n // 2`` of every grid is the FFT origin).

Imported from their submodules (used by one or two papers):

* :mod:`~jaxmri.physics.cs`: Haar wavelets, L1-wavelet FISTA and total-variation (primal-dual)
  compressed sensing (paper 003).
* :mod:`~jaxmri.physics.dlmri`: DLMRI, CS with a dictionary learned by K-SVD from the image
  being reconstructed, with its patch, OMP and K-SVD parts (paper 003's baseline).
* :mod:`~jaxmri.physics.lowres`: kernel downsampling, k-space low-resolution and the simulated
  "scanner" low-resolution acquisition (paper 001).
"""

from jaxmri.physics.consistency import hard_dc, image_dc, projection_dc, proximal_dc, soft_dc
from jaxmri.physics.degrade import (
    bicubic_resize,
    complex_gaussian_noise,
    fermi_filter,
    gaussian_blur,
    grid_position,
    kspace_crop,
    kspace_zero_pad,
    rician_noise,
)
from jaxmri.physics.fft import fft2c, ifft2c
from jaxmri.physics.masks import (
    as_numpy_generator,
    equispaced_column_mask,
    equispaced_fraction_column_mask,
    gaussian_cartesian_mask,
    poisson_disc_mask,
    pseudo_radial_lines,
    pseudo_radial_mask,
    random_column_mask,
    variable_density_random_mask,
)
from jaxmri.physics.sense import (
    CGResult,
    cg_sense,
    conjugate_gradient,
    espirit_maps,
    rss,
    sense_adjoint,
    sense_combine,
    sense_forward,
    sense_normal,
    simulate_coil_maps,
)

__all__ = [
    "fft2c", "ifft2c",
    "as_numpy_generator", "random_column_mask", "equispaced_column_mask",
    "equispaced_fraction_column_mask",
    "gaussian_cartesian_mask", "variable_density_random_mask", "pseudo_radial_mask",
    "pseudo_radial_lines", "poisson_disc_mask",
    "sense_forward", "sense_adjoint", "sense_normal", "rss", "sense_combine",
    "simulate_coil_maps", "espirit_maps", "CGResult", "conjugate_gradient", "cg_sense",
    "hard_dc", "soft_dc", "proximal_dc", "image_dc", "projection_dc",
    "kspace_crop", "kspace_zero_pad", "fermi_filter", "gaussian_blur", "bicubic_resize",
    "grid_position",
    "complex_gaussian_noise", "rician_noise",
]
