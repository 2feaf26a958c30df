"""Benchmark-only quality measures beyond the project PSNR (tec_zarr.metrics): SSIM, spectral angle, BD-rate."""

from __future__ import annotations

import numpy as np

PEAK = 10000.0


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over (2r+1)^2 windows, valid region only, via summed-area tables."""
    s = np.pad(np.cumsum(np.cumsum(x, axis=-2), axis=-1), ((0, 0), (1, 0), (1, 0)))
    k = 2 * r + 1
    return (s[:, k:, k:] - s[:, :-k, k:] - s[:, k:, :-k] + s[:, :-k, :-k]) / (k * k)


def ssim(original: np.ndarray, decoded: np.ndarray, radius: int = 3) -> float:
    """Mean SSIM over bands (7x7 box windows, data range 10000 DN, values clipped to [0, 10000])."""
    a = np.clip(original.astype(np.float64), 0, PEAK)
    b = np.clip(decoded.astype(np.float64), 0, PEAK)
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    ma, mb = _box(a, radius), _box(b, radius)
    va = _box(a * a, radius) - ma * ma
    vb = _box(b * b, radius) - mb * mb
    cov = _box(a * b, radius) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s.mean())


def spectral_angle_deg(original: np.ndarray, decoded: np.ndarray) -> float:
    """Mean spectral angle (degrees) between original and decoded pixel spectra (pixels with a zero spectrum skipped)."""
    a = original.reshape(original.shape[0], -1).astype(np.float64)
    b = decoded.reshape(decoded.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    ok = (na > 0) & (nb > 0)
    cos = np.clip((a[:, ok] * b[:, ok]).sum(axis=0) / (na[ok] * nb[ok]), -1, 1)
    return float(np.degrees(np.arccos(cos)).mean())


def band_mse(original: np.ndarray, decoded: np.ndarray) -> list[float]:
    a = np.clip(original.astype(np.float64), 0, PEAK)
    b = np.clip(decoded.astype(np.float64), 0, PEAK)
    return [float(v) for v in ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)]


def bd_rate(reference: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    """Bjontegaard delta rate (%) of ``test`` against ``reference``, both lists of (bpp, psnr).

    Cubic fits of log(rate) against PSNR, integrated over the PSNR range both curves cover; negative = fewer bits.
    """
    if len(reference) < 4 or len(test) < 4:
        return None
    r = np.array(sorted(reference, key=lambda p: p[1]))
    t = np.array(sorted(test, key=lambda p: p[1]))
    lo, hi = max(r[:, 1].min(), t[:, 1].min()), min(r[:, 1].max(), t[:, 1].max())
    if hi <= lo:
        return None
    pr = np.polyfit(r[:, 1], np.log(r[:, 0]), 3)
    pt = np.polyfit(t[:, 1], np.log(t[:, 0]), 3)
    ir, it = np.polyint(pr), np.polyint(pt)
    mean_diff = ((np.polyval(it, hi) - np.polyval(it, lo)) - (np.polyval(ir, hi) - np.polyval(ir, lo))) / (hi - lo)
    return float((np.exp(mean_diff) - 1) * 100)
