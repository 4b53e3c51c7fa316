"""Standalone benchmark scripts: ``python -m benchmarks.NAME`` (see each module).

Every script here is an entry point, so the package applies jaxmri's XLA:CPU settings
(:func:`jaxmri.cpu.configure`) before any benchmark starts JAX: the numbers are those of the
library as the experiments run it (``JAXMRI_XLA_DEFAULTS=0`` measures jaxlib's own defaults
instead). The networks convolve with :func:`jaxmri.cpu.conv_for`'s choice, as the experiments do.
"""

import jaxmri.cpu

jaxmri.cpu.configure()
