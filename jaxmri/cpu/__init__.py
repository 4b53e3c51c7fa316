"""Everything in jaxmri that exists for XLA:CPU's speed, opt-in; nothing here runs by default.

* :func:`configure`: XLA:CPU runtime settings (convolutions on XLA's multi-threaded Eigen
  kernels; a step's temporary buffers reused instead of page-faulted in again on every call).
  ``import jaxmri`` changes nothing global; call this first thing in a script that trains on the
  CPU, before the first JAX computation (the experiment and benchmark entry points do).
* :data:`conv_general_dilated`: a ``lax.conv_general_dilated``-compatible convolution with the
  same values and faster XLA:CPU gradients (:mod:`jaxmri.cpu.conv`). Models take their
  convolution as a value (the ``conv_general_dilated`` field of every network, default
  ``lax.conv_general_dilated``); :func:`conv_for` picks this one for a CPU device.

On GPU and TPU every model runs plain XLA: nothing in this package is used there. This package
is the only place in jaxmri that looks at a backend or platform.

Example::

    import jaxmri.cpu
    jaxmri.cpu.configure()                      # before JAX starts
    import jax
    from jaxmri.nn.edsr import EDSR
    model = EDSR(conv_general_dilated=jaxmri.cpu.conv_for(jax.devices()[0]))
"""

from __future__ import annotations

import jax
from jax import lax

from jaxmri.cpu.conv import CpuConvolution, add_bias, conv_general_dilated, conv_plan
from jaxmri.cpu.settings import configure

__all__ = ["configure", "conv_general_dilated", "conv_for", "add_bias", "conv_plan",
           "CpuConvolution"]


def conv_for(device: jax.Device | None = None):
    """The convolution implementation for computations on ``device``.

    Args:
      device: a ``jax.Device``; ``None`` for JAX's first default device (``jax.devices()[0]``,
        which starts JAX's backend).

    Returns:
      :data:`conv_general_dilated` (the XLA:CPU one) for a CPU device, else
      ``lax.conv_general_dilated``.
    """
    device = jax.devices()[0] if device is None else device
    return conv_general_dilated if device.platform == "cpu" else lax.conv_general_dilated
