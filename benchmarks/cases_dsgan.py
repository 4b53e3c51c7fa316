"""Step cases of paper 001 (DSGAN + EDSR): the downsampling-GAN step and the EDSR L1 step.

Two :class:`~benchmarks._common.StepCase` rows, built as ``experiments/dsgan_sr.py`` builds its
training (``PRESETS['cpu']``, or ``PRESETS['paper']`` with ``paper=True``):

* ``"DSGAN generator+discriminator"``: one update of
  :func:`jaxmri.models.dsgan.make_gan_train_step` (``train_dsgan``): the deep linear generator
  (valid 7, 5, 3, 1, 1, 1 convs, no bias, stride 2 last) and the Sobel-input patch discriminator
  (spectrally normalised 7x7 conv, six SN 1x1 convs with BatchNorm + ReLU between, sigmoid).
  The generator loss is ``mean|D(G(x)) - 1|`` plus the bicubic loss and eq. 3's kernel
  regularisers (sum-to-one, boundaries, sparsity, centre of mass) of the kernel ``G^T(1)``
  extracted in one transposed pass (both sides), weighted by the dynamic schedule; the
  discriminator loss is ``mean|D(y) - 1| + mean|D(G(x))|`` with one power-iteration step per
  update. Both Adams (betas 0.5, 0.999; rate / 10 every 750 steps) step once. Batch
  ``{'hr': (B, 48, 48), 'lr': (B, 18, 18)}`` float32 at the cpu preset (B = 2; paper: B = 1,
  64 / 26).
* ``"EDSR"``: one update of :func:`jaxmri.models.dsgan.make_l1_train_step` on
  :class:`jaxmri.nn.edsr.EDSR` (``train_edsr``; cpu: 4 blocks, 32 features; paper: 16, 64) with
  Adam: ``mean|EDSR(lr) - hr|``, batch ``{'input': (16, 16, 16), 'target': (16, 32, 32)}``
  float32 at the cpu preset (paper: 48 / 96).

Inputs are a smooth synthetic phantom (ellipses, values in [0, 1]) and its "scanner" LR image
(the true scanner kernel of :mod:`jaxmri.physics.lowres`, x2), cropped deterministically with
``np.random.default_rng(0)``; both implementations get the same arrays.

The PyTorch side (when ``with_torch`` and torch imports) is an eager NCHW float32 reference of
the same networks, losses and optimisers, started from the JAX initial parameters (and the JAX
spectral-norm power-iteration vectors). At build time the first steps of both are run on the
batch and every loss term must agree (:data:`_RTOL`): three steps for EDSR, which checks the
Adam settings as well as the network and loss; two for the GAN (:data:`_CHECK_STEPS` says why).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import StepCase, jax_case
from jaxmri.cpu import conv_for
from jaxmri.models import dsgan
from jaxmri.nn.edsr import EDSR
from jaxmri.physics.lowres import downsample_with_kernel, scanner_kernel
from jaxmri.train import (
    create_train_state,
    make_parallel_step,
    replicate,
    shard_batch,
    unreplicate,
)

__all__ = ["cases"]

# The names of the rows cases() builds (step_time --only skips modules without a match).
CASE_NAMES = ('DSGAN generator+discriminator', 'EDSR')

# Tolerance of the equivalence check, per step: relative difference of every loss term at step
# 1 (same parameters, same batch), 2 (after the first Adam update: learning rate and epsilon) and
# 3 (after the second: the betas, which the first update ``-lr g / (|g| + eps)`` does not see).
_RTOL = {1: 1e-4, 2: 1e-3, 3: 1e-3}
# Steps checked per case. The GAN stops at 2: its initial kernel sums to ~2e-7 (the deep linear
# generator's gain-0.1 init), Adam's near-sign updates of 1e-3 are large against weights of
# ~3e-3, and float32 rounding differences grow chaotically: at step 3 the terms of two correct
# implementations differed by up to 1.5e-3 (sparsity) and 16 % (centre of mass, which divides
# by the kernel sum), at step 4 by 0.5 % in the adversarial loss. Its betas are therefore
# checked by construction only (the arguments below mirror dsgan.create_gan_state).
_CHECK_STEPS = {"gan": 2, "edsr": 3}
_SEED = 0


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _phantom(rng: np.random.Generator, size: int, count: int = 6) -> np.ndarray:
    """``(count, size, size)`` float32 smooth ellipse phantoms in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    t = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    out = np.zeros((count, size, size), np.float64)
    for n in range(count):
        for _ in range(10):
            cy, cx = rng.uniform(-0.5, 0.5, 2)
            ay, ax = rng.uniform(0.1, 0.6, 2)
            angle = rng.uniform(0.0, np.pi)
            u = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)
            v = -np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)
            out[n] += rng.uniform(0.1, 0.5) * ((u / ax) ** 2 + (v / ay) ** 2 <= 1.0)
        out[n] = gaussian_filter(out[n], sigma=0.02 * size)
    out /= max(out.max(), 1e-12)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _hr_lr_slices(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """HR phantoms ``(N, S, S)`` and their scanner-kernel x2 LR images ``(N, S/2, S/2)``."""
    hr = _phantom(np.random.default_rng(_SEED), image_size)
    lr = np.asarray(jax.jit(downsample_with_kernel)(hr, scanner_kernel()))
    return hr, lr


def _crops(rng: np.random.Generator, images: np.ndarray, crop: int, count: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` square crops of ``(N, S, S)`` ``images`` and their ``(index, y, x)`` rows."""
    idx = rng.integers(0, len(images), count)
    corners = rng.integers(0, images.shape[-1] - crop + 1, (count, 2))
    out = np.stack([images[i, y:y + crop, x:x + crop] for i, (y, x) in zip(idx, corners)])
    return out.astype(np.float32), np.concatenate([idx[:, None], corners], axis=1)


# --------------------------------------------------------------------------------------------
# The JAX side, as experiments/dsgan_sr.py builds it
# --------------------------------------------------------------------------------------------


def _gan_setup(preset) -> dict[str, Any]:
    conv = dict(conv_general_dilated=conv_for())  # as the experiment's setup picks it
    generator = dsgan.DeepLinearGenerator(features=preset.gan_features, **conv)
    discriminator = dsgan.PatchDiscriminator(features=preset.gan_features, **conv)
    # train_dsgan's schedule period for a run of preset.gan_steps steps.
    update_every = max(1, min(200, preset.gan_steps // 3))
    state = dsgan.create_gan_state(jax.random.PRNGKey(_SEED), generator, discriminator,
                                   hr_crop=preset.gan_hr_crop,
                                   learning_rate=preset.gan_learning_rate, lr_decay_every=750)
    lr_crop = (preset.gan_hr_crop - generator.kernel_size) // 2 + 1
    hr, lr = _hr_lr_slices(preset.image_size)
    rng = np.random.default_rng(_SEED)
    batch = {"hr": _crops(rng, hr, preset.gan_hr_crop, preset.gan_batch)[0],
             "lr": _crops(rng, lr, lr_crop, preset.gan_batch)[0]}
    return {"generator": generator, "state": state, "batch": batch, "update_every": update_every,
            "train_step": dsgan.make_gan_train_step(generator, update_every=update_every)}


def _edsr_setup(preset) -> dict[str, Any]:
    module = EDSR(num_blocks=preset.edsr_blocks, features=preset.edsr_features, scale=2,
                  conv_general_dilated=conv_for())
    crop = preset.edsr_lr_crop
    variables = jax.jit(module.init)(jax.random.PRNGKey(_SEED),
                                     jnp.zeros((1, crop, crop, 1), jnp.float32))
    state = create_train_state(module, optax.adam(preset.edsr_learning_rate), variables)
    hr, lr = _hr_lr_slices(preset.image_size)
    rng = np.random.default_rng(_SEED)
    lo, where = _crops(rng, lr, crop, preset.edsr_batch)
    hi = np.stack([hr[i, 2 * y:2 * (y + crop), 2 * x:2 * (x + crop)] for i, y, x in where])
    return {"module": module, "state": state,
            "batch": {"input": lo, "target": hi.astype(np.float32)},
            # train_edsr's step (experiments/dsgan_sr.py _L1_STEP).
            "train_step": dsgan.make_l1_train_step(input_key="input", target_key="target")}


def _jax_metrics(train_step, state, batch, steps: int) -> list[dict[str, float]]:
    """Host metrics of the first ``steps`` pmapped updates (as ``fit`` runs them)."""
    pstep = make_parallel_step(train_step)
    n = jax.local_device_count()
    rstate, rbatch = replicate(state), shard_batch(dict(batch), num_local_devices=n)
    stop = np.zeros((n,), np.int32)
    out = []
    for step in range(steps):
        rstate, metrics, _ = pstep(rstate, rbatch, jax.random.PRNGKey(_SEED), step, stop)
        out.append({k: float(v) for k, v in unreplicate(metrics).items()})
    return out


def _check(name: str, jax_runs: list[dict[str, float]], torch_runs: list[dict[str, float]]
           ) -> list[float]:
    """Assert that every common loss term agrees within :data:`_RTOL`; returns the worst
    relative difference of each step."""
    worst = []
    for step, (ref, got) in enumerate(zip(jax_runs, torch_runs), start=1):
        common = sorted(set(ref) & set(got))
        if not common:
            raise AssertionError(f"{name}: no loss term to compare at step {step}")
        worst.append(0.0)
        for key in common:
            a, b = ref[key], got[key]
            rel = abs(a - b) / max(abs(a), 1e-6)
            worst[-1] = max(worst[-1], rel)
            if not rel <= _RTOL[step]:
                raise AssertionError(
                    f"{name}: torch and JAX disagree at step {step} on {key!r}: "
                    f"{b!r} vs {a!r} (relative {rel:.2e} > {_RTOL[step]:.0e})")
    return worst


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


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


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


def _case(name: str, setup, preset, image_size: int, torch_builder, with_torch: bool, *,
          check_steps: int) -> StepCase:
    torch_step = torch_params = None
    if with_torch and _have_torch():
        step, torch_params = torch_builder(_torch_reference(), setup, preset)
        torch_runs = [step() for _ in range(check_steps)]
        jax_runs = _jax_metrics(setup["train_step"], setup["state"], setup["batch"], check_steps)
        worst = _check(name, jax_runs, torch_runs)
        print(f"{name}: torch matches JAX, worst relative loss difference "
              + ", ".join(f"step {i}: {w:.1e}" for i, w in enumerate(worst, start=1)))

        def torch_step() -> None:
            step()

    case = jax_case(name, train_step=setup["train_step"], state=setup["state"],
                    batch=setup["batch"], params=_trainable(setup["state"]),
                    image_size=image_size)
    case.torch_step, case.torch_params = torch_step, torch_params
    return case


def _trainable(state) -> Any:
    if isinstance(state, dict):
        return {k: v.params for k, v in state.items() if hasattr(v, "params")}
    return state.params


def cases(*, paper: bool = False, with_torch: bool = True) -> list[StepCase]:
    """The DSGAN GAN step and the EDSR L1 step at the cpu (or paper) preset of dsgan_sr.

    ``image_size`` in the rows is the network input's side: the HR crop for the GAN (the
    generator's input), the LR crop for EDSR. With torch, each builder asserts the
    equivalence of the first steps' losses before returning (AssertionError otherwise).
    """
    from experiments import dsgan_sr

    preset = dsgan_sr.PRESETS["paper" if paper else "cpu"]
    return [
        _case("DSGAN generator+discriminator", _gan_setup(preset), preset, preset.gan_hr_crop,
              _torch_gan_step, with_torch, check_steps=_CHECK_STEPS["gan"]),
        _case("EDSR", _edsr_setup(preset), preset, preset.edsr_lr_crop, _torch_edsr_step,
              with_torch, check_steps=_CHECK_STEPS["edsr"]),
    ]

