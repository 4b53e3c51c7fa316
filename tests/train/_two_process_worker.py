"""Tiny training run used by the two-process test (run as a script) and its reference (imported).

As a script: ``python _two_process_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID WORKDIR OUT``
joins a multi-process CPU run with one device per process, trains, and writes the final
parameters to ``OUT`` (an .npz file) together with ``jax.device_count()``.

The problem draws per-device input noise from the step key, so that the test also checks that
every process folds keys the same way as a single process with as many devices.
"""

from __future__ import annotations

import os
import sys

GLOBAL_BATCH = 8
NUM_STEPS = 6


def initial_state():
    """A 2-layer MLP and its Adam state, initialised from a fixed key."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmri.train.state import create_train_state

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))

    model = MLP()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 3), jnp.float32))
    return create_train_state(model, optax.adam(0.05), variables)


def run(workdir: str):
    """Train the MLP on a fixed synthetic regression; return the final TrainState."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmri.train.loop import apply_mean_gradients, fit

    state = initial_state()
    weights = np.array([[1.0], [-2.0], [0.5]], np.float32)

    def batch_fn(step):
        x = np.random.default_rng(step).normal(size=(GLOBAL_BATCH, 3)).astype(np.float32)
        return {"x": x, "y": np.sin(x @ weights)}

    def train_step(state, batch, key):
        x = batch["x"] + 0.1 * jax.random.normal(key, batch["x"].shape)

        def loss_fn(params):
            return jnp.mean((state.apply_fn({"params": params}, x) - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_mean_gradients(state, grads), {"loss": loss}

    return fit(
        train_step=train_step,
        state=state,
        batch_fn=batch_fn,
        num_steps=NUM_STEPS,
        key=jax.random.key(42),
        workdir=workdir,
        checkpoint_every=3,
        log_every=1,
    )


def main(coordinator: str, num_processes: int, process_id: int, workdir: str, out: str) -> None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ["JAXMRI_NO_PROGRESS"] = "1"
    import jax
    import numpy as np

    from jaxmri.train.distributed import initialize

    initialize(coordinator, num_processes, process_id)
    state = run(workdir)
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
    }
    np.savez(out, device_count=jax.device_count(), process_index=jax.process_index(), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
