"""``tec train``: fine-tune (or train) TEC-FP on your own Zarr stores and GeoTIFFs, and install the result.

    tec train --data archive.zarr more_scenes/ --name my-fp --steps 2000

- inputs: Zarr stores (the one 12-band variable, or ``--var``), GeoTIFF files and folders of GeoTIFFs, in the
  model's L2A band order; integer data are DN (reflectance x 10000), float data reflectance (or DN where they
  exceed 10). Every leading index (time, ...) is one image;
- validation is held out by place: a store, or the MGRS tile a file name or the store's ``mgrs_tile`` names, is
  entirely in training or in validation (a fifth of the places, at least one). With a single place, the bottom
  fifth of every image is held out instead (a split by tile);
- it starts from a shipped model's training checkpoint (``--base tec-fp``, ``checkpoints/`` of a tec-zarr
  checkout) or any tec-zarr checkpoint (``--init``), at 0.3 x the trainer's rates with the robust augmentation of
  the burst trainer (resampling, gain, haze, brightening, nodata edges); ``--base none`` trains from scratch;
- resumable: the run folder (``--out``, default ``<models>/.runs/NAME``) holds ``checkpoint.pt`` and
  ``log.jsonl``; ``--resume`` continues an interrupted run to its ``--steps``;
- on a GPU when torch sees one (``--device``);
- at the end it exports the model folder (ONNX graphs, integer tables, integer synthesis) into ``--into`` (default:
  the first folder of TEC_ZARR_MODEL_PATH, else ~/.local/share/tec-zarr/models) with its RD measured by the
  runtime codec on the held-out images, so that ``TEC(model=NAME)`` and ``tec compress --model NAME`` use it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointImportError, InvalidInputError
from . import data, loop, robust
from .__main__ import Trainer, argument_parser
from .burst import FINE_TUNE

REPO_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
TILE = re.compile(r"(?<![A-Z0-9])T?(\d{2}[C-X][A-Z]{2})(?![A-Z0-9])")
DATE_SUFFIX = re.compile(r"([_-](\d{1,2}|\d{8}(T\d{6})?))+$")
VAL_FRACTION = 0.2
MAX_VALIDATION = 256
MULTIPLE = 16
FINE_TUNABLE = ("tec-fp-3", "tec-fp-2", "tec-fp")  # the TEC-FP transforms whose checkpoints a checkout holds


# -- reading the user's data ------------------------------------------------------------------------------------------


def _reflectance(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.float32) / 1e4
    out = np.nan_to_num(values.astype(np.float32), nan=0.0)
    return out / 1e4 if np.nanmax(np.abs(out)) > 10 else out


def _place(name: str, attrs: dict, fallback: str) -> str:
    tile = attrs.get("mgrs_tile")
    if tile:
        return str(tile)
    found = TILE.search(name.upper())
    # Else the name less a trailing date or date index (place_0, place_20200524): one place's time series together.
    return found.group(1) if found else (DATE_SUFFIX.sub("", fallback) or fallback)


def _images_of(array, name: str, place: str) -> list[data.Image]:
    values = np.asarray(array)
    if values.ndim < 3 or values.shape[-3] != 12:
        raise InvalidInputError(f"Expected 12-band images (..., 12, y, x) in {name}. Got shape {values.shape} instead.")
    flat = values.reshape((-1,) + values.shape[-3:])
    return [data.Image(f"{name}[{i}]" if len(flat) > 1 else name, place, _reflectance(im)) for i, im in enumerate(flat)]


def load_paths(paths: list[str], variable: str | None = None) -> list[data.Image]:
    """Every image of the Zarr stores, GeoTIFFs and GeoTIFF folders in ``paths``, as reflectance."""
    from ..cli.inputs import GEOTIFF, ZARR, kind, open_dataset

    images: list[data.Image] = []
    for path in paths:
        p = Path(path)
        found = kind(p)
        if p.is_dir() and found != ZARR:
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".tif", ".tiff"))
            if not files:
                raise InvalidInputError(f"Expected a Zarr store or a folder of GeoTIFFs at {p}. Got neither instead.")
            for f in files:
                ds, var = open_dataset(str(f), GEOTIFF, variable, 256)
                images += _images_of(ds[var].values, f.stem, _place(f.stem, ds[var].attrs, f.stem))
        elif found in (ZARR, GEOTIFF):
            ds, var = open_dataset(str(p), found, variable, 256)
            attrs = {**ds.attrs, **ds[var].attrs}
            images += _images_of(ds[var].values, p.stem, _place(p.stem, attrs, p.stem))
        else:
            raise InvalidInputError(f"Expected a Zarr store, a GeoTIFF or a folder of GeoTIFFs at {p}. Got "
                                    f"{'nothing' if not p.exists() else found or 'another kind of file'} instead.")
    if not images:
        raise InvalidInputError(f"Expected images in {paths}. Got none instead.")
    return images


def split(images: list[data.Image], fraction: float = VAL_FRACTION,
          seen: tuple[str, ...] = ()) -> tuple[list[data.Image], list[data.Image], str]:
    """(training images, validation images, how they were split): by place where there are two or more places
    (preferring places that no name in ``seen``, the starting weights' training images, contains), else the bottom
    ``fraction`` of every image (rows rounded to the models' multiple)."""
    places = sorted({im.place for im in images},
                    key=lambda p: (any(p in name for name in seen), hashlib.sha256(p.encode()).hexdigest()))
    if len(places) >= 2:
        held = set(places[: max(1, round(len(places) * fraction))])
        train = [im for im in images if im.place not in held]
        val = [im for im in images if im.place in held]
        return train, val, f"by place: {', '.join(sorted(held))} held out"
    train, val = [], []
    for im in images:
        h = im.reflectance.shape[1]
        rows = max(MULTIPLE, int(h * fraction) // MULTIPLE * MULTIPLE)
        if h - rows < MULTIPLE:
            raise InvalidInputError(f"Expected images of at least {2 * MULTIPLE} rows to split. Got {h} in {im.name}.")
        train.append(data.Image(im.name, im.place, np.ascontiguousarray(im.reflectance[:, : h - rows])))
        val.append(data.Image(im.name + ":bottom", im.place, np.ascontiguousarray(im.reflectance[:, h - rows :])))
    return train, val, f"by tile: the bottom {fraction:.0%} of each image of the single place {places[0]}"


def square_crops(images: list[data.Image], limit: int = MAX_VALIDATION) -> list[data.Image]:
    """The top-left square of each image, all of one size (at most ``limit``, a multiple of 16)."""
    side = min(limit, *(min(im.reflectance.shape[1:]) for im in images)) // MULTIPLE * MULTIPLE
    if side < MULTIPLE:
        raise InvalidInputError(f"Expected validation images of at least {MULTIPLE} x {MULTIPLE} pixels.")
    return [data.Image(im.name, im.place, np.ascontiguousarray(im.reflectance[:, :side, :side])) for im in images]


# -- training ---------------------------------------------------------------------------------------------------------


class UserTrainer(Trainer):
    """The TEC-FP trainer on given images, counting its steps from where its starting checkpoint stopped."""

    def __init__(self, args: argparse.Namespace, train: list[data.Image], val: list[data.Image], about: dict):
        self._given = (train, square_crops(val))
        self.about = about
        resuming = (Path(args.out) / "checkpoint.pt").exists()
        super().__init__(args)
        if not resuming:
            self.start = self.step
            self.target = self.step + args.user_steps
            self.train_names = list(dict.fromkeys([*self.train_names, *(im.name for im in train)]))
        else:
            ckpt = torch.load(Path(args.out) / "checkpoint.pt", map_location="cpu", weights_only=False)
            self.start, self.target = ckpt["user"]["start"], ckpt["user"]["target"]
        args.steps = self.target

    def load_data(self):
        return self._given

    def make_sampler(self, train_images):
        usable = [im for im in train_images if min(im.reflectance.shape[1:]) >= self.args.crop]
        if not usable:
            raise InvalidInputError(f"Expected training images of at least --crop {self.args.crop} pixels. Got none.")
        augment = robust.AugmentConfig() if self.args.augment == "robust" else None
        return robust.DeviceSampler(usable, self.args.crop, self.args.seed, self.device, augment, self.mean)

    def lr_scale(self) -> float:
        return loop.step_scale(self.step - self.start, self.target - self.start, first_drop=0.75)

    def checkpoint(self) -> dict:
        from .burst import on_cpu

        ckpt = super().checkpoint()
        ckpt["validation_places"] = sorted({im.place for im in self._given[1]})
        ckpt["user"] = {"start": self.start, "target": self.target, **self.about}
        return on_cpu(ckpt)


def base_checkpoint(base: str | None, init: str | None) -> Path | None:
    if init:
        return Path(init)
    if base is None or base == "none":
        return None
    if base not in FINE_TUNABLE:
        raise CheckpointImportError(
            f"Expected --base in {[*FINE_TUNABLE, 'none']}. Got {base!r} instead: tec train fine-tunes TEC-FP transforms (the "
            "entropy models share them and have trainers of their own, python -m tec_zarr.train.hyper and .context)."
        )
    path = REPO_CHECKPOINTS / base / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointImportError(
            f"Expected the training checkpoint of {base} at {path} (a tec-zarr checkout has it). Got none instead: "
            "pass --init CHECKPOINT, or --base none to train from scratch."
        )
    return path


def train(args: argparse.Namespace) -> Path:
    """Run ``tec train``; returns the installed model folder."""
    from ..models.registry import install_dir
    from .importer import check_name

    into = Path(args.into) if args.into else install_dir()
    check_name(args.name, into)
    out = Path(args.out) if args.out else into / ".runs" / args.name
    if (out / "checkpoint.pt").exists() and not args.resume:
        raise InvalidInputError(f"Expected a new run folder. Got {out} with a checkpoint instead: pass --resume to "
                                "continue it, or --out another folder.")
    if args.resume and not (out / "checkpoint.pt").exists():
        raise InvalidInputError(f"Expected a checkpoint to resume in {out}. Got none instead: drop --resume.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("Expected a GPU torch can use for --device cuda. Got torch.cuda.is_available() False "
                                f"(torch {torch.__version__}: a CPU build, or no GPU) instead: use --device auto or cpu.")
    init = base_checkpoint(args.base, args.init)
    images = load_paths(args.data, args.var)
    seen = tuple(torch.load(init, map_location="cpu", weights_only=False).get("train_images", ())) if init else ()
    train_images, val_images, how = split(images, args.val_fraction, seen)
    targs = argument_parser().parse_args(["--out", str(out)])
    targs.init, targs.device, targs.seed, targs.augment = (str(init) if init else None), args.device, args.seed, args.augment
    targs.user_steps = args.steps
    targs.threads = args.threads
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    targs.batch = args.batch or (32 if cuda else 8)
    targs.crop = args.crop or (128 if cuda else 96)
    factor = FINE_TUNE if init else 1.0
    targs.lr, targs.lr_entropy, targs.lr_linear = (targs.lr * factor, targs.lr_entropy * factor,
                                                   targs.lr_linear * factor)
    targs.log_every = max(1, min(100, args.steps // 10 or 1))
    targs.val_every = max(1, args.val_every or args.steps)
    if args.minutes:
        targs.deadline = time.time() + 60.0 * args.minutes
    if targs.threads:
        torch.set_num_threads(targs.threads)
    torch.manual_seed(args.seed)
    about = {"data": [str(p) for p in args.data], "split": how, "base": args.base if not args.init else str(init)}
    trainer = UserTrainer(targs, train_images, val_images, about)
    print(json.dumps({"train": {"device": str(trainer.device), "images": len(train_images),
                                "validation": len(val_images), "split": how, "from": str(init) if init else None,
                                "steps": [trainer.step, trainer.target], "batch": targs.batch, "crop": targs.crop}}),
          flush=True)
    loop.run(trainer)
    return install(trainer, into, args.name, images=train_images, val=trainer._given[1])


def install(trainer: UserTrainer, into: Path, name: str, images: list[data.Image], val: list[data.Image]) -> Path:
    """Export the run's checkpoint into ``into/name`` and measure its RD on the held-out images."""
    from .export import export
    from .importer import measure

    tmp = into / f".{name}.part"
    if tmp.exists():
        shutil.rmtree(tmp)
    side = min(256, *(min(im.reflectance.shape[1:]) for im in images)) // MULTIPLE * MULTIPLE
    calibration = np.stack([im.reflectance[:, :side, :side] for im in images[:8]])
    export(trainer.out / "checkpoint.pt", name, "1", out_dir=tmp, calibration=calibration)
    manifest = json.loads((tmp / "manifest.json").read_text())
    base_steps = trainer.start
    manifest["training"].update({
        "steps": trainer.step - trainer.start,
        "data": ", ".join(trainer.about["data"]),
        "split": trainer.about["split"],
        "validation_places": sorted({im.place for im in val}),
    })
    if trainer.args.init:
        manifest["training"]["base_training"] = {"steps": base_steps, "checkpoint": trainer.args.init}
        manifest["base_model"] = {"name": trainer.about["base"]}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    crops = np.clip(np.rint(np.stack([im.reflectance for im in val]) * 1e4), 0, 65535).astype(np.uint16)
    measure(tmp, images=crops)
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["training"]["validation_places"] = sorted({im.place for im in val})
    manifest["training"]["validation"] = f"{len(crops)} held-out images ({trainer.about['split']})"
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    folder = into / name
    tmp.rename(folder)
    return folder
