"""Invertible residual blocks (iResNet) with fixed-point inversion, in Flax linen.

A block maps ``y = x + g(x)`` where the residual branch ``g`` is a stack of spectral-normalised
convolutions (:class:`jaxmri.nn.spectral.SpectralNormConv`, each with operator norm ``<= coeff``)
separated by ELU activations. ELU is 1-Lipschitz and smooth (iResNet's choice; smoothness also
keeps finite-difference gradient checks meaningful), so ``Lip(g) <= prod_l ||conv_l|| <=
coeff ** depth < 1`` (each layer norm to the accuracy of its power iteration, see
:mod:`jaxmri.nn.spectral`) and the block is invertible; its inverse is the fixed point of
``x <- y - g(x)`` (:func:`jaxmri.nn.fixed_point.invert_residual`), computed to a tolerance with
implicit gradients (:class:`~jaxmri.nn.fixed_point.Implicit`) or with a fixed number of iterations
differentiated by autodiff (:class:`~jaxmri.nn.fixed_point.Unrolled`, InvSharpNet trains with 2).
The product bound is loose (it ignores how the layers' top singular directions line up) but it is
the certified one.

Branch layout for ``depth = d`` and ``C`` input channels: convs ``C -> hidden -> ... -> hidden ->
C`` (``d`` convs, ``d - 1`` ELUs between them, none before the first or after the last). The paper
preset (InvSharpNet) is ``12`` blocks, ``d = 5``, ``hidden = 128``, ``coeff = 0.7``, 3x3 kernels.

Conventions: NHWC real float arrays; the output of ``__call__`` and of ``inverse`` has the shape
of the input. Both directions are methods of the same module::

    model = InvertibleSequence(num_blocks=12, hidden=128)
    variables = model.init(key, x)                               # params + "spectral" state
    y = model.apply(variables, x)                                # forward (inference)
    x_rec, info = model.apply(variables, y, mode=Unrolled(2), method="inverse")

Spectral statistics (power iteration) advance once per call with ``update_stats=True`` and
``mutable=["spectral"]``: once per training step, never inside the fixed-point iterations (the
solver sees the branch as a pure function of its parameters with the state held fixed).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmri._checks import check_ndim
from jaxmri.nn.fixed_point import FixedPointInfo, Implicit, Unrolled, invert_residual
from jaxmri.nn.spectral import SpectralNormConv

__all__ = ["ResidualBranch", "InvertibleResidualBlock", "InvertibleSequence"]


def _check_image(x: jax.Array, name: str) -> None:
    check_ndim(x, name, ndim=4)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


def _check_mode(mode) -> None:
    if not isinstance(mode, Implicit | Unrolled):
        raise TypeError(f"mode must be Implicit(...) or Unrolled(...), got {mode!r}")


class ResidualBranch(nn.Module):
    """The residual function ``g``: ``depth`` spectral-normalised convs with ELU in between.

    Attributes:
      hidden: channels of the intermediate layers.
      depth: number of convolutions (>= 1; ``depth = 1`` is a single ``C -> C`` conv).
      coeff: per-layer operator-norm bound, so ``Lip(g) <= coeff ** depth``.
      power_iterations, init_power_iterations, norm_shape: passed to every
        :class:`SpectralNormConv`.
      kernel_size: conv kernel size.

    Call: ``(N, H, W, C) -> (N, H, W, C)``, ``update_stats`` as for :class:`SpectralNormConv`.
    """

    hidden: int = 128
    depth: int = 5
    coeff: float = 0.7
    power_iterations: int = 1
    init_power_iterations: int = 100
    norm_shape: tuple[int, int] | None = None
    kernel_size: tuple[int, int] = (3, 3)
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, *, update_stats: bool = False) -> jax.Array:
        _check_image(x, "x")
        if int(self.depth) != self.depth or self.depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {self.depth}")
        if int(self.hidden) != self.hidden or self.hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {self.hidden}")
        widths = [self.hidden] * (self.depth - 1) + [x.shape[-1]]
        for i, width in enumerate(widths):
            if i > 0:
                x = nn.elu(x)
            x = SpectralNormConv(
                width,
                self.kernel_size,
                coeff=self.coeff,
                power_iterations=self.power_iterations,
                init_power_iterations=self.init_power_iterations,
                norm_shape=self.norm_shape,
                name=f"conv_{i}",
                conv_general_dilated=self.conv_general_dilated,
            )(x, update_stats=update_stats)
        return x


class InvertibleResidualBlock(nn.Module):
    """Invertible residual block ``y = x + g(x)`` with ``g`` a :class:`ResidualBranch`.

    Attributes: as :class:`ResidualBranch` (``coeff < 1`` is required for invertibility).

    Methods:
      ``__call__(x, *, update_stats=False) -> y``: the forward map.
      ``inverse(y, *, mode, update_stats=False) -> (x, FixedPointInfo)``: solves
        ``x + g(x) = y`` by :func:`invert_residual` with the given gradient mode.
    """

    hidden: int = 128
    depth: int = 5
    coeff: float = 0.7
    power_iterations: int = 1
    init_power_iterations: int = 100
    norm_shape: tuple[int, int] | None = None
    kernel_size: tuple[int, int] = (3, 3)
    conv_general_dilated: Callable = lax.conv_general_dilated

    def _branch_config(self) -> dict:
        return dict(
            hidden=self.hidden,
            depth=self.depth,
            coeff=self.coeff,
            power_iterations=self.power_iterations,
            init_power_iterations=self.init_power_iterations,
            norm_shape=self.norm_shape,
            kernel_size=self.kernel_size,
        )

    def setup(self):
        if not 0 < self.coeff < 1:
            raise ValueError(f"coeff must be in (0, 1) for an invertible block, got {self.coeff}")
        self.branch = ResidualBranch(**self._branch_config(),
                                     conv_general_dilated=self.conv_general_dilated)

    def __call__(self, x: jax.Array, *, update_stats: bool = False) -> jax.Array:
        _check_image(x, "x")
        return x + self.branch(x, update_stats=update_stats)

    def inverse(
        self, y: jax.Array, *, mode: Implicit | Unrolled, update_stats: bool = False
    ) -> tuple[jax.Array, FixedPointInfo]:
        _check_image(y, "y")
        _check_mode(mode)
        # This call creates the branch variables under ``init`` and advances the power iteration
        # once when ``update_stats`` (once per step, not per fixed-point iteration). Its output
        # is unused, so under jit XLA removes the convolutions on ``y``.
        self.branch(y, update_stats=update_stats)
        variables = self.branch.variables
        spectral = variables["spectral"]
        # A detached copy of the branch, applied functionally: the solver needs g(params, x).
        branch_fn = ResidualBranch(**self._branch_config(), parent=None,
                                   conv_general_dilated=self.conv_general_dilated)

        def g(params, x):
            return branch_fn.apply({"params": params, "spectral": spectral}, x)

        return invert_residual(g, variables["params"], y, mode=mode)


class InvertibleSequence(nn.Module):
    """``num_blocks`` invertible residual blocks applied in order (inverse: reverse order).

    Attributes: ``num_blocks`` plus those of :class:`ResidualBranch`. The paper preset
    (InvSharpNet) is the default: 12 blocks x 5 convs x 128 channels, ``coeff = 0.7``; with 4
    channels (two complex images as real/imag) it has 5,425,200 parameters.

    Methods:
      ``__call__(x, *, update_stats=False) -> y``.
      ``inverse(y, *, mode, update_stats=False) -> (x, FixedPointInfo)``: each block inverted with
        ``mode``; the info fields are stacked with shape ``(num_blocks,)``, entry ``i`` for block
        ``i`` (block 0 is the first block of the forward map, inverted last).
    """

    num_blocks: int = 12
    hidden: int = 128
    depth: int = 5
    coeff: float = 0.7
    power_iterations: int = 1
    init_power_iterations: int = 100
    norm_shape: tuple[int, int] | None = None
    kernel_size: tuple[int, int] = (3, 3)
    conv_general_dilated: Callable = lax.conv_general_dilated

    def setup(self):
        if int(self.num_blocks) != self.num_blocks or self.num_blocks < 1:
            raise ValueError(f"num_blocks must be an int >= 1, got {self.num_blocks}")
        self.blocks = [
            InvertibleResidualBlock(
                hidden=self.hidden,
                depth=self.depth,
                coeff=self.coeff,
                power_iterations=self.power_iterations,
                init_power_iterations=self.init_power_iterations,
                norm_shape=self.norm_shape,
                kernel_size=self.kernel_size,
                conv_general_dilated=self.conv_general_dilated,
            )
            for _ in range(self.num_blocks)
        ]

    def __call__(self, x: jax.Array, *, update_stats: bool = False) -> jax.Array:
        _check_image(x, "x")
        for block in self.blocks:
            x = block(x, update_stats=update_stats)
        return x

    def inverse(
        self, y: jax.Array, *, mode: Implicit | Unrolled, update_stats: bool = False
    ) -> tuple[jax.Array, FixedPointInfo]:
        _check_image(y, "y")
        _check_mode(mode)
        infos = []
        for block in reversed(self.blocks):
            y, info = block.inverse(y, mode=mode, update_stats=update_stats)
            infos.append(info)
        infos = infos[::-1]
        stacked = FixedPointInfo(
            num_iter=jnp.stack([i.num_iter for i in infos]),
            residual=jnp.stack([i.residual for i in infos]),
        )
        return y, stacked
