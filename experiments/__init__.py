"""One thin entry module per paper: ``python -m experiments.NAME --help``.

Importing this package (which ``python -m experiments.NAME`` does before the entry module)
sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the user set it: XLA then prints its C++ errors but not
its warnings. The warnings a run would print are the harmless ``heap_simulator.cc ... larger
than the per-heap size limit`` lines, one per large buffer under the temporary-heap cap that
:func:`jaxmri.cpu.configure` sets (about 400 in a joint_recsr cpu run). XLA reads the level
when jaxlib loads, so it has to be set here, before any entry module imports JAX. The library
(``jaxmri``) sets nothing on import.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
