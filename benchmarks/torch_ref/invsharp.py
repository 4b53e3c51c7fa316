"""PyTorch reference of the paper 000 (InvSharpNet) step-time case (moved from
``benchmarks/cases_invsharp.py``).

Eager float32 NCHW re-implementations used only by ``python -m benchmarks.step_time`` for its
JAX / PyTorch comparison; torch is imported lazily, so this module imports without it.
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks._common import count_params
from benchmarks.cases_invsharp import GRAD_RTOL, LOSS_RTOL

# --------------------------------------------------------------------------- PyTorch reference


def _torch_modules():
    """The torch classes, defined on first use so that this module imports without torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def normalize(x):
        return x / torch.clamp(torch.sqrt(torch.sum(x * x)), min=1e-12)

    class SNConv(nn.Module):
        """Conv whose kernel is divided by ``max(1, sigma / coeff)``; ``u``, ``v`` persist."""

        def __init__(self, kernel, bias, u, v, *, coeff, power_iterations):
            super().__init__()
            self.weight = nn.Parameter(torch.tensor(np.transpose(kernel, (3, 2, 0, 1))))
            self.bias = nn.Parameter(torch.tensor(bias))
            self.register_buffer("u", torch.tensor(np.transpose(u, (0, 3, 1, 2))))
            self.register_buffer("v", torch.tensor(np.transpose(v, (0, 3, 1, 2))))
            self.coeff, self.power_iterations = coeff, power_iterations
            self.pad = self.weight.shape[-1] // 2  # "SAME" for odd stride-1 kernels

        @torch.no_grad()
        def update_stats(self):
            for _ in range(self.power_iterations):
                self.v = normalize(F.conv_transpose2d(self.u, self.weight, padding=self.pad))
                self.u = normalize(F.conv2d(self.v, self.weight, padding=self.pad))

        def normalized_weight(self):
            # Gradients reach the kernel through sigma as well (u, v are buffers, no grad).
            sigma = torch.sum(self.u * F.conv2d(self.v, self.weight, padding=self.pad))
            return self.weight / torch.clamp(sigma / self.coeff, min=1.0)

        def forward(self, x, weight):
            return F.conv2d(x, weight, self.bias, padding=self.pad)

    class InvertibleBlock(nn.Module):
        """``y = x + g(x)``, ``g`` = SN convs with ELU between; inverse by fixed-point."""

        def __init__(self, convs):
            super().__init__()
            self.convs = nn.ModuleList(convs)

        def branch(self, x, weights):
            for i, (conv, w) in enumerate(zip(self.convs, weights, strict=True)):
                x = conv(F.elu(x) if i else x, w)
            return x

        def prepare(self, update_stats):
            if update_stats:
                for conv in self.convs:
                    conv.update_stats()
            # Normalised once per step and reused by every fixed-point iteration.
            return [conv.normalized_weight() for conv in self.convs]

        def forward(self, x, update_stats=False):
            return x + self.branch(x, self.prepare(update_stats))

        def inverse(self, y, iterations, update_stats=False):
            weights = self.prepare(update_stats)
            x = y
            for _ in range(iterations):  # autograd through the unrolled iterations
                x = y - self.branch(x, weights)
            return x

    class InvertibleNet(nn.Module):
        def __init__(self, blocks):
            super().__init__()
            self.blocks = nn.ModuleList(blocks)

        def forward(self, x, update_stats=False):
            for block in self.blocks:
                x = block(x, update_stats)
            return x

        def inverse(self, y, iterations, update_stats=False):
            for block in reversed(self.blocks):
                y = block.inverse(y, iterations, update_stats)
            return y

    return SNConv, InvertibleBlock, InvertibleNet


def _torch_net(config, state):
    """The torch network holding copies of the JAX parameters and power-iteration state."""
    sn_conv, block_cls, net_cls = _torch_modules()
    params = jax.tree.map(np.asarray, state.params)
    spectral = jax.tree.map(np.asarray, state.model_state["spectral"])
    blocks = []
    for b in range(config.num_blocks):
        p, s = params[f"blocks_{b}"]["branch"], spectral[f"blocks_{b}"]["branch"]
        blocks.append(block_cls([
            sn_conv(p[f"conv_{i}"]["kernel"], p[f"conv_{i}"]["bias"], s[f"conv_{i}"]["u"],
                    s[f"conv_{i}"]["v"], coeff=config.coeff,
                    power_iterations=config.power_iterations)
            for i in range(config.depth)]))
    return net_cls(blocks)


def _torch_ms_ssim(x, y, data_range, *, weights, win_size=11, sigma=1.5, k1=0.01, k2=0.03):
    """MS-SSIM of ``(N, H, W)`` magnitudes as :func:`jaxmri.metrics.ms_ssim` defines it."""
    import torch
    import torch.nn.functional as F

    from jaxmri.metrics.quality import ms_ssim_num_scales

    n_scales = ms_ssim_num_scales(tuple(x.shape[-2:]), win_size=win_size,
                                  max_scales=len(weights))
    w = np.asarray(weights[:n_scales]) / sum(weights[:n_scales])
    t = np.arange(win_size, dtype=np.float64) - win_size // 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g = torch.tensor(g / g.sum(), dtype=x.dtype)
    gh, gw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)
    c1 = ((k1 * data_range) ** 2)[:, None, None]
    c2 = ((k2 * data_range) ** 2)[:, None, None]
    result = torch.ones(x.shape[0], dtype=x.dtype)
    for j in range(n_scales):
        if j > 0:  # 2x2 average pooling, an odd last row/column dropped
            x, y = F.avg_pool2d(x[:, None], 2)[:, 0], F.avg_pool2d(y[:, None], 2)[:, 0]
        stats = torch.cat([x, y, x * x, y * y, x * y])[:, None]
        f = F.conv2d(F.conv2d(stats, gh), gw)[:, 0]  # 'valid' separable Gaussian window
        ux, uy, uxx, uyy, uxy = f.chunk(5)
        vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
        term = (2 * vxy + c2) / (vx + vy + c2)
        if j == n_scales - 1:
            term = term * (2 * ux * uy + c1) / (ux ** 2 + uy ** 2 + c1)
        result = result * torch.clamp(term.mean(dim=(-2, -1)), min=1e-6) ** float(w[j])
    return result


def _torch_step(name, config, method, state, batch, learning_rate, jax_loss, jax_grads):
    """``(step, n_params)``: the eager torch update, after checking it against JAX."""
    import torch

    from jaxmri.metrics.quality import MS_SSIM_WEIGHTS

    net = _torch_net(config, state)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)  # optax.adam's defaults

    def channels(z):  # complex (B, H, W) -> float32 (B, 2, H, W): (re, im), as complex_to_channels
        return torch.tensor(np.stack([z.real, z.imag], axis=1), dtype=torch.float32)

    recon, target = channels(batch["recon"]), channels(batch["target"])
    if method == "back":
        y = torch.cat([target, channels(batch["zero_filled"])], dim=1)
        recon2 = torch.cat([recon, recon], dim=1)

        def loss_fn():
            # Eq. 2: both backward outputs against R; mean over re/im of both images.
            x = net.inverse(y, config.inverse_iterations, update_stats=True)
            return torch.mean(torch.abs(x - recon2))
    else:
        x_in = torch.cat([recon, recon], dim=1)
        target_mag = torch.sqrt(torch.sum(target ** 2, dim=1) + 1e-12)
        data_range = torch.amax(target_mag, dim=(-2, -1))

        def loss_fn():
            # Eq. 1 on the first output image.
            pred = net(x_in, update_stats=True)[:, :2]
            l1 = torch.mean(torch.abs(pred - target))
            pred_mag = torch.sqrt(torch.sum(pred ** 2, dim=1) + 1e-12)
            msssim = torch.mean(_torch_ms_ssim(pred_mag, target_mag, data_range,
                                               weights=MS_SSIM_WEIGHTS))
            return (1.0 - config.alpha) * l1 + config.alpha * (1.0 - msssim)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.item()

    # Equivalence check on the first update (the state then moves on, as the JAX one does).
    opt.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    torch_loss = loss.item()
    rel = abs(torch_loss - jax_loss) / max(abs(jax_loss), 1e-12)
    assert rel <= LOSS_RTOL, (
        f"{name}: torch loss {torch_loss:.8g} vs JAX {jax_loss:.8g} (relative {rel:.2e})")
    diff = norm = 0.0
    for b, block in enumerate(net.blocks):
        g = jax_grads[f"blocks_{b}"]["branch"]
        for i, conv in enumerate(block.convs):
            jk = np.transpose(np.asarray(g[f"conv_{i}"]["kernel"]), (3, 2, 0, 1))
            jb = np.asarray(g[f"conv_{i}"]["bias"])
            diff += float(np.sum((conv.weight.grad.numpy() - jk) ** 2)
                          + np.sum((conv.bias.grad.numpy() - jb) ** 2))
            norm += float(np.sum(jk ** 2) + np.sum(jb ** 2))
    grad_rel = (diff / max(norm, 1e-30)) ** 0.5
    assert grad_rel <= GRAD_RTOL, f"{name}: torch vs JAX gradients differ by {grad_rel:.2e}"
    opt.step()
    print(f"[cases_invsharp] {name}: first-step loss torch {torch_loss:.7g} / JAX "
          f"{jax_loss:.7g} (rel {rel:.1e}); gradients rel L2 {grad_rel:.1e}")
    return step, count_params([p.detach().numpy() for p in net.parameters()])
