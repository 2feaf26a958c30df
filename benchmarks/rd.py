"""Rate-distortion of every TEC quality level against the classical codecs a user would pick instead.

Default: the validation places of ../shared/data (never used in training), 8 images, 12 bands, 256 x 256;
``--images anchors`` runs all 20 SSL4EO-S12 L2A images, the set the project's anchor figures were measured on
(it includes training places: use it to check the classical codecs, not to judge TEC).
Writes benchmarks/results/rd[-anchors].json and .png, and regenerates the RD table in README.md (validation only).

    python benchmarks/rd.py [--data ../shared/data] [--images validation|anchors] [--codecs core|all] [--no-readme]
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import BenchCodec, all_codecs  # noqa: E402
from common import argument_parser, machine, publish, round_trips  # noqa: E402
from classical import classical_codecs  # noqa: E402
from quality import band_mse, bd_rate, spectral_angle_deg, ssim  # noqa: E402

from tec_zarr import metrics  # noqa: E402
from tec_zarr.train import data  # noqa: E402

TARGETS_DB = (35.0, 40.0, 45.0, 50.0)
REFERENCES = ("JPEG 2000 per band", "KLT + JPEG 2000")
# bpp for 40 / 45 / 50 dB measured for the issue tracker on the 20 SSL4EO-S12 L2A tiles of ``--images anchors``
# (top-left 256 x 256). They are in the paper's "10k" metric (psnr_10k below), not the project's: the harness
# reproduces them only there (within 1 % for JPEG 2000 and KLT + JPEG 2000, 2 % for SPERR, 7 % for AVIF, 5 % for
# JPEG XL at 50 dB; see benchmarks/results/rd-anchors.json). The data carry no +1000 offset, so the 10k metric
# clips every DN below 1000 to 0 and ignores its error: at equal bits it reads 0.8-1.6 dB higher, and the same
# PSNR takes 10-23 % fewer bits. Our own claims use the project's metric.
ANCHORS = {
    "JPEG 2000 per band": (3.08, 5.97, 10.02), "KLT + JPEG 2000": (1.37, 3.84, 8.69), "SPERR-3D": (1.39, 4.11, 8.99),
    "AVIF 12-bit": (2.18, 4.73, 8.67), "JPEG XL per band": (2.68, 5.67, 10.69),
}


def benchmark_images(root: Path, which: str) -> tuple[np.ndarray, list[str]]:
    images = data.load_images(root)
    chosen = data.split(images)[1] if which == "validation" else [im for im in images if im.name.startswith("ssl4eos12")]
    crops = np.rint(data.validation_crops(chosen) * 1e4).astype(np.uint16)
    return crops, [im.name for im in chosen]


def psnr_10k(original: np.ndarray, decoded: np.ndarray) -> float:
    """The paper's (TerraCodec's) "10k" PSNR: DN - 1000 clipped to [0, 10000], peak 10000, per image.

    It assumes L2A data with the +1000 BOA offset of processing baseline 04.00; on offset-free data like ours it
    hides the error of every DN below 1000 (most of B01-B05 over land, all water). For comparisons with paper
    figures only.
    """
    a = np.clip(np.asarray(original, np.float64) - 1000.0, 0, metrics.PEAK)
    b = np.clip(np.asarray(decoded, np.float64) - 1000.0, 0, metrics.PEAK)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(metrics.PEAK**2 / mse))


def measure(codec: BenchCodec, setting, images: np.ndarray) -> dict:
    bpps, psnrs, psnrs_10k, errs, ssims, sams, mses = [], [], [], [], [], [], []
    t_enc = t_dec = 0.0
    for img, enc, dec, te, td in round_trips(codec, setting, images):
        t_enc += te
        t_dec += td
        bpps.append(metrics.bpp(len(enc), img.shape[1], img.shape[2]))
        psnrs.append(metrics.psnr(img, dec))
        psnrs_10k.append(psnr_10k(img, dec))
        errs.append(metrics.max_error(img, dec))
        ssims.append(ssim(img, dec))
        sams.append(spectral_angle_deg(img, dec))
        mses.append(band_mse(img, dec))
    raw_mb = images.nbytes / 1e6
    return {
        "setting": setting,
        "bpp": float(np.mean(bpps)),
        "psnr": float(np.mean(psnrs)),
        "psnr_10k": float(np.mean(psnrs_10k)),
        "max_error": float(np.max(errs)),
        "ssim": float(np.mean(ssims)),
        "sam_deg": float(np.mean(sams)),
        "band_mse": [float(v) for v in np.mean(mses, axis=0)],
        "encode_MBps": raw_mb / t_enc,
        "decode_MBps": raw_mb / t_dec,
        "per_image": {"bpp": bpps, "psnr": psnrs, "psnr_10k": psnrs_10k},
    }


def _interp_log_bpp(pairs: list[tuple[float, float]], target: float) -> float | None:
    pts = sorted(pairs)
    for (p0, b0), (p1, b1) in zip(pts, pts[1:]):
        if p0 <= target <= p1 and p1 > p0:
            w = (target - p0) / (p1 - p0)
            return float(np.exp((1 - w) * np.log(b0) + w * np.log(b1)))
    return None


def bpp_at(points: list[dict], target: float, key: str = "psnr") -> float | None:
    """bpp needed for ``target`` dB on the set's mean RD curve; None outside it.

    Each setting gives one point (mean bpp, mean PSNR over the images), and log(bpp) is interpolated linearly in
    PSNR between neighbouring settings. This is one fixed codec setting for the whole set, which is how codecs
    are deployed (and how the anchor figures were made). Per-image interpolation (``bpp_at_per_image``) instead
    assumes a rate control that hits the target on every image; on the anchor set it reads -1 to +18 % against
    the mean curve (mostly higher), and it cannot answer once one image falls outside the sweep.
    """
    return _interp_log_bpp([(p[key], p["bpp"]) for p in points], target)


def bpp_at_per_image(points: list[dict], target: float, key: str = "psnr") -> float | None:
    """Mean over images of each image's own bpp at ``target`` dB; None if any image's sweep misses it."""
    n = len(points[0]["per_image"]["bpp"])
    per = [_interp_log_bpp([(p["per_image"][key][i], p["per_image"]["bpp"][i]) for p in points], target)
           for i in range(n)]
    return None if any(v is None for v in per) else float(np.mean(per))


def sweep_MBps(points: list[dict], which: str) -> float:
    """Raw MB over the whole sweep / the time it took (the harmonic mean of the points' rates)."""
    return float(len(points) / sum(1.0 / p[f"{which}_MBps"] for p in points))


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


def anchor_table(results: dict) -> str:
    """Ours against the issue tracker's anchor figures, in the anchors' (paper 10k) metric and in ours."""
    lines = ["| codec | 10k metric: ours @ 40 / 45 / 50 dB | anchor | ours / anchor | project metric: ours "
             "@ 40 / 45 / 50 dB | per image, project metric | encode / decode MB/s (sweep) |",
             "|---|---|---|---|---|---|---|"]
    for c in results["codecs"]:
        anchor = c.get("anchor_bpp_at_40_45_50")
        ours = [c["bpp_at_10k"][t] for t in ("40", "45", "50")]
        ratio = ("—" if anchor is None else
                 " / ".join("—" if o is None else f"{o / a:.2f}" for o, a in zip(ours, anchor)))
        lines.append(
            f"| {c['name']} | {' / '.join(_fmt(v) for v in ours)} | "
            f"{'—' if anchor is None else ' / '.join(f'{v:.2f}' for v in anchor)} | {ratio} | "
            f"{' / '.join(_fmt(c['bpp_at'][t]) for t in ('40', '45', '50'))} | "
            f"{' / '.join(_fmt(c['bpp_at_per_image'][t]) for t in ('40', '45', '50'))} | "
            f"{c['encode_MBps']:.1f} / {c['decode_MBps']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argument_parser(__doc__, HERE / "results")
    p.add_argument("--images", choices=("validation", "anchors"), default="validation")
    p.add_argument("--codecs", choices=("core", "all"), default="all",
                   help="core: TEC, JPEG 2000 per band, KLT + JPEG 2000; all: every classical codec too")
    p.add_argument("--no-tec", action="store_true", help="classical codecs only")
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
        "metric": "PSNR = 10 log10(10000^2 / MSE), DN clipped to [0, 10000], per image, mean over images; "
                  "psnr_10k: the paper's 10k metric, DN - 1000 clipped to [0, 10000] (the data carry no +1000 "
                  "offset, so it hides the error of every DN below 1000 and reads 0.8-1.6 dB higher); "
                  "bpp_at*: log-bpp interpolated on the mean curve over images, *_per_image: per image, then mean",
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
            print(f"{codec.name:<26} {setting!s:>5}  {point['bpp']:7.3f} bpp  {point['psnr']:6.2f} dB  "
                  f"({point['psnr_10k']:6.2f} dB 10k)", flush=True)
        results["codecs"].append({
            "name": codec.name, "family": codec.family, "points": points,
            "bpp_at": {f"{t:.0f}": bpp_at(points, t) for t in TARGETS_DB},
            "bpp_at_10k": {f"{t:.0f}": bpp_at(points, t, "psnr_10k") for t in TARGETS_DB},
            "bpp_at_per_image": {f"{t:.0f}": bpp_at_per_image(points, t) for t in TARGETS_DB},
            "bpp_at_10k_per_image": {f"{t:.0f}": bpp_at_per_image(points, t, "psnr_10k") for t in TARGETS_DB},
            "encode_MBps": sweep_MBps(points, "encode"), "decode_MBps": sweep_MBps(points, "decode"),
            "anchor_bpp_at_40_45_50": ANCHORS.get(codec.name),
        })
    curves = {c["name"]: [(pt["bpp"], pt["psnr"]) for pt in c["points"]] for c in results["codecs"]}
    for c in results["codecs"]:
        c["bd_rate_percent"] = {ref: bd_rate(curves[ref], curves[c["name"]]) for ref in REFERENCES if ref in curves}
    suffix = "" if args.images == "validation" else f"-{args.images}"
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / f"rd{suffix}.png")
    publish("rd", results, args.out / f"rd{suffix}.json", table(results),
            not args.no_readme and args.images == "validation")
    if args.images == "anchors":
        print(anchor_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
