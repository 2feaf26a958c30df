"""Fit and export the temporal model (TEC-TT, :mod:`tec_zarr.entropy.temporal`) on a context model's symbols.

``python -m tec_zarr.train.temporal --data ../shared/data --name tec-tt``

Rate only, no gradient: the transform, gains, hyperprior and context networks are the base model's, frozen, so
the stored symbols and pixels are the base's. What is fitted is mixture set 0's weight table: for every quality,
coded channel, scale-index bucket and distance bucket ``min(|prev - mean|, D - 1)``, the weight in sixteenths that
minimizes the code length of the training sequences' later dates. Training pairs are every ordered pair of adjacent
dates of the training places (both directions: a user's cube may run either way in season), each date coded by the
base's integer entropy model exactly as the coder does. The other sets (:data:`FIXED_SETS`) are fixed: no mixture
(a date unlike the one before), and constant weights with a narrower second table for dates far more alike than
seasons; the encoder picks a set per date.
Validation is the held-out places' 4-date sequences, coded by the exported model and by the base one date per chunk.

The fit takes a few minutes on 2 cores and is deterministic: rerunning it on the same data writes the same bytes.
A user with other sequences (say 5-day revisits) fits a model of their own with ``--data`` pointing at a folder laid
out like the shared data's seasonal set, and ``--name`` a new name.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..entropy.context import ContextCoder, gather, run_steps
from ..entropy.hyperprior import LOG_BITS
from ..entropy.mixture import WEIGHT_ONE, MixedTables, sharpened, table_bits
from ..entropy.tables import IndexedTables, quantize_pmf
from ..entropy.temporal import ENTROPY_MODEL, FILENAME, TemporalModel, coded_order, fine_coding, mixed_first
from ..models import MODELS_DIR, get_card, load_model, model_digest
from ..models.registry import file_path, share_files
from .data import SEASONAL, VALIDATION_PLACES
from .export import machine_description, sha256_file
from .hyper_export import MAX_HALF_WIDTH, TAIL_SIGMAS, erfc

INDEX_BUCKET = 4  # scale tables per bucket: half an octave at 8 tables per octave
DISTANCES = 5  # distance buckets 0..4 (0: prev == mean, where a mixture changes nothing)
MAX_SHIFT = 12  # previous symbols farther than this from the mean get no mixture (bounds the tables built)
FRACTION_BITS = 3  # fine means at 1/8 symbol: 1/16 gained little more on the held-out places, for twice the tables
# The fine table a mixed symbol's first component uses: halves of a symbol (centres 5/16 and 11/16), the
# integer-centred table for itself. All 8 fractions there made 2.2x the distinct mixtures (decoding 1.3x slower)
# for 0.9 % of the bits.
MIXED_SLOT = np.array([2, 2, 2, 2, 5, 5, 5, 5, 8])
# Mixture sets beyond the fitted one, (weight, sharpen); the encoder takes one per date when it codes fewer bits.
# (0, 0) is no mixture at all: a date unlike the one before costs no more than tec-ctx's bits plus the set number.
# The others trust the previous date more than seasons allow: revisits days apart, repeated acquisitions.
FIXED_SETS = ((0, 0), (10, 8), (14, 24), (15, 1024))


def read_sequences(root: Path) -> dict[str, np.ndarray]:
    """{place: (T, 12, H, W) uint16 DN} of the seasonal time series under ``root``, dates in order."""
    import rasterio

    folder = Path(root) / SEASONAL
    places = sorted({p.stem.split("_")[2] for p in folder.glob("ssl4eos12_val_*_0.tif")})
    if not places:
        raise FileNotFoundError(f"Expected seasonal sequences under {folder}. Got none instead.")
    out = {}
    for place in places:
        dates = []
        for t in range(len(list(folder.glob(f"ssl4eos12_val_{place}_*.tif")))):
            with rasterio.open(folder / f"ssl4eos12_val_{place}_{t}.tif") as src:
                dates.append(src.read())
        out[place] = np.clip(np.stack(dates), 0, 65535).astype(np.uint16)
    return out


def symbols_and_side(model, dn: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, symbols, z) of every date of a (T, 12, H, W) sequence, H and W multiples of the model's."""
    from ..pipeline.prepare import normalize

    x, _ = normalize(dn, model, None, 1.0)
    y = model.encoder.run(x)
    symbols = np.rint(y * model.gain[quality][None, :, None, None]).astype(np.int64)
    return y, symbols, model.coder.side_information(y, quality)


def fine_tables(hp, fraction_bits: int) -> IndexedTables:
    """Table ``t * (2**fraction_bits + 1) + f``: scale ``t``'s discretized Gaussian centred at
    ``(f + 1/2) / 2**fraction_bits`` (the middle of the fine mean's interval), the last of each scale at 0; integer
    counts over -r..r+1 (r = ceil(5 sigma)) and an escape, built once here in float64 and stored."""
    fractions = 1 << fraction_bits
    rows, offsets = [], []
    for i in range(hp.scales.count):
        sigma = 2.0 ** (hp.log_sigma_min / 2**LOG_BITS + i / hp.steps_per_octave)
        r = min(max(1, math.ceil(TAIL_SIGMAS * sigma)), MAX_HALF_WIDTH)
        c = 1.0 / (sigma * math.sqrt(2.0))
        for centre in [(f + 0.5) / fractions for f in range(fractions)] + [0.0]:
            v = np.abs(np.arange(-r, r + 2, dtype=np.float64) - centre)
            p = 0.5 * (erfc((v - 0.5) * c) - erfc((v + 0.5) * c))
            tail = float(0.5 * (erfc((r + 0.5 + centre) * c) + erfc((r + 1.5 - centre) * c)))
            rows.append(quantize_pmf(p, max(tail, 1e-9)))
            offsets.append(-r)
    lengths = np.array([len(r) for r in rows], np.int64)
    pmf = np.zeros((len(rows), int(lengths.max())), np.int32)
    for i, row in enumerate(rows):
        pmf[i, : len(row)] = row
    return IndexedTables(np.asarray(offsets, np.int64), pmf, lengths)


def step_rows(coder: ContextCoder, symbols: np.ndarray, z: np.ndarray, prev: np.ndarray, quality: int) -> dict:
    """Per coded symbol of one date: coded channel, table index, mean at 2**-FRACTION_BITS, the symbol and the
    previous date's (int64 columns)."""
    order = coder.context.order
    now, before = coded_order(symbols, order), coded_order(prev, order)
    cols: dict[str, list] = {"channel": [], "index": [], "fine_mean": [], "symbol": [], "prev": []}

    def code_step(index, fine_mean, a, e, classes):
        values = gather(now[..., a:e], classes)
        cols["channel"].append(np.broadcast_to(np.arange(a, e), index.shape).ravel())
        cols["index"].append(index.ravel())
        cols["fine_mean"].append(fine_mean.ravel())
        cols["symbol"].append(values.ravel())
        cols["prev"].append(gather(before[..., a:e], classes).ravel())
        return values

    run_steps(coder.hyperprior, coder.context, z, quality, symbols.shape, code_step, fraction_bits=FRACTION_BITS)
    return {k: np.concatenate(v).astype(np.int64) for k, v in cols.items()}


def fit_weights(rows: dict, scales, fine: IndexedTables, channels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per scale, whether the rounded integer mean codes fewer bits than the fine one (coarse); then the weight
    table (M, index buckets, D) minimizing the rows' code length (sharpen 0); and the estimated bits: with the
    integer means, with fine means alone, with fine means and the fitted mixtures."""
    index, fine_mean, symbol, prev = rows["index"], rows["fine_mean"], rows["symbol"], rows["prev"]
    table, centre, mean = fine_coding(index, fine_mean, True, FRACTION_BITS)
    integer_bits = table_bits(fine, table, symbol - centre)
    table, centre, _ = fine_coding(index, fine_mean, False, FRACTION_BITS)
    fine_bits = table_bits(fine, table, symbol - centre)
    coarse = np.bincount(index, integer_bits, scales.count) <= np.bincount(index, fine_bits, scales.count)
    keys, centre, _ = fine_coding(index, fine_mean, coarse[index], FRACTION_BITS)
    buckets = -(-scales.count // INDEX_BUCKET)
    distance = np.minimum(np.abs(prev - mean), DISTANCES - 1)
    cell = (rows["channel"] * buckets + index // INDEX_BUCKET) * DISTANCES + distance
    n_cells = channels * buckets * DISTANCES
    mixed = MixedTables(fine, MAX_SHIFT, sharpened(scales.count, 1 << FRACTION_BITS, 0))
    first = mixed_first(keys, MIXED_SLOT)
    cost = []
    for w in range(WEIGHT_ONE):
        weight = np.full(cell.shape, w)
        mixed_keys = np.where(mixed.mixes(keys, prev - centre, weight), first, keys)
        bits = mixed.bits(mixed_keys, symbol - centre, prev - centre, weight)
        cost.append(np.bincount(cell, bits, minlength=n_cells))
    cost = np.stack(cost)
    return cost.argmin(0).reshape(channels, buckets, DISTANCES), coarse, {
        "integer_means": float(integer_bits.sum()), "fine_means": float(cost[0].sum()),
        "fine_and_mixtures": float(cost.min(0).sum())}


def fit(sequences: dict[str, np.ndarray], base: str, multiple: int, log=print) -> tuple[TemporalModel, dict]:
    """Weights for every quality of ``base`` from the ordered adjacent date pairs of ``sequences``."""
    model = load_model(base)
    coder = model.coder
    q_count, m = coder.hyperprior.log_gain.shape
    fine = fine_tables(coder.hyperprior, FRACTION_BITS)
    weights, coarse_flags, report = [], [], {}
    for quality in range(q_count):
        rows: dict[str, list] = {}
        for place, dn in sequences.items():
            h, w = (dn.shape[-2] // multiple) * multiple, (dn.shape[-1] // multiple) * multiple
            _, symbols, z = symbols_and_side(model, np.ascontiguousarray(dn[..., :h, :w]), quality)
            for t in range(dn.shape[0]):
                for p in (t - 1, t + 1):
                    if 0 <= p < dn.shape[0]:
                        got = step_rows(coder, symbols[t : t + 1], z[t : t + 1], symbols[p : p + 1], quality)
                        for k, v in got.items():
                            rows.setdefault(k, []).append(v)
        joined = {k: np.concatenate(v) for k, v in rows.items()}
        table, coarse, bits = fit_weights(joined, coder.hyperprior.scales, fine, m)
        weights.append(table)
        coarse_flags.append(coarse)
        report[f"q{quality}"] = {"pairs": len(rows["index"]), "symbols": int(joined["index"].size),
                                 "saving_fine_means": round(1 - bits["fine_means"] / bits["integer_means"], 4),
                                 "saving_fine_and_mixtures": round(
                                     1 - bits["fine_and_mixtures"] / bits["integer_means"], 4),
                                 "coarse_scales": int(coarse.sum())}
        log(f"q{quality}: {report[f'q{quality}']}  {time.strftime('%H:%M:%S')}")
    fitted = np.stack(weights).astype(np.int64)
    sets = [fitted] + [np.full(fitted.shape, w, np.int64) for w, _ in FIXED_SETS]
    sharpen = (0,) + tuple(s for _, s in FIXED_SETS)
    return TemporalModel(np.stack(sets), sharpen, INDEX_BUCKET, MAX_SHIFT, FRACTION_BITS, fine,
                         np.stack(coarse_flags), MIXED_SLOT), report


def write_model(temporal: TemporalModel, base: str, name: str, version: str, out_dir: Path | None,
                training: dict) -> Path:
    """A model folder: the base's files byte for byte, ``temporal.npz`` and the manifest."""
    card = get_card(base)
    folder = Path(out_dir) if out_dir else MODELS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in card.files:
        shutil.copyfile(file_path(card, f), folder / f)
    (folder / FILENAME).write_bytes(temporal.to_npz())
    files = {**card.files, FILENAME: sha256_file(folder / FILENAME)}
    manifest = {k: v for k, v in card.manifest.items() if k not in ("files", "sha256", "exported", "integer_path")}
    manifest.update({
        "name": name,
        "version": version,
        "architecture": f"temporal context model (TEC-TT) on {base}: a chunk's leading axis is time; every date "
                        f"coded around {base}'s mean kept to 1/{1 << temporal.fraction_bits} symbol (fine-mean "
                        "integer tables); a later date's symbols may instead use a two-component integer mixture of "
                        "the scale table at the integer mean and a table at the previous date's co-located symbol; "
                        f"per date the encoder picks one of {temporal.sets} mixture sets (set 0's weights fitted per "
                        "quality, channel, scale-index bucket and distance bucket; set 1 mixes nothing; the others "
                        "trust the previous date more)",
        "entropy_model": ENTROPY_MODEL,
        "base_model": {"name": base, "sha256": card.sha256},
        "temporal": {"fraction_bits": temporal.fraction_bits, "index_bucket": temporal.index_bucket,
                     "distances": int(temporal.weights.shape[4]),
                     "max_shift": temporal.max_shift, "sets": temporal.sets, "sharpen": list(temporal.sharpen),
                     "set_weights": ["fitted"] + [w for w, _ in FIXED_SETS]},
        "training": {**manifest.get("training", {}), "temporal": training},
        "exported": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": machine_description()},
        "files": files,
        "sha256": model_digest(files),
    })
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out_dir is None:
        share_files(MODELS_DIR)
    return folder


def measure(folder: Path, sequences: dict[str, np.ndarray], base: str) -> None:
    """Bits per date of the held-out sequences: one 4-date chunk per place, against the base and the model itself
    one date per chunk (what fine means alone save)."""
    from .. import metrics, pipeline
    from ..models import clear_cache

    clear_cache()
    manifest = json.loads((folder / "manifest.json").read_text())
    name = manifest["name"]
    for q in manifest["qualities"]:
        own = ref = single = pixels = 0.0
        psnrs, differ = [], 0.0
        for dn in sequences.values():
            cube = np.ascontiguousarray(dn[..., :256, :256])
            chunk = pipeline.encode_chunk(cube, model=name, quality=q["quality"], nodata=None)
            decoded = pipeline.decode_chunk(chunk)
            own += 8 * len(chunk)
            for t in range(cube.shape[0]):
                alone = pipeline.encode_chunk(cube[t : t + 1], model=base, quality=q["quality"], nodata=None)
                ref += 8 * len(alone)
                single += 8 * len(pipeline.encode_chunk(cube[t : t + 1], model=name, quality=q["quality"], nodata=None))
                differ = max(differ, metrics.max_error(pipeline.decode_chunk(alone)[0], decoded[t]))
                psnrs.append(metrics.psnr(cube[t : t + 1], decoded[t : t + 1]))
            pixels += cube.shape[0] * 256 * 256
        q["validation"] = {"bpp": round(own / pixels, 4), "psnr": round(float(np.mean(psnrs)), 3),
                           "sequences": len(sequences), "size": "4x12x256x256 (one chunk per place)",
                           f"{base}_bpp": round(ref / pixels, 4), "rate_saving": round(1 - own / ref, 4),
                           "one_date_per_chunk_bpp": round(single / pixels, 4),
                           "rate_saving_one_date_per_chunk": round(1 - single / ref, 4),
                           # same symbols; the decoder may round differently when it stacks other channel sets
                           "max_pixel_difference_to_base": float(differ)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tec_zarr.train.temporal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the shared data folder (seasonal sequences)")
    p.add_argument("--base", default="tec-ctx", help="the context model whose symbols are coded")
    p.add_argument("--name", default="tec-tt")
    p.add_argument("--version", default="1")
    p.add_argument("--out", type=Path, help="model folder (default: inside the package)")
    p.add_argument("--measure-only", action="store_true", help="only measure the existing model folder again")
    args = p.parse_args(argv)
    sequences = read_sequences(args.data)
    train = {k: v for k, v in sequences.items() if k not in VALIDATION_PLACES}
    held = {k: v for k, v in sequences.items() if k in VALIDATION_PLACES}
    if args.measure_only:
        measure(Path(args.out) if args.out else MODELS_DIR / args.name, held, args.base)
        return 0
    multiple = load_model(args.base).multiple
    temporal, report = fit(train, args.base, multiple)
    training = {"fitted_on": sorted(train), "pairs": "adjacent dates, both directions",
                "validation_places": sorted(held), "fit": report}
    folder = write_model(temporal, args.base, args.name, args.version, args.out, training)
    if held:
        measure(folder, held, args.base)
    print(f"exported {args.name} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
