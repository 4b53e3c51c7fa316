"""Train state: parameters, optimiser state and the non-parameter Flax collections.

A Flax linen model keeps more than parameters: ``batch_stats`` of batch normalisation, and in
jaxmri the power-iteration vectors of spectral normalisation in a collection named
``'spectral'``. :class:`TrainState` carries all of them as ``model_state`` (a plain
``dict[str, pytree]`` keyed by collection name) next to the parameters and the optimiser state,
so that one pytree is what the training loop replicates, checkpoints and restores.

A method's ``train_step`` applies the model with every non-parameter collection mutable and
stores the updated collections back, e.g.::

    out, new_model_state = state.apply_fn(
        state.variables(params), x, mutable=list(state.model_state))
    state = apply_mean_gradients(state, grads, model_state=new_model_state)

Collections that depend on the local batch (``batch_stats``) must also be averaged across
devices (``pmean_tree`` from :mod:`jaxmri.train.loop`, or ``nn.BatchNorm(axis_name=...)``) so
that the replicas stay identical; collections computed from the parameters alone (spectral
power iterations without per-device randomness) are identical on every device by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import optax
from flax import struct
from flax.training import train_state

__all__ = ["TrainState", "create_train_state"]


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` plus ``model_state``.

    Attributes:
      step: int32 scalar, number of optimiser updates applied (``apply_gradients`` counts it).
      apply_fn: the module's ``apply`` (static, not a pytree leaf).
      params: the ``'params'`` collection.
      tx: the optax transformation (static).
      opt_state: the optimiser state.
      model_state: ``dict`` of every other Flax collection, e.g.
        ``{'batch_stats': ..., 'spectral': ...}``; empty for a model without any.
    """

    model_state: dict[str, Any] = struct.field(default_factory=dict)

    def variables(self, params: Any = None) -> dict[str, Any]:
        """Variables for ``apply_fn``: ``{'params': params, **model_state}``.

        ``params`` defaults to ``self.params``; pass the traced parameters inside a loss
        function so that gradients flow through them.
        """
        return {"params": self.params if params is None else params, **self.model_state}


def create_train_state(
    module: nn.Module, tx: optax.GradientTransformation, variables: Mapping[str, Any]
) -> TrainState:
    """Build a :class:`TrainState` from ``module.init(...)`` output.

    Args:
      module: the Flax linen module; its ``apply`` becomes ``apply_fn``.
      tx: optax transformation (schedules live inside it, e.g. ``optax.adam(schedule)``).
      variables: the mapping returned by ``module.init``; must hold ``'params'``. Every other
        collection goes to ``model_state``.

    Returns:
      ``TrainState`` with ``step == 0`` and ``opt_state = tx.init(params)``.
    """
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"variables must be the mapping returned by module.init, got {type(variables).__name__}"
        )
    if "params" not in variables:
        raise ValueError(
            f"variables must contain a 'params' collection, got collections {sorted(variables)}"
        )
    model_state = {name: value for name, value in variables.items() if name != "params"}
    return TrainState.create(
        apply_fn=module.apply, params=variables["params"], tx=tx, model_state=model_state
    )
