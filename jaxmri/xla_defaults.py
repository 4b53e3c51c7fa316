"""XLA:CPU settings jaxmri applies when it is imported, and how to opt out.

Why: jaxlib 0.10 hands every convolution on the CPU to YNNPACK (``__ynn_fusion``), which runs a
convolution on one thread. XLA's own convolution (Eigen) uses every core. On the 2-core CPU
machine the benchmarks run on (``python -m benchmarks.conv_layers``), turning YNNPACK off for
convolutions makes a 3x3 conv forward 1.5-1.7x and its weight gradient 2.2-2.6x faster at
32-64 channels, and it was the largest part of taking the conv-heavy training steps from
1.12-1.50x PyTorch's step time to 0.9-1.25x (``python -m benchmarks.step_time``; the README's
Performance section has the table). Matrix products keep YNNPACK (the XLA default for dots).

How: XLA reads ``XLA_FLAGS`` once, when the first JAX computation starts its backend, so the
flag is added to the environment at import time, before any array exists. It is added only
when all of these hold, so a user's choice always wins and an unknown flag can never abort XLA:

* ``JAXMRI_XLA_DEFAULTS`` is not ``0``;
* ``XLA_FLAGS`` does not already set ``--xla_cpu_experimental_ynn_fusion_type``;
* the installed jaxlib is a version on which the flag was verified (:data:`VERIFIED_JAXLIB`);
* the JAX backend has not started yet (otherwise the flag could no longer take effect; a
  warning says so).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import MutableMapping

#: Keep YNNPACK for individual dot products only (XLA's own default for dots), so convolutions
#: go to XLA's multi-threaded Eigen kernels.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
_FLAG_NAME = CPU_CONV_FLAG.split("=", 1)[0]

#: ``(major, minor)`` jaxlib releases on which the flag exists and was measured to help.
VERIFIED_JAXLIB = ((0, 10),)

OPT_OUT_VARIABLE = "JAXMRI_XLA_DEFAULTS"


def _jaxlib_minor() -> tuple[int, int] | None:
    """``(major, minor)`` of the installed jaxlib, or ``None`` if it cannot be read."""
    try:
        from jaxlib import version
    except ImportError:
        return None
    try:
        major, minor = version.__version__.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _backend_started() -> bool:
    """Whether JAX has already created its backends (after which ``XLA_FLAGS`` is ignored)."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - JAX is a hard dependency
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else False


def cpu_flags_to_add(environ: MutableMapping[str, str], jaxlib_minor: tuple[int, int] | None
                     ) -> list[str]:
    """The flags :func:`apply` would append to ``environ["XLA_FLAGS"]`` (pure; no side effects).

    Args:
      environ: the process environment (or a dict standing in for it).
      jaxlib_minor: ``(major, minor)`` of the installed jaxlib, ``None`` if unknown.

    Returns:
      ``[CPU_CONV_FLAG]`` or ``[]`` (opted out, flag already set, or unverified jaxlib).
    """
    if environ.get(OPT_OUT_VARIABLE, "1").strip() == "0":
        return []
    if _FLAG_NAME in environ.get("XLA_FLAGS", ""):
        return []
    if jaxlib_minor not in VERIFIED_JAXLIB:
        return []
    return [CPU_CONV_FLAG]


def apply(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Append jaxmri's XLA:CPU defaults to ``XLA_FLAGS``; returns the flags it added.

    Called once by ``import jaxmri``. Other flags in ``XLA_FLAGS`` (for example
    ``--xla_force_host_platform_device_count``) are kept.
    """
    environ = os.environ if environ is None else environ
    flags = cpu_flags_to_add(environ, _jaxlib_minor())
    if not flags:
        return []
    if _backend_started():
        warnings.warn(
            "jaxmri was imported after JAX started its backend, so its faster CPU convolution "
            f"setting could not be applied. Import jaxmri first, or set XLA_FLAGS={CPU_CONV_FLAG} "
            f"yourself ({OPT_OUT_VARIABLE}=0 silences this).", RuntimeWarning, stacklevel=3)
        return []
    environ["XLA_FLAGS"] = " ".join(filter(None, [environ.get("XLA_FLAGS", "").strip(), *flags]))
    return flags
