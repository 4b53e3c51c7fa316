"""Learnable piecewise-linear nonlinearity ``S_PLF`` of ADMM-Net and IFR-Net.

``S_PLF(a; {p_i, q_i})`` interpolates linearly between ``N_c`` control points whose positions
``p_i`` are fixed and uniformly spaced on ``[start, stop]`` (``[-1, 1]`` in both papers) and whose
values ``q_i`` are learned. Outside the grid it continues with slope one (paper 002, eq. after
eq. 5; Sun et al. 2016):

    S(a) = a + q_1 - p_1                                    a < p_1
    S(a) = q_r + (a - p_r) (q_{r+1} - q_r) / (p_{r+1} - p_r)   p_1 <= a <= p_Nc,
           r = floor((a - p_1) / (p_2 - p_1))
    S(a) = a + q_Nc - p_Nc                                  a > p_Nc

Initialised with ``q_i = soft(p_i, threshold)`` it is the soft-thresholding (shrinkage) operator
that a CNN block learns to generalise. Values may be shared by all channels (``q`` of shape
``(N_c,)``) or one set per channel of an NHWC input (``q`` of shape ``(C, N_c)``), which is what
the IFR-Net reference code does (one curve per filter).

The op is pure, jit/vmap-able and differentiable with respect to the input (slope of the active
segment, 1 outside) and to ``q`` (the two interpolation weights of the active segment).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmri._checks import check_ndim, check_real

__all__ = ["control_positions", "soft_threshold_values", "piecewise_linear", "PiecewiseLinear"]


def _check_grid(num_points: int, start: float, stop: float) -> None:
    if not (isinstance(num_points, int | np.integer) and num_points >= 2):
        raise ValueError(f"num_points must be an int >= 2, got {num_points!r}")
    if not stop > start:
        raise ValueError(f"stop must be > start, got start={start}, stop={stop}")


def control_positions(num_points: int = 101, *, start: float = -1.0,
                      stop: float = 1.0) -> np.ndarray:
    """The fixed positions ``p_i``: ``num_points`` uniform points on ``[start, stop]``, float32.

    The default is the reference code's grid ``-1:0.02:1`` (101 points).
    """
    _check_grid(num_points, start, stop)
    return np.linspace(start, stop, int(num_points), dtype=np.float32)


def soft_threshold_values(positions: np.ndarray, *, threshold: float) -> np.ndarray:
    """``q_i = sign(p_i) max(|p_i| - threshold, 0)``: the PLF that starts as soft-thresholding."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    p = np.asarray(positions, np.float32)
    return (np.sign(p) * np.maximum(np.abs(p) - threshold, 0.0)).astype(np.float32)


def piecewise_linear(x: jax.Array, values: jax.Array, *, start: float = -1.0,
                     stop: float = 1.0) -> jax.Array:
    """Apply ``S_PLF`` with uniform control positions on ``[start, stop]`` and values ``values``.

    Args:
      x: real input of any shape ``(..., C)``.
      values: ``q``, real, ``(N_c,)`` shared by every element, or ``(C, N_c)`` with one curve
        per entry of ``x``'s last axis (an NHWC channel).
      start, stop: first and last control position (``p_1``, ``p_Nc``).

    Returns:
      Array of ``x``'s shape and (floating) dtype.
    """
    check_real(x, "x")
    check_real(values, "values")
    check_ndim(values, "values", min_ndim=1)
    values = jnp.asarray(values)
    if values.ndim > 2:
        raise ValueError(f"values must be (N_c,) or (C, N_c), got shape {values.shape}")
    num_points = values.shape[-1]
    _check_grid(num_points, start, stop)
    if values.ndim == 2 and (np.ndim(x) == 0 or np.shape(x)[-1] != values.shape[0]):
        raise ValueError(f"values with shape {values.shape} needs x with {values.shape[0]} "
                         f"channels on its last axis, got x of shape {np.shape(x)}")
    x = jnp.asarray(x)
    dtype = jnp.result_type(x.dtype, values.dtype, jnp.float32)
    x, values = x.astype(dtype), values.astype(dtype)
    step = (stop - start) / (num_points - 1)
    t = (x - start) / step
    # floor is piecewise constant, so gradients reach x only through ``frac`` (the slope).
    r = jnp.clip(jnp.floor(jax.lax.stop_gradient(t)), 0, num_points - 2).astype(jnp.int32)
    frac = t - r
    if values.ndim == 2:
        offset = jnp.arange(values.shape[0], dtype=jnp.int32) * num_points
        r = r + offset
    flat = values.reshape(-1)
    q_r, q_next = flat[r], flat[r + 1]
    inside = q_r + frac * (q_next - q_r)
    below = x + values[..., 0] - start
    above = x + values[..., -1] - stop
    return jnp.where(x < start, below, jnp.where(x > stop, above, inside))


def _soft_threshold_init(num_points: int, start: float, stop: float,
                         threshold: float) -> Callable:
    def init(key, shape, dtype=jnp.float32):
        del key  # deterministic: every curve starts as the same shrinkage
        q = soft_threshold_values(control_positions(num_points, start=start, stop=stop),
                                  threshold=threshold)
        return jnp.broadcast_to(jnp.asarray(q, dtype), shape)
    return init


class PiecewiseLinear(nn.Module):
    """``S_PLF`` with learnable values ``q`` (param ``'values'``) on a fixed uniform grid.

    Attributes:
      num_points: ``N_c`` (101 for the reference grid ``-1:0.02:1``).
      start, stop: first and last control position.
      threshold: initial soft threshold (``1/14`` in the IFR-Net and ADMM-Net code).
      per_channel: one curve per channel of the NHWC input (``q`` of shape ``(C, N_c)``)
        instead of a single shared curve ``(N_c,)``.
    """

    num_points: int = 101
    start: float = -1.0
    stop: float = 1.0
    threshold: float = 1.0 / 14.0
    per_channel: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the curve(s) to real ``x`` ``(..., C)``."""
        shape = (x.shape[-1], self.num_points) if self.per_channel else (self.num_points,)
        init = _soft_threshold_init(self.num_points, self.start, self.stop, self.threshold)
        values = self.param("values", init, shape)
        return piecewise_linear(x, values, start=self.start, stop=self.stop)
