"""The factorized prior: each latent channel coded with its own integer table per quality.

Payload: constriction range-coder words; channel by channel, the channel's symbols over (B, h, w) in row-major
order, each escaped value's offset right after its escape (:mod:`.rangecoder`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import CorruptChunkError
from .base import LatentCoder
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


def encode(symbols: np.ndarray, quality: int, tables: EntropyTables, skip: np.ndarray | None = None) -> bytes:
    """``symbols``: int32 (B, M, h, w), coded where ``skip`` (B, h, w) is not set. Returns the range-coded bytes."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    uniform_bits, uniform_chunk = escape_models()
    per_channel = np.ascontiguousarray(np.moveaxis(symbols, 1, 0).reshape(symbols.shape[1], -1))
    if skip is not None:
        per_channel = per_channel[:, ~skip.reshape(-1)]
    for c in range(per_channel.shape[0]):
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
           skip: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`encode` for latents of ``shape`` (B, M, h, w); 0 where ``skip``."""
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
    PayloadBudget(len(data), "latent payload").spend(n * float(tables.min_bits[quality, :m].sum()))
    out = np.empty((m, n), np.int64)
    escaped: list[tuple[int, np.ndarray, list[int]]] = []  # (channel, positions, values): applied after the loop
    try:
        for c in range(m):
            out[c] = index = decoder.decode(tables.model(quality, c), n)
            escape = int(tables.lengths[quality, c]) - 1
            positions = np.flatnonzero(index == escape)
            if positions.size:
                escaped.append((c, positions, [decode_escape(decoder, uniform_bits, uniform_chunk) for _ in positions]))
    except DECODER_ERRORS as e:
        raise CorruptChunkError(f"Expected a decodable latent payload. Got {type(e).__name__}: {e} instead.") from None
    out += tables.offsets[quality, :m, None].astype(np.int64)
    for c, positions, zs in escaped:
        lo, escape = int(tables.offsets[quality, c]), int(tables.lengths[quality, c]) - 1
        out[c, positions] = escaped_values(zs, lo, escape)
    if escaped and (out.min() < np.iinfo(np.int32).min or out.max() > np.iinfo(np.int32).max):
        raise CorruptChunkError("Expected latent symbols within int32. Got an overflowing escape instead.")
    if not decoder.maybe_exhausted():
        raise CorruptChunkError("Expected the latent payload to end with its last symbol. Got trailing data instead.")
    if keep is not None:
        full = np.zeros((m, b * h * w), np.int64)
        full[:, keep] = out
        out = full
    return np.ascontiguousarray(np.moveaxis(out.reshape(m, b, h, w), 0, 1), dtype=np.int32)


class FactorizedCoder(LatentCoder):
    """Symbols coded with the model's per-(quality, channel) tables (``tables.npz``): tec-fp."""

    name = "factorized"

    def __init__(self, tables: EntropyTables):
        self.tables = tables

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], tables: EntropyTables) -> FactorizedCoder:
        return cls(tables)

    def encode(self, y: np.ndarray, symbols: np.ndarray, quality: int, *, skip: np.ndarray | None = None) -> bytes:
        return encode(symbols, quality, self.tables, skip)

    def decode(self, payload: bytes, quality: int, shape: tuple[int, int, int, int], *,
               skip: np.ndarray | None = None) -> np.ndarray:
        return decode(payload, quality, shape, self.tables, skip)
