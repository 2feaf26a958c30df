"""Cloud inpainting (``tec_zarr.inpaint``) against three baselines, as AllClear scores it: masked PSNR, SSIM and SAM.

Data: the seasonal time series (top-left 256 x 256, dates about three months apart). The held-out places
(``tec_zarr.train.data.VALIDATION_PLACES``, never used to train any model) are the result; the three places the
codec was trained on are a second source, reported apart.

Real clouds are found by :func:`real_clouds` (a documented threshold, below). A *target* is a date with an earlier
date and at most 25 % real clouds. Over each target, three seeded blob masks (smoothed noise thresholded to cover
10, 25 and 40 % of the image) are *simulated* clouds. Each method sees the target and its earlier dates only, with
every date's real clouds and the target's simulated ones masked; the scores are over the simulated pixels that are
not real clouds (all 12 bands, DN clipped to 0..10000):

* masked PSNR = 10 log10(10000^2 / MSE) over those pixels;
* SSIM: per band on the whole image (Gaussian window sigma 1.5, 11 x 11, data range 10000), averaged over those
  pixels and the bands;
* SAM: the angle between the 12-band vectors, in degrees, averaged over those pixels.

Baselines: *previous date* (per pixel the latest earlier date clear there), *mean of earlier dates* (per pixel the
mean of the earlier dates clear there: mosaicing) and *linear fit* (the previous date, each band mapped by the
least-squares a x + b fitted on the target's clear pixels). Methods: ``inpaint`` with ``method="hybrid"`` (the
default), ``"latent"`` (the codec's transforms alone) and ``"pixel"`` (its pixel regression alone).

Quicklooks: the real cloudy dates 0173706_2 and 0181476_3 (whole cubes, every date's real clouds masked), before /
mask / after in RGB (B04 B03 B02, 0..2500 DN on a 0.8 gamma), into ``docs/inpaint/``. Writes
benchmarks/results/inpaint.json and the README's ``inpaint`` table.

    python benchmarks/inpaint.py [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ROOT, argument_parser, machine, publish  # noqa: E402

from tec_zarr.inpainting import METHODS, box_sum, inpaint  # noqa: E402
from tec_zarr.train.data import VALIDATION_PLACES  # noqa: E402
from tec_zarr.train.temporal import read_sequences  # noqa: E402

SIZE = 256
COVERS = (0.10, 0.25, 0.40)
MAX_REAL_CLOUDS = 0.25
PEAK = 10000.0
# Real clouds: bright in the aerosol and blue bands (B01, B02 > 1300 DN; clear ground reaches ~900 in B01 here),
# shadows: dark in NIR and SWIR (B08 and B11 under 0.6 of the date's median); both grown by 4 pixels.
CLOUD_DN = 1300
SHADOW_FRACTION = 0.6
GROW = 4
QUICKLOOKS = (("0173706", 2), ("0181476", 3))
RGB = (3, 2, 1)  # B04 B03 B02
BASELINES = ("previous date", "mean of earlier dates", "linear fit of the previous date")


def real_clouds(image: np.ndarray) -> np.ndarray:
    """(H, W) True at clouds and cloud shadows of a (12, H, W) DN image (see CLOUD_DN, SHADOW_FRACTION, GROW)."""
    x = image.astype(np.float32)
    cloud = (x[0] > CLOUD_DN) & (x[1] > CLOUD_DN)
    shadow = (x[7] < SHADOW_FRACTION * np.median(x[7])) & (x[10] < SHADOW_FRACTION * np.median(x[10]))
    return box_sum((cloud | shadow).astype(np.float32), GROW) > 0.5


def blob_mask(shape: tuple[int, int], seed: int, cover: float) -> np.ndarray:
    """Seeded cloud-like blobs: white noise, three box passes of radius 12, the top ``cover`` of it."""
    field = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    for _ in range(3):
        field = box_sum(field, 12)
    return field > np.quantile(field, 1 - cover)


def baselines(cube: np.ndarray, clouds: np.ndarray) -> dict[str, np.ndarray]:
    """The three baselines' predictions of the last date of ``cube`` from its earlier dates, ``clouds`` (T, H, W)
    masking every date (the last one's simulated clouds included)."""
    earlier, target = cube[:-1].astype(np.float64), cube[-1].astype(np.float64)
    previous = earlier[-1].copy()
    unseen = clouds[-2].copy()
    for t in range(len(earlier) - 2, -1, -1):  # per pixel the latest earlier date clear there
        previous = np.where(unseen[None], earlier[t], previous)
        unseen &= clouds[t]
    clear = ~clouds[:-1]
    count = clear.sum(axis=0)
    mosaic = np.where(count[None] > 0, (earlier * clear[:, None]).sum(axis=0) / np.maximum(count, 1)[None], previous)
    fit = ~clouds[-1]
    linear = np.stack([np.polyval(np.polyfit(previous[b][fit], target[b][fit], 1), previous[b]) for b in range(12)])
    return dict(zip(BASELINES, (previous, mosaic, linear)))


def gaussian_sums(x: np.ndarray) -> np.ndarray:
    """Gaussian window (sigma 1.5, 11 taps) means along the last two axes, edges renormalized."""
    taps = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    taps /= taps.sum()

    def along(a, axis):
        a = np.moveaxis(a, axis, -1)
        padded = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(5, 5)])
        out = sum(w * padded[..., k : k + a.shape[-1]] for k, w in enumerate(taps))
        return np.moveaxis(out, -1, axis)

    ones = along(along(np.ones(x.shape[-2:]), -1), -2)
    return along(along(x, -1), -2) / ones


def scores(prediction: np.ndarray, truth: np.ndarray, where: np.ndarray) -> dict[str, float]:
    """Masked PSNR, SSIM and SAM of (12, H, W) DN images over the pixels ``where``."""
    a = np.clip(prediction.astype(np.float64), 0, PEAK)
    b = np.clip(truth.astype(np.float64), 0, PEAK)
    mse = float(np.mean((a[:, where] - b[:, where]) ** 2))
    mu_a, mu_b = gaussian_sums(a), gaussian_sums(b)
    var_a, var_b = gaussian_sums(a * a) - mu_a**2, gaussian_sums(b * b) - mu_b**2
    cov = gaussian_sums(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    ssim = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    va, vb = a[:, where], b[:, where]
    cos = (va * vb).sum(axis=0) / np.maximum(np.linalg.norm(va, axis=0) * np.linalg.norm(vb, axis=0), 1e-12)
    return {"psnr": float(10 * np.log10(PEAK**2 / mse)), "ssim": float(ssim[:, where].mean()),
            "sam": float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())}


def cases(seqs: dict[str, np.ndarray]) -> list[dict]:
    """Every (place, target date, cover) with its scores per baseline and method."""
    out = []
    for place, cube in seqs.items():
        clouds = np.stack([real_clouds(image) for image in cube])
        for t in range(1, cube.shape[0]):
            if clouds[t].mean() > MAX_REAL_CLOUDS:
                continue
            for k, cover in enumerate(COVERS):
                simulated = blob_mask(cube.shape[-2:], int(place) * 10 + t * 3 + k, cover)
                masks = clouds[: t + 1].copy()
                masks[t] |= simulated
                scored = simulated & ~clouds[t]
                sub = np.ascontiguousarray(cube[: t + 1])
                result = {"place": place, "date": t, "cover": cover, "real_clouds": round(float(clouds[t].mean()), 4),
                          "scored_pixels": int(scored.sum()), "scores": {}, "seconds": {}}
                for name, prediction in baselines(sub, masks).items():
                    result["scores"][name] = scores(prediction, cube[t], scored)
                for method in METHODS:
                    t0 = time.perf_counter()
                    filled = inpaint(sub, masks, method=method)
                    result["seconds"][method] = round(time.perf_counter() - t0, 2)
                    if not np.array_equal(filled[~masks[:, None].repeat(12, axis=1)],
                                          sub[~masks[:, None].repeat(12, axis=1)]):
                        raise SystemExit(f"inpaint changed clear pixels ({place}_{t}, {method})")
                    result["scores"][f"inpaint {method}"] = scores(filled[t], cube[t], scored)
                out.append(result)
                print(place, t, cover, {k: round(float(v["psnr"]), 2) for k, v in result["scores"].items()}, flush=True)
    return out


def summary(found: list[dict]) -> dict[str, dict[str, float]]:
    names = list(found[0]["scores"])
    return {n: {m: round(float(np.mean([c["scores"][n][m] for c in found])), 4) for m in ("psnr", "ssim", "sam")}
            for n in names}


def rgb(image: np.ndarray) -> np.ndarray:
    x = np.clip(image[list(RGB)].astype(np.float32) / 2500.0, 0, 1) ** 0.8
    return (np.moveaxis(x, 0, -1) * 255 + 0.5).astype(np.uint8)


def quicklooks(seqs: dict[str, np.ndarray], folder: Path) -> list[str]:
    """Before / mask / after PNGs of the real cloudy dates (every date's real clouds masked)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for place, t in QUICKLOOKS:
        cube = seqs[place]
        clouds = np.stack([real_clouds(image) for image in cube])
        filled = inpaint(cube, clouds)[t]
        before = rgb(cube[t])
        shown = before.copy()
        shown[clouds[t]] = (255 * 0.35 + shown[clouds[t]] * 0.65).astype(np.uint8)
        shown[clouds[t], 0] = 255  # the mask in red over the image
        gap = np.full((cube.shape[-2], 6, 3), 255, np.uint8)
        panel = np.concatenate([before, gap, shown, gap, rgb(filled)], axis=1)
        path = folder / f"{place}_{t}.png"
        Image.fromarray(panel).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        written.append(str(path.relative_to(ROOT)))
    return written


def main(argv=None) -> int:
    p = argument_parser(__doc__, HERE / "results" / "inpaint.json")
    p.add_argument("--quick", action="store_true", help="64 x 64 crops, held-out places only (a smoke run)")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "inpaint", help="where the quicklook PNGs go")
    args = p.parse_args(argv)
    size = 64 if args.quick else SIZE
    seqs = {k: np.ascontiguousarray(v[..., :size, :size]) for k, v in read_sequences(args.data).items()}
    held = {k: v for k, v in seqs.items() if k in VALIDATION_PLACES}
    trained = {k: v for k, v in seqs.items() if k not in VALIDATION_PLACES}
    found_held = cases(held)
    found_trained = [] if args.quick else cases(trained)
    results = {"machine": machine(), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "size": size, "covers": list(COVERS), "held_out_places": list(held),
               "trained_places": list(trained) if not args.quick else [],
               "held_out": summary(found_held), "trained": summary(found_trained) if found_trained else {},
               "cases": found_held + found_trained,
               "quicklooks": [] if args.quick else quicklooks(seqs, args.docs)}
    publish("inpaint", results, args.out, table(results), readme=not args.no_readme and not args.quick)
    return 0


def table(results: dict) -> str:
    held, trained = results["held_out"], results["trained"]
    lines = ["| method | masked PSNR (dB) | SSIM | SAM (deg) | masked PSNR, trained-on places |",
             "|---|---:|---:|---:|---:|"]
    for name, s in held.items():
        other = f"{trained[name]['psnr']:.2f}" if name in trained else "-"
        lines.append(f"| {name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['sam']:.2f} | {other} |")
    held_cases = [c for c in results["cases"] if c["place"] in results["held_out_places"]]
    best = max(BASELINES, key=lambda n: held[n]["psnr"])
    wins = sum(c["scores"]["inpaint hybrid"]["psnr"] > max(c["scores"][n]["psnr"] for n in BASELINES)
               for c in held_cases)
    targets = sorted({f"{c['place']}_{c['date']}" for c in held_cases})
    lines += ["", f"inpaint (hybrid) against the best baseline ({best}): "
              f"{held['inpaint hybrid']['psnr'] - held[best]['psnr']:+.2f} dB masked PSNR on the held-out places; "
              f"it beats all three baselines in {wins} of {len(held_cases)} cases.", "",
              f"Measured by `benchmarks/inpaint.py` on {results['machine']}, {results['utc'][:10]}: the held-out "
              f"places {', '.join(results['held_out_places'])} (targets {', '.join(targets)}; "
              f"{results['size']} x {results['size']}), simulated blob clouds covering "
              f"{', '.join(f'{c:.0%}' for c in results['covers'])} of each target, scored over them; the last column "
              f"the same on the places the codec was trained on ({', '.join(results['trained_places'])})."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
