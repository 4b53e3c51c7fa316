"""Every model gives the same loss and gradients with the plain convolution (the default, what
runs on GPU/TPU) and with jaxmri's XLA:CPU one (what the experiments run on the CPU).

Each model case runs with both implementations from the same parameters (initialised once,
with the plain one) and compares: the loss to float32 rounding, every
gradient leaf to 1e-4 of the largest gradient. The losses are weighted sums of every output
(fixed random weights), so every output element and every parameter takes part. The CPU
implementation's own unit tests (values, both gradients, forward mode) are in
tests/cpu/test_cpu_conv.py; these check that the models route all their convolutions through
the value they are given and that both paths stay equal.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxmri.cpu
from jaxmri.metrics.perceptual import features as pretrained_features
from jaxmri.models import dsgan
from jaxmri.models import ifrnet as ifr
from jaxmri.models import invsharp as isn
from jaxmri.models import joint_recsr as jr
from jaxmri.models.recon import DCCascade, MoDL, UNetRecon
from jaxmri.models.refine import GatedRefinement
from jaxmri.nn.edsr import EDSR
from jaxmri.nn.fixed_point import Unrolled
from jaxmri.nn.invertible import InvertibleSequence
from jaxmri.nn.patchgan import PatchGAN
from jaxmri.nn.rrdb import RRDB, RRDBSFT
from jaxmri.nn.unet import UNet
from jaxmri.nn.vgg_discriminator import VGGDiscriminator

PLAIN = lax.conv_general_dilated
CPU = jaxmri.cpu.conv_general_dilated


def _real(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _complex(seed, shape):
    return (_real(seed, shape) + 1j * _real(seed + 1, shape)).astype(jnp.complex64)


def _mri(n=2, coils=2, size=16):
    """A small multi-coil problem: (zero_filled, kspace, mask (N, H, W), maps)."""
    maps = _complex(3, (n, coils, size, size))
    maps = maps / jnp.sqrt(jnp.sum(jnp.abs(maps) ** 2, axis=1, keepdims=True))
    mask = (jax.random.uniform(jax.random.PRNGKey(5), (n, size, size)) < 0.6).astype(jnp.float32)
    kspace = jr.encode(_complex(7, (n, size, size)) / 3, maps, mask)
    return jr.encode_adjoint(kspace, maps, mask), kspace, mask, maps


def _module_case(build, *inputs, mutable=False, perturb=0.0, **call):
    """``(conv -> loss(params))`` of a Flax module built by ``build(conv)``, from one init.

    ``perturb > 0`` adds Gaussian noise of that standard deviation to every parameter, so that
    layers behind a zero-initialised convolution (an identity start) get non-zero gradients.
    """
    variables = build(PLAIN).init(jax.random.PRNGKey(0), *inputs, **call)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    if perturb:
        leaves, tree = jax.tree.flatten(params)
        params = jax.tree.unflatten(tree, [leaf + perturb * _real(100 + i, leaf.shape)
                                           for i, leaf in enumerate(leaves)])

    def loss_for(conv):
        module = build(conv)

        def loss(p):
            out = module.apply({"params": p, **state}, *inputs, **call,
                               **({"mutable": list(state)} if mutable else {}))
            out = out[0] if mutable else out
            return sum(jnp.vdot(_real(11 + i, leaf.shape), jnp.abs(leaf) if jnp.iscomplexobj(
                leaf) else leaf.astype(jnp.float32)) for i, leaf in enumerate(
                    jax.tree.leaves(out)) if jnp.issubdtype(leaf.dtype, jnp.inexact))

        return loss, params

    return loss_for


def _zf_ks_mask_maps():
    zf, ks, mask, maps = _mri()
    return zf, ks, mask[:, None], maps


CASES = {
    "UNet": lambda: _module_case(lambda c: UNet(2, features=(8, 16), conv_general_dilated=c),
                                 _real(1, (2, 16, 16, 3))),
    "EDSR": lambda: _module_case(lambda c: EDSR(num_blocks=1, features=8, scale=2,
                                                conv_general_dilated=c), _real(1, (2, 8, 8, 1))),
    "RRDB": lambda: _module_case(lambda c: RRDB(8, 4, conv_general_dilated=c),
                                 _real(1, (2, 8, 8, 8))),
    "RRDBSFT": lambda: _module_case(lambda c: RRDBSFT(8, 4, 4, conv_general_dilated=c),
                                    _real(1, (2, 8, 8, 8)), _real(2, (2, 8, 8, 2))),
    "PatchGAN": lambda: _module_case(
        lambda c: PatchGAN(features=(8, 16, 16), strides=(2, 2, 1), norm="none",
                           dropout_after=(), conv_general_dilated=c), _real(1, (2, 16, 16, 1))),
    "VGGDiscriminator": lambda: _module_case(
        lambda c: VGGDiscriminator(features=(4, 8), hidden=4, conv_general_dilated=c),
        _real(1, (3, 16, 16, 1))),
    "InvertibleSequence forward": lambda: _module_case(
        lambda c: InvertibleSequence(num_blocks=2, hidden=8, depth=3, init_power_iterations=5,
                                     conv_general_dilated=c),
        _real(1, (2, 8, 8, 4)), mutable=True, update_stats=True),
    "InvertibleSequence inverse": lambda: _module_case(
        lambda c: InvertibleSequence(num_blocks=2, hidden=8, depth=3, init_power_iterations=5,
                                     conv_general_dilated=c),
        _real(1, (2, 8, 8, 4)), mode=Unrolled(2), method="inverse"),
    "InvSharpNet Critic": lambda: _module_case(
        lambda c: isn.Critic((8, 16), conv_general_dilated=c), _real(1, (3, 16, 16, 2)),
        _real(2, (3, 16, 16, 2))),
    "DSGAN generator": lambda: _module_case(
        lambda c: dsgan.DeepLinearGenerator(features=8, conv_general_dilated=c),
        _real(1, (2, 24, 24, 1))),
    "DSGAN discriminator": lambda: _module_case(
        lambda c: dsgan.PatchDiscriminator(features=8, num_1x1=2, batch_norm=False,
                                           conv_general_dilated=c), _real(1, (2, 12, 12, 1)),
        mutable=True, update_stats=True),
    "DSGAN downsampling net": lambda: _module_case(
        lambda c: dsgan.DownsamplingNet(features=8, num_layers=2, conv_general_dilated=c),
        _real(1, (2, 16, 16, 1))),
    "IFR-Net": lambda: _module_case(
        lambda c: ifr.IFRNet(num_stages=2, num_blocks=1, features=4, conv_general_dilated=c),
        _mri(coils=1)[1][:, 0], _mri(coils=1)[2]),
    "DC cascade": lambda: _module_case(
        lambda c: DCCascade(num_cascades=1, convs_per_cascade=3, features=8,
                            conv_general_dilated=c), *_zf_ks_mask_maps()),
    # MoDL's denoiser ends in a zero convolution (identity start): perturbed, so that every
    # convolution's gradient, through the shared denoiser and the CG solves, is compared.
    "MoDL": lambda: _module_case(
        lambda c: MoDL(num_iterations=2, convs=3, features=4, cg_iters=4,
                       conv_general_dilated=c), *_zf_ks_mask_maps(), perturb=0.05),
    "U-Net recon": lambda: _module_case(
        lambda c: UNetRecon(features=(4, 8), conv_general_dilated=c), _mri()[0]),
    "Gated refinement": lambda: _module_case(
        lambda c: GatedRefinement((4, 8), (4,), conv_general_dilated=c),
        jnp.abs(_complex(1, (2, 16, 16)))),
    "PGD-DEQ": lambda: _module_case(
        lambda c: jr.PGDDEQ(features=4, growth=2, max_iter=3, tol=0.0, conv_general_dilated=c),
        *_mri()[1:]),
    "Joint Rec+SR": lambda: _module_case(
        lambda c: jr.JointRecSR(variant="proposed", sr_features=4, sr_growth=2, sr_blocks=1,
                                cond_features=2, rec_features=4, rec_growth=2, max_iter=3,
                                conv_general_dilated=c), *_mri(size=8)),
}


def _perceptual_case(net):
    """The pretrained trunk differentiated in its input, as the perceptual losses use it."""
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 48, 48))
    shapes = jax.eval_shape(lambda x: pretrained_features(net, x), images)
    weights = [_real(20 + i, t.shape) for i, t in enumerate(shapes)]

    def loss_for(conv):
        def loss(x):
            taps = pretrained_features(net, x, conv_general_dilated=conv)
            return sum(jnp.vdot(w, t) for w, t in zip(weights, taps, strict=True))

        return loss, images

    return loss_for


CASES["VGG16 features (perceptual loss)"] = lambda: _perceptual_case("vgg16")
CASES["AlexNet features (LPIPS)"] = lambda: _perceptual_case("alex")


@pytest.mark.parametrize("name", list(CASES))
def test_model_loss_and_gradients_are_the_same_with_the_cpu_convolution(name):
    loss_for = CASES[name]()
    (cpu_loss, params), (plain_loss, _) = loss_for(CPU), loss_for(PLAIN)
    # The model really routes its convolutions through the value it is given.
    assert str(jax.make_jaxpr(cpu_loss)(params)) != str(jax.make_jaxpr(plain_loss)(params))
    value, grads = jax.jit(jax.value_and_grad(cpu_loss))(params)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(plain_loss))(params)
    assert np.isfinite(float(value))
    np.testing.assert_allclose(float(value), float(ref_value), rtol=2e-5,
                               atol=1e-5 * abs(float(ref_value)) + 1e-6)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
    assert scale > 0
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-4 * scale)
