"""Step case of IFR-Net (paper 002): the JAX training step and an eager PyTorch reference.

The JAX step is the experiment's own: :func:`experiments.ifrnet.build_model` ("IFR-Net", the
real-valued amplitude-image variant), :func:`experiments.ifrnet.predictor`, Adam at the preset's
learning rate and :func:`jaxmri.models.ifrnet.make_train_step` (eq. 12), exactly as
``experiments.ifrnet.train_method`` builds them. The batch is the experiment's real-valued
single-coil acquisition (:func:`experiments.ifrnet.real_valued_acquisition`, pseudo-radial mask
at the preset's first Table IV rate) of smooth synthetic phantoms: ``target`` ``(B, H, W)``
float32, ``kspace`` ``(B, H, W)`` complex64, ``mask`` ``(B, H, W)`` float32, ``zero_filled``
``(B, H, W)`` complex64.

The PyTorch reference re-derives the same unrolled network in NCHW: per stage the X layer
``Re F^-1((M y + |rho| F x_t) / (M + |rho|))`` (centred orthonormal FFT), ``K`` denoising
blocks ``u <- mu1 u + mu2 x - w2 * S_PLF(w1 * u)`` (3x3 convolutions with bias, one learnable
piecewise-linear curve per filter), the feature descriptor ``T`` of appendix A and the
refinement ``x_t = u + T (x - u)``; a final X layer; the normalised error of eq. 12; Adam. The
descriptor's 51-tap Gaussian blur and 5x5 box statistics are separable zero-padded filters; both
implementations apply them as banded matrix products (same FLOPs), so the comparison measures
the frameworks, not two different algorithms. The JAX initial parameters are copied into the
torch modules; the build checks that the forward outputs and the loss gradients agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import StepCase, jax_case
from jaxmri.cpu import conv_for

__all__ = ["cases", "phantom_images"]

# The names of the rows cases() builds (step_time --only skips modules without a match).
CASE_NAMES = ('IFR-Net',)

FORWARD_RTOL = 1e-4  # relative L2 error of the forward output
GRAD_RTOL = 1e-3  # relative L2 error of all loss gradients together


def phantom_images(num: int, size: int, *, seed: int = 0) -> np.ndarray:
    """Smooth synthetic head-like phantoms ``(num, size, size)`` float32 in ``[0, 1]``.

    Each image is a soft-edged outer ellipse ("skull and brain") with a few random inner
    ellipses of other intensities, all drawn from ``np.random.default_rng(seed)``; the soft
    edges keep the k-space energy concentrated at low frequencies as in real anatomy.
    """
    rng = np.random.default_rng(seed)
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float64)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    edge = 4.0 / size  # a two-pixel soft edge

    def ellipse(cy, cx, ry, rx, angle):
        c, s = np.cos(angle), np.sin(angle)
        dy, dx = yy - cy, xx - cx
        r = np.sqrt(((c * dx + s * dy) / rx) ** 2 + ((-s * dx + c * dy) / ry) ** 2)
        return 1.0 / (1.0 + np.exp((r - 1.0) / edge))

    images = []
    for _ in range(num):
        img = 0.8 * ellipse(0.0, 0.0, rng.uniform(0.75, 0.9), rng.uniform(0.6, 0.75),
                            rng.uniform(-0.2, 0.2))
        for _ in range(4):
            img += rng.uniform(-0.3, 0.3) * ellipse(
                rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(0.08, 0.3),
                rng.uniform(0.08, 0.3), rng.uniform(0.0, np.pi))
        img = np.clip(img, 0.0, None)
        images.append(img / img.max())
    return np.stack(images).astype(np.float32)


def _relative_error(actual, reference) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(actual - reference) / max(np.linalg.norm(reference), 1e-30))


def _band_matrix(n: int, taps: np.ndarray) -> np.ndarray:
    """``(n, n)`` matrix of a zero-padded 'same' 1-D correlation with odd ``taps``."""
    r = len(taps) // 2
    return sum(np.eye(n, k=k) * taps[k + r] for k in range(-r, r + 1)).astype(np.float32)


def _descriptor_matrices(height: int, width: int, *, sigma: float = 50.0, taps: int = 51,
                         window: int = 5) -> list[np.ndarray]:
    """Gaussian blur (sigma 50, 51 taps) and 5-box mean as band matrices (rows, columns)."""
    g = np.exp(-((np.arange(taps) - taps // 2) ** 2) / (2.0 * sigma**2))
    g /= g.sum()
    box = np.full(window, 1.0 / window)
    return [_band_matrix(height, g), _band_matrix(width, g), _band_matrix(height, box),
            _band_matrix(width, box)]


# ------------------------------------------------------------------------------------------
# The case


def cases(*, paper: bool = False, with_torch: bool = True) -> list[StepCase]:
    """``[StepCase "IFR-Net"]``: one Adam step of IFR-Net on eq. 12.

    Sizes are ``experiments.ifrnet.PRESETS["cpu"]`` (``"paper"`` with ``paper=True``): the
    global batch ``batch_size`` of ``image_size`` x ``image_size`` slices, ``ifr_stages``
    stages of ``ifr_blocks`` blocks with ``ifr_features`` filters. ``torch_step`` is set when
    ``with_torch`` and PyTorch imports; it is checked against JAX at build time (forward output
    to ``FORWARD_RTOL``, gradients of the loss to ``GRAD_RTOL``, relative L2 errors).
    """
    from benchmarks.torch_ref.ifrnet import (
        _flat_torch_grads,
        _ifrnet_grad_leaves,
        _torch_ifrnet,
        torch_normalised_error,
    )
    from experiments import ifrnet as exp
    from jaxmri.models import ifrnet as ifr
    from jaxmri.train import create_train_state

    preset = exp.PRESETS["paper" if paper else "cpu"]
    size, batch_size = preset.image_size, preset.batch_size
    setting = f"radial{round(100 * preset.table_iv_rates[0])}"
    acq = exp.real_valued_acquisition(
        {"image": phantom_images(batch_size, size, seed=0)}, np.arange(batch_size),
        mask_fn=exp.mask_function(setting), seed=0, snr_db=preset.snr_db)
    batch = {k: np.asarray(v) for k, v in acq.items()}

    module = exp.build_model("IFR-Net", preset, conv_general_dilated=conv_for())
    predict = exp.predictor("IFR-Net", module)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(batch["kspace"][:1]),
                                     jnp.asarray(batch["mask"][:1]))
    state = create_train_state(module, optax.adam(preset.learning_rate), variables)
    case = jax_case("IFR-Net", train_step=ifr.make_train_step(predict), state=state,
                    batch=batch, params=state.params, image_size=size)
    if not with_torch:
        return [case]
    try:
        import torch
    except ImportError:
        return [case]

    params = jax.tree.map(np.asarray, variables["params"])
    shape = dict(num_stages=preset.ifr_stages, num_blocks=preset.ifr_blocks)
    model = _torch_ifrnet(torch, params, features=preset.ifr_features,
                          kernel_size=module.kernel_size, image_shape=(size, size), **shape)
    tb = {k: torch.from_numpy(batch[k]) for k in ("kspace", "mask", "target")}
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.learning_rate)

    # Equivalence at the initial parameters: forward output, then the gradients of eq. 12.
    jax_out = jax.jit(predict)(variables, batch)
    pred = model(tb["kspace"], tb["mask"])
    err = _relative_error(pred.detach().numpy(), jax_out)
    assert err <= FORWARD_RTOL, f"IFR-Net: torch forward differs from JAX (rel. error {err:.2e})"
    torch_normalised_error(pred, tb["target"]).backward()

    def jax_loss(p):
        return ifr.normalised_error(predict({"params": p}, batch), batch["target"])

    jax_grads = jax.jit(jax.grad(jax_loss))(variables["params"])
    gerr = _relative_error(_flat_torch_grads(model), _ifrnet_grad_leaves(jax_grads, **shape))
    assert gerr <= GRAD_RTOL, f"IFR-Net: torch gradients differ from JAX (rel. error {gerr:.2e})"
    optimizer.zero_grad()

    def torch_step() -> None:
        optimizer.zero_grad()
        loss = torch_normalised_error(model(tb["kspace"], tb["mask"]), tb["target"])
        loss.backward()
        optimizer.step()
        loss.item()

    case.torch_step = torch_step
    case.torch_params = sum(p.numel() for p in model.parameters())
    print(f"[IFR-Net] torch vs JAX: forward rel. error {err:.1e}, gradient rel. error "
          f"{gerr:.1e}")
    return [case]
