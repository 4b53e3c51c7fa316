"""PyTorch reference of the paper 001 (DSGAN + EDSR) step-time case (moved from
``benchmarks/cases_dsgan.py``).

Eager float32 NCHW re-implementations used only by ``python -m benchmarks.step_time`` for its
JAX / PyTorch comparison; torch is imported lazily, so this module imports without it.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxmri.models import dsgan

# --------------------------------------------------------------------------------------------
# The PyTorch reference (imported lazily)
# --------------------------------------------------------------------------------------------


@functools.cache
def _torch_reference():
    """The torch modules, defined on first use so that this module imports without torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def to_torch(x) -> torch.Tensor:
        return torch.from_numpy(np.array(x, np.float32))

    def conv_weight(kernel) -> torch.Tensor:
        # Flax HWIO -> torch OIHW.
        return to_torch(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))

    def nchw(x) -> torch.Tensor:
        return to_torch(np.transpose(np.asarray(x), (0, 3, 1, 2)))

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x / torch.clamp(torch.linalg.vector_norm(x), min=1e-12)

    class Generator(nn.Module):
        """Deep linear generator: bias-free valid convs, no activation, stride 2 last."""

        def __init__(self, features: int, kernel_sizes=(7, 5, 3, 1, 1, 1), scale: int = 2):
            super().__init__()
            n = len(kernel_sizes)
            self.convs = nn.ModuleList(
                nn.Conv2d(1 if i == 0 else features, 1 if i == n - 1 else features, k,
                          stride=scale if i == n - 1 else 1, bias=False)
                for i, k in enumerate(kernel_sizes))
            self.kernel_size = sum(k - 1 for k in kernel_sizes) + 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for conv in self.convs:
                x = conv(x)
            return x

        def extract_kernel(self) -> torch.Tensor:
            """``(K, K)`` kernel ``G^T(1)`` (differentiable), computed as the library does: the
            input gradient of the single output pixel of a ``K x K`` input, one pass."""
            k = self.kernel_size
            probe = torch.zeros(1, 1, k, k, requires_grad=True)
            (kernel,) = torch.autograd.grad(self(probe).sum(), probe, create_graph=True)
            return kernel.reshape(k, k)

    class SNConv(nn.Module):
        """Conv whose operator norm at the fixed size of ``u``/``v`` is kept <= 1.

        One power-iteration step on the detached kernel when ``update_stats``; ``sigma =
        <u, conv(v)>`` carries the gradient to the kernel (stride 1, no padding).
        """

        def __init__(self, c_in: int, c_out: int, k: int, norm_hw: tuple[int, int],
                     coeff: float = 1.0):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
            self.bias = nn.Parameter(torch.zeros(c_out))
            self.register_buffer("v", torch.zeros(1, c_in, *norm_hw))
            self.register_buffer(
                "u", torch.zeros(1, c_out, norm_hw[0] - k + 1, norm_hw[1] - k + 1))
            self.coeff = coeff

        def forward(self, x: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
            if update_stats:
                with torch.no_grad():
                    # conv_transpose2d is the adjoint of the unpadded stride-1 conv2d.
                    v = normalize(F.conv_transpose2d(self.u, self.weight))
                    self.u.copy_(normalize(F.conv2d(v, self.weight)))
                    self.v.copy_(v)
            sigma = torch.sum(self.u * F.conv2d(self.v, self.weight))
            weight = self.weight / torch.clamp(sigma / self.coeff, min=1.0)
            return F.conv2d(x, weight, self.bias)

    class Discriminator(nn.Module):
        """Patch discriminator on ``[x, S_x x, S_y x]``: SN 7x7, SN 1x1s with BN + ReLU."""

        def __init__(self, features: int, lr_size: int, num_1x1: int = 6):
            super().__init__()
            # Convolution with the Sobel operators = correlation with the flipped ones.
            sobel = np.stack([dsgan.SOBEL_X[::-1, ::-1], dsgan.SOBEL_Y[::-1, ::-1]])[:, None]
            self.register_buffer("sobel", to_torch(sobel))
            self.conv7 = SNConv(3, features, 7, (lr_size, lr_size))
            self.convs = nn.ModuleList(
                SNConv(features, 1 if i == num_1x1 - 1 else features, 1, (1, 1))
                for i in range(num_1x1))
            self.bns = nn.ModuleList(nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)
                                     for _ in range(num_1x1 - 1))

        def forward(self, x: torch.Tensor, update_stats: bool = False,
                    track_stats: bool = True) -> torch.Tensor:
            edges = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.sobel)
            h = self.conv7(torch.cat([x, edges], dim=1), update_stats)
            for i, conv in enumerate(self.convs):
                h = conv(h, update_stats)
                if i < len(self.bns):
                    bn = self.bns[i]
                    # Batch statistics always (training mode); the JAX generator pass discards
                    # its running-average update, hence track_stats=False there. (torch keeps
                    # the unbiased running variance, flax the biased one: no loss sees either.)
                    h = F.relu(F.batch_norm(
                        h, bn.running_mean if track_stats else None,
                        bn.running_var if track_stats else None, bn.weight, bn.bias,
                        training=True, momentum=bn.momentum, eps=bn.eps))
            return torch.sigmoid(h)

    class EDSRBlock(nn.Module):
        def __init__(self, features: int, res_scale: float):
            super().__init__()
            self.conv0 = nn.Conv2d(features, features, 3, padding=1)
            self.conv1 = nn.Conv2d(features, features, 3, padding=1)
            self.res_scale = res_scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.res_scale * self.conv1(F.relu(self.conv0(x)))

    class TorchEDSR(nn.Module):
        """EDSR x2: head, residual blocks, body conv + long skip, conv + PixelShuffle, tail."""

        def __init__(self, num_blocks: int, features: int, res_scale: float = 1.0):
            super().__init__()
            self.head = nn.Conv2d(1, features, 3, padding=1)
            self.blocks = nn.Sequential(*(EDSRBlock(features, res_scale)
                                          for _ in range(num_blocks)))
            self.body_out = nn.Conv2d(features, features, 3, padding=1)
            self.upsample = nn.Conv2d(features, 4 * features, 3, padding=1)
            self.shuffle = nn.PixelShuffle(2)
            self.tail = nn.Conv2d(features, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            head = self.head(x)
            h = self.body_out(self.blocks(head)) + head
            return self.tail(self.shuffle(self.upsample(h)))

    return {"torch": torch, "F": F, "to_torch": to_torch, "conv_weight": conv_weight,
            "nchw": nchw, "Generator": Generator, "Discriminator": Discriminator,
            "EDSR": TorchEDSR}

def _n_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


# --- DSGAN ----------------------------------------------------------------------------------


def _torch_gan_nets(ref, setup):
    """Torch generator and discriminator holding the JAX initial state."""
    torch = ref["torch"]
    g_state = setup["state"]["generator"]
    d_state = setup["state"]["discriminator"]
    gen = ref["Generator"](setup["generator"].features)
    for i, conv in enumerate(gen.convs):
        conv.weight.data.copy_(ref["conv_weight"](g_state.params[f"conv{i}"]["kernel"]))
    lr_size = setup["batch"]["lr"].shape[1]
    disc = ref["Discriminator"](d_state.params["conv7"]["kernel"].shape[-1], lr_size)
    spectral, stats = d_state.model_state["spectral"], d_state.model_state["batch_stats"]
    layers = {"conv7": disc.conv7, **{f"conv1x1_{i}": c for i, c in enumerate(disc.convs)}}
    with torch.no_grad():
        for name, layer in layers.items():
            layer.weight.copy_(ref["conv_weight"](d_state.params[name]["kernel"]))
            layer.bias.copy_(ref["to_torch"](d_state.params[name]["bias"]))
            layer.u.copy_(ref["nchw"](spectral[name]["u"]))
            layer.v.copy_(ref["nchw"](spectral[name]["v"]))
        for i, bn in enumerate(disc.bns):
            bn.weight.copy_(ref["to_torch"](d_state.params[f"bn{i}"]["scale"]))
            bn.bias.copy_(ref["to_torch"](d_state.params[f"bn{i}"]["bias"]))
            bn.running_mean.copy_(ref["to_torch"](stats[f"bn{i}"]["mean"]))
            bn.running_var.copy_(ref["to_torch"](stats[f"bn{i}"]["var"]))
    return gen, disc


def _torch_gan_step(ref, setup, preset):
    """``(step() -> metrics dict, torch_params)``: eager eqs. 2-3 update on the fixed batch."""
    torch, F = ref["torch"], ref["F"]
    gen, disc = _torch_gan_nets(ref, setup)
    hr = torch.from_numpy(setup["batch"]["hr"][:, None])
    real = torch.from_numpy(setup["batch"]["lr"][:, None])
    size = gen.kernel_size
    mask = ref["to_torch"](dsgan.penalty_mask(size))
    idx = torch.arange(size, dtype=torch.float32)
    centre = size // 2 + 0.5 * (2 - size % 2)
    # Adam(lr, betas (0.5, 0.999)) with the rate divided by 10 every 750 steps, as
    # dsgan.create_gan_state; one optimiser per network, as there.
    opts = [torch.optim.Adam(net.parameters(), lr=preset.gan_learning_rate, betas=(0.5, 0.999),
                             eps=1e-8) for net in (gen, disc)]
    decays = [torch.optim.lr_scheduler.StepLR(opt, step_size=750, gamma=0.1) for opt in opts]
    # dsgan.initial_schedule / update_schedule, on the host (Python floats).
    sched = {"bicubic": 5.0, "sum2one": 0.5, "boundaries": 0.5, "center": 0.0, "sparse": 0.0,
             "below_count": 0, "similar": False}
    counter = {"step": 0}

    def regularisers(kernel):
        total = kernel.sum()
        com = torch.stack([(kernel.sum(1) * idx).sum(), (kernel.sum(0) * idx).sum()]) / total
        return {"sum2one": (1.0 - total).abs(),
                "boundaries": (kernel * mask).abs().mean(),
                "sparse": ((kernel.abs() + 1e-8) ** 0.2).mean(),
                "center": torch.sqrt(((com - centre) ** 2).sum() + 1e-12)}

    def bicubic_loss(fake):
        down = F.interpolate(hr, size=(hr.shape[2] // 2, hr.shape[3] // 2), mode="bicubic",
                             align_corners=False, antialias=True)
        oy, ox = (down.shape[2] - fake.shape[2]) // 2, (down.shape[3] - fake.shape[3]) // 2
        down = down[:, :, oy:oy + fake.shape[2], ox:ox + fake.shape[3]]
        return (fake - down).abs().mean()

    def update_schedule(bic: float) -> None:
        step, s = counter["step"], sched
        below = bic < 0.4
        becomes_similar = (not s["similar"]) and below and s["below_count"] >= 2
        decay_now = (s["similar"] and step > 0 and step % setup["update_every"] == 0
                     and s["bicubic"] > 5e-6)
        if decay_now:
            s["bicubic"] = max(s["bicubic"] * 0.01, 5e-6)
            if s["bicubic"] < 5e-3:
                s["center"], s["sparse"] = 1.0, 5.0
        if not s["similar"]:
            s["below_count"] = s["below_count"] + 1 if below else 0
        s["similar"] = s["similar"] or becomes_similar

    def step() -> dict[str, float]:
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        # Generator: D in training mode (batch statistics, no power step, no running update).
        fake = gen(hr)
        adv = (disc(fake, track_stats=False) - 1.0).abs().mean()
        reg = regularisers(gen.extract_kernel())
        bic = bicubic_loss(fake)
        g_total = adv + sched["bicubic"] * bic + sum(sched[n] * reg[n] for n in reg)
        # Gradients of G only (jax.value_and_grad w.r.t. the generator's parameters).
        g_total.backward(inputs=list(gen.parameters()))
        # Discriminator on real (one power step) then on the detached fake, both with the old G.
        fake = fake.detach()
        d_loss = (disc(real, update_stats=True) - 1.0).abs().mean() + disc(fake).abs().mean()
        d_loss.backward()
        for opt, decay in zip(opts, decays):
            opt.step()
            decay.step()
        bic_value = bic.item()
        update_schedule(bic_value)
        counter["step"] += 1
        metrics = {"g_loss": g_total.item(), "d_loss": d_loss.item(), "g_adv": adv.item(),
                   "bicubic": bic_value, **{k: v.item() for k, v in reg.items()}}
        return metrics

    return step, _n_params(gen) + _n_params(disc)


# --- EDSR -----------------------------------------------------------------------------------


def _torch_edsr_step(ref, setup, preset):
    """``(step() -> metrics dict, torch_params)``: eager L1 update of the torch EDSR."""
    torch, F = ref["torch"], ref["F"]
    module, params = setup["module"], setup["state"].params
    net = ref["EDSR"](module.num_blocks, module.features, module.res_scale)
    convs = {"head": net.head, "body_out": net.body_out, "upsample0": net.upsample,
             "tail": net.tail}
    for i, block in enumerate(net.blocks):
        convs.update({f"block{i}/conv0": block.conv0, f"block{i}/conv1": block.conv1})
    with torch.no_grad():
        for path, conv in convs.items():
            leaf = params
            for part in path.split("/"):
                leaf = leaf[part]
            conv.weight.copy_(ref["conv_weight"](leaf["kernel"]))
            conv.bias.copy_(ref["to_torch"](leaf["bias"]))
    x = torch.from_numpy(setup["batch"]["input"][:, None])
    y = torch.from_numpy(setup["batch"]["target"][:, None])
    opt = torch.optim.Adam(net.parameters(), lr=preset.edsr_learning_rate)  # optax.adam defaults

    def step() -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        loss = F.l1_loss(net(x), y)
        loss.backward()
        opt.step()
        return {"l1": loss.item()}

    return step, _n_params(net)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
