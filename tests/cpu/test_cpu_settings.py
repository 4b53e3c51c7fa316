"""jaxmri.cpu.configure(): when the flags and malloc options are set, and that they take effect
(convolutions leave YNNPACK; a step's temporaries stop costing page faults)."""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxmri.cpu import settings as xla_defaults

FLAG = xla_defaults.CPU_CONV_FLAG
HEAP = xla_defaults.TEMP_HEAP_FLAG
VERIFIED = xla_defaults.VERIFIED_JAXLIB[0]


@pytest.mark.parametrize("environ, jaxlib_minor, expected", [
    ({}, VERIFIED, [FLAG, HEAP]),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, VERIFIED, [FLAG, HEAP]),
    ({"JAXMRI_XLA_DEFAULTS": "0"}, VERIFIED, []),
    ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"}, VERIFIED,
     [HEAP]),
    ({"XLA_FLAGS": "--xla_multiheap_size_constraint_per_heap=-1"}, VERIFIED, [FLAG]),
    ({}, (0, 4), []),
    ({}, None, []),
])
def test_flags_are_added_only_when_safe_and_not_chosen_by_the_user(environ, jaxlib_minor,
                                                                   expected):
    assert xla_defaults.cpu_flags_to_add(environ, jaxlib_minor) == expected


@pytest.mark.parametrize("environ, libc, system, expected", [
    ({}, "glibc", "linux", xla_defaults.MALLOC_OPTIONS),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, "glibc", "linux",
     xla_defaults.MALLOC_OPTIONS),
    ({"JAXMRI_XLA_DEFAULTS": "0"}, "glibc", "linux", {}),
    ({"MALLOC_ARENA_MAX": "2"}, "glibc", "linux", {}),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "glibc", "linux", {}),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "glibc", "linux", {}),
    ({}, "", "linux", {}),  # musl and other C libraries have no mallopt of this meaning
    ({}, "", "darwin", {}),
    ({}, "", "win32", {}),
])
def test_malloc_options_only_for_glibc_and_never_over_the_users_own(environ, libc, system,
                                                                     expected):
    assert xla_defaults.malloc_options_to_set(environ, libc, system) == expected


def test_malloc_options_are_the_documented_glibc_parameters():
    # glibc malloc.h: M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_MAX -4. The pad must exceed twice
    # the 64 MiB heap of a worker arena, else glibc still deletes emptied heaps (see the module
    # docstring), and the per-heap cap must fit in such a heap.
    options = xla_defaults.MALLOC_OPTIONS
    assert options["M_MMAP_MAX"] == (-4, 0)
    assert options["M_TRIM_THRESHOLD"][0] == -1 and options["M_TRIM_THRESHOLD"][1] >= 2**30
    assert options["M_TOP_PAD"][0] == -2 and options["M_TOP_PAD"][1] >= 2 * 64 * 2**20
    assert int(HEAP.split("=")[1]) <= 64 * 2**20 // 2


def _configure_without_mallopt(monkeypatch, environ):
    calls = []
    monkeypatch.setattr(xla_defaults, "_set_malloc_options", calls.append)
    return xla_defaults.configure(environ), calls


def test_configure_keeps_the_users_other_flags(monkeypatch):
    monkeypatch.setattr(xla_defaults, "_jaxlib_minor", lambda: VERIFIED)
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    assert _configure_without_mallopt(monkeypatch, environ)[0] == [FLAG, HEAP]
    assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", FLAG, HEAP]
    assert _configure_without_mallopt(monkeypatch, environ)[0] == []  # idempotent: already set
    assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", FLAG, HEAP]


@pytest.mark.parametrize("platforms, expected", [("cpu", True), ("cuda", False), ("tpu", False),
                                                 ("cuda,cpu", False), ("cpu,cuda", True)])
def test_configure_does_nothing_when_jax_will_run_on_an_accelerator(monkeypatch, platforms,
                                                                    expected):
    monkeypatch.setattr(xla_defaults, "_jaxlib_minor", lambda: VERIFIED)
    environ = {"JAX_PLATFORMS": platforms}
    assert xla_defaults.cpu_backend_expected(environ) is expected
    flags, malloc_calls = _configure_without_mallopt(monkeypatch, environ)
    assert (flags == [FLAG, HEAP]) is expected and bool(malloc_calls) is expected
    assert ("XLA_FLAGS" in environ) is expected


def test_without_jax_platforms_an_installed_accelerator_plugin_decides(monkeypatch):
    monkeypatch.setattr(xla_defaults, "_accelerator_plugins", lambda: ["xla_cuda12"])
    assert not xla_defaults.cpu_backend_expected({})
    monkeypatch.setattr(xla_defaults, "_accelerator_plugins", lambda: [])
    assert xla_defaults.cpu_backend_expected({})


_PROBE = r"""
import json, re, sys
import numpy as np
import jax, jax.numpy as jnp
import jaxmri.cpu
jaxmri.cpu.configure()
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


def _probe(source=_PROBE, **env_changes):
    """Run a probe in a fresh interpreter (XLA reads its flags once per process), without the
    suite's XLA flags, opt-out and any malloc settings of the environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAXMRI_XLA_DEFAULTS") and not k.startswith("MALLOC_")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", source], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


@pytest.mark.skipif(xla_defaults._jaxlib_minor() not in xla_defaults.VERIFIED_JAXLIB
                    or jax.default_backend() != "cpu", reason="flag applies to verified CPU jaxlib")
def test_configure_moves_convolutions_off_ynnpack_with_the_same_values():
    default = _probe()
    assert FLAG in default["flags"].split()
    assert "__ynn_fusion" not in default["kinds"], default
    opted_out = _probe(JAXMRI_XLA_DEFAULTS="0")
    assert FLAG not in opted_out["flags"].split()
    assert "__ynn_fusion" in opted_out["kinds"], opted_out  # jaxlib's own choice, for contrast
    for run in (default, opted_out):
        assert run["value_err"] < 1e-5 and run["grad_err"] < 1e-4, run


_FAULTS_PROBE = r"""
import json, resource, sys
import numpy as np
import jax, jax.numpy as jnp
import jaxmri.cpu
jaxmri.cpu.configure()
rng = np.random.default_rng(0)
x_host = rng.standard_normal((1 << 17, 64)).astype(np.float32)
ws_host = [(rng.standard_normal((64, 64)) / 8).astype(np.float32) for _ in range(4)]
x, ws = jax.device_put((x_host, ws_host))  # on the device once, as a training loop's batch is

def loss(ws, h):
    for w in ws:
        h = jnp.tanh(h @ w)
    return jnp.mean(h ** 2)

# A "training step" whose activations (4 x 32 MiB, kept for the backward pass) are XLA
# temporaries allocated and freed on every call.
compiled = jax.jit(jax.grad(loss)).lower(ws, x).compile()  # compiled once, run 15 times
faults = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    grads = jax.block_until_ready(compiled(ws, x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# Independent reference: the same MLP's gradient by hand in float64.
acts = [x_host.astype(np.float64)]
for w in ws_host:
    acts.append(np.tanh(acts[-1] @ w))
d = 2 * acts[-1] / acts[-1].size
errs = []
for i in reversed(range(len(ws))):
    dz = d * (1 - acts[i + 1] ** 2)
    ref = acts[i].T @ dz
    errs.append(float(np.linalg.norm(np.asarray(grads[i]) - ref) / np.linalg.norm(ref)))
    d = dz @ ws_host[i].T.astype(np.float64)
# The median over steps 4-15: the first steps (and a step that runs on a thread whose malloc arena
# has not served a step before) fill the heaps that later steps reuse.
json.dump({"faults_per_step": float(np.median(faults[3:])), "grad_rel_err": max(errs),
           "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}, sys.stdout)
"""


@pytest.mark.skipif(xla_defaults._jaxlib_minor() not in xla_defaults.VERIFIED_JAXLIB
                    or jax.default_backend() != "cpu"
                    or xla_defaults.platform.libc_ver()[0] != "glibc"
                    or not sys.platform.startswith("linux"),
                    reason="the malloc options are for glibc, the heap cap for a verified jaxlib")
def test_a_steps_temporaries_stop_costing_page_faults_after_warm_up():
    default = _probe(_FAULTS_PROBE)
    opted_out = _probe(_FAULTS_PROBE, JAXMRI_XLA_DEFAULTS="0")
    temp_pages = default["temp_bytes"] / 4096
    assert temp_pages > 32_000, default  # the step really has > 128 MiB of temporaries
    # jaxlib's and glibc's own behaviour, for contrast: the temporaries come back as fresh
    # zero-filled pages on every call.
    assert opted_out["faults_per_step"] > 0.5 * temp_pages, opted_out
    # With jaxmri's defaults the freed memory is reused: (almost) no page faults in a typical
    # step.
    assert default["faults_per_step"] < 0.02 * temp_pages, default
    for run in (default, opted_out):
        assert run["grad_rel_err"] < 1e-5, run
