"""GAN augmentation for rare failures: a small recurrent WGAN-GP makes extra pre-failure windows.

When a history holds few failures, the failure head sees few positive windows. A GRU
generator (per-step noise plus a per-window code) and a GRU critic are trained with the
Wasserstein loss and a gradient penalty (Gulrajani et al. 2017), which keeps a small GAN
stable without batch norm or clipping tricks. The generator learns only from the training
split's pre-failure windows (label 1: failure within the horizon); validation and test
assets never reach it. Its windows, in the model's normalised input space and bounded to
the range the real ones span, are added to the training set as positives, with no forecast
or RUL targets, so they teach the failure head only.

Mode collapse is measured, not assumed away: the spread of generated windows (mean pairwise
distance) against the real ones', and the nearest-neighbour distance from generated to real
windows against real to real (about 1: as close to the data as the data is to itself; far
below: copies; far above: off the data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from training.labels import Inputs, WindowSet

F32 = npt.NDArray[np.float32]
SYNTHETIC_ASSET = "gan-synthetic"


@dataclass(frozen=True)
class GanConfig:
    hidden: int = 32
    noise: int = 8
    steps: int = 400           # generator updates
    critic_steps: int = 5      # critic updates per generator update (WGAN-GP's n_critic)
    batch_size: int = 64
    lr: float = 5e-4
    gp_weight: float = 10.0
    seed: int = 0


@dataclass(frozen=True)
class Diversity:
    """Mode-collapse check of generated against real windows (flattened, Euclidean)."""

    real_spread: float         # mean pairwise distance among real windows
    generated_spread: float    # the same among generated windows
    spread_ratio: float        # generated / real: near 1 healthy, near 0 collapsed
    nn_ratio: float            # mean NN distance generated->real over real->real (leave-one-out)
    collapsed: bool            # spread_ratio under 0.5


class Generator(nn.Module):
    """Noise sequence [B, W, noise] and a window code [B, noise] -> windows [B, W, C] within [lo, hi]."""

    def __init__(self, n_channels: int, hidden: int, noise: int, lo: Tensor, hi: Tensor) -> None:
        super().__init__()
        self.noise = noise
        self.start = nn.Linear(noise, hidden)
        self.rnn = nn.GRU(noise, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_channels)
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)

    def forward(self, z_seq: Tensor, z_code: Tensor) -> Tensor:
        h0 = torch.tanh(self.start(z_code)).unsqueeze(0)
        out, _ = self.rnn(z_seq, h0)
        unit = 0.5 * (torch.tanh(self.out(out)) + 1.0)
        lo: Tensor = self.lo  # type: ignore[assignment]
        hi: Tensor = self.hi  # type: ignore[assignment]
        return lo + (hi - lo) * unit


class Critic(nn.Module):
    """Windows [B, W, C] -> a real-valued score [B] (no sigmoid: Wasserstein critic)."""

    def __init__(self, n_channels: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(n_channels, hidden, batch_first=True)
        self.out = nn.Linear(2 * hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        # Last state and the time mean: the critic sees the end of the window and its whole course.
        score: Tensor = self.out(torch.cat([out[:, -1], out.mean(dim=1)], dim=-1)).squeeze(-1)
        return score


@dataclass
class TrainedGan:
    generator: Generator
    config: GanConfig
    critic_loss: list[float]
    window: int

    def sample(self, n: int, seed: int) -> F32:
        """n generated windows [n, W, C], reproducible for a seed."""
        g = torch.Generator().manual_seed(seed)
        self.generator.eval()
        parts: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, n, 1024):
                b = min(1024, n - start)
                z_seq = torch.randn(b, self.window, self.config.noise, generator=g)
                z_code = torch.randn(b, self.config.noise, generator=g)
                parts.append(self.generator(z_seq, z_code).numpy())
        if not parts:
            return np.empty((0, self.window, int(self.generator.out.out_features)), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32)


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor, gen: torch.Generator) -> Tensor:
    """(||grad critic(x_hat)|| - 1)^2 at random points between real and generated windows."""
    eps = torch.rand(real.shape[0], 1, 1, generator=gen)
    x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    grad = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)[0]
    penalty: Tensor = ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
    return penalty


def train_gan(real: F32, cfg: GanConfig) -> TrainedGan:
    """WGAN-GP on real windows [N, W, C] (normalised); deterministic for a seed on the CPU."""
    if len(real) < 2:
        raise ValueError("GAN augmentation needs at least 2 pre-failure training windows")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    n, w, c = real.shape
    flat = real.reshape(-1, c)
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-3)  # a little room beyond the seen range, never beyond it far
    g = Generator(c, cfg.hidden, cfg.noise, torch.from_numpy(lo - pad), torch.from_numpy(hi + pad))
    d = Critic(c, cfg.hidden)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    data = torch.from_numpy(real)
    b = min(cfg.batch_size, n)
    losses: list[float] = []

    def fake_batch() -> Tensor:
        z_seq, z_code = torch.randn(b, w, cfg.noise, generator=gen), torch.randn(b, cfg.noise, generator=gen)
        fake: Tensor = g(z_seq, z_code)
        return fake

    for _ in range(cfg.steps):
        for _ in range(cfg.critic_steps):
            x = data[torch.randint(0, n, (b,), generator=gen)]
            with torch.no_grad():
                fake = fake_batch()
            loss_d = d(fake).mean() - d(x).mean() + cfg.gp_weight * gradient_penalty(d, x, fake, gen)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        loss_g = -d(fake_batch()).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        losses.append(loss_d.item())
    return TrainedGan(g, cfg, losses, w)


def diversity(generated: F32, real: F32, seed: int, n: int = 256) -> Diversity:
    """Spread and nearest-neighbour ratios of generated against real windows (subsampled to n each)."""
    rng = np.random.default_rng(seed)

    def pick(a: F32) -> np.ndarray:
        sel = a[rng.choice(len(a), min(n, len(a)), replace=False)]
        return sel.reshape(len(sel), -1).astype(np.float64)

    gen, rl = pick(generated), pick(real)

    def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.asarray(np.sqrt(np.maximum(d2, 0.0)))

    def spread(a: np.ndarray) -> float:
        d = pairwise(a, a)
        k = len(a)
        return float(d.sum() / (k * (k - 1))) if k > 1 else 0.0

    rr = pairwise(rl, rl)
    np.fill_diagonal(rr, np.inf)
    real_nn = float(rr.min(axis=1).mean())
    gen_nn = float(pairwise(gen, rl).min(axis=1).mean())
    rs, gs = spread(rl), spread(gen)
    ratio = gs / rs if rs > 0 else math.nan
    return Diversity(rs, gs, ratio, gen_nn / real_nn if real_nn > 0 else math.nan, bool(ratio < 0.5))


def pre_failure(train: Inputs) -> tuple[F32, tuple[str, ...]]:
    """The training split's pre-failure windows [N, W, C] (normalised) and the assets they come from.

    Takes only a training `Inputs`: the caller hands it `Prepared.train`, so validation and
    test assets cannot reach the generator.
    """
    idx = np.flatnonzero(train.ws.fail == 1)
    names = tuple(sorted({train.ws.assets[a] for a in np.unique(train.ws.asset[idx])}))
    return train.x(idx), names


def with_synthetic(train: Inputs, synthetic: F32) -> Inputs:
    """The training set plus synthetic positive windows (no forecast or RUL targets), under one new asset."""
    ws = train.ws
    k, w, c = synthetic.shape
    if k == 0:
        return train
    if w != ws.window or c != train.z.shape[1]:
        raise ValueError(f"synthetic windows are {w} x {c}, training ones {ws.window} x {train.z.shape[1]}")
    offset = len(ws.cells)
    starts = offset + np.arange(k, dtype=np.int64) * w
    ends = starts + w - 1
    new = WindowSet(
        cells=np.concatenate([ws.cells, np.full((k * w, c), np.nan)]),  # raw values of a fake: none
        ends=np.concatenate([ws.ends, ends]),
        end_cell=np.concatenate([ws.end_cell, np.full(k, -1, dtype=np.int64)]),
        asset=np.concatenate([ws.asset, np.full(k, len(ws.assets), dtype=np.int64)]),
        fail=np.concatenate([ws.fail, np.ones(k, dtype=np.float32)]),
        has_target=np.concatenate([ws.has_target, np.zeros(k, dtype=bool)]),
        rul=np.concatenate([ws.rul, np.full(k, np.nan, dtype=np.float32)]),
        observed=np.concatenate([ws.observed, np.zeros(k, dtype=np.float32)]),
        first_row=np.concatenate([ws.first_row, starts]),
        assets=(*ws.assets, SYNTHETIC_ASSET), window=ws.window, horizon=ws.horizon)
    return Inputs(new, np.concatenate([train.z, synthetic.reshape(k * w, c).astype(np.float32)]))
