"""Importing jaxmri changes nothing global (issue 26); the entry points apply the XLA:CPU
settings themselves, after parsing their arguments and before JAX starts its backend.

Each check runs in a fresh interpreter: the environment and glibc's allocator are per process.
The allocator is observed through its behaviour: glibc serves a 64 MiB ``malloc`` with ``mmap``
(one more block in ``mallinfo2().hblks``) unless ``M_MMAP_MAX`` was set to 0, which
:func:`jaxmri.cpu.configure` does; each probe shows both states, so it can tell them apart.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

from jaxmri.cpu import settings

_GLIBC = platform.libc_ver()[0] == "glibc" and sys.platform.startswith("linux")

_MALLOC_PROBE = r"""
import ctypes

class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2
_libc.malloc.restype, _libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]

def big_malloc_is_mmapped():
    before = _libc.mallinfo2().hblks
    block = _libc.malloc(64 << 20)
    mmapped = _libc.mallinfo2().hblks == before + 1
    _libc.free(block)
    return mmapped
"""

_IMPORT_PROBE = _MALLOC_PROBE + r"""
import json, os, pkgutil, importlib, sys
environ_before = dict(os.environ)
import jaxmri
modules = [m.name for m in pkgutil.walk_packages(jaxmri.__path__, "jaxmri.")]
for name in modules:
    importlib.import_module(name)
environ_after = dict(os.environ)
mmapped_after_import = big_malloc_is_mmapped()
import jaxmri.cpu
added = jaxmri.cpu.configure()
json.dump({"modules": modules, "changed": sorted(k for k in set(environ_before) | set(environ_after)
                                                 if environ_before.get(k) != environ_after.get(k)),
           "mmapped_after_import": mmapped_after_import,
           "mmapped_after_configure": big_malloc_is_mmapped(),
           "added": added, "flags_after_configure": os.environ.get("XLA_FLAGS", "")},
          sys.stdout)
"""


def _clean_env(**changes):
    """The suite's environment without its opt-out, XLA flags or malloc settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAXMRI_XLA_DEFAULTS") and not k.startswith("MALLOC_")}
    env.update({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
               **changes)
    return env


def _run(source, *args, **env_changes):
    out = subprocess.run([sys.executable, "-c", source, *args], env=_clean_env(**env_changes),
                         capture_output=True, text=True, timeout=300, check=False,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _GLIBC, reason="observes glibc's allocator")
def test_importing_every_jaxmri_module_changes_neither_environment_nor_allocator():
    result = _run(_IMPORT_PROBE)
    assert "jaxmri.cpu.conv" in result["modules"] and "jaxmri.train.cli" in result["modules"]
    assert result["changed"] == [], result["changed"]
    assert result["mmapped_after_import"], "the allocator was configured on import"
    # The probe can see a change: the explicit call makes both.
    if settings._jaxlib_minor() in settings.VERIFIED_JAXLIB:
        assert result["added"] == [settings.CPU_CONV_FLAG, settings.TEMP_HEAP_FLAG]
        assert settings.CPU_CONV_FLAG in result["flags_after_configure"].split()
    assert not result["mmapped_after_configure"]


# An entry point's main runs until jaxmri.cpu.configure (spied: it records the state right after
# the real call), then stops.
_ENTRY_PROBE = _MALLOC_PROBE + r"""
import importlib, json, os, sys
import jax._src.xla_bridge as xla_bridge  # test-only: whether JAX has started its backend
import jaxmri.cpu

_real = jaxmri.cpu.configure
def _spy(*args, **kwargs):
    started_before = xla_bridge.backends_are_initialized()
    _real(*args, **kwargs)
    json.dump({"backend_started": started_before, "flags": os.environ.get("XLA_FLAGS", ""),
               "mmapped": big_malloc_is_mmapped()}, sys.stdout)
    print()
    raise SystemExit(0)

jaxmri.cpu.configure = _spy
module = importlib.import_module(sys.argv[1])
module.main(["--steps", "1", "--workdir", sys.argv[2]])
raise SystemExit("configure was never called")
"""


@pytest.mark.skipif(not _GLIBC or settings._jaxlib_minor() not in settings.VERIFIED_JAXLIB,
                    reason="the settings apply to glibc and a verified jaxlib")
@pytest.mark.parametrize("entry", [  # each imports its experiment in a fresh process (~30 s)
    "experiments.invsharp", *(pytest.param(name, marks=pytest.mark.slow) for name in (
        "experiments.ifrnet", "experiments.refine", "experiments.dsgan_sr",
        "experiments.joint_recsr"))])
def test_experiment_entry_points_configure_before_jax_starts(entry, tmp_path):
    result = _run(_ENTRY_PROBE, entry, str(tmp_path / "run"))
    assert not result["backend_started"]
    flags = result["flags"].split()
    assert settings.CPU_CONV_FLAG in flags and settings.TEMP_HEAP_FLAG in flags
    assert "--xla_force_host_platform_device_count=1" in flags  # the user's flags are kept
    assert not result["mmapped"]
    assert not (tmp_path / "run").exists()  # stopped at configure, before the workdir


_BENCH_PROBE = _MALLOC_PROBE + r"""
import json, os, sys
import jax._src.xla_bridge as xla_bridge
import benchmarks.step_time  # the package configures on import: every module is an entry point
json.dump({"backend_started": xla_bridge.backends_are_initialized(),
           "flags": os.environ.get("XLA_FLAGS", ""), "mmapped": big_malloc_is_mmapped()},
          sys.stdout)
"""


@pytest.mark.skipif(not _GLIBC or settings._jaxlib_minor() not in settings.VERIFIED_JAXLIB,
                    reason="the settings apply to glibc and a verified jaxlib")
def test_benchmark_entry_points_configure_before_jax_starts():
    result = _run(_BENCH_PROBE)
    assert not result["backend_started"]
    assert settings.CPU_CONV_FLAG in result["flags"].split()
    assert not result["mmapped"]


def test_setup_from_args_picks_the_cpu_convolution_on_a_cpu_device(tmp_path):
    import jax
    from jax import lax

    import jaxmri.cpu
    from jaxmri.train.cli import experiment_parser, setup_from_args

    parser = experiment_parser("probe", presets={"cpu": object()}, name="probe")
    args = parser.parse_args(["--workdir", str(tmp_path)])
    setup_from_args(args)
    expected = (jaxmri.cpu.conv_general_dilated if jax.devices()[0].platform == "cpu"
                else lax.conv_general_dilated)
    assert args.conv_general_dilated is expected
