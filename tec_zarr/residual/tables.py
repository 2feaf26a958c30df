"""What both residual coders share: integer table families, the magnitude/shift/sign symbol coding, escapes.

A residual symbol ``e`` with parameters ``(k, s)`` is coded as ``|e| >> s`` with table ``k`` (an escape beyond the
table's last value, then the excess as a bit length and its bits), the ``s`` low bits of ``|e|`` uniformly, and the
sign of each non-zero ``e`` as one uniform bit. Symbols are grouped by ``k`` (ascending) for the tables, by ``s``
for the low bits, then all signs; within a group in their given order. Tables ``k < 24`` are geometric
(:data:`THETAS`, coder 1 and 2), ``24 <= k < 48`` hyperbolic secant (:data:`SECH_THETAS`, coder 2). All are made by
exact integer arithmetic, so the decoder's probabilities equal the encoder's on any machine.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import CorruptChunkError

# theta_k x 2**16 of the one-sided geometric tables P(n) ~ theta**n; table means 2**(k/3 - 5), k = 0..23.
THETAS = (1986, 2483, 3097, 3855, 4784, 5915, 7282, 8917, 10851, 13107, 15698, 18619, 21845, 25329, 28999, 32768,
          36537, 40207, 43691, 46917, 49838, 52429, 54685, 56619)
TABLE_LENGTH = 97  # values 0..95, then the escape
PRECISION_BITS = 16
MAX_SHIFT = 31
CHUNK_BITS = 16
_MAX_ESCAPE_BITS = 40
ESCAPE = TABLE_LENGTH - 1


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
def uniform(bits: int):
    import constriction

    return constriction.stream.model.Uniform(1 << bits)


def encode_escape(enc, z: int) -> None:
    """``z >= 0`` as its bit length (6 bits) and the bits below the leading one of ``z + 1``."""
    z += 1
    nbits = z.bit_length() - 1
    enc.encode(np.array([nbits], np.int32), uniform(6))
    rest = z - (1 << nbits)
    for shift in range(0, nbits, CHUNK_BITS):
        bits = min(CHUNK_BITS, nbits - shift)
        enc.encode(np.array([(rest >> shift) & ((1 << bits) - 1)], np.int32), uniform(bits))


def decode_escape(dec) -> int:
    nbits = int(dec.decode(uniform(6), 1)[0])
    if nbits > _MAX_ESCAPE_BITS:
        raise CorruptChunkError(f"Expected an escaped residual below 2**{_MAX_ESCAPE_BITS}. Got 2**{nbits} instead.")
    rest = 0
    for shift in range(0, nbits, CHUNK_BITS):
        bits = min(CHUNK_BITS, nbits - shift)
        rest |= int(dec.decode(uniform(bits), 1)[0]) << shift
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


def _by_value(v: np.ndarray):
    """(value, indices with that value in ascending order) for each value present: the coding order's groups."""
    order = np.argsort(v, kind="stable")
    counts = np.bincount(v)
    ends = np.cumsum(counts)
    for value in np.flatnonzero(counts):
        yield int(value), order[ends[value] - counts[value] : ends[value]]


def encode_symbols(enc, e: np.ndarray, ks: np.ndarray) -> None:
    k, s = ks[:, 0].astype(np.intp), ks[:, 1].astype(np.intp)
    m = np.abs(e)
    high = m >> s
    for kk, sel in _by_value(k):
        h = high[sel]
        enc.encode(np.minimum(h, ESCAPE).astype(np.int32), any_model(kk))
        for z in h[h >= ESCAPE] - ESCAPE:
            encode_escape(enc, int(z))
    for ss, sel in _by_value(s):
        if ss == 0:
            continue
        low = m[sel] & ((1 << ss) - 1)
        for shift in range(0, ss, CHUNK_BITS):
            bits = min(CHUNK_BITS, ss - shift)
            enc.encode(((low >> shift) & ((1 << bits) - 1)).astype(np.int32), uniform(bits))
    enc.encode((e[m != 0] < 0).astype(np.int32), uniform(1))


@lru_cache(maxsize=None)
def _min_bits() -> np.ndarray:
    """Per table, the fewest bits one of its symbols costs: -log2 of its largest probability."""
    return np.array([PRECISION_BITS - np.log2(float(any_table(k).max())) for k in range(TABLES)])


def decode_symbols(dec, ks: np.ndarray, budget) -> np.ndarray:
    """Inverse of :func:`encode_symbols`; ``budget`` (a :class:`~tec_zarr.entropy.rangecoder.PayloadBudget`)
    refuses a payload too short for the symbols before any is decoded."""
    k, s = ks[:, 0].astype(np.intp), ks[:, 1].astype(np.intp)
    budget.spend(float(_min_bits()[k].sum() + s.sum()))
    m = np.zeros(k.size, np.int64)
    for kk, sel in _by_value(k):
        h = dec.decode(any_model(kk), sel.size).astype(np.int64)
        for i in np.flatnonzero(h == ESCAPE):
            h[i] = ESCAPE + decode_escape(dec)
        m[sel] = h
    m <<= s
    for ss, sel in _by_value(s):
        if ss == 0:
            continue
        low = np.zeros(sel.size, np.int64)
        for shift in range(0, ss, CHUNK_BITS):
            bits = min(CHUNK_BITS, ss - shift)
            low |= dec.decode(uniform(bits), sel.size).astype(np.int64) << shift
        m[sel] |= low
    nonzero = np.flatnonzero(m)
    negative = dec.decode(uniform(1), nonzero.size).astype(bool)
    m[nonzero[negative]] *= -1
    return m
