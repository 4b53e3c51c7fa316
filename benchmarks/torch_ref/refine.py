"""PyTorch reference of the paper 003 (refinement GAN) step-time case (moved from
``benchmarks/cases_refine.py``).

Eager float32 NCHW re-implementations used only by ``python -m benchmarks.step_time`` for its
JAX / PyTorch comparison; torch is imported lazily, so this module imports without it.
"""

from __future__ import annotations

import numpy as np

from benchmarks.torch_ref.ifrnet import torch_fft_ops


def _oihw(torch, kernel):
    return torch.tensor(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))


def _load_conv(torch, conv, p) -> None:
    with torch.no_grad():
        conv.weight.copy_(_oihw(torch, p["kernel"]))
        if conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(np.array(p["bias"])))


def _load_bn(torch, bn, p, stats) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(np.array(p["scale"])))
        bn.bias.copy_(torch.from_numpy(np.array(p["bias"])))
        bn.running_mean.copy_(torch.from_numpy(np.array(stats["mean"])))
        bn.running_var.copy_(torch.from_numpy(np.array(stats["var"])))


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA "SAME": output ``ceil(size / stride)``, the odd pixel of padding at the end."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# ------------------------------------------------------------------------------------------
# PyTorch reference networks (torch imported lazily by the caller and passed in)


def _torch_modules(torch):
    """The torch classes of paper 003's networks (built here so that torch stays optional)."""
    nn, F = torch.nn, torch.nn.functional
    fft2c, ifft2c = torch_fft_ops(torch)

    class DCCascade(nn.Module):
        """``x <- DC(x + CNN(x))`` repeated; complex ``(B, H, W)`` in and out."""

        def __init__(self, params, *, cascades: int, convs: int, features: int, slope: float):
            super().__init__()
            widths = [2] + [features] * (convs - 1) + [2]
            self.convs = nn.ModuleList()
            for c in range(cascades):
                for i in range(convs):
                    conv = nn.Conv2d(widths[i], widths[i + 1], 3, padding=1)
                    _load_conv(torch, conv, params[f"Conv_{c * convs + i}"])
                    self.convs.append(conv)
            self.cascades, self.per, self.slope = cascades, convs, slope

        def forward(self, zero_filled, kspace, mask, maps):
            x = zero_filled
            for c in range(self.cascades):
                h = torch.stack([x.real, x.imag], dim=1)
                block = self.convs[c * self.per:(c + 1) * self.per]
                for conv in block[:-1]:
                    h = F.leaky_relu(conv(h), self.slope)
                h = block[-1](h)
                x = x + torch.complex(h[:, 0], h[:, 1])
                k = fft2c(maps * x[:, None])  # (B, C, H, W)
                k = (1.0 - mask) * k + mask * kspace  # hard data consistency
                x = (maps.conj() * ifft2c(k)).sum(dim=1)
            return x

    class ConvBNAct(nn.Module):
        """``k x k`` conv (XLA "SAME" padding, no bias) -> batch norm -> leaky ReLU."""

        def __init__(self, cin, cout, kernel, slope, conv_p, bn_p, bn_s):
            super().__init__()
            # Explicit padding: an even kernel pads one pixel more at the end, as XLA does.
            low, high = _same_padding(1, kernel, 1)
            self.pad = (low, high, low, high)
            self.conv = nn.Conv2d(cin, cout, kernel, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
            _load_conv(torch, self.conv, conv_p)
            _load_bn(torch, self.bn, bn_p, bn_s)
            self.slope = slope

        def forward(self, x):
            return F.leaky_relu(self.bn(self.conv(F.pad(x, self.pad))), self.slope)

    class GatedRefinement(nn.Module):
        """``|R| (B, H, W) -> (unscale(s + gate V(s)), V(s))``, ``V`` the refinement U-Net."""

        def __init__(self, variables, *, encoder, decoder, kernel: int, slope: float):
            super().__init__()
            p = variables["params"]["RefinementUNet_0"]
            s = variables["batch_stats"]["RefinementUNet_0"]
            counter = iter(range(10**6))

            def layer(cin, cout):  # Flax numbers Conv_i / BatchNorm_i in creation order
                i = next(counter)
                return ConvBNAct(cin, cout, kernel, slope, p[f"Conv_{i}"],
                                 p[f"BatchNorm_{i}"], s[f"BatchNorm_{i}"])

            self.down, cin = nn.ModuleList(), 1
            for width in encoder:
                self.down.append(nn.Sequential(layer(cin, width), layer(width, width)))
                cin = width
            self.up_conv, self.up_block = nn.ModuleList(), nn.ModuleList()
            for width, skip in zip(decoder, reversed(encoder[:-1]), strict=True):
                self.up_conv.append(layer(cin, width))
                self.up_block.append(nn.Sequential(layer(skip + width, width),
                                                   layer(width, width)))
                cin = width
            self.head = nn.Conv2d(cin, 1, 1)
            _load_conv(torch, self.head, p[f"Conv_{next(counter)}"])
            self.gate = nn.Parameter(torch.tensor(float(variables["params"]["gate"])))

        def unet(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x)
                if i < len(self.down) - 1:
                    skips.append(x)
                    x = F.max_pool2d(x, 2)
            for up, block, skip in zip(self.up_conv, self.up_block, reversed(skips),
                                       strict=True):
                x = up(F.interpolate(x, scale_factor=2, mode="nearest"))
                x = block(torch.cat([skip, x], dim=1))
            return self.head(x)

        def forward(self, magnitude):
            lo = magnitude.amin(dim=(-2, -1), keepdim=True)
            span = (magnitude.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-12)
            scaled = 2.0 * (magnitude - lo) / span - 1.0
            v = self.unet(scaled[:, None])[:, 0]
            return (scaled + self.gate * v + 1.0) / 2.0 * span + lo, v

    class PatchGAN(nn.Module):
        """Strided ``k x k`` convs (BN from the 2nd, leaky ReLU 0.2, channel dropout) + logits.

        ``forward(x, masks)``: ``masks`` maps a layer index to its ``(B, C, 1, 1)`` dropout
        multiplier (0 or ``1 / (1 - rate)``); ``None`` runs without dropout.
        """

        def __init__(self, variables, *, features, strides, kernel: int, dropout_after,
                     rate: float):
            super().__init__()
            p, s = variables["params"], variables["batch_stats"]
            self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
            cin = 1
            for i, width in enumerate(features):
                conv = nn.Conv2d(cin, width, kernel, stride=strides[i], bias=i == 0)
                _load_conv(torch, conv, p[f"Conv_{i}"])
                self.convs.append(conv)
                if i > 0:
                    bn = nn.BatchNorm2d(width, eps=1e-5, momentum=0.1)
                    _load_bn(torch, bn, p[f"BatchNorm_{i - 1}"], s[f"BatchNorm_{i - 1}"])
                    self.bns.append(bn)
                cin = width
            self.final = nn.Conv2d(cin, 1, kernel)
            _load_conv(torch, self.final, p[f"Conv_{len(features)}"])
            self.strides, self.kernel = tuple(strides), kernel
            self.dropout_after, self.rate = tuple(dropout_after), rate

        def _pad(self, x, stride):
            top, bottom = _same_padding(x.shape[-2], self.kernel, stride)
            left, right = _same_padding(x.shape[-1], self.kernel, stride)
            return F.pad(x, (left, right, top, bottom))

        def dropout_masks(self, batch: int) -> dict:
            keep = 1.0 - self.rate
            return {i: torch.bernoulli(torch.full((batch, self.convs[i].out_channels, 1, 1),
                                                  keep)) / keep for i in self.dropout_after}

        def forward(self, x, masks=None):
            taps = []
            for i, conv in enumerate(self.convs):
                x = conv(self._pad(x, self.strides[i]))
                if i > 0:
                    x = self.bns[i - 1](x)
                x = F.leaky_relu(x, 0.2)
                if masks is not None and i in masks:
                    x = x * masks[i]
                taps.append(x)
            return self.final(self._pad(x, 1)), taps

    class VGG16Relu53(nn.Module):
        """torchvision VGG16 trunk up to relu5_3, LPIPS input scaling, frozen weights."""

        def __init__(self, params, blocks):
            super().__init__()
            self.blocks = nn.ModuleList()
            cin = 3
            for b, widths in enumerate(blocks):
                convs = nn.ModuleList()
                for i, width in enumerate(widths):
                    conv = nn.Conv2d(cin, width, 3, padding=1)
                    _load_conv(torch, conv, params[f"conv{b + 1}_{i + 1}"])
                    convs.append(conv)
                    cin = width
                self.blocks.append(convs)
            self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
            self.requires_grad_(False)

        def forward(self, images):  # (B, H, W) in [0, 1]
            x = (2.0 * images[:, None] - 1.0).expand(-1, 3, -1, -1)
            x = (x - self.shift) / self.scale
            for b, convs in enumerate(self.blocks):
                if b > 0:
                    x = F.max_pool2d(x, 2)
                for conv in convs:
                    x = F.relu(conv(x))
            return x

    return DCCascade, GatedRefinement, PatchGAN, VGG16Relu53


def _recnet_grad_leaves(grads, count: int) -> np.ndarray:
    leaves = []
    for i in range(count):
        leaves += [np.transpose(np.asarray(grads[f"Conv_{i}"]["kernel"]), (3, 2, 0, 1)),
                   grads[f"Conv_{i}"]["bias"]]
    return np.concatenate([np.asarray(leaf, np.float32).ravel() for leaf in leaves])


def _torch_refine_step(torch, modules, tb, *, lr: float, pool_size: int, pool_prob: float,
                       label_smoothing: float, penalty_target: float, dropout: bool = True):
    """``step() -> metrics`` of the torch refinement: G update, replay pool, D update."""
    F = torch.nn.functional
    recnet, refiner, disc, vgg = modules
    opt_g = torch.optim.Adam(refiner.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    size = tuple(tb["target"].shape[-2:])
    pool = {"images": torch.zeros((pool_size, *size)), "count": 0}
    scales = {}
    factors = torch.tensor([1.0, 1.0, 1.0, 1.0 / penalty_target])
    generator = torch.Generator().manual_seed(0)

    def pool_query(images):
        out = []
        for image in images:  # image by image, as the reference ImagePool does
            if pool["count"] < pool_size:
                pool["images"][pool["count"]] = image
                pool["count"] += 1
                out.append(image)
            elif torch.rand((), generator=generator) < pool_prob:
                slot = int(torch.randint(pool_size, (), generator=generator))
                out.append(pool["images"][slot].clone())
                pool["images"][slot] = image
            else:
                out.append(image)
        return torch.stack(out)

    def step() -> dict:
        batch = tb["target"].shape[0]
        with torch.no_grad():
            base = recnet(tb["zero_filled"], tb["kspace"], tb["mask"], tb["maps"])
            real = tb["target"].abs()
            real_vgg = vgg(real)
        masks = disc.dropout_masks(batch) if dropout else None
        disc.requires_grad_(False)  # the generator update needs no discriminator gradients
        with torch.no_grad():
            _, real_feats = disc(real[:, None], masks)
        fake, v = refiner(base.abs())
        fake_logits, fake_feats = disc(fake[:, None], masks)
        raw = torch.stack([
            F.softplus(-fake_logits).mean(),
            sum((r - f).abs().mean() for r, f in zip(real_feats, fake_feats, strict=True))
            / len(fake_feats),
            ((vgg(fake) - real_vgg) ** 2).mean(),
            v.abs().mean(),
        ])
        if "values" not in scales:  # eq. 2's normalisers: the first iteration's values
            scales["values"] = (raw.detach() * factors).clamp_min(1e-12)
        terms = raw / scales["values"]
        total = 0.5 * (terms[0] + terms[1]) + terms[2] + terms[3]
        opt_g.zero_grad()
        total.backward()
        opt_g.step()
        disc.requires_grad_(True)

        mixed = pool_query(fake.detach())
        real_logits, _ = disc(real[:, None], disc.dropout_masks(batch) if dropout else None)
        pooled_logits, _ = disc(mixed[:, None], disc.dropout_masks(batch) if dropout else None)
        smooth = 1.0 - label_smoothing
        d_loss = ((smooth * F.softplus(-real_logits) + (1.0 - smooth) * F.softplus(real_logits))
                  .mean() + F.softplus(pooled_logits).mean())
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        return {"loss": total.item(), "d_loss": d_loss.item(), "l_adv": raw[0].item(),
                "l_feat": raw[1].item(), "l_vgg": raw[2].item(), "l_pen": raw[3].item()}

    return step
