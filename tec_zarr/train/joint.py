"""Train an encoder through the context model's rate: the next family's analysis, for the same decoder.

``python -m tec_zarr.train.joint --data ../shared/data --out runs/joint --init checkpoints/tec-fp-3/checkpoint.pt \
--context checkpoints/tec-ctx-3/checkpoint.pt --augment resampling --with-desert --minutes 60 --threads 2``

The shipped transforms were trained against a factorized prior, and the context model (tec-ctx-3) was fitted to
their frozen symbols afterwards: the encoder never learned what the context model predicts well. Here the analysis
trains with the context model's rate (relaxed: the symbols rounded straight through, so the likelihood is that of
the integers coded) and the distortion of the frozen synthesis, and the context model (hyperprior and context
networks) trains with it. The synthesis and the latent gains stay the ``--init`` model's, so the decoder's integer
synthesis does not change: a new family is a new analysis, factorized tables for its symbols (the factorized
densities train here on the new latents, detached from the encoder), and the context model exported on them.

Everything else is the burst trainer's (:mod:`.burst`): the wall-clock budget, the augmentation recipes, the
out-of-source validation sets, a resumable run directory. Validation rows hold the context model's bits of the
rounded symbols (``bpp``) beside the factorized prior's (``factorized_bpp``). ``--split`` turns a run's checkpoint
into a transform checkpoint ``train.export`` reads (``--decoder-of`` the base) and a context checkpoint to continue
with ``train.context --init`` on the exported encoder's latents, whose run ``train.context_export`` then exports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import hyper, loop
from .__main__ import psnr_db
from .burst import BurstTrainer, on_cpu
from .burst import main as burst_main
from .burst import parse_args as burst_args
from .context import ContextConfig, ContextPrior
from .hyper import HyperConfig

PRIOR_KEY = "context_prior"
GRAD_CLIP_ANALYSIS = 1.0  # the trainer's
GRAD_CLIP_PRIOR = 5.0  # the rate-only trainers'


class JointTrainer(BurstTrainer):
    """The burst trainer with a frozen synthesis and the context model's rate in place of the factorized one."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        resumed = None
        if (self.out / "checkpoint.pt").exists():
            resumed = torch.load(self.out / "checkpoint.pt", map_location="cpu", weights_only=False)
            if PRIOR_KEY not in resumed:
                raise SystemExit(f"Expected a joint run in {self.out}. Got a checkpoint without a context model "
                                 "instead: use another --out.")
        elif not args.context:
            raise SystemExit("Expected --context (a context checkpoint, e.g. checkpoints/tec-ctx-3/checkpoint.pt) "
                             "for a new run. Got none instead.")
        source = resumed[PRIOR_KEY] if resumed else torch.load(args.context, map_location="cpu", weights_only=False)
        model = self.model
        self.prior = ContextPrior(ContextConfig.from_dict(source["context"]), HyperConfig.from_dict(source["config"]),
                                  model.gain.detach().cpu().numpy(), source["order"])
        hyper.load_weights(self.prior, source["model"])  # keeps the gains just given: the encoder's own
        self.prior.to(self.device)
        self.prior_started_from = source.get("started_from") if resumed else str(args.context)
        frozen = [*model.g_s.parameters(), model.gain, model.inv_gain]
        if model.cfg.linear_path:
            frozen.append(model.s_lin.weight)
        for p in frozen:
            p.requires_grad_(False)
        analysis = list(model.g_a.parameters())
        self.opt_transform = torch.optim.Adam([
            {"params": analysis, "base_lr": args.lr},
            {"params": [model.a_lin.weight] if model.cfg.linear_path else [], "base_lr": args.lr_linear},
        ], lr=args.lr)
        self.opt_entropy = torch.optim.Adam(list(model.densities.parameters()), lr=args.lr_entropy)
        self.prior_rates = [args.lr_context, args.lr_hyper, args.lr_entropy]
        self.opt_prior = torch.optim.Adam([
            {"params": self.prior.parameters_of(part), "base_lr": lr}
            for part, lr in zip(("context", "transforms", "entropy"), self.prior_rates)], lr=args.lr_context)
        if resumed is not None:
            self.opt_transform.load_state_dict(resumed["opt_analysis"])
            self.opt_entropy.load_state_dict(resumed["opt_densities"])
            self.opt_prior.load_state_dict(resumed["opt_prior"])
            for opt in (self.opt_transform, self.opt_entropy, self.opt_prior):
                loop.optimizer_to(opt, self.device)
            self.sampler.restore(resumed["sampler"])
            torch.set_rng_state(resumed["torch_rng"])

    def train_step(self) -> dict:
        model = self.model
        x, coding = self.next_batch_coded()
        q = torch.randint(len(self.cfg.lambdas), (x.shape[0],), device=self.device)
        y = model.analyse(self.normalize(x if coding is None else coding.encoder_input(x)))
        gained = y * model.gain[q][:, :, None, None]
        rounded = gained + (torch.round(gained) - gained).detach()
        x_hat = self.denormalize(model.synthesise(rounded * model.inv_gain[q][:, :, None, None]))
        if coding is not None:
            x_hat = coding.decoded(x_hat)
        mse = ((x_hat - x) ** 2).mean(dim=(1, 2, 3))
        pixels = x.shape[2] * x.shape[3]
        rate = self.prior(y, q, relaxed=True)
        bpp = (rate["bits_y"] + rate["bits_z"]) / pixels
        factorized = model.bits(gained.detach() + torch.empty_like(gained).uniform_(-0.5, 0.5), q) / pixels
        loss = (self.lambdas[q] * mse + bpp).mean()
        optimizers = (self.opt_transform, self.opt_entropy, self.opt_prior)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        (loss + factorized.mean()).backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt_transform.param_groups for p in g["params"]],
                                       GRAD_CLIP_ANALYSIS)
        torch.nn.utils.clip_grad_norm_(self.prior.parameters(), GRAD_CLIP_PRIOR)
        scale = self.lr_scale()
        for opt in (self.opt_transform, self.opt_prior):
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        for group in self.opt_entropy.param_groups:
            group["lr"] = self.args.lr_entropy * scale
        for opt in optimizers:
            opt.step()
        with torch.no_grad():
            psnr = psnr_db(x, x_hat)
        return {"loss": loss.detach(), "q": q, "bpp": bpp.detach(), "psnr": psnr,
                "factorized_bpp": factorized.detach()}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, coding=None) -> list[dict]:
        """Per quality: the context model's bits of the rounded symbols (``bpp``), the factorized prior's, and
        the PSNR of the frozen synthesis (with ``coding``: replicated bands as the codec codes them)."""
        self.model.eval()
        self.prior.eval()
        rows = []
        x = x.to(self.device)
        y = self.model.analyse(self.normalize(x if coding is None else coding.encoder_input(x)))
        pixels = x.shape[2] * x.shape[3]
        for q in range(len(self.cfg.lambdas)):
            quality = torch.full((x.shape[0],), q, dtype=torch.int64, device=self.device)
            sym = torch.round(y * self.model.gain[q][None, :, None, None])
            x_hat = self.denormalize(self.model.synthesise(sym * self.model.inv_gain[q][None, :, None, None]))
            if coding is not None:
                x_hat = coding.decoded(x_hat)
            rate = self.prior(y, quality, noise=False)
            rows.append({"quality": q,
                         "bpp": float(((rate["bits_y"] + rate["bits_z"]) / pixels).mean()),
                         "factorized_bpp": float((self.model.bits(sym, quality) / pixels).mean()),
                         "psnr": float(psnr_db(x, x_hat).mean())})
        self.model.train()
        self.prior.train()
        return rows

    def checkpoint(self) -> dict:
        ckpt = super().checkpoint()
        for key in ("opt_transform", "opt_entropy"):  # the trainer's keys hold optimizers over all parameters
            ckpt.pop(key, None)
        prior = self.prior
        ckpt.update(on_cpu({
            "opt_analysis": self.opt_transform.state_dict(),
            "opt_densities": self.opt_entropy.state_dict(),
            "opt_prior": self.opt_prior.state_dict(),
            PRIOR_KEY: {"config": prior.hyper.cfg.to_dict(), "context": prior.cfg.to_dict(),
                        "order": prior.order.cpu().numpy(), "model": prior.state_dict(),
                        "started_from": self.prior_started_from},
        }))
        return ckpt


def split(checkpoint: Path, to: Path) -> tuple[Path, Path]:
    """A joint run's checkpoint as ``to/transform.pt`` (what ``train.export`` reads: the encoder, the frozen
    synthesis and gains, the factorized densities) and ``to/context.pt`` (a context checkpoint, for ``train.context
    --init`` on the exported encoder's latents), both slim: no optimizer state."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if PRIOR_KEY not in ckpt:
        raise SystemExit(f"Expected a joint run's checkpoint. Got {checkpoint}, without a context model, instead.")
    to.mkdir(parents=True, exist_ok=True)
    prior = ckpt[PRIOR_KEY]
    transform = {k: v for k, v in ckpt.items() if k != PRIOR_KEY and not k.startswith("opt_")
                 and k not in ("sampler", "torch_rng")}
    context = {"config": prior["config"], "context": prior["context"], "order": prior["order"],
               "model": prior["model"], "step": ckpt["step"],
               "started_from": f"{prior['started_from']}, trained jointly with the encoder ({checkpoint})"}
    paths = (to / "transform.pt", to / "context.pt")
    torch.save(transform, paths[0])
    torch.save(context, paths[1])
    return paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return burst_args(argv, extra=add_arguments)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context", help="the context checkpoint whose networks give the rate (a new run)")
    p.add_argument("--lr-context", type=float, default=3e-4, help="learning rate of the context networks")
    p.add_argument("--lr-hyper", type=float, default=6e-5, help="learning rate of the hyperprior's transforms")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--split"]:
        if len(argv) != 4 or argv[2] != "--to":
            raise SystemExit("usage: python -m tec_zarr.train.joint --split CHECKPOINT --to FOLDER")
        for path in split(Path(argv[1]), Path(argv[3])):
            print(path)
        return 0
    return burst_main(argv, trainer_class=JointTrainer, parse=parse_args)


if __name__ == "__main__":
    sys.exit(main())
