"""Design study for the temporal model TEC-TT (issue 15): how many bits can dates 2..4 of a 4-date sequence save when
each date's latent symbols are coded conditioned on the previous date's decoded symbols, on top of the shipped
hyperprior (tec-hp) and context (tec-ctx) entropy models?

Not product code: it measures. Data: the seasonal SSL4EO set of ``../shared/data`` (5 places x 4 dates, ~3 months
apart). The 3 fitting places (full 264 x 264, edge-padded to 272) fit the conditional models; the 2 held-out places
(tec_zarr.train.data.VALIDATION_PLACES, top-left 256 x 256 crop) are evaluated, dates 2..4 (t = 1, 2, 3), each
conditioned on date t - 1.

Stages (``--stage all`` runs them in order; intermediate arrays are cached under ``runs/temporal-study/cache``):

extract  per image and quality: symbols round(y * gain[q]); tec-hp's scale index and integer mean; tec-ctx's final
         per-symbol parameters (recorded while walking its ten steps, encoder side) as table index / integer mean
         and as continuous log2 sigma / mean; the real payload sizes of tec-hp and tec-ctx (held-out places).
simple   no learning, fitted on the fitting places, evaluated on the held-out places:
         * empirical histograms of ``symbol - mean`` per (channel, scale-index bucket [, previous-date bucket]),
           add-one smoothed over each (channel, bucket)'s observed support plus an escape; previous-date buckets:
           |co-located previous symbol| (5), or previous symbol - current mean (7, signed: a mean shift);
         * LUT shift: (channel, index bucket, previous-date bucket) -> (integer mean shift, index shift) applied to
           the image model's integer parameters, coded with its own tables;
         * LUT mixture: (1 - w) table(symbol - mean) + w table(symbol - previous symbol), same scale index, w in
           1/16 from (channel, index bucket, min(|previous - mean|, 4)); also fitted across the two held-out places
           (one on the other) to measure the bias of fitting on the image models' own training places;
         * side: tec-ctx with fractional means (no temporal information).
learn    a small conv net, rate-only, from a k x k neighbourhood of date t-1's decoded latents (optionally date t-2)
         and tec-ctx's (mean, log2 sigma) of date t: corrections of tec-ctx's Gaussian, or (``--mixture``) a
         two-component mixture whose second component sits at the previous symbol (``--fixed-first``: tec-ctx's
         Gaussian kept as the first component). One network for qualities 1..3 (inputs in latent units, like
         tec-ctx's networks). Trained on the fitting places' date pairs, both date orders, random 32 x 32 latent
         crops, flips, rot90; evaluated on the held-out dates 2..4 with the parameters quantized the way the coder
         does (integer means, scale-table indices, weights in 1/16) and the ideal code length of tec-ctx's tables.
report   tables of bits per date (JSON and markdown in runs/temporal-study/).

Usage (the runs behind the committed numbers; about 45 min on 2 shared cores):
  .venv/bin/python scripts/temporal_study.py --stage extract      # ~2 min, 1.2 GB cache
  .venv/bin/python scripts/temporal_study.py --stage simple       # ~2 min
  .venv/bin/python scripts/temporal_study.py --stage learn --steps 2000
  .venv/bin/python scripts/temporal_study.py --stage learn --steps 1500 --mixture
  .venv/bin/python scripts/temporal_study.py --stage learn --steps 1200 --mixture --fixed-first --lr 1e-3
  .venv/bin/python scripts/temporal_study.py --stage learn --steps 1000 --mixture --fixed-first --two-dates --lr 1e-3
  .venv/bin/python scripts/temporal_study.py --stage report
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "s2l2a_ssl4eo_seasonal"
OUT = ROOT / "runs" / "temporal-study"
CACHE = OUT / "cache"
QUALITIES = (1, 2, 3)
DATES = 4
CROP = 256


def places():
    from tec_zarr.train.data import VALIDATION_PLACES

    names = sorted({p.stem.split("_")[2] for p in DATA.glob("ssl4eos12_val_*_0.tif")})
    return [p for p in names if p not in VALIDATION_PLACES], list(VALIDATION_PLACES)


def read_place(place: str) -> np.ndarray:
    import rasterio

    out = []
    for t in range(DATES):
        with rasterio.open(DATA / f"ssl4eos12_val_{place}_{t}.tif") as src:
            out.append(src.read())
    return np.stack(out)  # (T, 12, 264, 264) int16 DN


# -- extract ----------------------------------------------------------------------------------------------------------


class _Recorder:
    """tec-ctx's hyperprior, recording the continuous parameters each step's index and mean come from."""

    def __init__(self, hp):
        self._hp, self.last = hp, None

    def __getattr__(self, name):
        return getattr(self._hp, name)

    def index_and_mean(self, log_sigma, mu, log_gain, gain_int):
        self.last = (log_sigma, mu, log_gain, gain_int)
        return self._hp.index_and_mean(log_sigma, mu, log_gain, gain_int)


def ctx_parameters(coder, z, symbols, quality):
    """tec-ctx's final per-symbol parameters (encoder side): index, integer mean, log2 sigma and mean in symbol
    units, each (M, h, w) in latent channel order (batch of one)."""
    from tec_zarr.entropy.context import gather, run_steps, scatter
    from tec_zarr.entropy.hyperprior import GAIN_BITS, LOG_BITS

    hp, ctx = coder.hyperprior, coder.context
    rec = _Recorder(hp)
    known = np.moveaxis(symbols[:, ctx.order], 1, -1).astype(np.int64)
    grids = {k: np.zeros(known.shape, np.float64) for k in ("index", "mean", "ls", "mu")}

    def code_step(index, mean, a, e, classes):
        log_sigma, mu, log_gain, gain_int = rec.last
        for k, v in (("index", index), ("mean", mean), ("ls", (log_sigma + log_gain) / 2.0**LOG_BITS),
                     ("mu", mu * gain_int.astype(np.float64) / 2.0 ** (hp.mean_bits + GAIN_BITS))):
            scatter(grids[k][..., a:e], classes, np.asarray(v, np.float64))
        return gather(known[..., a:e], classes)

    got = run_steps(rec, ctx, z, quality, symbols.shape, code_step)
    assert np.array_equal(got, symbols)
    out = {}
    for k, g in grids.items():
        full = np.empty((g.shape[0], g.shape[-1]) + g.shape[1:3], np.float64)
        full[:, ctx.order] = np.moveaxis(g, -1, 1)
        out[k] = full[0]
    return out


def extract(quality: int) -> dict:
    """{key: arrays} for every image ``place_t``; cached."""
    from tec_zarr.bitstream.payload import split_z_section
    from tec_zarr.models import load_model
    from tec_zarr.pipeline.prepare import normalize

    path = CACHE / f"q{quality}.npz"
    if path.exists():
        with np.load(path) as f:
            return dict(f)
    hp_model, ctx_model = load_model("tec-hp"), load_model("tec-ctx")
    fitting, held = places()
    out = {}
    for place in fitting + held:
        dn = read_place(place)
        if place in held:
            dn = dn[..., :CROP, :CROP]
        for t in range(DATES):
            x, _ = normalize(np.ascontiguousarray(dn[t : t + 1]), hp_model, None, 1.0)
            y = hp_model.encoder.run(x)
            symbols = np.rint(y * hp_model.gain[quality][None, :, None, None]).astype(np.int32)
            key = f"{place}_{t}"
            zh = hp_model.coder.side_information(y, quality)
            index, mean = hp_model.coder.hyperprior.parameters(zh, quality)
            zc = ctx_model.coder.side_information(y, quality)
            cp = ctx_parameters(ctx_model.coder, zc, symbols, quality)
            out[f"{key}/sym"] = symbols[0].astype(np.int32)
            out[f"{key}/hp_index"] = index[0].astype(np.int16)
            out[f"{key}/hp_mean"] = mean[0].astype(np.int32)
            out[f"{key}/ctx_index"] = cp["index"].astype(np.int16)
            out[f"{key}/ctx_mean"] = cp["mean"].astype(np.int32)
            out[f"{key}/ctx_ls"] = cp["ls"].astype(np.float32)
            out[f"{key}/ctx_mu"] = cp["mu"].astype(np.float32)
            if place in held:
                for name, model in (("hp", hp_model), ("ctx", ctx_model)):
                    payload = model.coder.encode(y, symbols, quality)
                    z_bytes, _ = split_z_section(payload)
                    out[f"{key}/{name}_payload_bits"] = np.int64(8 * len(payload))
                    out[f"{key}/{name}_z_bits"] = np.int64(8 * len(z_bytes) + 32)  # z section and its u32 length
            print(f"  q{quality} {key} {time.strftime('%H:%M:%S')}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


# -- code lengths of the coders' integer tables ---------------------------------------------------------------------


def coder_tables(name: str):
    from tec_zarr.models import load_model

    hp = load_model(name).coder.hyperprior
    return hp.scales, hp.log_sigma_min / 4096.0, hp.steps_per_octave


def table_bits(values: np.ndarray, index: np.ndarray, scales) -> np.ndarray:
    """Ideal code length (bits) of ``values`` (symbol - integer mean) under the scale tables ``index`` names,
    escapes as the range coder writes them (6 bits of bit length, then the bits below the leading one)."""
    index = index.astype(np.int64)
    lo = scales.offsets[index]
    esc = scales.lengths[index] - 1
    s = values.astype(np.int64) - lo
    inside = (s >= 0) & (s < esc)
    p = scales.pmf[index, np.where(inside, s, esc)]
    bits = 16.0 - np.log2(p.astype(np.float64))
    z = np.where(s >= esc, (s - esc) * 2, (-s - 1) * 2 + 1) + 1
    extra = 6.0 + np.floor(np.log2(np.maximum(z, 1)))
    return bits + np.where(inside, 0.0, extra)


# -- simple conditioning ----------------------------------------------------------------------------------------------


INDEX_BUCKET = 4  # scale-table indices per bucket (8 indices per octave: half-octave buckets)
ESCAPE_K = 255


def abs_bucket(prev):
    a = np.abs(prev)
    return np.select([a == 0, a == 1, a == 2, a <= 4], [0, 1, 2, 3], 4)


def signed_bucket(diff):
    return np.clip(diff, -3, 3) + 3


def fit_histograms(resid, channel_bucket, ctx_key, n_ctx):
    """Counts per context over each (channel, index bucket)'s observed support; returns a cost function."""
    lo = np.full(channel_bucket.max() + 1, ESCAPE_K, np.int64)
    hi = np.full(channel_bucket.max() + 1, -ESCAPE_K, np.int64)
    r = np.clip(resid, -ESCAPE_K, ESCAPE_K)
    np.minimum.at(lo, channel_bucket, r)
    np.maximum.at(hi, channel_bucket, r)
    width = int((hi - lo).max()) + 2  # support + escape
    counts = np.zeros((n_ctx, width), np.float64)
    np.add.at(counts, (ctx_key, r - lo[channel_bucket]), 1.0)
    return lo, hi, counts


def histogram_bits(fit, resid, channel_bucket, ctx_key):
    lo, hi, counts = fit
    n_cb = lo.shape[0]
    cb = np.minimum(channel_bucket, n_cb - 1)
    l, h = lo[cb], hi[cb]
    valid = h >= l  # a (channel, bucket) never seen in fitting: its support is empty, everything escapes
    support = np.where(valid, h - l + 1, 0)
    inside = valid & (resid >= l) & (resid <= h)
    key = np.minimum(ctx_key, counts.shape[0] - 1)
    c = counts[key, np.where(inside, resid - l, 0)]
    c = np.where(inside, c, 0.0)
    total = counts.sum(1)[key]  # the escape's count is always 0 (+1 smoothing)
    bits = -np.log2((c + 1.0) / (total + support + 1.0))
    esc_bits = -np.log2(1.0 / (total + support + 1.0)) + 6.0 + np.log2(np.abs(resid) + 2.0) + 1.0
    return np.where(inside, bits, esc_bits)


def pair_arrays(data: dict, place: str, tp: int, tc: int, base: str) -> tuple[np.ndarray, ...]:
    """(symbols of date tc, symbols of date tp, base model's integer mean and table index of date tc), int64."""
    key = f"{place}_{tc}"
    return tuple(data[k].astype(np.int64) for k in (f"{key}/sym", f"{place}_{tp}/sym", f"{key}/{base}_mean",
                                                     f"{key}/{base}_index"))


def simple_study(data: dict, quality: int, report: dict) -> None:
    fitting, held = places()
    n_index = 128 // INDEX_BUCKET
    for base in ("hp", "ctx"):
        def gather_rows(place_list, pairs):
            cols = {k: [] for k in ("resid", "cb", "abs", "sgn")}
            for place in place_list:
                for tp, tc in pairs:
                    sym, prev, mean, idx = pair_arrays(data, place, tp, tc, base)
                    ch = np.arange(sym.shape[0])[:, None, None]
                    cols["resid"].append((sym - mean).ravel())
                    cols["cb"].append((ch * n_index + idx // INDEX_BUCKET).ravel())
                    cols["abs"].append(abs_bucket(prev).ravel())
                    cols["sgn"].append(signed_bucket(prev - mean).ravel())
            return {k: np.concatenate(v) for k, v in cols.items()}

        # Fit on every ordered pair of consecutive dates of the fitting places (both orders), evaluate forward.
        fit_pairs = [(t - 1, t) for t in range(1, DATES)] + [(t + 1, t) for t in range(DATES - 1)]
        fit_rows = gather_rows(fitting, fit_pairs)
        eval_rows = gather_rows(held, [(t - 1, t) for t in range(1, DATES)])
        n_cb = 192 * n_index
        variants = {"hist": (None, 1), "hist+|prev|": ("abs", 5), "hist+sign(prev-mean)": ("sgn", 7)}
        for name, (col, nb) in variants.items():
            def key_of(rows):
                return rows["cb"] * nb + (rows[col] if col else 0)

            fit = fit_histograms(fit_rows["resid"], fit_rows["cb"], key_of(fit_rows), n_cb * nb)
            bits = histogram_bits(fit, eval_rows["resid"], eval_rows["cb"], key_of(eval_rows))
            report.setdefault(f"q{quality}", {}).setdefault("simple", {})[f"{base}:{name}"] = float(bits.sum()) / (
                len(held) * (DATES - 1))
        print(f"  q{quality} simple {base} done", flush=True)


LUT_MEAN = range(-4, 5)  # candidate integer mean shifts
LUT_INDEX = range(-12, 5)  # candidate scale-table index shifts (1/8 octave each)
LUT_R = 48  # fitting residuals clipped to +-LUT_R for the counts (escape costs beyond are nearly flat)


def lut_study(data: dict, quality: int, report: dict) -> None:
    """Simple conditioning the coder could use as is: a look-up table (channel, scale-index bucket, previous-date
    bucket) -> (integer mean shift, scale-index shift) applied to the image model's own integer parameters and coded
    with its own tables. Chosen on the fitting places by exhaustive search (fewest bits), evaluated on the held-out
    places with the tables' ideal code lengths."""
    fitting, held = places()
    fit_pairs = [(t - 1, t) for t in range(1, DATES)] + [(t + 1, t) for t in range(DATES - 1)]
    eval_pairs = [(t - 1, t) for t in range(1, DATES)]
    shifts = [(dm, di) for dm in LUT_MEAN for di in LUT_INDEX]
    for base, model in (("hp", "tec-hp"), ("ctx", "tec-ctx")):
        scales = coder_tables(model)[0]
        n_t = scales.count
        idx_grid, r_grid = np.meshgrid(np.arange(n_t), np.arange(-LUT_R, LUT_R + 1), indexing="ij")
        cost_tables = np.stack([table_bits(r_grid - dm, np.clip(idx_grid + di, 0, n_t - 1), scales)
                                for dm, di in shifts])  # (S, T, R)
        variants = {"lut": (None, 1), "lut+abs(prev)": ("abs", 5), "lut+sign(prev-mean)": ("sgn", 9)}

        def rows(place_list, pairs, col):
            for place in place_list:
                for tp, tc in pairs:
                    sym, prev, mean, idx = pair_arrays(data, place, tp, tc, base)
                    if col == "abs":
                        pb = abs_bucket(prev)
                    elif col == "sgn":
                        pb = np.clip(prev - mean, -4, 4) + 4
                    else:
                        pb = np.zeros_like(sym)
                    ch = np.broadcast_to(np.arange(sym.shape[0])[:, None, None], sym.shape)
                    yield sym - mean, idx, ch, pb

        for name, (col, nb) in variants.items():
            counts = np.zeros((192 * nb, n_t, 2 * LUT_R + 1))
            for r, idx, ch, pb in rows(fitting, fit_pairs, col):
                key = ((ch * nb + pb) * n_t + idx) * (2 * LUT_R + 1) + np.clip(r, -LUT_R, LUT_R) + LUT_R
                counts += np.bincount(key.ravel(), minlength=counts.size).reshape(counts.shape)
            cost = np.einsum("kir,sir->kis", counts, cost_tables, optimize=True)  # (contexts, T, S)
            n_b = -(-n_t // INDEX_BUCKET)
            padded = np.zeros((cost.shape[0], n_b * INDEX_BUCKET, len(shifts)))
            padded[:, :n_t] = cost
            best = padded.reshape(cost.shape[0], n_b, INDEX_BUCKET, len(shifts)).sum(2).argmin(-1)  # (contexts, B)
            dm_of = np.array([d for d, _ in shifts])[best]
            di_of = np.array([d for _, d in shifts])[best]
            total = 0.0
            for r, idx, ch, pb in rows(held, eval_pairs, col):
                k, b = ch * nb + pb, idx // INDEX_BUCKET
                total += table_bits(r - dm_of[k, b], np.clip(idx + di_of[k, b], 0, n_t - 1), scales).sum()
            report.setdefault(f"q{quality}", {}).setdefault("simple", {})[f"{base}:{name}"] = total / (
                len(held) * len(eval_pairs))
        print(f"  q{quality} lut {base} done", flush=True)


MIX_WEIGHTS = np.arange(0, 13) / 16.0  # candidate weights of the previous-symbol component


def lut_mixture_study(data: dict, quality: int, report: dict, cross: bool = False) -> None:
    """The simplest mixture: p = (1 - w) * table(symbol - mean) + w * table(symbol - previous symbol), both with the
    image model's own scale index, w in 1/16 from a look-up table (channel, scale-index bucket, min(|previous - mean|,
    4)) chosen on the fitting places. Integer-exact as it stands (two table counts mixed with integer weights).

    ``cross``: a check of the fitting places' bias (the image models were trained on them, so their parameters are
    better calibrated there than on unseen places): fit on one held-out place, evaluate on the other, both ways."""
    fitting, held = places()
    splits = [([held[1]], [held[0]]), ([held[0]], [held[1]])] if cross else [(fitting, held)]
    fit_pairs = [(t - 1, t) for t in range(1, DATES)] + [(t + 1, t) for t in range(DATES - 1)]
    eval_pairs = [(t - 1, t) for t in range(1, DATES)]
    n_index = 128 // INDEX_BUCKET
    for base, model in (("hp", "tec-hp"), ("ctx", "tec-ctx")):
        scales = coder_tables(model)[0]

        def rows(place_list, pairs):
            keys, p1, p2 = [], [], []
            for place in place_list:
                for tp, tc in pairs:
                    sym, prev, mean, idx = pair_arrays(data, place, tp, tc, base)
                    ch = np.arange(sym.shape[0])[:, None, None]
                    bucket = np.minimum(np.abs(prev - mean), 4)
                    keys.append(((ch * n_index + idx // INDEX_BUCKET) * 5 + bucket).ravel())
                    p1.append(table_prob(sym - mean, idx, scales).ravel())
                    p2.append(table_prob(sym - prev, idx, scales).ravel())
            return np.concatenate(keys), np.concatenate(p1), np.concatenate(p2)

        n_ctx = 192 * n_index * 5
        total = 0.0
        for fit_places, eval_places in splits:
            keys, p1, p2 = rows(fit_places, fit_pairs)
            cost = np.stack([np.bincount(keys, -np.log2((1 - w) * p1 + w * p2), minlength=n_ctx) for w in MIX_WEIGHTS])
            best_w = MIX_WEIGHTS[cost.argmin(0)]
            keys, p1, p2 = rows(eval_places, eval_pairs)
            w = best_w[keys]
            total += float(-np.log2((1 - w) * p1 + w * p2).sum())
        name = "lutmix(cross-held-out)" if cross else "lutmix"
        report.setdefault(f"q{quality}", {}).setdefault("simple", {})[f"{base}:{name}"] = total / (
            len(held) * len(eval_pairs))
        print(f"  q{quality} lut mixture {base} done", flush=True)


def mean_resolution_study(data: dict, quality: int, report: dict) -> None:
    """Side question (no temporal information): what tec-ctx's y bits of dates 2..4 would be with its own log2 sigma
    (table-quantized) and its mean rounded to 1 (the coder), 1/2, 1/4 of a symbol, or not at all (discretized
    Gaussian ideal code length: tables per fractional offset would realize it)."""
    import torch

    _, held = places()
    _, log_sigma_min, spo = coder_tables("tec-ctx")
    out = {}
    for steps in (1, 2, 4, 0):
        total = 0.0
        for place in held:
            for t in range(1, DATES):
                k = f"{place}_{t}"
                mu = data[f"{k}/ctx_mu"].astype(np.float64)
                mean = mu if steps == 0 else np.rint(mu * steps) / steps
                ls = data[f"{k}/ctx_ls"].astype(np.float64)
                ls = np.floor((ls - log_sigma_min) * spo + 0.5) / spo + log_sigma_min
                total += float(gaussian_bits(torch.from_numpy(data[f"{k}/sym"].astype(np.float64)),
                                             torch.from_numpy(mean), torch.from_numpy(ls), 2.0**log_sigma_min).sum())
        out["continuous" if steps == 0 else f"1/{steps}"] = total / (len(held) * (DATES - 1))
    report.setdefault(f"q{quality}", {})["ctx_mean_resolution"] = out


# -- learned conditioning -------------------------------------------------------------------------------------------


def gains():
    from tec_zarr.models import load_model

    return load_model("tec-ctx").gain.astype(np.float32)


def build_net(kernel: int, hidden: int, two_dates: bool, mixture: bool):
    import torch
    from torch import nn

    m = 192
    n_out = 5 * m if mixture else 2 * m

    class TemporalNet(nn.Module):
        """(prev latents [, date t-2 latents + flag], ctx mean, log2 sigma (latent and symbol units)) ->
        corrections (d log2 sigma, d mean) of tec-ctx's Gaussian [, and a second component: mean offset from the
        previous symbol, d log2 sigma, weight logit]."""

        def __init__(self):
            super().__init__()
            self.prev = nn.Conv2d(m, hidden, kernel, padding=kernel // 2)
            self.prev2 = nn.Conv2d(m + 1, hidden, 3, padding=1) if two_dates else None
            self.cur = nn.Conv2d(3 * m, hidden, 1)
            self.hidden = nn.Conv2d(hidden, hidden, 1)
            self.out = nn.Conv2d(hidden, n_out, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            if mixture:
                with torch.no_grad():
                    self.out.bias[4 * m :] = -3.0  # the second component starts at weight ~0.05

        def forward(self, prev, cur, prev2=None):
            x = self.prev(prev) + self.cur(cur)
            if self.prev2 is not None:
                x = x + self.prev2(prev2)
            x = torch.relu(x)
            x = torch.relu(self.hidden(x))
            return self.out(x)

    net = TemporalNet()
    macs = hidden * (m * kernel * kernel + 3 * m + hidden + n_out) + (hidden * (m + 1) * 9 if two_dates else 0)
    params = sum(p.numel() for p in net.parameters())
    return net, macs, params


def sample_tensors(data: dict, quality: int, place: str, tp: int, tc: int, tpp: int | None, gain: np.ndarray):
    """Input maps for predicting date tc from tp (and tpp): numpy (C, h, w) float32 each."""
    g = gain[quality][:, None, None]
    ls = data[f"{place}_{tc}/ctx_ls"]
    prev = data[f"{place}_{tp}/sym"] / g
    cur = np.concatenate([data[f"{place}_{tc}/ctx_mu"] / g, ls - np.log2(np.abs(g)), ls])
    if tpp is None:
        prev2 = np.zeros((193,) + prev.shape[1:], np.float32)
    else:
        prev2 = np.concatenate([data[f"{place}_{tpp}/sym"] / g, np.ones((1,) + prev.shape[1:])])
    return {"prev": prev.astype(np.float32), "cur": cur.astype(np.float32), "prev2": prev2.astype(np.float32),
            "sym": data[f"{place}_{tc}/sym"].astype(np.float32), "gain": np.broadcast_to(g, ls.shape).astype(np.float32),
            "ls": ls.astype(np.float32), "mu": data[f"{place}_{tc}/ctx_mu"].astype(np.float32),
            "prev_sym": data[f"{place}_{tp}/sym"].astype(np.float32)}


def gaussian_prob(sym, mean, log2_sigma, sigma_min):
    """The discretized Gaussian's mass of the integer ``sym`` (torch)."""
    import torch

    sigma = torch.clamp(torch.exp2(log2_sigma), min=sigma_min)
    v = torch.abs(sym - mean)
    upper = torch.special.erfc((v - 0.5) / (sigma * math.sqrt(2.0))) * 0.5
    lower = torch.special.erfc((v + 0.5) / (sigma * math.sqrt(2.0))) * 0.5
    return upper - lower


def gaussian_bits(sym, mean, log2_sigma, sigma_min):
    """-log2 of the discretized Gaussian's mass of the integer ``sym`` (torch)."""
    import torch

    return -torch.log2(torch.clamp(gaussian_prob(sym, mean, log2_sigma, sigma_min), min=1e-9))


def _ste_round(x):
    import torch

    return x + (torch.round(x) - x).detach()


def predict(net, batch, two_dates, mixture):
    """Components [(weight or None, integer mean, log2 sigma)] in symbol units. The coder's means are integers:
    straight-through rounding, as tec-ctx was trained."""
    import torch

    out = net(batch["prev"], batch["cur"], batch["prev2"] if two_dates else None)
    m = 192
    if getattr(net, "fixed_first", False):  # tec-ctx's own Gaussian as the first component, unchanged
        first = (torch.round(batch["mu"]), batch["ls"])
    else:
        first = (_ste_round(batch["mu"] + out[:, m : 2 * m] * batch["gain"]), batch["ls"] + out[:, :m])
    if not mixture:
        return [(None,) + first]
    w = torch.sigmoid(out[:, 4 * m :])
    second = (_ste_round(batch["prev_sym"] + out[:, 3 * m : 4 * m] * batch["gain"]),
              batch["ls"] + out[:, 2 * m : 3 * m])
    return [(1 - w,) + first, (w,) + second]


def mixture_bits(sym, comps, sigma_min):
    import torch

    if comps[0][0] is None:
        return gaussian_bits(sym, comps[0][1], comps[0][2], sigma_min)
    p = sum(w * gaussian_prob(sym, mean, ls, sigma_min) for w, mean, ls in comps)
    return -torch.log2(torch.clamp(p, min=1e-9))


WEIGHT_STEPS = 16  # mixture weights quantized to 1/16 for the table evaluation (integer mixing of two tables)


def table_prob(values: np.ndarray, index: np.ndarray, scales) -> np.ndarray:
    """2**-table_bits: the integer tables' probability of ``values`` (escapes include their uniform bits)."""
    return np.exp2(-table_bits(values, index, scales))


def learn_study(args, datas: dict) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    fitting, held = places()
    gain = gains()
    scales, log_sigma_min, spo = coder_tables("tec-ctx")
    sigma_min = 2.0**log_sigma_min
    two, mix = args.two_dates, args.mixture
    tag = (f"k{args.kernel}h{args.hidden}" + ("+t-2" if two else "") + ("+mix" if mix else "")
           + ("-fixed" if args.fixed_first else "") + args.tag)

    def pair_list(place_list, both):
        out = []
        for t in range(1, DATES):
            out.append((t - 1, t, t - 2 if t >= 2 else None))
        if both:
            for t in range(DATES - 1):
                out.append((t + 1, t, t + 2 if t + 2 < DATES else None))
        return [(p, q, a, b, c) for p in place_list for q in QUALITIES for (a, b, c) in out]

    train = [sample_tensors(datas[q], q, p, a, b, c, gain) for p, q, a, b, c in pair_list(fitting, True)]
    held_pairs = pair_list(held, False)
    val = [sample_tensors(datas[q], q, p, a, b, c, gain) for p, q, a, b, c in held_pairs]
    net, macs, params = build_net(args.kernel, args.hidden, two, mix)
    net.fixed_first = args.fixed_first
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps,
                                                pct_start=max(0.05, 2.0 / args.steps))
    keys = ("prev", "cur", "prev2", "sym", "gain", "ls", "mu", "prev_sym")

    def batch_of(samples, crop):
        out = {k: [] for k in keys}
        for _ in range(args.batch):
            s = samples[rng.integers(len(samples))]
            h, w = s["sym"].shape[1:]
            i, j = rng.integers(h - crop + 1), rng.integers(w - crop + 1)
            k, flip = rng.integers(4), rng.integers(2)
            for key in keys:
                a = s[key][:, i : i + crop, j : j + crop]
                a = np.rot90(a, k, axes=(1, 2))
                out[key].append(a[:, :, ::-1] if flip else a)
        return {k: torch.from_numpy(np.ascontiguousarray(np.stack(v))) for k, v in out.items()}

    def table_index(ls):
        index = np.floor((ls.astype(np.float64) - log_sigma_min) * spo + 0.5)
        return np.clip(index, 0, scales.count - 1).astype(np.int64)

    def evaluate():
        net.eval()
        rows = []
        with torch.no_grad():
            for s in val:
                b = {k: torch.from_numpy(s[k][None]) for k in keys}
                comps = predict(net, b, two, mix)
                ideal = float(mixture_bits(b["sym"], comps, sigma_min).sum())  # integer means, any sigma / weight
                sym = s["sym"].astype(np.int64)
                base = float(table_bits(sym - np.rint(s["mu"].astype(np.float64)).astype(np.int64), table_index(s["ls"]),
                                        scales).sum())
                # As the coder would: integer means, scale-table indices, weights in 1/16: the ideal code length of
                # the integer tables (mixed with integer weights for the mixture).
                if not mix:
                    _, mean, ls = comps[0]
                    table = float(table_bits(sym - mean[0].numpy().astype(np.int64), table_index(ls[0].numpy()),
                                             scales).sum())
                else:
                    w2 = np.rint(comps[1][0][0].numpy().astype(np.float64) * WEIGHT_STEPS) / WEIGHT_STEPS
                    p = sum(w * table_prob(sym - mean[0].numpy().astype(np.int64), table_index(ls[0].numpy()), scales)
                            for w, (_, mean, ls) in zip((1 - w2, w2), comps))
                    table = float(-np.log2(p).sum())
                rows.append((ideal, base, table))
        net.train()
        return np.array(rows)

    t0 = time.time()
    log = []
    for step in range(1, args.steps + 1):
        b = batch_of(train, args.crop)
        loss = mixture_bits(b["sym"], predict(net, b, two, mix), sigma_min).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps:
            rows = evaluate()
            saving = 1 - rows[:, 2].sum() / rows[:, 1].sum()
            log.append({"step": step, "train_bits_per_symbol": loss.item(), "val_y_saving_tables": float(saving),
                        "seconds": round(time.time() - t0, 1)})
            print(f"  {tag} step {step} loss {loss.item():.4f} val y saving (tables, vs ctx) {saving:.4f} "
                  f"{time.time() - t0:.0f}s", flush=True)
    rows = evaluate()
    per = {}
    for (place, q, tp, tc, _), r in zip(held_pairs, rows):
        per.setdefault(q, []).append(r)
    result = {"macs_per_position": macs, "macs_per_latent": macs / 192.0, "params": params,
              "train_seconds": round(time.time() - t0, 1), "steps": args.steps, "log": log,
              "per_pair": [{"place": p, "quality": q, "prev": a, "date": b, "y_bits_table": float(r[2]),
                            "ctx_y_bits_table": float(r[1])} for (p, q, a, b, _), r in zip(held_pairs, rows)]}
    for q, r in per.items():
        r = np.array(r)
        result[f"q{q}"] = {"y_bits_per_date_table": float(r[:, 2].sum()) / len(r),
                           "y_bits_per_date_ideal": float(r[:, 0].sum()) / len(r),
                           "ctx_y_bits_per_date_table": float(r[:, 1].sum()) / len(r)}
    (OUT / f"learned_{tag}.json").write_text(json.dumps(result, indent=1))


# -- baselines and report ---------------------------------------------------------------------------------------------


def baselines(data: dict, quality: int, report: dict) -> None:
    _, held = places()
    out = report.setdefault(f"q{quality}", {})
    per_date = {}
    for name, model in (("hp", "tec-hp"), ("ctx", "tec-ctx")):
        scales = coder_tables(model)[0]
        for place in held:
            for t in range(DATES):
                k = f"{place}_{t}"
                ideal = table_bits(data[f"{k}/sym"].astype(np.int64) - data[f"{k}/{name}_mean"],
                                   data[f"{k}/{name}_index"], scales).sum()
                per_date.setdefault(name, {})[k] = {
                    "payload_bits": int(data[f"{k}/{name}_payload_bits"]), "z_bits": int(data[f"{k}/{name}_z_bits"]),
                    "y_bits_ideal": float(ideal)}
    out["per_date"] = per_date
    for name in ("hp", "ctx"):
        rows = [per_date[name][f"{p}_{t}"] for p in held for t in range(1, DATES)]
        first = [per_date[name][f"{p}_0"] for p in held]
        out[name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        out[name + "_date1"] = {k: float(np.mean([r[k] for r in first])) for k in first[0]}


SIMPLE = ("hist", "hist+|prev|", "hist+sign(prev-mean)", "lut", "lut+abs(prev)", "lut+sign(prev-mean)", "lutmix",
          "lutmix(cross-held-out)")


def markdown(report: dict) -> str:
    pixels = CROP * CROP
    learned = {p.stem[len("learned_"):]: json.loads(p.read_text()) for p in sorted(OUT.glob("learned_*.json"))}
    lines = ["Held-out places 0173706, 0181476, 256 x 256 crop; dates 2-4, each conditioned on date t-1. Mean bits per "
             "date (12 bands x 256 x 256; bpp = bits / 65536). Conditional models: ideal code length of the coder's "
             "integer tables (integer means, table indices; mixtures with weights in 1/16) for y, plus tec-ctx's z "
             "bits and its range-coder overhead unchanged. Saving: against tec-ctx's real payload.", ""]
    cols = ["ctx:hist+sign(prev-mean)", "ctx:lut+sign(prev-mean)", "ctx:lutmix"]
    head = ("| q | tec-hp payload | tec-ctx payload (z) | hist, sign(prev-mean) | LUT shift, sign(prev-mean) | "
            "LUT mixture, abs(prev-mean) | "
            + " | ".join(f"learned {t}" for t in learned) + " |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for q in QUALITIES:
        r = report.get(f"q{q}")
        if not r or "ctx" not in r:
            continue
        ctx_total, z = r["ctx"]["payload_bits"], r["ctx"]["z_bits"]
        overhead = ctx_total - z - r["ctx"]["y_bits_ideal"]  # range coder flush and word padding

        def cell(y_bits):
            total = z + y_bits + overhead
            return f"{total / 1e3:.1f}k ({total / pixels:.2f}, {100 * (1 - total / ctx_total):+.1f}%)"

        simple = r.get("simple", {})
        cells = [f"{r['hp']['payload_bits'] / 1e3:.1f}k ({r['hp']['payload_bits'] / pixels:.2f}, "
                 f"{100 * (1 - r['hp']['payload_bits'] / ctx_total):+.1f}%)",
                 f"{ctx_total / 1e3:.1f}k ({ctx_total / pixels:.2f}; z {z / 1e3:.1f}k)"]
        cells += [cell(simple[c]) if c in simple else "-" for c in cols]
        cells += [cell(res[f"q{q}"]["y_bits_per_date_table"]) if f"q{q}" in res else "-" for res in learned.values()]
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    lines += ["", "Simple conditioning, y bits per date (saving against the same image model's y bits under its "
                  "tables; 'hist'/'lut' without a previous-date bucket are the no-temporal controls):", "",
              "| q | base | y (tables) | " + " | ".join(SIMPLE).replace("|prev|", "abs(prev)") + " |",
              "|---|---|---|" + "---|" * len(SIMPLE)]
    for q in QUALITIES:
        r = report.get(f"q{q}")
        if not r or "simple" not in r:
            continue
        for base in ("hp", "ctx"):
            y = r[base]["y_bits_ideal"]
            lines.append(f"| {q} | tec-{base} | {y / 1e3:.1f}k | " + " | ".join(
                f"{r['simple'][f'{base}:{v}'] / 1e3:.1f}k ({100 * (1 - r['simple'][f'{base}:{v}'] / y):+.1f}%)"
                if f"{base}:{v}" in r["simple"] else "-" for v in SIMPLE) + " |")
    lines += ["", "Date 1 (no previous date) for reference, tec-ctx payload: " + ", ".join(
        f"q{q} {report[f'q{q}']['ctx_date1']['payload_bits'] / 1e3:.1f}k" for q in QUALITIES if f"q{q}" in report)]
    res_rows = [(q, report[f"q{q}"]["ctx_mean_resolution"]) for q in QUALITIES
                if "ctx_mean_resolution" in report.get(f"q{q}", {})]
    if res_rows:
        lines += ["", "Side (no temporal information): tec-ctx's y bits of dates 2-4 (discretized Gaussian with its "
                      "table-quantized sigma) with its mean rounded to a symbol (as coded), 1/2, 1/4, or unrounded: "
                  + "; ".join(f"q{q} " + ", ".join(f"{k} {v / 1e3:.1f}k" for k, v in rr.items()) for q, rr in res_rows)]
    for tag, res in learned.items():
        lines += ["", f"learned {tag}: {res['params']} parameters, {res['macs_per_position']} MACs per latent position "
                      f"({res['macs_per_latent']:.0f} per latent symbol), {res['steps']} steps in {res['train_seconds']} s "
                      "(1 CPU thread)."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", default="all", choices=("extract", "simple", "learn", "report", "all"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--two-dates", action="store_true", help="also condition on date t-2")
    parser.add_argument("--mixture", action="store_true",
                        help="a second Gaussian component centred on the previous date's symbol (weight per symbol)")
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--fixed-first", action="store_true",
                        help="with --mixture: keep tec-ctx's Gaussian as the first component (learn only the second)")
    parser.add_argument("--tag", default="", help="suffix of the learned model's result file")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    datas = {}
    for q in QUALITIES:
        datas[q] = extract(q)
        if args.stage in ("extract", "all"):
            baselines(datas[q], q, report)
        if args.stage in ("simple", "all"):
            simple_study(datas[q], q, report)
            lut_study(datas[q], q, report)
            lut_mixture_study(datas[q], q, report)
            lut_mixture_study(datas[q], q, report, cross=True)
            mean_resolution_study(datas[q], q, report)
        path.write_text(json.dumps(report, indent=1))
    if args.stage in ("learn", "all"):
        learn_study(args, datas)
    table = markdown(report)
    (OUT / "report.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
