"""Test-suite set-up.

pmap tests need several devices: on a CPU-only machine XLA exposes one device unless asked for
more, so the flag is set here, before JAX is imported by any test module.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
# Keep JAX deterministic and quiet on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
