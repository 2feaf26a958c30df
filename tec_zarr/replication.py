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

from .integer.layers import rdiv


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


def _constant(key: np.ndarray, valid: np.ndarray, blocks: Blocks) -> bool:
    """Every block's valid elements equal (``key``: (B, H, W) integers)."""
    big = np.iinfo(np.int64)
    lo = np.where(valid, key, big.max)
    hi = np.where(valid, key, big.min)
    h, w = key.shape[-2:]
    sy, sx = starts(h, blocks.size, blocks.phase_y), starts(w, blocks.size, blocks.phase_x)
    low = np.minimum.reduceat(np.minimum.reduceat(lo, sy, axis=-2), sx, axis=-1)
    high = np.maximum.reduceat(np.maximum.reduceat(hi, sy, axis=-2), sx, axis=-1)
    some = low <= high  # blocks holding a valid element
    return bool((low[some] == high[some]).all())


def _keys(band: np.ndarray) -> np.ndarray:
    """Integers equal exactly where the elements are the same bits: float32 -0.0 and 0.0 differ (lossless keeps
    the sign), NaN never reaches here (missing)."""
    if band.dtype.kind == "f":
        return np.ascontiguousarray(band).view(np.int32 if band.dtype.itemsize == 4 else np.int64).astype(np.int64)
    return band.astype(np.int64)


def detect_band(band: np.ndarray, valid: np.ndarray) -> Blocks:
    """The largest candidate block size (with its phase) of which ``band`` (B, H, W) is made over its ``valid``
    elements, or :data:`NATIVE`. Blocks must hold more than one element somewhere (a 2 x 2 chunk is not made of
    1 x 1 blocks), and a band with no valid element is not replicated."""
    h, w = band.shape[-2:]
    if not valid.any():
        return NATIVE
    key = _keys(band)
    # where neighbours along an axis differ (both valid): block edges, never inside a block
    across_x = ((key[..., 1:] != key[..., :-1]) & valid[..., 1:] & valid[..., :-1]).any(axis=(0, 1))
    across_y = ((key[..., 1:, :] != key[..., :-1, :]) & valid[..., 1:, :] & valid[..., :-1, :]).any(axis=(0, 2))
    for size in CANDIDATE_SIZES:
        py, px = _axis_phase(across_y, size), _axis_phase(across_x, size)
        if py is None or px is None or (len(starts(h, size, py)) == h and len(starts(w, size, px)) == w):
            continue
        # neighbour checks miss a block whose differing elements sit either side of a missing one: verify whole blocks
        if _constant(key, valid, Blocks(size, py, px)):
            return Blocks(size, py, px)
    return NATIVE


def from_header(blocks) -> tuple[Blocks, ...] | None:
    """A chunk header's per-band (size, phase_y, phase_x) triples as :class:`Blocks` (None: no blocks section)."""
    return None if blocks is None else tuple(Blocks(*b) for b in blocks)


def detect(images: np.ndarray, valid: np.ndarray) -> tuple[Blocks, ...] | None:
    """Per band of ``images`` (B, C, H, W), the blocks every image of the chunk is made of; None where no band
    is replicated."""
    found = tuple(detect_band(images[:, c], valid[:, c]) for c in range(images.shape[1]))
    return found if any(b.replicated for b in found) else None


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
            means = rdiv(block_sums(band.astype(np.int64), b), _counts(shape, b))
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


def native_layout(x: np.ndarray, blocks: tuple[Blocks, ...]) -> np.ndarray:
    """:func:`to_native` of an integer array constant over whole blocks (a projected base): every element counts."""
    return to_native(x, np.ones(x.shape, bool), blocks)[0]


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


class _Axis(NamedTuple):
    """Along one axis: linear interpolation of the native grid at each element's centre (element y takes
    ``(1 - frac[y]) native[lo[y]] + frac[y] native[hi[y]]``), and the tridiagonal matrix ``P U`` (block means of
    the interpolation: ``sub``, ``diag``, ``sup``) factored for the Thomas algorithm (``ratio``, ``pivot``)."""

    lo: np.ndarray
    hi: np.ndarray
    frac: np.ndarray
    sub: np.ndarray
    ratio: np.ndarray  # sup[i] / pivot[i]
    pivot: np.ndarray


@lru_cache(maxsize=32)
def _axis(n: int, size: int, phase: int) -> _Axis:
    first = starts(n, size, phase)
    natives = len(first)
    lead = (size - phase) % size  # elements a whole first block would have before the axis starts
    u = np.clip((np.arange(n) + lead - (size - 1) / 2) / size, 0, natives - 1)  # centres in native units
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, natives - 1)
    frac = u - lo
    block = np.repeat(np.arange(natives), lengths(n, size, phase))
    count = lengths(n, size, phase).astype(np.float64)
    bands = np.zeros((natives, 3))  # an element of block b interpolates natives b - 1, b, b + 1 only
    np.add.at(bands, (block, lo - block + 1), (1 - frac) / count[block])
    np.add.at(bands, (block, hi - block + 1), frac / count[block])
    sub, diag, sup = bands[:, 0], bands[:, 1], bands[:, 2]
    pivot, ratio = np.empty(natives), np.zeros(natives)
    for i in range(natives):
        pivot[i] = diag[i] - (sub[i] * ratio[i - 1] if i else 0.0)
        ratio[i] = sup[i] / pivot[i]
    for a in (lo, hi, frac, sub, ratio, pivot):
        a.setflags(write=False)
    return _Axis(lo, hi, frac, sub, ratio, pivot)


def _solve(axis: _Axis, d: np.ndarray) -> np.ndarray:
    """``(P U)^-1 d`` along d's first axis (the Thomas algorithm: P U is diagonally dominant)."""
    out = np.empty_like(d)
    out[0] = d[0] / axis.pivot[0]
    for i in range(1, len(d)):
        out[i] = (d[i] - axis.sub[i] * out[i - 1]) / axis.pivot[i]
    for i in range(len(d) - 2, -1, -1):
        out[i] -= axis.ratio[i] * out[i + 1]
    return out


def interpolate(native: np.ndarray, blocks: Blocks, shape: tuple[int, int]) -> np.ndarray:
    """Linear interpolation of a native grid (..., h, w) at the centres of a (H, W) ``shape``'s elements, edges
    clamped: the bilinear resampling cube builders offer beside nearest."""
    ay, ax = _axis(shape[0], blocks.size, blocks.phase_y), _axis(shape[1], blocks.size, blocks.phase_x)
    rows = native[..., ay.lo, :] * (1 - ay.frac)[:, None] + native[..., ay.hi, :] * ay.frac[:, None]
    return rows[..., ax.lo] * (1 - ax.frac) + rows[..., ax.hi] * ax.frac


def smoothing_matrix(n: int, size: int, phase: int) -> np.ndarray:
    """(n, n) matrix S of what :func:`smooth` does along one axis of ``n`` elements (all valid): ``S @ column``
    is the smooth column with the same block means, so a band becomes ``S_y @ band @ S_x.T``. The trainers use
    it to hand the transform what the encoder hands it."""
    axis = _axis(n, size, phase)
    first = starts(n, size, phase)
    average = np.zeros((len(first), n))
    average[np.repeat(np.arange(len(first)), lengths(n, size, phase)), np.arange(n)] = 1.0
    average /= average.sum(axis=1, keepdims=True)
    grid = _solve(axis, average)  # native values whose interpolation has the block means, per input element
    return grid[axis.lo] * (1 - axis.frac)[:, None] + grid[axis.hi] * axis.frac[:, None]


def smooth(x: np.ndarray, valid: np.ndarray, blocks: tuple[Blocks, ...]) -> None:
    """In place, each replicated band of the encoder's input ``x`` (B, C, H, W) replaced by a smooth band with the
    same block means (over each block's valid elements; all of them where none is valid): linear interpolation of
    a native grid chosen so. Its decoded block means are the coded values."""
    h, w = x.shape[-2:]
    for c, b in enumerate(blocks):
        if not b.replicated:
            continue
        band, ok = x[:, c].astype(np.float64), valid[:, c]
        means = block_sums(band, b) / _counts((h, w), b)
        if not ok.all():
            count = block_sums(ok.astype(np.float64), b)
            means = np.where(count > 0, block_sums(np.where(ok, band, 0), b) / np.maximum(count, 1), means)
        grid = _solve(_axis(h, b.size, b.phase_y), np.moveaxis(means, 1, 0))  # rows: (h', B, w')
        grid = _solve(_axis(w, b.size, b.phase_x), np.moveaxis(grid, 2, 0))  # columns: (w', h', B)
        x[:, c] = interpolate(np.transpose(grid, (2, 1, 0)), b, (h, w)).astype(x.dtype)
