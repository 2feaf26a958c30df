"""Thinning: chunks written at the top quality and cut to lower ones (``tec_zarr.thin``) against chunks coded at those
qualities directly.

Data: crops of the held-out places (``tec_zarr.train.data.validation_crops``; no model was trained on them),
crops of the 100 m Western Sahara tile (another source and region, nearest-replicated bands as stored), and for
tec-tt also the held-out places' four seasonal dates, one 4-date chunk per place (PSNR over the whole chunk). Per model,
image and level: the thinned chunk's PSNR (the project's PSNR) and its bits against the bits a directly coded chunk
needs for that PSNR on the same image (log-bits interpolated between the direct levels, extrapolated below the
lowest from its two lowest). Thinned in one step from the top level, and in two steps (top -> 2 -> 0, an archive
thinning older data twice). The hyperprior models also as thinning coded before runs-summed payloads (the level's
own tables only; ``own tables`` rows). Also the time of thinning a chunk against decoding it and encoding the image
again (the alternative without thinning), and of decoding the thinned chunk against a chunk coded at its level, in
this run. Writes benchmarks/results/thin.json and the README's ``thin`` table.

    python benchmarks/thin.py [--data ../shared/data] [--quick]
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

from common import argument_parser, machine, publish  # noqa: E402

import tec_zarr  # noqa: E402
from tec_zarr import metrics, pipeline  # noqa: E402
from tec_zarr.entropy.hyperprior import HyperpriorCoder  # noqa: E402
from tec_zarr.train import data  # noqa: E402

MODELS = ("tec-fp", "tec-hp", "tec-ctx", "tec-tt")
OWN_TABLES = ("tec-hp", "tec-ctx", "tec-tt")  # measured again with the level's own tables only
OWN_SUFFIX = " (own tables)"
TOP = 4
CHAIN = (2, 0)
LIMIT = 1.10  # the bound: thinned chunks at most 10 % more bits than direct ones at the same PSNR
# The held-out places' four seasonal dates as one chunk each: how tec-tt is stored (its PSNR over the whole chunk)
TEMPORAL_SET = "held-out places, 4-date chunks"
TEMPORAL_MODELS = ("tec-tt",)


def image_sets(root: Path, quick: bool) -> dict[str, np.ndarray]:
    dn = lambda refl: np.rint(np.asarray(refl, np.float64) * 1e4).astype(np.uint16)  # noqa: E731
    images = data.load_images(root)
    held = dn(data.validation_crops(data.split(images)[1]))
    desert = dn(data.out_of_source_crops(root))
    sets = {"held-out places": held[: 1 if quick else 4]}
    if len(desert):
        sets["desert 100 m (other source)"] = desert[[0] if quick else [0, 7, 15]]
    from tec_zarr.train.temporal import read_sequences

    sequences = [v for k, v in read_sequences(root).items() if k in data.VALIDATION_PLACES]
    sets[TEMPORAL_SET] = np.stack([np.ascontiguousarray(v[..., :256, :256]) for v in sequences[: 1 if quick else 2]])
    if quick:
        sets = {k: np.ascontiguousarray(v[..., :64, :64]) for k, v in sets.items()}
    return sets


def bits_needed(direct: list[tuple[float, float]], psnr: float) -> float:
    """Bits a direct chunk needs for ``psnr``: log-bits interpolated on the image's (PSNR, bits) levels."""
    p = np.array([d[0] for d in direct])
    b = np.log([d[1] for d in direct])
    if psnr < p[0]:
        return float(np.exp(b[0] + (psnr - p[0]) * (b[1] - b[0]) / (p[1] - p[0])))
    return float(np.exp(np.interp(psnr, p, b)))


def own_tables_only(func):
    """``func()`` with hyperprior-family thinning restricted to the level's own tables (as before runs summed)."""
    saved = HyperpriorCoder.sums_runs
    HyperpriorCoder.sums_runs = False
    try:
        return func()
    finally:
        HyperpriorCoder.sums_runs = saved


def measure(model: str, image: np.ndarray) -> dict:
    chunks = [pipeline.encode_chunk(image, model=model, quality=q, nodata=None) for q in range(TOP + 1)]
    direct = [(metrics.psnr(image, pipeline.decode_chunk(c)), 8.0 * len(c)) for c in chunks]
    one_step = {}
    for q in range(TOP - 1, -1, -1):
        thinned = tec_zarr.thin(chunks[TOP], q)
        psnr = metrics.psnr(image, pipeline.decode_chunk(thinned))
        one_step[str(q)] = {"psnr": psnr, "bits": 8 * len(thinned), "ratio": 8 * len(thinned) / bits_needed(direct, psnr)}
    chain, chunk = {}, chunks[TOP]
    for q in CHAIN:
        chunk = tec_zarr.thin(chunk, q)
        psnr = metrics.psnr(image, pipeline.decode_chunk(chunk))
        chain[str(q)] = {"psnr": psnr, "bits": 8 * len(chunk), "ratio": 8 * len(chunk) / bits_needed(direct, psnr)}
    return {"direct": [{"psnr": p, "bits": b} for p, b in direct], "one_step": one_step, "chain": chain}


def timing(model: str, image: np.ndarray, repeats: int = 3) -> dict:
    """Seconds to thin a top chunk to level 1 against decoding it and encoding the decoded image at level 1."""
    top = pipeline.encode_chunk(image, model=model, quality=TOP, nodata=None)

    def best(func) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            func()
            times.append(time.perf_counter() - start)
        return min(times)

    thin = best(lambda: tec_zarr.thin(top, 1))
    again = best(lambda: pipeline.encode_chunk(pipeline.decode_chunk(top), model=model, quality=1, nodata=None))
    thinned, direct = tec_zarr.thin(top, 1), pipeline.encode_chunk(image, model=model, quality=1, nodata=None)
    return {"thin_s": thin, "decode_encode_s": again, "decode_thinned_s": best(lambda: pipeline.decode_chunk(thinned)),
            "decode_direct_s": best(lambda: pipeline.decode_chunk(direct))}


def main(argv=None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "thin.json")
    p.add_argument("--quick", action="store_true", help="64 x 64 crops, one per set (a smoke run; not for the README)")
    p.add_argument("--table", action="store_true", help="only print (and put in the README) the table of --out")
    args = p.parse_args(argv)
    if args.table:
        results = json.loads(args.out.read_text())
        publish("thin", results, args.out, table(results), readme=not args.no_readme)
        return 0
    sets = image_sets(args.data, args.quick)
    results = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "top": TOP, "chain": list(CHAIN), "sets": {}, "timing": {}}
    for set_name, images in sets.items():
        models = TEMPORAL_MODELS if set_name == TEMPORAL_SET else MODELS
        results["sets"][set_name] = {m: [measure(m, im) for im in images] for m in models}
        for m in (m for m in OWN_TABLES if m in models):
            results["sets"][set_name][m + OWN_SUFFIX] = own_tables_only(lambda: [measure(m, im) for im in images])
        print(f"measured {set_name}", flush=True)
    first = next(iter(sets.values()))[0]
    results["timing"] = {m: timing(m, first) for m in MODELS}
    results["timing_side"] = int(first.shape[-1])
    publish("thin", results, args.out, table(results), readme=not args.no_readme and not args.quick)
    return 0


def summary(runs: list[dict], kind: str, q: int) -> tuple[float, float]:
    """(mean ratio, worst ratio) over a set's images."""
    ratios = [r[kind][str(q)]["ratio"] for r in runs]
    return float(np.mean(ratios)), float(np.max(ratios))


def monotone(runs: list[dict]) -> bool:
    """Quality falls with every level thinned to, on every image."""
    for r in runs:
        psnrs = [r["direct"][TOP]["psnr"]] + [r["one_step"][str(q)]["psnr"] for q in range(TOP - 1, -1, -1)]
        if any(a <= b for a, b in zip(psnrs, psnrs[1:])):
            return False
    return True


def table(results: dict) -> str:
    lines = [f"Bits of a thinned chunk / bits of a chunk coded directly at the same PSNR (mean, worst image); "
             f"{machine_line(results)}", "",
             "| set | model | " + " | ".join(f"{TOP} -> {q}" for q in range(TOP - 1, -1, -1))
             + " | " + " -> ".join(str(q) for q in (TOP, *CHAIN)) + " (two steps, at 0) | quality falls |",
             "|---|---|" + "---:|" * TOP + "---:|:---:|"]
    for set_name, per_model in results["sets"].items():
        for model, runs in per_model.items():
            cells = []
            for q in range(TOP - 1, -1, -1):
                mean, worst = summary(runs, "one_step", q)
                cells.append(f"{mean:.3f} ({worst:.3f})")
            mean, worst = summary(runs, "chain", CHAIN[-1])
            cells.append(f"{mean:.3f} ({worst:.3f})")
            lines.append(f"| {set_name} ({len(runs)}) | {model} | " + " | ".join(cells)
                         + f" | {'yes' if monotone(runs) else 'no'} |")
    worst = {}
    for per_model in results["sets"].values():
        for model, runs in per_model.items():
            means = [summary(runs, "one_step", q)[0] for q in range(TOP)] + [summary(runs, "chain", CHAIN[-1])[0]]
            worst[model] = max(worst.get(model, 0.0), *means)
    own = [m for m in worst if m.endswith(OWN_SUFFIX)]
    lines += ["", "Largest mean over the levels, the two-step column and the sets: "
              + ", ".join(f"{m} {worst[m]:.3f}" for m in worst if m not in own)
              + f" (the issue's bound: {LIMIT:.2f})"
              + ("; with the level's own tables only: " + ", ".join(f"{m.removesuffix(OWN_SUFFIX)} {worst[m]:.3f}"
                                                                  for m in own) if own else "") + "."]
    side = results["timing_side"]
    lines += ["", f"Own tables: thinned with the level's own tables only, as before runs-summed payloads. Thinning a {side} x "
              f"{side} chunk from quality 4 to 1 against decoding it and encoding it again at 1, and decoding the "
              "thinned chunk against a chunk coded at 1 directly (seconds, best of 3, this run):", "",
              "| model | thin | decode + encode | thin / (decode + encode) | decode thinned | decode direct | ratio |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for model, t in results["timing"].items():
        decode = (f" {t['decode_thinned_s']:.3f} | {t['decode_direct_s']:.3f} | "
                  f"{t['decode_thinned_s'] / t['decode_direct_s']:.2f} |" if "decode_direct_s" in t else " | | |")
        lines.append(f"| {model} | {t['thin_s']:.3f} | {t['decode_encode_s']:.3f} | "
                     f"{t['thin_s'] / t['decode_encode_s']:.2f} |" + decode)
    return "\n".join(lines)


def machine_line(results: dict) -> str:
    return f"measured {results['date']} on {results['machine']}."


if __name__ == "__main__":
    raise SystemExit(main())
