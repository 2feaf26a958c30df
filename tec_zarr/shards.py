"""Zarr 3 shards (the ``sharding_indexed`` codec) as stored objects: the inner chunks one shard holds, and a shard
built again from them, so that tools rewriting chunks (thinning) can rewrite a sharded array's inner chunks.

A shard is its inner chunks' bytes and an index of one ``(offset, nbytes)`` pair per inner chunk (C order over the
shard's chunk grid; both 2**64 - 1 for an empty chunk), little-endian uint64, followed by the index's CRC32C, at the
shard's end or start. Only that index encoding (zarr's default: ``bytes`` little-endian, then ``crc32c``) is read.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from .errors import CorruptChunkError

EMPTY = 2**64 - 1
_LITTLE_ENDIAN = {"name": "bytes", "configuration": {"endian": "little"}}
DEFAULT_INDEX_CODECS = ([_LITTLE_ENDIAN, {"name": "crc32c"}], [_LITTLE_ENDIAN, {"name": "crc32c", "configuration": {}}])


SHARDING = "sharding_indexed"


def sharding_codecs(metadata: dict) -> list[dict]:
    """The ``sharding_indexed`` codecs among a format 3 array's top-level codecs."""
    return [c for c in metadata.get("codecs") or [] if isinstance(c, dict) and c.get("name") == SHARDING]


@dataclass(frozen=True)
class ShardLayout:
    """How a sharded array's shards are laid out: inner chunks per shard, and where the index is."""

    chunks: int
    index_at_start: bool

    @property
    def index_size(self) -> int:
        return 16 * self.chunks + 4

    @classmethod
    def of(cls, metadata: dict) -> ShardLayout | str:
        """The layout of a format 3 array's metadata, or why its shards cannot be read here."""
        sharding = sharding_codecs(metadata)
        if len(sharding) != 1 or len(metadata["codecs"]) != 1:
            return "other codecs beside the sharding codec"
        config = sharding[0].get("configuration") or {}
        if config.get("index_codecs", DEFAULT_INDEX_CODECS[0]) not in DEFAULT_INDEX_CODECS:
            return f"a shard index coded with {config.get('index_codecs')} (only zarr's default is read)"
        location = config.get("index_location", "end")
        inner = config.get("chunk_shape")
        outer = ((metadata.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape")
        if location not in ("start", "end") or not inner or not outer or len(inner) != len(outer) or any(
                not isinstance(n, int) or not isinstance(o, int) or n < 1 or o % n for n, o in zip(inner, outer)):
            return f"a shard layout not understood (index_location {location!r}, shards {outer}, chunks {inner})"
        return cls(math.prod(o // n for n, o in zip(inner, outer)), location == "start")


@dataclass(frozen=True)
class Shard:
    """A stored shard's inner chunks in index order (None: empty), and the order they lie in its bytes (zarr
    writes them in Morton order, which a rebuilt shard keeps)."""

    chunks: list[bytes | None]
    stored_order: list[int]


def split(data: bytes, layout: ShardLayout) -> Shard:
    """A stored shard's inner chunks (zero-length entries are empty, as zarr reads them)."""
    size = layout.index_size
    if len(data) < size:
        raise CorruptChunkError(f"Expected a shard of at least its {size}-byte index. Got {len(data)} bytes instead.")
    index = data[:size] if layout.index_at_start else data[-size:]
    if _crc32c(index[:-4]) != index[-4:]:
        raise CorruptChunkError("Expected a shard index matching its CRC32C. Got a mismatch instead.")
    pairs = np.frombuffer(index[:-4], "<u8").reshape(-1, 2)
    lo, hi = (size, len(data)) if layout.index_at_start else (0, len(data) - size)
    chunks: list[bytes | None] = []
    offsets = []
    for offset, nbytes in pairs.tolist():
        if (offset == EMPTY and nbytes == EMPTY) or nbytes == 0:
            chunks.append(None)
        elif lo <= offset and offset + nbytes <= hi:
            chunks.append(data[offset : offset + nbytes])
            offsets.append((offset, len(chunks) - 1))
        else:
            raise CorruptChunkError(f"Expected inner chunks within the shard's {lo}..{hi} bytes. Got {nbytes} bytes "
                                    f"at {offset} instead.")
    return Shard(chunks, [i for _, i in sorted(offsets)])


def join(chunks: list[bytes | None], layout: ShardLayout, stored_order: list[int] | None = None) -> bytes:
    """A shard holding ``chunks`` (index order, None for empty ones) laid out in ``stored_order`` (indices of the
    non-empty ones; default index order), with its index."""
    if len(chunks) != layout.chunks:
        raise ValueError(f"Expected {layout.chunks} inner chunks. Got {len(chunks)} instead.")
    present = [i for i, c in enumerate(chunks) if c is not None]
    order = present if stored_order is None else list(stored_order)
    if sorted(order) != present:
        raise ValueError("Expected a stored order of exactly the non-empty chunks.")
    pairs = [(EMPTY, EMPTY)] * len(chunks)
    offset = layout.index_size if layout.index_at_start else 0
    for i in order:
        pairs[i] = (offset, len(chunks[i]))
        offset += len(chunks[i])
    body = struct.pack(f"<{2 * len(pairs)}Q", *(v for pair in pairs for v in pair))
    index = body + _crc32c(body)
    payload = b"".join(chunks[i] for i in order)
    return index + payload if layout.index_at_start else payload + index


def _crc32c(data: bytes) -> bytes:
    import google_crc32c  # zarr's own dependency for this checksum

    return struct.pack("<I", google_crc32c.value(bytes(data)))
