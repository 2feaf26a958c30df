"""Export a training checkpoint to a shipped model: ONNX graphs, integer tables, manifest with hashes and RD.

``python -m tec_zarr.train.export runs/tec-fp/checkpoint.pt --name tec-fp``

``python -m tec_zarr.train.export --synthesis-only tec_zarr/models/tec-fp`` adds ``synthesis_int.npz`` (the integer
synthesis that error-bounded chunks need) to an exported folder, from its decoder.onnx, and rewrites the manifest.

The integer CDF tables are baked here, once, from the learned densities (CompressAI's ``update()`` step); the
runtime never evaluates a density. The manifest's RD figures are measured with the runtime codec itself (real
bitstreams, headers included) on the validation places, which training never saw.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..bands import S2_L2A_BANDS
from ..entropy.tables import quantize_pmf
from ..integer import synthesis
from ..models import MODELS_DIR, ModelCard, model_digest
from ..models.model import DECODERS_FILENAME
from . import loop
from .model import ModelConfig, TECFactorized

# The shared Sentinel-2 data beside the repository (../shared/data).
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

TAIL_MASS = 1e-6  # probability left to the escape symbol
GRID = 1 << 12  # tables are searched within +-GRID; the escape codes anything beyond
MAX_TABLE = 1 << 11


class _Encoder(torch.nn.Module):
    def __init__(self, model: TECFactorized):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.analyse(x)


class _Decoder(torch.nn.Module):
    def __init__(self, model: TECFactorized):
        super().__init__()
        self.model = model

    def forward(self, y_hat):
        return self.model.synthesise(y_hat)


def load_checkpoint(path: Path) -> tuple[TECFactorized, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = TECFactorized(ModelConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def export_onnx(module: torch.nn.Module, example: torch.Tensor, input_name: str, output_name: str, path: Path) -> None:
    dims = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        module, (example,), str(path), input_names=[input_name], output_names=[output_name],
        dynamic_axes={input_name: dims, output_name: dims}, opset_version=17, dynamo=False,
    )


def entropy_tables(model: TECFactorized) -> dict[str, np.ndarray]:
    q, m = model.gain.shape
    offsets = np.zeros((q, m), np.int32)
    lengths = np.zeros((q, m), np.int32)
    rows: list[list[np.ndarray]] = []
    for qi, density in enumerate(model.densities):
        p = density.bin_probabilities(-GRID, GRID).numpy()  # (M, 2*GRID+1)
        row = []
        for c in range(m):
            cdf = np.cumsum(p[c])
            total = cdf[-1]
            lo = int(np.searchsorted(cdf, TAIL_MASS / 2 * total))
            hi = int(np.searchsorted(cdf, (1 - TAIL_MASS / 2) * total))
            hi = min(hi, lo + MAX_TABLE - 2, p.shape[1] - 1)
            inside = p[c, lo : hi + 1]
            counts = quantize_pmf(inside, max(total - inside.sum(), TAIL_MASS))
            offsets[qi, c] = lo - GRID
            lengths[qi, c] = len(counts)
            row.append(counts)
        rows.append(row)
    width = int(lengths.max())
    pmf = np.zeros((q, m, width), np.uint32)
    for qi in range(q):
        for c in range(m):
            pmf[qi, c, : lengths[qi, c]] = rows[qi][c]
    return {"offsets": offsets, "lengths": lengths, "pmf": pmf}


def require_one_synthesis(base: ModelCard) -> None:
    """Exporters that copy a base model's files copy one decoder.onnx: a base naming its graphs per quality
    (decoders.json) would lose the others, so it is refused before anything is written."""
    if DECODERS_FILENAME in base.files:
        raise SystemExit(f"Expected a base model with one synthesis for every quality. Got {base.name}, which names "
                         f"them per quality in {DECODERS_FILENAME}, instead: use its own base.")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(checkpoint: Path, name: str, version: str, out_dir: Path | None = None, data_root: Path | None = None,
           calibration_root: Path | None = None, calibration: np.ndarray | None = None,
           decoder_of: str | None = None) -> Path:
    """Write a model folder; ``data_root``: measure RD on its validation places; ``calibration_root`` (default
    ``data_root``, else ../shared/data): where the checkpoint's training images are, to calibrate the integer synthesis;
    ``calibration``: those images themselves ((B, 12, H, W) reflectance), for data outside the shared folder;
    ``decoder_of``: an installed model whose synthesis the checkpoint holds unchanged (``train.joint``), whose
    decoder files are then shipped instead (:func:`reuse_decoder`)."""
    model, ckpt = load_checkpoint(checkpoint)
    cfg = model.cfg
    folder = Path(out_dir) if out_dir else MODELS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, cfg.bands, 4 * cfg.multiple, 4 * cfg.multiple)
    with torch.no_grad():
        export_onnx(_Encoder(model), example, "x", "y", folder / "encoder.onnx")
        y = model.analyse(example)
        export_onnx(_Decoder(model), y, "y_hat", "x_hat", folder / "decoder.onnx")
    tables = entropy_tables(model)
    np.savez_compressed(
        folder / "tables.npz",
        mean=np.asarray(ckpt["mean"], np.float32),
        std=np.asarray(ckpt["std"], np.float32),
        gain=model.gain.detach().numpy().astype(np.float32),
        inv_gain=model.inv_gain.detach().numpy().astype(np.float32),
        **tables,
    )
    (folder / synthesis.FILENAME).write_bytes(
        integer_synthesis(
            {k: v.detach().numpy() for k, v in model.state_dict().items() if k.startswith(("g_s.", "s_lin."))},
            folder, model.inv_gain.detach().numpy(), np.asarray(ckpt["mean"]), np.asarray(ckpt["std"]),
            calibration if calibration is not None
            else calibration_images(calibration_root or data_root, ckpt["train_images"]),
        ).to_npz()
    )
    if decoder_of:
        reuse_decoder(folder, decoder_of)
    files = {f: sha256_file(folder / f) for f in ("decoder.onnx", "encoder.onnx", "tables.npz", synthesis.FILENAME)}
    manifest = {
        "name": name,
        "version": version,
        "architecture": "factorized prior (TEC-FP): GDN analysis/synthesis beside a KLT-initialized linear 4x4 block "
                        "path, per-quality latent gains" + (
                            f"; asymmetric: {cfg.synthesis_width} hidden synthesis channels against the analysis' "
                            f"{cfg.channels}" if cfg.synthesis_channels else ""),
        "config": cfg.to_dict(),
        "multiple": cfg.multiple,
        "bands": list(S2_L2A_BANDS),
        "normalization": {
            "units": "reflectance = DN / 10000; x_norm = (reflectance - mean) / std",
            "mean": [round(float(v), 6) for v in ckpt["mean"]],
            "std": [round(float(v), 6) for v in ckpt["std"]],
        },
        "qualities": [{"quality": i, "lambda": lam} for i, lam in enumerate(cfg.lambdas)],
        "default_quality": 2,
        "training": {
            "steps": int(ckpt["step"]),
            "crop": ckpt.get("crop"),
            "batch": ckpt.get("batch"),
            "images": ckpt["train_images"],
            "validation_places": ckpt.get("validation_places"),
            **({"augment": ckpt["augment"]} if "augment" in ckpt else {}),  # the burst trainer's recipe
            "data": "shared/data: SSL4EO-S12 v1.1 L2A (CC-BY-4.0), SSL4EO-S12 L1C examples, s2cloudless test scene "
                    "(CC-BY-SA-4.0), rio-tiler-pds 29RKH L2A 100 m; all modified Copernicus Sentinel data",
        },
        "exported": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_description()},
        "files": files,
        "sha256": model_digest(files),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if data_root is not None:
        measure_into_manifest(folder, data_root)
    return folder


def reuse_decoder(folder: Path, base: str) -> None:
    """Ship the installed ``base``'s decoder.onnx and integer synthesis in ``folder`` byte for byte, after checking
    that the graph just exported holds the same weights and the same dequantization gains: the same symbols then
    decode to the same pixels under both models, and the registry stores the files once. An encoder trained against
    a frozen synthesis (``train.joint``) needs no new decoder; re-exporting one would calibrate the integer synthesis
    on other latents and make pixels differ for nothing."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from ..models import get_card
    from ..models.registry import file_path

    card = get_card(base)

    def weights(path: Path) -> list[np.ndarray]:
        return sorted((numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer),
                      key=lambda a: (a.shape, a.tobytes()))

    def inv_gain(path: Path) -> np.ndarray:
        with np.load(path) as z:
            return z["inv_gain"]

    mine, theirs = weights(folder / "decoder.onnx"), weights(file_path(card, "decoder.onnx"))
    if len(mine) != len(theirs) or any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(mine, theirs)) \
            or not np.array_equal(inv_gain(folder / "tables.npz"), inv_gain(file_path(card, "tables.npz"))):
        raise SystemExit(f"Expected the checkpoint's synthesis and gains to be {base}'s unchanged for --decoder-of. "
                         "Got other weights instead: export without it.")
    for f in ("decoder.onnx", synthesis.FILENAME):
        shutil.copyfile(file_path(card, f), folder / f)


def calibration_images(data_root: Path | None, names) -> np.ndarray:
    """The top-left 256 x 256 of the named training images (reflectance, (B, 12, H, W)): what the integer synthesis
    calibrates its activation scales on. Never a validation place (shipped models up to tec-ctx v1 calibrated on the
    bundled sample, validation place 0173706; the scales only bound activations, so their pixels are unaffected)."""
    from . import data

    root = Path(data_root) if data_root is not None else DEFAULT_DATA
    wanted = [n for n in names if not any(place in n for place in data.VALIDATION_PLACES)]
    try:
        images = [im for im in data.load_images(root) if im.name in wanted and im.place not in data.VALIDATION_PLACES]
    except FileNotFoundError as e:
        raise SystemExit(f"Expected the training data to calibrate the integer synthesis: {e} Pass --data.") from None
    if not images:
        raise SystemExit(f"Expected the checkpoint's training images under {root}. Got none of {wanted[:3]}... (pass --data).")
    return np.stack([im.reflectance[:, :256, :256] for im in images if min(im.reflectance.shape[1:]) >= 256])


def integer_synthesis(state: dict, folder: Path, inv_gain, mean, std, calibration: np.ndarray) -> synthesis.IntSynthesis:
    """Quantize the synthesis, its activation scales calibrated on ``calibration`` (training images, reflectance)
    through the new encoder."""
    import onnxruntime as ort

    cube = np.asarray(calibration, np.float32)
    normalized = (cube - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    with np.load(folder / "tables.npz") as tables:
        gain = tables["gain"]
    multiple = 2 ** synthesis.stages(state)
    h, w = normalized.shape[-2:]
    normalized = np.pad(normalized, ((0, 0), (0, 0), (0, -h % multiple), (0, -w % multiple)), mode="edge")
    session = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": normalized.astype(np.float32)})[0]
    latents = [np.rint(y * gain[q][None, :, None, None]) * np.asarray(inv_gain)[q][None, :, None, None]
               for q in range(gain.shape[0])]
    return synthesis.build(state, np.asarray(inv_gain), np.asarray(mean), np.asarray(std), latents)


def add_integer_synthesis(folder: Path, data_root: Path | None = None) -> None:
    """Give an exported model folder its ``synthesis_int.npz`` from decoder.onnx's initializers; update the manifest."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(folder / "decoder.onnx")).graph
    arrays = {t.name.removeprefix("model."): numpy_helper.to_array(t) for t in graph.initializer}
    state = {k: v for k, v in arrays.items() if k.startswith(("g_s.", "s_lin."))}
    with np.load(folder / "tables.npz") as t:
        manifest = json.loads((folder / "manifest.json").read_text())
        calibration = calibration_images(data_root, manifest["training"]["images"])
        built = integer_synthesis(state, folder, t["inv_gain"], t["mean"], t["std"], calibration)
    (folder / synthesis.FILENAME).write_bytes(built.to_npz())
    manifest["files"][synthesis.FILENAME] = sha256_file(folder / synthesis.FILENAME)
    manifest["sha256"] = model_digest(manifest["files"])
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def machine_description() -> str:
    import os

    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, Python {platform.python_version()}".replace("  ", " ")


def measure_into_manifest(folder: Path, data_root: Path, beside: str | None = None) -> None:
    """Measure RD per quality with the runtime codec on the validation places; write it into the manifest, with the
    installed model ``beside``'s bpp and PSNR next to it where given."""
    from ..models import clear_cache
    from . import data

    clear_cache()
    manifest = json.loads((folder / "manifest.json").read_text())
    _, val = data.split(data.load_images(Path(data_root)))
    crops = np.rint(data.validation_crops(val) * 1e4).astype(np.uint16)
    for q in manifest["qualities"]:
        bpp, psnr, _ = runtime_rd(manifest["name"], crops, q["quality"])
        q["validation"] = {"bpp": round(bpp, 4), "psnr": round(psnr, 3), "images": len(crops), "size": "12x256x256"}
        if beside is not None:
            other_bpp, other_psnr, _ = runtime_rd(beside, crops, q["quality"])
            q["validation"].update({f"{beside}_bpp": round(other_bpp, 4), f"{beside}_psnr": round(other_psnr, 3)})
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def runtime_rd(model: str, crops: np.ndarray, quality: int) -> tuple[float, float, list[np.ndarray]]:
    """Mean bpp (headers included) and mean PSNR of the runtime codec on ``crops`` (N, 12, H, W) DN, and the
    decoded crops."""
    from .. import metrics, pipeline

    bpps, psnrs, decoded = [], [], []
    for img in crops:
        enc = pipeline.encode_chunk(img, model=model, quality=quality, nodata=None)
        dec = pipeline.decode_chunk(enc)
        bpps.append(len(enc) * 8 / (img.shape[1] * img.shape[2]))
        psnrs.append(metrics.psnr(img, dec))
        decoded.append(dec)
    return float(np.mean(bpps)), float(np.mean(psnrs)), decoded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tec_zarr.train.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint, or with --synthesis-only an exported model folder")
    p.add_argument("--synthesis-only", action="store_true", help="only add synthesis_int.npz to an exported folder")
    p.add_argument("--name", default="tec-fp")
    p.add_argument("--version", default="1")
    p.add_argument("--out", type=Path, help="model folder (default: inside the package)")
    p.add_argument("--data", type=Path, help="shared data folder: calibrate the integer synthesis on the checkpoint's "
                   "training images and measure RD on the validation places (default calibration data: ../shared/data)")
    p.add_argument("--keep", type=Path, help="also write a slim checkpoint (no optimizer state) and the log here, e.g. "
                   "checkpoints/tec-fp-2 (training continues from it with a new optimizer)")
    p.add_argument("--decoder-of", metavar="MODEL", help="ship this installed model's decoder files, checked to hold "
                   "the checkpoint's synthesis (an encoder trained against its frozen synthesis: train.joint)")
    args = p.parse_args(argv)
    if args.synthesis_only:
        add_integer_synthesis(args.checkpoint, args.data)
        print(f"added {synthesis.FILENAME} to {args.checkpoint}")
        return 0
    if args.keep:
        loop.keep_checkpoint(args.checkpoint, args.keep)
    folder = export(args.checkpoint, args.name, args.version, args.out, args.data, decoder_of=args.decoder_of)
    print(f"exported {args.name} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
