"""numpy's BLAS threads and the entropy models' speed, measured in one run on one machine.

The integer networks of the entropy models (tec-hp, tec-ctx, tec-tt and their second family) run their products
through numpy's BLAS, which starts a thread per core for each product. Reading a store, zarr and dask already
decode chunks on every core, so those threads oversubscribe them. This measures decode and encode MB/s of each
model at its default quality with one chunk thread and with one per core, with BLAS at the library's own thread
count and at one thread (threadpoolctl, set from the main thread; the same as ``OPENBLAS_NUM_THREADS=1`` in the
environment). The bytes are the same either way (exact integer products); the script checks it.

    python benchmarks/blas_threads.py [--chunks 8]
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import argument_parser, machine, publish  # noqa: E402
from throughput import local_throughput, patches, tec_codec  # noqa: E402

from tec_zarr import runtime  # noqa: E402
from tec_zarr.models import get_card  # noqa: E402

MODELS = ("tec-hp", "tec-ctx-2", "tec-tt-2", "tec-fp-3")  # the entropy models, and the default as a control


def blas_threads() -> int:
    from threadpoolctl import threadpool_info

    counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    if not counts:
        raise SystemExit("numpy's BLAS is not one threadpoolctl can see: nothing to measure")
    return max(counts)


def measure(items: list[np.ndarray], cores: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    own = blas_threads()
    rows = []
    for name in MODELS:
        quality = get_card(name).default_quality
        codec = tec_codec(f"{name} q{quality}", name, quality)
        reference = [codec.encode(a) for a in items[:2]]
        for blas in (own, 1):
            with threadpool_limits(limits=blas, user_api="blas"):
                if [codec.encode(a) for a in items[:2]] != reference:
                    raise SystemExit(f"{name}: other bytes with BLAS at {blas} threads")
                for threads in sorted({1, cores}):
                    rows.append({"model": name, "quality": quality, "blas_threads": blas, "chunk_threads": threads,
                                 **local_throughput(items, codec, threads)})
                    print(rows[-1], flush=True)
    return rows


def table(results: dict) -> str:
    cores = results["cores"]
    rows = ["| model (quality) | BLAS threads | decode MB/s: 1 chunk thread / " + f"{cores} | encode MB/s: 1 / {cores} |",
            "|---|---:|---:|---:|"]
    by = {(r["model"], r["blas_threads"], r["chunk_threads"]): r for r in results["rows"]}
    for name in MODELS:
        for blas in sorted({r["blas_threads"] for r in results["rows"]}, reverse=True):
            one, many = by[(name, blas, 1)], by[(name, blas, cores)]
            quality = one["quality"]
            rows.append(f"| {name} (q{quality}) | {blas}{' (its own)' if blas == results['own_blas_threads'] else ''} | "
                        f"{one['decode_MBps']:.1f} / {many['decode_MBps']:.1f} | "
                        f"{one['encode_MBps']:.1f} / {many['encode_MBps']:.1f} |")
    rows.append(f"\nMeasured by `benchmarks/blas_threads.py` on {results['machine']}, {results['date']}: "
                f"{results['chunks']} chunks of 12 × 256 × 256 uint16 from the shared Sentinel-2 patches, "
                "onnxruntime at one intra-op thread; the same bytes with either BLAS setting (checked).")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argument_parser(__doc__, HERE / "results")
    p.add_argument("--chunks", type=int, default=8)
    args = p.parse_args(argv)
    base = patches(args.data)
    items = [np.ascontiguousarray(base[i % len(base)]) for i in range(args.chunks)]
    cores = os.cpu_count() or 1
    runtime.configure(intra_op_threads=1)
    results = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cores": cores,
               "chunks": args.chunks, "own_blas_threads": blas_threads()}
    results["rows"] = measure(items, cores)
    publish("blas-threads", results, args.out / "blas-threads.json", table(results), not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
