"""Single-thread decode MB/s of one model (default tec-ctx) against per-band JPEG 2000, in one run (issue 18).

Encodes one 12 x 256 x 256 chunk of the bundled sample (date 1) per quality, decodes it ``--runs`` times and
reports the best run's MB/s next to JPEG 2000's (the throughput benchmark's settings) decoding the same chunk,
the codecs taking turns. ``PYTHONPATH=<an exported older tree>`` measures that version (it prints which).
``--profile`` adds a cProfile split of one quality's decode: where the time goes (ONNX synthesis, integer
hyper-synthesis, context networks, range decoding, the rest). Writes nothing unless ``--json`` is given.

    TEC_ZARR_THREADS=1 python benchmarks/entropy_decode.py [--model tec-ctx] [--qualities 0 2 4] [--profile 2]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402
from throughput import codecs  # noqa: E402

import tec_zarr  # noqa: E402
from tec_zarr import pipeline, runtime, sample  # noqa: E402

# cProfile functions (file suffix, function name) whose cumulative time is one part of a decode.
PARTS = {
    "ONNX synthesis": [("runtime/onnx.py", "run")],
    "integer hyper-synthesis": [("entropy/hyperprior.py", "synthesize"),
                                ("entropy/hyperprior.py", "synthesize_channels_last")],
    "range decoding": [("entropy/rangecoder.py", "read_grouped")],
    "context steps (all)": [("entropy/context.py", "run_steps")],
    "  conv3 (hyper + channel ctx)": [("integer/layers.py", "conv3")],
    "  context: spatial taps": [("entropy/context.py", "_spatial")],
    "  context: 1x1 layers": [("entropy/context.py", "dense")],
    "  context: gather/scatter": [("entropy/context.py", "gather"), ("entropy/context.py", "scatter")],
    "  context: index_and_mean": [("entropy/hyperprior.py", "index_and_mean")],
}


def chunk() -> np.ndarray:
    return np.ascontiguousarray(sample.load_array()[1, :, :256, :256])


def best_seconds(decoders: dict, runs: int) -> dict:
    """The fastest of ``runs`` single-thread decodes of each ``name: (decode, encoded)``, taken in turns so that
    a load elsewhere on the machine slows every codec alike."""
    best = dict.fromkeys(decoders, float("inf"))
    for _ in range(runs):
        for name, (decode, encoded) in decoders.items():
            t0 = time.perf_counter()
            decode(encoded)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def profile_split(encoded: bytes) -> dict:
    """Cumulative seconds per part of one decode (parts nest: hyper-synthesis and conv3 count inside run_steps)."""
    prof = cProfile.Profile()
    prof.enable()
    pipeline.decode_chunk(encoded)
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = max(ct for (_, _, _, ct, _) in stats.values())
    split = {"total": total}
    for part, keys in PARTS.items():
        split[part] = sum(ct for (file, _, name), (_, _, _, ct, _) in stats.items()
                          if any(file.endswith(f) and name == n for f, n in keys))
    return split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tec-ctx")
    p.add_argument("--qualities", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--profile", type=int, nargs="*", default=[], help="qualities to profile")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    runtime.configure(intra_op_threads=1)
    a = chunk()
    mb = a.nbytes / 1e6
    j2k = next(c for c in codecs(args.model) if c.name == "JPEG 2000 per band")
    decoders = {"JPEG 2000 per band": (j2k.decode, j2k.encode(a))}
    for q in args.qualities:
        encoded = pipeline.encode_chunk(a, model=args.model, quality=q, nodata=None)
        pipeline.decode_chunk(encoded)  # warm-up: sessions, tables
        decoders[f"q{q}"] = (pipeline.decode_chunk, encoded)
    seconds = best_seconds(decoders, args.runs)
    j2k_mbps = mb / seconds.pop("JPEG 2000 per band")
    results = {"machine": machine(), "model": args.model, "runs": args.runs, "tec_zarr": tec_zarr.__file__,
               "j2k_decode_MBps": j2k_mbps, "tec": {}}
    print(f"tec_zarr from {Path(tec_zarr.__file__).parent}")
    print(f"JPEG 2000 per band: decode {j2k_mbps:.2f} MB/s")
    for key, s in seconds.items():
        encoded = decoders[key][1]
        row = {"decode_MBps": mb / s, "decode_s": s, "vs_j2k": mb / s / j2k_mbps, "bytes": len(encoded)}
        print(f"{args.model} {key}: decode {mb / s:.3f} MB/s ({s * 1e3:.0f} ms) = 1/{j2k_mbps * s / mb:.1f} "
              f"of JPEG 2000 ({len(encoded)} B)")
        if int(key[1:]) in args.profile:
            row["profile_s"] = profile_split(encoded)
            for part, t in row["profile_s"].items():
                print(f"    {part:<30} {t:7.3f} s")
        results["tec"][key] = row
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
