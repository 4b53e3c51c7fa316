"""Test-suite set-up.

pmap tests need several devices: on a CPU-only machine XLA exposes one device unless asked for
more, so the flag is set here, before JAX is imported by any test module.
"""

import os

# The suite is compile-bound (hundreds of small programs, few steps each): LLVM optimisation
# level 0 compiles them a third faster (tests/models/test_models_refine.py: 74 s -> 50 s) and
# computes the same values (the whole suite also passes at the default level: 607 tests,
# 2026-11-21). Runs and benchmarks keep XLA's default optimisation.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2 "
                      "--xla_backend_optimization_level=0")
# jaxmri's CPU default (jaxmri/xla_defaults.py) gives every convolution to XLA's multi-threaded
# Eigen kernels. The suite already runs two single-process workers on the two cores, and two
# workers each spinning two Eigen threads made it 15 % slower (10:22 vs ~9:00), so the tests keep
# jaxlib's kernels; tests/test_xla_defaults.py checks the default in fresh subprocesses, and the
# whole suite passed with it on (602 tests, 2026-11-21).
os.environ.setdefault("JAXMRI_XLA_DEFAULTS", "0")
# Keep JAX deterministic and quiet on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
