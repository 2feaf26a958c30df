"""A light synthesis for tec-fp's latents: the same stored symbols, decoded with a half to a quarter of the multiply-adds.

``python -m tec_zarr.train.light --out runs/tec-fp-lite --steps 30000``

The analysis transform, gains and entropy tables stay tec-fp's (frozen), so a chunk's symbols, its size and every
bit before the synthesis are unchanged; only the pixels the symbols decode to differ. The light synthesis does its
nonlinear work at the latent resolution (a 1x1 projection and 3x3 convolutions at H/4) and writes each 4x4 pixel
block through a sub-pixel 1x1 convolution, beside tec-fp's linear 4x4 block path, which it starts from:

    y_hat (M, H/4, W/4) ─1x1─ReLU─[3x3─ReLU─3x3 + skip]*depth─1x1─▶ (12*16, H/4, W/4) ─depth-to-space 4─▶ + s_lin(y_hat)

About 0.86 GMAC per 12 x 256 x 256 chunk with the defaults (64 channels, depth 2) and 0.40 for the shipped
tec-fp-lite (48 channels, depth 1), where tec-fp's synthesis needs 1.8, and no transposed 5x5 convolution
(onnxruntime's slowest layer here). Training is supervised regression: the frozen encoder's latents of the training
places (8 flips and turns each, computed once), quantized at a random quality, decoded, compared with the image;
the loss is the mean log MSE, so every quality's dB counts alike. Resumable from ``out/checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data, loop
from .layers import GDN, deconv
from .export import load_checkpoint

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_BASE = Path(__file__).resolve().parents[2] / "checkpoints" / "tec-fp" / "checkpoint.pt"


@dataclass(frozen=True)
class LightConfig:
    bands: int = 12
    latent_channels: int = 192
    channels: int = 64
    depth: int = 2  # residual pairs of 3x3 convolutions at the latent resolution
    # Variants tried beside the shipped one (off by default): a 1x1 layer this wide before the pixels (0: none;
    # 256 with depth 1 was 1.1 dB worse at q4 than depth 2 after 1000 steps), and an inverse GDN after the
    # projection instead of ReLU (stopped before it was measured; no better decode speed).
    expand: int = 0
    gdn: bool = False
    multiple: int = 4  # pixels per latent element along each axis
    # "light": the design above; "pruned": tec-fp's own synthesis (transposed 5x5 stride-2 convolutions around an
    # inverse GDN, beside the linear block path) with ``channels`` of its 64 hidden channels, started from the base
    # model's weights of the channels that carry the most (:meth:`PrunedSynthesis.from_base`).
    kind: str = "light"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LightConfig":
        return cls(**d)


class LightSynthesis(nn.Module):
    description = ("a light synthesis: 1x1 projection, residual 3x3 convolutions at the latent resolution, sub-pixel "
                   "1x1 output beside the linear 4x4 block path")

    def __init__(self, cfg: LightConfig):
        super().__init__()
        self.cfg = cfg
        m, c, k = cfg.latent_channels, cfg.channels, cfg.multiple
        # A 1x1 transposed convolution is a 1x1 convolution whose weights are laid out (in, out): the runtime then
        # drops the all-zero latent channels from it as from the linear path (runtime.gathered).
        self.project = nn.ConvTranspose2d(m, c, 1)
        self.first = GDN(c, inverse=True) if cfg.gdn else nn.ReLU()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
            for _ in range(cfg.depth)
        )
        self.expand = nn.Conv2d(c, cfg.expand, 1) if cfg.expand else None
        self.to_pixels = nn.Conv2d(cfg.expand or c, cfg.bands * k * k, 1)
        self.shuffle = nn.PixelShuffle(k)
        self.s_lin = nn.ConvTranspose2d(m, cfg.bands, k, stride=k, bias=False)
        nn.init.zeros_(self.to_pixels.weight)  # start as the linear path alone
        nn.init.zeros_(self.to_pixels.bias)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        h = self.first(self.project(y_hat))
        for block in self.blocks:
            h = torch.relu(h + block(h))
        if self.expand is not None:
            h = torch.relu(self.expand(h))
        return self.shuffle(self.to_pixels(h)) + self.s_lin(y_hat)


class PrunedSynthesis(nn.Module):
    """tec-fp's synthesis with fewer hidden channels: ``deconv(M -> channels)``, inverse GDN, ``deconv(channels ->
    bands)``, plus the linear 4x4 block path. Its multiply-adds scale with ``channels`` (32 of 64: about half)."""

    description = ("a pruned copy of the base's synthesis (fewer hidden channels): transposed 5x5 stride-2 "
                   "convolutions around an inverse GDN, beside the linear 4x4 block path")

    def __init__(self, cfg: LightConfig):
        super().__init__()
        self.cfg = cfg
        self.g_s = nn.Sequential(deconv(cfg.latent_channels, cfg.channels), GDN(cfg.channels, inverse=True),
                                 deconv(cfg.channels, cfg.bands))
        self.s_lin = nn.ConvTranspose2d(cfg.latent_channels, cfg.bands, cfg.multiple, stride=cfg.multiple, bias=False)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.g_s(y_hat) + self.s_lin(y_hat)

    @torch.no_grad()
    def start_from(self, base) -> None:
        """The base model's synthesis weights for the hidden channels whose in and out weights are largest (the
        product of their norms)."""
        first, gdn, last = base.g_s
        weight_in, weight_out = first.weight, last.weight  # (M, C, 5, 5), (C, bands, 5, 5)
        score = weight_in.pow(2).sum(dim=(0, 2, 3)).sqrt() * weight_out.pow(2).sum(dim=(1, 2, 3)).sqrt()
        keep = torch.argsort(score, descending=True)[: self.cfg.channels].sort().values
        mine_first, mine_gdn, mine_last = self.g_s
        mine_first.weight.copy_(weight_in[:, keep])
        mine_first.bias.copy_(first.bias[keep])
        mine_gdn.beta_sqrt.copy_(gdn.beta_sqrt[keep])
        mine_gdn.gamma_sqrt.copy_(gdn.gamma_sqrt[keep][:, keep])
        mine_last.weight.copy_(weight_out[keep])
        mine_last.bias.copy_(last.bias)
        self.s_lin.weight.copy_(base.s_lin.weight)


SYNTHESES = {"light": LightSynthesis, "pruned": PrunedSynthesis}


def build(cfg: LightConfig) -> nn.Module:
    """The synthesis a config describes."""
    if cfg.kind not in SYNTHESES:
        raise ValueError(f"Expected a synthesis kind in {tuple(SYNTHESES)}. Got {cfg.kind!r} instead.")
    return SYNTHESES[cfg.kind](cfg)


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips and quarter turns of (C, H, W): ``k`` in 0..7."""
    out = np.rot90(x, k=k % 4, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if k >= 4 else out)


class LatentBank:
    """Every training image in its 8 flips and turns, normalized, with the frozen encoder's latents of each."""

    def __init__(self, images: list[data.Image], base, mean: np.ndarray, std: np.ndarray, crop: int, seed: int):
        self.crop, self.multiple = crop, base.cfg.multiple
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        with torch.no_grad():
            for im in images:
                h, w = (s - s % self.multiple for s in im.reflectance.shape[1:])
                if min(h, w) < crop:
                    continue
                x = (im.reflectance[:, :h, :w] - mean[:, None, None]) / std[:, None, None]
                for k in range(8):
                    xk = dihedral(x.astype(np.float32), k)
                    y = base.analyse(torch.from_numpy(xk)[None])[0].numpy()
                    self.items.append((xk, y))
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        m, lc = self.multiple, self.crop // self.multiple
        xs, ys = [], []
        for _ in range(size):
            x, y = self.items[int(self.rng.integers(len(self.items)))]
            i = int(self.rng.integers(y.shape[1] - lc + 1))
            j = int(self.rng.integers(y.shape[2] - lc + 1))
            ys.append(y[:, i : i + lc, j : j + lc])
            xs.append(x[:, i * m : i * m + self.crop, j * m : j * m + self.crop])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def quantized(y: torch.Tensor, gain: torch.Tensor, inv_gain: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """What the decoder gets: symbols round(y * gain[q]) times inv_gain[q]."""
    return torch.round(y * gain[quality][:, :, None, None]) * inv_gain[quality][:, :, None, None]


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        base, base_ckpt = load_checkpoint(Path(args.base))
        for p in base.parameters():
            p.requires_grad_(False)
        self.gain, self.inv_gain = base.gain.detach(), base.inv_gain.detach()
        self.mean = np.asarray(base_ckpt["mean"], np.float32)
        self.std = np.asarray(base_ckpt["std"], np.float32)
        images = data.load_images(Path(args.data))
        train, val = data.split(images)
        train = [im for im in train if im.name in base_ckpt["train_images"]]  # never an image the encoder did not see
        self.train_names = [im.name for im in train]
        self.bank = LatentBank(train, base, self.mean, self.std, args.crop, args.seed)
        val_x = data.validation_crops(val)
        with torch.no_grad():
            self.val_x = torch.from_numpy(val_x)
            self.val_y = base.analyse((self.val_x - torch.from_numpy(self.mean)[:, None, None])
                                      / torch.from_numpy(self.std)[:, None, None])
        ckpt_path = self.out / "checkpoint.pt"
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
        self.cfg = LightConfig.from_dict(ckpt["config"]) if ckpt else LightConfig(
            channels=args.channels, depth=args.depth, expand=args.expand, gdn=args.gdn, kind=args.kind)
        self.model = build(self.cfg)
        if ckpt:
            self.model.load_state_dict(ckpt["model"])
        elif isinstance(self.model, PrunedSynthesis):
            self.model.start_from(base)
        else:
            self.model.s_lin.weight.data.copy_(base.s_lin.weight.detach())
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.step = 0
        if ckpt:
            self.step = int(ckpt["step"])
            if "opt" in ckpt:  # a slim (committed) checkpoint has none: a new optimizer and sampler start
                self.opt.load_state_dict(ckpt["opt"])
                self.bank.rng.bit_generator.state = ckpt["sampler"]
                torch.set_rng_state(ckpt["torch_rng"])
        self.base_path = str(args.base)
        # The qualities the synthesis learns: one that will decode only some of them (its model keeps the base's
        # synthesis for the others, light_export --base-synthesis-at) spends its capacity on those. Default: the
        # checkpoint's, else all; every run's steps and qualities are kept (quality_segments) for the manifest.
        asked = args.qualities if args.qualities is not None else (ckpt or {}).get("trained_qualities")
        qualities = range(len(self.gain)) if asked is None else sorted(set(asked))
        if not qualities or not set(qualities) <= set(range(len(self.gain))):
            raise SystemExit(f"Expected --qualities among the base's 0..{len(self.gain) - 1}. Got {args.qualities} "
                             "instead.")
        self.trained_qualities = torch.tensor(list(qualities))
        self.earlier_segments = list((ckpt or {}).get("quality_segments", []))
        self.start_step = self.step

    def quality_segments(self) -> list[dict]:
        """``{"steps": [first, last], "qualities": [...]}`` per stretch of training on the same qualities."""
        segments = [dict(s) for s in self.earlier_segments]
        qualities = self.trained_qualities.tolist()
        if segments and segments[-1]["qualities"] == qualities and segments[-1]["steps"][1] == self.start_step:
            segments[-1]["steps"] = [segments[-1]["steps"][0], self.step]
        elif self.step > self.start_step:
            segments.append({"steps": [self.start_step, self.step], "qualities": qualities})
        return segments

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.from_numpy(self.std)[:, None, None] + torch.from_numpy(self.mean)[:, None, None]

    def train_step(self) -> dict:
        scale = loop.step_scale(self.step, self.args.steps, 0.6)
        for group in self.opt.param_groups:
            group["lr"] = self.args.lr * scale
        x, y = self.bank.batch(self.args.batch)
        q = self.trained_qualities[torch.randint(len(self.trained_qualities), (x.shape[0],))]
        x_hat = self.model(quantized(y, self.gain, self.inv_gain, q))
        # MSE in reflectance units (std scales each band back), so the loss measures what PSNR measures
        err = (x_hat - x) * torch.from_numpy(self.std)[:, None, None]
        mse = (err**2).mean(dim=(1, 2, 3)).clamp(min=1e-12)
        loss = torch.log(mse).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"q": q.numpy(), "psnr": (-10 * torch.log10(mse)).detach().numpy()}

    def summarize(self, records: list[dict]) -> dict:
        return {"train": loop.per_quality(records, {"psnr": 3})}

    @torch.no_grad()
    def validate(self) -> list[dict]:
        self.model.eval()
        out = []
        for q in range(len(self.gain)):
            qs = torch.full((self.val_y.shape[0],), q)
            x_hat = self.denormalize(self.model(quantized(self.val_y, self.gain, self.inv_gain, qs)))
            mse = ((x_hat.clamp(0, 1) - self.val_x.clamp(0, 1)) ** 2).mean(dim=(1, 2, 3))
            out.append({"quality": q, "psnr": round(float((-10 * torch.log10(mse)).mean()), 3)})
        self.model.train()
        return out

    def checkpoint(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "step": self.step,
            "sampler": self.bank.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "base": self.base_path,
            "base_inv_gain": self.inv_gain.numpy().tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "train_images": self.train_names,
            "validation_places": list(data.VALIDATION_PLACES),
            "crop": self.args.crop,
            "batch": self.args.batch,
            "trained_qualities": self.trained_qualities.tolist(),
            "quality_segments": self.quality_segments(),
        }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--base", default=str(DEFAULT_BASE), help="the tec-fp checkpoint whose encoder stays frozen")
    p.add_argument("--steps", type=int, default=30000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--expand", type=int, default=0)
    p.add_argument("--gdn", action="store_true")
    p.add_argument("--kind", choices=tuple(SYNTHESES), default="light",
                   help="light: the design in this module's docstring; pruned: tec-fp's synthesis with --channels of its "
                        "64 hidden channels, started from tec-fp's weights")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--save-every-s", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qualities", type=int, nargs="+", default=None, metavar="Q",
                   help="the qualities trained on (default: the checkpoint's, else all); validation reports all")
    return p.parse_args(argv)


def main(argv=None) -> int:
    return loop.main(Trainer, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
