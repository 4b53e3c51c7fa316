"""Argument checks shared by every public jaxmri function.

Each check raises an error that names the offending argument, its expected property and what it
got, so that a user sees ``ValueError: mask must have ndim >= 2, got shape (5,)`` instead of an
XLA shape error three calls deeper. Checks look only at static properties (shape, dtype) so they
are free under ``jax.jit``; :func:`check_finite` looks at values and is therefore meant for the
host side (data readers, training loop), never inside a traced function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "check_ndim",
    "check_complex",
    "check_real",
    "check_same_shape",
    "check_broadcastable",
    "check_finite",
    "check_positive",
    "check_shape_2d",
]


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_ndim(x, name: str, *, min_ndim: int | None = None, ndim: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` has exactly ``ndim`` or at least ``min_ndim`` axes."""
    shape = _shape(x)
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must have ndim == {ndim}, got shape {shape}")
    if min_ndim is not None and len(shape) < min_ndim:
        raise ValueError(f"{name} must have ndim >= {min_ndim}, got shape {shape}")


def check_complex(x, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a complex dtype (complex64 or complex128)."""
    dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    if dtype.kind != "c":
        raise TypeError(f"{name} must be complex (complex64), got dtype {dtype}")


def check_real(x, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a real floating or integer dtype."""
    dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    if dtype.kind not in "fiub":
        raise TypeError(f"{name} must be real-valued, got dtype {dtype}")


def check_same_shape(a, b, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have identical shapes."""
    if _shape(a) != _shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {_shape(a)} and {_shape(b)}"
        )


def check_broadcastable(a, b, name_a: str, name_b: str) -> tuple[int, ...]:
    """Return the broadcast shape of ``a`` and ``b``; raise ``ValueError`` naming both if none."""
    try:
        return tuple(np.broadcast_shapes(_shape(a), _shape(b)))
    except ValueError:
        raise ValueError(
            f"{name_a} with shape {_shape(a)} does not broadcast against "
            f"{name_b} with shape {_shape(b)}"
        ) from None


def check_broadcasts_to(x, target_shape: Sequence[int], name: str, *, what: str = "",
                        hint: str = "") -> None:
    """Raise ``ValueError`` unless ``x`` broadcasts to ``target_shape`` without enlarging it
    (a mask onto its k-space). ``what`` names the target, ``hint`` ends the message."""
    target = tuple(int(d) for d in target_shape)
    try:
        out = tuple(np.broadcast_shapes(_shape(x), target))
    except ValueError:
        out = None
    if out != target:
        raise ValueError(f"{name} with shape {_shape(x)} must broadcast to the {what}shape "
                         f"{target}" + (f" ({hint})" if hint else ""))


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """``int(value)``; ``ValueError`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_finite(x, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values (host-side: reads values)."""
    arr = np.asarray(x)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf)")


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless the Python scalar ``value`` is > 0 (or >= 0)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_shape_2d(shape: Sequence[int], name: str) -> tuple[int, int]:
    """Validate a ``(H, W)`` shape tuple of positive ints and return it."""
    if len(shape) != 2 or any(int(s) != s or s <= 0 for s in shape):
        raise ValueError(f"{name} must be a (H, W) tuple of positive ints, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])
