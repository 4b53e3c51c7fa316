"""jaxmri's XLA:CPU defaults: when the convolution flag is added, and that it takes effect."""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxmri import xla_defaults

FLAG = xla_defaults.CPU_CONV_FLAG
VERIFIED = xla_defaults.VERIFIED_JAXLIB[0]


@pytest.mark.parametrize("environ, jaxlib_minor, expected", [
    ({}, VERIFIED, [FLAG]),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, VERIFIED, [FLAG]),
    ({"JAXMRI_XLA_DEFAULTS": "0"}, VERIFIED, []),
    ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"}, VERIFIED, []),
    ({}, (0, 4), []),
    ({}, None, []),
])
def test_flag_is_added_only_when_safe_and_not_chosen_by_the_user(environ, jaxlib_minor, expected):
    assert xla_defaults.cpu_flags_to_add(environ, jaxlib_minor) == expected


def test_apply_keeps_the_users_other_flags(monkeypatch):
    monkeypatch.setattr(xla_defaults, "_jaxlib_minor", lambda: VERIFIED)
    monkeypatch.setattr(xla_defaults, "_backend_started", lambda: False)
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_defaults.apply(environ) == [FLAG]
    assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", FLAG]
    assert xla_defaults.apply(environ) == []  # idempotent: already set
    assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", FLAG]


def test_apply_warns_instead_of_pretending_once_the_backend_has_started(monkeypatch):
    monkeypatch.setattr(xla_defaults, "_jaxlib_minor", lambda: VERIFIED)
    monkeypatch.setattr(xla_defaults, "_backend_started", lambda: True)
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    with pytest.warns(RuntimeWarning, match="Import jaxmri first"):
        assert xla_defaults.apply(environ) == []
    assert environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


_PROBE = r"""
import json, re, sys
import numpy as np
import jax, jax.numpy as jnp
import jaxmri
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
rng = np.random.default_rng(0)
# 32 channels: jaxlib gives convolutions this wide to YNNPACK (narrow ones stay with Eigen).
x = rng.standard_normal((2, 9, 8, 32)).astype(np.float32)
w = (rng.standard_normal((3, 3, 32, 32)) / 17).astype(np.float32)
g = rng.standard_normal((2, 9, 8, 32)).astype(np.float32)
hlo = jax.jit(conv).lower(x, w).compile().as_text()
# Independent reference: zero-padded cross-correlation in NumPy, and the weight gradient of
# sum(conv(x, w) * g), which is the correlation of the patches of x with g.
xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
patches = np.stack([xp[:, i:i + 9, j:j + 8, :] for i in range(3) for j in range(3)], axis=3)
grad_w = jax.grad(lambda w_: jnp.sum(conv(x, w_) * g))(w)
json.dump({
    "flags": __import__("os").environ.get("XLA_FLAGS", ""),
    "kinds": sorted(set(re.findall(r'"kind":"(\w+)"', hlo))),
    "value_err": float(np.max(np.abs(conv(x, w) - np.einsum("nhwkc,kco->nhwo", patches,
                                                              w.reshape(9, 32, 32))))),
    "grad_err": float(np.max(np.abs(grad_w - np.einsum("nhwkc,nhwo->kco", patches, g)
                                    .reshape(w.shape)))),
}, sys.stdout)
"""


def _probe(**env_changes):
    """Run the probe in a fresh interpreter (XLA reads its flags once per process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXMRI_XLA_DEFAULTS")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


@pytest.mark.skipif(xla_defaults._jaxlib_minor() not in xla_defaults.VERIFIED_JAXLIB
                    or jax.default_backend() != "cpu", reason="flag applies to verified CPU jaxlib")
def test_importing_jaxmri_moves_convolutions_off_ynnpack_with_the_same_values():
    default = _probe()
    assert FLAG in default["flags"].split()
    assert "__ynn_fusion" not in default["kinds"], default
    opted_out = _probe(JAXMRI_XLA_DEFAULTS="0")
    assert FLAG not in opted_out["flags"].split()
    assert "__ynn_fusion" in opted_out["kinds"], opted_out  # jaxlib's own choice, for contrast
    for run in (default, opted_out):
        assert run["value_err"] < 1e-5 and run["grad_err"] < 1e-4, run
