"""How many bits could the temporal model (issue 15) save with per-symbol mixture parameters instead of tec-tt-2's
look-up table? A measurement for the design of the next tec-tt, not product code (needs torch: the train extra).

Data: the seasonal SSL4EO sequences of ``../shared/data`` (5 places x 4 dates, about three months apart), top-left
256 x 256, tec-ctx-2's symbols (tec-tt-2's base) at qualities 1 and 2 (about 40 and 45 dB). For every symbol: its
scale and fine mean as tec-ctx-2's context model gives them (walked as the coder does, ``fraction_bits`` 3), and
those of the previous date at the same position. Fitted on the three training places' adjacent date pairs (both
directions), evaluated on the two held-out places' dates 2-4 against the date before.

Code lengths are ideal ones of discretized Gaussians (float). Baseline: the fine mean, rounded at the scales where
that codes fewer bits on the training pairs (what tec-tt's *coarse* flags do). Each variant keeps the baseline as
its first component and learns, per symbol, a second one (centre, width) and the weight between them with a small
network (channel embedding, 2 x 32 ReLU), rate only:

* ``alone``: features of the symbol itself only (channel, scale, quality); the second centre is free. What a
  better-calibrated image model would save: not temporal.
* ``previous``: the second centre is the previous date's co-located symbol; features add where it lies against
  this symbol's mean in units of its scale, the previous date's own mean and scale there and how far the previous
  symbol was from them (its surprise).
* ``previous-bare``: as ``previous`` without the previous date's own mean and scale (what the earlier study,
  ``scripts/temporal_study.py``, gave its network).

The temporal saving of a variant is ``1 - (1 - s_variant) / (1 - s_alone)``: what the previous date adds to the
calibration any image model could have. tec-tt-2's own table (weights per channel x scale bucket x |prev - mean|)
measured on its integer tables saves 2.35 % (q1) / 2.0 % (q2) of the later dates' fine-mean bits (this session's
study, see the issue note).

    .venv/bin/python scripts/temporal_headroom.py [--data ../shared/data] [--steps 1500]

About 10 minutes on 2 cores. Writes benchmarks/results/temporal-headroom.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine  # noqa: E402

from tec_zarr.entropy.context import gather, run_steps, scatter  # noqa: E402
from tec_zarr.entropy.hyperprior import LOG_BITS  # noqa: E402
from tec_zarr.entropy.temporal import coded_order  # noqa: E402
from tec_zarr.models import load_model  # noqa: E402
from tec_zarr.train.data import VALIDATION_PLACES  # noqa: E402
from tec_zarr.train.temporal import FRACTION_BITS, read_sequences, symbols_and_side  # noqa: E402

BASE = "tec-ctx-2"
QUALITIES = (1, 2)
VARIANTS = ("alone", "previous", "previous-bare")


def date_grids(model, dn: np.ndarray, quality: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per date: (symbols, scale index, fine mean at 2**-FRACTION_BITS), (h, w, M) in the coded channel order."""
    coder = model.coder
    _, symbols, z = symbols_and_side(model, dn, quality)
    out = []
    for t in range(dn.shape[0]):
        now = coded_order(symbols[t : t + 1], coder.context.order)
        index, mean = np.zeros(now.shape, np.int64), np.zeros(now.shape, np.int64)

        def code_step(idx, fine_mean, a, e, classes):
            scatter(index[..., a:e], classes, idx)
            scatter(mean[..., a:e], classes, fine_mean)
            return gather(now[..., a:e], classes)

        run_steps(coder.hyperprior, coder.context, z[t : t + 1], quality, now.shape[:1] + symbols.shape[1:],
                  code_step, fraction_bits=FRACTION_BITS)
        out.append((now[0], index[0], mean[0]))
    return out


def pair_rows(now, before, sigmas: np.ndarray, quality: int) -> dict[str, np.ndarray]:
    (v, idx, mu), (pv, pidx, pmu) = now, before
    m = v.shape[-1]
    return {"v": v.ravel(), "sig": sigmas[idx].ravel(), "mu": (mu / 2.0**FRACTION_BITS).ravel(),
            "prev": pv.ravel(), "pmu": (pmu / 2.0**FRACTION_BITS).ravel(), "psig": sigmas[pidx].ravel(),
            "ch": np.broadcast_to(np.arange(m), v.shape).ravel(), "q": np.full(v.size, quality)}


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "temporal-headroom.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = load_model(BASE)
    hp = model.coder.hyperprior
    sigmas = np.array([2.0 ** (hp.log_sigma_min / 2**LOG_BITS + i / hp.steps_per_octave)
                       for i in range(hp.scales.count)])
    train, val = [], []
    for place, dn in sorted(read_sequences(args.data).items()):
        for quality in QUALITIES:
            grids = date_grids(model, np.ascontiguousarray(dn[..., :256, :256]), quality)
            for t in range(len(grids)):
                for p in (t - 1, t + 1):
                    if not 0 <= p < len(grids):
                        continue
                    if place in VALIDATION_PLACES and p == t - 1:
                        val.append(pair_rows(grids[t], grids[p], sigmas, quality))
                    elif place not in VALIDATION_PLACES:
                        train.append(pair_rows(grids[t], grids[p], sigmas, quality))
    tr = {k: torch.tensor(np.concatenate([r[k] for r in train])) for k in train[0]}
    va = {k: torch.tensor(np.concatenate([r[k] for r in val])) for k in val[0]}

    def phi(x):
        return 0.5 * torch.erfc(-x / math.sqrt(2.0))

    def gauss(v, mu, sig):
        return (phi((v + 0.5 - mu) / sig) - phi((v - 0.5 - mu) / sig)).clamp_min(0.0)

    # baseline: the fine mean, rounded at the (quality, scale) where that codes fewer bits on the training pairs
    for rows in (tr, va):
        rows["mu1"] = rows["mu"].clone()
    for quality in QUALITIES:
        for sig in torch.unique(tr["sig"]):
            k = (tr["q"] == quality) & (tr["sig"] == sig)
            v, mu = tr["v"][k].double(), tr["mu"][k]
            if (-torch.log2(gauss(v, torch.round(mu), sig).clamp_min(1e-12))).sum() <= \
                    (-torch.log2(gauss(v, mu, sig).clamp_min(1e-12))).sum():
                for rows in (tr, va):
                    kk = (rows["q"] == quality) & (rows["sig"] == sig)
                    rows["mu1"][kk] = torch.round(rows["mu"][kk])

    def base_bits(rows):
        return -torch.log2(gauss(rows["v"].double(), rows["mu1"], rows["sig"]).clamp_min(1e-12))

    channels = int(tr["ch"].max()) + 1

    class Mixture(torch.nn.Module):
        def __init__(self, variant: str):
            super().__init__()
            self.variant = variant
            self.embed = torch.nn.Embedding(channels, 8)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(8 + 7, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                           torch.nn.ReLU(), torch.nn.Linear(32, 3))

        def features(self, rows):
            sig, mu = rows["sig"].float(), rows["mu"].float()
            own = [torch.log2(sig), rows["q"].float() - 1.5]
            if self.variant == "alone":
                extra = [torch.zeros_like(sig)] * 5
            else:
                prev, pmu, psig = rows["prev"].float(), rows["pmu"].float(), rows["psig"].float()
                extra = [((prev - mu) / sig).clamp(-8, 8), ((prev - mu).abs() / sig).clamp(0, 8)]
                if self.variant == "previous":
                    extra += [((pmu - mu) / sig).clamp(-8, 8), torch.log2(psig / sig),
                              ((prev - pmu) / psig).clamp(-8, 8)]
                else:
                    extra += [torch.zeros_like(sig)] * 3
            return torch.cat([self.embed(rows["ch"]), torch.stack(own + extra, 1)], 1)

        def bits(self, rows):
            o = self.mlp(self.features(rows))
            v, sig = rows["v"].float(), rows["sig"].float()
            centre = rows["mu1"].float() + sig * o[:, 0].clamp(-10, 10) if self.variant == "alone" \
                else rows["prev"].float()
            second = gauss(v, centre, sig * torch.exp(o[:, 1].clamp(-4, 1)))
            w = torch.sigmoid(o[:, 2])
            p = (1 - w) * gauss(v, rows["mu1"].float(), sig) + w * second
            return -torch.log2(p.clamp_min(1e-9))

    report = {"machine": machine(), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "base": BASE, "qualities": list(QUALITIES), "steps": args.steps,
              "train_symbols": int(tr["v"].numel()), "val_symbols": int(va["v"].numel()), "savings": {}}
    val_base = base_bits(va)
    n = tr["v"].numel()
    for variant in VARIANTS:
        net = Mixture(variant)
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for step in range(args.steps):
            pick = torch.randint(0, n, (8192,))
            batch = {k: v[pick] for k, v in tr.items()}
            loss = (net.bits(batch) - base_bits(batch).float()).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            bits = net.bits(va).double()
        report["savings"][variant] = {f"q{q}": round(1 - float(bits[va["q"] == q].sum()) /
                                                     float(val_base[va["q"] == q].sum()), 4) for q in QUALITIES}
        print(variant, report["savings"][variant], time.strftime("%H:%M:%S"), flush=True)
    alone = report["savings"]["alone"]
    report["temporal_savings"] = {
        variant: {q: round(1 - (1 - s[q]) / (1 - alone[q]), 4) for q in s}
        for variant, s in report["savings"].items() if variant != "alone"}
    print(json.dumps(report["temporal_savings"]))
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
