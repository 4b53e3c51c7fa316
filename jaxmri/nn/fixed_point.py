"""Fixed-point inversion of residual maps ``y = x + g(x)``, with the gradient method as a value.

Given a pure function ``g(params, x)`` that is a contraction in ``x`` (Lipschitz constant
``L < 1``), the equation ``x + g(params, x) = y`` has exactly one solution ``x*`` (Banach), and the
iteration ``x_{k+1} = y - g(params, x_k)`` from ``x_0 = y`` converges to it geometrically:
``||x_{k+1} - x_k|| <= L ||x_k - x_{k-1}||`` and ``||x* - x_n|| <= L / (1 - L) ||x_n - x_{n-1}||``.
This is how invertible residual networks (iResNet) invert a block.

How gradients reach ``y`` and ``params`` is chosen by the caller with a *mode value*:

* :class:`Implicit` iterates until the relative step is below ``tol`` in a ``lax.while_loop``
  and differentiates the *solution* by the implicit function theorem (the backward pass solves
  the adjoint fixed point below; memory does not grow with the number of iterations). When
  ``max_iter <= 16`` the adjoint solve is unrolled at trace time with a convergence mask
  (:func:`fixed_point_iterate_unrolled`, same result), because XLA:CPU runs JAX's transposed
  convolutions inside a while loop many times slower (jaxmri's own convolutions transpose to
  canonical ones that are fast in loops too, so longer solves of jaxmri networks are fast; a
  ``g`` written with plain ``lax`` convolutions is not).
* :class:`Unrolled` runs a fixed number of iterations and lets ordinary autodiff differentiate
  through them: the gradient of the truncated iteration, which is what InvSharpNet trains with
  (2 iterations).

Both modes are frozen dataclasses, hashable, so they can be static arguments of ``jax.jit``.

Residual (reported in :class:`FixedPointInfo` and used as the stopping rule):
``residual = ||x_n - x_{n-1}||_2 / ||y||_2``, the last fixed-point step relative to the right-hand
side, with norms over *all* elements of the arrays (batch included, so one slow example keeps the
whole batch iterating). ``||y||`` is floored at the dtype's smallest normal number so ``y = 0``
cannot divide by zero. The equation residual of the returned point is smaller still:
``||x_n + g(x_n) - y|| = ||g(x_n) - g(x_{n-1})|| <= L ||x_n - x_{n-1}||``.

Shapes and dtypes: ``y`` is any real floating array; ``x`` has the shape and dtype of ``y``;
``params`` is any pytree of arrays. Everything works under ``jit``, ``vmap`` and ``pmap``. Only
reverse mode (``grad``/``vjp``) is supported through :class:`Implicit` (it is a ``custom_vjp``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "Implicit",
    "Unrolled",
    "FixedPointInfo",
    "invert_residual",
    "fixed_point_iterate",
    "fixed_point_iterate_unrolled",
]

PyTree = Any
ResidualFn = Callable[[PyTree, jax.Array], jax.Array]
# Unrolled inversions, and implicit adjoint solves, of at most this many iterations are unrolled
# at trace time.
_PYTHON_LOOP_MAX = 16


@dataclasses.dataclass(frozen=True)
class Implicit:
    """Iterate to convergence; differentiate by the implicit function theorem.

    Attributes:
      tol: stop when the relative step ``||x_{k+1} - x_k|| / ||y||`` is ``<= tol``. The adjoint
        solve of the backward pass uses the same rule relative to ``||xbar||``.
      max_iter: hard cap on iterations, forward and backward (each), >= 1.
    """

    tol: float = 1e-6
    max_iter: int = 100

    def __post_init__(self):
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter}")


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """Run exactly ``num_iter`` iterations from ``x_0 = y``; differentiate by plain autodiff.

    Attributes:
      num_iter: number of fixed-point iterations, >= 1 (InvSharpNet uses 2).
    """

    num_iter: int = 2

    def __post_init__(self):
        if int(self.num_iter) != self.num_iter or self.num_iter < 1:
            raise ValueError(f"num_iter must be an int >= 1, got {self.num_iter}")


GradientMode = Implicit | Unrolled


class FixedPointInfo(NamedTuple):
    """Diagnostics of one solve (not differentiated).

    Attributes:
      num_iter: int32 scalar, the number of evaluations of ``g`` (= iterations) performed.
      residual: float scalar, ``||x_n - x_{n-1}|| / ||y||`` of the last iteration.
    """

    num_iter: jax.Array
    residual: jax.Array



def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x)))


def _relative(step: jax.Array, scale: jax.Array) -> jax.Array:
    return step / jnp.maximum(scale, jnp.finfo(scale.dtype).tiny)


# ---------------------------------------------------------------------------------------------
# Pure core: no custom derivative rules here.
# ---------------------------------------------------------------------------------------------


def fixed_point_iterate(
    step_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    scale: jax.Array,
    tol: float,
    max_iter: int,
) -> tuple[jax.Array, FixedPointInfo]:
    """Iterate ``x <- step_fn(x)`` from ``x0`` in a ``lax.while_loop`` until converged.

    Stops after iteration ``n`` when ``||x_n - x_{n-1}|| / scale <= tol`` or ``n == max_iter``.
    Not reverse-differentiable (a while loop); :func:`invert_residual` wraps it in a custom VJP.

    Args:
      step_fn: the map to iterate, array -> array of the same shape and dtype.
      x0: starting point.
      scale: positive scalar the step norm is divided by.
      tol: relative tolerance.
      max_iter: maximum number of iterations (>= 1).

    Returns:
      ``(x_n, FixedPointInfo(n, ||x_n - x_{n-1}|| / scale))``.
    """

    def cond(carry):
        _, k, res = carry
        return (k < max_iter) & (res > tol)

    x, k, res = lax.while_loop(cond, _iteration(step_fn, scale), _initial(x0, scale))
    return x, FixedPointInfo(num_iter=k, residual=res)


def _initial(x0: jax.Array, scale: jax.Array) -> tuple:
    # (x, iterations done, last relative step): inf so that the first iteration always runs.
    return x0, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, dtype=scale.dtype)


def _iteration(step_fn: Callable[[jax.Array], jax.Array], scale: jax.Array) -> Callable:
    def body(carry):
        x, k, _ = carry
        x_new = step_fn(x)
        return x_new, k + 1, _relative(_norm(x_new - x), scale)

    return body


def fixed_point_iterate_unrolled(
    step_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    scale: jax.Array,
    tol: float,
    max_iter: int,
) -> tuple[jax.Array, FixedPointInfo]:
    """:func:`fixed_point_iterate` with the ``max_iter`` steps unrolled at trace time.

    Same arguments and results (the same ``x_n`` and ``n``): every step is computed, but once
    the tolerance is met the state is frozen by a select, so the result is the one the while
    loop stops at. For small ``max_iter`` only: the program grows with it.
    """
    body, carry = _iteration(step_fn, scale), _initial(x0, scale)
    for _ in range(max_iter):
        running = carry[2] > tol
        carry = jax.tree_util.tree_map(lambda new, old, r=running: jnp.where(r, new, old),
                                       body(carry), carry)
    x, k, res = carry
    return x, FixedPointInfo(num_iter=k, residual=res)


def _unrolled(g: ResidualFn, params: PyTree, y: jax.Array, num_iter: int):
    # A few iterations (the paper trains with 2) are unrolled at trace time: reverse-mode
    # autodiff of a scan over convolutions was 10x slower on XLA CPU (5.1 s vs 0.47 s for a
    # 4-block InvSharpNet backward step; 45 s vs 2.6 s at 16 iterations). Longer runs use
    # fori_loop (lowered to scan, so reverse-mode autodiff still works) to keep the traced
    # program small.
    if num_iter - 1 <= _PYTHON_LOOP_MAX:
        x_prev = y
        for _ in range(num_iter - 1):
            x_prev = y - g(params, x_prev)
    else:
        x_prev = lax.fori_loop(0, num_iter - 1, lambda _, x: y - g(params, x), y)
    x = y - g(params, x_prev)
    residual = lax.stop_gradient(_relative(_norm(x - x_prev), _norm(y)))
    return x, FixedPointInfo(num_iter=jnp.asarray(num_iter, jnp.int32), residual=residual)


# ---------------------------------------------------------------------------------------------
# The custom_vjp boundary.
#
# Everything the backward pass may differentiate with respect to must be an explicit argument of
# the custom_vjp function: ``args = (params, consts)`` and ``y``. ``consts`` are the arrays that
# ``g`` closes over (e.g. spectral power-iteration state, or traced values captured by a lambda);
# ``jax.closure_convert`` hoists them out so that no tracer hides inside the nondiff function
# argument (which custom_vjp forbids) and so that closed-over traced values get correct
# cotangents instead of being silently treated as constants. The function ``g`` itself and the
# mode are static (nondiff_argnums).
#
# Forward: the while-loop solve (pure core above); residuals saved for the backward pass are the
# solution ``x*`` and the inputs, not the iterates: memory is independent of the iteration count.
# Backward, for x* = y - g(args, x*) and incoming cotangent xbar:
#   (I + J_x)^T u = xbar   <=>   u = xbar - J_x^T u   (a contraction since ||J_x|| <= L < 1),
#   ybar = u,   argsbar = -(dg/dargs)^T u.
# The info output (iteration count, residual) is a diagnostic; its cotangent is ignored.
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _implicit_solve(g_conv, mode: Implicit, args, y):
    return _implicit_forward(g_conv, mode, args, y)


def _implicit_forward(g_conv, mode, args, y):
    params, consts = args
    return fixed_point_iterate(
        lambda x: y - g_conv(params, x, *consts),
        y,
        scale=_norm(y),
        tol=mode.tol,
        max_iter=mode.max_iter,
    )


def _implicit_fwd(g_conv, mode, args, y):
    x, info = _implicit_forward(g_conv, mode, args, y)
    return (x, info), (args, x)


def _implicit_bwd(g_conv, mode, saved, cotangents):
    args, x = saved
    xbar, _ = cotangents
    params, consts = args
    _, vjp_fn = jax.vjp(lambda a, z: g_conv(a[0], z, *a[1]), args, x)
    # XLA:CPU runs JAX's transposed convolutions about 30x slower inside a while loop than
    # unrolled (8 steps of a 32-channel 3x3 conv VJP at 4x48x48: 366 ms vs 11 ms), so short
    # adjoint solves are unrolled. jaxmri's convolutions (jaxmri.nn.layers.input_tangent_conv)
    # transpose to canonical ones, 11 ms in the loop as well: an InvSharpNet step with a
    # 32-iteration implicit inverse takes 1.7 s instead of 19.6 s.
    iterate = (fixed_point_iterate_unrolled if mode.max_iter <= _PYTHON_LOOP_MAX
               else fixed_point_iterate)
    u, _ = iterate(
        lambda u: xbar - vjp_fn(u)[1],
        xbar,
        scale=_norm(xbar),
        tol=mode.tol,
        max_iter=mode.max_iter,
    )
    args_bar = jax.tree_util.tree_map(jnp.negative, vjp_fn(u)[0])
    return args_bar, u


_implicit_solve.defvjp(_implicit_fwd, _implicit_bwd)


def invert_residual(
    g: ResidualFn, params: PyTree, y: jax.Array, *, mode: GradientMode
) -> tuple[jax.Array, FixedPointInfo]:
    """Solve ``x + g(params, x) = y`` for ``x`` by the iteration ``x <- y - g(params, x)``.

    Args:
      g: pure function ``g(params, x) -> array`` with the shape and dtype of ``x``; must be a
        contraction in ``x`` for the iteration to converge (Lipschitz constant ``L < 1``).
        It may close over arrays (including traced ones); their gradients are handled too.
      params: pytree of arrays passed to ``g``; gradients flow to it.
      y: real floating array of any shape (e.g. NHWC ``(N, H, W, C)``).
      mode: :class:`Implicit` (iterate to ``tol``, implicit-function gradient) or
        :class:`Unrolled` (fixed iteration count, autodiff through the iterations).

    Returns:
      ``(x, info)``: ``x`` with the shape and dtype of ``y``; ``info`` a :class:`FixedPointInfo`
      with the number of iterations and the final relative step (see the module docstring).
    """
    if not isinstance(mode, Implicit | Unrolled):
        raise TypeError(f"mode must be Implicit(...) or Unrolled(...), got {mode!r}")
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise TypeError(f"y must have a real floating dtype, got {y.dtype}")
    if isinstance(mode, Unrolled):
        return _unrolled(g, params, y, mode.num_iter)
    g_conv, consts = jax.closure_convert(g, params, y)
    x, info = _implicit_solve(g_conv, mode, (params, tuple(consts)), y)
    return x, FixedPointInfo(info.num_iter, lax.stop_gradient(info.residual))
