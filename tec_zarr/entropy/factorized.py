"""The factorized prior: each latent channel coded with its own integer table per quality.

Payload: constriction range-coder words; channel by channel, the channel's symbols over (B, h, w) in row-major
order, each escaped value's offset right after its escape (:mod:`.rangecoder`). Channels the chunk marks as not
coded (all 0: at the rates users store, most of them) are left out, and decoding them costs nothing.

Thinned chunks (:mod:`tec_zarr.requantize`) start with one byte naming their tables: 0, the level's own; 1, the
first level's tables summed over the run of first-level symbols each thinned symbol stands for (:func:`run_tables`,
exact integers: the probability the first level's model gives the run). The encoder keeps the shorter payload:
summed tables fit data unlike the training data better (measured -10 to -18 % bits on another source), the
level's own tables data like it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import CorruptChunkError
from ..requantize import Thinning, forward
from .base import SEARCH_STEPS, LatentCoder
from .rangecoder import (
    DECODER_ERRORS,
    PayloadBudget,
    decode_escape,
    encode_escape,
    escape_models,
    escaped_values,
    range_decoder,
)
from .tables import EntropyTables


def coded_indices(channels: np.ndarray | None, m: int) -> np.ndarray:
    """The indices of the coded channels: where ``channels`` (bool (M,)) is set; all M where it is None."""
    return np.arange(m) if channels is None else np.flatnonzero(channels)


def encode(symbols: np.ndarray, quality: int, tables: EntropyTables, skip: np.ndarray | None = None,
           channels: np.ndarray | None = None) -> bytes:
    """``symbols``: int32 (B, M, h, w), coded where ``skip`` (B, h, w) is not set, in the ``channels`` (bool (M,);
    None: all) set. Returns the range-coded bytes."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    uniform_bits, uniform_chunk = escape_models()
    per_channel = np.ascontiguousarray(np.moveaxis(symbols, 1, 0).reshape(symbols.shape[1], -1))
    if skip is not None:
        per_channel = per_channel[:, ~skip.reshape(-1)]
    for c in coded_indices(channels, symbols.shape[1]):
        values = per_channel[c].astype(np.int64)
        lo = int(tables.offsets[quality, c])
        escape = int(tables.lengths[quality, c]) - 1
        index = values - lo
        outside = (index < 0) | (index >= escape)
        index[outside] = escape
        encoder.encode(index.astype(np.int32), tables.model(quality, c))
        for v in values[outside]:
            encode_escape(encoder, int(v), lo, escape, uniform_bits, uniform_chunk)
    return encoder.get_compressed().tobytes()


def decode(data: bytes, quality: int, shape: tuple[int, int, int, int], tables: EntropyTables,
           skip: np.ndarray | None = None, channels: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`encode` for latents of ``shape`` (B, M, h, w); 0 where ``skip`` and outside ``channels``."""
    if not 0 <= quality < tables.qualities or shape[1] != tables.channels:
        raise CorruptChunkError(
            f"Expected quality < {tables.qualities} and {tables.channels} latent channels. "
            f"Got quality {quality}, {shape[1]} channels instead."
        )
    decoder = range_decoder(data, "latent payload")
    uniform_bits, uniform_chunk = escape_models()
    b, m, h, w = shape
    keep = None if skip is None else ~skip.reshape(-1)
    n = b * h * w if keep is None else int(keep.sum())
    coded = coded_indices(channels, m)
    PayloadBudget(len(data), "latent payload").spend(n * float(tables.min_bits[quality, coded].sum()))
    # int32 throughout: table indices plus offsets stay far inside it; escaped values are checked before they land.
    # Rows of every channel, 0 for those not coded: written in place as they decode.
    out = np.zeros((m, n), np.int32)
    escapes = tables.lengths[quality].astype(np.int64) - 1
    offsets = tables.offsets[quality].astype(np.int32)
    escaped: list[tuple[int, np.ndarray, list[int]]] = []  # (channel, positions, values): after the loop
    try:
        for c in coded:
            index = out[c]
            index[:] = decoder.decode(tables.model(quality, c), n)
            if n and index.max() >= escapes[c]:  # the escape is a table's last symbol: most channels have none
                positions = np.flatnonzero(index == escapes[c])
                escaped.append((c, positions, [decode_escape(decoder, uniform_bits, uniform_chunk) for _ in positions]))
            index += offsets[c]
    except DECODER_ERRORS as e:
        raise CorruptChunkError(f"Expected a decodable latent payload. Got {type(e).__name__}: {e} instead.") from None
    for c, positions, zs in escaped:
        values = escaped_values(zs, int(tables.offsets[quality, c]), int(escapes[c]))
        if values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max:
            raise CorruptChunkError("Expected latent symbols within int32. Got an overflowing escape instead.")
        out[c, positions] = values
    if not decoder.maybe_exhausted():
        raise CorruptChunkError("Expected the latent payload to end with its last symbol. Got trailing data instead.")
    if keep is None:
        full = out
    else:
        full = np.zeros((m, b * h * w), np.int32)
        full[:, keep] = out
    return np.ascontiguousarray(np.moveaxis(full.reshape(m, b, h, w), 0, 1))


OWN_TABLES, RUN_TABLES = 0, 1


def run_tables(tables: EntropyTables, thinning: Thinning) -> EntropyTables:
    """One quality's tables for symbols thinned through ``thinning``: each thinned symbol's count the sum of the
    first level's counts over its run (every first-level symbol of a table maps into one contiguous range of
    thinned symbols, each hit at least once), the escape's count kept."""
    top = thinning.levels[0]
    lengths, offsets = tables.lengths[top].astype(np.int64), tables.offsets[top].astype(np.int64)
    width = tables.pmf.shape[2] - 1
    symbols = offsets[:, None] + np.arange(width)[None, :]  # (M, width); a channel's first lengths - 1 are its own
    thinned = forward(symbols[None, :, None, :], thinning.chain)[0, :, 0, :].astype(np.int64)
    rows = []
    for c in range(len(lengths)):
        t = thinned[c, : lengths[c] - 1]
        counts = np.bincount(t - t[0], weights=tables.pmf[top, c, : lengths[c] - 1]).astype(np.int64)
        rows.append((int(t[0]), np.append(counts, tables.pmf[top, c, lengths[c] - 1])))
    pmf = np.zeros((1, len(rows), max(len(r) for _, r in rows)), np.int64)
    for c, (_, row) in enumerate(rows):
        pmf[0, c, : len(row)] = row
    return EntropyTables(offsets=np.array([[o for o, _ in rows]], np.int32), pmf=pmf,
                         lengths=np.array([[len(r) for _, r in rows]], np.int32))


class FactorizedCoder(LatentCoder):
    """Symbols coded with the model's per-(quality, channel) tables (``tables.npz``): tec-fp."""

    name = "factorized"
    skips_channels = True
    refinable = True

    def __init__(self, tables: EntropyTables):
        self.tables = tables
        self._run_tables: dict[tuple[int, ...], EntropyTables] = {}  # by levels: at most 2**qualities

    def tables_of(self, thinning: Thinning) -> EntropyTables:
        """:func:`run_tables`, built once per chain of levels (two threads may build equal ones; one is kept)."""
        found = self._run_tables.get(thinning.levels)
        if found is None:
            found = self._run_tables.setdefault(thinning.levels, run_tables(self.tables, thinning))
        return found

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], tables: EntropyTables) -> FactorizedCoder:
        return cls(tables)

    def encode(self, y: np.ndarray, symbols: np.ndarray, quality: int, *, skip: np.ndarray | None = None,
               channels: np.ndarray | None = None) -> bytes:
        return encode(symbols, quality, self.tables, skip, channels)

    def code_lengths(self, y: np.ndarray, symbols: np.ndarray, quality: int, *,
                     skip: np.ndarray | None = None) -> np.ndarray:
        s = np.asarray(symbols, np.int64)
        return np.stack([self.tables.bits(quality, s + d) for d in SEARCH_STEPS])

    def decode(self, payload: bytes, quality: int, shape: tuple[int, int, int, int], *,
               skip: np.ndarray | None = None, thinning: Thinning | None = None,
               channels: np.ndarray | None = None) -> np.ndarray:
        if thinning is None:
            return decode(payload, quality, shape, self.tables, skip, channels)
        if thinning.summed:
            raise CorruptChunkError("Expected a thinned factorized chunk naming its tables in its payload. Got one "
                                    "whose header marks it runs summed instead.")
        if not payload or payload[0] not in (OWN_TABLES, RUN_TABLES):
            raise CorruptChunkError(f"Expected a thinned payload starting with its tables, {OWN_TABLES} or "
                                    f"{RUN_TABLES}. Got {payload[:1]!r} instead.")
        if payload[0] == OWN_TABLES:
            return decode(payload[1:], quality, shape, self.tables, skip, channels)
        return decode(payload[1:], 0, shape, self.tables_of(thinning), skip, channels)

    def recode(self, payload: bytes, y: np.ndarray, symbols: np.ndarray, source: int, thinning: Thinning, *,
               skip: np.ndarray | None = None, channels: np.ndarray | None = None,
               source_summed: bool = False) -> tuple[bytes, bool]:
        """The shorter payload; its first byte names its tables (the header never marks it runs summed)."""
        own = bytes([OWN_TABLES]) + encode(symbols, thinning.levels[-1], self.tables, skip, channels)
        summed = bytes([RUN_TABLES]) + encode(symbols, 0, self.tables_of(thinning), skip, channels)
        return min(own, summed, key=len), False
