"""Deep equilibrium solve with Jacobian-free backpropagation (JFB).

A deep equilibrium model defines its output as the fixed point ``u* = T(params, u*, d)`` of a
layer ``T`` (Bai et al. 2019). Jacobian-free backpropagation (Fung et al. 2022, "JFB: Jacobian-
free backpropagation for implicit networks") trains it without solving the adjoint equation:

1. forward, without gradients: iterate ``u <- T(params, u, d)`` from ``u0`` in a
   ``lax.while_loop`` until the relative step ``||u_k - u_{k-1}|| / ||u_k|| <= tol`` or
   ``max_iter`` applications;
2. one differentiable application at the stop-gradient fixed point,
   ``out = T(params, stop_gradient(u*), d)``.

Gradients therefore flow through that single application only: they equal
``jax.grad`` of ``T(params, stop_gradient(u*), d)``, i.e. the implicit-function gradient with the
inverse Jacobian ``(I - dT/du)^{-1}`` replaced by ``I`` (a descent direction when ``T`` is a
contraction). Memory does not grow with the number of iterations. ``lax.while_loop`` is not
reverse-differentiable, which is why everything entering the loop is wrapped in
``stop_gradient`` (the loop then carries no tangents).

The residual reported in :class:`DEQInfo` is the stopping quantity of the last iteration
(norms over all elements, batch included, so the whole batch iterates until its slowest
member converges; ``||u||`` is floored at the smallest normal float so ``u = 0`` cannot
divide by zero).

``T`` is any pure function ``T(params, u, *args) -> u`` with ``u`` a real or complex array
and ``params`` / ``args`` pytrees; everything works under ``jit``, ``vmap`` and ``pmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["DEQInfo", "deq_fixed_point"]

PyTree = Any


class DEQInfo(NamedTuple):
    """Diagnostics of :func:`deq_fixed_point` (no gradients).

    Attributes:
      num_iter: int32 scalar, applications of ``T`` in the forward solve (``<= max_iter``).
      residual: float32 scalar, the last relative step ``||u_k - u_{k-1}|| / ||u_k||``.
    """

    num_iter: jax.Array
    residual: jax.Array


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.real(x * jnp.conj(x))))


def deq_fixed_point(
    layer: Callable[..., jax.Array],
    params: PyTree,
    u0: jax.Array,
    *args: PyTree,
    tol: float = 1e-3,
    max_iter: int = 20,
) -> tuple[jax.Array, DEQInfo]:
    """Fixed point of ``u = layer(params, u, *args)``, differentiated by JFB.

    Args:
      layer: pure ``layer(params, u, *args) -> u`` (same shape and dtype as ``u``).
      params: pytree of parameters; gradients reach it through the final application only.
      u0: starting point of the iteration, any shape, real or complex floating dtype.
      *args: further inputs of ``layer`` (data, operators' arrays); gradients reach them through
        the final application only.
      tol: relative-step tolerance ``>= 0`` (0 runs exactly ``max_iter`` iterations).
      max_iter: maximum number of applications of ``layer`` in the solve, Python int ``>= 1``.

    Returns:
      ``(layer(params, stop_gradient(u*), *args), DEQInfo(num_iter, residual))``: the output is
      one application past the fixed-point estimate ``u*``.
    """
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    u0 = jnp.asarray(u0)
    if not jnp.issubdtype(u0.dtype, jnp.inexact):
        raise TypeError(f"u0 must have a floating or complex dtype, got {u0.dtype}")
    fixed_params, fixed_args = lax.stop_gradient((params, args))
    tiny = jnp.finfo(jnp.real(u0).dtype).tiny

    def cond(carry):
        k, _, residual = carry
        return (k < max_iter) & (residual > tol)

    def body(carry):
        k, u, _ = carry
        u_next = layer(fixed_params, u, *fixed_args)
        residual = _norm(u_next - u) / jnp.maximum(_norm(u_next), tiny)
        return k + 1, u_next, residual.astype(jnp.float32)

    start = (jnp.asarray(0, jnp.int32), lax.stop_gradient(u0), jnp.asarray(jnp.inf, jnp.float32))
    num_iter, u_star, residual = lax.while_loop(cond, body, start)
    out = layer(params, lax.stop_gradient(u_star), *args)
    return out, DEQInfo(num_iter, residual)
