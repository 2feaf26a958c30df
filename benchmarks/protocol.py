"""The out-of-source validation protocol of a training run, from its ``log.jsonl``: per validation, the bits each
set needs against the run's starting weights at equal PSNR (below 1: fewer).

The burst trainer (``tec_zarr.train.burst``, ``scripts/gpu_burst.sh``) validates its starting weights first and then
every ``--val-every-s``, on the in-source validation places (SSL4EO, as shipped: 20/60 m bands bilinear) and on three
sets it never trains on: the same crops with their 20/60 m bands re-made by nearest replication and by bilinear
interpolation from the native grid, and the 100 m desert tile. Rates are the trainer's (the discrete likelihood of
the rounded latents), PSNR on reflectance; the ratio at a PSNR is interpolated on log bpp over the starting curve,
for each quality whose PSNR the starting curve spans. The table gives each set's mean ratio and its range.

    python benchmarks/protocol.py --log runs/burst/log.jsonl --name cpu-robust [--readme-block protocol]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

SETS = {"validation": "in-source (validation places)", "nearest": "nearest 20/60 m", "bilinear": "bilinear 20/60 m",
        "desert": "desert 100 m"}


def curves(record: dict) -> dict[str, list[tuple[float, float]]]:
    out = {"validation": [(r["bpp"], r["psnr"]) for r in record["validation"]]}
    for name, rows in record.get("out_of_source", {}).items():
        out[name] = [(r["bpp"], r["psnr"]) for r in rows]
    return out


def ratios(curve: list[tuple[float, float]], start: list[tuple[float, float]]) -> list[float]:
    """Bits of ``curve``'s points against ``start`` at the same PSNR, where ``start`` spans that PSNR."""
    psnr = [p for _, p in start]
    log_bpp = [np.log(b) for b, _ in start]
    return [float(b / np.exp(np.interp(p, psnr, log_bpp))) for b, p in curve if psnr[0] <= p <= psnr[-1]]


def _json_lines(path: Path) -> list[dict]:
    """The JSON objects among a text file's lines (the burst trainer prints its settings as one, to burst.log)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def summarize(log: Path) -> dict:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    validations = [r for r in records if "validation" in r]
    if not validations or not validations[0].get("initial"):
        raise SystemExit(f"{log}: expected the starting weights' validation first (a new burst run directory)")
    run = next((r["burst"] for r in records + _json_lines(log.with_name("burst.log")) if "burst" in r), {})
    start = curves(validations[0])
    rows = []
    for record in validations[1:]:
        row = {"step": record["step"], "sets": {}}
        for name, curve in curves(record).items():
            got = ratios(curve, start[name])
            row["sets"][name] = {"mean": float(np.mean(got)) if got else None, "ratios": got, "curve": curve}
        rows.append(row)
    return {"log": str(log), "run": run, "start_step": validations[0]["step"], "start": start, "validations": rows}


def table(results: dict) -> str:
    if not results["validations"]:
        return f"No validation after the starting weights' (step {results['start_step']}) yet."
    names = [n for n in SETS if any(n in r["sets"] for r in results["validations"])]
    lines = ["| step | " + " | ".join(SETS[n] for n in names) + " |", "|---:|" + "---:|" * len(names)]
    for row in results["validations"]:
        cells = []
        for n in names:
            s = row["sets"].get(n)
            if not s or s["mean"] is None:
                cells.append("—")
            else:
                cells.append(f"{s['mean']:.3f} ({min(s['ratios']):.3f}–{max(s['ratios']):.3f})")
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    run = results["run"]
    lines += ["", f"Bits at equal PSNR against the starting weights (step {results['start_step']}), mean (range over "
              f"qualities); below 1: fewer. Run: {run.get('device', '?')}, {run.get('minutes', '?')} minutes, batch "
              f"{run.get('batch', '?')} of {run.get('crop', '?')} px crops, augment {run.get('augment', '?')}, rates "
              f"{run.get('lr', '?')}. Summarized {results['utc']} on {results['machine']}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    from common import argument_parser, machine, publish  # the benchmarks' own (here, not at import: tests have one)

    p = argument_parser(__doc__, HERE / "results" / "protocol.json")
    p.add_argument("--log", type=Path, required=True, help="a burst run's log.jsonl")
    p.add_argument("--name", required=True, help="the run's name: results go to results/protocol-NAME.json")
    p.add_argument("--readme-block", help="the README block the table goes to (none: print only)")
    args = p.parse_args(argv)
    from datetime import datetime, timezone

    results = {**summarize(args.log), "name": args.name, "machine": machine(),
               "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = args.out.with_name(f"protocol-{args.name}.json")
    publish(args.readme_block or "", results, out, table(results),
            readme=bool(args.readme_block) and not args.no_readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
