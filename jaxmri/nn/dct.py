"""2-D DCT filter banks for initialising convolutions (ADMM-Net, IFR-Net).

The ``s x s`` 2-D DCT-II basis is made of the ``s^2`` outer products ``B_{ab} = d_a d_b^T`` of the
rows ``d_a`` of the orthonormal 1-D DCT-II matrix (MATLAB's ``dctmtx(s)``, SciPy's
``dct(eye(s), norm='ortho', axis=0)``): ``a`` is the vertical and ``b`` the horizontal frequency.
The filters are orthonormal (``sum_{m,n} B_{ab}[m,n] B_{a'b'}[m,n] = delta``). ``B_{00}`` is the
constant (DC) filter; the sparsifying banks of ADMM-Net and IFR-Net drop it and keep the other
``s^2 - 1`` (8 filters for ``s = 3``), ordered row-major in ``(a, b)``.

Kernels are returned in Flax's ``nn.Conv`` layout ``(s, s, in_features, out_features)``. Flax
convolutions are correlations, so the analysis bank ``D`` uses the bases as they are and the
synthesis (adjoint) bank ``D^T`` uses them rotated by 180 degrees (:func:`dct_kernel_init` with
``adjoint=True``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

__all__ = ["dct_matrix", "dct_filters", "dct_kernel_init"]


def dct_matrix(size: int) -> np.ndarray:
    """Orthonormal 1-D DCT-II matrix ``(size, size)`` float64: row ``a`` is the ``a``-th basis."""
    if not (isinstance(size, int | np.integer) and size >= 1):
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    n = np.arange(size)
    mat = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size))
    mat[0] *= np.sqrt(1.0 / size)
    mat[1:] *= np.sqrt(2.0 / size)
    return mat


def dct_filters(size: int = 3, *, include_dc: bool = False) -> np.ndarray:
    """The 2-D DCT basis as filters ``(size, size, n)`` float32 (``n = size^2`` or ``size^2 - 1``).

    Filter ``k`` is ``B_{ab}`` with ``k = a * size + b`` (minus one without the DC filter).
    """
    d = dct_matrix(size)
    bases = [np.outer(d[a], d[b]) for a in range(size) for b in range(size)]
    if not include_dc:
        bases = bases[1:]
    return np.stack(bases, axis=-1).astype(np.float32)


def dct_kernel_init(*, adjoint: bool = False, scale: float = 1.0) -> Callable:
    """A Flax kernel initialiser placing non-DC DCT bases in a ``(s, s, in, out)`` kernel.

    Forward (``adjoint=False``): kernel ``(s, s, 1, L)``, output channel ``l`` = basis ``l``
    (the analysis bank ``D``). Adjoint: kernel ``(s, s, L, 1)``, input channel ``l`` = basis
    ``l`` rotated by 180 degrees (``D^T``). Both times ``scale``. ``L`` may be at most
    ``s^2 - 1``; for wider layers use a random initialiser.
    """

    def init(key, shape, dtype=jnp.float32):
        del key  # deterministic
        if len(shape) != 4 or shape[0] != shape[1]:
            raise ValueError(f"kernel shape must be (s, s, in, out), got {shape}")
        size = int(shape[0])
        inner, count = (shape[2], shape[3]) if adjoint else (shape[3], shape[2])
        if count != 1:
            raise ValueError(f"a DCT {'adjoint ' if adjoint else ''}kernel needs "
                             f"{'out' if adjoint else 'in'}_features == 1, got shape {shape}")
        available = size * size - 1
        if inner > available:
            raise ValueError(f"features={inner} exceeds the {available} non-DC DCT bases of a "
                             f"{size}x{size} kernel; use a random initialisation")
        bank = dct_filters(size)[..., :inner]
        if adjoint:
            kernel = bank[::-1, ::-1, :, None]
        else:
            kernel = bank[:, :, None, :]
        return jnp.asarray(scale * kernel, dtype)

    return init
