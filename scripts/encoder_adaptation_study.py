"""Design study for encoder-side adaptation per chunk (issue 14, item 3): do choices the encoder alone makes, which
every existing decoder reads unchanged, buy rate-distortion on real cubes?

Not product code: it measures. tec-fp at qualities 1-3, on the validation places (never trained on, bilinear as
SSL4EO ships them) and on the L1C and desert sets as ``benchmarks/replicated.py`` builds them (nearest-replicated
20/60 m bands, coded with their blocks). Each variant's mean (bpp, PSNR) is compared with the plain encoder's RD
curve over qualities 0-4: bits at equal PSNR, interpolated on log bpp (below 1: the variant saves bits).

Variants:

rdoq     rate-distortion optimized quantization: each symbol floor or ceil of y * gain, whichever minimizes
         w_c e^2 + lambda R(s), R from the model's own integer tables, w_c the squared norm of channel c's synthesis
         response to one symbol step (measured by perturbing sparse latents), lambda a multiple of the RD curve's
         slope around quality 2 (12600 DN^2 per bit, x 0.4 per quality step).
closed   closed-loop pre-compensation of the block means of replicated bands: code, decode, then code again with
         each block's mean moved by alpha times its decoding error (the smooth band rebuilt around the new means).

Usage: .venv/bin/python scripts/encoder_adaptation_study.py [--variants rdoq closed] [--images 3]
(about 10 minutes on one core).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from tec_zarr import metrics, pipeline, replication  # noqa: E402
from tec_zarr.models import load_model  # noqa: E402
from tec_zarr.pipeline import encode  # noqa: E402
from tec_zarr.pipeline.prepare import normalize, prepare  # noqa: E402
from tec_zarr.runtime.batching import run_stacked  # noqa: E402

MODEL = "tec-fp"
QUALITIES = (1, 2, 3)
SLOPE_Q2 = 12600.0  # DN^2 per bit: -dD/dR of tec-fp's curve around quality 2 (D summed over pixels and bands)


def image_sets(root: Path, n: int) -> dict[str, np.ndarray]:
    import replicated

    sets = replicated.image_sets(root, quick=False)
    return {"validation places (bilinear)": sets["validation places"]["versions"]["bilinear"][:n],
            "L1C, nearest": sets["L1C, nearest as stored"]["versions"]["nearest"][:n],
            "desert, nearest": sets["desert 100 m, as stored"]["versions"]["nearest"][:n]}


def coded(model, img: np.ndarray, quality: int, symbols=None, normalized=None) -> bytes:
    """One image's chunk as the pipeline writes it, with the encoder's input or its symbols replaced."""
    chunk = prepare(img[None], model, quality, None, 1e4, None, None)
    if normalized is not None:
        chunk = dataclasses.replace(chunk, normalized=normalized)
    y = run_stacked([(model.encoder, chunk.normalized)], exact=True)[0]
    if symbols is not None:  # encode.code rounds y * gain: hand it values that round to the chosen symbols
        gain = model.gain[quality].astype(np.float64)[None, :, None, None]
        y = np.where(gain != 0, symbols(y, chunk) / np.where(gain != 0, gain, 1), 0).astype(np.float32)
    return encode.code(model, chunk, y, None, None, quality)


def point(model, images, quality: int, **variant) -> tuple[float, float]:
    bpp, psnr = [], []
    for img in images:
        data = coded(model, img, quality, **variant)
        bpp.append(metrics.bpp(len(data), *img.shape[1:]))
        psnr.append(metrics.psnr(img, pipeline.decode_chunk(data)))
    return float(np.mean(bpp)), float(np.mean(psnr))


def bits_at_equal_psnr(curve, bpp: float, psnr: float) -> float | None:
    ps = [p for _, p in curve]
    if not ps[0] <= psnr <= ps[-1]:
        return None
    return bpp / float(np.exp(np.interp(psnr, ps, [np.log(b) for b, _ in curve])))


# -- rdoq -------------------------------------------------------------------------------------------------------------


def channel_weights(model, images: np.ndarray, quality: int) -> np.ndarray:
    """(M,) DN^2 per squared latent unit: the synthesis' response to one symbol step at every 6th latent."""
    chunk = prepare(images, model, quality, None, 1e4, None, None)
    y = run_stacked([(model.encoder, chunk.normalized)], exact=True)[0]
    gain = model.gain[quality].astype(np.float64)
    base = (np.rint(y * gain[None, :, None, None]) / gain[None, :, None, None]).astype(np.float32)
    x0 = run_stacked([(model.decoder_for(quality), base)], exact=False)[0].astype(np.float64)
    at = np.zeros(base.shape[2:], bool)
    at[2::6, 2::6] = True
    std = model.std.astype(np.float64)[None, :, None, None] * 1e4
    weights = np.zeros(len(gain))
    for c in range(len(gain)):
        step = 1.0 / gain[c] if gain[c] else 0.0
        moved = base.copy()
        moved[:, c][:, at] += step
        x1 = run_stacked([(model.decoder_for(quality), moved)], exact=False)[0]
        weights[c] = (((x1 - x0) * std) ** 2).sum() / (at.sum() * len(base) * max(step, 1e-12) ** 2)
    return weights


def symbol_bits(model, quality: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tables = model.coder.tables
    bits = -np.log2(np.maximum(tables.pmf[quality].astype(np.float64), 1) / 2**16)
    return bits, tables.offsets[quality].astype(np.int64), tables.lengths[quality].astype(np.int64)


def rdoq(model, quality: int, weights: np.ndarray, lam: float):
    bits, offsets, lengths = symbol_bits(model, quality)
    gain = model.gain[quality].astype(np.float64)

    def rate(s: np.ndarray) -> np.ndarray:
        c = np.broadcast_to(np.arange(len(gain))[None, :, None, None], s.shape)
        index = s - offsets[c]
        inside = (index >= 0) & (index < lengths[c] - 1)
        return np.where(inside, bits[c, np.clip(index, 0, bits.shape[1] - 1)], 32.0)  # escapes: dear

    def symbols(y: np.ndarray, _chunk) -> np.ndarray:
        u = y.astype(np.float64) * gain[None, :, None, None]
        lo, hi = np.floor(u), np.floor(u) + 1
        w = (weights / np.where(gain != 0, gain, 1) ** 2)[None, :, None, None]
        cost_lo = w * (u - lo) ** 2 + lam * rate(lo.astype(np.int64))
        cost_hi = w * (u - hi) ** 2 + lam * rate(hi.astype(np.int64))
        return np.where(cost_lo <= cost_hi, lo, hi)

    return symbols


# -- closed -----------------------------------------------------------------------------------------------------------


def precompensated(model, img: np.ndarray, quality: int, alpha: float) -> np.ndarray | None:
    """The encoder's input with each replicated block's mean moved by alpha times its decoding error."""
    chunk = prepare(img[None], model, quality, None, 1e4, None, None)
    if chunk.blocks is None:
        return None
    decoded = pipeline.decode_chunk(coded(model, img, quality))
    h, w = img.shape[-2:]
    target = normalize(img[None], model, None, 1.0)[0][..., :h, :w].astype(np.float64)
    got = normalize(decoded.reshape((1,) + img.shape), model, None, 1.0)[0][..., :h, :w].astype(np.float64)
    for band, blocks in enumerate(chunk.blocks):
        if blocks.replicated:
            count = replication.block_sums(np.ones((h, w)), blocks)
            want = replication.block_sums(target[:, band], blocks) / count
            have = replication.block_sums(got[:, band], blocks) / count
            target[:, band] = replication.expand(want + alpha * (want - have), blocks, (h, w))
    replication.smooth(target, np.ones(target.shape, bool), chunk.blocks)
    ph, pw = chunk.normalized.shape[-2] - h, chunk.normalized.shape[-1] - w
    return np.pad(target, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge").astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--variants", nargs="+", default=["rdoq", "closed"], choices=["rdoq", "closed"])
    p.add_argument("--images", type=int, default=3, help="images per set")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "encoder-adaptation.json")
    args = p.parse_args(argv)
    model = load_model(MODEL)
    sets = image_sets(args.data, args.images)
    results: dict = {}
    for name, images in sets.items():
        curve = [point(model, images, q) for q in range(model.qualities)]
        results[name] = {"curve": curve}
        print(name, "plain", [(round(b, 3), round(s, 2)) for b, s in curve], flush=True)
        for q in QUALITIES:
            rows = []
            if "rdoq" in args.variants:
                weights = channel_weights(model, images[:1], q)
                for mult in (0.25, 0.5, 1.0):
                    b, s = point(model, images, q, symbols=rdoq(model, q, weights, mult * SLOPE_Q2 * 0.4 ** (q - 2)))
                    rows.append({"variant": f"rdoq lambda x{mult}", "bpp": b, "psnr": s,
                                 "bits_at_equal_psnr": bits_at_equal_psnr(curve, b, s)})
            if "closed" in args.variants and name != "validation places (bilinear)":
                for alpha in (0.5, 1.0):
                    inputs = [precompensated(model, img, q, alpha) for img in images]
                    bs = [(coded(model, img, q, normalized=x), img) for img, x in zip(images, inputs)]
                    b = float(np.mean([metrics.bpp(len(d), *img.shape[1:]) for d, img in bs]))
                    s = float(np.mean([metrics.psnr(img, pipeline.decode_chunk(d)) for d, img in bs]))
                    rows.append({"variant": f"closed alpha {alpha}", "bpp": b, "psnr": s,
                                 "bits_at_equal_psnr": bits_at_equal_psnr(curve, b, s)})
            results[name][f"q{q}"] = rows
            print(f"  q{q}", [(r["variant"], None if r["bits_at_equal_psnr"] is None else round(r["bits_at_equal_psnr"], 4))
                              for r in rows], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
