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
# PyTorch reference (torch is imported lazily so that this module imports without it)


def torch_fft_ops(torch):
    """``(fft2c, ifft2c)`` in torch: centred orthonormal FFTs over the last two axes."""
    dims = (-2, -1)

    def fft2c(x):
        return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), norm="ortho"),
                                  dim=dims)

    def ifft2c(k):
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=dims),
                                                  norm="ortho"), dim=dims)

    return fft2c, ifft2c


def _conv_weight(torch, kernel) -> object:
    """Flax HWIO kernel -> torch OIHW parameter data."""
    return torch.tensor(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))


def _torch_ifrnet(torch, params, *, num_stages: int, num_blocks: int, features: int,
                  kernel_size: int, image_shape: tuple[int, int]):
    """The torch IFR-Net (real-valued) with the JAX ``params`` copied in."""
    nn = torch.nn
    fft2c, ifft2c = torch_fft_ops(torch)
    ops = [torch.from_numpy(m) for m in _descriptor_matrices(*image_shape)]

    class PiecewiseLinear(nn.Module):
        """``S_PLF`` with one curve per channel, control points uniform on ``[-1, 1]``."""

        def __init__(self, values):
            super().__init__()
            self.values = nn.Parameter(torch.from_numpy(np.array(values)))  # (C, N_c)

        def forward(self, x):  # (B, C, H, W)
            channels, points = self.values.shape
            t = (x + 1.0) * ((points - 1) / 2.0)
            r = torch.clamp(torch.floor(t.detach()), 0, points - 2)
            frac = t - r  # the gradient reaches x through the slope only
            idx = r.long() + (torch.arange(channels) * points).view(1, channels, 1, 1)
            flat = self.values.reshape(-1)
            q_r, q_next = flat[idx], flat[idx + 1]
            inside = q_r + frac * (q_next - q_r)
            below = x + (self.values[:, 0] + 1.0).view(1, channels, 1, 1)
            above = x + (self.values[:, -1] - 1.0).view(1, channels, 1, 1)
            return torch.where(x < -1.0, below, torch.where(x > 1.0, above, inside))

    class DenoisingBlock(nn.Module):
        """``u <- mu1 u + mu2 x - w2 * S_PLF(w1 * u)``."""

        def __init__(self, p):
            super().__init__()
            pad = kernel_size // 2
            self.w1 = nn.Conv2d(1, features, kernel_size, padding=pad)
            self.plf = PiecewiseLinear(p["plf"]["values"])
            self.w2 = nn.Conv2d(features, 1, kernel_size, padding=pad)
            with torch.no_grad():
                for conv, name in ((self.w1, "w1"), (self.w2, "w2")):
                    conv.weight.copy_(_conv_weight(torch, p[name]["kernel"]))
                    conv.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
            self.mu1 = nn.Parameter(torch.tensor(float(p["mu1"])))
            self.mu2 = nn.Parameter(torch.tensor(float(p["mu2"])))

        def forward(self, u, x):  # (B, H, W) each
            c2 = self.w2(self.plf(self.w1(u[:, None])))
            return self.mu1 * u + self.mu2 * x - c2[:, 0]

    def descriptor(u, v):
        bh, bw, wh, ww = ops

        def filt(a, left, right):
            return left @ a @ right.T

        q = filt(u, bh, bw)
        mu_p, mu_q = filt(u, wh, ww), filt(q, wh, ww)
        var_p = filt(u * u, wh, ww) - mu_p**2
        var_q = filt(q * q, wh, ww) - mu_q**2
        cov = filt(u * q, wh, ww) - mu_p * mu_q
        v = torch.abs(v)
        return 1.0 - torch.abs((2.0 * cov + v) / (var_p + var_q + v))

    class IFRNet(nn.Module):
        """``num_stages`` x (X, Z, R) and a final X; call ``(kspace, mask) -> (B, H, W)``."""

        def __init__(self):
            super().__init__()
            self.rho = nn.ParameterList(
                [nn.Parameter(torch.tensor(float(params[f"rho{n}"])))
                 for n in range(num_stages + 1)])
            self.v = nn.ParameterList(
                [nn.Parameter(torch.tensor(float(params[f"v{n}"]))) for n in range(num_stages)])
            self.blocks = nn.ModuleList([
                nn.ModuleList([DenoisingBlock(params[f"stage{n}_block{k}"])
                               for k in range(num_blocks)]) for n in range(num_stages)])

        @staticmethod
        def reconstruct(x_t, kspace, mask, rho):
            rho = torch.abs(rho)
            k = (mask * kspace + rho * fft2c(x_t.to(torch.complex64))) / (mask + rho)
            return ifft2c(k).real

        def forward(self, kspace, mask):
            x_t = torch.zeros(kspace.shape, dtype=torch.float32)
            for n in range(num_stages):
                x = self.reconstruct(x_t, kspace, mask, self.rho[n])
                u = x
                for block in self.blocks[n]:
                    u = block(u, x)
                t = descriptor(u, self.v[n])
                x_t = u + t * (x - u)
            return self.reconstruct(x_t, kspace, mask, self.rho[num_stages])

    return IFRNet()


def torch_normalised_error(pred, target):
    """Eq. 12 in torch: mean over the batch of ``||pred - target|| / ||target||``."""
    err = ((pred - target) ** 2).sum(dim=(-2, -1))
    ref = (target**2).sum(dim=(-2, -1))
    return (err + 1e-20).sqrt().div(ref.sqrt()).mean()


def _flat_torch_grads(model) -> np.ndarray:
    return np.concatenate([p.grad.detach().numpy().ravel() for p in model.parameters()])


def _ifrnet_grad_leaves(grads, num_stages: int, num_blocks: int) -> np.ndarray:
    """JAX gradients flattened in the torch model's ``parameters()`` order."""
    leaves = [grads[f"rho{n}"] for n in range(num_stages + 1)]
    leaves += [grads[f"v{n}"] for n in range(num_stages)]
    for n in range(num_stages):
        for k in range(num_blocks):
            g = grads[f"stage{n}_block{k}"]
            # A torch module lists its own parameters before its submodules'.
            leaves += [g["mu1"], g["mu2"],
                       np.transpose(np.asarray(g["w1"]["kernel"]), (3, 2, 0, 1)), g["w1"]["bias"],
                       g["plf"]["values"],
                       np.transpose(np.asarray(g["w2"]["kernel"]), (3, 2, 0, 1)), g["w2"]["bias"]]
    return np.concatenate([np.asarray(leaf, np.float32).ravel() for leaf in leaves])


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
    from experiments import ifrnet as exp
    from jaxmri.models import ifrnet as ifr
    from jaxmri.train import create_train_state

    preset = exp.PRESETS["paper" if paper else "cpu"]
    size, batch_size = preset.image_size, preset.batch_size
    setting = f"radial{round(100 * preset.table_iv_rates[0])}"
    acq = exp.real_valued_acquisition(
        {"image": phantom_images(batch_size, size, seed=0)}, np.arange(batch_size),
        mask_fn=exp.mask_function(setting, size), seed=0, snr_db=preset.snr_db)
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
