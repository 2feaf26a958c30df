"""The project's quality metric, used by the demo, the benchmarks and the model cards.

PSNR = 10 log10(10000^2 / MSE) on reflectance x 10000 (DN) clipped to [0, 10000], per image over all bands and
pixels; a dataset's PSNR is the mean over its images. bpp = compressed bits / (H x W), all bands, headers included.
"""

from __future__ import annotations

import numpy as np

PEAK = 10000.0


def psnr(original: np.ndarray, decoded: np.ndarray, *, scale: float = 1.0, offset: float = 0,
         valid: np.ndarray | None = None) -> float:
    """PSNR of one image (bands, H, W); ``scale`` turns values into DN (10000 for float reflectance), ``offset`` is
    the DN of reflectance 0 (Sentinel-2 from processing baseline 04.00 on: 1000). With ``valid`` (bool, the
    arrays' shape), over those elements only: nodata decoded exactly is no quality (inf where none is valid)."""
    a = np.clip(np.asarray(original, np.float64) * scale - offset, 0, PEAK)
    b = np.clip(np.asarray(decoded, np.float64) * scale - offset, 0, PEAK)
    squared = (a - b) ** 2
    if valid is not None:
        squared = squared[np.broadcast_to(valid, squared.shape)]
    mse = np.mean(squared) if squared.size else 0.0
    return float("inf") if mse == 0 else float(10 * np.log10(PEAK**2 / mse))


def mean_psnr(original: np.ndarray, decoded: np.ndarray, *, scale: float = 1.0) -> float:
    """Mean PSNR over the images of a (..., bands, H, W) stack."""
    a = np.asarray(original).reshape((-1,) + original.shape[-3:])
    b = np.asarray(decoded).reshape((-1,) + decoded.shape[-3:])
    return float(np.mean([psnr(x, y, scale=scale) for x, y in zip(a, b)]))


def max_error(original: np.ndarray, decoded: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(original, np.float64) - np.asarray(decoded, np.float64))))


def bpp(nbytes: int, height: int, width: int, images: int = 1) -> float:
    return nbytes * 8.0 / (height * width * images)
