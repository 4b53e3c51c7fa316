"""Conventions every public function of the library keeps (dm-pix's api_test, for jaxmri).

* every public name of the core packages has a docstring;
* the physics and metrics functions state the shapes they take (``H, W`` axes);
* options are keyword-only: a public physics/metrics function has at most three positional
  parameters besides ``rng``/``key`` (arrays), the rest are keyword-only.
"""

import importlib
import inspect
import pkgutil

import pytest

import jaxmri

PACKAGES = ["jaxmri.physics", "jaxmri.metrics", "jaxmri.nn", "jaxmri.data", "jaxmri.train"]
ARRAY_PACKAGES = ["jaxmri.physics", "jaxmri.metrics"]
# Public functions of those packages that take no image arrays.
NO_ARRAYS = {"as_numpy_generator", "load_pretrained", "ms_ssim_num_scales"}


def _public(package):
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    if names is None:  # no __all__: the module's own public functions and classes
        names = [n for n, o in vars(module).items() if not n.startswith("_")
                 and (inspect.isfunction(o) or inspect.isclass(o))
                 and o.__module__ == module.__name__]
    return [(name, getattr(module, name)) for name in names]


ALL_MODULES = sorted(m.name for m in pkgutil.walk_packages(jaxmri.__path__, "jaxmri."))


@pytest.mark.parametrize("package", ALL_MODULES)
def test_every_public_name_is_documented(package):
    module = importlib.import_module(package)
    assert len((module.__doc__ or "").strip()) >= 20, f"{package} has no module docstring"
    undocumented = [name for name, obj in _public(package)
                    if callable(obj) and len((inspect.getdoc(obj) or "").strip()) < 20]
    assert not undocumented, f"{package}: no docstring on {undocumented}"


@pytest.mark.parametrize("package", ARRAY_PACKAGES)
def test_array_functions_state_their_shapes(package):
    missing = []
    for name, obj in _public(package):
        if not inspect.isfunction(obj) or name in NO_ARRAYS:
            continue
        doc = inspect.getdoc(obj)
        if "H, W" not in doc and "(H, W)" not in doc and "shape" not in doc:
            missing.append(name)
    assert not missing, f"{package}: docstrings without shapes: {missing}"


@pytest.mark.parametrize("package", ARRAY_PACKAGES)
def test_options_are_keyword_only(package):
    offenders = []
    for name, obj in _public(package):
        if not inspect.isfunction(obj):
            continue
        positional = [p for p in inspect.signature(obj).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                      and p.name not in ("rng", "key")]
        if len(positional) > 3:
            offenders.append(f"{name}{inspect.signature(obj)}")
    assert not offenders, f"{package}: options should be keyword-only: {offenders}"
