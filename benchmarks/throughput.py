"""Throughput of TEC against JPEG 2000 per band and zstd, measured in one run on one machine.

MB/s of raw uint16 for encode and decode: single thread, all cores (chunks in a thread pool, as zarr runs them),
and dask.distributed LocalClusters of 1 and 2 worker processes writing and reading a cube tiled from the real
patches of ../shared/data. Ratios (TEC / JPEG 2000) and worker scaling are what the README reports; absolute
MB/s depend on the machine, which the JSON names.

    python benchmarks/throughput.py [--cube-mb 2048] [--chunks 24] [--no-cluster]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import argument_parser, machine, publish  # noqa: E402

from tec_zarr import pipeline  # noqa: E402
from tec_zarr import runtime  # noqa: E402
from tec_zarr.models import DEFAULT_MODEL, get_card  # noqa: E402
from tec_zarr.models.registry import SHIPPED  # noqa: E402
from tec_zarr.train import data  # noqa: E402



def patches(root: Path) -> np.ndarray:
    """Every 12-band L2A patch of the shared data, 256 x 256, uint16 DN."""
    images = [im for im in data.load_images(root) if im.name.startswith("ssl4eos12")]
    return np.rint(np.stack([im.reflectance[:, :256, :256] for im in images]) * 1e4).astype(np.uint16)


class Codec:
    def __init__(self, name, encode, decode):
        self.name, self.encode, self.decode = name, encode, decode


def tec_codec(name: str, model: str, quality: int) -> Codec:
    return Codec(name, lambda a: pipeline.encode_chunk(a, model=model, quality=quality, nodata=None),
                 pipeline.decode_chunk)


def codecs(model: str, others: list[str]) -> list[Codec]:
    """Every quality of ``model``, each of ``others`` at its default quality, JPEG 2000 and zstd."""
    import imagecodecs

    out = [tec_codec(f"TEC q{q['quality']}", model, q["quality"]) for q in get_card(model).qualities]
    out += [tec_codec(f"{name} q{get_card(name).default_quality}", name, get_card(name).default_quality)
            for name in others]

    def j2k_encode(a):
        # The RD harness's settings (baselines._j2k_encode); level 60 lands near TEC q2's 44 dB on these patches.
        return [imagecodecs.jpeg2k_encode(b, level=60, codecformat="j2k", reversible=False, numthreads=1) for b in a]

    def j2k_decode(parts):
        return np.stack([imagecodecs.jpeg2k_decode(p, numthreads=1) for p in parts])

    out.append(Codec("JPEG 2000 per band", j2k_encode, j2k_decode))
    out.append(Codec("zstd (level 3)", lambda a: imagecodecs.zstd_encode(a, level=3),
                     lambda b: np.frombuffer(imagecodecs.zstd_decode(b), np.uint16)))
    return out


def timed(fn, items, threads: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    if threads == 1:
        results = [fn(x) for x in items]
    else:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(fn, items))
    return time.perf_counter() - t0, results


def local_throughput(items: list[np.ndarray], codec: Codec, threads: int) -> dict:
    mb = sum(a.nbytes for a in items) / 1e6
    codec.decode(codec.encode(items[0]))  # warm-up: sessions, tables (a reader decodes many chunks per session)
    t_enc, encoded = timed(codec.encode, items, threads)
    t_dec, _ = timed(codec.decode, encoded, threads)
    return {"encode_MBps": mb / t_enc, "decode_MBps": mb / t_dec}


def single_thread_rounds(items: list[np.ndarray], codecs_: list[Codec], rounds: int) -> dict[str, dict]:
    """One-thread MB/s of every codec, the median of ``rounds`` rounds that each measure every codec in turn:
    the ratios then compare codecs measured under the same conditions (a single pass moved TEC's decode ratio to
    JPEG 2000 between 0.22 and 0.28 from one run to the next on this machine)."""
    runs: dict[str, list[dict]] = {c.name: [] for c in codecs_}
    for _ in range(rounds):
        for codec in codecs_:
            runs[codec.name].append(local_throughput(items, codec, 1))
    return {name: {key: float(np.median([r[key] for r in rs])) for key in ("encode_MBps", "decode_MBps")}
            | {"rounds": rs} for name, rs in runs.items()}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tuning(items: list[np.ndarray], model: str, quality: int, cores: int) -> list[dict]:
    """TEC MB/s for each split of the cores between chunk threads (zarr, dask) and onnxruntime intra-op threads."""
    codec = tec_codec(f"TEC q{quality}", model, quality)
    rows = []
    for pool in sorted({1, cores}):
        for intra in sorted({1, cores}):
            runtime.configure(intra_op_threads=intra)
            rows.append({"chunk_threads": pool, "intra_op_threads": intra, **local_throughput(items, codec, pool)})
    runtime.configure(intra_op_threads=1)
    return rows


def gpu_throughput(items: list[np.ndarray], model: str, quality: int) -> str:
    """TEC on onnxruntime's CUDA execution provider where this machine has one (the `gpu` extra); else unmeasured."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "unmeasured (no CUDA execution provider on this machine)"
    codec = tec_codec(f"TEC q{quality}", model, quality)
    runtime.configure(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    try:
        r = local_throughput(items, codec, 1)
    finally:
        runtime.configure(providers=runtime.RuntimeSettings.providers)
    return f"TEC q{quality} encode {r['encode_MBps']:.1f} MB/s, decode {r['decode_MBps']:.1f} MB/s"


def _tile_block(patches_file: str, block_info=None):
    """One dask block of the tiled cube, read from the memory-mapped patches (page cache shared by the workers)."""
    start, stop = block_info[None]["array-location"][0]
    patches = np.load(patches_file, mmap_mode="r")
    return np.ascontiguousarray(patches[np.arange(start, stop) % len(patches)])


def tiled_cube(base: np.ndarray, n: int, images_per_task: int, workdir: Path):
    """A lazy (n, 12, 256, 256) cube repeating the real patches, ``images_per_task`` zarr chunks per dask task.

    Every block is a root task reading the patches from one .npy file: no block depends on data held by one
    worker, so the scheduler spreads them evenly (a graph holding the patches pins the tasks to their holder).
    """
    import dask.array as da

    patches_file = workdir / "patches.npy"
    np.save(patches_file, base)
    starts = range(0, n, images_per_task)
    chunks = (tuple(min(images_per_task, n - s) for s in starts),) + tuple((d,) for d in base.shape[1:])
    return da.map_blocks(_tile_block, str(patches_file), dtype=base.dtype, chunks=chunks,
                         meta=np.empty((0,) * base.ndim, base.dtype))


def _one_core_per_worker() -> None:
    """A worker computes on one core: one onnxruntime thread, and one zarr codec thread.

    zarr runs a chunk batch's codecs in its own thread pool (``threading.max_workers``), so a single worker would
    otherwise use every core and 1 -> 2 workers would measure nothing. On a real cluster leave zarr's default
    and give each worker process its cores.
    """
    import zarr

    runtime.configure(intra_op_threads=1)
    zarr.config.set({"threading.max_workers": 1})


def cluster_throughput(base: np.ndarray, n: int, workers: int, workdir: Path, quality: int, images_per_task: int) -> dict:
    import distributed
    import xarray as xr

    from tec_zarr import zarr_encoding

    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), tiled_cube(base, n, images_per_task, workdir))})
    enc = zarr_encoding(ds, zarr_format=3, chunks={"time": 1, "y": 256, "x": 256}, quality=quality, nodata=None)
    path = workdir / f"cube-{workers}.zarr"
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        client.run(_one_core_per_worker)
        t0 = time.perf_counter()
        ds.to_zarr(path, zarr_format=3, encoding=enc, consolidated=False, mode="w")
        t1 = time.perf_counter()
        xr.open_zarr(path, consolidated=False, chunks={"time": images_per_task})["reflectance"].sum().compute()
        t2 = time.perf_counter()
        rss = client.run(_peak_rss_mb)
    stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    shutil.rmtree(path, ignore_errors=True)
    mb = n * base[0].nbytes / 1e6
    return {"workers": workers, "images_per_task": images_per_task, "cube_MB": mb, "stored_MB": stored / 1e6, "write_MBps": mb / (t1 - t0),
            "read_MBps": mb / (t2 - t1), "peak_rss_MB_per_worker": max(rss.values())}


def fewest_bits_at_45(rd_json: Path) -> str | None:
    """The TEC model with the fewest bits at 45 dB in the RD benchmark's results, None without them."""
    try:
        codecs = json.loads(rd_json.read_text())["codecs"]
    except (OSError, ValueError, KeyError):
        return None
    tec = [(c["bpp_at"]["45"], c["name"].removeprefix("TEC ")) for c in codecs
           if c.get("family") == "TEC" and c.get("bpp_at", {}).get("45")]
    return min(tec)[1] if tec else None


def ratios(local: dict, model: str, quality: int, others: list[str], rd_json: Path) -> dict:
    """Each measured model's one-thread MB/s over JPEG 2000's, at its default quality; each marked with its role."""
    j2k = local["JPEG 2000 per band"]["single"]
    fewest = fewest_bits_at_45(rd_json)
    rows = []
    for name, q, key in [(model, quality, f"TEC q{quality}")] + [
            (m, get_card(m).default_quality, f"{m} q{get_card(m).default_quality}") for m in others]:
        tec = local[key]["single"]
        roles = [r for r, holds in (("default", name == DEFAULT_MODEL), ("fewest bits", name == fewest)) if holds]
        role = ", ".join(roles)
        rows.append({"model": name, "quality": q, "role": role, "encode_vs_j2k": tec["encode_MBps"] / j2k["encode_MBps"],
                     "decode_vs_j2k": tec["decode_MBps"] / j2k["decode_MBps"]})
    return {"quality": quality, "models": rows, "fewest_bits_source": f"{fewest}, from {rd_json.name}"
            if fewest else "rd.json not found",
            "encode_vs_j2k": rows[0]["encode_vs_j2k"], "decode_vs_j2k": rows[0]["decode_vs_j2k"]}


def table(results: dict) -> str:
    rows = ["| codec | encode MB/s (1 thread) | decode MB/s (1 thread) | encode MB/s (all cores) | decode MB/s (all cores) |",
            "|---|---:|---:|---:|---:|"]
    for name, r in results["local"].items():
        rows.append(f"| {name} | {r['single']['encode_MBps']:.1f} | {r['single']['decode_MBps']:.1f} | "
                    f"{r['all_cores']['encode_MBps']:.1f} | {r['all_cores']['decode_MBps']:.1f} |")
    ratio = results["ratios"]
    rows += ["", "| ratio to JPEG 2000 (one thread) | encode | decode | decode target |", "|---|---:|---:|---:|"]
    for r in ratio["models"]:
        targets = {"default": "≥ 0.33 (encode ≥ 1)", "fewest bits": "≥ 0.17"}
        target = "; ".join(targets[role] for role in r["role"].split(", ") if role in targets)
        role = f" ({r['role']})" if r["role"] else ""
        rows.append(f"| {r['model']} q{r['quality']}{role} | {r['encode_vs_j2k']:.2f} | "
                    f"{r['decode_vs_j2k']:.2f} | {target} |")
    rows.append(f"\nDefault: the default model ({results['model']}). Fewest bits: the model needing the fewest bits at "
                f"45 dB in `rd.json` ({ratio['fewest_bits_source']}).")
    if results.get("tuning"):
        rows += ["", f"| TEC q{ratio['quality']}: chunk threads × onnxruntime intra-op threads | encode MB/s | decode MB/s |",
                 "|---|---:|---:|"]
        for t in results["tuning"]:
            rows.append(f"| {t['chunk_threads']} × {t['intra_op_threads']} | {t['encode_MBps']:.1f} | {t['decode_MBps']:.1f} |")
    rows.append(f"\nGPU (CUDA execution provider): {results['gpu']}.")
    if results.get("cluster"):
        rows += ["", "| LocalCluster (processes, 1 thread each) | write MB/s | read MB/s | stored MB | peak RSS per worker MB |",
                 "|---|---:|---:|---:|---:|"]
        for c in results["cluster"]:
            rows.append(f"| {c['workers']} worker(s), {c['cube_MB'] / 1e3:.2f} GB cube | {c['write_MBps']:.1f} | "
                        f"{c['read_MBps']:.1f} | {c['stored_MB']:.0f} | {c['peak_rss_MB_per_worker']:.0f} |")
        one, two, small = results["cluster"]
        rows.append(f"\nScaling 1 → 2 workers ({one['cube_MB'] / 1e3:.2f} GB): write {two['write_MBps'] / one['write_MBps']:.2f}x, "
                    f"read {two['read_MBps'] / one['read_MBps']:.2f}x (target ≥ 1.8x). Peak RSS per worker with a "
                    f"{small['cube_MB'] / 1e3:.2f} GB cube {small['peak_rss_MB_per_worker']:.0f} MB, with a "
                    f"{two['cube_MB'] / 1e3:.2f} GB cube {two['peak_rss_MB_per_worker']:.0f} MB (target: flat).")
    rows.append(f"\nMeasured by `benchmarks/throughput.py` on {results['machine']}, {results['date']}, onnxruntime graph "
                f"optimization {results['onnxruntime_graph_optimization']}; "
                f"{results['chunks']} chunks of 12 × 256 × 256 uint16 from the shared Sentinel-2 patches"
                + (f"; one thread: the median of {results['rounds']} rounds over every codec in turn, each codec's "
                   "sessions warmed by one encode and decode first." if results.get("rounds") else "."))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argument_parser(__doc__, HERE / "results")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the model measured at every quality (default: the default)")
    p.add_argument("--others", nargs="*", default=None, help="models measured at their default quality (default: the "
                   "other shipped models)")
    p.add_argument("--chunks", type=int, default=24, help="chunks for the single-process measurements")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the one-thread measurements (median taken)")
    p.add_argument("--cube-mb", type=float, default=2048, help="size of the cube the clusters write and read; "
                   "a cube a quarter that size is written too, to show that worker memory does not grow with it")
    p.add_argument("--images-per-task", type=int, default=8, help="zarr chunks (12 x 256 x 256) per dask task")
    p.add_argument("--no-cluster", action="store_true")
    p.add_argument("--table", action="store_true", help="only re-render the table of --out's throughput.json (the "
                   "ratios' roles from the rd.json beside it) and put it in the README")
    args = p.parse_args(argv)
    if args.table:
        results = json.loads((args.out / "throughput.json").read_text())
        measured = [key.rsplit(" q", 1)[0] for key in results["local"] if " q" in key and not key.startswith("TEC ")]
        model = results.get("model", DEFAULT_MODEL)
        results["model"] = model
        results["ratios"] = ratios(results["local"], model, results["ratios"]["quality"], measured,
                                   args.out / "rd.json")
        publish("throughput", results, args.out / "throughput.json", table(results), not args.no_readme)
        return 0

    base = patches(args.data)
    items = [np.ascontiguousarray(base[i % len(base)]) for i in range(args.chunks)]
    cores = os.cpu_count() or 1
    runtime.configure(intra_op_threads=1)
    results = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
               "chunks": args.chunks, "cores": cores, "onnxruntime_graph_optimization": runtime.onnx.GRAPH_OPTIMIZATION,
               "local": {}}
    others = [m for m in SHIPPED if m != args.model] if args.others is None else args.others
    measured = codecs(args.model, others)
    singles = single_thread_rounds(items, measured, args.rounds)
    results["rounds"] = args.rounds
    for codec in measured:
        single = singles[codec.name]
        many = local_throughput(items, codec, cores)
        results["local"][codec.name] = {"single": single, "all_cores": many}
        print(f"{codec.name:<20} 1 thread enc {single['encode_MBps']:6.1f} dec {single['decode_MBps']:6.1f} MB/s | "
              f"{cores} threads enc {many['encode_MBps']:6.1f} dec {many['decode_MBps']:6.1f} MB/s", flush=True)
    q = get_card(args.model).default_quality
    results["model"] = args.model
    results["ratios"] = ratios(results["local"], args.model, q, others, args.out / "rd.json")
    results["tuning"] = tuning(items, args.model, q, cores)
    results["gpu"] = gpu_throughput(items, args.model, q)
    if not args.no_cluster:
        n = max(4, int(args.cube_mb * 1e6 // base[0].nbytes))
        results["cluster"] = []
        with tempfile.TemporaryDirectory(prefix="tec-throughput-") as tmp:
            for workers, images in ((1, n), (2, n), (2, n // 4)):
                results["cluster"].append(cluster_throughput(base, images, workers, Path(tmp), q, args.images_per_task))
                print(results["cluster"][-1], flush=True)
    publish("throughput", results, args.out / "throughput.json", table(results), not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
