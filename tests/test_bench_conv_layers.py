"""benchmarks.conv_layers: the three convolutions of a training step it times are the right ones."""

import numpy as np
import pytest

from benchmarks.conv_layers import DIRECTIONS, _layer_inputs, jax_direction_fns


def _numpy_directions(x, w, dy):
    """Forward 'SAME' 3x3 correlation, input gradient and kernel gradient by explicit sums over
    the nine taps (NHWC / HWIO), in float64."""
    x, w, dy = (a.astype(np.float64) for a in (x, w, dy))
    n, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    forward = np.zeros(dy.shape)
    dxp = np.zeros(xp.shape)
    kernel_grad = np.zeros(w.shape)
    for i in range(3):
        for j in range(3):
            window = xp[:, i:i + h, j:j + wd]
            forward += window @ w[i, j]
            dxp[:, i:i + h, j:j + wd] += dy @ w[i, j].T
            kernel_grad[i, j] = window.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
    return {"forward": forward, "input grad": dxp[:, 1:-1, 1:-1], "kernel grad": kernel_grad}


# Batch 2 (jaxmri tiles the kernel gradient), batch 8 (XLA's), a narrow output (a product).
@pytest.mark.parametrize("shape", [(2, 9, 5, 6), (8, 6, 3, 4), (2, 8, 16, 2)])
def test_direction_fns_compute_forward_and_both_gradients(shape):
    x, w, dy = _layer_inputs(*shape)
    got = {d: np.asarray(fn(x, w, dy)) for d, fn in jax_direction_fns().items()}
    want = _numpy_directions(x, w, dy)
    assert set(got) == set(DIRECTIONS)
    for direction in DIRECTIONS:
        np.testing.assert_allclose(got[direction], want[direction], rtol=1e-4,
                                   atol=1e-4 * np.abs(want[direction]).max(), err_msg=direction)
    # The adjoint identities tie the three together: <conv(x, w), dy> = <x, dx> = <w, dw>.
    inner = np.vdot(want["forward"], dy)
    np.testing.assert_allclose([np.vdot(x, got["input grad"]), np.vdot(w, got["kernel grad"])],
                               [inner, inner], rtol=1e-4)
