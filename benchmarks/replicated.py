"""What nearest-replicated 20 m and 60 m bands cost: block-aware coding (chunk blocks section) against the same
patches with the bands bilinear-resampled, against block-blind coding, and against classical codecs.

Cube builders (stackstac, odc-stac) put Sentinel-2's 20 m and 60 m bands on the 10 m grid by nearest neighbour, so
each native pixel becomes a 2 x 2 or 6 x 6 block. Three sets, each in two versions of its 20/60 m bands made from
the same native grid: ``nearest`` (blocks) and ``bilinear`` (pixel-centred linear interpolation, edges clamped):

* ``validation places``: the held-out SSL4EO-S12 L2A places (never trained on); their 20/60 m bands were
  smoothly resampled by the source, so the native grid is their 2 x 2 / 6 x 6 block means;
* ``L1C, nearest as stored``: the two SSL4EO-S12 v1 L1C patches (B10 dropped), whose bands are stored
  nearest-replicated from native files; crops aligned with the blocks and shifted by (3, 5) pixels, so blocks
  start mid-block at the chunk edge;
* ``desert 100 m, as stored``: crops of the 100 m Western Sahara tile (nearest-replicated COG overviews), shifted
  crops included.

The shipped models trained on the last two sets' images (as stored), never on the first. For each set and model:
bits per pixel at 40 / 45 dB (the project's PSNR, each version against itself) of the mean RD curve over the
quality levels, for nearest with blocks coded, nearest with block detection switched off (the coding before the
blocks section), and bilinear; KLT + JPEG 2000 on both versions and per-band JPEG 2000 on bilinear (issue 14's
criteria); lossless bits (``max_error=0``) with and without blocks against JPEG XL lossless (libjxl effort 7, one
image per band). Writes benchmarks/results/replicated.json and the
README's ``replicated`` table.

    python benchmarks/replicated.py [--data ../shared/data] [--models tec-fp tec-hp tec-ctx tec-tt] [--quick]
    python benchmarks/replicated.py --models tec-fp tec-fp-half tec-fp-lite \
        --out benchmarks/results/replicated-lite.json --readme-block replicated-lite   # the light models' table
    python benchmarks/replicated.py --size 120 --models tec-fp tec-ctx tec-tt \
        --out benchmarks/results/replicated-120.json --readme-block replicated-120   # patches as small as BigEarthNet's
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import Jpeg2kPerBand, KltJpeg2k  # noqa: E402
from bounded_codecs import JpegXLLossless  # noqa: E402
from common import argument_parser, machine, publish  # noqa: E402
from rd import bpp_at  # noqa: E402

from tec_zarr import metrics, pipeline, replication  # noqa: E402
from tec_zarr.bands import S2_L2A_BANDS  # noqa: E402
from tec_zarr.models import get_card  # noqa: E402
from tec_zarr.pipeline import prepare  # noqa: E402
from tec_zarr.train import data  # noqa: E402

NATIVE_SIZE = {"B01": 6, "B09": 6, "B05": 2, "B06": 2, "B07": 2, "B8A": 2, "B11": 2, "B12": 2}
TARGETS_DB = (40.0, 45.0, 50.0)
CROP = 256  # the side of every set's images
LOSSLESS_QUALITY = 0  # the lowest-rate base: the residual carries the rest (benchmarks/bounded.py's choice too)
J2K_LEVELS = list(range(46, 78, 2))  # about 30 to 57 dB in the project's PSNR
SHIFT = (3, 5)


def native_grid(band: np.ndarray, blocks: replication.Blocks) -> np.ndarray:
    """Block means (B, h, w) of ``band`` (B, H, W)."""
    counts = np.outer(replication.lengths(band.shape[-2], blocks.size, blocks.phase_y),
                      replication.lengths(band.shape[-1], blocks.size, blocks.phase_x))
    return replication.block_sums(band.astype(np.float64), blocks) / counts


def bilinear(native: np.ndarray, blocks: replication.Blocks, shape: tuple[int, int]) -> np.ndarray:
    return replication.interpolate(native, blocks, shape)


def versions(images: np.ndarray, blocks: list[replication.Blocks]) -> dict[str, np.ndarray]:
    """nearest and bilinear uint16 versions of (N, 12, H, W) images, from each band's native grid."""
    nearest, smooth = images.astype(np.float64), images.astype(np.float64)
    for c, b in enumerate(blocks):
        if not b.replicated:
            continue
        native = np.rint(native_grid(images[:, c], b))
        nearest[:, c] = replication.expand(native, b, images.shape[-2:])
        smooth[:, c] = bilinear(native, b, images.shape[-2:])
    return {name: np.clip(np.rint(v), 0, 65535).astype(np.uint16) for name, v in
            (("nearest", nearest), ("bilinear", smooth))}


def aligned_blocks() -> list[replication.Blocks]:
    return [replication.Blocks(NATIVE_SIZE.get(name, 1)) for name in S2_L2A_BANDS]


def stored_blocks(images: np.ndarray) -> list[replication.Blocks]:
    """The blocks every image is stored in (detected), checked against the band's native size."""
    found = replication.detect(images, np.ones(images.shape, bool))
    if found is None or [b.size for b in found] != [NATIVE_SIZE.get(n, 1) for n in S2_L2A_BANDS]:
        raise SystemExit(f"Expected nearest-replicated 20/60 m bands. Got blocks {found} instead.")
    return list(found)


def image_sets(root: Path, quick: bool) -> dict[str, dict]:
    dn = lambda refl: np.rint(np.asarray(refl, np.float64) * 1e4).astype(np.uint16)  # noqa: E731
    images = data.load_images(root)
    val = dn(data.validation_crops(data.split(images)[1]))[: 2 if quick else 8]
    sets = {"validation places": {"trained_on": False, "versions": versions(val, aligned_blocks())}}
    l1c = [im for im in images if "_13band_10m" in im.name]
    sy, sx = SHIFT
    crops = [dn(im.reflectance[:, :256, :256]) for im in l1c] + [
        dn(im.reflectance[:, sy : sy + 256, sx : sx + 256]) for im in l1c]
    crops = np.stack(crops[:2] if quick else crops)
    sets["L1C, nearest as stored"] = {"trained_on": True, "versions": _as_stored(crops)}
    desert = dn(data.out_of_source_crops(root))
    if len(desert):
        picks = [desert[i] for i in (0, 5, 10, 15)]
        tile = [im for im in images if im.place == data.OUT_OF_SOURCE_PLACE][0].reflectance
        picks += [dn(tile[:, 300 + sy : 556 + sy, 700 + sx : 956 + sx])]
        sets["desert 100 m, as stored"] = {"trained_on": True,
                                           "versions": _as_stored(np.stack(picks[:2] if quick else picks))}
    return sets


def _as_stored(crops: np.ndarray) -> dict[str, np.ndarray]:
    """Per crop, its detected blocks (the crops' phases differ), then both versions."""
    out = {"nearest": [], "bilinear": []}
    for crop in crops:
        v = versions(crop[None], stored_blocks(crop[None]))
        for k in out:
            out[k].append(v[k][0])
    return {k: np.stack(v) for k, v in out.items()}


@contextlib.contextmanager
def blocks_ignored():
    """Detection switched off: chunks coded as before the blocks section existed."""
    detect = prepare.detect
    prepare.detect = lambda images, valid: None
    try:
        yield
    finally:
        prepare.detect = detect


def tec_curve(model: str, images: np.ndarray, smooth: np.ndarray | None = None) -> list[dict]:
    """The mean RD points over the quality levels; with ``smooth`` (the bilinear versions of nearest ``images``),
    each point also has ``psnr_read_as_bilinear``: the decoded nearest version's native grid interpolated as the
    bilinear version was made, against it (the same bits, the other version's PSNR)."""
    points = []
    for q in [c["quality"] for c in get_card(model).qualities]:
        bpps, psnrs, as_bilinear = [], [], []
        for i, img in enumerate(images):
            enc = pipeline.encode_chunk(img, model=model, quality=q, nodata=None)
            decoded = pipeline.decode_chunk(enc)
            bpps.append(metrics.bpp(len(enc), *img.shape[1:]))
            psnrs.append(metrics.psnr(img, decoded))
            if smooth is not None:
                as_bilinear.append(metrics.psnr(smooth[i], read_as_bilinear(decoded, stored_blocks(img[None]))))
        point = {"setting": q, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))}
        if smooth is not None:
            point["psnr_read_as_bilinear"] = float(np.mean(as_bilinear))
        points.append(point)
    return points


def read_as_bilinear(decoded: np.ndarray, blocks: list[replication.Blocks]) -> np.ndarray:
    """A decoded nearest version (12, H, W) made into its bilinear version: each replicated band's native grid (its
    blocks' means) interpolated as :func:`versions` interpolates the true one."""
    out = decoded.astype(np.float64)
    for c, b in enumerate(blocks):
        if b.replicated:
            out[c] = bilinear(native_grid(decoded[None, c], b), b, decoded.shape[-2:])[0]
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16)


def lossless_bpp(model: str, images: np.ndarray) -> float:
    bpps = []
    for img in images:
        enc = pipeline.encode_chunk(img, model=model, quality=LOSSLESS_QUALITY, nodata=None, max_error=0)
        if not np.array_equal(pipeline.decode_chunk(enc), img):
            raise SystemExit("lossless round trip failed")
        bpps.append(metrics.bpp(len(enc), *img.shape[1:]))
    return float(np.mean(bpps))


def reference_curve(codec, images: np.ndarray, settings) -> list[dict]:
    points = []
    for s in settings:
        bpps, psnrs = [], []
        for img in images:
            enc = codec.encode(img, s)
            bpps.append(metrics.bpp(len(enc), *img.shape[1:]))
            psnrs.append(metrics.psnr(img, codec.decode(enc, s, img.shape)))
        points.append({"setting": s, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    return points


def _at(points, target):
    v = bpp_at(points, target)
    return None if v is None else round(v, 3)


def main(argv=None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "replicated.json")
    p.add_argument("--models", nargs="+", default=["tec-fp", "tec-hp", "tec-ctx", "tec-tt"])
    p.add_argument("--quick", action="store_true", help="two images per set (a smoke run; not for the README)")
    p.add_argument("--table-from", type=Path, help="only regenerate the table from a results JSON this script wrote")
    p.add_argument("--readme-block", default="replicated",
                   help="the README block the table goes to (replicated-lite: the light models beside tec-fp)")
    p.add_argument("--size", type=int, default=CROP,
                   help=f"patch side below {CROP}: each {CROP} x {CROP} image cut to its top-left and central "
                        "size x size patches (BigEarthNet's patches are 120 x 120)")
    args = p.parse_args(argv)
    if args.table_from is not None:
        results = json.loads(args.table_from.read_text())
        publish(args.readme_block, results, args.out, table(results),
                readme=not args.no_readme and not results["quick"])
        return 0
    rows = []
    jxl = JpegXLLossless()
    if not 16 <= args.size <= CROP:
        raise SystemExit(f"--size must lie in 16..{CROP}")
    for set_name, s in image_sets(args.data, args.quick).items():
        nearest, smooth = (patches(s["versions"][v], args.size) for v in ("nearest", "bilinear"))
        klt = reference_curve(KltJpeg2k(), nearest, J2K_LEVELS)
        klt_smooth = reference_curve(KltJpeg2k(), smooth, J2K_LEVELS)
        j2k_smooth = reference_curve(Jpeg2kPerBand(), smooth, J2K_LEVELS)
        jxl_bpp = float(np.mean([metrics.bpp(len(jxl.encode(img, 0)), *img.shape[1:]) for img in nearest]))
        for model in args.models:
            with blocks_ignored():
                blind = tec_curve(model, nearest)
                blind_lossless = lossless_bpp(model, nearest)
            aware = tec_curve(model, nearest, smooth)
            read_as = [{**p, "psnr": p["psnr_read_as_bilinear"]} for p in aware]
            curves = {"nearest, blocks": aware, "nearest, blocks, read as bilinear": read_as, "nearest, blind": blind,
                      "bilinear": tec_curve(model, smooth), "KLT + JPEG 2000, nearest": klt,
                      "KLT + JPEG 2000, bilinear": klt_smooth, "JPEG 2000 per band, bilinear": j2k_smooth}
            row = {"set": set_name, "trained_on": s["trained_on"], "images": len(nearest), "model": model,
                   "curves": curves,
                   "lossless_bpp": {"nearest, blocks": round(lossless_bpp(model, nearest), 3),
                                    "nearest, blind": round(blind_lossless, 3),
                                    "JPEG XL lossless, nearest": round(jxl_bpp, 3)}}
            row["bpp_at"] = {name: {f"{t:g}": _at(c, t) for t in TARGETS_DB} for name, c in curves.items()}
            rows.append(row)
            print(set_name, model, row["bpp_at"], row["lossless_bpp"], flush=True)
    results = {"machine": machine(), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "size": args.size, "rows": rows}
    publish(args.readme_block, results, args.out, table(results), readme=not args.no_readme and not args.quick)
    return 0


def patches(images: np.ndarray, size: int) -> np.ndarray:
    """The (N, 12, CROP, CROP) images themselves, or each cut to its top-left and central ``size`` squares (the
    central one starts at CROP // 2: the 60 m blocks then start mid-block at its edge, as in a user's cube)."""
    if size == images.shape[-1]:
        return images
    mid = images.shape[-1] // 2
    corners = [images[..., :size, :size], images[..., mid : mid + size, mid : mid + size]]
    return np.ascontiguousarray(np.stack(corners, axis=1).reshape(-1, *images.shape[1:2], size, size))


def _fmt(v) -> str:
    return "n/r" if v is None else f"{v:.2f}"


def _ratio(a, b) -> str:
    return "n/r" if a is None or b is None else f"{a / b:.2f}"


def _subtable(lines: list[str], results: dict, needs: str, header: str, cells) -> None:
    """One more table, a row per (set, model) with ``cells(bpp_at)``, where every row has the curve ``needs``."""
    if not all(needs in r["bpp_at"] for r in results["rows"]):
        return
    lines += ["", f"| set | model | {header} |", "|---|---|" + "---:|" * (header.count("|") + 1)]
    lines += [f"| {r['set']} | {r['model']} | {cells(r['bpp_at'])} |" for r in results["rows"]]


def table(results: dict) -> str:
    lines = ["| set (images) | model | bpp at 45 dB: nearest with blocks / blind / bilinear | blocks / bilinear "
             "| KLT + JPEG 2000 at 45 dB (blocks / it) | lossless bpp: blocks / blind / JPEG XL |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results["rows"]:
        b, ll = r["bpp_at"], r["lossless_bpp"]
        trained = ", trained on" if r["trained_on"] else ""
        aware, smooth, klt = b["nearest, blocks"]["45"], b["bilinear"]["45"], b["KLT + JPEG 2000, nearest"]["45"]
        lines.append(
            f"| {r['set']} ({r['images']}{trained}) | {r['model']} | {_fmt(aware)} / "
            f"{_fmt(b['nearest, blind']['45'])} / {_fmt(smooth)} | {_ratio(aware, smooth)} | "
            f"{_fmt(klt)} ({_ratio(aware, klt)}) | {ll['nearest, blocks']:.2f} / {ll['nearest, blind']:.2f}"
            f" / {ll['JPEG XL lossless, nearest']:.2f} |")
    _subtable(lines, results, "KLT + JPEG 2000, nearest",
              "bits against KLT + JPEG 2000 on the nearest version, at 40 / 45 / 50 dB",
              lambda b: " / ".join(_ratio(b["nearest, blocks"].get(t), b["KLT + JPEG 2000, nearest"].get(t))
                                   for t in ("40", "45", "50")))
    _subtable(lines, results, "nearest, blocks, read as bilinear",  # earlier results lack it
              "bilinear version at 45 dB, bpp: coded as itself / the nearest version's code, read as bilinear | "
              "nearest version at 45 dB",
              lambda b: f"{_fmt(b['bilinear']['45'])} / {_fmt(b['nearest, blocks, read as bilinear']['45'])} | "
                        f"{_fmt(b['nearest, blocks']['45'])}")
    _subtable(lines, results, "KLT + JPEG 2000, bilinear",  # earlier results lack it
              "bilinear version: bits against KLT + JPEG 2000 at 40 / 45 / 50 dB | against JPEG 2000 per band at 45 dB",
              lambda b: " / ".join(_ratio(b["bilinear"].get(t), b["KLT + JPEG 2000, bilinear"].get(t))
                                   for t in ("40", "45", "50"))
              + f" | {_ratio(b['bilinear'].get('45'), b['JPEG 2000 per band, bilinear'].get('45'))}")
    lines.append("")
    size = results.get("size", CROP)
    lines.append(f"Measured by `benchmarks/replicated.py` on {results['machine']}, {results['utc'][:10]}, on "
                 f"{size} x {size} patches"
                 + (f" (the top-left and central ones of each {CROP} x {CROP} image)" if size != CROP else "")
                 + ". n/r: the "
                 "quality levels (or JPEG 2000 levels) do not reach the PSNR. Each version's PSNR is against itself; lossless at quality "
                 f"{LOSSLESS_QUALITY}, every round trip checked bit-exact.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
