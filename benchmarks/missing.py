"""What missing data costs: edge chunks padded with the fill value, swath edges, NaN (chunk format version 4).

For each validation image (the held-out places of ../shared/data, 12 bands, DN uint16) and model:
* edge chunk: the top-left 120 x 120 stored in a 256 x 256 chunk padded with nodata (as zarr pads an edge chunk)
  against the same 120 x 120 as its own chunk;
* strip: an 8-column strip padded to 120 columns against the strip as its own chunk;
* swath edge: a 240 x 240 image whose right half is nodata against the full image;
* saturated: the image with 0.01 % and 0.1 % of its elements set to 65535 (Sentinel-2's SATURATED value, stored as
  a mask), and the 0.01 % case coded as values (the saturated mask switched off, as before it existed), against the
  image without them;
each as a ratio of bytes, with the PSNR of the valid pixels in both. Writes benchmarks/results/missing.json.

    python benchmarks/missing.py [--data ../shared/data] [--images 8] [--models tec-fp-3 tec-ctx-3 tec-fp-2 tec-ctx-2]
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bounded import validation_images  # noqa: E402
from common import argument_parser, machine, publish  # noqa: E402

from tec_zarr import TEC, metrics  # noqa: E402
from tec_zarr.models import DEFAULT_MODEL  # noqa: E402
from tec_zarr.pipeline import prepare  # noqa: E402

SATURATED = 65535
AS_VALUES = ", coded as values (before)"


def saturated(img: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``img`` with ``fraction`` of its elements saturated, and where the others are."""
    hit = np.random.default_rng(seed).random(img.shape) < fraction
    return np.where(hit, np.uint16(SATURATED), img), ~hit


def cases(img: np.ndarray, seed: int) -> dict[str, tuple]:
    """name -> (the image as its own chunk, the chunk with missing data, where the valid pixels are: slices of the
    chunk's rows and columns, or a mask of its elements)."""
    edge = np.zeros((12, 256, 256), np.uint16)
    edge[:, :120, :120] = img[:, :120, :120]
    strip = np.zeros((12, 120, 120), np.uint16)
    strip[:, :, :8] = img[:, :120, :8]
    half = np.ascontiguousarray(img[:, :240, :240])
    swath = half.copy()
    swath[:, :, 120:] = 0
    square = np.ascontiguousarray(img[:, :256, :256])
    rare, rare_valid = saturated(square, 1e-4, seed)
    many, many_valid = saturated(square, 1e-3, seed)
    return {
        "edge chunk 120 in 256": (img[:, :120, :120], edge, (slice(0, 120), slice(0, 120))),
        "strip 8 in 120": (img[:, :120, :8], strip, (slice(0, 120), slice(0, 8))),
        "half nodata vs full": (half, swath, (slice(0, 240), slice(0, 120))),
        "saturated 0.01 %": (square, rare, rare_valid),
        "saturated 0.1 %": (square, many, many_valid),
        "saturated 0.01 %" + AS_VALUES: (square, rare, rare_valid),
    }


def valid_part(a: np.ndarray, valid) -> np.ndarray:
    return a[valid] if isinstance(valid, np.ndarray) else a[(slice(None), *valid)]


def encode_as_values(codec, a: np.ndarray) -> bytes:
    """The chunk as it was coded before saturated elements were a mask: as values."""
    found = prepare.saturated_elements
    prepare.saturated_elements = lambda images, nodata, scale=1.0: None
    try:
        return codec.encode(a)
    finally:
        prepare.saturated_elements = found


def main(argv=None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "missing.json")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--models", nargs="+", default=[DEFAULT_MODEL, "tec-ctx-3", "tec-fp-2", "tec-ctx-2"])
    args = p.parse_args(argv)
    images, names = validation_images(args.data, args.images)
    rows = []
    for model in args.models:
        codec = TEC(model=model)
        per_case: dict[str, list] = {}
        for seed, img in enumerate(images):
            img = np.ascontiguousarray(img)
            for name, (own, missing, valid) in cases(img, seed).items():
                own = np.ascontiguousarray(own)
                a = codec.encode(own)
                b = encode_as_values(codec, missing) if name.endswith(AS_VALUES) else codec.encode(missing)
                da, db = codec.decode(a), codec.decode(b)
                # the valid pixels of both chunks: where the image alone covers them too, and all of it otherwise
                same = isinstance(valid, np.ndarray) or name.startswith("half")
                truth = valid_part(own, valid) if same else own
                per_case.setdefault(name, []).append(
                    (len(b) / len(a), metrics.psnr(truth, valid_part(da, valid) if same else da),
                     metrics.psnr(truth, valid_part(db, valid))))
        for name, values in per_case.items():
            v = np.asarray(values)
            rows.append({"model": model, "case": name, "bytes_ratio": round(float(v[:, 0].mean()), 3),
                         "bytes_ratio_max": round(float(v[:, 0].max()), 3),
                         "psnr_own": round(float(v[:, 1].mean()), 2), "psnr_with_missing": round(float(v[:, 2].mean()), 2)})
    results = {"machine": machine(), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "images": names[: len(images)], "rows": rows}
    lines = ["| model | case | bytes with missing / without (mean, max) | PSNR valid pixels: alone / with missing |",
             "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['case']} | {r['bytes_ratio']:.3f}, {r['bytes_ratio_max']:.3f} | "
                     f"{r['psnr_own']:.2f} / {r['psnr_with_missing']:.2f} |")
    lines.append("")
    lines.append(f"Measured by `benchmarks/missing.py` on {results['machine']}, {results['utc'][:10]}: "
                 f"{len(images)} validation images, never used in training; the model's default quality.")
    publish("missing", results, args.out, "\n".join(lines), not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
