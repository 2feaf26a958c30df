"""Lossless and error-bounded rate: TEC's learned base + coded residual against the codecs that guarantee a bound.

E = 0: TEC lossless vs JPEG XL, JPEG 2000 (reversible), JPEG-LS, pcodec, blosc2/zstd and zstd.
E in 1..100 DN: TEC max_error=E vs LERC (maxZError), SZ3 (absolute), zfp (accuracy) and JPEG-LS near-lossless.
Every decoded image is checked against its bound (a codec that breaks it is reported, not hidden).
Images: the validation places of ../shared/data (never used in training), 12 bands, 256 x 256, DN uint16.
Writes benchmarks/results/bounded.json and .png.

    python benchmarks/bounded.py [--data ../shared/data] [--images 8] [--qualities 0 2] [--bounds 0 1 2 5 ...]
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import BenchCodec  # noqa: E402
from common import argument_parser, machine, publish, round_trips  # noqa: E402
from bounded_codecs import BOUNDS, bounded_codecs  # noqa: E402

from tec_zarr import metrics  # noqa: E402


def validation_images(root: Path, n: int) -> tuple[np.ndarray, list[str]]:
    from tec_zarr.train import data

    chosen = data.split(data.load_images(root))[1]
    crops = np.rint(data.validation_crops(chosen) * 1e4).astype(np.uint16)
    return crops[:n], [im.name for im in chosen]


def measure(codec: BenchCodec, bound, images: np.ndarray) -> dict:
    bpps, psnrs, errs = [], [], []
    t_enc = t_dec = 0.0
    for img, enc, dec, te, td in round_trips(codec, bound, images):
        t_enc, t_dec = t_enc + te, t_dec + td
        bpps.append(metrics.bpp(len(enc), img.shape[1], img.shape[2]))
        psnrs.append(metrics.psnr(img, dec))
        errs.append(metrics.max_error(img, dec))
    raw_mb = images.nbytes / 1e6
    return {"max_error": bound, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs)),
            "measured_max_error": float(np.max(errs)), "bound_held": bool(np.max(errs) <= bound),
            "encode_MBps": raw_mb / t_enc, "decode_MBps": raw_mb / t_dec}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for c in results["codecs"]:
        pts = [p for p in c["points"] if p["bound_held"]]
        if not pts:
            continue
        xs = [max(p["max_error"], 0.5) for p in pts]  # E = 0 drawn at 0.5 on the log axis
        ax.plot(xs, [p["bpp"] for p in pts], "o-" if c["family"] == "TEC" else "s--", label=c["name"])
    ax.set_xscale("log")
    ax.set_xlabel("max error E (DN; lossless drawn at 0.5)")
    ax.set_ylabel("bpp (all 12 bands, headers included)")
    ax.set_title(f"Guaranteed-error coding, {results['images']} unseen Sentinel-2 patches")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: dict) -> str:
    bounds = results["bounds"]
    lines = ["| codec | " + " | ".join(f"E={e}" for e in bounds) + " |", "|---|" + "---:|" * len(bounds)]
    for c in results["codecs"]:
        by = {p["max_error"]: p for p in c["points"]}
        cells = []
        for e in bounds:
            p = by.get(e)
            cells.append("—" if p is None else f"{p['bpp']:.2f}" + ("" if p["bound_held"] else " (broke)"))
        lines.append(f"| {c['name']} | " + " | ".join(cells) + " |")
    lines += ["", "| codec | encode MB/s | decode MB/s |", "|---|---:|---:|"]
    for c in results["codecs"]:  # one thread, raw uint16 per second, averaged over the bounds the codec ran
        enc = np.mean([p["encode_MBps"] for p in c["points"]])
        dec = np.mean([p["decode_MBps"] for p in c["points"]])
        lines.append(f"| {c['name']} | {enc:.1f} | {dec:.1f} |")
    return "\n".join(lines)


def readme_text(results: dict) -> str:
    return table(results) + (f"\n\nMeasured by `benchmarks/bounded.py` on {results['machine']}, {results['utc'][:10]}: "
                             f"{results['images']} validation images, never used in training; MB/s single-threaded.")


def main(argv: list[str] | None = None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "bounded")
    p.add_argument("--images", type=int, default=8,
                   help="validation crops to use (default 8: both unseen places, 4 dates each; a ~6 min run)")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 2], help="TEC base quality levels")
    p.add_argument("--bounds", type=int, nargs="+", default=list(BOUNDS))
    args = p.parse_args(argv)
    images, names = validation_images(args.data, args.images)
    results = {"machine": machine(), "images": len(images), "image_names": names[: len(images)],
               "size": list(images.shape[1:]),
               "bounds": args.bounds, "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "codecs": []}
    for codec in bounded_codecs(tuple(args.qualities)):
        settings = [e for e in codec.settings() if e in args.bounds]
        points = []
        for e in settings:
            try:
                points.append(measure(codec, e, images))
            except Exception as err:  # a baseline missing from this imagecodecs build: note it, go on
                print(f"{codec.name} E={e}: {type(err).__name__}: {err}", file=sys.stderr)
                break
            print(f"{codec.name:28s} E={e:<4} bpp {points[-1]['bpp']:7.3f}  PSNR {points[-1]['psnr']:6.2f}"
                  f"  max err {points[-1]['measured_max_error']:g}", flush=True)
        results["codecs"].append({"name": codec.name, "family": codec.family, "points": points})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.out.with_suffix(".png"))
    publish("bounded", results, args.out.with_suffix(".json"), readme_text(results), not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
