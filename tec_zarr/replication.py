"""Bands stored coarser than their grid: k x k blocks of equal values, as nearest-neighbour resampling makes them.

stackstac, odc-stac and most cube builders put Sentinel-2's 20 m and 60 m bands on the 10 m grid by repeating each
native pixel into a 2 x 2 or 6 x 6 block. Coded as they are, the block edges cost more bits than the image. The
encoder finds such bands (:func:`detect`, per chunk and band: block size, phase, partial blocks at the chunk edges)
and stores what it found in the chunk; then

* the lossy path codes a smooth band whose block means are the native values (:func:`smooth`), and the decoder
  projects its output back onto the blocks (:func:`project`), so block edges cost nothing and the block mean
  averages the coding error down;
* the error-bounded residual codes the native grid only (:func:`to_native`, :func:`from_native`).

A band's blocks: ``size`` k, and the first row / column where a whole block starts (``phase_y``, ``phase_x``, in
0..k-1); the rows and columns before it form a partial block, as can the last ones.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np


class Blocks(NamedTuple):
    size: int = 1
    phase_y: int = 0
    phase_x: int = 0

    @property
    def replicated(self) -> bool:
        return self.size > 1


NATIVE = Blocks()
# Sentinel-2's 20 m and 60 m bands on a 10 m grid (2, 6) and 30 m products (3); largest first, since a band made
# of 6 x 6 blocks is also made of 2 x 2 and 3 x 3 ones.
CANDIDATE_SIZES = (6, 3, 2)


@lru_cache(maxsize=256)
def starts(n: int, size: int, phase: int) -> np.ndarray:
    """First index of each block along an axis of ``n`` elements."""
    whole = np.arange(phase, n, size)
    out = np.concatenate(([0], whole)) if phase > 0 or whole.size == 0 else whole
    out.setflags(write=False)  # cached: shared by every caller
    return out


@lru_cache(maxsize=256)
def lengths(n: int, size: int, phase: int) -> np.ndarray:
    out = np.diff(np.append(starts(n, size, phase), n))
    out.setflags(write=False)
    return out


def _axis_phase(changes: np.ndarray, size: int) -> int | None:
    """The phase whose block starts hold every change along an axis (``changes[i]``: element i + 1 differs from
    element i), or None."""
    at = np.flatnonzero(changes) + 1
    if at.size == 0:
        return 0
    phase = int(at[0] % size)
    return phase if (at % size == phase).all() else None


def block_sums(x: np.ndarray, blocks: Blocks) -> np.ndarray:
    """Sums over each block of the last two axes (exact in integers)."""
    h, w = x.shape[-2:]
    rows = np.add.reduceat(x, starts(h, blocks.size, blocks.phase_y), axis=-2)
    return np.add.reduceat(rows, starts(w, blocks.size, blocks.phase_x), axis=-1)


def expand(native: np.ndarray, blocks: Blocks, shape: tuple[int, int]) -> np.ndarray:
    """Each native value repeated over its block: the inverse of taking block values."""
    h, w = shape
    rows = np.repeat(native, lengths(h, blocks.size, blocks.phase_y), axis=-2)
    return np.repeat(rows, lengths(w, blocks.size, blocks.phase_x), axis=-1)


def _constant(band: np.ndarray, valid: np.ndarray, blocks: Blocks) -> bool:
    """Every block's valid elements equal (band: (B, H, W))."""
    lo = np.where(valid, band, np.inf)
    hi = np.where(valid, band, -np.inf)
    h, w = band.shape[-2:]
    sy, sx = starts(h, blocks.size, blocks.phase_y), starts(w, blocks.size, blocks.phase_x)
    low = np.minimum.reduceat(np.minimum.reduceat(lo, sy, axis=-2), sx, axis=-1)
    high = np.maximum.reduceat(np.maximum.reduceat(hi, sy, axis=-2), sx, axis=-1)
    some = np.isfinite(low)
    return bool((low[some] == high[some]).all())


def detect_band(band: np.ndarray, valid: np.ndarray) -> Blocks:
    """The largest candidate block size (with its phase) of which ``band`` (B, H, W) is made over its ``valid``
    elements, or :data:`NATIVE`."""
    h, w = band.shape[-2:]
    # where neighbours along an axis differ (both valid): block edges, never inside a block
    across_x = ((band[..., 1:] != band[..., :-1]) & valid[..., 1:] & valid[..., :-1]).any(axis=(0, 1))
    across_y = ((band[..., 1:, :] != band[..., :-1, :]) & valid[..., 1:, :] & valid[..., :-1, :]).any(axis=(0, 2))
    for size in CANDIDATE_SIZES:
        if size > max(h, w):
            continue
        py, px = _axis_phase(across_y, size), _axis_phase(across_x, size)
        # neighbour checks miss a block whose differing elements sit either side of a missing one: verify whole blocks
        if py is not None and px is not None and _constant(band, valid, Blocks(size, py, px)):
            return Blocks(size, py, px)
    return NATIVE


def detect(images: np.ndarray, valid: np.ndarray) -> tuple[Blocks, ...] | None:
    """Per band of ``images`` (B, C, H, W), the blocks every image of the chunk is made of; None where no band
    is replicated."""
    found = tuple(detect_band(images[:, c], valid[:, c]) for c in range(images.shape[1]))
    return found if any(b.replicated for b in found) else None


def _rdiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """round(a / b) for b > 0, ties away from zero, in integers."""
    r = (np.abs(a) + b // 2) // b
    return np.where(a >= 0, r, -r)


def _counts(shape: tuple[int, int], blocks: Blocks) -> np.ndarray:
    h, w = shape
    return np.outer(lengths(h, blocks.size, blocks.phase_y), lengths(w, blocks.size, blocks.phase_x))


def project(values: np.ndarray, blocks: tuple[Blocks, ...]) -> np.ndarray:
    """In place, every replicated band of ``values`` (B, C, H, W) replaced by its block means: integers rounded
    (ties away from zero, exact on any machine), floats in float64."""
    shape = values.shape[-2:]
    for c, b in enumerate(blocks):
        if not b.replicated:
            continue
        band = values[:, c]
        if values.dtype.kind in "iu":
            means = _rdiv(block_sums(band.astype(np.int64), b), _counts(shape, b))
        else:
            means = block_sums(band.astype(np.float64), b) / _counts(shape, b)
        values[:, c] = expand(means, b, shape).astype(values.dtype)
    return values


def to_native(q: np.ndarray, valid: np.ndarray, blocks: tuple[Blocks, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Integer ``q`` (B, C, H, W), constant over each block's valid elements, laid out for coding: a replicated
    band's native grid in the top-left corner of its plane, valid where its block has a valid element; other
    bands as they are. Neighbours on the native grid stay neighbours, so the residual coder's spatial and
    inter-band prediction work on it as on any band."""
    out, ok = q.copy(), valid.copy()
    shape = q.shape[-2:]
    for c, b in enumerate(blocks):
        if not b.replicated:
            continue
        count = block_sums(valid[:, c].astype(np.int64), b)
        native = block_sums(np.where(valid[:, c], q[:, c], 0).astype(np.int64), b) // np.maximum(count, 1)
        nh, nw = native.shape[-2:]
        out[:, c], ok[:, c] = 0, False
        out[:, c, :nh, :nw], ok[:, c, :nh, :nw] = native, count > 0
    return out, ok


def native_valid(valid: np.ndarray, blocks: tuple[Blocks, ...]) -> np.ndarray:
    """The layout's valid elements, from the chunk's (the decoder knows them from the masks)."""
    return to_native(np.zeros(valid.shape, np.int64), valid, blocks)[1]


def from_native(coded: np.ndarray, blocks: tuple[Blocks, ...]) -> np.ndarray:
    """Inverse of :func:`to_native` on valid elements: each native value repeated over its block."""
    out = coded.copy()
    shape = coded.shape[-2:]
    for c, b in enumerate(blocks):
        if not b.replicated:
            continue
        nh, nw = len(starts(shape[0], b.size, b.phase_y)), len(starts(shape[1], b.size, b.phase_x))
        out[:, c] = expand(coded[:, c, :nh, :nw], b, shape)
    return out


@lru_cache(maxsize=64)
def _operators(n: int, size: int, phase: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: U (n x natives), linear interpolation of the native grid at each element's centre, and
    the solve matrix (P U)^-1 with P the block mean, so that smoothing keeps every block mean."""
    first = starts(n, size, phase)
    lead = (size - phase) % size  # elements a whole first block would have before the axis starts
    natives = len(first)
    u = (np.arange(n) + lead - (size - 1) / 2) / size  # element centres in native-grid units
    u = np.clip(u, 0, natives - 1)
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, natives - 1)
    frac = u - lo
    interp = np.zeros((n, natives))
    np.add.at(interp, (np.arange(n), lo), 1 - frac)
    np.add.at(interp, (np.arange(n), hi), frac)
    mean = np.zeros((natives, n))
    mean[np.repeat(np.arange(natives), lengths(n, size, phase)), np.arange(n)] = 1
    mean /= mean.sum(axis=1, keepdims=True)
    solve = np.linalg.inv(mean @ interp)
    interp.setflags(write=False)
    solve.setflags(write=False)
    return interp, solve


def smooth(x: np.ndarray, valid: np.ndarray, blocks: tuple[Blocks, ...]) -> None:
    """In place, each replicated band of the encoder's input ``x`` (B, C, H, W) replaced by a smooth band with the
    same block means (over each block's valid elements; all of them where none is valid): linear interpolation of
    a native grid chosen so. Its decoded block means are the coded values."""
    h, w = x.shape[-2:]
    for c, b in enumerate(blocks):
        if not b.replicated:
            continue
        band, ok = x[:, c].astype(np.float64), valid[:, c]
        count = block_sums(ok.astype(np.float64), b)
        means = np.where(count > 0, block_sums(np.where(ok, band, 0), b) / np.maximum(count, 1),
                         block_sums(band, b) / _counts((h, w), b))
        uy, sy = _operators(h, b.size, b.phase_y)
        ux, sx = _operators(w, b.size, b.phase_x)
        grid = sy @ means @ sx.T
        x[:, c] = (uy @ grid @ ux.T).astype(x.dtype)
