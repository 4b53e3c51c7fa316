"""DLMRI: compressed sensing with a dictionary learned from the image being reconstructed.

Ravishankar & Bresler, "MR image reconstruction from highly undersampled k-space data by
dictionary learning", IEEE TMI 30(5), 2011; the CS baseline of paper 003 (which ran the
authors' DLMRI-Lab MATLAB code). Each outer iteration of :func:`dlmri`:

1. cuts the current image into all overlapping ``p x p`` patches (stride 1) and removes each
   patch's mean;
2. learns a dictionary ``D`` (``n = p^2`` rows, ``K`` unit atoms) on a random subset of the
   patches with K-SVD (:func:`ksvd`), started from the patches' principal directions;
3. codes every patch by orthogonal matching pursuit (:func:`omp`) until its squared error is
   at most ``threshold^2 n`` or it uses ``max_atoms`` atoms;
4. averages the coded patches (plus their means) back into an image (:func:`average_patches`);
5. puts the measured k-space samples back (the noiseless data-consistency step, ``nu -> inf``).

The defaults are DLMRI-Lab's: 6 x 6 patches, ``K = 36`` atoms, ``200 K`` training patches,
sparsity ``T0 = round(0.2 n) = 7`` during learning and ``2 T0`` when coding, 20 K-SVD
iterations, error thresholds ``0.023 * [2, 2, 2, 2, 1.4, 1.4, ...]`` per outer iteration (for
an image of peak 1: :func:`dlmri` scales the zero-filled image to peak 1 and scales back).

Conventions: complex64 images ``(H, W)``; single-coil k-space ``(1, H, W)`` with its map
``(1, H, W)``: the dictionary works on the coil image ``S x``, and ``x = conj(S) (S x) / |S|^2``
at the end. :func:`dlmri` reconstructs one slice; ``jax.vmap`` it over a batch. Pure and
jit-able; all sizes are static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import check_broadcasts_to, check_complex, check_int, check_positive
from jaxmri.physics.fft import fft2c, ifft2c

__all__ = ["extract_patches", "average_patches", "omp", "ksvd", "dlmri",
           "dlmri_thresholds"]


def _patch_index(shape: tuple[int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    rows = np.arange(h - size + 1)[:, None, None, None] + np.arange(size)[None, None, :, None]
    cols = np.arange(w - size + 1)[None, :, None, None] + np.arange(size)[None, None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    return rows.reshape(-1, size * size), cols.reshape(-1, size * size)


def extract_patches(image: jax.Array, size: int) -> jax.Array:
    """All overlapping ``size x size`` patches of ``(H, W)``, stride 1, row-major order:
    ``(P, size^2)`` with ``P = (H - size + 1)(W - size + 1)``; patch ``(i, j)`` is row
    ``i (W - size + 1) + j`` and holds ``image[i:i + size, j:j + size].ravel()``."""
    rows, cols = _patch_index(image.shape[-2:], size)
    return jnp.asarray(image)[rows, cols]


def average_patches(patches: jax.Array, shape: tuple[int, int], size: int) -> jax.Array:
    """Adjoint of :func:`extract_patches` divided by the number of patches covering each pixel:
    the image whose every pixel is the mean of the patch values placed on it."""
    rows, cols = _patch_index(tuple(shape), size)
    total = jnp.zeros(shape, patches.dtype).at[rows, cols].add(patches)
    count = np.zeros(shape, np.float32)
    np.add.at(count, (rows, cols), 1.0)
    return total / count


def omp(dictionary: jax.Array, signals: jax.Array, *, max_atoms: int,
        tolerance: float | jax.Array = 0.0) -> jax.Array:
    """Orthogonal matching pursuit of each signal on unit-norm atoms.

    Adds, one at a time, the atom most correlated with the residual and refits all chosen
    atoms by least squares; a signal stops when its squared residual norm is at most
    ``tolerance`` or it has ``max_atoms`` atoms.

    Args:
      dictionary: ``(n, K)`` unit-norm columns (real or complex).
      signals: ``(P, n)``, one signal per row.
      max_atoms: the most atoms per signal (a static int ``>= 1``).
      tolerance: squared-error target per signal (0: always ``max_atoms`` atoms).

    Returns:
      Coefficients ``(P, K)`` with at most ``max_atoms`` non-zeros per row;
      ``signals ~ coefficients @ dictionary.T``.
    """
    return _omp(jnp.asarray(dictionary), jnp.asarray(signals), jnp.asarray(tolerance),
                max_atoms=check_int(max_atoms, "max_atoms"))


@functools.partial(jax.jit, static_argnames=("max_atoms",))
def _omp(dictionary, signals, tolerance, *, max_atoms):
    dtype = jnp.result_type(dictionary, signals)
    d, y = dictionary.astype(dtype), signals.astype(dtype)
    num, k = y.shape[0], d.shape[1]
    eye = jnp.eye(max_atoms, dtype=dtype)

    def step(t, carry):
        support, active, coef, residual = carry
        go = jnp.sum(jnp.abs(residual) ** 2, axis=-1) > tolerance        # (P,)
        corr = jnp.abs(residual @ jnp.conj(d))                            # (P, K)
        # An atom already chosen has a residual correlation of 0 in exact arithmetic.
        chosen = jnp.any((support[..., None] == jnp.arange(k)) & active[..., None], axis=1)
        pick = jnp.argmax(jnp.where(chosen, -1.0, corr), axis=-1)
        support = support.at[:, t].set(jnp.where(go, pick, 0))
        active = active.at[:, t].set(go)
        atoms = d.T[support] * active[..., None]                         # (P, L, n)
        gram = jnp.conj(atoms) @ jnp.swapaxes(atoms, -1, -2)             # (P, L, L)
        gram = gram + eye * (~active)[:, None, :]
        rhs = jnp.einsum("pln,pn->pl", jnp.conj(atoms), y)
        coef = jnp.linalg.solve(gram, rhs[..., None])[..., 0] * active
        residual = y - jnp.einsum("pl,pln->pn", coef, atoms)
        return support, active, coef, residual

    init = (jnp.zeros((num, max_atoms), jnp.int32), jnp.zeros((num, max_atoms), bool),
            jnp.zeros((num, max_atoms), dtype), y)
    support, active, coef, _ = lax.fori_loop(0, max_atoms, step, init)
    return jnp.zeros((num, k), dtype).at[jnp.arange(num)[:, None], support].add(coef * active)


def ksvd(signals: jax.Array, initial: jax.Array, *, sparsity: int, num_iters: int,
         tolerance: float | jax.Array = 0.0) -> jax.Array:
    """K-SVD dictionary learning (Aharon, Elad & Bruckstein 2006).

    Alternates :func:`omp` (at most ``sparsity`` atoms, squared error ``tolerance``) with an
    update of each atom in turn: the best rank-1 fit of the residual restricted to the signals
    that use the atom gives the new atom and its coefficients. An atom no signal uses is kept.

    Args:
      signals: ``(P, n)`` training signals, one per row.
      initial: ``(n, K)`` unit-norm starting atoms.
      sparsity, num_iters: static ints ``>= 1``.

    Returns:
      The learned ``(n, K)`` dictionary (unit-norm columns).
    """
    return _ksvd(jnp.asarray(signals), jnp.asarray(initial), jnp.asarray(tolerance),
                 sparsity=check_int(sparsity, "sparsity"),
                 num_iters=check_int(num_iters, "num_iters"))


@functools.partial(jax.jit, static_argnames=("sparsity", "num_iters"))
def _ksvd(signals, initial, tolerance, *, sparsity, num_iters):
    dtype = jnp.result_type(signals, initial)
    y, d0 = signals.astype(dtype).T, initial.astype(dtype)             # (n, P), (n, K)

    def update_atom(k, carry):
        d, coef, residual = carry                                       # coef (K, P)
        users = coef[k] != 0
        error = (residual + d[:, k][:, None] * coef[k][None]) * users       # (n, P)
        _, vectors = jnp.linalg.eigh(error @ jnp.conj(error.T))
        atom = jnp.where(jnp.any(users), vectors[:, -1], d[:, k])
        row = (jnp.conj(atom) @ error) * users
        residual = jnp.where(users, error - atom[:, None] * row[None], residual)
        return d.at[:, k].set(atom), coef.at[k].set(row), residual

    def iteration(_, d):
        coef = _omp(d, y.T, tolerance, max_atoms=sparsity).T
        carry = (d, coef, y - d @ coef)
        d, _, _ = lax.fori_loop(0, d.shape[1], update_atom, carry)
        return d

    return lax.fori_loop(0, num_iters, iteration, d0)


def dlmri_thresholds(num_iters: int, base: float = 0.023) -> tuple[float, ...]:
    """DLMRI-Lab's error thresholds: ``base * 2`` for the first 4 outer iterations, then
    ``base * 1.4``."""
    return tuple(base * (2.0 if i < 4 else 1.4) for i in range(num_iters))


def dlmri(kspace: jax.Array, mask: jax.Array, maps: jax.Array, key: jax.Array, *,
          num_iters: int = 20, patch_size: int = 6, num_atoms: int = 36,
          num_train: int = 7200, sparsity: int = 7, ksvd_iters: int = 20,
          thresholds: tuple[float, ...] | None = None) -> jax.Array:
    """DLMRI reconstruction of one single-coil slice.

    Args:
      kspace: measured k-space ``(1, H, W)`` complex64 (values off the mask are ignored).
      mask: real 0/1 mask broadcastable to ``(1, H, W)``.
      maps: the coil's sensitivity ``(1, H, W)`` (non-zero where the image is wanted).
      key: PRNG key (the random training subset of each outer iteration).
      num_iters: outer iterations (DLMRI-Lab's examples: 20).
      patch_size: patch side ``p`` (``n = p^2`` pixels).
      num_atoms: dictionary size ``K >= n`` (the first ``n`` atoms start as the patches'
        principal directions, the rest as random training patches).
      num_train: training patches per outer iteration.
      sparsity: ``T0``, atoms per patch in K-SVD; coding the image uses ``2 T0``.
      ksvd_iters: K-SVD iterations per outer iteration.
      thresholds: per outer iteration, the RMS patch error at which coding stops (default
        :func:`dlmri_thresholds`), for the image scaled to peak 1.

    Returns:
      complex64 image ``(H, W)``.
    """
    check_complex(kspace, "kspace")
    check_complex(maps, "maps")
    if np.shape(kspace)[:-2] != (1,) or np.shape(maps) != np.shape(kspace):
        raise ValueError(f"dlmri takes one single-coil slice: kspace and maps of shape "
                         f"(1, H, W), got {np.shape(kspace)} and {np.shape(maps)}")
    check_broadcasts_to(mask, np.shape(kspace), "mask", what="kspace ")
    sizes = {name: check_int(value, name) for name, value in dict(
        num_iters=num_iters, patch_size=patch_size, num_atoms=num_atoms, num_train=num_train,
        sparsity=sparsity, ksvd_iters=ksvd_iters).items()}
    if num_atoms < patch_size ** 2:
        raise ValueError(f"num_atoms ({num_atoms}) must be at least patch_size^2 "
                         f"({patch_size ** 2})")
    if thresholds is None:
        thresholds = dlmri_thresholds(num_iters)
    if len(thresholds) != num_iters:
        raise ValueError(f"thresholds has {len(thresholds)} entries for {num_iters} iterations")
    for value in thresholds:
        check_positive(value, "thresholds", allow_zero=True)
    mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), np.shape(kspace))
    return _dlmri(jnp.asarray(kspace), mask, jnp.asarray(maps), key,
                  jnp.asarray(thresholds, jnp.float32), **sizes)


@functools.partial(jax.jit, static_argnames=("num_iters", "patch_size", "num_atoms",
                                             "num_train", "sparsity", "ksvd_iters"))
def _dlmri(kspace, mask, maps, key, thresholds, *, num_iters, patch_size, num_atoms,
           num_train, sparsity, ksvd_iters):
    y = (mask * kspace)[0]
    coil = ifft2c(y)
    scale = jnp.maximum(jnp.max(jnp.abs(coil)), 1e-12)
    y, coil = y / scale, coil / scale
    n = patch_size * patch_size
    shape = coil.shape
    num_patches = (shape[0] - patch_size + 1) * (shape[1] - patch_size + 1)
    num_train = min(num_train, num_patches)

    def outer(i, carry):
        image, key = carry
        key, pick_key, extra_key = jax.random.split(key, 3)
        patches = extract_patches(image, patch_size)
        means = jnp.mean(patches, axis=-1, keepdims=True)
        centred = patches - means
        train = centred[jax.random.choice(pick_key, num_patches, (num_train,), replace=False)]
        # Start: the training patches' principal directions, then random training patches.
        _, vectors = jnp.linalg.eigh(jnp.conj(train.T) @ train)
        extra = train[jax.random.choice(extra_key, num_train, (num_atoms - n,), replace=False)]
        extra = extra.T / jnp.maximum(jnp.linalg.norm(extra, axis=-1), 1e-12)
        initial = jnp.concatenate([vectors[:, ::-1], extra], axis=1)
        tolerance = thresholds[i] ** 2 * n
        d = _ksvd(train, initial, tolerance, sparsity=sparsity, num_iters=ksvd_iters)
        coef = _omp(d, centred, tolerance, max_atoms=2 * sparsity)
        image = average_patches(coef @ d.T + means, shape, patch_size)
        k = fft2c(image)
        image = ifft2c(jnp.where(mask[0] > 0, y, k))
        return image, key

    coil, _ = lax.fori_loop(0, num_iters, outer, (coil, key))
    weight = jnp.abs(maps[0]) ** 2
    image = jnp.conj(maps[0]) * coil * scale / jnp.where(weight > 0, weight, 1.0)
    return image.astype(jnp.complex64)
