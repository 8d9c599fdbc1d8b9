"""LSTM-VAE anomaly scorer: learns what healthy windows look like and scores what does not fit.

An LSTM encoder maps a normalised window to a Gaussian posterior q(z|x); an LSTM decoder,
started from and fed with z, gives a Gaussian per cell p(x|z). Training maximises the ELBO
(reconstruction log-likelihood minus KL to N(0, I), the KL weight warmed up from 0 so the
decoder learns to use z before the prior pulls it in). The score served is the negative
reconstruction log-likelihood per cell at the posterior mean: deterministic, so the
TorchScript file equals the eager model and two agents score a window alike. Calibration
turns it into a probability with its quantiles on healthy validation windows
(`agent.spec.AnomalyStats`). It needs no failure labels, so it serves assets whose
history has none.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from tqdm import tqdm

from training.labels import Inputs
from training.model import Model


@dataclass(frozen=True)
class VaeConfig:
    n_channels: int
    hidden: int = 32
    latent: int = 8


@dataclass(frozen=True)
class VaeTrainConfig:
    epochs: int = 10
    windows_per_epoch: int = 20_000
    batch_size: int = 256
    lr: float = 2e-3
    beta: float = 1.0
    # Share of all steps over which the KL weight rises from 0 to beta (against posterior collapse).
    warmup_frac: float = 0.3
    val_windows: int = 5_000
    seed: int = 0
    progress: bool = False


@dataclass
class VaeResult:
    best_score: float
    epochs_run: int
    best_epoch: int
    train_windows: int
    curve: list[dict[str, float]] = field(default_factory=list)


class LstmVae(nn.Module):
    """Encoder-decoder over the window with a latent Gaussian; forward gives the anomaly score [B]."""

    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        self.config = cfg
        self.n_channels = cfg.n_channels
        self.encoder = nn.LSTM(cfg.n_channels, cfg.hidden, batch_first=True)
        self.to_posterior = nn.Linear(cfg.hidden, 2 * cfg.latent)
        self.to_state = nn.Linear(cfg.latent, cfg.hidden)
        self.decoder = nn.LSTM(cfg.latent, cfg.hidden, batch_first=True)
        self.to_cells = nn.Linear(cfg.hidden, 2 * cfg.n_channels)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance [B, latent]."""
        out, _ = self.encoder(x)
        mu, logvar = self.to_posterior(out[:, -1, :]).chunk(2, dim=-1)
        return mu, torch.clamp(logvar, -10.0, 6.0)

    def decode(self, z: Tensor, w: int) -> tuple[Tensor, Tensor]:
        """Per-cell Gaussian mean and log-variance [B, W, C] of the window z stands for."""
        h0 = torch.tanh(self.to_state(z)).unsqueeze(0)
        out, _ = self.decoder(z.unsqueeze(1).expand(-1, w, -1).contiguous(), (h0, torch.zeros_like(h0)))
        mean, logvar = self.to_cells(out).chunk(2, dim=-1)
        # Bounded, as in the forecaster: a near-constant channel must not drive the NLL to -inf.
        return mean, torch.clamp(logvar, -8.0, 6.0)

    def terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction NLL (summed over the window) and KL to N(0, I) per window; z = mu + eps * sd."""
        mu, logvar = self.encode(x)
        z = mu + eps * torch.exp(0.5 * logvar)
        mean, lv = self.decode(z, x.shape[1])
        return cell_nll(mean, lv, x).sum(dim=(1, 2)), kl_standard_normal(mu, logvar)

    def forward(self, x: Tensor) -> Tensor:
        """Anomaly score: negative reconstruction log-likelihood per cell at the posterior mean [B]."""
        mu, _ = self.encode(x)
        mean, logvar = self.decode(mu, x.shape[1])
        return cell_nll(mean, logvar, x).mean(dim=(1, 2))


def cell_nll(mean: Tensor, logvar: Tensor, x: Tensor) -> Tensor:
    """Gaussian negative log-likelihood of each cell (with the constant, so it is a true NLL)."""
    return 0.5 * (logvar + (x - mean) ** 2 * torch.exp(-logvar) + 1.8378770664093453)  # log(2 pi)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, closed form."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)


class WithAnomaly(nn.Module):
    """The served file: the forecaster's outputs plus `anomaly_nll` [B] from the VAE, one batch, one call."""

    def __init__(self, base: Model, vae: LstmVae) -> None:
        super().__init__()
        self.base = base
        self.vae = vae

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = self.base(x)
        out["anomaly_nll"] = self.vae(x)
        return out


def scores(vae: LstmVae, data: Inputs, batch: int = 2048) -> npt.NDArray[np.float32]:
    """The anomaly score of every window of a set, eval mode, no gradients."""
    vae.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(data.ws), batch):
            idx = np.arange(start, min(start + batch, len(data.ws)))
            out.append(vae(torch.from_numpy(data.x(idx))).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.empty(0, dtype=np.float32)


def _elbo_loss(vae: LstmVae, x: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    recon, kl = vae.terms(x, torch.randn(x.shape[0], vae.config.latent))
    return (recon + beta * kl).mean(), recon.mean(), kl.mean()


def train_vae(vae: LstmVae, train: Inputs, train_idx: npt.NDArray[np.int64], val: Inputs,
              val_idx: npt.NDArray[np.int64], cfg: VaeTrainConfig) -> VaeResult:
    """Fit on healthy training windows; keep the weights with the best negative ELBO on healthy validation."""
    if len(train_idx) == 0:
        raise ValueError("no healthy training windows for the VAE")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 7])
    n = min(len(train_idx), cfg.windows_per_epoch)
    steps = max(cfg.epochs * math.ceil(n / cfg.batch_size), 1)
    warm = max(int(cfg.warmup_frac * steps), 1)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    v_idx = np.sort(rng.choice(val_idx, min(len(val_idx), cfg.val_windows), replace=False)) \
        if len(val_idx) else np.empty(0, dtype=np.int64)
    best, best_state, best_epoch, step = math.inf, copy.deepcopy(vae.state_dict()), 0, 0
    curve: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        vae.train()
        order = rng.choice(train_idx, n, replace=False)
        total = 0.0
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"vae {epoch + 1}/{cfg.epochs}",
                   disable=None if cfg.progress else True, file=sys.stderr, leave=False, unit="batch")
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            beta = cfg.beta * min(1.0, (step + 1) / warm)
            loss, _, _ = _elbo_loss(vae, torch.from_numpy(train.x(idx)), beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            step += 1
            total += loss.item() * len(idx)
        row = {"epoch": float(epoch + 1), "train_loss": total / n, **_val_terms(vae, val, v_idx, cfg)}
        curve.append(row)
        score = row.get("val_loss", row["train_loss"])
        if score < best - 1e-4:
            best, best_epoch, best_state = score, epoch + 1, copy.deepcopy(vae.state_dict())
    vae.load_state_dict(best_state)
    vae.eval()
    return VaeResult(best, cfg.epochs, best_epoch, len(train_idx), curve)


def _val_terms(vae: LstmVae, val: Inputs, idx: npt.NDArray[np.int64],
               cfg: VaeTrainConfig) -> dict[str, float]:
    """Negative ELBO (full KL weight) and its parts on healthy validation windows, fixed noise."""
    if len(idx) == 0:
        return {}
    vae.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    sums = np.zeros(3)
    with torch.no_grad():
        for start in range(0, len(idx), 1024):
            b = idx[start : start + 1024]
            x = torch.from_numpy(val.x(b))
            recon, kl = vae.terms(x, torch.randn(len(b), vae.config.latent, generator=gen))
            sums += np.array([float((recon + cfg.beta * kl).sum()), float(recon.sum()), float(kl.sum())])
    v = sums / len(idx)
    return {"val_loss": float(v[0]), "val_recon_nll": float(v[1]), "val_kl": float(v[2])}
