"""Spectral-normalised convolutions: Lipschitz-bounded conv layers for invertible residual nets.

The Lipschitz constant of a convolution layer is the operator norm (largest singular value) of
the *convolution operator* acting on ``(H, W, C_in)`` images, which for kernels larger than 1x1
is not the norm of the kernel reshaped to a ``[k*k*C_in, C_out]`` matrix. It is estimated by power
iteration on the operator and its transpose (the transpose is the convolution with the flipped,
feature-swapped kernel and the complementary padding, :func:`conv_transpose_stride1`, tested
against ``jax.linear_transpose`` of the bias-free convolution)::

    v <- normalize(conv^T(u)),   u <- normalize(conv(v)),   sigma = <u, conv(v)>

and the layer uses the kernel ``W / max(1, sigma / coeff)``: it shrinks only when the estimate
exceeds ``coeff`` (Gouk et al. 2018 as used by iResNet, Behrmann et al. 2019).

Conventions: inputs and outputs are NHWC real float arrays; kernels are HWIO; stride 1.

State: ``u`` (output-shaped, batch 1) and ``v`` (input-shaped, batch 1) persist between steps in
the Flax variable collection ``"spectral"``. They are updated by ``power_iterations`` steps only
when the layer is called with ``update_stats=True`` (training; the collection must be mutable),
and they are always under ``stop_gradient``; gradients reach the kernel through ``sigma``.
The estimate ``sigma`` is always a lower bound of the true norm (``<u, A v> <= ||A||`` for unit
vectors), so the bound ``<= coeff`` is only as good as the power iteration:

* at ``init``, ``init_power_iterations`` (default 100) steps warm-start the state;
* during training, 1 step per optimiser step *tracks* a moving kernel with a lag. The gradient
  through ``sigma`` only resists growth along the tracked direction, so the optimiser can grow
  other singular directions first: with Adam (lr 1e-3) on 12x12 toy problems the true norm
  overshot ``coeff`` by up to ~6 % with 5 steps per update and up to ~19 % with 1 step, at
  isolated training steps (iResNet issue 14 reports the same). With ``coeff = 0.7`` and 5 layers
  per residual branch this leaves ``Lip(g)`` far below 1, so training-time inversion is safe.
* before evaluation or inversion of a trained model, refresh the state with a long run so that the
  bound holds for the final weights (200 steps gave estimates within 0.2 % on random 3x3 convs;
  the state does not depend on ``x``, any input with the right channels will do)::

      refreshed = model.clone(power_iterations=200)
      _, state = refreshed.apply(variables, x, update_stats=True, mutable=["spectral"])
      variables = {**variables, **state}

  (``power_iterations`` is passed down by the residual blocks and sequences of
  :mod:`jaxmri.nn.invertible`, so one clone refreshes every layer.)

Spatial size: the operator norm of a zero-padded convolution depends on ``H``, ``W`` and the
padding (it grows with the image size towards the norm of the circular convolution). The state
has a fixed spatial size, ``norm_shape`` if given, else the spatial size of the input at ``init``,
and ``sigma`` is always computed at that size, whatever the size of the input being convolved.
The layer is therefore one fixed convolution at every image size; the bound ``<= coeff`` is
enforced (to the accuracy of the power iteration) at the state's size, and approximately, within
the small gap between the zero-padded and circular norms, at larger sizes. Initialise at the size
you train on, or pass ``norm_shape`` to bound memory (the state holds ``H * W * (C_in + C_out)``
numbers per layer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmri._checks import check_ndim
from jaxmri.nn.layers import bias_adder

__all__ = [
    "SpectralNormConv", "operator_norm", "conv_nhwc", "power_iteration", "spectral_sigma",
    "kernel_correlation", "conv_transpose_stride1",
]

_EPS = 1e-12
# Loops of at most this many steps are unrolled at trace time (see power_iteration).
_PYTHON_LOOP_MAX = 8


def conv_nhwc(x: jax.Array, kernel: jax.Array, *, padding: str = "SAME") -> jax.Array:
    """Stride-1 cross-correlation of NHWC ``x`` with an HWIO ``kernel`` (no bias)."""
    return lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _sum_of_squares(x: jax.Array) -> jax.Array:
    """``sum(x ** 2)`` of a real array, as the inner product ``<x, x>``."""
    return jnp.vdot(x, x, precision=lax.Precision.HIGHEST)


def conv_transpose_stride1(y: jnp.ndarray, kernel: jnp.ndarray, pads,
                           precision=None) -> jnp.ndarray:
    """The adjoint of the stride-1 NHWC / HWIO convolution with zero ``pads``, applied to ``y``.

    ``<conv(x, kernel), y> = <x, conv_transpose_stride1(y, kernel)>``, computed as a forward
    convolution of ``y`` with the spatially flipped, feature-swapped kernel. JAX's own transpose
    (``jax.linear_transpose``, ``jax.vjp``) is the same convolution with the kernel in ``HWOI``
    order, which XLA:CPU rewrites to its canonical layout only outside loops: traced inside a
    ``while_loop`` body (the power iteration at ``init``) it is a naive loop. Here the kernel is
    rearranged once, so the convolution is canonical wherever it is traced (and it is an
    ordinary forward convolution on every backend).

    Args:
      y: ``(N, H', W', C_out)``, the convolution's output shape.
      kernel: ``(kh, kw, C_in, C_out)``.
      pads: ``((top, bottom), (left, right))`` of the forward convolution, each at most
        ``k - 1`` (as ``"SAME"`` and ``"VALID"`` give).

    Returns:
      ``(N, H' + kh - 1 - top - bottom, W' + kw - 1 - left - right, C_in)``: the input shape.
    """
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = pads
    if not (0 <= min(top, bottom) and max(top, bottom) < kh
            and 0 <= min(left, right) and max(left, right) < kw):
        raise ValueError(f"pads {pads} must lie in [0, k - 1] for a {kh}x{kw} kernel")
    adjoint_kernel = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    adjoint_pads = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    return lax.conv_general_dilated(y, adjoint_kernel, (1, 1), adjoint_pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.sqrt(_sum_of_squares(x)), _EPS)


# Jitted so that eager ``init`` compiles the loop once per layer shape instead of once per call.
@functools.partial(jax.jit, static_argnames=("padding", "num_iters"))
def power_iteration(
    kernel: jax.Array, u: jax.Array, v: jax.Array, *, padding: str, num_iters: int
) -> tuple[jax.Array, jax.Array]:
    """Run ``num_iters`` power-iteration steps on the convolution operator of ``kernel``.

    Args:
      kernel: HWIO kernel ``(kh, kw, C_in, C_out)``.
      u: unit vector shaped like the conv output ``(1, H', W', C_out)``.
      v: unit vector shaped like the conv input ``(1, H, W, C_in)``.
      padding: ``"SAME"`` or ``"VALID"``.
      num_iters: number of steps (>= 0).

    Returns:
      Updated unit vectors ``(u, v)`` with ``u = normalize(conv(v))``.
    """
    conv = lambda z: conv_nhwc(z, kernel, padding=padding)  # noqa: E731
    pads = tuple(lax.padtype_to_pads(v.shape[1:3], kernel.shape[:2], (1, 1), padding))
    # The adjoint as a forward convolution with the flipped kernel: jax.linear_transpose's is
    # a naive loop inside fori_loop on XLA:CPU (the 100 warm-start steps at init: 28 s for
    # InvSharpNet's cpu preset).
    conv_t = lambda z: conv_transpose_stride1(z, kernel, pads)  # noqa: E731

    def step(_, uv):
        u, _ = uv
        v = _normalize(conv_t(u))
        return _normalize(conv(v)), v

    if num_iters <= _PYTHON_LOOP_MAX:
        # XLA on CPU runs convolutions inside a while loop ~15x slower than the same
        # convolutions unrolled (measured: 725 ms vs 45 ms for a 4-block forward pass with one
        # power step per layer), so the few steps of a training update are unrolled.
        for _ in range(num_iters):
            u, v = step(None, (u, v))
        return u, v
    return lax.fori_loop(0, num_iters, step, (u, v))


def kernel_correlation(u: jax.Array, v: jax.Array, kernel_shape: Sequence[int], *,
                       padding: str,
                       conv_general_dilated: Callable = lax.conv_general_dilated) -> jax.Array:
    """``C`` with ``<u, conv(v, K)> = <K, C>`` for every kernel ``K``: the gradient of that
    inner product with respect to the kernel (the "weight gradient" of a conv layer).

    ``C[i, j, c, o] = sum_{n, h, w} v_pad[n, h + i, w + j, c] * u[n, h, w, o]``, computed as
    the reverse-mode kernel gradient of ``conv_general_dilated`` (so by the given
    implementation's own kernel gradient; the XLA:CPU one's is several times faster for the
    batch-1 vectors of the power iteration).

    Args:
      u: ``(N, H', W', C_out)``, shaped like the conv output.
      v: ``(N, H, W, C_in)``, shaped like the conv input.
      kernel_shape: ``(kh, kw, C_in, C_out)`` (HWIO).
      padding: ``"SAME"`` or ``"VALID"`` as in :func:`conv_nhwc`.
      conv_general_dilated: the convolution implementation (``lax.conv_general_dilated``'s
        signature).

    Returns:
      ``C``, shaped ``kernel_shape``, in the dtype of ``u * v``.
    """
    dtype = jnp.result_type(u, v)
    v = v.astype(dtype)
    kernel = jnp.zeros(tuple(int(k) for k in kernel_shape), dtype)
    # The conv is linear in its kernel: the VJP at any kernel (here zero) is the correlation.
    _, vjp_fn = jax.vjp(lambda k: conv_general_dilated(
        v, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")), kernel)
    return vjp_fn(u.astype(dtype))[0]


def spectral_sigma(kernel: jax.Array, u: jax.Array, v: jax.Array, *, padding: str,
                   conv_general_dilated: Callable = lax.conv_general_dilated) -> jax.Array:
    """Power-iteration estimate ``<u, conv(v)>`` of the conv operator norm (differentiable).

    Evaluated as ``<kernel, kernel_correlation(u, v)>`` (the same number, because the conv is
    linear in its kernel): the gradient with respect to the kernel is then the correlation itself,
    with no second convolution pass.
    """
    return jnp.vdot(kernel, kernel_correlation(u, v, kernel.shape, padding=padding,
                                               conv_general_dilated=conv_general_dilated))


def operator_norm(
    key: jax.Array,
    linear_fn: Callable[[jax.Array], jax.Array],
    input_shape: Sequence[int],
    *,
    num_iters: int = 200,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Largest singular value of a linear map, by long power iteration on ``A^T A``.

    Meant for measuring (tests, ablations), not for training: it starts from a random vector and
    runs ``num_iters`` steps. The result is a lower bound that converges to ``||A||_2``.

    Args:
      key: PRNG key for the random start.
      linear_fn: a *linear* function of one array of shape ``input_shape``; its transpose is
        obtained by ``jax.vjp`` at zero (exact for linear maps).
      input_shape: shape of the input array.
      num_iters: power-iteration steps (>= 1).
      dtype: real floating dtype of the iteration.

    Returns:
      Scalar ``||A v||`` for the final unit vector ``v``.
    """
    if int(num_iters) != num_iters or num_iters < 1:
        raise ValueError(f"num_iters must be an int >= 1, got {num_iters}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a real floating dtype, got {dtype}")
    input_shape = tuple(int(s) for s in input_shape)
    _, vjp_fn = jax.vjp(linear_fn, jnp.zeros(input_shape, dtype))

    def step(_, v):
        return _normalize(vjp_fn(linear_fn(v))[0])

    v = _normalize(jax.random.normal(key, input_shape, dtype))
    v = lax.fori_loop(0, num_iters, step, v)
    return jnp.sqrt(jnp.sum(jnp.square(linear_fn(v))))


class SpectralNormConv(nn.Module):
    """2-D convolution whose operator norm is kept ``<= coeff`` by spectral normalisation.

    Attributes:
      features: number of output channels.
      kernel_size: ``(kh, kw)``.
      coeff: target Lipschitz bound ``c > 0`` of the bias-free convolution.
      power_iterations: power-iteration steps per ``update_stats=True`` call (>= 1).
      init_power_iterations: steps run once at ``init`` from a random start (>= 0), so that the
        estimate is already accurate before training (100 got within 0.4 % on 16 random 3x3
        convs on 8..16 pixel images, 50 only within 1.6 %; a cold start is ~2x too low).
      use_bias: add a learned bias (does not change the Lipschitz constant).
      padding: ``"SAME"`` (zero padding) or ``"VALID"``.
      norm_shape: ``(H, W)`` at which the norm is estimated; ``None`` uses the input's at init.
      kernel_init, bias_init: Flax initialisers.
      conv_general_dilated: the convolution implementation (default ``lax.conv_general_dilated``;
        :data:`jaxmri.cpu.conv_general_dilated` on the CPU), used for the layer's convolution
        and for ``sigma``'s kernel gradient; the power iteration (forward only, under
        ``stop_gradient``) uses plain convolutions.

    Call: ``layer.apply(variables, x, update_stats=False)`` with ``x`` NHWC ``(N, H, W, C_in)``
    real float; returns ``(N, H', W', features)``. With ``update_stats=True`` pass
    ``mutable=["spectral"]``. The estimate ``sigma`` (before rescaling) is sown into the
    ``"intermediates"`` collection when that collection is mutable.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    coeff: float = 0.7
    power_iterations: int = 1
    init_power_iterations: int = 100
    use_bias: bool = True
    padding: str = "SAME"
    norm_shape: tuple[int, int] | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    conv_general_dilated: Callable = lax.conv_general_dilated

    def _initial_state(self, kernel, v_shape):
        # A random start underestimates sigma badly (about half the norm for 3x3 convs, whose top
        # singular values are tightly clustered), which would let the layer start far above
        # coeff; a longer warm start at init makes the bound hold from the first step.
        v = _normalize(jax.random.normal(self.make_rng("params"), v_shape, kernel.dtype))
        u = _normalize(conv_nhwc(v, kernel, padding=self.padding))
        return power_iteration(
            kernel, u, v, padding=self.padding, num_iters=self.init_power_iterations
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, update_stats: bool = False) -> jax.Array:
        check_ndim(x, "x", ndim=4)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must have a real floating dtype, got {x.dtype}")
        if not self.coeff > 0:
            raise ValueError(f"coeff must be > 0, got {self.coeff}")
        if int(self.power_iterations) != self.power_iterations or self.power_iterations < 1:
            raise ValueError(f"power_iterations must be an int >= 1, got {self.power_iterations}")
        if int(self.init_power_iterations) != self.init_power_iterations or (
            self.init_power_iterations < 0
        ):
            raise ValueError(
                f"init_power_iterations must be an int >= 0, got {self.init_power_iterations}"
            )
        if self.padding not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME' or 'VALID', got {self.padding!r}")
        if update_stats and not self.is_mutable_collection("spectral"):
            raise ValueError("update_stats=True needs apply(..., mutable=['spectral'])")

        kh, kw = self.kernel_size
        c_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, c_in, self.features))
        height, width = self.norm_shape if self.norm_shape is not None else x.shape[1:3]
        v_shape = (1, int(height), int(width), c_in)

        if self.has_variable("spectral", "u"):
            u0 = v0 = None  # state exists: the initialisers below are not called
        else:
            u0, v0 = self._initial_state(kernel, v_shape)
        u_var = self.variable("spectral", "u", lambda: u0)
        v_var = self.variable("spectral", "v", lambda: v0)
        # Under stop_gradient: the state is a running estimate, not a function to differentiate.
        u = lax.stop_gradient(u_var.value).astype(kernel.dtype)
        v = lax.stop_gradient(v_var.value).astype(kernel.dtype)
        if update_stats:
            u, v = power_iteration(
                lax.stop_gradient(kernel), u, v, padding=self.padding,
                num_iters=self.power_iterations,
            )
            u_var.value, v_var.value = u, v

        sigma = spectral_sigma(kernel, u, v, padding=self.padding,
                               conv_general_dilated=self.conv_general_dilated)
        self.sow("intermediates", "sigma", sigma)
        kernel = kernel / jnp.maximum(1.0, sigma / self.coeff)

        dtype = jnp.result_type(x, kernel)
        y = self.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (1, 1), self.padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,))
            y = bias_adder(self.conv_general_dilated)(y, bias.astype(dtype))
        return y
