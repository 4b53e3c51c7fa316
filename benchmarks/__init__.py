"""Standalone benchmark scripts: ``python -m benchmarks.NAME`` (see each module).

``jaxmri`` is imported first so that its XLA:CPU settings (:mod:`jaxmri.xla_defaults`) are in
place before any benchmark starts JAX: the numbers are those of the library as users run it
(``JAXMRI_XLA_DEFAULTS=0`` measures jaxlib's own defaults instead).
"""

import jaxmri  # noqa: F401
