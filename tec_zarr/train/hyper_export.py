"""Export a hyperprior checkpoint (``python -m tec_zarr.train.hyper``) as a shipped model beside its base model.

``python -m tec_zarr.train.hyper_export runs/hp/checkpoint.pt --name tec-hp --data ../shared/data``

The folder gets the base model's ``encoder.onnx``, ``decoder.onnx``, ``tables.npz`` and ``synthesis_int.npz``
byte for byte (same transforms, gains and symbols, so the same pixels), plus ``hyper_analysis.onnx`` (encoder side,
float) and ``hyperprior.npz`` (the integer hyper-synthesis, integer log-gains and gains, factorized z tables and
the Gaussian scale tables, all built here once in float64; see :mod:`tec_zarr.entropy.hyperprior`). With ``--data`` the
manifest gets bpp and PSNR per quality measured with the runtime codec on the validation places, beside the base
model's on the same images.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..entropy import hyperprior
from ..entropy.tables import EntropyTables, quantize_pmf
from ..errors import UnknownModelError
from ..integer.layers import CLIP_BITS, conv3, conv_matrix, deconv, deconv_matrix
from ..integer.synthesis import scale_exponent
from ..models import MODELS_DIR, get_card, model_digest
from ..models.registry import file_path, share_files
from .export import entropy_tables, export_onnx, machine_description, require_one_synthesis, runtime_rd, sha256_file
from . import loop
from .hyper import HyperConfig, HyperPrior, base_model

_erfc = np.vectorize(math.erfc, otypes=[np.float64])  # float64, once at export


def erfc(x):
    return _erfc(x) if np.ndim(x) else math.erfc(x)


BASE_FILES = ("encoder.onnx", "decoder.onnx", "tables.npz", "synthesis_int.npz")
MAX_HALF_WIDTH = 1023  # scale tables hold -R..R with R <= this (2047 symbols + escape); beyond, escapes
TAIL_SIGMAS = 5.0  # R = ceil(5 sigma): tail mass ~6e-7


def load_checkpoint(path: Path) -> tuple[HyperPrior, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = HyperConfig.from_dict(ckpt["config"])
    net = HyperPrior(cfg, ckpt["model"]["gain"].numpy())
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


class _Analysis(torch.nn.Module):
    def __init__(self, net: HyperPrior):
        super().__init__()
        self.h_a = net.h_a

    def forward(self, y):
        return self.h_a(y)


def _layers(net: HyperPrior) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, float64 matrix, bias) of h_s's three layers, in the integer module's layouts."""
    out = []
    for layer in (net.h_s[0], net.h_s[2], net.h_s[4]):
        w = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        if isinstance(layer, torch.nn.ConvTranspose2d):
            out.append(("deconv", deconv_matrix(w), b))
        else:
            out.append(("conv3", conv_matrix(w), b))
    return out


def _float_synthesis(layers, x: np.ndarray, record: list | None = None) -> np.ndarray:
    """The float64 h_s on channels-last z_hat (dequantized); ``record`` collects each layer's max |input|."""
    for i, (kind, w, b) in enumerate(layers):
        if record is not None:
            record.append((i, float(np.abs(x).max())))
        x = conv3(x, w, b, np.matmul) if kind == "conv3" else deconv(x, w, b, 16, np.matmul)
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def scale_tables(cfg: HyperConfig, log_sigma_min: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer tables of zero-mean discretized Gaussians, sigma_i = 2**(log_sigma_min / 2**LOG_BITS + i / steps)."""
    rows, offsets, lengths = [], [], []
    for i in range(cfg.tables):
        sigma = 2.0 ** (log_sigma_min / 2**hyperprior.LOG_BITS + i / cfg.steps_per_octave)
        r = min(max(1, math.ceil(TAIL_SIGMAS * sigma)), MAX_HALF_WIDTH)
        v = np.abs(np.arange(-r, r + 1, dtype=np.float64))
        c = 1.0 / (sigma * math.sqrt(2.0))
        p = 0.5 * (erfc((v - 0.5) * c) - erfc((v + 0.5) * c))
        tail = float(erfc((r + 0.5) * c))  # both sides
        counts = quantize_pmf(p, max(tail, 1e-9))
        rows.append(counts)
        offsets.append(-r)
        lengths.append(len(counts))
    pmf = np.zeros((cfg.tables, max(lengths)), np.int64)
    for i, row in enumerate(rows):
        pmf[i, : len(row)] = row
    return np.asarray(offsets, np.int64), pmf, np.asarray(lengths, np.int64)


def build(net: HyperPrior, calibration: np.ndarray, mean_bits: int = hyperprior.LOG_BITS) -> hyperprior.Hyperprior:
    """Quantize the float h_s; ``calibration``: training latents y (N, M, h, w) whose z fix the activation scales.
    ``mean_bits``: fixed-point bits of the mean (the context model's means need finer steps)."""
    cfg = net.cfg
    layers = _layers(net)
    z_gain = torch.exp2(net.z_log_gain).detach().double().numpy()  # (Q, Z)
    record: list = []
    with torch.no_grad():
        t = net.h_a(torch.from_numpy(np.ascontiguousarray(calibration, np.float32))).double().numpy()
    for q in range(cfg.qualities):
        zq = np.rint(t * z_gain[q][None, :, None, None])
        _float_synthesis(layers, np.moveaxis(zq / z_gain[q][None, :, None, None], 1, -1), record)
    peaks = [max(v for i, v in record if i == k) for k in range(len(layers))]
    act = [scale_exponent(p, hyperprior.CALIBRATION_BITS) for p in peaks]
    clip = 2.0**CLIP_BITS
    weights, biases, shifts = [], [], []
    for i, (kind, w, b) in enumerate(layers):
        out_scale = act[i + 1] if i + 1 < len(layers) else hyperprior.LOG_BITS
        colsum = (np.abs(w).sum(axis=(0, 1)) if kind == "conv3"
                  else np.abs(w).reshape(w.shape[0], 25, -1).sum(axis=(0, 1))).max()
        worst = colsum * clip + np.abs(b).max() * 2.0 ** act[i]
        wexp = min(scale_exponent(worst, 51), 40)
        weights.append(np.rint(w * 2.0**wexp))
        biases.append(np.rint(b * 2.0 ** (wexp + act[i])))
        shifts.append(wexp + act[i] - out_scale)
    gain = net.gain.detach().double().numpy()
    scale = 2**hyperprior.LOG_BITS
    log_gain = np.rint(np.maximum(np.log2(np.maximum(np.abs(gain), 1e-30)), hyperprior.LOG_GAIN_FLOOR) * scale)
    log_sigma_min = int(round(math.log2(cfg.sigma_min) * scale))
    offsets, pmf, lengths = scale_tables(cfg, log_sigma_min)
    zt = entropy_tables(SimpleNamespace(gain=torch.zeros(cfg.qualities, cfg.z_channels), densities=net.densities))
    return hyperprior.Hyperprior(
        z_in=np.rint(2.0 ** (act[0] + hyperprior.INPUT_EXTRA_BITS) / z_gain).astype(np.int64),
        weights=tuple(weights), biases=tuple(biases), shifts=tuple(shifts),
        log_gain=log_gain.astype(np.int64),
        gain_int=np.rint(gain * 2**hyperprior.GAIN_BITS).astype(np.int64),
        log_sigma_min=log_sigma_min, steps_per_octave=cfg.steps_per_octave,
        scale_offsets=offsets, scale_pmf=pmf, scale_lengths=lengths,
        z_tables=EntropyTables(offsets=zt["offsets"], pmf=zt["pmf"].astype(np.int64), lengths=zt["lengths"]),
        z_gain=z_gain.astype(np.float32),
        mean_bits=mean_bits,
    )


def write_model(hyper_net: HyperPrior, ckpt: dict, checkpoint: Path, name: str, version: str, out_dir: Path | None,
                run_dir: Path | None, *, manifest: dict, training: dict, mean_bits: int = hyperprior.LOG_BITS,
                more_files=None, calibration_crops: int = 64) -> tuple[Path, Path]:
    """A model folder of a hyperprior-based entropy model: the base model's files byte for byte, the
    hyper-analysis graph, ``hyperprior.npz``, ``more_files(calibration) -> {filename: bytes}`` and the manifest
    (``manifest`` and ``training`` entries added; ``{base}`` in the architecture names the base model)."""
    info = ckpt["latents"]
    base = get_card(info["base"])
    if base.sha256 != info["base_sha256"]:
        raise SystemExit(f"{checkpoint} was trained on another {info['base']} ({info['base_sha256'][:16]}...)")
    base_gain = base_model(info["base"]).gain
    if not np.array_equal(hyper_net.gain.numpy(), np.asarray(base_gain, np.float32)):
        raise SystemExit(f"{checkpoint} holds other latent gains than {info['base']}'s: it was trained with another "
                         "base's symbols (continue it on this base with a trainer that keeps the base's gains)")
    require_one_synthesis(base)
    folder = Path(out_dir) if out_dir else MODELS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in BASE_FILES:
        shutil.copyfile(file_path(base, f), folder / f)
    run_dir = Path(run_dir) if run_dir else Path(checkpoint).parent
    latents = np.load(run_dir / "latents.npy", mmap_mode="r")
    calibration = np.array(latents[:calibration_crops], np.float32)
    with torch.no_grad():
        export_onnx(_Analysis(hyper_net), torch.from_numpy(calibration[:1]), "y", "t",
                    folder / hyperprior.ANALYSIS_FILENAME)
    written = {hyperprior.FILENAME: build(hyper_net, calibration, mean_bits).to_npz()}
    written.update(more_files(calibration) if more_files else {})
    for f, data in written.items():
        (folder / f).write_bytes(data)
    files = {f: sha256_file(folder / f) for f in (*BASE_FILES, hyperprior.ANALYSIS_FILENAME, *written)}
    out = {k: v for k, v in base.manifest.items() if k not in ("files", "sha256", "exported", "qualities")}
    out.update({
        "name": name,
        "version": version,
        **manifest,
        "architecture": manifest["architecture"].format(base=base.name),
        "base_model": {"name": base.name, "sha256": base.sha256},
        "hyperprior": hyper_net.cfg.to_dict(),
        "multiple": 16,
        "latent_stride": base.manifest.get("latent_stride", base.manifest["multiple"]),
        "qualities": [{"quality": q["quality"], "lambda": q.get("lambda")} for q in base.manifest["qualities"]],
        "training": {
            "base_training": base.manifest.get("training"),
            **training,
            "batch": ckpt.get("batch"),
            "crops": info["crops"], "crop": info["crop"], "images": info["train_images"],
            "validation_places": info["validation_places"],
            "data": (base.manifest.get("training") or {}).get("data"),
        },
        "exported": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_description()},
        "files": files,
        "sha256": model_digest(files),
        "default_quality": base.manifest.get("default_quality", 2),
    })
    (folder / "manifest.json").write_text(json.dumps(out, indent=1) + "\n")
    if folder.parent.resolve() == MODELS_DIR.resolve():
        share_files(MODELS_DIR)  # the base model's files are shipped once
    return folder, run_dir


def export(checkpoint: Path, name: str, version: str, out_dir: Path | None, run_dir: Path | None,
           data_root: Path | None, calibration_crops: int = 64) -> Path:
    net, ckpt = load_checkpoint(checkpoint)
    folder, run_dir = write_model(
        net, ckpt, checkpoint, name, version, out_dir, run_dir, calibration_crops=calibration_crops,
        manifest={"architecture": "hyperprior entropy model on {base}'s frozen transforms and gains (same symbols "
                                  "and pixels): ReLU conv h_a (float, encoder side) -> z (1/16 resolution), integer "
                                  "h_s -> log2 sigma and mean of each latent, integer Gaussian scale tables",
                  "entropy_model": hyperprior.ENTROPY_MODEL},
        training={"hyperprior_steps": int(ckpt["step"])})
    if (run_dir / "val_latents.npy").exists():
        integer_penalty(net, folder, np.load(run_dir / "val_latents.npy"))
    if data_root is not None:
        measure(folder, data_root, ckpt["latents"]["base"])
    return folder


def integer_penalty(net, folder: Path, y: np.ndarray) -> None:
    """Bits of the float model (continuous sigma, float h_s) against the coded integer path, same latents."""
    from ..models import clear_cache, load_model

    clear_cache()
    manifest = json.loads((folder / "manifest.json").read_text())
    try:
        model = load_model(manifest["name"])
    except UnknownModelError:  # exported outside the package and TEC_ZARR_MODEL_PATH
        return
    if model.card.folder.resolve() != folder.resolve():
        return
    pixels = y.shape[0] * y.shape[2] * y.shape[3] * 16
    rows = []
    for q in range(model.gain.shape[0]):
        with torch.no_grad():
            out = net(torch.from_numpy(y), torch.full((y.shape[0],), q, dtype=torch.int64), noise=False)
        float_bpp = float((out["bits_y"] + out["bits_z"]).sum()) / pixels
        symbols = np.rint(y * model.gain[q][None, :, None, None]).astype(np.int32)
        coded = sum(len(model.coder.encode(y[i : i + 1], symbols[i : i + 1], q)) for i in range(len(y)))
        rows.append({"quality": q, "float_model_bpp": round(float_bpp, 4), "coded_bpp": round(coded * 8 / pixels, 4),
                     "integer_penalty": round(coded * 8 / pixels / float_bpp - 1, 4)})
        print(json.dumps(rows[-1]), flush=True)
    manifest["integer_path"] = {"latents": "validation crops (no chunk headers)", "qualities": rows}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def measure(folder: Path, data_root: Path, base_name: str) -> None:
    """bpp/PSNR per quality with the runtime codec on the validation places, beside the base model's."""
    from ..models import clear_cache
    from . import data

    clear_cache()
    manifest = json.loads((folder / "manifest.json").read_text())
    _, val = data.split(data.load_images(Path(data_root)))
    crops = np.rint(data.validation_crops(val) * 1e4).astype(np.uint16)
    for q in manifest["qualities"]:
        rows = {name: runtime_rd(name, crops, q["quality"]) for name in (manifest["name"], base_name)}
        own, ref = rows[manifest["name"]], rows[base_name]
        same = all(np.array_equal(a, b) for a, b in zip(own[2], ref[2]))
        q["validation"] = {"bpp": round(own[0], 4), "psnr": round(own[1], 3), "images": len(crops),
                           "size": "12x256x256", f"{base_name}_bpp": round(ref[0], 4),
                           "rate_saving": round(1 - own[0] / ref[0], 4), "same_pixels_as_base": same}
        print(json.dumps(q), flush=True)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    return command_line(argv, "python -m tec_zarr.train.hyper_export", __doc__, "tec-hp", export)


def command_line(argv: list[str] | None, prog: str, doc: str, name: str, export) -> int:
    """The command line of every exporter of this shape: ``export(checkpoint, name, version, out, run, data)``."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name", default=name)
    p.add_argument("--version", default="1")
    p.add_argument("--out", type=Path, help="model folder (default: inside the package)")
    p.add_argument("--run", type=Path, help="run directory with latents.npy (default: the checkpoint's folder)")
    p.add_argument("--data", type=Path, help="shared data folder: measure RD on the validation places")
    p.add_argument("--keep", type=Path, help="also write a slim checkpoint (no optimizer state) and the log here, "
                                             f"e.g. checkpoints/{name} (training resumes from it with a new optimizer)")
    args = p.parse_args(argv)
    if args.keep:
        loop.keep_checkpoint(args.checkpoint, args.keep)
    folder = export(args.checkpoint, args.name, args.version, args.out, args.run, args.data)
    print(f"exported {args.name} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
