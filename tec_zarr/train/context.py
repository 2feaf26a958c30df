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
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import hyper, loop
from .hyper import HyperConfig, HyperPrior, gaussian_bin_probability


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
                record: list[dict] | None = None, relaxed: bool = False) -> dict:
        """Bits per sample of y_q and z; ``record`` (export): one dict of layer peaks per group. ``relaxed``
        (training the encoder through this rate, :mod:`.joint`): the symbols are rounded straight through, so the
        rate's gradient reaches ``y`` while the likelihood stays that of the integers coded. (Uniform noise in
        their place, the usual relaxation, trained the networks on values the coder never sees: near zero, where
        most symbols sit at scales below one, it drove the scales up, and the coded rate of a joint run rose 30 %
        within 6,000 steps while its noisy rate fell.)"""
        hp = self.hyper
        bits_z, z_hat = hp.side_information(y, quality, noise)
        out = hp.h_s(z_hat)
        m = hp.cfg.latent_channels
        order = self.order
        log_sigma, mean = out[:, :m][:, order], out[:, m:][:, order]
        gain = hp.gain[quality][:, order][:, :, None, None]
        log_gain = torch.log2(gain.abs().clamp(min=1e-9))
        scaled = y[:, order] * gain
        symbols = torch.round(scaled)
        if relaxed:
            symbols = scaled + (symbols - scaled).detach()
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


class Trainer(hyper.Trainer):
    """The hyperprior's rate-only training loop with the context model as its network."""

    def __init__(self, args: argparse.Namespace):
        starting = not (Path(args.out) / "checkpoint.pt").exists()
        super().__init__(args)
        groups = sorted(set(args.reinit_groups or ()))
        if not groups:
            return
        if any(not 0 <= k < len(self.net.contexts) for k in groups):
            raise SystemExit(f"Expected --reinit-groups among 0..{len(self.net.contexts) - 1}. Got {groups} instead.")
        if not starting:
            print(f"--reinit-groups {groups}: ignored, {args.out} resumes a run (it applies where a run starts)")
            return
        # A group whose ReLUs all died (no gradient reaches it) trains again only from new weights.
        for k in groups:
            a, b = self.net.bounds[k]
            self.net.contexts[k] = GroupContext(b - a, a, self.net.cfg.hidden).to(self.device)
        self.opt = self.optimizer(self.rates())
        self.started_from = f"{self.started_from}; channel groups {groups} re-initialized"

    @property
    def qualities(self) -> int:
        return self.net.hyper.cfg.qualities

    def build(self, ckpt: dict | None, model) -> ContextPrior:
        if ckpt is not None:
            return ContextPrior(ContextConfig.from_dict(ckpt["context"]), HyperConfig.from_dict(ckpt["config"]),
                                model.gain, ckpt["order"])
        trained = torch.load(self.args.init_hyper, map_location="cpu", weights_only=False)  # a new context model
        cfg = ContextConfig(groups=tuple(self.args.groups), hidden=self.args.hidden)
        order = channel_order(self.latents[: min(512, len(self.latents))], model.gain)
        net = ContextPrior(cfg, HyperConfig.from_dict(trained["config"]), model.gain, order)
        hyper.load_weights(net.hyper, trained["model"])
        return net

    def rates(self) -> list[tuple[list, float]]:
        return [(self.net.parameters_of("context"), self.args.lr),
                (self.net.parameters_of("transforms"), self.args.lr_hyper),
                (self.net.parameters_of("entropy"), self.args.lr_entropy)]

    def checkpoint_extra(self) -> dict:
        return {"config": self.net.hyper.cfg.to_dict(), "context": self.net.cfg.to_dict(),
                "order": self.net.order.numpy(), "started_from": self.started_from}

    def origin(self) -> str:
        return super().origin() or f"{self.args.init_hyper} (hyperprior, then trained jointly with the context networks)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = hyper.parser("python -m tec_zarr.train.context", __doc__,
                     init_help="a context checkpoint to start from (e.g. checkpoints/tec-ctx/checkpoint.pt)",
                     steps=9000, latent_crop=16, lr=1e-3, lr_help="learning rate of the context networks",
                     lr_entropy=1e-3)
    p.add_argument("--init-hyper", default="checkpoints/tec-hp/checkpoint.pt",
                   help="trained hyperprior to start from when --out has no checkpoint and no --init")
    p.add_argument("--groups", type=int, nargs="+", default=[16, 16, 32, 64, 64])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr-hyper", type=float, default=2e-4, help="learning rate of h_a and h_s")
    p.add_argument("--reinit-groups", type=int, nargs="+", metavar="K",
                   help="channel groups whose networks start from new weights when the run starts (e.g. a group "
                        "whose hidden layer went silent in the --init weights)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return loop.main(Trainer, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
