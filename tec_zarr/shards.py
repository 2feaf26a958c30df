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
DEFAULT_INDEX_CODECS = ([{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                        [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c", "configuration": {}}])


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
        sharding = [c for c in metadata.get("codecs") or [] if isinstance(c, dict)
                    and c.get("name") == "sharding_indexed"]
        if len(sharding) != 1 or len(metadata["codecs"]) != 1:
            return "shards inside other codecs"
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


def split(data: bytes, layout: ShardLayout) -> list[bytes | None]:
    """A stored shard's inner chunks in index order, None for empty ones."""
    size = layout.index_size
    if len(data) < size:
        raise CorruptChunkError(f"Expected a shard of at least its {size}-byte index. Got {len(data)} bytes instead.")
    index = data[:size] if layout.index_at_start else data[-size:]
    if _crc32c(index[:-4]) != index[-4:]:
        raise CorruptChunkError("Expected a shard index matching its CRC32C. Got a mismatch instead.")
    pairs = np.frombuffer(index[:-4], "<u8").reshape(-1, 2)
    lo, hi = (size, len(data)) if layout.index_at_start else (0, len(data) - size)
    chunks: list[bytes | None] = []
    for offset, nbytes in pairs.tolist():
        if offset == EMPTY and nbytes == EMPTY:
            chunks.append(None)
        elif lo <= offset and offset + nbytes <= hi:
            chunks.append(data[offset : offset + nbytes])
        else:
            raise CorruptChunkError(f"Expected inner chunks within the shard's {lo}..{hi} bytes. Got {nbytes} bytes "
                                    f"at {offset} instead.")
    return chunks


def join(chunks: list[bytes | None], layout: ShardLayout) -> bytes:
    """A shard holding ``chunks`` (index order, None for empty ones), in that order, with its index."""
    if len(chunks) != layout.chunks:
        raise ValueError(f"Expected {layout.chunks} inner chunks. Got {len(chunks)} instead.")
    offset = layout.index_size if layout.index_at_start else 0
    pairs = []
    for chunk in chunks:
        if chunk is None:
            pairs.append((EMPTY, EMPTY))
        else:
            pairs.append((offset, len(chunk)))
            offset += len(chunk)
    body = struct.pack(f"<{2 * len(pairs)}Q", *(v for pair in pairs for v in pair))
    index = body + _crc32c(body)
    payload = b"".join(c for c in chunks if c is not None)
    return index + payload if layout.index_at_start else payload + index


def _crc32c(data: bytes) -> bytes:
    import google_crc32c  # zarr's own dependency for this checksum

    return struct.pack("<I", google_crc32c.value(bytes(data)))
