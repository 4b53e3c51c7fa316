"""PyTorch reference of the paper 002 (IFR-Net) step-time case (moved from
``benchmarks/cases_ifrnet.py``).

Eager float32 NCHW re-implementations used only by ``python -m benchmarks.step_time`` for its
JAX / PyTorch comparison; torch is imported lazily, so this module imports without it.
"""

from __future__ import annotations

import numpy as np

from benchmarks.cases_ifrnet import _descriptor_matrices

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
