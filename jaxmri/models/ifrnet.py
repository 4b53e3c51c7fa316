"""IFR-Net (Liu et al., paper 002), the iterative algorithm IFR-CS it unrolls, and ADMM-Net.

Single-coil Cartesian CS-MRI: measured centred k-space ``y`` ``(N, H, W)`` complex64 (zero where
not sampled), mask ``M`` ``(N, H, W)`` or ``(H, W)`` float32 0/1 (any 2-D pattern: 1-D random,
2-D random, pseudo-radial). Outputs are images ``(N, H, W)``: float32 for the *real-valued*
variants (the paper's amplitude-image experiments: every reconstruction layer keeps the real
part, ``x = Re F^-1(...)``, as the reference code does) and complex64 for the complex-valued
ones (real and imaginary parts go through the same real filters, the paper's "stack the
components, share the parameters" extension).

IFR-Net, stage ``n = 1 .. N_s`` (eq. 5), starting from ``x_t^(0) = 0``:

* X (reconstruction, eq. 6): ``x = F^-1((M y + rho F x_t) / (M + rho))`` =
  :func:`jaxmri.physics.proximal_dc`, learnable ``rho`` per stage (initial 0.02).
* Z (sparsity-promoting denoising, eqs. 7-10), ``K`` blocks from ``u_0 = x``:
  ``c1 = w1 * u_{k-1} + b1`` (``L`` filters ``w_f x w_f``), ``h = S_PLF(c1; q)``,
  ``c2 = w2 * h + b2`` (one ``w_f x w_f x L`` filter), ``u_k = mu1 u_{k-1} + mu2 x - c2``,
  learnable ``mu1`` (0.99), ``mu2`` (0.01), PLF values ``q`` (one curve per filter, 101 points on
  ``[-1, 1]``, soft threshold 1/14). Filters start from the 8 non-DC 3x3 DCT bases (``w2`` as
  ``0.125 x`` the rotated bases, i.e. a scaled ``D^T``) or randomly (Table IX).
* R (feature refinement, eq. 11): ``x_t = u + T (x - u)`` with the feature descriptor
  :func:`feature_descriptor` of ``u`` and a learnable ``V`` (0.008) per stage (appendix A).

and a final reconstruction layer ``X^(N_s + 1)`` gives the output, trained with the normalised
error of eq. 12 (:func:`normalised_error`). Initial values are those of the authors' code
(``initialize_IFR_NET.m``). ``share_weights=True`` uses one Z module (all ``K`` blocks) for every
stage (Table X); ``rho`` and ``V`` stay per stage.

Note on T: appendix A and eq. 11 compute T from the denoised image ``u``; the authors' MATLAB
layer ``Tmid.m`` computes it from ``x``. We follow the paper (``u``), and, like the reference
code, use zero-padded ("same") filtering for the blur and the 5 x 5 local statistics.

IFR-CS (:func:`ifr_cs`, eq. 3) is the same loop with fixed transforms and hand-set parameters:
the u-step is translation-invariant shrinkage in the undecimated 3x3 DCT frame (circular
boundary), ``u = (1/9) [D_0^T D_0 x + sum_l D_l^T soft(D_l x, tau)]``, exact when ``tau = 0``
and the usual approximation of ``argmin rho/2 ||x - u||^2 + lambda sum_l ||D_l u||_1``.

ADMM-Net (:class:`ADMMNet`, Sun et al. 2016, "basic" ADMM-Net): per stage a reconstruction layer
``x = F^-1[(M y + sum_l rho_l conj(H_l) F(z_l - beta_l)) / (M + sum_l rho_l |H_l|^2)]`` with
learnable circular filters ``H_l`` (their transfer functions), a convolution layer
``c_l = D_l x``, a PLF nonlinearity ``z_l = S_PLF(c_l + beta_l)`` and a multiplier update
``beta_l += eta_l (c_l - z_l)``; a final reconstruction layer. ``rho`` 0.2, ``eta`` 1.6, DCT
filters at the start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import check_complex, check_ndim, check_positive, check_real
from jaxmri.nn.dct import dct_filters, dct_kernel_init
from jaxmri.nn.layers import Conv
from jaxmri.nn.plf import PiecewiseLinear
from jaxmri.physics.consistency import proximal_dc
from jaxmri.physics.fft import fft2c, ifft2c
from jaxmri.train import apply_mean_gradients

__all__ = [
    "normalised_error",
    "feature_descriptor",
    "feature_refinement",
    "reconstruction_step",
    "dct_shrinkage",
    "ifr_cs",
    "circular_conv",
    "transfer_functions",
    "DenoisingBlock",
    "IFRNet",
    "ADMMNet",
    "make_train_step",
]

Init = Literal["dct", "random"]


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def normalised_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Eq. 12: mean over the batch of ``||pred - target||_2 / ||target||_2``.

    Args:
      pred, target: ``(N, H, W)`` real (real-valued variant) or complex (complex-valued
        variant; ``|.|^2`` sums the real and imaginary parts); a real target with a complex
        prediction compares against ``target + 0i``.

    Returns:
      Scalar float32.
    """
    check_ndim(pred, "pred", min_ndim=2)
    check_ndim(target, "target", min_ndim=2)
    if np.shape(pred) != np.shape(target):
        raise ValueError(f"pred and target must have the same shape, got {np.shape(pred)} and "
                         f"{np.shape(target)}")
    axes = (-2, -1)
    err = jnp.sum(jnp.abs(pred - target) ** 2, axis=axes)
    ref = jnp.sum(jnp.abs(target) ** 2, axis=axes)
    # The tiny floor keeps the gradient of sqrt finite at a perfect prediction.
    return jnp.mean(jnp.sqrt(err + 1e-20) / jnp.sqrt(ref)).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Feature refinement (appendix A)
# --------------------------------------------------------------------------------------------


def _band_matrix(n: int, taps: np.ndarray) -> np.ndarray:
    """``(n, n)`` matrix of the zero-padded 'same' correlation with the odd 1-D ``taps``."""
    r = len(taps) // 2
    mat = np.zeros((n, n), np.float32)
    for offset in range(-r, r + 1):
        mat += np.eye(n, k=offset, dtype=np.float32) * taps[offset + r]
    return mat


@functools.lru_cache(maxsize=32)
def _descriptor_operators(height: int, width: int, blur_sigma: float, blur_size: int,
                          window: int) -> tuple[np.ndarray, ...]:
    g = np.exp(-((np.arange(blur_size) - blur_size // 2) ** 2) / (2.0 * blur_sigma**2))
    g = g / g.sum()
    box = np.full(window, 1.0 / window)
    return (_band_matrix(height, g), _band_matrix(width, g), _band_matrix(height, box),
            _band_matrix(width, box))


def feature_descriptor(u: jax.Array, *, v: float | jax.Array, blur_sigma: float = 50.0,
                       blur_size: int = 51, window: int = 5) -> jax.Array:
    """Feature descriptor ``T(u) = 1 - |(2 s_pq + V) / (s_p^2 + s_q^2 + V)|`` (appendix A, eq. 13).

    ``q`` is ``u`` blurred by a ``blur_size`` x ``blur_size`` Gaussian of std ``blur_sigma``
    (sigma 50, 51 taps in the authors' code); ``s_p^2``, ``s_q^2``, ``s_pq`` are local
    (population) variances and covariance over ``window`` x ``window`` boxes. Both filters are
    zero-padded 'same' correlations (MATLAB ``filter2``), done as banded matrix products.
    ``V`` enters as ``|V|`` (as in the reference code), so a learned ``V`` cannot flip sign.

    Args:
      u: real images ``(..., H, W)``.
      v: the stability constant ``V`` (a number or a traced scalar).
      blur_sigma, blur_size, window: filter parameters (``blur_size`` and ``window`` odd).

    Returns:
      ``T`` of ``u``'s shape, float32; ``T = 0`` where the local structure of ``u`` survives
      the blur unchanged, approaching 1 where it does not.
    """
    check_real(u, "u")
    check_ndim(u, "u", min_ndim=2)
    for value, name in ((blur_size, "blur_size"), (window, "window")):
        if not (isinstance(value, int) and value >= 1 and value % 2 == 1):
            raise ValueError(f"{name} must be an odd int >= 1, got {value!r}")
    check_positive(blur_sigma, "blur_sigma")
    height, width = np.shape(u)[-2:]
    bh, bw, wh, ww = (jnp.asarray(m) for m in
                      _descriptor_operators(height, width, float(blur_sigma), blur_size, window))
    u = jnp.asarray(u, jnp.float32)

    def filt(a, left, right):
        return left @ a @ right.T

    q = filt(u, bh, bw)
    mu_p, mu_q = filt(u, wh, ww), filt(q, wh, ww)
    var_p = filt(u * u, wh, ww) - mu_p**2
    var_q = filt(q * q, wh, ww) - mu_q**2
    cov = filt(u * q, wh, ww) - mu_p * mu_q
    v = jnp.abs(v)
    return 1.0 - jnp.abs((2.0 * cov + v) / (var_p + var_q + v))


def feature_refinement(x: jax.Array, u: jax.Array, t: jax.Array) -> jax.Array:
    """Eq. 11: ``x_t = u + T (x - u)`` (elementwise), any matching shapes."""
    return u + t * (x - u)


# --------------------------------------------------------------------------------------------
# Reconstruction step and input checks
# --------------------------------------------------------------------------------------------


def _check_measurements(kspace, mask) -> None:
    check_complex(kspace, "kspace")
    check_ndim(kspace, "kspace", ndim=3)
    check_real(mask, "mask")
    check_ndim(mask, "mask", min_ndim=2)
    if np.shape(mask)[-2:] != np.shape(kspace)[-2:] or np.ndim(mask) > 3 or (
            np.ndim(mask) == 3 and np.shape(mask)[0] != np.shape(kspace)[0]):
        raise ValueError(f"mask must be (H, W) or (N, H, W) matching kspace {np.shape(kspace)}, "
                         f"got shape {np.shape(mask)}")


def reconstruction_step(x_t: jax.Array, kspace: jax.Array, mask: jax.Array, *,
                        rho: float | jax.Array, real_valued: bool) -> jax.Array:
    """Eq. 6: ``F^-1((M y + rho F x_t) / (M + rho))``; its real part when ``real_valued``.

    Args:
      x_t: current estimate ``(N, H, W)``, real or complex.
      kspace: measured ``y`` ``(N, H, W)`` complex64.
      mask: ``(H, W)`` or ``(N, H, W)`` real.
      rho: penalty, ``> 0`` (a traced learnable value enters as ``|rho|``).
      real_valued: keep the real part (the amplitude-image experiments).

    Returns:
      ``(N, H, W)`` float32 if ``real_valued`` else complex64.
    """
    if not isinstance(rho, int | float):
        rho = jnp.abs(rho)
    x = proximal_dc(jnp.asarray(x_t).astype(jnp.complex64), kspace, mask, rho=rho)
    return jnp.real(x) if real_valued else x


def _split(x: jax.Array, real_valued: bool) -> jax.Array:
    """Complex ``(N, H, W)`` -> real ``(2N, H, W)`` (re then im); real input unchanged."""
    return x if real_valued else jnp.concatenate([x.real, x.imag], axis=0)


def _merge(x: jax.Array, real_valued: bool) -> jax.Array:
    if real_valued:
        return x
    n = x.shape[0] // 2
    return (x[:n] + 1j * x[n:]).astype(jnp.complex64)


# --------------------------------------------------------------------------------------------
# IFR-CS: the non-learned iteration (eq. 3)
# --------------------------------------------------------------------------------------------


def circular_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Circular (periodic) 'same' correlation of NHWC ``x`` with an HWIO ``kernel`` (odd size)."""
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="wrap")
    return jax.lax.conv_general_dilated(padded, kernel.astype(x.dtype), (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def transfer_functions(kernel: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """``K`` ``(L, H, W)`` complex64 with ``fft2c(circular_conv(x, kernel))_l = K_l fft2c(x)``.

    ``kernel`` is ``(s, s, 1, L)``. It is the centred FFT of the response to a unit impulse at
    the DC pixel ``(H//2, W//2)``, scaled by ``sqrt(H W)`` (``fft2c`` is orthonormal).
    """
    height, width = shape
    delta = jnp.zeros((1, height, width, 1), jnp.float32).at[0, height // 2, width // 2, 0].set(1)
    response = circular_conv(delta, kernel)[0]  # (H, W, L)
    return np.sqrt(height * width) * fft2c(jnp.moveaxis(response, -1, 0).astype(jnp.complex64))


def dct_shrinkage(u: jax.Array, *, threshold: float | jax.Array, size: int = 3) -> jax.Array:
    """Translation-invariant soft-thresholding in the undecimated ``size x size`` DCT frame.

    ``(1/s^2) [D_0^T D_0 u + sum_{l >= 1} D_l^T soft(D_l u, threshold)]`` with circular
    boundaries; the DC band ``D_0`` passes unshrunk. Since the ``s^2`` bases are orthonormal,
    ``sum_l D_l^T D_l = s^2 I`` and ``threshold = 0`` returns ``u`` exactly.

    Args:
      u: real images ``(B, H, W)``.
      threshold: ``tau >= 0``.
      size: DCT block size.

    Returns:
      ``(B, H, W)`` float32.
    """
    bank = jnp.asarray(dct_filters(size, include_dc=True))  # (s, s, s^2)
    coef = circular_conv(u[..., None].astype(jnp.float32), bank[:, :, None, :])
    shrunk = jnp.sign(coef) * jnp.maximum(jnp.abs(coef) - threshold, 0.0)
    coef = coef.at[..., 1:].set(shrunk[..., 1:])
    adjoint = bank[::-1, ::-1, :, None]  # correlation with the rotated bases is D^T
    return circular_conv(coef, adjoint)[..., 0] / (size * size)


@functools.partial(jax.jit, static_argnames=("num_iters", "real_valued", "return_stages"))
def _ifr_cs(kspace, mask, rho, threshold, v, *, num_iters, real_valued, return_stages):
    def stage(x_t):
        x = reconstruction_step(x_t, kspace, mask, rho=rho, real_valued=real_valued)
        xs = _split(x, real_valued)
        u = dct_shrinkage(xs, threshold=threshold)
        t = feature_descriptor(u, v=v)
        return _merge(feature_refinement(xs, u, t), real_valued), t

    dtype = jnp.float32 if real_valued else jnp.complex64
    x_t = jnp.zeros(kspace.shape, dtype)
    if return_stages:
        maps = []
        for _ in range(num_iters):
            x_t, t = stage(x_t)
            maps.append(t)
        out = reconstruction_step(x_t, kspace, mask, rho=rho, real_valued=real_valued)
        return out, jnp.stack(maps, axis=1)
    x_t = jax.lax.fori_loop(0, num_iters, lambda i, z: stage(z)[0], x_t)
    return reconstruction_step(x_t, kspace, mask, rho=rho, real_valued=real_valued)


def ifr_cs(kspace: jax.Array, mask: jax.Array, *, num_iters: int = 50, rho: float = 0.05,
           threshold: float = 0.02, v: float = 0.008, real_valued: bool = True,
           return_stages: bool = False):
    """IFR-CS (eq. 3): ``num_iters`` rounds of reconstruction, DCT shrinkage and refinement.

    Non-learned and jit-compiled (a ``fori_loop``). The u-step is :func:`dct_shrinkage`; the
    refinement uses :func:`feature_descriptor` with the fixed ``v``; a final reconstruction step
    (eq. 6) makes the output consistent with the data.

    Args:
      kspace: measured ``(N, H, W)`` complex64.
      mask: ``(H, W)`` or ``(N, H, W)`` real 0/1.
      num_iters: iterations ``>= 1``.
      rho: penalty of the reconstruction step ``> 0``.
      threshold: shrinkage threshold ``>= 0`` of the 3x3 DCT coefficients.
      v: descriptor constant ``V > 0``.
      real_valued: real-valued iteration (amplitude images) or complex.
      return_stages: also return the T maps of every iteration ``(N, num_iters, H, W)``
        (``(2N, ...)`` re then im for the complex variant); unrolled in Python.

    Returns:
      ``(N, H, W)`` float32 (real-valued) or complex64; with ``return_stages`` a pair.
    """
    _check_measurements(kspace, mask)
    if not (isinstance(num_iters, int) and num_iters >= 1):
        raise ValueError(f"num_iters must be an int >= 1, got {num_iters!r}")
    check_positive(rho, "rho")
    check_positive(threshold, "threshold", allow_zero=True)
    check_positive(v, "v")
    return _ifr_cs(kspace, mask, jnp.float32(rho), jnp.float32(threshold), jnp.float32(v),
                   num_iters=num_iters, real_valued=real_valued, return_stages=return_stages)


# --------------------------------------------------------------------------------------------
# IFR-Net
# --------------------------------------------------------------------------------------------


def _kernel_init(init: Init, *, adjoint: bool, scale: float) -> Callable:
    if init == "dct":
        return dct_kernel_init(adjoint=adjoint, scale=scale)
    if init == "random":
        # The reference code's commented alternative: N(0, 0.1^2) filters.
        return nn.initializers.normal(0.1)
    raise ValueError(f"init must be 'dct' or 'random', got {init!r}")


class DenoisingBlock(nn.Module):
    """One CNN block of the Z module: ``u_k = mu1 u_{k-1} + mu2 x - w2 * S_PLF(w1 * u_{k-1})``.

    Attributes:
      features: ``L``, filters of ``w1`` (at most 8 for a 3x3 DCT initialisation).
      kernel_size: ``w_f`` (and ``f`` of ``w2``).
      filter_init: ``'dct'`` or ``'random'`` filters.
      mu1, mu2: initial values of the united layer (0.99 and 0.01 in the reference code).
      w2_scale: ``w2 = w2_scale * D^T`` at a DCT start (step 0.5 x lambda 0.25 in the code).
      plf_points, plf_threshold: the PLF grid on ``[-1, 1]`` and its initial soft threshold.
    """

    features: int = 8
    kernel_size: int = 3
    filter_init: Init = "dct"
    mu1: float = 0.99
    mu2: float = 0.01
    w2_scale: float = 0.125
    plf_points: int = 101
    plf_threshold: float = 1.0 / 14.0
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, u: jax.Array, x: jax.Array) -> jax.Array:
        """``u``, ``x``: real ``(B, H, W)``; returns the next ``u`` ``(B, H, W)``."""
        k = (self.kernel_size, self.kernel_size)
        w1_init = _kernel_init(self.filter_init, adjoint=False, scale=1.0)
        w2_init = _kernel_init(self.filter_init, adjoint=True, scale=self.w2_scale)
        c1 = Conv(self.features, k, padding="SAME", name="w1", kernel_init=w1_init,
                  conv_general_dilated=self.conv_general_dilated)(u[..., None])
        h = PiecewiseLinear(num_points=self.plf_points, threshold=self.plf_threshold,
                            per_channel=True, name="plf")(c1)
        c2 = Conv(1, k, padding="SAME", name="w2", kernel_init=w2_init,
                  conv_general_dilated=self.conv_general_dilated)(h)
        mu1 = self.param("mu1", nn.initializers.constant(self.mu1), ())
        mu2 = self.param("mu2", nn.initializers.constant(self.mu2), ())
        return mu1 * u + mu2 * x - c2[..., 0]


class IFRNet(nn.Module):
    """IFR-Net: ``num_stages`` stages of X, Z (``num_blocks`` blocks) and R, then a final X.

    Attributes:
      num_stages: ``N_s`` (7 in the paper).
      num_blocks: ``K`` CNN blocks per Z module (2).
      features: ``L`` filters (8).
      kernel_size: ``w_f`` (3).
      filter_init: ``'dct'`` (default) or ``'random'`` filters (Table IX).
      share_weights: one Z module shared by all stages (Table X).
      real_valued: amplitude-image variant (real outputs) or complex-valued.
      rho, v: initial ``rho`` (0.02) and ``V`` (0.008).

    Call ``(kspace (N, H, W) complex64, mask (H, W) | (N, H, W))`` -> image ``(N, H, W)``;
    with ``return_stages=True`` -> ``(image, {'x', 'u', 't'})``, each ``(N, N_s, H, W)``
    (``(2N, ...)`` re/im for the complex variant).
    """

    num_stages: int = 7
    num_blocks: int = 2
    features: int = 8
    kernel_size: int = 3
    filter_init: Init = "dct"
    share_weights: bool = False
    real_valued: bool = True
    rho: float = 0.02
    v: float = 0.008
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, kspace: jax.Array, mask: jax.Array, *, return_stages: bool = False):
        _check_measurements(kspace, mask)
        block = functools.partial(DenoisingBlock, features=self.features,
                                  kernel_size=self.kernel_size, filter_init=self.filter_init,
                                  conv_general_dilated=self.conv_general_dilated)
        shared = ([block(name=f"shared_block{k}") for k in range(self.num_blocks)]
                  if self.share_weights else None)
        dtype = jnp.float32 if self.real_valued else jnp.complex64
        x_t = jnp.zeros(kspace.shape, dtype)
        stages = {"x": [], "u": [], "t": []}
        for n in range(self.num_stages):  # unrolled: reverse-mode through a scan is slow on CPU
            rho = self.param(f"rho{n}", nn.initializers.constant(self.rho), ())
            x = _split(reconstruction_step(x_t, kspace, mask, rho=rho,
                                           real_valued=self.real_valued), self.real_valued)
            u = x
            for k in range(self.num_blocks):
                module = shared[k] if shared else block(name=f"stage{n}_block{k}")
                u = module(u, x)
            v = self.param(f"v{n}", nn.initializers.constant(self.v), ())
            t = feature_descriptor(u, v=v)
            x_t = _merge(feature_refinement(x, u, t), self.real_valued)
            for name, value in (("x", x), ("u", u), ("t", t)):
                stages[name].append(value)
        rho = self.param(f"rho{self.num_stages}", nn.initializers.constant(self.rho), ())
        out = reconstruction_step(x_t, kspace, mask, rho=rho, real_valued=self.real_valued)
        if return_stages:
            return out, {name: jnp.stack(values, axis=1) for name, values in stages.items()}
        return out


# --------------------------------------------------------------------------------------------
# ADMM-Net
# --------------------------------------------------------------------------------------------


class ADMMNet(nn.Module):
    """Deep ADMM-Net (Sun et al. 2016) for single-coil CS-MRI, ``num_stages`` stages + final X.

    Attributes:
      num_stages: stages (15 in paper 002's comparison).
      features: ``L`` filters per stage (8 non-DC 3x3 DCT bases at the start).
      kernel_size: filter size.
      rho, eta: initial penalty (0.2) and multiplier step (1.6), one per filter and stage.
      plf_points, plf_threshold: PLF grid on ``[-1, 1]`` and initial soft threshold.
      real_valued: amplitude-image variant or complex-valued.

    Call ``(kspace (N, H, W) complex64, mask)`` -> image ``(N, H, W)``.
    """

    num_stages: int = 15
    features: int = 8
    kernel_size: int = 3
    rho: float = 0.2
    eta: float = 1.6
    plf_points: int = 101
    plf_threshold: float = 1.0 / 14.0
    real_valued: bool = True

    def _reconstruct(self, n, kspace, mask, residual):
        """X layer: the closed-form solve with filters ``H`` and per-filter ``rho``."""
        s, nf = self.kernel_size, self.features
        kernel = self.param(f"recon_filters{n}", dct_kernel_init(), (s, s, 1, nf))
        rho = jnp.abs(self.param(f"rho{n}", nn.initializers.constant(self.rho), (nf,)))
        gain = transfer_functions(kernel, kspace.shape[-2:])  # (L, H, W)
        m = jnp.asarray(mask, jnp.float32)
        denom = m + jnp.einsum("l,lhw->hw", rho, jnp.abs(gain) ** 2)
        numer = m * kspace
        if residual is not None:  # (N, H, W, L) complex: z - beta
            k_res = fft2c(jnp.moveaxis(residual, -1, -3))  # (N, L, H, W)
            numer = numer + jnp.einsum("l,lhw,nlhw->nhw", rho, jnp.conj(gain), k_res)
        # Only the DC sample has zero filter gain; it is always sampled, but guard anyway.
        x = ifft2c(numer / jnp.maximum(denom, 1e-6))
        return jnp.real(x) if self.real_valued else x

    @nn.compact
    def __call__(self, kspace: jax.Array, mask: jax.Array) -> jax.Array:
        _check_measurements(kspace, mask)
        s, nf = self.kernel_size, self.features
        residual, beta = None, None
        for n in range(self.num_stages):
            x = _split(self._reconstruct(n, kspace, mask, residual), self.real_valued)
            kernel = self.param(f"conv_filters{n}", dct_kernel_init(), (s, s, 1, nf))
            c = circular_conv(x[..., None], kernel)  # C layer, (B, H, W, L) real
            beta = jnp.zeros_like(c) if beta is None else beta
            z = PiecewiseLinear(num_points=self.plf_points, threshold=self.plf_threshold,
                                name=f"plf{n}")(c + beta)
            eta = self.param(f"eta{n}", nn.initializers.constant(self.eta), (nf,))
            beta = beta + eta * (c - z)  # M layer
            residual = _merge_channels(z - beta, self.real_valued)
        return self._reconstruct(self.num_stages, kspace, mask, residual)


def _merge_channels(a: jax.Array, real_valued: bool) -> jax.Array:
    """Real ``(B, H, W, L)`` -> complex ``(N, H, W, L)`` (undoing :func:`_split` on axis 0)."""
    if real_valued:
        return a.astype(jnp.complex64)
    n = a.shape[0] // 2
    return (a[:n] + 1j * a[n:]).astype(jnp.complex64)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def make_train_step(predict: Callable[[Mapping[str, Any], Mapping[str, jax.Array]], jax.Array]):
    """``train_step(state, batch, key)`` minimising eq. 12 for any reconstruction method.

    Args:
      predict: ``(variables, batch) -> image (N, H, W)``, e.g.
        ``lambda v, b: IFRNet().apply(v, b['kspace'], b['mask'])``; ``batch['target']`` is the
        reference (real for the amplitude experiments).

    Returns:
      A pure step for :func:`jaxmri.train.fit` (gradients averaged over devices); its metrics
      are ``{'loss': eq. 12 on the local batch}``.
    """

    def train_step(state, batch, key):
        del key  # deterministic models

        def loss_fn(params):
            return normalised_error(predict(state.variables(params), batch), batch["target"])

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_mean_gradients(state, grads), {"loss": loss}

    return train_step
