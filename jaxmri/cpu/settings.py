"""XLA:CPU runtime settings, applied only by an explicit :func:`configure` call.

``import jaxmri`` changes nothing global. The experiment and benchmark entry points call
:func:`configure` after parsing their arguments and before JAX starts its backend; library users
who train on the CPU can do the same, first thing in their script::

    import jaxmri.cpu
    jaxmri.cpu.configure()   # before the first JAX computation

Two settings, both measured on the 2-core AMD EPYC machine of the README's Performance
section; the first also on its 2-core Intel Xeon.

**1. Convolutions on XLA's Eigen kernels.** jaxlib 0.10 hands every convolution on the CPU to
YNNPACK (``__ynn_fusion``), which runs a convolution of the presets' size on one thread (1.0
of 2 cores at 4x48x48x32; it parallelises only larger layers: 1.6 cores at 8x96x96x64). XLA's
own convolution (Eigen) uses every core. Turning YNNPACK off for convolutions makes a 3x3 conv
forward 1.5-1.7x (1.3-1.5x on the Intel machine) and its weight gradient 2.2-2.6x faster at
32-64 channels (``python -m benchmarks.conv_layers``), and it was the largest part of taking
the conv-heavy training steps from 1.12-1.50x PyTorch's step time to 0.9-1.25x (``python -m
benchmarks.step_time``). Matrix products keep YNNPACK (the XLA default for dots).

How: XLA reads ``XLA_FLAGS`` once, when the first JAX computation starts its backend, so
:func:`configure` must run before any array exists (a later call cannot change the flags; JAX has
no public way to ask whether its backend started, so this is not checked). The flag is added only
when all of these hold, so a user's choice always wins and an unknown flag can never abort XLA:

* ``JAXMRI_XLA_DEFAULTS`` is not ``0``;
* ``XLA_FLAGS`` does not already set that flag (``--xla_cpu_experimental_ynn_fusion_type``);
* the installed jaxlib is a version on which the flag was verified (:data:`VERIFIED_JAXLIB`).

**2. Reusing the memory of a step's temporaries.** Every call of a compiled XLA:CPU program
allocates its temporary buffers (for a training step: the activations kept for the backward
pass) and frees them when it returns. glibc's ``malloc`` serves a block over 32 MiB, and any
block a worker thread's arena cannot hold (64 MiB), with a fresh ``mmap``, and returns it with
``munmap``; the kernel then zero-fills every page again on first touch, on every step. The
InvSharpNet backward step (one 132 MB temporary) took 33,000 page faults per step, RecNet at
batch 8 9,000 (a third of its step time). So jaxmri

* caps each XLA temporary heap at 32 MiB (:data:`TEMP_HEAP_FLAG`, added to ``XLA_FLAGS`` under
  the same rules as the convolution flag), and
* asks glibc (Linux only, through ``mallopt``) to keep freed memory for reuse: no ``mmap`` for
  ``malloc``, no trimming, and a 128 MiB pad, which keeps a worker arena's extra heaps alive
  when they empty (:func:`malloc_options_to_set`). It is skipped when the user configured
  glibc's allocator (``MALLOC_*`` variables or ``glibc.malloc`` tunables).

The cost: the process keeps its peak heap (one per thread that has run steps) instead of giving
freed memory back to the system (the next step reuses it). After the warm-up steps the training
steps take no page faults. A single buffer larger than 32 MiB still gets a heap of its own, and
XLA logs a harmless warning for each when it compiles a program (``heap_simulator.cc ... Alloc
buffer size N larger than the per-heap size limit 33554432``; about 400 lines over the whole
joint Rec+SR cpu run, none in the refinement run); ``TF_CPP_MIN_LOG_LEVEL=2`` hides XLA's
warnings, and the experiment entry modules set it unless the user did (``experiments``).

Both settings are for XLA:CPU, and the temporary-heap cap is read by XLA's buffer assignment
on every backend, so :func:`configure` does nothing where JAX will run on an accelerator: when
a GPU or TPU plugin of jaxlib is installed and ``JAX_PLATFORMS`` does not restrict JAX to the
CPU (:func:`cpu_backend_expected`; this is decided without starting JAX).
``JAXMRI_XLA_DEFAULTS=0`` turns off both settings (the benchmarks then measure jaxlib's own
defaults).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import MutableMapping

#: Keep YNNPACK for individual dot products only (XLA's own default for dots), so convolutions
#: go to XLA's multi-threaded Eigen kernels.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
#: At most 32 MiB per XLA temporary heap, so that glibc keeps each one in reusable memory.
TEMP_HEAP_FLAG = "--xla_multiheap_size_constraint_per_heap=33554432"
_FLAGS = (CPU_CONV_FLAG, TEMP_HEAP_FLAG)

#: ``mallopt`` parameters (glibc ``malloc.h``) and the values jaxmri sets.
#: M_MMAP_MAX = 0: no malloc block is served by mmap (a worker arena still mmaps a block larger
#: than its 64 MiB heap, hence the 32 MiB cap above). M_TRIM_THRESHOLD = 2**31 - 1: never hand
#: freed memory at the top of the heap back. M_TOP_PAD = 128 MiB: glibc deletes an emptied
#: extra heap of a worker arena unless less than M_TOP_PAD would be freed by it, and an extra
#: heap is at most 64 MiB, so no heap is deleted (and the main heap grows 128 MiB at a time).
MALLOC_OPTIONS = {"M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, 2**31 - 1),
                  "M_TOP_PAD": (-2, 128 * 2**20)}

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


def cpu_flags_to_add(environ: MutableMapping[str, str], jaxlib_minor: tuple[int, int] | None
                     ) -> list[str]:
    """The flags :func:`configure` would append to ``environ["XLA_FLAGS"]`` (pure; no side effects).

    Args:
      environ: the process environment (or a dict standing in for it).
      jaxlib_minor: ``(major, minor)`` of the installed jaxlib, ``None`` if unknown.

    Returns:
      Those of :data:`CPU_CONV_FLAG` and :data:`TEMP_HEAP_FLAG` that ``XLA_FLAGS`` does not set
      already; ``[]`` when opted out or on an unverified jaxlib.
    """
    if _opted_out(environ) or jaxlib_minor not in VERIFIED_JAXLIB:
        return []
    current = environ.get("XLA_FLAGS", "")
    return [flag for flag in _FLAGS if flag.split("=", 1)[0] not in current]


def _opted_out(environ: MutableMapping[str, str]) -> bool:
    return environ.get(OPT_OUT_VARIABLE, "1").strip() == "0"


def malloc_options_to_set(environ: MutableMapping[str, str], libc: str, system: str
                          ) -> dict[str, tuple[int, int]]:
    """The ``mallopt`` calls :func:`configure` makes (pure): ``{name: (parameter, value)}``.

    Args:
      environ: the process environment (or a dict standing in for it).
      libc: ``platform.libc_ver()[0]`` (``"glibc"`` on most Linux systems).
      system: ``sys.platform``.

    Returns:
      :data:`MALLOC_OPTIONS`, or ``{}`` when opted out, not on Linux with glibc, or when the
      user configured glibc's allocator (a ``MALLOC_*`` variable or ``glibc.malloc`` tunable).
    """
    if _opted_out(environ) or not system.startswith("linux") or libc != "glibc":
        return {}
    if any(k.startswith("MALLOC_") for k in environ):
        return {}
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return {}
    return dict(MALLOC_OPTIONS)


def _set_malloc_options(options: dict[str, tuple[int, int]]) -> list[str]:
    """Call glibc's ``mallopt`` for each option; returns the names it accepted."""
    if not options:
        return []
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return []
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return [name for name, (param, value) in options.items() if mallopt(param, value) == 1]


def cpu_backend_expected(environ: MutableMapping[str, str]) -> bool:
    """Whether JAX's default backend will be the CPU, decided without starting JAX.

    True when ``JAX_PLATFORMS`` starts with ``cpu``, or when no accelerator plugin of jaxlib is
    installed (a ``jax_plugins`` entry point or module, e.g. the CUDA plugin, or ``libtpu``).
    """
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not _accelerator_plugins()


def _accelerator_plugins() -> list[str]:
    """Names of installed jaxlib accelerator plugins (what JAX would load at start-up)."""
    names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    try:
        import jax_plugins  # namespace package of the GPU plugins
    except ImportError:
        pass
    else:
        import pkgutil
        names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    return names


def configure(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Apply jaxmri's XLA:CPU settings; returns the ``XLA_FLAGS`` entries it added.

    Sets the glibc ``malloc`` options (they act at once, also after the backend started) and
    appends :data:`CPU_CONV_FLAG` and :data:`TEMP_HEAP_FLAG` to ``XLA_FLAGS``, which XLA reads
    when the first JAX computation starts its backend: call this before that. Other flags in
    ``XLA_FLAGS`` (for example ``--xla_force_host_platform_device_count``) are kept; a flag the
    user already set, ``JAXMRI_XLA_DEFAULTS=0``, a user-configured allocator or an unverified
    jaxlib each turn the corresponding setting off (see the module docstring). Does nothing
    when JAX will run on an accelerator (:func:`cpu_backend_expected`).

    Args:
      environ: the environment to edit; ``None`` for ``os.environ``.

    Returns:
      The flags added (``[]`` when none was).
    """
    environ = os.environ if environ is None else environ
    if not cpu_backend_expected(environ):
        return []
    _set_malloc_options(malloc_options_to_set(environ, platform.libc_ver()[0], sys.platform))
    flags = cpu_flags_to_add(environ, _jaxlib_minor())
    if flags:
        environ["XLA_FLAGS"] = " ".join(filter(None, [environ.get("XLA_FLAGS", "").strip(),
                                                      *flags]))
    return flags
