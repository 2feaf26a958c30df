"""The out-of-source validation protocol of a training run, from its ``log.jsonl``: per validation, the bits each
set needs against the run's starting weights at equal PSNR (below 1: fewer), and with ``--control`` against a
control run from the same weights at about the same step.

The burst trainer (``tec_zarr.train.burst``, ``scripts/gpu_burst.sh``) validates its starting weights first and then
every ``--val-every-s``, on the in-source validation places (SSL4EO, as shipped: 20/60 m bands bilinear) and on three
sets it never trains on: the same crops with their 20/60 m bands re-made by nearest replication and by bilinear
interpolation from the native grid, and the 100 m desert tile. Rates are the trainer's (the discrete likelihood of
the rounded latents), PSNR on reflectance; the ratio at a PSNR is interpolated on log bpp over the reference curve,
for each quality whose PSNR the reference curve spans. The table gives each set's mean ratio and its range.

A set the *starting weights* were trained on (the run's settings line says which: ``start_trained_on``; for logs
written before it did, ``--start-trained-on``) is marked: against the starting weights it shows what the run
forgets, not how a recipe does on data nobody trained on. The control run (same start, same data, another recipe,
e.g. ``--augment none``) separates the two: what the recipe itself changes is the run against the control.

    python benchmarks/protocol.py --log runs/burst/log.jsonl --name cpu-robust [--control runs/plain/log.jsonl]
        [--readme-block protocol]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

SETS = {"validation": "in-source (validation places)", "nearest": "nearest 20/60 m",
        "nearest, coded": "nearest 20/60 m as coded (smoothed in, block means out)", "bilinear": "bilinear 20/60 m",
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


def _validations(log: Path) -> tuple[list[dict], dict]:
    """A run's validation records, the starting weights' first, and its settings."""
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    validations = [r for r in records if "validation" in r]
    if not validations or not validations[0].get("initial"):
        raise SystemExit(f"{log}: expected the starting weights' validation first (a new burst run directory)")
    run = next((r["burst"] for r in records + _json_lines(log.with_name("burst.log")) if "burst" in r), {})
    return validations, run


def _row(record: dict, reference: dict[str, list[tuple[float, float]]]) -> dict:
    row = {"step": record["step"], "sets": {}}
    for name, curve in curves(record).items():
        got = ratios(curve, reference[name]) if name in reference else []
        row["sets"][name] = {"mean": float(np.mean(got)) if got else None, "ratios": got, "curve": curve}
    return row


def summarize(log: Path, control: Path | None = None, start_trained_on: tuple[str, ...] = (),
              against: Path | None = None) -> dict:
    """``against``: another run's log whose starting weights are the reference instead of this run's (the shipped
    weights, where this run continued a run that started from them)."""
    validations, run = _validations(log)
    reference = _validations(against)[0][0] if against is not None else validations[0]
    start = curves(reference)
    # A reference logged before a set was added (the coded nearest version) leaves that set without ratios; one
    # sharing no out-of-source set with the run measures nothing of it
    shared = set(start) & set(curves(validations[0]))
    if "validation" not in shared or len(shared) < 2:
        raise SystemExit(f"{against or log}: expected the in-source set and an out-of-source one shared with {log} "
                         f"({sorted(curves(validations[0]))}). Got {sorted(start)} instead.")
    out = {"log": str(log), "run": run, "start_step": reference["step"], "start": start,
           "against": None if against is None else str(against),
           "start_trained_on": sorted(set(run.get("start_trained_on", [])) | set(start_trained_on)),
           "validations": [_row(record, start) for record in validations[1:]]}
    if control is not None:
        theirs, control_run = _validations(control)
        if theirs[0]["step"] != validations[0]["step"] or curves(theirs[0]) != curves(validations[0]):
            raise SystemExit(f"{control}: expected a control run from the same starting weights as {log}")
        rows = []
        for record in validations[1:]:
            # the control's validation nearest in steps (the runs validate on their own clocks)
            other = min(theirs[1:], key=lambda r: abs(r["step"] - record["step"]), default=None)
            if other is not None:
                rows.append({**_row(record, curves(other)), "control_step": other["step"]})
        out["control"] = {"log": str(control), "run": control_run, "validations": rows}
    return out


def _cells(row: dict, names: list[str]) -> list[str]:
    cells = []
    for n in names:
        s = row["sets"].get(n)
        if not s or s["mean"] is None:
            cells.append("—")
        else:
            cells.append(f"{s['mean']:.3f} ({min(s['ratios']):.3f}–{max(s['ratios']):.3f})")
    return cells


def _describe(run: dict) -> str:
    return (f"{run.get('device', '?')}, {run.get('minutes', '?')} minutes, batch {run.get('batch', '?')} of "
            f"{run.get('crop', '?')} px crops, augment {run.get('augment', '?')}, rates {run.get('lr', '?')}")


def table(results: dict) -> str:
    if not results["validations"]:
        return f"No validation after the starting weights' (step {results['start_step']}) yet."
    names = [n for n in SETS if any(n in r["sets"] for r in results["validations"])]
    seen = results.get("start_trained_on", [])
    heads = [SETS[n] + (" *" if n in seen else "") for n in names]
    lines = ["| step | " + " | ".join(heads) + " |", "|---:|" + "---:|" * len(names)]
    lines += [f"| {row['step']} | " + " | ".join(_cells(row, names)) + " |" for row in results["validations"]]
    control = results.get("control")
    if control and control["validations"]:
        lines += ["", "| step (control's step) | " + " | ".join(heads) + " |", "|---:|" + "---:|" * len(names)]
        lines += [f"| {row['step']} ({row['control_step']}) | " + " | ".join(_cells(row, names)) + " |"
                  for row in control["validations"]]
    whose = ("the starting weights" if not results.get("against")
             else f"the starting weights of {results['against']}")
    lines += ["", f"Bits at equal PSNR against {whose} (step {results['start_step']}), mean (range over "
              f"qualities); below 1: fewer. Run: {_describe(results['run'])}."]
    if control and not control["validations"]:
        lines[-1] += " The control run has no validation after the starting weights' yet."
    elif control:
        lines[-1] += (f" Second table: the same run against a control run from the same weights and data at the "
                      f"nearest validated step ({_describe(control['run'])}): what the recipe itself changes.")
    if seen:
        lines[-1] += (" *: the starting weights were trained on this set's images, so against them it shows what "
                      "the run forgets of a training image, not how it does on unseen data.")
    lines[-1] += f" Summarized {results['utc']} on {results['machine']}."
    return "\n".join(lines)


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    from common import argument_parser, machine, publish  # the benchmarks' own (here, not at import: tests have one)

    p = argument_parser(__doc__, HERE / "results" / "protocol.json")
    p.add_argument("--log", type=Path, required=True, help="a burst run's log.jsonl")
    p.add_argument("--name", required=True, help="the run's name: results go to results/protocol-NAME.json")
    p.add_argument("--control", type=Path, help="a control run's log.jsonl (same starting weights, other recipe)")
    p.add_argument("--start-trained-on", nargs="*", default=[], choices=[n for n in SETS if n != "validation"],
                   help="sets the starting weights were trained on, for logs whose settings line does not say")
    p.add_argument("--against", type=Path, help="another run's log.jsonl whose starting weights are the reference "
                   "(the shipped weights, where this run continued a run that started from them)")
    p.add_argument("--readme-block", help="the README block the table goes to (none: print only)")
    args = p.parse_args(argv)
    from datetime import datetime, timezone

    results = {**summarize(args.log, args.control, tuple(args.start_trained_on), args.against), "name": args.name,
               "machine": machine(),
               "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = args.out.with_name(f"protocol-{args.name}.json")
    publish(args.readme_block or "", results, out, table(results),
            readme=bool(args.readme_block) and not args.no_readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
