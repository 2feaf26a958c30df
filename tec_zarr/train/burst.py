"""A time-budgeted TEC-FP run with robust augmentation, made for a short loan of a GPU.

``python -m tec_zarr.train.burst --out runs/burst --init checkpoints/tec-fp-2/checkpoint.pt \
--data runs/burst-data.npz --minutes 8`` (``scripts/gpu_burst.sh`` runs this on a GPU machine)

The trainer of ``python -m tec_zarr.train`` (same model, step, optimizers and checkpoint, so either command
resumes the other's run directory) with:

- a wall-clock budget: ``--minutes`` counts from the start of the command; training stops when it is spent, then
  validates and saves. The learning rate warms up over the first ``--warmup`` of the training time and drops at
  75 % and 90 % of it (not of ``--steps``);
- gentler default rates when it starts from trained weights (``--init`` or a run directory to resume): 0.3 x the
  trainer's. At the full rates tec-fp loses several dB at q4 within 30 steps on CPU (fresh Adam moments make
  every step as large as the rate), and it had ended its own schedule at 0.1 x;
- crops cut and augmented on the device (``robust.py``; ``--augment none`` for plain crops, ``resampling`` for
  the 20 m and 60 m bands' kernel alone, ``resampling-coded`` with every replicated crop trained as the codec
  codes it: smoothed in, block means out), deterministic from the seed and resumed from the checkpoint's
  sampler state;
- out-of-source validation beside the usual one (``out_of_source`` in ``log.jsonl``): the validation crops with
  their 20 m and 60 m bands re-made by replication (as they are, and as the codec codes them: ``nearest,
  coded``) and by bilinear interpolation, and the 100 m desert tile,
  which this trainer keeps out of training unless ``--with-desert`` (the settings line's ``start_trained_on``
  names the sets the starting weights were trained on all the same: tec-fp's checkpoint saw the desert tile);
- ``--data`` a shared-data folder or a packed ``.npz`` (``scripts/pack_training_data.py``), which needs no
  rasterio; nothing here imports onnx, onnxruntime or rasterio;
- on CUDA: batch 32 of 128x128 crops by default, cuDNN autotuning, and strict fp32 (TF32 only with ``--tf32``:
  it would round the transforms' products to 10-bit mantissas, which the 50-55 dB qualities can feel).

Checkpoints are replaced atomically every ``--save-every-s`` and at each validation, and load with
``map_location="cpu"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import data, loop, robust
from .__main__ import Trainer, argument_parser

UNLIMITED = 10**12
FINE_TUNE = 0.3  # rate factor when starting from trained weights


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for CUDA convolutions and matrix products (cuDNN convolutions default to TF32)."""
    mode = "tf32" if enabled else "ieee"
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
    else:  # torch before 2.9
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled


class BurstTrainer(Trainer):
    def __init__(self, args: argparse.Namespace):
        resuming = (Path(args.out) / "checkpoint.pt").exists()
        self._train_images: list[data.Image] = []
        super().__init__(args)
        # The images the starting weights were trained on (resumed: with this run's own).
        self.start_trained_on = out_of_source_seen(self.train_names)
        if not resuming:
            # Started from another run's weights: record everything these weights have seen.
            names = self.train_names + [im.name for im in self._train_images]
            self.train_names = list(dict.fromkeys(names))
        val = self.val.to(self.device)
        resampler = robust.Resampler(self.device)
        self.out_of_source = {kernel: robust.remade(val, kernel, resampler) for kernel in ("nearest", "bilinear")}
        # the nearest version as the codec codes it (smoothed in, block means out): what a reader of such a cube gets
        self.coded = robust.Coding.every(len(val), resampler)
        desert = data.out_of_source_crops(Path(args.data))
        if len(desert):
            self.out_of_source["desert"] = torch.from_numpy(desert).to(self.device)
        self._train_start: float | None = None
        self._rate_mark: tuple[float, int] | None = None

    def load_data(self) -> tuple[list[data.Image], list[data.Image]]:
        train, val = data.split(data.load_images(Path(self.args.data)))
        if not self.args.with_desert:
            train = [im for im in train if im.place != data.OUT_OF_SOURCE_PLACE]
        elif not any(im.place == data.OUT_OF_SOURCE_PLACE for im in train):
            # A pack holds only the desert's validation crops: training on them would be recall, not a recipe.
            raise SystemExit(f"Expected the desert tile among the training images for --with-desert. Got none in "
                             f"{self.args.data} instead: use the shared data folder (a pack holds only its "
                             "validation crops).")
        self._train_images = train
        return self._train_images, val

    def next_batch_coded(self) -> tuple[torch.Tensor, robust.Coding | None]:
        return self.sampler.batch_coded(self.args.batch)

    def make_sampler(self, train_images: list[data.Image]) -> robust.DeviceSampler:
        augment = AUGMENTS[self.args.augment]
        return robust.DeviceSampler(train_images, self.args.crop, self.args.seed, self.device, augment, self.mean)

    def lr_scale(self) -> float:
        now = time.time()
        if self._train_start is None:
            self._train_start = now
        frac = (now - self._train_start) / max(self.args.deadline - self._train_start, 1e-9)
        warm = min(1.0, (frac + 1e-3) / self.args.warmup) if self.args.warmup > 0 else 1.0
        return warm * loop.step_scale(frac, 1.0, first_drop=0.75)

    def validate_more(self) -> dict:
        rows = {"out_of_source": {name: self.evaluate(x) for name, x in self.out_of_source.items()}}
        rows["out_of_source"]["nearest, coded"] = self.evaluate(self.out_of_source["nearest"], self.coded)
        self._rate_mark = (time.time(), self.step)  # steps per second without the validation's time
        return rows

    def summarize(self, records: list[dict]) -> dict:
        now = time.time()
        mark = self._rate_mark or (self._train_start or now, self.step - len(records))
        rate = (self.step - mark[1]) / max(now - mark[0], 1e-9)
        self._rate_mark = (now, self.step)
        return {"steps_per_s": round(rate, 2), "lr_scale": round(self.lr_scale(), 4), **super().summarize(records)}

    def checkpoint(self) -> dict:
        ckpt = super().checkpoint()
        ckpt["augment"] = self.sampler.augment.to_dict() if self.sampler.augment else None
        ckpt["data"] = Path(self.args.data).name
        return on_cpu(ckpt)  # loads anywhere, even without map_location; optimizers move state back on load

    def initial_validation(self) -> dict:
        """The starting weights' numbers, logged once before the first step of a new run directory."""
        return {"step": self.step, "initial": True, "validation": self.validate(), **self.validate_more()}


# Recipes of crop augmentation: all of robust.py's, none, or only the 20 m and 60 m bands' resampling kernel
# (the one variation the protocol showed helping every set).
AUGMENTS = {
    "robust": robust.AugmentConfig(),
    "none": None,
    "resampling": robust.AugmentConfig(p_gain=0.0, p_haze=0.0, p_bright=0.0, p_nodata=0.0),
    # resampling, with every replicated crop trained as the codec codes it (smoothed in, block means out)
    "resampling-coded": robust.AugmentConfig(p_gain=0.0, p_haze=0.0, p_bright=0.0, p_nodata=0.0, p_coded=1.0),
}


def out_of_source_seen(train_names: list[str]) -> list[str]:
    """The out-of-source sets cut from images these training names include: a set the starting weights were
    trained on measures what a run forgets of it, not how it does on data nobody trained on."""
    return ["desert"] if any(data.OUT_OF_SOURCE_PLACE in name for name in train_names) else []


def on_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def parse_args(argv: list[str] | None, extra=None) -> argparse.Namespace:
    """The burst trainer's options; ``extra(parser)`` adds a subclass's (:mod:`.joint`)."""
    p = argument_parser("python -m tec_zarr.train.burst", __doc__)
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole command")
    p.add_argument("--save-every-s", type=float, default=60.0, help="also save a checkpoint this often")
    p.add_argument("--val-every-s", type=float, default=60.0, help="validate (and save) this often")
    p.add_argument("--augment", choices=tuple(AUGMENTS), default="robust",
                   help="robust: every augmentation of robust.py; resampling: only the 20/60 m bands' kernel; "
                        "resampling-coded: that, replicated crops trained as the codec codes them")
    p.add_argument("--with-desert", action="store_true",
                   help="train on the 100 m desert tile too (its validation then measures recall, not transfer)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (faster, less exact)")
    p.add_argument("--warmup", type=float, default=0.03, help="fraction of the training time the rates ramp up")
    p.add_argument("--initial-validation", action=argparse.BooleanOptionalAction, default=None,
                   help="validate the starting weights first (default: in a new run directory)")
    # Step-based limits stay available (--steps counts from step 0, like the trainer's), but by default the clock
    # decides; batch, crop, log interval and rates follow the device and the starting point unless given.
    p.set_defaults(steps=UNLIMITED, val_every=UNLIMITED, batch=None, crop=None, log_every=None,
                   lr=None, lr_entropy=None, lr_linear=None)
    if extra is not None:
        extra(p)
    return p.parse_args(argv)


def resolve(args: argparse.Namespace, cuda: bool) -> argparse.Namespace:
    """Fill in what depends on the device and on whether training starts from trained weights."""
    args.device = "cuda" if cuda else "cpu"
    args.batch = args.batch or (32 if cuda else 8)
    args.crop = args.crop or (128 if cuda else 96)
    args.log_every = args.log_every or (200 if cuda else 10)
    base = argument_parser()
    factor = FINE_TUNE if args.init or (Path(args.out) / "checkpoint.pt").exists() else 1.0
    for name in ("lr", "lr_entropy", "lr_linear"):
        if getattr(args, name) is None:
            setattr(args, name, base.get_default(name) * factor)
    return args


def main(argv: list[str] | None = None, trainer_class=BurstTrainer, parse=parse_args) -> int:
    start = time.time()
    args = parse(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args = resolve(args, cuda)
    args.deadline = start + 60.0 * args.minutes
    if cuda:
        torch.backends.cudnn.benchmark = True  # one crop size throughout: autotune once
        set_tf32(args.tf32)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    new_run = not (Path(args.out) / "checkpoint.pt").exists()
    trainer = trainer_class(args)
    print(json.dumps({
        "burst": {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                  "step": trainer.step, "batch": args.batch, "crop": args.crop, "minutes": args.minutes,
                  "augment": args.augment, "with_desert": args.with_desert, "tf32": bool(cuda and args.tf32),
                  "lr": [args.lr, args.lr_entropy, args.lr_linear],
                  "train_images": len(trainer.sampler.images), "validation": len(trainer.val),
                  "out_of_source": {k: len(v) for k, v in trainer.out_of_source.items()},
                  "start_trained_on": trainer.start_trained_on,
                  "setup_s": round(time.time() - start, 1)}}), flush=True)
    if args.initial_validation if args.initial_validation is not None else new_run:
        record = json.dumps(trainer.initial_validation())
        with (trainer.out / "log.jsonl").open("a") as log:
            log.write(record + "\n")
        print(record, flush=True)
    loop.run(trainer)
    size = (trainer.out / "checkpoint.pt").stat().st_size
    print(json.dumps({"done": {"step": trainer.step, "seconds": round(time.time() - start, 1),
                               "checkpoint_mib": round(size / 2**20, 2)}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
