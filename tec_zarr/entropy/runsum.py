"""Tables for thinned symbols under the first level's model: each thinned symbol's probability is the sum of the
first level's probabilities over the run of first-level symbols it stands for (:mod:`tec_zarr.requantize`).

A hyperprior-family model gives each first-level symbol ``s`` a scale table and an integer mean; a thinned symbol
``t`` of channel ``c`` stands for the run of ``s`` that the chain of requantizations maps to it. Its count is the
table's counts summed over that run, shifted by the mean: exact integers that still sum to ``2**16`` (every ``s`` of
a table maps into one contiguous range of ``t``, each hit at least once; the escape keeps its count). One table per
distinct (channel, scale table, mean) of a chunk, or of one context step. A chunk holds thousands of them, so the
symbols are not coded table by table but in a few classes of table width, each symbol with its own categorical
model (:func:`write`): a handful of range-coder calls. The deadzone quantizer's runs are not the unit bins the
thinned level's own Gaussian tables assume; ``benchmarks/thin.py`` measures what the summed tables save.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptChunkError
from ..requantize import requantize_each
from .rangecoder import DECODER_ERRORS, PayloadBudget, decode_escape, encode_escape, escape_models, escaped_values
from .tables import TABLE_PRECISION_BITS, IndexedTables

# Bounds on one set of tables, so hostile side information cannot make a decoder build millions of them: a chunk
# the encoder would need more for is coded with the level's own tables instead.
MAX_KEYS = 1 << 17
MAX_ENTRIES = 1 << 23
_MEAN_SPAN = 1 << 26  # means are clipped to +-2**24 (hyperprior.MEAN_LIMIT): room to pack them into a key
# Symbols are coded in classes of their table's width rounded up to a power of two (at least this), one categorical
# model per symbol: a few range-coder calls per chunk instead of one per table.
MIN_WIDTH = 4
# Rows of at most this many entries go to the range coder at a time, and tables are built from at most this many
# first-level entries at a time (bounds on memory; the bytes do not depend on them).
BATCH_ENTRIES = 1 << 21
PIECE_ENTRIES = 1 << 20


class TooManyTables(ValueError):
    """The run tables of a set of symbols would exceed :data:`MAX_KEYS` or :data:`MAX_ENTRIES`."""


class RunTables:
    """Tables numbered 0 .. count - 1: ``offsets`` (each table's first thinned symbol), ``lengths`` (escape
    included) and their counts, one after the other from ``starts``. Built by :func:`run_tables`."""

    def __init__(self, offsets: np.ndarray, lengths: np.ndarray, starts: np.ndarray, counts: np.ndarray):
        self.offsets, self.lengths, self.starts, self.counts = offsets, lengths, starts, counts

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])

    def rows(self, keys: np.ndarray, width: int) -> np.ndarray:
        """float64 (n, width): the counts of tables ``keys``, each padded with 0 to ``width``."""
        lengths = self.lengths[keys][:, None]
        columns = np.arange(width)[None, :]
        at = self.starts[keys][:, None] + np.minimum(columns, lengths - 1)
        return np.where(columns < lengths, self.counts[at], 0).astype(np.float64)

    def fewest_bits(self, keys: np.ndarray) -> float:
        """The fewest bits symbols of tables ``keys`` can take: -log2 of each table's largest probability."""
        largest = np.maximum.reduceat(self.counts, self.starts) if self.count else np.zeros(0, np.int64)
        bits = TABLE_PRECISION_BITS - np.log2(np.maximum(largest, 1).astype(np.float64))
        return float(bits[keys].sum())


def run_tables(scales: IndexedTables, chain, channel: np.ndarray, index: np.ndarray, mean: np.ndarray
               ) -> tuple[RunTables, np.ndarray]:
    """The tables of thinned symbols whose first-level parameters are scale table ``index`` and integer ``mean``,
    of latent ``channel`` (all three broadcast together; ``chain``: the thinning's ratios per channel, first step
    first), and each symbol's table number, shaped like the broadcast. Raises :class:`TooManyTables`."""
    channel, index, mean = (np.asarray(a, np.int64) for a in np.broadcast_arrays(channel, index, mean))
    shape = index.shape
    tables = scales.count
    packed = (channel.ravel() * tables + index.ravel()) * _MEAN_SPAN + (mean.ravel() + _MEAN_SPAN // 2)
    unique, keys = np.unique(packed, return_inverse=True)
    if unique.size > MAX_KEYS:
        raise TooManyTables(f"{unique.size} tables")
    k_mean = unique % _MEAN_SPAN - _MEAN_SPAN // 2
    k_index = (unique // _MEAN_SPAN) % tables
    k_channel = unique // _MEAN_SPAN // tables
    length = np.asarray(scales.lengths, np.int64)[k_index] - 1  # a first-level table's symbols, its escape left out
    total = int(length.sum())
    if total > MAX_ENTRIES:
        raise TooManyTables(f"{total} entries")
    firsts, widths, rows = [], [], []
    ends = np.cumsum(length)
    start = 0
    while start < unique.size:  # in pieces, so the per-entry work arrays stay small
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + PIECE_ENTRIES, "right")))
        piece = slice(start, stop)
        first, width, counts = _summed(scales, chain, k_channel[piece], k_index[piece], k_mean[piece], length[piece])
        firsts.append(first)
        widths.append(width)
        rows.append(counts)
        start = stop
    lengths = np.concatenate(widths) + 1
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return RunTables(np.concatenate(firsts), lengths, starts, np.concatenate(rows)), keys.reshape(shape)


def _summed(scales: IndexedTables, chain, channel, index, mean, length):
    """(first thinned symbol, width, counts with the escape after each table's) of the tables of these keys."""
    starts = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64)
    owner = np.repeat(np.arange(length.size), length)
    position = np.arange(int(length.sum()), dtype=np.int64) - starts[owner]
    t = np.asarray(scales.offsets, np.int64)[index][owner] + mean[owner] + position  # first-level symbols
    for ratio in chain:
        t = requantize_each(t, np.asarray(ratio, np.int64)[channel][owner]).astype(np.int64)
    first, last = t[starts], t[starts + length - 1]
    width = last - first + 1
    out_starts = np.concatenate(([0], np.cumsum(width + 1)[:-1])).astype(np.int64)
    counts = np.bincount(out_starts[owner] + t - first[owner], weights=scales.pmf[index[owner], position],
                         minlength=int((width + 1).sum()))
    counts[out_starts + width] = scales.pmf[index, length]  # the escapes
    return first, width, np.rint(counts).astype(np.int64)


def bit_length(values: np.ndarray) -> np.ndarray:
    """int64 ``int.bit_length`` of each of the non-negative ``values`` (integers only: it decides bytes)."""
    out = np.zeros(values.shape, np.int64)
    rest = values.astype(np.int64)
    while (rest > 0).any():
        out += rest > 0
        rest = rest >> 1
    return out


def width_classes(keys: np.ndarray, tables: RunTables) -> list[tuple[int, np.ndarray]]:
    """(width, the symbols of that class in coding order): symbols of ``keys`` (flat) by the power of two at or above
    their table's length (at least MIN_WIDTH), narrowest first, in their own order within a class."""
    # the power of two at or above L is 2**bit_length(L - 1)
    exponent = np.maximum(bit_length(tables.lengths[keys] - 1), MIN_WIDTH.bit_length() - 1)
    order = np.argsort(exponent.astype(np.uint8), kind="stable")
    ordered = exponent[order]
    bounds = np.flatnonzero(np.diff(ordered)) + 1
    return [(1 << int(ordered[part[0]]), order[part[0] : part[-1] + 1])
            for part in np.split(np.arange(order.size), bounds) if part.size]


def _batches(members: np.ndarray, width: int):
    step = max(1, BATCH_ENTRIES // width)
    for start in range(0, members.size, step):
        yield members[start : start + step]


def write(encoder, values: np.ndarray, keys: np.ndarray, tables: RunTables) -> None:
    """Thinned symbols ``values`` (any shape) with their tables ``keys`` into an open range encoder: class by class
    (:func:`width_classes`), each symbol's offset in its table (the escape, its length - 1, for values outside it)
    under a categorical of its table's counts padded with 0 to the class's width, then the class's escaped values in
    order."""
    import constriction

    family = constriction.stream.model.Categorical(perfect=False)
    uniform_bits, uniform_chunk = escape_models()
    values, keys = values.ravel().astype(np.int64), keys.ravel()
    offsets, escapes = tables.offsets[keys], tables.lengths[keys] - 1
    symbols = values - offsets
    outside = (symbols < 0) | (symbols >= escapes)
    symbols[outside] = escapes[outside]
    for width, members in width_classes(keys, tables):
        for batch in _batches(members, width):
            encoder.encode(symbols[batch].astype(np.int32), family, tables.rows(keys[batch], width))
        for i in members[outside[members]]:
            encode_escape(encoder, int(values[i]), int(offsets[i]), int(escapes[i]), uniform_bits, uniform_chunk)


def read(decoder, keys: np.ndarray, tables: RunTables, budget: PayloadBudget) -> np.ndarray:
    """Inverse of :func:`write` from an open range decoder: int64 values shaped like ``keys``."""
    import constriction

    family = constriction.stream.model.Categorical(perfect=False)
    uniform_bits, uniform_chunk = escape_models()
    flat = keys.ravel()
    budget.spend(tables.fewest_bits(flat))
    offsets, escapes = tables.offsets[flat], tables.lengths[flat] - 1
    symbols = np.empty(flat.size, np.int64)
    for width, members in width_classes(flat, tables):
        try:
            for batch in _batches(members, width):
                symbols[batch] = decoder.decode(family, tables.rows(flat[batch], width))
        except DECODER_ERRORS as e:
            raise CorruptChunkError(f"Expected a decodable y section. Got {type(e).__name__}: {e} instead.") from None
        if (symbols[members] > escapes[members]).any():  # the zero padding: never written
            raise CorruptChunkError("Expected thinned symbols within their tables. Got one past a table's escape "
                                    "instead.")
        for i in members[symbols[members] == escapes[members]]:
            try:
                z = decode_escape(decoder, uniform_bits, uniform_chunk)
            except DECODER_ERRORS as e:
                raise CorruptChunkError(f"Expected a decodable escape. Got {type(e).__name__}: {e} instead.") from None
            symbols[i] = escaped_values([z], int(offsets[i]), int(escapes[i]))[0] - offsets[i]
    return (symbols + offsets).reshape(keys.shape)


def channel_grid(shape) -> np.ndarray:
    """int64 (1, M, 1, 1): each latent's channel, broadcasting against latents of ``shape`` (B, M, h, w)."""
    return np.arange(shape[1], dtype=np.int64)[None, :, None, None]


def tables_or_corrupt(scales: IndexedTables, chain, channel, index, mean) -> tuple[RunTables, np.ndarray]:
    """:func:`run_tables` for a decoder: more tables than an encoder builds are a corrupt chunk's."""
    try:
        return run_tables(scales, chain, channel, index, mean)
    except TooManyTables as e:
        raise CorruptChunkError(f"Expected side information an encoder writes for runs-summed symbols. Got {e} "
                                "instead.") from None


def write_kept(encoder, values: np.ndarray, keys: np.ndarray, tables: RunTables, keep: np.ndarray | None) -> None:
    """:func:`write` of the kept elements (row-major order; None: all)."""
    write(encoder, values if keep is None else values[keep], keys if keep is None else keys[keep], tables)


def read_kept(decoder, keys: np.ndarray, tables: RunTables, budget: PayloadBudget, keep: np.ndarray | None
              ) -> np.ndarray:
    """Inverse of :func:`write_kept`: values where kept, 0 elsewhere."""
    if keep is None:
        return read(decoder, keys, tables, budget)
    out = np.zeros(keys.shape, np.int64)
    out[keep] = read(decoder, keys[keep], tables, budget)
    return out
