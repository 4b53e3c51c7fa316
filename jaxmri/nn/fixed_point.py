"""Fixed-point solves ``x = f(x)`` and inversion of residual maps ``y = x + g(x)``, with the
gradient method as a value (as optimistix does).

:func:`fixed_point` solves ``x = f(params, x, *args)`` from a starting point;
:func:`invert_residual` is the special case ``f(x) = y - g(x)`` from ``x_0 = y``. Both take the
same modes and return the same :class:`FixedPointInfo`.

Given a pure function ``g(params, x)`` that is a contraction in ``x`` (Lipschitz constant
``L < 1``), the equation ``x + g(params, x) = y`` has exactly one solution ``x*`` (Banach), and the
iteration ``x_{k+1} = y - g(params, x_k)`` from ``x_0 = y`` converges to it geometrically:
``||x_{k+1} - x_k|| <= L ||x_k - x_{k-1}||`` and ``||x* - x_n|| <= L / (1 - L) ||x_n - x_{n-1}||``.
This is how invertible residual networks (iResNet) invert a block.

How gradients reach ``y`` and ``params`` is chosen by the caller with a *mode value*:

* :class:`Implicit` iterates until the relative step is below ``tol`` in a ``lax.while_loop``
  and differentiates the *solution* by the implicit function theorem (the backward pass solves
  the adjoint fixed point below; memory does not grow with the number of iterations). With
  ``unroll_adjoint=True`` the adjoint solve is unrolled at trace time with a convergence mask
  (:func:`fixed_point_iterate_unrolled`, the same result; every one of the ``max_iter`` steps is
  computed): XLA:CPU runs JAX's transposed convolutions inside a while loop many times slower,
  so short solves on the CPU are faster unrolled.
* :class:`Unrolled` runs a fixed number of iterations and lets ordinary autodiff differentiate
  through them: the gradient of the truncated iteration, which is what InvSharpNet trains with
  (2 iterations).
* :class:`JacobianFree` (Jacobian-free backpropagation, Fung et al. 2022, as deep equilibrium
  models train): iterate to ``tol`` without gradients, then apply the map once more,
  differentiably, at the stop-gradient fixed point: ``x = f(params, stop_gradient(x*), *args)``.
  Gradients flow through that one application only: the implicit gradient with the inverse
  Jacobian ``(I - df/dx)^{-1}`` replaced by ``I`` (a descent direction when ``f`` is a
  contraction). Memory does not grow with the iteration count.

All modes are frozen dataclasses, hashable, so they can be static arguments of ``jax.jit``.

Residual (reported in :class:`FixedPointInfo` and used as the stopping rule): the last
fixed-point step relative to a scale, ``||x_n - x_{n-1}||_2 / scale``, with norms over *all*
elements of the arrays (batch included, so one slow example keeps the whole batch iterating).
:func:`invert_residual` divides by ``||y||`` (the right-hand side); :func:`fixed_point` by
``||x_n||`` (the current iterate) unless given a ``scale``. The scale is floored at the dtype's
smallest normal number so a zero cannot divide by zero. For :func:`invert_residual` the equation
residual of the returned point is smaller still:
``||x_n + g(x_n) - y|| = ||g(x_n) - g(x_{n-1})|| <= L ||x_n - x_{n-1}||``.

Shapes and dtypes: ``y`` (or ``x0``) is any floating array (complex too for :func:`fixed_point`);
``x`` has its shape and dtype; ``params`` is any pytree of arrays. Everything works under ``jit``,
``vmap`` and ``pmap``. Only reverse mode (``grad``/``vjp``) is supported through
:class:`Implicit` (it is a ``custom_vjp``).
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
    "JacobianFree",
    "FixedPointInfo",
    "fixed_point",
    "invert_residual",
    "fixed_point_iterate",
    "fixed_point_iterate_unrolled",
]

PyTree = Any
ResidualFn = Callable[[PyTree, jax.Array], jax.Array]
# Unrolled inversions of at most this many iterations are unrolled at trace time.
_PYTHON_LOOP_MAX = 16


@dataclasses.dataclass(frozen=True)
class Implicit:
    """Iterate to convergence; differentiate by the implicit function theorem.

    Attributes:
      tol: stop when the relative step ``||x_{k+1} - x_k|| / ||y||`` is ``<= tol``. The adjoint
        solve of the backward pass uses the same rule relative to ``||xbar||``.
      max_iter: hard cap on iterations, forward and backward (each), >= 1.
      unroll_adjoint: run the backward pass's adjoint solve as ``max_iter`` masked steps
        unrolled at trace time instead of a ``while_loop`` (the same result; faster on XLA:CPU
        for short solves, whose while loops run transposed convolutions slowly).
    """

    tol: float = 1e-6
    max_iter: int = 100
    unroll_adjoint: bool = False

    def __post_init__(self):
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter}")
        if not isinstance(self.unroll_adjoint, bool):
            raise TypeError(f"unroll_adjoint must be a bool, got {self.unroll_adjoint!r}")


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


@dataclasses.dataclass(frozen=True)
class JacobianFree:
    """Iterate to ``tol`` without gradients, then one differentiable application at the fixed
    point (Jacobian-free backpropagation, the deep-equilibrium training of paper 004).

    Attributes:
      tol: stop when the relative step is ``<= tol`` (``>= 0``; 0 runs exactly ``max_iter``).
      max_iter: hard cap on the iterations of the solve, >= 1. The result is one application
        past the last iterate, so ``f`` is evaluated ``num_iter + 1`` times.
    """

    tol: float = 1e-3
    max_iter: int = 20

    def __post_init__(self):
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter}")


GradientMode = Implicit | Unrolled | JacobianFree


class FixedPointInfo(NamedTuple):
    """Diagnostics of one solve (not differentiated).

    Attributes:
      num_iter: int32 scalar, the number of iterations performed (evaluations of the map in the
        solve; :class:`JacobianFree` applies it once more).
      residual: real float scalar, ``||x_n - x_{n-1}|| / scale`` of the last iteration.
    """

    num_iter: jax.Array
    residual: jax.Array



def _norm(x: jax.Array) -> jax.Array:
    """The 2-norm over all elements, real for real and complex ``x``."""
    if jnp.iscomplexobj(x):
        return jnp.sqrt(jnp.sum(jnp.real(x * jnp.conj(x))))
    return jnp.sqrt(jnp.sum(jnp.square(x)))


def _relative(step: jax.Array, scale: jax.Array) -> jax.Array:
    return step / jnp.maximum(scale, jnp.finfo(scale.dtype).tiny)


def _real_dtype(x: jax.Array):
    return jnp.finfo(x.dtype).dtype


# ---------------------------------------------------------------------------------------------
# Pure core: no custom derivative rules here.
# ---------------------------------------------------------------------------------------------


def fixed_point_iterate(
    step_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    scale: jax.Array | None,
    tol: float,
    max_iter: int,
) -> tuple[jax.Array, FixedPointInfo]:
    """Iterate ``x <- step_fn(x)`` from ``x0`` in a ``lax.while_loop`` until converged.

    Stops after iteration ``n`` when ``||x_n - x_{n-1}|| / scale <= tol`` or ``n == max_iter``.
    Not reverse-differentiable (a while loop); :func:`invert_residual` wraps it in a custom VJP.

    Args:
      step_fn: the map to iterate, array -> array of the same shape and dtype.
      x0: starting point.
      scale: positive scalar the step norm is divided by; ``None``: the new iterate's norm.
      tol: relative tolerance.
      max_iter: maximum number of iterations (>= 1).

    Returns:
      ``(x_n, FixedPointInfo(n, ||x_n - x_{n-1}|| / scale))``.
    """

    def cond(carry):
        _, k, res = carry
        return (k < max_iter) & (res > tol)

    x, k, res = lax.while_loop(cond, _iteration(step_fn, scale), _initial(x0))
    return x, FixedPointInfo(num_iter=k, residual=res)


def _initial(x0: jax.Array) -> tuple:
    # (x, iterations done, last relative step): inf so that the first iteration always runs.
    return x0, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, dtype=_real_dtype(x0))


def _iteration(step_fn: Callable[[jax.Array], jax.Array], scale: jax.Array | None) -> Callable:
    def body(carry):
        x, k, _ = carry
        x_new = step_fn(x)
        denominator = _norm(x_new) if scale is None else scale
        return x_new, k + 1, _relative(_norm(x_new - x), denominator).astype(_real_dtype(x))

    return body


def fixed_point_iterate_unrolled(
    step_fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    scale: jax.Array | None,
    tol: float,
    max_iter: int,
) -> tuple[jax.Array, FixedPointInfo]:
    """:func:`fixed_point_iterate` with the ``max_iter`` steps unrolled at trace time.

    Same arguments and results (the same ``x_n`` and ``n``): every step is computed, but once
    the tolerance is met the state is frozen by a select, so the result is the one the while
    loop stops at. For small ``max_iter`` only: the program grows with it.
    """
    body, carry = _iteration(step_fn, scale), _initial(x0)
    for _ in range(max_iter):
        running = carry[2] > tol
        carry = jax.tree_util.tree_map(lambda new, old, r=running: jnp.where(r, new, old),
                                       body(carry), carry)
    x, k, res = carry
    return x, FixedPointInfo(num_iter=k, residual=res)


def _unrolled(f: Callable, params: PyTree, x0: jax.Array, args: tuple, num_iter: int,
              scale: jax.Array | None):
    # A few iterations (the paper trains with 2) are unrolled at trace time: reverse-mode
    # autodiff of a scan over convolutions was 10x slower on XLA CPU (5.1 s vs 0.47 s for a
    # 4-block InvSharpNet backward step; 45 s vs 2.6 s at 16 iterations). Longer runs use
    # fori_loop (lowered to scan, so reverse-mode autodiff still works) to keep the traced
    # program small.
    if num_iter - 1 <= _PYTHON_LOOP_MAX:
        x_prev = x0
        for _ in range(num_iter - 1):
            x_prev = f(params, x_prev, *args)
    else:
        x_prev = lax.fori_loop(0, num_iter - 1, lambda _, x: f(params, x, *args), x0)
    x = f(params, x_prev, *args)
    denominator = _norm(x) if scale is None else scale
    residual = lax.stop_gradient(_relative(_norm(x - x_prev), denominator))
    return x, FixedPointInfo(num_iter=jnp.asarray(num_iter, jnp.int32), residual=residual)


def _jacobian_free(f: Callable, params: PyTree, x0: jax.Array, args: tuple, mode: JacobianFree,
                   scale: jax.Array | None):
    fixed_params, fixed_args = lax.stop_gradient((params, args))
    # Everything entering the while loop is under stop_gradient: it carries no tangents.
    x_star, info = fixed_point_iterate(
        lambda x: f(fixed_params, x, *fixed_args), lax.stop_gradient(x0),
        scale=None if scale is None else lax.stop_gradient(scale), tol=mode.tol,
        max_iter=mode.max_iter)
    return f(params, lax.stop_gradient(x_star), *args), info


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _implicit_solve(f_conv, mode: Implicit, relative_to_iterate: bool, args, x0, scale):
    return _implicit_forward(f_conv, mode, relative_to_iterate, args, x0, scale)


def _implicit_forward(f_conv, mode, relative_to_iterate, args, x0, scale):
    return fixed_point_iterate(
        lambda x: f_conv(x, *args),
        x0,
        scale=None if relative_to_iterate else scale,
        tol=mode.tol,
        max_iter=mode.max_iter,
    )


def _implicit_fwd(f_conv, mode, relative_to_iterate, args, x0, scale):
    x, info = _implicit_forward(f_conv, mode, relative_to_iterate, args, x0, scale)
    return (x, info), (args, x, x0, scale)


def _implicit_bwd(f_conv, mode, relative_to_iterate, saved, cotangents):
    args, x, x0, scale = saved
    xbar, _ = cotangents
    _, vjp_fn = jax.vjp(lambda z, a: f_conv(z, *a), x, args)
    # XLA:CPU runs JAX's transposed convolutions about 30x slower inside a while loop than
    # unrolled (8 steps of a 32-channel 3x3 conv VJP at 4x48x48: 366 ms vs 11 ms), hence the
    # option to unroll (jaxmri.cpu's convolution transposes to canonical ones, fast in loops
    # too: an InvSharpNet step with a 32-iteration implicit inverse takes 1.7 s, not 19.6 s).
    iterate = fixed_point_iterate_unrolled if mode.unroll_adjoint else fixed_point_iterate
    u, _ = iterate(
        lambda u: xbar + vjp_fn(u)[0],
        xbar,
        scale=_norm(xbar),
        tol=mode.tol,
        max_iter=mode.max_iter,
    )
    # The solution does not depend on the starting point or on the stopping scale.
    return vjp_fn(u)[1], jnp.zeros_like(x0), jnp.zeros_like(scale)


_implicit_solve.defvjp(_implicit_fwd, _implicit_bwd)


def fixed_point(
    f: Callable[..., jax.Array], params: PyTree, x0: jax.Array, *args: PyTree,
    mode: GradientMode, scale: jax.Array | None = None,
) -> tuple[jax.Array, FixedPointInfo]:
    """Solve ``x = f(params, x, *args)`` by the iteration ``x <- f(params, x, *args)`` from ``x0``.

    Args:
      f: pure ``f(params, x, *args) -> array`` with the shape and dtype of ``x``; a contraction
        in ``x`` for the iteration to converge. It may close over arrays (including traced
        ones); with :class:`Implicit` their gradients are handled too.
      params: pytree of arrays; gradients flow to it.
      x0: starting point, a real or complex floating array of any shape.
      *args: further pytrees of arrays ``f`` takes (data, operators); gradients flow to them.
      mode: :class:`Implicit`, :class:`Unrolled` or :class:`JacobianFree` (module docstring).
      scale: positive scalar the step norm is divided by in the stopping rule and residual;
        ``None`` (default): the norm of the new iterate, ``||x_n||``.

    Returns:
      ``(x, info)``: ``x`` with the shape and dtype of ``x0``; ``info`` a :class:`FixedPointInfo`.
    """
    if not isinstance(mode, Implicit | Unrolled | JacobianFree):
        raise TypeError(
            f"mode must be Implicit(...), Unrolled(...) or JacobianFree(...), got {mode!r}")
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.inexact):
        raise TypeError(f"x0 must have a floating or complex dtype, got {x0.dtype}")
    if isinstance(mode, Unrolled):
        return _unrolled(f, params, x0, args, mode.num_iter, scale)
    if isinstance(mode, JacobianFree):
        return _jacobian_free(f, params, x0, args, mode, scale)
    f_conv, consts = jax.closure_convert(lambda x, p, a: f(p, x, *a), x0, params, args)
    scale_array = jnp.ones((), _real_dtype(x0)) if scale is None else jnp.asarray(scale)
    x, info = _implicit_solve(lambda x, p, a, c: f_conv(x, p, a, *c), mode, scale is None,
                              (params, args, tuple(consts)), x0, scale_array)
    return x, FixedPointInfo(info.num_iter, lax.stop_gradient(info.residual))


def invert_residual(
    g: ResidualFn, params: PyTree, y: jax.Array, *, mode: GradientMode
) -> tuple[jax.Array, FixedPointInfo]:
    """Solve ``x + g(params, x) = y`` for ``x`` by the iteration ``x <- y - g(params, x)``.

    :func:`fixed_point` of ``f(params, x, y) = y - g(params, x)`` from ``x_0 = y``, with the
    residual relative to ``||y||``.

    Args:
      g: pure function ``g(params, x) -> array`` with the shape and dtype of ``x``; must be a
        contraction in ``x`` for the iteration to converge (Lipschitz constant ``L < 1``).
        It may close over arrays (including traced ones); their gradients are handled too.
      params: pytree of arrays passed to ``g``; gradients flow to it.
      y: real floating array of any shape (e.g. NHWC ``(N, H, W, C)``).
      mode: :class:`Implicit` (iterate to ``tol``, implicit-function gradient),
        :class:`Unrolled` (fixed iteration count, autodiff through the iterations) or
        :class:`JacobianFree` (iterate to ``tol``, gradient of one more step).

    Returns:
      ``(x, info)``: ``x`` with the shape and dtype of ``y``; ``info`` a :class:`FixedPointInfo`
      with the number of iterations and the final relative step (see the module docstring).
    """
    if not isinstance(mode, Implicit | Unrolled | JacobianFree):
        raise TypeError(
            f"mode must be Implicit(...), Unrolled(...) or JacobianFree(...), got {mode!r}")
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise TypeError(f"y must have a real floating dtype, got {y.dtype}")
    return fixed_point(lambda p, x, rhs: rhs - g(p, x), params, y, y, mode=mode,
                       scale=_norm(y))
