"""Test-suite set-up.

pmap tests need several devices: on a CPU-only machine XLA exposes one device unless asked for
more, so the flag is set here, before JAX is imported by any test module.
"""

import os
import subprocess
import sys

# The suite is compile-bound (hundreds of small programs, few steps each): LLVM optimisation
# level 0 compiles them a third faster (tests/models/test_models_refine.py: 74 s -> 50 s) and
# computes the same values (the whole suite also passes at the default level: 607 tests,
# 2026-11-21). Runs and benchmarks keep XLA's default optimisation.
_FLAGS = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
# XLA's legacy elemental CPU fusion emitter compiles the suite's programs about a third faster
# than the MLIR fusion emitters (the suite: 9:05 -> 6:12 on the 2-core machine, 2026-11-22) and
# computes the same values up to the last bit of float32 rounding (three tests compare jit with
# eager or two loop forms and allow that rounding; the whole suite passes with either emitter).
# XLA aborts the process on a flag it does not know, so the flag is only used when this jaxlib
# accepts it (probed once in a subprocess; xdist workers inherit the controller's XLA_FLAGS).
_COMPILE_FASTER = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flags: str) -> bool:
    """Whether a JAX process starts with ``XLA_FLAGS=flags`` (an unknown flag aborts it)."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                           capture_output=True, timeout=120, check=False)
    return probe.returncode == 0


if "XLA_FLAGS" not in os.environ:
    candidate = f"{_FLAGS} {_COMPILE_FASTER}"
    os.environ["XLA_FLAGS"] = candidate if _xla_accepts(candidate) else _FLAGS

# jaxmri.cpu.configure() (called by the experiments' and benchmarks' entry points, never on
# import) gives every convolution to XLA's multi-threaded Eigen kernels. The suite already runs two
# single-process workers on the two cores, and two workers each spinning two Eigen threads made it
# 15 % slower (10:22 vs ~9:00), so the tests keep jaxlib's kernels: the opt-out below makes any
# configure() call in the test processes a no-op. tests/cpu/test_cpu_settings.py and
# tests/test_import_side_effects.py check the settings in fresh subprocesses.
os.environ.setdefault("JAXMRI_XLA_DEFAULTS", "0")
# Keep JAX deterministic and quiet on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
