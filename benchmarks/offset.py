"""What Sentinel-2's +1000 DN offset costs, and what ``dn_offset`` gives back.

Since processing baseline 04.00 (products from 25 January 2022, and the Collection-1 reprocessing of older dates)
Sentinel-2 stores DN = reflectance x 10000 + 1000. odc-stac and stackstac (``rescale=False``) load those DN as
stored, so the cubes users build from current data carry the offset; the shipped models were trained without it.
For each set and model: bits per pixel at 40 / 45 dB of the mean RD curve over the quality levels (PSNR on
reflectance, the offset taken off before comparing), for the patches as the training data hold them (no offset),
the same patches + 1000 coded as they are (``dn_offset=0``, what the codec did before), and + 1000 coded with
``dn_offset=1000``. Sets: the held-out SSL4EO-S12 L2A places (never trained on), the SSL4EO-S12 v1 L1C patches
(B10 dropped) and crops of the 100 m desert tile (both trained on, as stored without the offset). Writes
benchmarks/results/offset.json and the README's ``offset`` table.

    python benchmarks/offset.py [--data ../shared/data] [--models tec-fp tec-hp tec-ctx tec-tt] [--quick]
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import argument_parser, machine, publish  # noqa: E402
from rd import bpp_at  # noqa: E402

from tec_zarr import metrics, pipeline  # noqa: E402
from tec_zarr.dn_offset import SENTINEL2_DN_OFFSET  # noqa: E402
from tec_zarr.models import get_card  # noqa: E402
from tec_zarr.train import data  # noqa: E402

TARGETS_DB = (40.0, 45.0)
# (name, DN added to the patches, dn_offset the codec is given)
VARIANTS = (("no offset", 0, 0), ("+1000, coded as is", SENTINEL2_DN_OFFSET, 0),
            ("+1000, dn_offset=1000", SENTINEL2_DN_OFFSET, SENTINEL2_DN_OFFSET))


def image_sets(root: Path, quick: bool) -> dict[str, np.ndarray]:
    dn = lambda refl: np.rint(np.asarray(refl, np.float64) * 1e4).astype(np.uint16)  # noqa: E731
    images = data.load_images(root)
    sets = {"validation places (held out)": dn(data.validation_crops(data.split(images)[1]))}
    l1c = [im for im in images if "_13band_10m" in im.name]
    sets["L1C (trained on)"] = np.stack([dn(im.reflectance[:, :256, :256]) for im in l1c])
    desert = dn(data.out_of_source_crops(root))
    if len(desert):
        sets["desert 100 m (trained on)"] = desert[[0, 5, 10, 15]]
    return {name: images[:2] if quick else images for name, images in sets.items()}


def curve(model: str, images: np.ndarray, added: int, dn_offset: int) -> list[dict]:
    points = []
    for q in [c["quality"] for c in get_card(model).qualities]:
        bpps, psnrs = [], []
        for img in images:
            stored = (img.astype(np.int64) + added).astype(np.uint16)
            enc = pipeline.encode_chunk(stored, model=model, quality=q, nodata=None, dn_offset=dn_offset)
            bpps.append(metrics.bpp(len(enc), *img.shape[1:]))
            psnrs.append(metrics.psnr(stored, pipeline.decode_chunk(enc), offset=added))
        points.append({"quality": q, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    return points


def main(argv=None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "offset.json")
    p.add_argument("--models", nargs="+", default=["tec-fp", "tec-hp", "tec-ctx", "tec-tt"])
    p.add_argument("--quick", action="store_true", help="two images per set (a smoke run; not for the README)")
    args = p.parse_args(argv)
    rows = []
    for set_name, images in image_sets(args.data, args.quick).items():
        for model in args.models:
            curves = {name: curve(model, images, added, offset) for name, added, offset in VARIANTS}
            at = {name: {f"{t:g}": _at(c, t) for t in TARGETS_DB} for name, c in curves.items()}
            rows.append({"set": set_name, "images": len(images), "model": model, "curves": curves, "bpp_at": at})
            print(set_name, model, at, flush=True)
    results = {"machine": machine(), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "rows": rows}
    publish("offset", results, args.out, table(results), readme=not args.no_readme and not args.quick)
    return 0


def _at(points, target):
    v = bpp_at(points, target)
    return None if v is None else round(v, 3)


def _ratio(a, b) -> str:
    return "n/r" if a is None or b is None else f"{a / b:.2f}"


def table(results: dict) -> str:
    plain, raw, fixed = (name for name, _, _ in VARIANTS)
    lines = ["| set (images) | model | bpp at 40 dB: no offset / +1000 as is / +1000 with dn_offset | at 45 dB | "
             "+1000 as is ÷ no offset, 40 / 45 dB | with dn_offset ÷ no offset, 40 / 45 dB |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results["rows"]:
        at = r["bpp_at"]
        cells = [" / ".join("n/r" if at[v][t] is None else f"{at[v][t]:.2f}" for v in (plain, raw, fixed))
                 for t in ("40", "45")]
        lines.append(f"| {r['set']} ({r['images']}) | {r['model']} | {cells[0]} | {cells[1]} | "
                     f"{_ratio(at[raw]['40'], at[plain]['40'])} / {_ratio(at[raw]['45'], at[plain]['45'])} | "
                     f"{_ratio(at[fixed]['40'], at[plain]['40'])} / {_ratio(at[fixed]['45'], at[plain]['45'])} |")
    lines.append("")
    lines.append(f"Measured by `benchmarks/offset.py` on {results['machine']}, {results['utc'][:10]}. PSNR on "
                 "reflectance x 10000 (the offset taken off), mean RD curve over the quality levels; n/r: not reached.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
