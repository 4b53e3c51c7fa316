"""Multi-process (multi-host) start-up: one call before anything else touches JAX devices.

Every process of a run calls :func:`initialize` with the same ``coordinator`` (``host:port`` of
process 0, reachable from all) and ``num_processes``, and its own ``process_id``. Afterwards
``jax.devices()`` lists the devices of all processes, ``jax.local_devices()`` this process's,
and :func:`jaxmri.train.loop.fit` splits each global batch across processes and averages
gradients across all devices.

On CPU the cross-process collectives need an implementation: JAX's ``gloo`` (selected with the
``jax_cpu_collectives_implementation`` option). It is set before initialising; the option only
concerns the CPU backend and leaves GPU/TPU runs unchanged.
"""

from __future__ import annotations

import jax

__all__ = ["initialize", "parse_coordinator"]


def parse_coordinator(coordinator: str) -> tuple[str, int]:
    """Split ``'host:port'`` into ``(host, port)``; ``ValueError`` naming ``coordinator``."""
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator must be 'host:port' with a port in 1..65535, got {coordinator!r}"
        )
    return host, int(port)


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process JAX run (``jax.distributed.initialize``) with CPU collectives on.

    Args:
      coordinator: ``'host:port'`` where process 0 listens and every process connects.
      num_processes: total number of processes (>= 1).
      process_id: this process's index in ``[0, num_processes)``; process 0 is the coordinator.

    Must run before any JAX computation or device query in this process.
    """
    parse_coordinator(coordinator)
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    if isinstance(process_id, bool) or not isinstance(process_id, int):
        raise ValueError(f"process_id must be an int, got {process_id!r}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
