"""jaxmri: five deep-learning MRI reconstruction papers in one functional JAX/Flax core.

Conventions used everywhere in the package
------------------------------------------
* Images are ``(..., H, W)`` arrays. Complex MR images and k-space are ``complex64``; magnitude
  images are ``float32``. Any number of leading batch axes is allowed unless a docstring says
  otherwise.
* Multi-coil data put the coil axis just before the image axes: ``(..., C, H, W)``.
* k-space is centred: the DC sample sits at index ``(H // 2, W // 2)`` (fastMRI convention,
  ``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``).
* Sampling masks are ``float32`` arrays of 0/1 values with shape ``(H, W)`` (or broadcastable to
  the k-space); Cartesian masks select whole phase-encode columns (the last axis, ``W``).
* Neural networks see images as NHWC real arrays; a complex image becomes two channels
  (real, imag) via :func:`jaxmri.nn.complex_to_channels`.
* Anything random takes a ``jax.random`` key (or, for host-side data code, a
  ``numpy.random.Generator``) as its first argument; there is no global RNG state.

Sub-packages: :mod:`jaxmri.physics` (forward models), :mod:`jaxmri.metrics` (image quality),
:mod:`jaxmri.nn` (Flax building blocks), :mod:`jaxmri.models` (one module per method),
:mod:`jaxmri.data` (readers and sample construction), :mod:`jaxmri.train` (the one training loop),
:mod:`jaxmri.cpu` (opt-in XLA:CPU settings and convolution; importing jaxmri changes nothing
global).
"""

__version__ = "0.1.0"
