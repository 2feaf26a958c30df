"""What the encoder's symbol search (``refine=N``) buys: the same models and decoder, fewer bits at the same PSNR.

Per set and model, the mean RD curve over the quality levels with rounded symbols (``refine=0``) and with each
number of rounds of the search, the bits at 40 / 45 / 50 dB (the project's PSNR) and their ratio, KLT + JPEG 2000
on the same images (issue 14's criterion: below 1), and the encode times in this run (their ratio; the decoder is
the same, so reading costs the same). tec-tt-3 codes one date per chunk here (its fine means, no earlier date). Sets: the held-out places (never trained on), and the two sharp sets of
``benchmarks/replicated.py`` in both versions of their 20/60 m bands (bilinear; nearest, with the blocks coded).
Writes benchmarks/results/refine.json and the README's ``refine`` table.

    python benchmarks/refine.py [--data ../shared/data] [--models tec-fp-3 tec-tt-3] [--rounds 3 6] [--quick]
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import KltJpeg2k  # noqa: E402
from common import argument_parser, machine, publish  # noqa: E402
from rd import bpp_at  # noqa: E402
from replicated import J2K_LEVELS, image_sets, reference_curve  # noqa: E402

from tec_zarr import metrics, pipeline  # noqa: E402
from tec_zarr.models import get_card, load_model  # noqa: E402

TARGETS_DB = (40.0, 45.0, 50.0)
VERSIONS = {"validation places": ("bilinear",), "L1C, nearest as stored": ("bilinear", "nearest"),
            "desert 100 m, as stored": ("bilinear", "nearest")}


def curve(model, images: np.ndarray, refine: int) -> tuple[list[dict], float]:
    """Mean RD points over the quality levels, and the seconds spent encoding."""
    points, seconds = [], 0.0
    for q in range(len(get_card(model.name).qualities)):
        bpps, psnrs = [], []
        for img in images:
            start = time.perf_counter()
            enc = pipeline.encode_chunk(img, model=model, quality=q, nodata=None, refine=refine)
            seconds += time.perf_counter() - start
            bpps.append(metrics.bpp(len(enc), *img.shape[1:]))
            psnrs.append(metrics.psnr(img, pipeline.decode_chunk(enc)))
        points.append({"setting": q, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    return points, seconds


def _at(points, target):
    v = bpp_at(points, target)
    return None if v is None else round(v, 3)


def main(argv=None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "refine.json")
    p.add_argument("--models", nargs="+", default=["tec-fp-3", "tec-tt-3"])
    p.add_argument("--rounds", type=int, nargs="+", default=[3, 6])
    p.add_argument("--quick", action="store_true", help="two images per set (a smoke run; not for the README)")
    p.add_argument("--table-from", type=Path, help="only regenerate the table from a results JSON this script wrote")
    args = p.parse_args(argv)
    if args.table_from is not None:
        results = json.loads(args.table_from.read_text())
        publish("refine", results, args.out, table(results), readme=not args.no_readme and not results["quick"])
        return 0
    rows = []
    for set_name, s in image_sets(args.data, args.quick).items():
        for version in VERSIONS.get(set_name, ()):
            images = s["versions"][version]
            klt = reference_curve(KltJpeg2k(), images, J2K_LEVELS)
            for name in args.models:
                model = load_model(name)
                curves, seconds = {}, {}
                for rounds in [0, *args.rounds]:
                    key = "rounded" if rounds == 0 else f"refine={rounds}"
                    curves[key], seconds[key] = curve(model, images, rounds)
                curves["KLT + JPEG 2000"] = klt
                row = {"set": set_name, "version": version, "trained_on": s["trained_on"], "images": len(images),
                       "model": name, "rounds": args.rounds,
                       "encode_seconds": {k: round(v, 2) for k, v in seconds.items()}, "curves": curves}
                row["bpp_at"] = {k: {f"{t:g}": _at(c, t) for t in TARGETS_DB} for k, c in curves.items()}
                rows.append(row)
                print(set_name, version, name, row["bpp_at"], row["encode_seconds"], flush=True)
    results = {"machine": machine(), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "rows": rows}
    publish("refine", results, args.out, table(results), readme=not args.no_readme and not args.quick)
    return 0


def _ratio(a, b) -> str:
    return "n/r" if a is None or b is None else f"{a / b:.2f}"


def table(results: dict) -> str:
    lines = ["| set (images) | version | model | refine | bpp at 40 / 45 / 50 dB | against rounded (refine=0) "
             "| against KLT + JPEG 2000 | encode time against rounded |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        b = r["bpp_at"]
        trained = ", trained on" if r["trained_on"] else ""
        for key in ["rounded", *(f"refine={n}" for n in r["rounds"])]:
            cells = " / ".join("n/r" if b[key][t] is None else f"{b[key][t]:.3f}" for t in ("40", "45", "50"))
            ratio = " / ".join(_ratio(b[key][t], b["rounded"][t]) for t in ("40", "45", "50"))
            klt = " / ".join(_ratio(b[key][t], b["KLT + JPEG 2000"][t]) for t in ("40", "45", "50"))
            slower = r["encode_seconds"][key] / r["encode_seconds"]["rounded"]
            lines.append(f"| {r['set']} ({r['images']}{trained}) | {r['version']} | {r['model']} | "
                         f"{0 if key == 'rounded' else key.split('=')[1]} | {cells} | {ratio} | {klt} | {slower:.1f}× |")
    lines.append("")
    lines.append(f"Measured by `benchmarks/refine.py` on {results['machine']}, {results['utc'][:10]}: 256 x 256 "
                 "patches; encode times from this run; the decoder, and so the read speed, is the same for all. n/r: "
                 "the quality levels do not reach the PSNR (the search moves the lowest level's PSNR too).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
