"""Train TEC-FP on the shared Sentinel-2 data: ``python -m tec_zarr.train --out runs/tec-fp --steps 40000``.

Resumable: a run directory holds ``checkpoint.pt`` (model, optimizers, step, sampler state); running the same
command again continues from it. ``--init`` starts a new run directory from a committed checkpoint.
Logs one JSON line per ``--log-every`` steps (rate and distortion per quality) and per validation to ``log.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from . import data, loop
from .model import ModelConfig, TECFactorized

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def psnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Project metric per image: 10*log10(1 / MSE) on reflectance clipped to [0, 1] (same as 10000^2 on DN)."""
    mse = ((x.clamp(0, 1) - x_hat.clamp(0, 1)) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


def with_synthesis(ckpt: dict, path: Path) -> dict:
    """``ckpt`` (a TEC-FP checkpoint) with its synthesis replaced by a pruned light synthesis' (``train.light
    --kind pruned``, fitted against the same encoder): the start of an asymmetric model, whose encoder then learns
    to serve the narrower synthesis. The new checkpoint has no optimizer state."""
    light = torch.load(path, map_location="cpu", weights_only=False)
    cfg = light.get("config", {})
    base = ModelConfig.from_dict(ckpt["config"])
    if (cfg.get("kind") != "pruned" or cfg.get("latent_channels") != base.latent_channels
            or cfg.get("bands") != base.bands or base.stages != 2 or cfg.get("multiple") != base.multiple):
        raise SystemExit(f"Expected a pruned light synthesis (two stages, {base.latent_channels} latent channels, "
                         f"{base.bands} bands) for --synthesis-from. Got {path} ({cfg}) instead.")
    fitted_on = light.get("base_inv_gain")  # the encoder's gains the light synthesis was fitted against
    if fitted_on is not None and not torch.equal(torch.as_tensor(fitted_on), ckpt["model"]["inv_gain"]):
        raise SystemExit(f"Expected a pruned light synthesis fitted on the --init weights' latent gains. Got {path}, "
                         "fitted on another encoder's, instead.")
    mine = {k: v for k, v in light["model"].items() if k.startswith(("g_s.", "s_lin."))}
    model = {k: v for k, v in ckpt["model"].items() if not k.startswith(("g_s.", "s_lin."))}
    config = dict(ckpt["config"], synthesis_channels=int(cfg["channels"]))
    slim = {k: v for k, v in ckpt.items() if k not in loop.RUN_STATE_KEYS}
    return {**slim, "config": config, "model": {**model, **mine}}


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        train_images, val_images = self.load_data()
        self.val = torch.from_numpy(data.validation_crops(val_images))
        ckpt_path = self.out / "checkpoint.pt"
        source = ckpt_path if ckpt_path.exists() else (Path(args.init) if args.init else None)
        ckpt = torch.load(source, map_location="cpu", weights_only=False) if source else None
        synthesis_from = getattr(args, "synthesis_from", None)  # trainers with parsers of their own lack it
        if synthesis_from and (source is None or args.resume_optimizer):
            raise SystemExit("Expected --init, without --resume-optimizer, with --synthesis-from (the weights whose "
                             "synthesis it replaces; their optimizer state belongs to the synthesis replaced). Got "
                             f"{'--resume-optimizer' if source is not None else 'no --init'} instead.")
        if synthesis_from and source != ckpt_path:  # a new run (refused above without --init)
            ckpt = with_synthesis(ckpt, Path(synthesis_from))
        if ckpt is not None:
            self.cfg = ModelConfig.from_dict(ckpt["config"])
            self.mean, self.std = np.asarray(ckpt["mean"], np.float32), np.asarray(ckpt["std"], np.float32)
            self.train_names = ckpt["train_images"]
        else:
            self.cfg = ModelConfig(channels=args.channels, latent_channels=args.latent_channels, stages=args.stages,
                                   linear_path=not args.no_linear_path)
            self.mean, self.std = data.band_statistics(train_images)
            self.train_names = [im.name for im in train_images]
        self.sampler = self.make_sampler(train_images)
        self.model = TECFactorized(self.cfg).to(self.device)
        # The linear path starts as a KLT (orthonormal, entries ~0.07): Adam at the transforms' rate would wreck it in
        # a few dozen steps, so it fine-tunes at its own, smaller rate.
        self.opt_transform = torch.optim.Adam([
            {"params": self.model.transform_parameters(), "base_lr": args.lr},
            {"params": self.model.linear_parameters(), "base_lr": args.lr_linear},
        ], lr=args.lr)
        self.opt_entropy = torch.optim.Adam(self.model.entropy_parameters(), lr=args.lr_entropy)
        self.step = 0
        if ckpt is None and self.cfg.linear_path:
            basis = data.block_klt(train_images, self.mean, self.std, self.cfg.multiple, self.cfg.latent_channels)
            self.model.init_linear_path(torch.from_numpy(basis))
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            if args.resume_optimizer and "opt_transform" not in ckpt:
                raise SystemExit(f"Expected a checkpoint with optimizer state for --resume-optimizer. Got {source}, a slim "
                                 "(committed) one, instead: continue it without that option (a new optimizer starts "
                                 "from its weights).")
            if (source == ckpt_path or args.resume_optimizer) and "opt_transform" in ckpt:
                self.opt_transform.load_state_dict(ckpt["opt_transform"])
                self.opt_entropy.load_state_dict(ckpt["opt_entropy"])
                self.sampler.restore(ckpt["sampler"])
                if "torch_rng" in ckpt:
                    torch.set_rng_state(ckpt["torch_rng"])
            self.step = ckpt["step"]
            print(f"resumed from {source} at step {self.step}", flush=True)
        self._mean_t = torch.from_numpy(self.mean)[None, :, None, None].to(self.device)
        self._std_t = torch.from_numpy(self.std)[None, :, None, None].to(self.device)
        self.lambdas = torch.tensor(self.cfg.lambdas, device=self.device)

    def load_data(self) -> tuple[list[data.Image], list[data.Image]]:
        """(training images, validation images); a subclass may choose others."""
        return data.split(data.load_images(Path(self.args.data)))

    def make_sampler(self, train_images: list[data.Image]):
        """Anything with ``batch(n)`` (an array or tensor), ``state()`` and ``restore(state)``."""
        return data.CropSampler(train_images, self.args.crop, seed=self.args.seed)

    def next_batch(self) -> torch.Tensor:
        return torch.as_tensor(self.sampler.batch(self.args.batch)).to(self.device)

    def next_batch_coded(self):
        """A batch and its crops to train as the codec codes replicated bands (``robust.Coding``; None here)."""
        return self.next_batch(), None

    def lr_scale(self) -> float:
        return loop.step_scale(self.step, self.args.steps, first_drop=0.75)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean_t) / self._std_t

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._std_t + self._mean_t

    def train_step(self) -> dict:
        x, coding = self.next_batch_coded()
        q = torch.randint(len(self.cfg.lambdas), (x.shape[0],), device=self.device)
        out = self.model(self.normalize(x if coding is None else coding.encoder_input(x)), q)
        x_hat = self.denormalize(out["x_hat"])
        if coding is not None:  # the distortion a reader sees: the decoder projects those bands onto their blocks
            x_hat = coding.decoded(x_hat)
        mse = ((x_hat - x) ** 2).mean(dim=(1, 2, 3))
        bpp = out["bits"] / (x.shape[2] * x.shape[3])
        loss = (self.lambdas[q] * mse + bpp).mean()
        self.opt_transform.zero_grad(set_to_none=True)
        self.opt_entropy.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        scale = self.lr_scale()
        for group in self.opt_transform.param_groups:
            group["lr"] = group["base_lr"] * scale
        for group in self.opt_entropy.param_groups:
            group["lr"] = self.args.lr_entropy * scale
        self.opt_transform.step()
        self.opt_entropy.step()
        with torch.no_grad():
            psnr = psnr_db(x, x_hat)
        # Tensors, not numbers: reading them back here would make a GPU wait for every step; summarize does it.
        return {"loss": loss.detach(), "q": q, "bpp": bpp.detach(), "psnr": psnr}

    def validate(self) -> list[dict]:
        return self.evaluate(self.val)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, coding=None) -> list[dict]:
        """Per quality, mean bpp and PSNR over the images ``x`` (N, 12, H, W reflectance): rate from the discrete
        likelihood of the rounded latents, distortion from the real reconstruction (with ``coding``, a
        ``robust.Coding``: its crops coded and decoded as the codec does replicated bands)."""
        self.model.eval()
        rows = []
        x = x.to(self.device)
        y = self.model.analyse(self.normalize(x if coding is None else coding.encoder_input(x)))
        for q in range(len(self.cfg.lambdas)):
            sym = torch.round(y * self.model.gain[q][None, :, None, None])
            bits = -torch.log2(self.model.densities[q].likelihood(sym)).sum(dim=(1, 2, 3))
            x_hat = self.denormalize(self.model.synthesise(sym * self.model.inv_gain[q][None, :, None, None]))
            if coding is not None:
                x_hat = coding.decoded(x_hat)
            rows.append({
                "quality": q,
                "bpp": float((bits / (x.shape[2] * x.shape[3])).mean()),
                "psnr": float(psnr_db(x, x_hat).mean()),
            })
        self.model.train()
        return rows

    def checkpoint(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "opt_transform": self.opt_transform.state_dict(),
            "opt_entropy": self.opt_entropy.state_dict(),
            "sampler": self.sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "train_images": self.train_names,
            "validation_places": list(data.VALIDATION_PLACES),
            "crop": self.args.crop,
            "batch": self.args.batch,
        }

    def summarize(self, records: list[dict]) -> dict:
        records = [{k: torch.as_tensor(v).detach().cpu().numpy() for k, v in r.items()} for r in records]
        return {"loss": round(float(np.mean([r["loss"] for r in records])), 5),
                "train": loop.per_quality(records, {"bpp": 4, "psnr": 3})}


def argument_parser(prog: str = "python -m tec_zarr.train", description: str | None = __doc__):
    """The trainer's options; ``burst`` adds its own to the same parser."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="shared Sentinel-2 data folder, or a .npz packed by scripts/pack_training_data.py")
    p.add_argument("--out", required=True, help="run directory (checkpoint.pt, log.jsonl)")
    p.add_argument("--init", help="start from this checkpoint when the run directory has none")
    p.add_argument("--resume-optimizer", action="store_true", help="with --init, also restore optimizer state")
    p.add_argument("--synthesis-from", help="with --init: replace its synthesis by this pruned light synthesis "
                   "(train.light --kind pruned) and train both together, an asymmetric model")
    p.add_argument("--steps", type=int, default=40000, help="total steps (the learning rate decays at 75%% and 90%%)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the nonlinear transforms")
    p.add_argument("--lr-entropy", type=float, default=3e-3, help="learning rate of gains and densities")
    p.add_argument("--lr-linear", type=float, default=2e-5, help="learning rate of the linear (KLT) path")
    p.add_argument("--channels", type=int, default=ModelConfig.channels)
    p.add_argument("--latent-channels", type=int, default=ModelConfig.latent_channels)
    p.add_argument("--stages", type=int, default=ModelConfig.stages)
    p.add_argument("--no-linear-path", action="store_true", help="plain GDN transforms, no linear block path")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return argument_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return loop.main(Trainer, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
