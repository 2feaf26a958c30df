"""Entropy coding of quantized residuals with a content-adaptive model built from integers only.

Each (image, band, TILE x TILE tile) gets two small integers chosen by the encoder and written to the chunk:
``k``, one of :data:`THETAS`' geometric tables, and ``s``, a shift. A residual ``q`` is coded as
``|q| >> s`` with table ``k`` (an escape beyond the table), the ``s`` low bits of ``|q|`` uniformly, and the
sign of each non-zero ``q`` as one uniform bit. The tables are made by exact integer arithmetic from the
constants below, so the decoder's probabilities equal the encoder's on any machine. A CRC32 of the residuals
and the payload's length rides along: a payload that decodes to other values, or carries extra words, is refused
instead of returning wrong pixels.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from .errors import CorruptChunkError

TILE = 64
# theta_k x 2**16 of the one-sided geometric tables P(n) ~ theta**n; table means 2**(k/3 - 5), k = 0..23.
THETAS = (1986, 2483, 3097, 3855, 4784, 5915, 7282, 8917, 10851, 13107, 15698, 18619, 21845, 25329, 28999, 32768,
          36537, 40207, 43691, 46917, 49838, 52429, 54685, 56619)
TABLE_LENGTH = 97  # values 0..95, then the escape
PRECISION_BITS = 16
MAX_SHIFT = 31
_CHUNK_BITS = 16
_MAX_ESCAPE_BITS = 40


@lru_cache(maxsize=None)
def table(k: int) -> np.ndarray:
    """Integer counts (summing to 2**16, all positive) of table ``k``: exact integer arithmetic, no libm."""
    n_den, total = 1 << 16, 1 << PRECISION_BITS
    theta = THETAS[k]
    counts = [max(1, total * (n_den - theta) * theta**n // n_den ** (n + 1)) for n in range(TABLE_LENGTH - 1)]
    counts.append(max(1, total * theta ** (TABLE_LENGTH - 1) // n_den ** (TABLE_LENGTH - 1)))  # the tail
    counts[0] += total - sum(counts)
    return np.asarray(counts, np.int64)


@lru_cache(maxsize=None)
def _model(k: int):
    import constriction

    return constriction.stream.model.Categorical(table(k).astype(np.float64), perfect=False)


@lru_cache(maxsize=None)
def _uniform(bits: int):
    import constriction

    return constriction.stream.model.Uniform(1 << bits)


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


def _orders(params: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per valid element its k and s, and the (deterministic) orders grouping the elements by k and by s."""
    k = params[:, 0].astype(np.int64)[ids]
    s = params[:, 1].astype(np.int64)[ids]
    return k, s, np.argsort(k, kind="stable"), np.argsort(s, kind="stable")


def encode(q: np.ndarray, valid: np.ndarray, params: np.ndarray, tile: int = TILE) -> bytes:
    """``q`` int64 (B, C, H, W) residual steps, coded where ``valid``. Returns crc32(q) + the range-coded words."""
    import constriction

    ids, _ = tile_ids(q.shape, tile)
    values = q[valid].astype(np.int64)
    k, s, by_k, by_s = _orders(params, ids[valid])
    m = np.abs(values)
    high = m >> s
    enc = constriction.stream.queue.RangeEncoder()
    escape = TABLE_LENGTH - 1
    for kk in np.unique(k):
        sel = by_k[k[by_k] == kk]
        h = high[sel]
        enc.encode(np.minimum(h, escape).astype(np.int32), _model(int(kk)))
        for z in h[h >= escape] - escape:
            _encode_escape(enc, int(z))
    for ss in np.unique(s):
        if ss == 0:
            continue
        low = (m[by_s[s[by_s] == ss]]) & ((1 << int(ss)) - 1)
        for shift in range(0, int(ss), _CHUNK_BITS):
            bits = min(_CHUNK_BITS, int(ss) - shift)
            enc.encode(((low >> shift) & ((1 << bits) - 1)).astype(np.int32), _uniform(bits))
    enc.encode((values[m != 0] < 0).astype(np.int32), _uniform(1))
    words = enc.get_compressed().tobytes()
    return _crc(values, len(words)).to_bytes(4, "little") + words


def decode(data: bytes, valid: np.ndarray, params: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Inverse of :func:`encode`: int64 residual steps shaped like ``valid``, 0 where not valid."""
    import constriction

    if len(data) < 4 or len(data) % 4:
        raise CorruptChunkError(f"Expected a residual payload of whole 32-bit words. Got {len(data)} bytes instead.")
    ids, grid = tile_ids(valid.shape, tile)
    if params.shape != (int(np.prod(grid)), 2) or (params[:, 0] >= len(THETAS)).any() or (params[:, 1] > MAX_SHIFT).any():
        raise CorruptChunkError(f"Expected {int(np.prod(grid))} residual tile parameters in range. Got {params.shape} instead.")
    k, s, by_k, by_s = _orders(params, ids[valid])
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data[4:], np.uint32).copy())
    escape = TABLE_LENGTH - 1
    m = np.zeros(k.size, np.int64)
    try:
        for kk in np.unique(k):
            sel = by_k[k[by_k] == kk]
            h = dec.decode(_model(int(kk)), sel.size).astype(np.int64)
            for i in np.flatnonzero(h == escape):
                h[i] = escape + _decode_escape(dec)
            m[sel] = h
        m <<= s
        for ss in np.unique(s):
            if ss == 0:
                continue
            sel = by_s[s[by_s] == ss]
            low = np.zeros(sel.size, np.int64)
            for shift in range(0, int(ss), _CHUNK_BITS):
                bits = min(_CHUNK_BITS, int(ss) - shift)
                low |= dec.decode(_uniform(bits), sel.size).astype(np.int64) << shift
            m[sel] |= low
        nonzero = np.flatnonzero(m)
        negative = dec.decode(_uniform(1), nonzero.size).astype(bool)
    except (AssertionError, ValueError, RuntimeError, OverflowError) as e:  # constriction's words for invalid data
        raise CorruptChunkError(f"Expected a decodable residual payload. Got {type(e).__name__}: {e} instead.") from None
    m[nonzero[negative]] *= -1
    if _crc(m, len(data) - 4).to_bytes(4, "little") != data[:4] or not dec.maybe_exhausted():
        raise CorruptChunkError("Expected the residual payload to decode to its recorded CRC32. Got other values instead.")
    out = np.zeros(valid.shape, np.int64)
    out[valid] = m
    return out


def _crc(values: np.ndarray, nbytes: int) -> int:
    """Over the values and the payload's length: words appended after the last symbol are caught too."""
    return zlib.crc32(np.ascontiguousarray(values, np.int64).astype("<i8").tobytes() + nbytes.to_bytes(8, "little"))


def _encode_escape(enc, z: int) -> None:
    """``z >= 0`` as its bit length (6 bits) and the bits below the leading one of ``z + 1``."""
    z += 1
    nbits = z.bit_length() - 1
    enc.encode(np.array([nbits], np.int32), _uniform(6))
    rest = z - (1 << nbits)
    for shift in range(0, nbits, _CHUNK_BITS):
        bits = min(_CHUNK_BITS, nbits - shift)
        enc.encode(np.array([(rest >> shift) & ((1 << bits) - 1)], np.int32), _uniform(bits))


def _decode_escape(dec) -> int:
    nbits = int(dec.decode(_uniform(6), 1)[0])
    if nbits > _MAX_ESCAPE_BITS:
        raise CorruptChunkError(f"Expected an escaped residual below 2**{_MAX_ESCAPE_BITS}. Got 2**{nbits} instead.")
    rest = 0
    for shift in range(0, nbits, _CHUNK_BITS):
        bits = min(_CHUNK_BITS, nbits - shift)
        rest |= int(dec.decode(_uniform(bits), 1)[0]) << shift
    return (1 << nbits) + rest - 1


# Coder 2's second family (indices len(THETAS) ..): hyperbolic-secant tables P(n) ~ sech(n / a) = 2 theta**n /
# (1 + theta**(2n)), theta_j x 2**16 below (table means 2**(j/3 - 5) as THETAS'). Flatter near 0 and a lighter head
# than the geometric's, with the same exponential tail: a better fit to the context-modelled residuals. Coder 1 keeps
# THETAS only.
SECH_THETAS = (1024, 1290, 1625, 2048, 2580, 3249, 4092, 5151, 6479, 8137, 10190, 12700, 15701, 19183, 23072, 27238,
               31523, 35770, 39844, 43638, 47083, 50140, 52801, 55081)
TABLES = len(THETAS) + len(SECH_THETAS)
_SECH_FRACTION_BITS = 96
_SECH_TERMS = 4096  # enough: theta <= 55081 / 2**16 leaves terms below 2**-96 well before


@lru_cache(maxsize=None)
def any_table(k: int) -> np.ndarray:
    """Table ``k`` of either family: integer counts summing to 2**16, all positive, from exact integer arithmetic."""
    if k < len(THETAS):
        return table(k)
    n_den, total, one = 1 << 16, 1 << PRECISION_BITS, 1 << _SECH_FRACTION_BITS
    theta = SECH_THETAS[k - len(THETAS)]
    weights = []
    t = one  # theta**n in fixed point, rounded down at each step: the same integers on any machine
    for _ in range(_SECH_TERMS):
        w = (t * one) // (one + (t * t >> _SECH_FRACTION_BITS))
        if w == 0:
            break
        weights.append(w)
        t = t * theta // n_den
    norm = sum(weights)
    head = weights[: TABLE_LENGTH - 1] + [0] * max(0, TABLE_LENGTH - 1 - len(weights))
    counts = [max(1, total * w // norm) for w in head]
    counts.append(max(1, total * sum(weights[TABLE_LENGTH - 1 :]) // norm))  # the tail
    counts[0] += total - sum(counts)
    return np.asarray(counts, np.int64)


@lru_cache(maxsize=None)
def any_model(k: int):
    import constriction

    return constriction.stream.model.Categorical(any_table(k).astype(np.float64), perfect=False)
