"""PyTorch reference of the paper 004 (joint Rec+SR) step-time case (moved from
``benchmarks/cases_joint_recsr.py``).

Eager float32 NCHW re-implementations used only by ``python -m benchmarks.step_time`` for its
JAX / PyTorch comparison; torch is imported lazily, so this module imports without it.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.cases_joint_recsr import CASE_NAME, RELATIVE_TOLERANCE
from experiments import joint_recsr as experiment
from jaxmri.metrics.perceptual import _LPIPS_SCALE, _LPIPS_SHIFT, load_pretrained
from jaxmri.models import joint_recsr as jr

# --------------------------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------------------------


def _torch_modules() -> types.SimpleNamespace:
    """The PyTorch modules of the reference (torch is imported here, so the module imports
    without it). Submodules carry the Flax parameter names so :func:`_load_flax` copies by name.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    def fft2c(x):
        x = torch.fft.ifftshift(x, dim=(-2, -1))
        return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))

    def ifft2c(x):
        x = torch.fft.ifftshift(x, dim=(-2, -1))
        return torch.fft.fftshift(torch.fft.ifft2(x, norm="ortho"), dim=(-2, -1))

    def to_channels(x):  # (N, H, W) complex -> (N, 2, H, W): (re, im)
        return torch.stack([x.real, x.imag], dim=1)

    def conv(cin, cout, k=3, stride=1):
        # Flax "SAME" pads 3x3/1 and 4x4/2 (on even sizes) one pixel a side, 1x1 not at all.
        return nn.Conv2d(cin, cout, k, stride, padding=0 if k == 1 else 1)

    class ResidualDenseBlock(nn.Module):
        def __init__(self, features, growth, beta=0.2):
            super().__init__()
            self.beta = beta
            for i in range(4):
                setattr(self, f"conv{i + 1}", conv(features + i * growth, growth))
            self.conv5 = conv(features + 4 * growth, features)

        def forward(self, x):
            parts = [x]
            for i in range(4):
                h = getattr(self, f"conv{i + 1}")(torch.cat(parts, dim=1))
                parts.append(F.leaky_relu(h, 0.2))
            return x + self.beta * self.conv5(torch.cat(parts, dim=1))

    class RRDB(nn.Module):
        def __init__(self, features, growth, beta=0.2):
            super().__init__()
            self.beta = beta
            self.rdb1, self.rdb2, self.rdb3 = (ResidualDenseBlock(features, growth)
                                               for _ in range(3))

        def forward(self, x):
            return x + self.beta * self.rdb3(self.rdb2(self.rdb1(x)))

    class SFTLayer(nn.Module):
        def __init__(self, features, cond_features, hidden):
            super().__init__()
            self.scale_conv0 = conv(cond_features, hidden, 1)
            self.scale_conv1 = conv(hidden, features, 1)
            self.shift_conv0 = conv(cond_features, hidden, 1)
            self.shift_conv1 = conv(hidden, features, 1)

        def forward(self, x, cond):
            scale = self.scale_conv1(F.leaky_relu(self.scale_conv0(cond), 0.1))
            shift = self.shift_conv1(F.leaky_relu(self.shift_conv0(cond), 0.1))
            return x * (scale + 1.0) + shift

    class RRDBSFT(nn.Module):
        def __init__(self, features, growth, cond_features, hidden, beta=0.2):
            super().__init__()
            self.beta = beta
            for i in range(3):
                setattr(self, f"sft{i + 1}", SFTLayer(features, cond_features, hidden))
                setattr(self, f"rdb{i + 1}", ResidualDenseBlock(features, growth))

        def forward(self, x, cond):
            out = x
            for i in range(3):
                out = getattr(self, f"rdb{i + 1}")(getattr(self, f"sft{i + 1}")(out, cond))
            return x + self.beta * out

    class SRModule(nn.Module):
        """RRDB-SFT trunk with a long skip, nearest x2, conv + leaky ReLU, conv to 1 channel."""

        def __init__(self, in_channels, features, growth, blocks, cond_features, hidden):
            super().__init__()
            self.conv_first = conv(in_channels, features)
            self.blocks = blocks
            for i in range(blocks):
                setattr(self, f"block{i}",
                        RRDBSFT(features, growth, cond_features, hidden))
            self.conv_body = conv(features, features)
            self.conv_up = conv(features, features)
            self.conv_last = conv(features, 1)

        def forward(self, x, cond):
            feat = self.conv_first(x)
            h = feat
            for i in range(self.blocks):
                h = getattr(self, f"block{i}")(h, cond)
            h = F.interpolate(feat + self.conv_body(h), scale_factor=2, mode="nearest")
            return self.conv_last(F.leaky_relu(self.conv_up(h), 0.2))[:, 0]

    class RRDBProximal(nn.Module):
        """``Gamma(s) = s + conv(RRDB^K(conv(s)))`` on a complex image (Flax's auto names)."""

        def __init__(self, features, growth, blocks):
            super().__init__()
            self.Conv_0 = conv(2, features)
            for i in range(blocks):
                setattr(self, f"RRDB_{i}", RRDB(features, growth))
            self.blocks = blocks
            self.Conv_1 = conv(features, 2)

        def forward(self, s):
            h = self.Conv_0(to_channels(s))
            for i in range(self.blocks):
                h = getattr(self, f"RRDB_{i}")(h)
            out = self.Conv_1(h)
            return s + torch.complex(out[:, 0], out[:, 1])

    class PGDDEQ(nn.Module):
        """LR SENSE PGD solved as a DEQ: no-grad fixed point, one differentiable step (JFB)."""

        def __init__(self, features, growth, blocks, tol, max_iter):
            super().__init__()
            self.prox = RRDBProximal(features, growth, blocks)
            self.eta = nn.Parameter(torch.tensor(1.0))
            self.tol, self.max_iter = tol, max_iter

        def pgd_step(self, x, b, mask, maps):
            residual = fft2c(maps * x[:, None]) * mask - b
            grad = torch.sum(maps.conj() * ifft2c(residual * mask), dim=1)
            return self.prox(x - self.eta * grad)

        def forward(self, kspace, mask, maps):
            mask = mask[:, None]
            u = torch.sum(maps.conj() * ifft2c(kspace * mask), dim=1)
            num_iter, residual = 0, float("inf")
            tiny = torch.finfo(torch.float32).tiny
            with torch.no_grad():
                while num_iter < self.max_iter and residual > self.tol:
                    u_next = self.pgd_step(u, kspace, mask, maps)
                    residual = (torch.linalg.vector_norm(u_next - u)
                                / torch.linalg.vector_norm(u_next).clamp_min(tiny)).item()
                    u, num_iter = u_next, num_iter + 1
            return self.pgd_step(u.detach(), kspace, mask, maps), num_iter

    class JointRecSR(nn.Module):
        """Rec module -> conv -> SFT condition of an SR module reading the zero-filled image."""

        def __init__(self, p):
            super().__init__()
            self.rec = PGDDEQ(p.rec_features, p.rec_growth, p.rec_blocks, p.deq_tol,
                              p.deq_max_iter)
            self.rec_feature = conv(2, p.cond_features)
            # JointRecSR passes cond_features as the SFT layers' hidden width as well.
            self.sr = SRModule(2, p.sr_features, p.sr_growth, p.sr_blocks, p.cond_features,
                               p.cond_features)

        def forward(self, zero_filled, kspace, mask, maps):
            rec, num_iter = self.rec(kspace, mask, maps)
            cond = self.rec_feature(to_channels(rec))
            return {"sr": self.sr(to_channels(zero_filled), cond), "rec": rec,
                    "num_iter": num_iter}

    class VGGDiscriminator(nn.Module):
        """Stages conv3x3/1 + conv4x4/2 (leaky ReLU 0.2), global mean, dense, dense."""

        def __init__(self, features, hidden):
            super().__init__()
            cin = 1
            for i, f in enumerate(features):
                setattr(self, f"conv{i}_0", conv(cin, f))
                setattr(self, f"conv{i}_1", conv(f, f, 4, 2))
                cin = f
            self.stages = len(features)
            self.dense0 = nn.Linear(cin, hidden)
            self.dense1 = nn.Linear(hidden, 1)

        def forward(self, x):
            h = x
            for i in range(self.stages):
                h = F.leaky_relu(getattr(self, f"conv{i}_0")(h), 0.2)
                h = F.leaky_relu(getattr(self, f"conv{i}_1")(h), 0.2)
            h = F.leaky_relu(self.dense0(h.mean(dim=(2, 3))), 0.2)
            return self.dense1(h)[:, 0]

    class VGG16Features(nn.Module):
        """Frozen torchvision-VGG16 trunk: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

        blocks = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

        def __init__(self):
            super().__init__()
            cin = 3
            for b, widths in enumerate(self.blocks):
                for i, width in enumerate(widths):
                    setattr(self, f"conv{b + 1}_{i + 1}", conv(cin, width))
                    cin = width
            self.register_buffer("shift", torch.from_numpy(_LPIPS_SHIFT).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.from_numpy(_LPIPS_SCALE).view(1, 3, 1, 1))

        def forward(self, image):  # (N, H, W) in [0, 1]
            x = (2.0 * image - 1.0)[:, None].expand(-1, 3, -1, -1)
            x = (x - self.shift) / self.scale
            taps = []
            for b, widths in enumerate(self.blocks):
                if b > 0:
                    x = F.max_pool2d(x, 2)
                for i in range(len(widths)):
                    x = F.relu(getattr(self, f"conv{b + 1}_{i + 1}")(x))
                taps.append(x)
            return taps

    return types.SimpleNamespace(torch=torch, F=F, JointRecSR=JointRecSR,
                                 VGGDiscriminator=VGGDiscriminator, VGG16Features=VGG16Features)


def _load_flax(module, params: Mapping[str, Any]) -> int:
    """Copy a Flax params tree into ``module`` by name (HWIO -> OIHW, (in, out) -> (out, in)).

    Returns the number of scalars copied, so the caller can check every parameter was set.
    """
    import torch

    copied = 0
    with torch.no_grad():
        for name, value in params.items():
            target = getattr(module, name)
            if isinstance(target, (torch.nn.Conv2d, torch.nn.Linear)):
                kernel = np.asarray(value["kernel"])
                kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
                for tensor, array in ((target.weight, kernel), (target.bias, value["bias"])):
                    array = np.asarray(array, np.float32)
                    if tuple(tensor.shape) != array.shape:
                        raise ValueError(f"{name}: torch {tuple(tensor.shape)} vs {array.shape}")
                    tensor.copy_(torch.from_numpy(np.ascontiguousarray(array)))
                    copied += array.size
            elif isinstance(value, Mapping):
                copied += _load_flax(target, value)
            else:
                target.copy_(torch.from_numpy(np.array(value, np.float32)))
                copied += np.size(value)
    return copied


def _torch_case(preset: experiment.Preset, batch: Mapping[str, np.ndarray], gen_params,
                disc_params, weights: jr.LossWeights, reference: Mapping[str, np.ndarray]):
    """``(torch_step, torch_params)``: the eager reference from the JAX initial parameters.

    Checks the deterministic forward pass and the first step's losses against ``reference``
    (the JAX values) before returning.
    """
    mods = _torch_modules()
    torch, F = mods.torch, mods.F
    gen = mods.JointRecSR(preset)
    disc = mods.VGGDiscriminator(preset.disc_features, 2 * preset.disc_features[-1])
    vgg = mods.VGG16Features().requires_grad_(False)
    total = {}
    for label, model, params in (("generator", gen, gen_params),
                                 ("discriminator", disc, disc_params),
                                 ("vgg16", vgg, load_pretrained("vgg16")[1]["params"])):
        copied = _load_flax(model, params)
        total[label] = sum(p.numel() for p in model.parameters())
        if copied != total[label]:
            raise AssertionError(f"{CASE_NAME}: copied {copied} of the {total[label]} torch "
                                 f"{label} parameters")
    inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    zero_filled, kspace, mask, maps = (inputs[k] for k in ("zero_filled", "kspace", "mask",
                                                           "maps"))
    hr = inputs["target"].abs()
    opt_g = torch.optim.Adam(gen.parameters(), lr=preset.learning_rate)
    opt_d = torch.optim.Adam(disc.parameters(), lr=preset.learning_rate)
    bce = F.binary_cross_entropy_with_logits

    def generator_losses():
        out = gen(zero_filled, kspace, mask, maps)
        sr = out["sr"]
        fake_taps = vgg(sr)
        with torch.no_grad():
            real_taps = vgg(hr)
        logits = disc(sr[:, None])
        terms = {
            "perceptual": sum((f - r).abs().mean() for f, r in zip(fake_taps, real_taps,
                                                                   strict=True)) / 5,
            "pixel": (sr - hr).abs().mean(),
            "adversarial": bce(logits, torch.ones_like(logits)),
            "rec": (out["rec"] - inputs["target_lr"]).abs().mean(),
        }
        loss = sum(getattr(weights, name) * value for name, value in terms.items())
        return loss, terms, out

    def discriminator_step_loss(fake):
        real_logits, fake_logits = disc(hr[:, None]), disc(fake[:, None])
        return (bce(real_logits, torch.ones_like(real_logits))
                + bce(fake_logits, torch.zeros_like(fake_logits)))

    # Equivalence: forward outputs, DEQ iterations and every loss term of the first step.
    with torch.no_grad():
        loss, terms, out = generator_losses()
        ours = {"sr": out["sr"].numpy(), "rec": out["rec"].numpy(), **terms, "loss": loss,
                "d_loss": discriminator_step_loss(out["sr"])}
    if out["num_iter"] != int(reference["num_iter"]):
        raise AssertionError(f"{CASE_NAME}: DEQ iterations torch {out['num_iter']} vs JAX "
                             f"{int(reference['num_iter'])}")
    errors = {}
    for name, value in ours.items():
        ref = np.asarray(reference[name])
        value = np.asarray(value)
        errors[name] = float(np.linalg.norm(value - ref) / max(np.linalg.norm(ref), 1e-30))
        if not errors[name] <= RELATIVE_TOLERANCE:
            raise AssertionError(f"{CASE_NAME}: torch and JAX {name} differ by "
                                 f"{errors[name]:.2e} (relative), more than "
                                 f"{RELATIVE_TOLERANCE:.0e}")
    print(f"{CASE_NAME}: torch == JAX, {out['num_iter']} DEQ iterations each; relative "
          "differences " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))

    def step() -> None:
        # Generator update (the discriminator is only evaluated: no gradients for it).
        disc.requires_grad_(False)
        opt_g.zero_grad()
        loss, _, out = generator_losses()
        loss.backward()
        opt_g.step()
        # Discriminator update on the generator's output before its update, as the JAX step.
        disc.requires_grad_(True)
        opt_d.zero_grad()
        d_loss = discriminator_step_loss(out["sr"].detach())
        d_loss.backward()
        opt_d.step()
        # Host copies of both losses, as the JAX step copies its metrics every step.
        loss.item(), d_loss.item()

    return step, total["generator"] + total["discriminator"]
