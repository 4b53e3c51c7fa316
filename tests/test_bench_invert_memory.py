"""benchmarks.invert_memory: the implicit inverse's memory is flat in the iteration count.

Memory only (XLA buffer assignment of the compiled InvSharpNet backward step), no timing; a tiny
network (1 block x 2 convs x 4 channels, 16 px, batch 2) so that the four compiles stay fast.
"""

import numpy as np
import pytest

from benchmarks.invert_memory import inverse_mode, measure
from jaxmri.models import invsharp as isn
from jaxmri.nn.fixed_point import Implicit, Unrolled


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)

    def image():
        return (rng.standard_normal((2, 16, 16))
                + 1j * rng.standard_normal((2, 16, 16))).astype(np.complex64)

    batch = {"recon": image(), "target": image(), "zero_filled": image()}
    config = isn.InvSharpConfig(num_blocks=1, depth=2, hidden=4)
    out = measure(config, batch, image_size=16, iterations=(1, 16), count_iterations=False)
    return {(r["inverse"], r["iterations"]): r for r in out}


def test_implicit_peak_memory_is_flat_in_iterations(rows):
    one, sixteen = rows["implicit", 1], rows["implicit", 16]
    assert sixteen["memory"]["peak"] <= 1.2 * one["memory"]["peak"]
    assert sixteen["peak / peak at 1"] == pytest.approx(
        sixteen["memory"]["peak"] / one["memory"]["peak"])


def test_unrolled_peak_memory_grows_with_iterations(rows):
    one, sixteen = rows["unrolled", 1], rows["unrolled", 16]
    # Autodiff keeps every iteration's activations: 16 iterations need far more than 1.
    assert sixteen["memory"]["temp"] > 3 * one["memory"]["temp"]
    assert sixteen["memory"]["peak"] > 2 * one["memory"]["peak"]
    # ... and far more than the implicit step at 16 iterations.
    assert sixteen["memory"]["peak"] > 2 * rows["implicit", 16]["memory"]["peak"]


def test_rows_report_consistent_sizes(rows):
    for row in rows.values():
        mem = row["memory"]
        assert mem["peak"] == mem["argument"] + mem["output"] + mem["temp"] - mem["alias"]
        assert row["peak MiB"] == pytest.approx(mem["peak"] / 2**20)
        assert row["ms/step"] is None  # no timing asked for


def test_inverse_mode():
    # Short adjoint solves unrolled (as jaxmri did implicitly before the option existed).
    assert inverse_mode("implicit", 4) == Implicit(tol=1e-30, max_iter=4, unroll_adjoint=True)
    assert inverse_mode("implicit", 32) == Implicit(tol=1e-30, max_iter=32)
    assert inverse_mode("unrolled", 4) == Unrolled(num_iter=4)
    with pytest.raises(ValueError):
        inverse_mode("scan", 4)
