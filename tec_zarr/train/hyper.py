"""Train a hyperprior entropy model on a shipped model's frozen transforms: ``python -m tec_zarr.train.hyper --out runs/hp``.

The base model's analysis/synthesis stay exactly as shipped (its ONNX graphs, its gains), so the symbols
``y_q = round(y * gain[q])`` and every decoded pixel are the base model's. Only how the symbols are entropy-coded
changes, so training minimizes rate alone, on latents computed once:

1. ``precompute``: random crops of the training places (flips, 90-degree rotations; the validation places are never
   used), normalized and encoded by the base model's ``encoder.onnx`` (the runtime's own path), stored as a float32
   memmap ``latents.f32`` in the run directory, plus the validation crops' latents ``val_latents.npy``.
2. training: hyper-analysis ``h_a`` (y -> z, 1/4 of the latent resolution), per-quality z gains and factorized z
   densities, hyper-synthesis ``h_s`` (z -> per-element log2 sigma and mean of y), rate = -log2 of the discretized
   Gaussian of ``y_q - round(mean_q)`` with ``sigma_q = sigma * |gain[q]|``, the coded path of
   :mod:`tec_zarr.entropy.hyperprior`.

Resumable: ``checkpoint.pt`` in the run directory holds the networks, optimizer, step and sampler state; running the
same command again continues. Export with ``python -m tec_zarr.train.hyper_export``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data, loop
from .layers import FactorizedDensity

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

@dataclass(frozen=True)
class HyperConfig:
    latent_channels: int = 192  # M, the base model's
    z_channels: int = 64
    hidden: int = 64  # h_a width and h_s first layer
    synthesis_hidden: int = 96  # h_s second layer
    qualities: int = 5
    # Scale tables: sigma_i = sigma_min * 2**(i / steps_per_octave), i < tables (sigma of y_q, in symbol units).
    sigma_min: float = 0.11
    steps_per_octave: int = 8
    tables: int = 104

    @property
    def log2_sigma_range(self) -> tuple[float, float]:
        lo = math.log2(self.sigma_min)
        return lo, lo + (self.tables - 1) / self.steps_per_octave

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HyperConfig":
        return cls(**d)


def hyper_analysis(cfg: HyperConfig) -> nn.Sequential:
    m, n, z = cfg.latent_channels, cfg.hidden, cfg.z_channels
    return nn.Sequential(
        nn.Conv2d(m, n, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(n, n, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(n, z, 5, stride=2, padding=2),
    )


def hyper_synthesis(cfg: HyperConfig) -> nn.Sequential:
    m, n, z, h = cfg.latent_channels, cfg.hidden, cfg.z_channels, cfg.synthesis_hidden
    return nn.Sequential(
        nn.ConvTranspose2d(z, n, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(n, h, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
        nn.Conv2d(h, 2 * m, 3, stride=1, padding=1),  # channels 0..M-1: log2 sigma of y; M..2M-1: mean of y
    )


def gaussian_bin_probability(r: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """P(integer r) under a zero-mean Gaussian of ``sigma`` discretized to unit bins, from the far tail (accurate)."""
    v = r.abs()
    c = 1.0 / (sigma * math.sqrt(2.0))
    return 0.5 * (torch.erfc((v - 0.5) * c) - torch.erfc((v + 0.5) * c))


class HyperPrior(nn.Module):
    """Rate model of a frozen base model's symbols: z = h_a(y), (log2 sigma, mean) = h_s(z_hat)."""

    def __init__(self, cfg: HyperConfig, gain: np.ndarray):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("gain", torch.as_tensor(np.asarray(gain, np.float32)))
        self.h_a = hyper_analysis(cfg)
        self.h_s = hyper_synthesis(cfg)
        self.z_log_gain = nn.Parameter(torch.zeros(cfg.qualities, cfg.z_channels))  # z gain = 2**z_log_gain
        self.densities = nn.ModuleList(FactorizedDensity(cfg.z_channels) for _ in range(cfg.qualities))
        with torch.no_grad():
            last = self.h_s[-1]
            last.weight.mul_(0.1)
            last.bias.zero_()

    def z_gain(self, quality: torch.Tensor) -> torch.Tensor:
        return torch.exp2(self.z_log_gain[quality])[:, :, None, None]

    def parameters_of(self, part: str):
        if part == "entropy":
            return [self.z_log_gain, *self.densities.parameters()]
        return list(self.h_a.parameters()) + list(self.h_s.parameters())

    def scales_and_means(self, z_hat: torch.Tensor, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log2 sigma of y_q (clamped to the tables' range) and the float mean of y_q, from the dequantized z."""
        out = self.h_s(z_hat)
        m = self.cfg.latent_channels
        g = self.gain[quality][:, :, None, None]
        lo, hi = self.cfg.log2_sigma_range
        log_sigma = (out[:, :m] + torch.log2(g.abs().clamp(min=1e-9))).clamp(lo, hi)
        return log_sigma, out[:, m:] * g

    def side_information(self, y: torch.Tensor, quality: torch.Tensor, noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Bits per sample of z (noisy z in training, rounded when ``noise`` is off) and the dequantized rounded z."""
        z = self.h_a(y) * self.z_gain(quality)
        bits_z = torch.zeros(y.shape[0], device=y.device)
        zq = z + torch.empty_like(z).uniform_(-0.5, 0.5) if noise else torch.round(z)
        for q in torch.unique(quality).tolist():
            sel = quality == q
            bits_z[sel] = -torch.log2(self.densities[q].likelihood(zq[sel])).sum(dim=(1, 2, 3))
        rounded = z + (torch.round(z) - z).detach()
        return bits_z, rounded / self.z_gain(quality)

    def forward(self, y: torch.Tensor, quality: torch.Tensor, *, noise: bool = True) -> dict:
        """``y``: base latents (N, M, h, w), h and w multiples of 4; ``quality`` (N,). Bits per sample of y_q and z."""
        bits_z, z_hat = self.side_information(y, quality, noise)
        log_sigma, mean = self.scales_and_means(z_hat, quality)
        symbols = torch.round(y * self.gain[quality][:, :, None, None])
        mean_int = mean + (torch.round(mean) - mean).detach()
        p = gaussian_bin_probability(symbols - mean_int, torch.exp2(log_sigma)).clamp(min=1e-9)
        bits_y = -torch.log2(p).sum(dim=(1, 2, 3))
        return {"bits_y": bits_y, "bits_z": bits_z, "log_sigma": log_sigma, "mean": mean}


# ---------------------------------------------------------------------------------------------------------------
# Latent precompute (the base model's own runtime path)


def base_model(name: str):
    from ..models import load_model

    return load_model(name)


def encode_latents(model, reflectance: np.ndarray) -> np.ndarray:
    """(B, 12, H, W) float reflectance -> the base encoder's y, through the runtime's normalization and graph."""
    from ..pipeline.prepare import normalize

    dn = np.clip(np.rint(reflectance * 1e4), 0, 65535).astype(np.uint16)
    normalized, pad = normalize(dn, model, None, 1.0)
    assert pad == (0, 0), "crops must be multiples of the base model's padding"
    return model.encoder.run(normalized)


def precompute(out: Path, data_root: Path, base: str, crops: int, crop: int, seed: int, batch: int = 8) -> None:
    """Write ``latents.f32`` (crops, M, crop/4, crop/4) and ``val_latents.npy`` (validation crops) into ``out``."""
    model = base_model(base)
    images = data.load_images(Path(data_root))
    train, val = data.split(images)
    assert not any(im.place in data.VALIDATION_PLACES for im in train)
    stride = 4
    shape = (crops, model.latent_channels, crop // stride, crop // stride)
    tmp = out / "latents.f32.tmp"
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    sampler = data.CropSampler(train, crop, seed=seed)
    t0 = time.time()
    for start in range(0, crops, batch):
        loop.wait_while_paused()
        n = min(batch, crops - start)
        mm[start : start + n] = encode_latents(model, sampler.batch(n))
        if start % (batch * 50) == 0:
            print(f"precompute {start}/{crops} {time.time() - t0:.0f}s", flush=True)
    mm.flush()
    del mm
    os.replace(tmp, out / "latents.npy")
    val_y = encode_latents(model, data.validation_crops(val))
    np.save(out / "val_latents.npy", val_y)
    (out / "latents.json").write_text(json.dumps({
        "base": base, "base_sha256": model.sha256, "crops": crops, "crop": crop, "seed": seed,
        "train_images": [im.name for im in train], "validation_places": list(data.VALIDATION_PLACES),
        "validation_images": [im.name for im in val],
    }, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Training


def load_weights(net: nn.Module, state: dict) -> None:
    """Load a checkpoint's weights into ``net``, keeping ``net``'s latent gains: they are the base model's, never
    trained, and a checkpoint made on another base (``--init checkpoints/tec-ctx`` on ``--base tec-fp-2``) carries
    that base's, which would code other symbols than the base writes."""
    own_gains = {k: v for k, v in net.state_dict().items() if k.rsplit(".", 1)[-1] == "gain"}
    net.load_state_dict({**state, **own_gains})


def factorized_bits(model, y: np.ndarray) -> list[float]:
    """Ideal bits per pixel of the base model's own tables on latents ``y`` per quality (no headers)."""
    out = []
    t = model.coder.tables  # the base model's factorized tables
    for q in range(t.qualities):
        sym = np.rint(y * model.gain[q][None, :, None, None]).astype(np.int64)
        idx = sym - t.offsets[q][None, :, None, None]
        esc = (t.lengths[q] - 1)[None, :, None, None]
        idx = np.where((idx < 0) | (idx >= esc), esc, idx)
        pm = t.pmf[q].astype(np.float64)  # (M, L)
        p = pm[np.arange(pm.shape[0])[None, :, None, None], idx] / 65536.0
        out.append(float(-np.log2(p).sum() / (y.shape[0] * y.shape[2] * y.shape[3] * 16)))
    return out


class Trainer:
    """Rate-only training on precomputed latents; subclasses change the network (``build``, ``rates``,
    ``checkpoint_extra``), everything else (latents, sampling, resuming, validation) is shared."""

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
        source = ckpt_path if ckpt_path.exists() else (Path(args.init) if args.init else None)
        ckpt = torch.load(source, map_location="cpu", weights_only=False) if source else None
        self.rng = np.random.default_rng(args.seed + 1)
        self.step = 0
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(auto if args.device == "auto" else args.device)
        self.net = self.build(ckpt, model)
        rates = self.rates()
        self.opt = self.optimizer(rates)
        self.started_from = (ckpt or {}).get("started_from") or self.origin()
        if ckpt is not None:
            load_weights(self.net, ckpt["model"])
            if "opt" in ckpt:  # a slim (committed) checkpoint has none: a new optimizer starts
                self.opt.load_state_dict(ckpt["opt"])
                for group, (_, lr) in zip(self.opt.param_groups, rates):
                    group["base_lr"] = lr  # the command line's rates, not the checkpoint's
                self.rng.bit_generator.state = ckpt["rng"]
                torch.set_rng_state(ckpt["torch_rng"])
            self.step = ckpt["step"]
            print(f"resumed at step {self.step}", flush=True)
        self.net.to(self.device)
        if ckpt is not None and "opt" in ckpt:  # Adam's moments follow their parameters' device
            loop.optimizer_to(self.opt, self.device)
        self.baseline = factorized_bits(model, self.val.numpy())

    @property
    def qualities(self) -> int:
        return self.net.cfg.qualities

    def origin(self) -> str | None:
        """Where a new run's weights come from (a run keeps its first checkpoint's word), for exported manifests."""
        return f"{self.args.init} (continued on {self.info['base']}'s latents)" if self.args.init else None

    def build(self, ckpt: dict | None, model) -> nn.Module:
        cfg = HyperConfig.from_dict(ckpt["config"]) if ckpt else HyperConfig(
            latent_channels=model.latent_channels, qualities=model.qualities)
        net = HyperPrior(cfg, model.gain)
        if ckpt is None:  # start sigma at each channel's spread: the first steps then refine, not rescue
            sample = np.asarray(self.latents[: min(256, len(self.latents))], np.float64)
            std = sample.std(axis=(0, 2, 3)).clip(min=1e-3)
            with torch.no_grad():
                net.h_s[-1].bias[: cfg.latent_channels] = torch.from_numpy(np.log2(std)).float()
        return net

    def rates(self) -> list[tuple[list, float]]:
        """(parameters, learning rate) per optimizer group, in a fixed order."""
        return [(self.net.parameters_of("transforms"), self.args.lr),
                (self.net.parameters_of("entropy"), self.args.lr_entropy)]

    def checkpoint_extra(self) -> dict:
        return {"config": self.net.cfg.to_dict()}

    def train_step(self) -> dict:
        n = self.args.batch
        idx = np.sort(self.rng.choice(len(self.latents), n, replace=False))
        y = np.ascontiguousarray(self.latents[idx])
        crop = self.args.latent_crop
        if crop and crop < y.shape[2]:  # one aligned window per batch: z sees whole 4 x 4 cells
            top = 4 * int(self.rng.integers((y.shape[2] - crop) // 4 + 1))
            left = 4 * int(self.rng.integers((y.shape[3] - crop) // 4 + 1))
            y = np.ascontiguousarray(y[:, :, top : top + crop, left : left + crop])
        y = torch.from_numpy(y).to(self.device)
        q = torch.from_numpy(self.rng.integers(self.qualities, size=n)).to(self.device)
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
        return {"q": q.cpu().numpy(), "bpp": bpp.detach().cpu().numpy(),
                "bpp_z": (out["bits_z"] / pixels).detach().cpu().numpy()}

    @torch.no_grad()
    def validate(self) -> list[dict]:
        self.net.eval()
        rows = []
        y = self.val.to(self.device)
        pixels = y.shape[2] * y.shape[3] * 16
        for q in range(self.qualities):
            out = self.net(y, torch.full((y.shape[0],), q, dtype=torch.int64, device=self.device), noise=False)
            bpp_y = float(out["bits_y"].mean() / pixels)
            bpp_z = float(out["bits_z"].mean() / pixels)
            rows.append({"quality": q, "bpp": round(bpp_y + bpp_z, 4), "bpp_z": round(bpp_z, 4),
                         "factorized_bpp": round(self.baseline[q], 4),
                         "saving": round(1 - (bpp_y + bpp_z) / self.baseline[q], 4)})
        self.net.train()
        return rows

    @staticmethod
    def optimizer(rates: list[tuple[list, float]]) -> torch.optim.Adam:
        """Adam over :meth:`rates`' parameter groups, each keeping its ``base_lr`` for the schedule."""
        return torch.optim.Adam([{"params": p, "base_lr": lr} for p, lr in rates], lr=rates[0][1])

    @staticmethod
    def validation_score(rows: list[dict]) -> float:
        """Bits summed over the qualities, what the loss (mean bits over random qualities) weighs: the best
        validated checkpoint is kept by it (``best.pt``)."""
        return sum(r["bpp"] for r in rows)

    def checkpoint(self) -> dict:
        return {
            **self.checkpoint_extra(),
            "model": {k: v.cpu() for k, v in self.net.state_dict().items()},
            "opt": self.opt.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "latents": self.info,
            "batch": self.args.batch,
        }

    def summarize(self, records: list[dict]) -> dict:
        return {"train": loop.per_quality(records, {"bpp": 4, "bpp_z": 4})}


def parser(prog: str, doc: str, *, init_help: str, steps: int, latent_crop: int, lr: float, lr_help: str,
           lr_entropy: float) -> argparse.ArgumentParser:
    """The arguments every rate-only trainer on precomputed latents takes; callers add their own."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="shared Sentinel-2 data folder")
    p.add_argument("--out", required=True, help="run directory (latents, checkpoint.pt, log.jsonl)")
    p.add_argument("--base", default="tec-fp", help="installed model whose frozen transforms and gains are used")
    p.add_argument("--init", help=init_help)
    p.add_argument("--crops", type=int, default=3200, help="training crops to precompute latents for")
    p.add_argument("--crop", type=int, default=128, help="crop size (a multiple of 16)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--latent-crop", type=int, default=latent_crop,
                   help="train on random aligned windows of this many latent rows/columns (a multiple of 4; 0: whole)")
    p.add_argument("--lr", type=float, default=lr, help=lr_help)
    p.add_argument("--lr-entropy", type=float, default=lr_entropy, help="learning rate of z gains and z densities")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--save-every-s", type=float, default=180.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cpu or cuda")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parser("python -m tec_zarr.train.hyper", __doc__,
                  init_help="start from this checkpoint (e.g. checkpoints/tec-hp/checkpoint.pt) when --out has none",
                  steps=8000, latent_crop=0, lr=5e-4, lr_help="learning rate of h_a and h_s",
                  lr_entropy=3e-3).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return loop.main(Trainer, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
