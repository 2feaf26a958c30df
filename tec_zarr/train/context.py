"""Train the context entropy model (tec-ctx): ``python -m tec_zarr.train.context --out runs/ctx --init-hyper ...``.

ELIC's image model on a shipped model's frozen symbols: the hyperprior of :mod:`tec_zarr.train.hyper` plus

* **uneven channel groups**: the 192 latent channels, in an order that puts the highest-entropy channels first,
  are coded in groups of 16, 16, 32, 64 and 64; each group sees every earlier group's decoded values through a
  3x3 convolution (channel context);
* a **checkerboard** inside each group: the anchors (``(i + j) % 2 == 0``) are coded first from the hyperprior and
  the channel context, then the other half also from the group's decoded anchors through a 5x5 convolution
  (spatial context: only the 12 taps at odd offsets ever see an anchor).

Each group's parameter network is ``ReLU(1x1(hyper features) + 3x3(earlier groups) + 5x5(anchors)) -> ReLU(1x1) ->
1x1`` and outputs corrections to the hyperprior's log2 sigma and mean (zero at initialization, so training starts
from the hyperprior's rate). Inputs are in latent units (decoded symbols divided by the quality's gain), so one
network serves every quality. Rate only, as the symbols are the base model's: the decoded pixels do not change.

Resumable like :mod:`tec_zarr.train.hyper` (same latents cache, ``checkpoint.pt``, ``log.jsonl``); export with
``python -m tec_zarr.train.context_export``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import loop
from .hyper import DEFAULT_DATA, HyperConfig, HyperPrior, base_model, factorized_bits, gaussian_bin_probability, precompute


@dataclass(frozen=True)
class ContextConfig:
    groups: tuple[int, ...] = (16, 16, 32, 64, 64)
    hidden: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ContextConfig":
        return cls(groups=tuple(d["groups"]), hidden=int(d["hidden"]))


def checkerboard(h: int, w: int, device=None) -> torch.Tensor:
    """1.0 at the anchors ((i + j) even), 0.0 elsewhere, shape (1, 1, h, w)."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return ((i + j) % 2 == 0).float()[None, None]


class GroupContext(nn.Module):
    """Parameter network of one channel group: corrections (dL, dMU) from hyper features and decoded context."""

    def __init__(self, channels: int, earlier: int, hidden: int):
        super().__init__()
        self.hyper = nn.Conv2d(3 * channels, hidden, 1)
        self.channel = nn.Conv2d(earlier, hidden, 3, padding=1, bias=False) if earlier else None
        self.spatial = nn.Conv2d(channels, hidden, 5, padding=2, bias=False)
        self.hidden = nn.Conv2d(hidden, hidden, 1)
        self.out = nn.Conv2d(hidden, 2 * channels, 1)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, features, earlier, anchors, others_mask, record: dict | None = None):
        """``anchors``: the group's decoded values at anchors, zero elsewhere; ``others_mask``: 1 at non-anchors.
        ``record`` (export) collects the largest |value| entering each layer."""
        acc = self.hyper(features) + self.spatial(anchors) * others_mask
        if self.channel is not None:
            acc = acc + self.channel(earlier)
        h1 = F.relu(acc)
        h2 = F.relu(self.hidden(h1))
        if record is not None:
            for key, t in (("input", torch.cat([features.flatten(), earlier.flatten(), anchors.flatten()])),
                           ("h1", h1), ("h2", h2)):
                record[key] = max(record.get(key, 0.0), float(t.abs().max()))
        out = self.out(h2)
        c = out.shape[1] // 2
        return out[:, :c], out[:, c:]


class ContextPrior(nn.Module):
    """Rate model: the hyperprior's (log2 sigma, mean) refined group by group and checkerboard half by half."""

    def __init__(self, cfg: ContextConfig, hyper_cfg: HyperConfig, gain: np.ndarray, order: np.ndarray):
        super().__init__()
        if sorted(np.asarray(order).tolist()) != list(range(hyper_cfg.latent_channels)):
            raise ValueError("Expected the channel order to be a permutation of the latent channels.")
        if sum(cfg.groups) != hyper_cfg.latent_channels:
            raise ValueError(f"Expected groups summing to {hyper_cfg.latent_channels}. Got {cfg.groups} instead.")
        self.cfg = cfg
        self.hyper = HyperPrior(hyper_cfg, gain)
        self.register_buffer("order", torch.as_tensor(np.asarray(order, np.int64)))
        starts = np.cumsum((0,) + tuple(cfg.groups))
        self.bounds = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.contexts = nn.ModuleList(GroupContext(b - a, a, cfg.hidden) for a, b in self.bounds)

    def parameters_of(self, part: str):
        if part == "context":
            return list(self.contexts.parameters())
        return self.hyper.parameters_of(part)

    def forward(self, y: torch.Tensor, quality: torch.Tensor, *, noise: bool = True,
                record: list[dict] | None = None) -> dict:
        """Bits per sample of y_q and z; ``record`` (export): one dict of layer peaks per group."""
        hp = self.hyper
        z = hp.h_a(y) * hp.z_gain(quality)
        bits_z = torch.zeros(y.shape[0], device=y.device)
        zq = z + torch.empty_like(z).uniform_(-0.5, 0.5) if noise else torch.round(z)
        for q in torch.unique(quality).tolist():
            sel = quality == q
            bits_z[sel] = -torch.log2(hp.densities[q].likelihood(zq[sel])).sum(dim=(1, 2, 3))
        rounded = z + (torch.round(z) - z).detach()
        out = hp.h_s(rounded / hp.z_gain(quality))
        m = hp.cfg.latent_channels
        order = self.order
        log_sigma, mean = out[:, :m][:, order], out[:, m:][:, order]
        gain = hp.gain[quality][:, order][:, :, None, None]
        log_gain = torch.log2(gain.abs().clamp(min=1e-9))
        symbols = torch.round(y[:, order] * gain)
        decoded = symbols / gain
        anchors_mask = checkerboard(y.shape[2], y.shape[3], y.device)
        others_mask = 1.0 - anchors_mask
        lo, hi = hp.cfg.log2_sigma_range
        bits_y = torch.zeros(y.shape[0], device=y.device)
        for k, ((a, b), net) in enumerate(zip(self.bounds, self.contexts)):
            L, MU, lg = log_sigma[:, a:b], mean[:, a:b], log_gain[:, a:b]
            features = torch.cat([L, L + lg, MU], dim=1)
            d_l, d_mu = net(features, decoded[:, :a], decoded[:, a:b] * anchors_mask, others_mask,
                            None if record is None else record[k])
            sigma_q = torch.exp2((L + d_l + lg).clamp(lo, hi))
            mean_q = (MU + d_mu) * gain[:, a:b]
            mean_int = mean_q + (torch.round(mean_q) - mean_q).detach()
            p = gaussian_bin_probability(symbols[:, a:b] - mean_int, sigma_q).clamp(min=1e-9)
            bits_y = bits_y - torch.log2(p).sum(dim=(1, 2, 3))
        return {"bits_y": bits_y, "bits_z": bits_z}


def channel_order(latents: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Channels by decreasing spread of their symbols (mean over qualities of log2 std(y * |gain|)), stable."""
    std = np.asarray(latents, np.float64).std(axis=(0, 2, 3))
    spread = np.log2(np.maximum(std[None, :] * np.abs(gain), 1e-6)).mean(axis=0)
    return np.argsort(-spread, kind="stable")


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / "latents.npy").exists():
            precompute(self.out, Path(args.data), args.base, args.crops, args.crop, args.seed)
        self.info = json.loads((self.out / "latents.json").read_text())
        self.latents = np.load(self.out / "latents.npy", mmap_mode="r")
        self.val = torch.from_numpy(np.load(self.out / "val_latents.npy"))
        model = base_model(self.info["base"])
        if model.sha256 != self.info["base_sha256"]:
            raise SystemExit(f"latents were computed with another {self.info['base']}: delete {self.out}/latents.npy")
        ckpt_path = self.out / "checkpoint.pt"
        self.step = 0
        self.rng = np.random.default_rng(args.seed + 1)
        if ckpt_path.exists() or args.init:
            ckpt = torch.load(ckpt_path if ckpt_path.exists() else args.init, map_location="cpu", weights_only=False)
            self.cfg = ContextConfig.from_dict(ckpt["context"])
            self.net = ContextPrior(self.cfg, HyperConfig.from_dict(ckpt["config"]), model.gain, ckpt["order"])
            self.net.load_state_dict(ckpt["model"])
            self.step = ckpt["step"]
        else:  # a new context model on a trained hyperprior
            hyper = torch.load(args.init_hyper, map_location="cpu", weights_only=False)
            self.cfg = ContextConfig(groups=tuple(args.groups), hidden=args.hidden)
            order = channel_order(self.latents[: min(512, len(self.latents))], model.gain)
            self.net = ContextPrior(self.cfg, HyperConfig.from_dict(hyper["config"]), model.gain, order)
            self.net.hyper.load_state_dict(hyper["model"])
            ckpt = None
        self.opt = torch.optim.Adam([
            {"params": self.net.parameters_of("context"), "base_lr": args.lr},
            {"params": self.net.parameters_of("transforms"), "base_lr": args.lr_hyper},
            {"params": self.net.parameters_of("entropy"), "base_lr": args.lr_entropy},
        ], lr=args.lr)
        if ckpt is not None and "opt" in ckpt:
            self.opt.load_state_dict(ckpt["opt"])
            for group, lr in zip(self.opt.param_groups, (args.lr, args.lr_hyper, args.lr_entropy)):
                group["base_lr"] = lr
            self.rng.bit_generator.state = ckpt["rng"]
            torch.set_rng_state(ckpt["torch_rng"])
        if self.step:
            print(f"resumed at step {self.step}", flush=True)
        self.baseline = factorized_bits(model, self.val.numpy())

    def train_step(self) -> dict:
        n = self.args.batch
        idx = np.sort(self.rng.choice(len(self.latents), n, replace=False))
        y = np.ascontiguousarray(self.latents[idx])
        crop = self.args.latent_crop
        if crop and crop < y.shape[2]:  # aligned windows: z sees whole 4 x 4 cells, anchors stay (i + j) even
            top = 4 * int(self.rng.integers((y.shape[2] - crop) // 4 + 1))
            left = 4 * int(self.rng.integers((y.shape[3] - crop) // 4 + 1))
            y = np.ascontiguousarray(y[:, :, top : top + crop, left : left + crop])
        y = torch.from_numpy(y)
        q = torch.from_numpy(self.rng.integers(self.net.hyper.cfg.qualities, size=n))
        out = self.net(y, q)
        pixels = y.shape[2] * y.shape[3] * 16
        bpp = (out["bits_y"] + out["bits_z"]) / pixels
        loss = bpp.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        s = loop.step_scale(self.step, self.args.steps, first_drop=0.7)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * s
        self.opt.step()
        return {"q": q.numpy(), "bpp": bpp.detach().numpy(), "bpp_z": (out["bits_z"] / pixels).detach().numpy()}

    @torch.no_grad()
    def validate(self) -> list[dict]:
        self.net.eval()
        rows = []
        y = self.val
        pixels = y.shape[2] * y.shape[3] * 16
        for q in range(self.net.hyper.cfg.qualities):
            out = self.net(y, torch.full((y.shape[0],), q, dtype=torch.int64), noise=False)
            bpp_z = float(out["bits_z"].mean() / pixels)
            bpp = float(out["bits_y"].mean() / pixels) + bpp_z
            rows.append({"quality": q, "bpp": round(bpp, 4), "bpp_z": round(bpp_z, 4),
                         "factorized_bpp": round(self.baseline[q], 4), "saving": round(1 - bpp / self.baseline[q], 4)})
        self.net.train()
        return rows

    def checkpoint(self) -> dict:
        return {
            "config": self.net.hyper.cfg.to_dict(),
            "context": self.cfg.to_dict(),
            "order": self.net.order.numpy(),
            "model": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "latents": self.info,
            "batch": self.args.batch,
        }

    def summarize(self, records: list[dict]) -> dict:
        return {"train": loop.per_quality(records, {"bpp": 4, "bpp_z": 4})}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tec_zarr.train.context", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="shared Sentinel-2 data folder")
    p.add_argument("--out", required=True, help="run directory (latents, checkpoint.pt, log.jsonl)")
    p.add_argument("--base", default="tec-fp", help="installed model whose frozen transforms and gains are used")
    p.add_argument("--init-hyper", default="checkpoints/tec-hp/checkpoint.pt",
                   help="trained hyperprior to start from when --out has no checkpoint")
    p.add_argument("--init", help="a context checkpoint to start from (e.g. checkpoints/tec-ctx/checkpoint.pt)")
    p.add_argument("--groups", type=int, nargs="+", default=[16, 16, 32, 64, 64])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--crops", type=int, default=3200, help="training crops to precompute latents for")
    p.add_argument("--crop", type=int, default=128, help="crop size (a multiple of 16)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--latent-crop", type=int, default=16,
                   help="train on random aligned windows of this many latent rows/columns (a multiple of 4; 0: whole)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the context networks")
    p.add_argument("--lr-hyper", type=float, default=2e-4, help="learning rate of h_a and h_s")
    p.add_argument("--lr-entropy", type=float, default=1e-3, help="learning rate of z gains and z densities")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--save-every-s", type=float, default=180.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return loop.main(Trainer, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
