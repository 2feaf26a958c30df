"""Rate-distortion of every TEC quality level against the classical codecs a user would pick instead.

Default: the validation places of ../shared/data (never used in training), 8 images, 12 bands, 256 x 256;
``--images anchors`` runs all 20 SSL4EO-S12 L2A images, the set the project's anchor figures were measured on
(it includes training places: use it to check the classical codecs, not to judge TEC).
Writes benchmarks/results/rd[-anchors].json and .png, and regenerates the RD table in README.md (validation only).

    python benchmarks/rd.py [--data ../shared/data] [--images validation|anchors] [--codecs core|all] [--no-readme]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from baselines import BenchCodec, all_codecs  # noqa: E402
from common import machine, round_trips, update_readme  # noqa: E402
from classical import classical_codecs  # noqa: E402
from quality import band_mse, bd_rate, spectral_angle_deg, ssim  # noqa: E402

from tec_zarr import metrics  # noqa: E402
from tec_zarr.train import data  # noqa: E402

TARGETS_DB = (35.0, 40.0, 45.0, 50.0)
REFERENCES = ("JPEG 2000 per band", "KLT + JPEG 2000")
# bpp for 40 / 45 / 50 dB measured for the issue tracker on 20 SSL4EO-S12 L2A tiles (no offset in the data).
ANCHORS = {
    "JPEG 2000 per band": (3.08, 5.97, 10.02), "KLT + JPEG 2000": (1.37, 3.84, 8.69), "SPERR-3D": (1.39, 4.11, 8.99),
    "AVIF 12-bit": (2.18, 4.73, 8.67), "JPEG XL per band": (2.68, 5.67, 10.69),
}


def benchmark_images(root: Path, which: str) -> tuple[np.ndarray, list[str]]:
    images = data.load_images(root)
    chosen = data.split(images)[1] if which == "validation" else [im for im in images if im.name.startswith("ssl4eos12")]
    crops = np.rint(data.validation_crops(chosen) * 1e4).astype(np.uint16)
    return crops, [im.name for im in chosen]


def measure(codec: BenchCodec, setting, images: np.ndarray) -> dict:
    bpps, psnrs, errs, ssims, sams, mses = [], [], [], [], [], []
    t_enc = t_dec = 0.0
    for img, enc, dec, te, td in round_trips(codec, setting, images):
        t_enc += te
        t_dec += td
        bpps.append(metrics.bpp(len(enc), img.shape[1], img.shape[2]))
        psnrs.append(metrics.psnr(img, dec))
        errs.append(metrics.max_error(img, dec))
        ssims.append(ssim(img, dec))
        sams.append(spectral_angle_deg(img, dec))
        mses.append(band_mse(img, dec))
    raw_mb = images.nbytes / 1e6
    return {
        "setting": setting,
        "bpp": float(np.mean(bpps)),
        "psnr": float(np.mean(psnrs)),
        "max_error": float(np.max(errs)),
        "ssim": float(np.mean(ssims)),
        "sam_deg": float(np.mean(sams)),
        "band_mse": [float(v) for v in np.mean(mses, axis=0)],
        "encode_MBps": raw_mb / t_enc,
        "decode_MBps": raw_mb / t_dec,
    }


def bpp_at(points: list[dict], target: float) -> float | None:
    """bpp needed for ``target`` dB: log-linear interpolation on the codec's RD curve; None outside it."""
    pts = sorted((p["psnr"], p["bpp"]) for p in points)
    for (p0, b0), (p1, b1) in zip(pts, pts[1:]):
        if p0 <= target <= p1 and p1 > p0:
            w = (target - p0) / (p1 - p0)
            return float(np.exp((1 - w) * np.log(b0) + w * np.log(b1)))
    return None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for c in results["codecs"]:
        pts = sorted(c["points"], key=lambda p: p["bpp"])
        style = "o-" if c["family"] == "TEC" else "s--"
        ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], style, label=c["name"])
    ax.set_xscale("log")
    ax.set_xlabel("bpp (all 12 bands, headers included)")
    ax.set_ylabel("PSNR dB (10 log10(10000² / MSE))")
    ax.set_title(f"Sentinel-2 L2A, {results['images']} unseen 256×256 patches")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def table(results: dict) -> str:
    head = ("| codec | " + " | ".join(f"bpp @ {t:.0f} dB" for t in TARGETS_DB)
            + " | BD-rate vs J2K per band | BD-rate vs KLT+J2K |")
    lines = [head, "|---|" + "---:|" * (len(TARGETS_DB) + 2)]
    for c in results["codecs"]:
        cells = [_fmt(c["bpp_at"][f"{t:.0f}"]) for t in TARGETS_DB]
        bd = c.get("bd_rate_percent", {})
        cells += [_fmt(bd.get(ref), "+.1f") + ("%" if bd.get(ref) is not None else "") for ref in REFERENCES]
        lines.append(f"| {c['name']} | " + " | ".join(cells) + " |")
    rows = ["", "| TEC quality | bpp | PSNR dB | SSIM | SAM ° | max error | encode MB/s | decode MB/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in results["codecs"]:
        if c["family"] != "TEC":
            continue
        for p in c["points"]:
            rows.append(f"| {c['name']} q{p['setting']} | {p['bpp']:.3f} | {p['psnr']:.2f} | {p['ssim']:.4f} | "
                        f"{p['sam_deg']:.2f} | {p['max_error']:.0f} | {p['encode_MBps']:.1f} | {p['decode_MBps']:.1f} |")
    note = (f"\nMeasured by `benchmarks/rd.py` on {results['machine']}, {results['date']}: {results['images']} "
            f"images ({', '.join(sorted(set(results['places'])))}; {results['image_set']} set). "
            "bpp at a PSNR is interpolated on each codec's RD curve (— : outside the range it reaches); BD-rate "
            "(Bjøntegaard, cubic fit, over the PSNR range both curves cover): negative = fewer bits. "
            "MB/s: raw uint16 per second, one thread.")
    return "\n".join(lines + rows) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--images", choices=("validation", "anchors"), default="validation")
    p.add_argument("--codecs", choices=("core", "all"), default="all",
                   help="core: TEC, JPEG 2000 per band, KLT + JPEG 2000; all: every classical codec too")
    p.add_argument("--no-tec", action="store_true", help="classical codecs only")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args(argv)

    from tec_zarr import runtime

    runtime.configure(intra_op_threads=1)
    images, names = benchmark_images(args.data, args.images)
    results = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "image_set": args.images,
        "images": len(images),
        "names": names,
        "places": [n.split("_")[2] for n in names],
        "metric": "PSNR = 10 log10(10000^2 / MSE), DN clipped to [0, 10000], per image, mean over images "
                  "(the data carry no +1000 offset, so the paper's 10k metric gives the same numbers)",
        "codecs": [],
    }
    codecs = all_codecs() + (classical_codecs() if args.codecs == "all" else [])
    if args.no_tec:
        codecs = [c for c in codecs if c.family != "TEC"]
    for codec in codecs:
        points = []
        for setting in codec.settings():
            point = measure(codec, setting, images)
            points.append(point)
            print(f"{codec.name:<26} {setting!s:>5}  {point['bpp']:7.3f} bpp  {point['psnr']:6.2f} dB", flush=True)
        results["codecs"].append({
            "name": codec.name, "family": codec.family, "points": points,
            "bpp_at": {f"{t:.0f}": bpp_at(points, t) for t in TARGETS_DB},
            "anchor_bpp_at_40_45_50": ANCHORS.get(codec.name),
        })
    curves = {c["name"]: [(pt["bpp"], pt["psnr"]) for pt in c["points"]] for c in results["codecs"]}
    for c in results["codecs"]:
        c["bd_rate_percent"] = {ref: bd_rate(curves[ref], curves[c["name"]]) for ref in REFERENCES if ref in curves}
    suffix = "" if args.images == "validation" else f"-{args.images}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rd{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / f"rd{suffix}.png")
    text = table(results)
    print(text)
    if not args.no_readme and args.images == "validation":
        update_readme("rd", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
