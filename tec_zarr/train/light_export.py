"""Export a light-synthesis checkpoint as a model: a base model's files byte for byte, its decoder.onnx replaced.

``python -m tec_zarr.train.light_export runs/tec-fp-lite/checkpoint.pt --name tec-fp-lite --base tec-fp --data ../shared/data``

Everything before the synthesis (encoder, gains, entropy tables, the integer synthesis that error-bounded chunks
predict from) stays the base model's, so the new model writes the base model's symbols in the same number of bits;
its chunks name the new model, whose decoder is the light one. ``--base`` may be any installed model with the same
analysis transform and gains (tec-fp, tec-hp, tec-ctx): the light synthesis only reads the symbols they share.

``--base-synthesis-at 3 4`` keeps the base's own synthesis for those qualities (shipped beside the light one as
``base-decoder.onnx``, named per quality in ``decoders.json``): where the light synthesis loses quality against the
base on the held-out places, chunks of those qualities then decode to the base model's pixels, at its speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..models import MODELS_DIR, get_card, model_digest, verified_bytes
from ..models.model import DECODERS_FILENAME
from ..models.registry import file_path, share_files
from .export import export_onnx, machine_description, measure_into_manifest, require_one_synthesis, sha256_file
from .light import DEFAULT_BASE, LightConfig, build

DECODER = "decoder.onnx"
BASE_DECODER = "base-decoder.onnx"


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    net = build(LightConfig.from_dict(ckpt["config"]))
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def trained_inv_gain(ckpt: dict) -> np.ndarray:
    """The inverse gains the light synthesis learned on: stored in its checkpoint, or (older checkpoints) read from
    the base checkpoint it names, else from the committed tec-fp checkpoint."""
    if "base_inv_gain" in ckpt:
        return np.asarray(ckpt["base_inv_gain"], np.float32)
    base = Path(ckpt["base"]) if Path(ckpt["base"]).is_file() else DEFAULT_BASE
    return torch.load(base, map_location="cpu", weights_only=False)["model"]["inv_gain"].numpy()


def check_same_gains(base_tables: bytes, ckpt: dict) -> None:
    """The light synthesis learned on symbols times the base checkpoint's inverse gains: the model it joins must
    dequantize with the same ones."""
    import io

    with np.load(io.BytesIO(base_tables)) as t:
        inv_gain = t["inv_gain"]
    if not np.array_equal(inv_gain, trained_inv_gain(ckpt)):
        raise SystemExit("Expected the base model's inverse gains to equal the ones the light synthesis was trained "
                         "on. Got other gains instead: pick the matching --base.")


def decoders_per_quality(qualities: int, base_synthesis_at: tuple[int, ...]) -> list[str]:
    """The graph file decoding each quality: the base's synthesis at ``base_synthesis_at``, the light one elsewhere."""
    if not set(base_synthesis_at) <= set(range(qualities)):
        raise SystemExit(f"Expected --base-synthesis-at among the base's qualities 0..{qualities - 1}. "
                         f"Got {sorted(base_synthesis_at)} instead.")
    return [BASE_DECODER if q in base_synthesis_at else DECODER for q in range(qualities)]


def export(checkpoint: Path, name: str, version: str, base_name: str, out_dir: Path | None,
           data_root: Path | None, base_synthesis_at: tuple[int, ...] = ()) -> Path:
    net, ckpt = load_checkpoint(checkpoint)
    base = get_card(base_name)
    require_one_synthesis(base)
    check_same_gains(verified_bytes(base, "tables.npz"), ckpt)
    base_synthesis_at = tuple(sorted(set(base_synthesis_at)))
    per_quality = decoders_per_quality(len(base.qualities), base_synthesis_at)  # checked before anything is written
    folder = Path(out_dir) if out_dir else MODELS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in (BASE_DECODER, DECODERS_FILENAME):  # an earlier export's, which this one may not list
        (folder / f).unlink(missing_ok=True)
    for f in base.files:
        if f != DECODER:
            shutil.copyfile(file_path(base, f), folder / f)
    example = torch.zeros(1, net.cfg.latent_channels, 4, 4)
    with torch.no_grad():
        export_onnx(net, example, "y_hat", "x_hat", folder / DECODER)
    listed = list(base.files)
    if base_synthesis_at:
        shutil.copyfile(file_path(base, DECODER), folder / BASE_DECODER)
        (folder / DECODERS_FILENAME).write_text(json.dumps({"per_quality": per_quality}, indent=1) + "\n")
        listed += [BASE_DECODER, DECODERS_FILENAME]
    files = {f: sha256_file(folder / f) for f in listed}
    manifest = {k: v for k, v in base.manifest.items() if k not in ("files", "sha256", "exported", "qualities")}
    manifest.update({
        "name": name,
        "version": version,
        "architecture": f"{base.name}'s analysis, gains and entropy model (same symbols, same bits) with "
                        f"{type(net).description}" + (
                            f"; qualities {', '.join(map(str, base_synthesis_at))} decode through "
                            f"{base.name}'s own synthesis" if base_synthesis_at else ""),
        "base_model": {"name": base.name, "sha256": base.sha256},
        "synthesis": net.cfg.to_dict(),
        **({"base_synthesis_at": list(base_synthesis_at)} if base_synthesis_at else {}),
        "qualities": [{"quality": q["quality"], "lambda": q.get("lambda")} for q in base.manifest["qualities"]],
        "training": {
            "base_training": base.manifest.get("training"),
            "synthesis_steps": int(ckpt["step"]),
            **({"synthesis_segments": ckpt["quality_segments"]} if ckpt.get("quality_segments") else {}),
            "crop": ckpt.get("crop"), "batch": ckpt.get("batch"), "images": ckpt["train_images"],
            "validation_places": ckpt["validation_places"],
        },
        "exported": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_description()},
        "files": files,
        "sha256": model_digest(files),
    })
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if folder.parent.resolve() == MODELS_DIR.resolve():
        share_files(MODELS_DIR)  # the base model's files are shipped once
    if data_root is not None:  # the same bits as the base, other pixels: both PSNRs on the card
        measure_into_manifest(folder, data_root, beside=base.name)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tec_zarr.train.light_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name", default="tec-fp-lite")
    p.add_argument("--base", default="tec-fp", help="the installed model whose files the new one shares")
    p.add_argument("--version", default="1")
    p.add_argument("--out", type=Path, help="model folder (default: inside the package)")
    p.add_argument("--data", type=Path, help="shared data folder: measure RD on the validation places")
    p.add_argument("--base-synthesis-at", type=int, nargs="+", default=(), metavar="Q",
                   help="qualities decoded through the base's own synthesis (where the light one loses)")
    args = p.parse_args(argv)
    folder = export(args.checkpoint, args.name, args.version, args.base, args.out, args.data,
                    tuple(args.base_synthesis_at))
    print(f"exported {args.name} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
