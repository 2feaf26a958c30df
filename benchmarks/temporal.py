"""Time series: tec-tt's 4-date chunks against coding one date per chunk, x265 and KLT + JPEG 2000.

Data: the two held-out places' four seasonal dates (``tec_zarr.train.data.VALIDATION_PLACES``, top-left 256 x 256;
no model and no weight table was fitted on them), dates about three months apart. Per codec and setting: mean bits
per pixel per date (12 bands) and mean PSNR over the dates (the project's PSNR), then bpp at 40 and 45 dB on the mean
RD curve (``rd.bpp_at``):

* ``tec-tt``: one (4, 12, 256, 256) chunk per place (dates 2-4 coded against the date before);
* ``tec-fp``, ``tec-hp``, ``tec-ctx``: one (12, 256, 256) chunk per date (tec-ctx: the same symbols and pixels as
  tec-tt);
* ``tec-tt`` one date per chunk: its fine means without the previous dates;
* ``x265 12-bit``: each band a gray12 sequence of the 4 dates (DN clipped to the PSNR's 0..10000 and scaled to 0..4095),
  libx265 (Debian's ffmpeg), preset medium, one GOP, fixed QP;
* ``KLT + JPEG 2000``: per date, as in ``benchmarks/rd.py``.

Also encode and decode MB/s (raw uint16 bytes, one thread, this run) of tec-tt's 4-date chunks and tec-ctx's
one-date chunks at quality 2. Writes benchmarks/results/temporal.json and the README's ``temporal`` table.
``--temporal`` measures another temporal model (its base, whose symbols it codes, is the speed reference), against
the image models of ``--image-models``; the best of them is the one to beat.

    python benchmarks/temporal.py [--data ../shared/data] [--quick]
    python benchmarks/temporal.py --temporal tec-tt-2 --image-models tec-fp tec-ctx tec-fp-2 tec-ctx-2 \
        --out benchmarks/results/temporal-2.json --readme-block temporal-2
"""

from __future__ import annotations

import shutil
import subprocess
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

from tec_zarr import metrics, pipeline  # noqa: E402
from tec_zarr.models import get_card  # noqa: E402
from tec_zarr.train.data import VALIDATION_PLACES  # noqa: E402
from tec_zarr.train.temporal import read_sequences  # noqa: E402

TARGETS_DB = (40.0, 45.0)
SIZE = 256
IMAGE_MODELS = ("tec-fp", "tec-hp", "tec-ctx")
TEMPORAL_MODEL = "tec-tt"
J2K_LEVELS = list(range(46, 70, 2))
X265_QPS = (2, 5, 8, 11, 14, 17, 20, 23, 26, 30)
SPEED_QUALITY = 2


def sequences(root: Path, quick: bool) -> dict[str, np.ndarray]:
    seqs = read_sequences(root)
    held = {p: np.ascontiguousarray(seqs[p][..., :SIZE, :SIZE]) for p in VALIDATION_PLACES}
    if quick:
        held = {p: np.ascontiguousarray(s[..., :64, :64]) for p, s in held.items()}
    return held


def point(setting, bits: float, pixels: int, psnrs: list[float]) -> dict:
    return {"setting": setting, "bpp": bits / pixels, "psnr": float(np.mean(psnrs))}


def temporal_curve(seqs, temporal: str) -> list[dict]:
    points = []
    for q in [c["quality"] for c in get_card(temporal).qualities]:
        bits, pixels, psnrs = 0, 0, []
        for cube in seqs.values():
            enc = pipeline.encode_chunk(cube, model=temporal, quality=q, nodata=None)
            dec = pipeline.decode_chunk(enc)
            bits += 8 * len(enc)
            pixels += cube.shape[0] * cube.shape[2] * cube.shape[3]
            psnrs += [metrics.psnr(cube[t], dec[t]) for t in range(cube.shape[0])]
        points.append(point(q, bits, pixels, psnrs))
    return points


def per_date_curve(encode, decode, settings, seqs) -> list[dict]:
    points = []
    for s in settings:
        bits, pixels, psnrs = 0, 0, []
        for cube in seqs.values():
            for img in cube:
                enc = encode(img, s)
                bits += 8 * len(enc)
                pixels += img.shape[1] * img.shape[2]
                psnrs.append(metrics.psnr(img, decode(enc, s, img.shape)))
        points.append(point(s, bits, pixels, psnrs))
    return points


def image_model_curve(model: str, seqs) -> list[dict]:
    return per_date_curve(lambda img, q: pipeline.encode_chunk(img, model=model, quality=q, nodata=None),
                          lambda enc, q, shape: pipeline.decode_chunk(enc),
                          [c["quality"] for c in get_card(model).qualities], seqs)


# -- x265 --------------------------------------------------------------------------------------------------------------

X265_MAX = 4095


def _ffmpeg(args: list[str], data: bytes) -> bytes:
    out = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", *args], input=data, capture_output=True,
                         check=True)
    return out.stdout


def x265_band(frames: np.ndarray, qp: int) -> tuple[bytes, np.ndarray]:
    """One band's (T, H, W) DN as a gray12 sequence: the HEVC bitstream and the decoded DN."""
    t, h, w = frames.shape
    v = np.rint(np.clip(frames.astype(np.float64), 0, metrics.PEAK) * (X265_MAX / metrics.PEAK)).astype("<u2")
    stream = _ffmpeg(["-f", "rawvideo", "-pix_fmt", "gray12le", "-s", f"{w}x{h}", "-r", "1", "-i", "-",
                      "-c:v", "libx265", "-preset", "medium",
                      "-x265-params", f"qp={qp}:keyint={t}:log-level=error", "-f", "hevc", "-"], v.tobytes())
    raw = _ffmpeg(["-f", "hevc", "-i", "-", "-f", "rawvideo", "-pix_fmt", "gray12le", "-"], stream)
    decoded = np.frombuffer(raw, "<u2").reshape(t, h, w).astype(np.float64) * (metrics.PEAK / X265_MAX)
    return stream, decoded


def x265_curve(seqs) -> list[dict]:
    points = []
    for qp in X265_QPS:
        bits, pixels, psnrs = 0, 0, []
        for cube in seqs.values():
            decoded = np.empty(cube.shape, np.float64)
            for b in range(cube.shape[1]):
                stream, decoded[:, b] = x265_band(cube[:, b], qp)
                bits += 8 * len(stream)
            pixels += cube.shape[0] * cube.shape[2] * cube.shape[3]
            psnrs += [metrics.psnr(cube[t], decoded[t]) for t in range(cube.shape[0])]
        points.append(point(qp, bits, pixels, psnrs))
    return points


# -- speed ------------------------------------------------------------------------------------------------------------


def speed(seqs, temporal: str, base: str) -> dict:
    """Encode / decode MB/s (raw bytes) of the temporal model's 4-date chunks and its base's one-date chunks, one run
    each after a warm-up, in this process (onnxruntime's threads as configured: compare the two, not across
    machines)."""
    out = {}
    cubes = list(seqs.values())
    raw = sum(c.nbytes for c in cubes) / 1e6
    for name, chunks in ((temporal, [[c] for c in cubes]), (base, [list(c) for c in cubes])):
        arrays = [np.ascontiguousarray(a) for group in chunks for a in group]
        pipeline.decode_chunk(pipeline.encode_chunk(arrays[0], model=name, quality=SPEED_QUALITY, nodata=None))
        t0 = time.perf_counter()
        encoded = [pipeline.encode_chunk(a, model=name, quality=SPEED_QUALITY, nodata=None) for a in arrays]
        t1 = time.perf_counter()
        for e in encoded:
            pipeline.decode_chunk(e)
        t2 = time.perf_counter()
        out[name] = {"encode_MBps": round(raw / (t1 - t0), 2), "decode_MBps": round(raw / (t2 - t1), 2),
                     "decode_seconds_per_date": round((t2 - t1) / sum(c.shape[0] for c in cubes), 3)}
    return out


def main(argv=None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "temporal.json")
    p.add_argument("--quick", action="store_true", help="64 x 64 crops (a smoke run; not for the README)")
    p.add_argument("--temporal", default=TEMPORAL_MODEL, help="the temporal model measured")
    p.add_argument("--image-models", nargs="+", default=list(IMAGE_MODELS),
                   help="image models coding one date per chunk; the best of them is the one to beat")
    p.add_argument("--readme-block", default="temporal", help="the README block the table goes to")
    args = p.parse_args(argv)
    temporal, base = args.temporal, get_card(args.temporal).manifest["base_model"]["name"]
    seqs = sequences(args.data, args.quick)
    curves = {temporal + " (4 dates per chunk)": temporal_curve(seqs, temporal)}
    for model in (*args.image_models, temporal):  # the temporal model one date per chunk: its fine means alone
        curves[model + " (1 date per chunk)"] = image_model_curve(model, seqs)
        print(model, flush=True)
    klt = KltJpeg2k()
    curves["KLT + JPEG 2000 (per date)"] = per_date_curve(klt.encode, klt.decode, J2K_LEVELS, seqs)
    if shutil.which("ffmpeg"):
        curves["x265 12-bit (4 dates per band)"] = x265_curve(seqs)
    else:
        print("ffmpeg not found: x265 skipped (Debian package ffmpeg)", flush=True)
    bpp = {name: {f"{t:g}": bpp_at(c, t) for t in TARGETS_DB} for name, c in curves.items()}
    results = {"machine": machine(), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "places": list(seqs), "dates": 4, "size": SIZE if not args.quick else 64,
               "temporal": temporal, "base": base, "image_models": list(args.image_models),
               "curves": curves, "bpp_at": bpp, "speed": speed(seqs, temporal, base)}
    publish(args.readme_block, results, args.out, table(results), readme=not args.no_readme and not args.quick)
    return 0


def _fmt(v) -> str:
    return "n/r" if v is None else f"{v:.3f}"


def table(results: dict) -> str:
    bpp = results["bpp_at"]
    # results written before these keys existed measured tec-tt against tec-fp, tec-hp and tec-ctx
    temporal, base = results.get("temporal", TEMPORAL_MODEL), results.get("base", "tec-ctx")
    tt = temporal + " (4 dates per chunk)"
    alone = temporal + " (1 date per chunk)"
    images = [k for k in bpp if k.split(" ")[0] in results.get("image_models", IMAGE_MODELS)]
    lines = [f"| codec | bpp per date at 40 dB | at 45 dB | {temporal}'s bits against it, 40 / 45 dB |",
             "|---|---:|---:|---:|"]
    for name, at in bpp.items():
        ratios = [("n/r" if at[t] is None or bpp[tt][t] is None else f"{bpp[tt][t] / at[t]:.3f}") for t in ("40", "45")]
        lines.append(f"| {name} | {_fmt(at['40'])} | {_fmt(at['45'])} | {' / '.join(ratios)} |")
    best = {t: min((bpp[k][t] for k in images if bpp[k][t] is not None), default=None) for t in ("40", "45")}
    saving = [("n/r" if best[t] is None or bpp[tt][t] is None else f"{100 * (1 - bpp[tt][t] / best[t]):.1f} %")
              for t in ("40", "45")]
    sp = results["speed"]
    fine = [("n/r" if best[t] is None or bpp[alone][t] is None else f"{100 * (1 - bpp[alone][t] / best[t]):.1f} %")
            for t in ("40", "45")]
    best_name = {t: min((k for k in images if bpp[k][t] is not None), key=lambda k: bpp[k][t], default="none")
                 for t in ("40", "45")}
    lines += ["", f"{temporal} saves {saving[0]} (40 dB) and {saving[1]} (45 dB) of the bits of the best image model "
              f"coding one date per chunk ({best_name['40'].split(' ')[0]} / {best_name['45'].split(' ')[0]}); its "
              f"fine means alone ({temporal}, one date per chunk) save {fine[0]} and {fine[1]}, the dates before the "
              "rest.",
              f"Speed at quality {SPEED_QUALITY}, MB/s of raw uint16, encode / decode: {temporal} (4-date chunks) "
              f"{sp[temporal]['encode_MBps']} / {sp[temporal]['decode_MBps']}, {base} (one date per "
              f"chunk) {sp[base]['encode_MBps']} / {sp[base]['decode_MBps']}; decode seconds per date "
              f"{sp[temporal]['decode_seconds_per_date']} against {sp[base]['decode_seconds_per_date']}.",
              "",
              f"Measured by `benchmarks/temporal.py` on {results['machine']}, {results['utc'][:10]}: the held-out "
              f"places {', '.join(results['places'])}, 4 dates of {results['size']} x {results['size']} each. n/r: "
              "the settings do not reach the PSNR."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
