"""Residual coder 1: quantized residuals coded per 64 x 64 tile, memoryless, from integer tables only.

Each (image, band, TILE x TILE tile) gets two small integers chosen by the encoder and written to the chunk:
``k``, one of the geometric tables (:data:`~.tables.THETAS`), and ``s``, a shift; the residuals are coded with them
as :mod:`.tables` describes. A CRC32 of the residuals and the payload's length rides along
(:mod:`tec_zarr.bitstream.payload`): a payload that decodes to other values, or carries extra words, is refused
instead of returning wrong pixels.
"""

from __future__ import annotations

import numpy as np

from ..bitstream.payload import check_residual_seal, residual_words, seal_residual
from ..entropy.rangecoder import PayloadBudget
from ..errors import CorruptChunkError
from .tables import MAX_SHIFT, PRECISION_BITS, TABLE_LENGTH, THETAS, decode_symbols, encode_symbols, table

CODER = 1
TILE = 64


def tile_ids(shape: tuple[int, int, int, int], tile: int = TILE) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Each element's tile index (flat, row-major over (B, C, ty, tx)) and the tile grid shape."""
    b, c, h, w = shape
    ty, tx = -(-h // tile), -(-w // tile)
    rows = (np.arange(h) // tile)[:, None] * tx + (np.arange(w) // tile)[None, :]
    plane = np.arange(b * c)[:, None, None] * (ty * tx)
    return (plane + rows[None]).reshape(b, c, h, w), (b, c, ty, tx)


def choose_parameters(q: np.ndarray, valid: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Encoder side: per tile the (k, s) of the fewest estimated bits. Returns uint8 (tiles, 2)."""
    ids, grid = tile_ids(q.shape, tile)
    n_tiles = int(np.prod(grid))
    m = np.abs(q[valid]).astype(np.int64)
    tid = ids[valid]
    cost_tables = np.stack([-np.log2(table(k) / float(1 << PRECISION_BITS)) for k in range(len(THETAS))])
    order = np.argsort(tid, kind="stable")
    bounds = np.searchsorted(tid[order], np.arange(n_tiles + 1))
    params = np.zeros((n_tiles, 2), np.uint8)
    for t in range(n_tiles):
        values = m[order[bounds[t] : bounds[t + 1]]]
        if values.size == 0:
            continue
        centre = min(MAX_SHIFT, max(0, int(np.log2(values.mean() + 1)) - 2))
        best = None
        for s in range(max(0, centre - 1), min(MAX_SHIFT, centre + 2) + 1):
            high = values >> s
            hist = np.bincount(np.minimum(high, TABLE_LENGTH - 1), minlength=TABLE_LENGTH).astype(np.float64)
            escapes = high[high >= TABLE_LENGTH - 1] - (TABLE_LENGTH - 1)
            extra = float(np.sum(2 * np.log2(escapes + 1.0) + 6)) + s * values.size
            costs = cost_tables @ hist + extra
            k = int(np.argmin(costs))
            if best is None or costs[k] < best[0]:
                best = (costs[k], k, s)
        params[t] = best[1], best[2]
    return params


def _tile_parameters(params: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per element the (k, s) of its tile: (n, 2)."""
    return params.astype(np.int64)[ids]


def encode(q: np.ndarray, valid: np.ndarray, params: np.ndarray, tile: int = TILE) -> bytes:
    """``q`` int64 (B, C, H, W) residual steps, coded where ``valid``. Returns crc32(q) + the range-coded words."""
    import constriction

    ids, _ = tile_ids(q.shape, tile)
    values = q[valid].astype(np.int64)
    enc = constriction.stream.queue.RangeEncoder()
    encode_symbols(enc, values, _tile_parameters(params, ids[valid]))
    return seal_residual(values, enc.get_compressed().tobytes())


def decode(data: bytes, valid: np.ndarray, params: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Inverse of :func:`encode`: int64 residual steps shaped like ``valid``, 0 where not valid."""
    import constriction

    words = residual_words(data)
    ids, grid = tile_ids(valid.shape, tile)
    if params.shape != (int(np.prod(grid)), 2) or (params[:, 0] >= len(THETAS)).any() or (params[:, 1] > MAX_SHIFT).any():
        raise CorruptChunkError(f"Expected {int(np.prod(grid))} residual tile parameters in range. Got {params.shape} instead.")
    dec = constriction.stream.queue.RangeDecoder(words)
    try:
        m = decode_symbols(dec, _tile_parameters(params, ids[valid]), PayloadBudget(len(data) - 4, "residual payload"))
    except (AssertionError, ValueError, RuntimeError, OverflowError) as e:  # constriction's words for invalid data
        raise CorruptChunkError(f"Expected a decodable residual payload. Got {type(e).__name__}: {e} instead.") from None
    check_residual_seal(data, m, dec.maybe_exhausted())
    out = np.zeros(valid.shape, np.int64)
    out[valid] = m
    return out
