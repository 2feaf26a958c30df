"""Range coding shared by the latent coders: escapes for values outside a table, and index-grouped coding.

An escaped value ``v`` (outside a table of symbols ``lo .. lo + escape - 1``) follows its escape symbol as its
zigzag distance ``z`` from the table: the bit length of ``z + 1`` (uniform over 64) and the bits below its leading
one in 16-bit pieces (uniform). Grouped coding codes each value with the table its index names, table by table,
stable order within a table (the hyperprior's and the context model's y sections).
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptChunkError
from .tables import IndexedTables

_ESCAPE_CHUNK_BITS = 16
# Escaped values are int32 symbols at a distance up to 2**33 from the table: their bit length is coded below 64.
_ESCAPE_MAX_BITS = 64
# constriction's words for invalid data
DECODER_ERRORS = (AssertionError, ValueError, RuntimeError, OverflowError)


def escape_models():
    """The two uniform models escapes are coded with: (bit length, 16-bit chunk)."""
    import constriction

    return (constriction.stream.model.Uniform(_ESCAPE_MAX_BITS),
            constriction.stream.model.Uniform(1 << _ESCAPE_CHUNK_BITS))


def encode_escape(encoder, v: int, lo: int, escape: int, uniform_bits, uniform_chunk) -> None:
    """A value ``v`` outside a table of symbols ``lo .. lo + escape - 1``, after its escape symbol."""
    z = (v - lo - escape) * 2 if v >= lo + escape else (lo - v - 1) * 2 + 1
    z += 1  # z >= 1: send its bit length, then the bits below the leading one
    nbits = z.bit_length() - 1
    encoder.encode(np.array([nbits], np.int32), uniform_bits)
    rest = z - (1 << nbits)
    for shift in range(0, nbits, _ESCAPE_CHUNK_BITS):
        part = (rest >> shift) & ((1 << _ESCAPE_CHUNK_BITS) - 1)
        encoder.encode(np.array([part], np.int32), uniform_chunk)


def escaped_values(zs, lo: int, escape: int) -> np.ndarray:
    """Values from the zigzag offsets :func:`decode_escape` returns, for a table of ``lo .. lo + escape - 1``."""
    z = np.asarray(zs, np.int64)
    return np.where(z % 2 == 0, lo + escape + z // 2, lo - 1 - z // 2)


def decode_escape(decoder, uniform_bits, uniform_chunk) -> int:
    """An escaped symbol's zigzag offset ``z >= 0`` (see :func:`encode`)."""
    nbits = int(decoder.decode(uniform_bits, 1)[0])
    rest = 0
    for shift in range(0, nbits, _ESCAPE_CHUNK_BITS):
        rest |= int(decoder.decode(uniform_chunk, 1)[0]) << shift
    if nbits > 33:  # int32 symbols never need more: only corrupt data gets here
        raise CorruptChunkError(f"Expected an escaped latent symbol within int32. Got a {nbits}-bit offset instead.")
    return (1 << nbits) + rest - 1


class PayloadBudget:
    """Refuses a payload that ends before the symbols it must hold.

    A range decoder reading past its data keeps returning symbols, so a few bytes declaring a huge latent would
    decode to gigabytes of zeros. Every symbol costs at least ``-log2`` of its table's largest probability, so the
    decoder checks, before each group of symbols, that the words could hold at least that many bits.
    """

    SLACK_BITS = 96  # the coder's state flushed at the end, and rounding in constriction's fixed-point models
    MARGIN = 0.98  # constriction may round a probability up a little

    def __init__(self, nbytes: int, what: str):
        self.capacity = 8 * nbytes
        self.what = what
        self.needed = 0.0

    def spend(self, bits: float) -> None:
        self.needed += float(bits)
        if self.MARGIN * self.needed - self.SLACK_BITS > self.capacity:
            raise CorruptChunkError(
                f"Expected a {self.what} holding at least {self.MARGIN * self.needed - self.SLACK_BITS:.0f} bits for its "
                f"symbols. Got {self.capacity} bits instead (truncated, or a header declaring more than was coded)."
            )


def range_decoder(data: bytes, what: str):
    """A constriction range decoder over ``data``, which must be whole 32-bit words."""
    import constriction

    if len(data) % 4:
        raise CorruptChunkError(f"Expected a {what} of whole 32-bit words. Got {len(data)} bytes instead.")
    return constriction.stream.queue.RangeDecoder(np.frombuffer(data, np.uint32).copy())


def checked_symbols(symbols: np.ndarray) -> np.ndarray:
    """int64 symbols as int32, refusing escapes that decoded beyond int32 (only corrupt data does)."""
    if symbols.size and (symbols.min() < np.iinfo(np.int32).min or symbols.max() > np.iinfo(np.int32).max):
        raise CorruptChunkError("Expected latent symbols within int32. Got an overflowing escape instead.")
    return symbols.astype(np.int32)


def table_order(flat_index: np.ndarray, count: int) -> np.ndarray:
    """The stable order of the values by table index. A stable sort's permutation is unique, so sorting the
    indices as the narrowest integers holding them (numpy radix-sorts 8- and 16-bit keys, several times faster
    than int64) gives the same order. Indices outside ``0 .. count - 1`` (never from the coders) sort as they are."""
    narrow = np.uint8 if count <= 1 << 8 else np.uint16 if count <= 1 << 16 else None
    if narrow is None or (flat_index.size and (flat_index.min() < 0 or flat_index.max() >= count)):
        return np.argsort(flat_index, kind="stable")
    return np.argsort(flat_index.astype(narrow), kind="stable")


def _present_tables(counts: np.ndarray, tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tables, first symbols, escape symbols) of every table with a count, ascending, int64 arrays; looked up in one
    call (a mixture's tables compute them)."""
    present = np.flatnonzero(counts)
    return (present, np.asarray(tables.offsets[present], np.int64),
            np.asarray(tables.lengths[present], np.int64) - 1)


def write_grouped(encoder, values: np.ndarray, index: np.ndarray, tables: IndexedTables) -> None:
    """Each value with the table its index names, table by table (stable order within a table), into an open
    range encoder (later sections may follow in the same stream)."""
    uniform_bits, uniform_chunk = escape_models()
    flat_index = index.ravel()
    order = table_order(flat_index, tables.count)
    ordered = values.ravel()[order]
    counts = np.bincount(flat_index, minlength=tables.count)
    start = 0
    for t, lo, escape in zip(*(a.tolist() for a in _present_tables(counts, tables))):
        part = ordered[start : start + counts[t]]
        start += counts[t]
        sym = part - lo
        outside = (sym < 0) | (sym >= escape)
        sym[outside] = escape
        encoder.encode(sym.astype(np.int32), tables.model(int(t)))
        for v in part[outside]:
            encode_escape(encoder, int(v), lo, escape, uniform_bits, uniform_chunk)


def read_grouped(decoder, index: np.ndarray, tables: IndexedTables, budget: PayloadBudget) -> np.ndarray:
    """Inverse of :func:`write_grouped` from an open range decoder: int64 values shaped like ``index``.

    A temporal chunk's steps hold thousands of small groups (one per mixture), so the loop does only what must
    happen group by group -- the decode call and the escape check, escapes being rare -- and adds the tables'
    first symbols and restores the positions once, vectorized."""
    uniform_bits, uniform_chunk = escape_models()
    flat_index = index.ravel()
    counts = np.bincount(flat_index, minlength=tables.count)
    present, offsets, escapes = _present_tables(counts, tables)
    budget.spend(float(counts[present] @ tables.min_bits[present]))  # mixtures compute it only for the keys asked
    order = table_order(flat_index, tables.count)
    sizes = counts[present]
    parts = []
    try:
        for t, n, escape in zip(present.tolist(), sizes.tolist(), escapes.tolist()):
            sym = decoder.decode(tables.model(t), n)
            if sym.max() == escape:  # symbols lie in 0..escape: escaped values follow the group in the stream
                sym = sym.astype(np.int64)
                positions = np.flatnonzero(sym == escape)
                zs = [decode_escape(decoder, uniform_bits, uniform_chunk) for _ in positions]
                sym[positions] = escaped_values(zs, 0, escape)  # relative to the table's first symbol, as the rest
            parts.append(sym)
    except DECODER_ERRORS as e:
        raise CorruptChunkError(f"Expected a decodable y section. Got {type(e).__name__}: {e} instead.") from None
    ordered = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
    ordered += np.repeat(offsets, sizes)
    out = np.empty_like(ordered)
    out[order] = ordered
    return out.reshape(index.shape)
