"""Entropy coding of integer latents with constriction, from integer probability tables only.

Each (quality, channel) has an integer probability table over the symbols ``offset .. offset + n - 2`` plus a
final *escape* entry. A value outside the table is coded as the escape followed by its distance from the table,
in an Elias-gamma style with uniform (exact) models. Encoder and decoder build their constriction models from the
same integers, so the decoded symbols are bit-exact whatever float noise the networks have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import CorruptChunkError

TABLE_PRECISION_BITS = 16
_ESCAPE_CHUNK_BITS = 16
# Escaped values are int32 symbols at a distance up to 2**33 from the table: their bit length is coded below 64.
_ESCAPE_MAX_BITS = 64


@dataclass
class EntropyTables:
    """Per quality and channel: ``offsets`` (Q, M) int32, ``pmf`` (Q, M, L) int64 padded with 0, ``lengths`` (Q, M)."""

    offsets: np.ndarray
    pmf: np.ndarray
    lengths: np.ndarray
    _models: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        q, m = self.offsets.shape
        if self.pmf.shape[:2] != (q, m) or self.lengths.shape != (q, m):
            raise CorruptChunkError(f"Expected entropy tables of shape ({q}, {m}, L). Got {self.pmf.shape} instead.")
        if (self.lengths < 2).any() or (self.lengths > self.pmf.shape[2]).any():
            raise CorruptChunkError("Expected every entropy table to hold at least one symbol and the escape.")
        for qi in range(q):
            for c in range(m):
                if (self.pmf[qi, c, : self.lengths[qi, c]] <= 0).any():
                    raise CorruptChunkError(f"Expected positive table entries. Got a zero in quality {qi}, channel {c}.")

    @property
    def qualities(self) -> int:
        return self.offsets.shape[0]

    @property
    def channels(self) -> int:
        return self.offsets.shape[1]

    def model(self, quality: int, channel: int):
        key = (quality, channel)
        model = self._models.get(key)
        if model is None:
            import constriction

            n = int(self.lengths[quality, channel])
            probabilities = self.pmf[quality, channel, :n].astype(np.float64)
            model = constriction.stream.model.Categorical(probabilities, perfect=False)
            self._models[key] = model
        return model


def quantize_pmf(probabilities: np.ndarray, tail_mass: float) -> np.ndarray:
    """Float probabilities of the in-range symbols (+ the tail mass as the escape) -> integers summing to 2**16.

    Used once, at export. Every entry is at least 1 so any symbol can be coded.
    """
    p = np.append(np.asarray(probabilities, np.float64), max(tail_mass, 0.0))
    total = 1 << TABLE_PRECISION_BITS
    counts = np.maximum(1, np.floor(p / p.sum() * (total - len(p)))).astype(np.int64)
    # Hand the remainder to the largest entries, deterministically.
    deficit = int(total - counts.sum())  # in [0, 2 * len(p)]: hand it to the largest entries, deterministically
    largest = np.argsort(-p, kind="stable")
    np.add.at(counts, largest[np.arange(deficit) % len(p)], 1)
    if counts.sum() != total or (counts < 1).any():
        raise ValueError("Expected the quantized table to sum to 2**16 with positive entries.")
    return counts


def encode(symbols: np.ndarray, quality: int, tables: EntropyTables) -> bytes:
    """``symbols``: int32 (B, M, h, w). Returns the range-coded bytes."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    uniform_bits = constriction.stream.model.Uniform(_ESCAPE_MAX_BITS)
    uniform_chunk = constriction.stream.model.Uniform(1 << _ESCAPE_CHUNK_BITS)
    per_channel = np.ascontiguousarray(np.moveaxis(symbols, 1, 0).reshape(symbols.shape[1], -1))
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


def decode(data: bytes, quality: int, shape: tuple[int, int, int, int], tables: EntropyTables) -> np.ndarray:
    """Inverse of :func:`encode` for latents of ``shape`` (B, M, h, w)."""
    import constriction

    if len(data) % 4:
        raise CorruptChunkError(f"Expected a payload of whole 32-bit words. Got {len(data)} bytes instead.")
    if not 0 <= quality < tables.qualities or shape[1] != tables.channels:
        raise CorruptChunkError(
            f"Expected quality < {tables.qualities} and {tables.channels} latent channels. "
            f"Got quality {quality}, {shape[1]} channels instead."
        )
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, np.uint32).copy())
    uniform_bits = constriction.stream.model.Uniform(_ESCAPE_MAX_BITS)
    uniform_chunk = constriction.stream.model.Uniform(1 << _ESCAPE_CHUNK_BITS)
    b, m, h, w = shape
    out = np.empty((m, b * h * w), np.int64)
    escaped: list[tuple[int, np.ndarray, list[int]]] = []  # (channel, positions, values): applied after the loop
    try:
        for c in range(m):
            out[c] = index = decoder.decode(tables.model(quality, c), b * h * w)
            escape = int(tables.lengths[quality, c]) - 1
            positions = np.flatnonzero(index == escape)
            if positions.size:
                escaped.append((c, positions, [decode_escape(decoder, uniform_bits, uniform_chunk) for _ in positions]))
    except (AssertionError, ValueError, RuntimeError, OverflowError) as e:  # constriction's words for invalid data
        raise CorruptChunkError(f"Expected a decodable latent payload. Got {type(e).__name__}: {e} instead.") from None
    out += tables.offsets[quality, :m, None].astype(np.int64)
    for c, positions, zs in escaped:
        lo, escape = int(tables.offsets[quality, c]), int(tables.lengths[quality, c]) - 1
        out[c, positions] = escaped_values(zs, lo, escape)
    if escaped and (out.min() < np.iinfo(np.int32).min or out.max() > np.iinfo(np.int32).max):
        raise CorruptChunkError("Expected latent symbols within int32. Got an overflowing escape instead.")
    if not decoder.maybe_exhausted():
        raise CorruptChunkError("Expected the latent payload to end with its last symbol. Got trailing data instead.")
    return np.ascontiguousarray(np.moveaxis(out.reshape(m, b, h, w), 0, 1), dtype=np.int32)


def decode_escape(decoder, uniform_bits, uniform_chunk) -> int:
    """An escaped symbol's zigzag offset ``z >= 0`` (see :func:`encode`)."""
    nbits = int(decoder.decode(uniform_bits, 1)[0])
    rest = 0
    for shift in range(0, nbits, _ESCAPE_CHUNK_BITS):
        rest |= int(decoder.decode(uniform_chunk, 1)[0]) << shift
    if nbits > 33:  # int32 symbols never need more: only corrupt data gets here
        raise CorruptChunkError(f"Expected an escaped latent symbol within int32. Got a {nbits}-bit offset instead.")
    return (1 << nbits) + rest - 1
