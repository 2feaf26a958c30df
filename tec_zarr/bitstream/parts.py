"""A chunk coded in parts: one too large to code whole in bounded memory, split into ordinary chunks.

Coding a chunk needs many times its bytes (``benchmarks/memory.py``: tec-ctx about 85x to encode, 60x to decode),
so a chunk of a whole 10980 x 10980 tile, or dask's 128 MiB "auto" chunks, would need tens of GB. The encoder
codes such a chunk as a grid of parts, each an ordinary chunk (:mod:`.chunk`) of a few images and at most a tile
of rows and columns, and frames them here; decoders decode one part at a time into the result. Every part is
coded alone, as if it were a chunk of its own: masks, blocks, residuals and thinning work per part.

Layout (``FORMAT.md``, section 2, version 5): ``TECZ``, u8 version 5, u8 dtype code, u8 ndim, ndim x u32 shape
(the whole chunk's; the last three axes (bands, H, W), leading axes flattened into a batch), u32 x 3 part size
(batch, H, W), u32 count, count x u32 part lengths, u32 CRC32 (below); then the parts in order
(batch groups, rows of parts, parts in a row), each with its own CRC. The framing's CRC32 runs over its bytes and
then each part's own CRC32 (its last 4 bytes), so parts swapped or replaced by others fail it. Readers before
version 5 refuse the chunk as "written by a newer tec_zarr".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ChunkShapeError, CorruptChunkError, TruncatedChunkError
from .chunk import (
    CODE_DTYPES,
    DTYPE_CODES,
    MAGIC,
    MAX_ELEMENTS,
    MAX_NDIM,
    ChunkSections,
    element_count,
    unpack_sections,
)

PARTS_FORMAT_VERSION = 5
_HEAD = struct.Struct("<4sBBB")  # magic, version, dtype code, ndim
_GRID = struct.Struct("<IIII")  # part batch, part height, part width, count
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class PartsLayout:
    """The whole chunk's ``shape`` and ``dtype``, and the size of its parts: ``part`` (batch, H, W); the last
    part along each axis may be smaller."""

    shape: tuple[int, ...]
    dtype: np.dtype
    part: tuple[int, int, int]

    @property
    def images(self) -> tuple[int, int, int, int]:
        """The chunk as (batch, bands, H, W)."""
        return (element_count(self.shape[:-3]), *self.shape[-3:])

    @property
    def count(self) -> int:
        b, _, h, w = self.images
        pb, ph, pw = self.part
        return -(-b // pb) * -(-h // ph) * -(-w // pw)

    def slices(self) -> Iterator[tuple[slice, slice, slice]]:
        """Each part's (batch, rows, columns) of the (batch, bands, H, W) images, in stored order."""
        b, _, h, w = self.images
        pb, ph, pw = self.part
        for b0 in range(0, b, pb):
            for y0 in range(0, h, ph):
                for x0 in range(0, w, pw):
                    yield slice(b0, min(b0 + pb, b)), slice(y0, min(y0 + ph, h)), slice(x0, min(x0 + pw, w))

    def part_shapes(self) -> Iterator[tuple[int, int, int, int]]:
        bands = self.shape[-3]
        for sb, sy, sx in self.slices():
            yield (sb.stop - sb.start, bands, sy.stop - sy.start, sx.stop - sx.start)


def is_parts(buf) -> bool:
    """Whether ``buf`` frames a chunk coded in parts (a plain chunk otherwise, or not a chunk at all)."""
    view = memoryview(buf).cast("B")
    return len(view) >= 5 and bytes(view[:4]) == MAGIC and view[4] == PARTS_FORMAT_VERSION


def pack_parts(layout: PartsLayout, parts: Sequence[bytes]) -> bytes:
    if len(parts) != layout.count:
        raise ValueError(f"Expected {layout.count} parts for {layout}. Got {len(parts)} instead.")
    head = (_HEAD.pack(MAGIC, PARTS_FORMAT_VERSION, DTYPE_CODES[np.dtype(layout.dtype)], len(layout.shape))
            + struct.pack(f"<{len(layout.shape)}I", *layout.shape) + _GRID.pack(*layout.part, len(parts))
            + b"".join(_U32.pack(len(p)) for p in parts))
    return b"".join([head, _U32.pack(_framing_crc(head, parts)), *parts])


def _framing_crc(head, parts) -> int:
    """CRC32 of the framing and then of each part's own CRC32 (its last 4 bytes; a part too short has none)."""
    crc = zlib.crc32(head)
    for p in parts:
        crc = zlib.crc32(bytes(p[-4:]) if len(p) >= 4 else b"", crc)
    return crc


def unpack_parts(buf) -> tuple[PartsLayout, list[memoryview]]:
    """The layout and the parts' bytes, every length and the framing CRC checked, each part a whole chunk (the parts'
    own CRCs are checked when they are parsed). Raises :class:`TruncatedChunkError` or :class:`CorruptChunkError`."""
    view = memoryview(buf).cast("B")
    pos = _HEAD.size
    if len(view) < pos:
        raise TruncatedChunkError(f"Expected a chunk in parts. Got only {len(view)} bytes instead.")
    magic, version, dtype_code, ndim = _HEAD.unpack(view[:pos])
    if magic != MAGIC or version != PARTS_FORMAT_VERSION:
        raise CorruptChunkError(f"Expected a chunk in parts ({MAGIC!r}, version {PARTS_FORMAT_VERSION}). Got "
                                f"{bytes(magic)!r}, version {version} instead.")
    fixed = pos + 4 * ndim + _GRID.size
    if len(view) < fixed:
        raise TruncatedChunkError(f"Expected at least {fixed} bytes in a chunk in parts. Got {len(view)} instead.")
    shape = struct.unpack(f"<{ndim}I", view[pos : pos + 4 * ndim])
    *part, count = _GRID.unpack(view[pos + 4 * ndim : fixed])
    # The count bounds the lengths read next: at most what the buffer can hold, so a header cannot ask for more.
    end = fixed + 4 * count
    if end + 4 > len(view):
        raise TruncatedChunkError(f"Expected {count} part lengths and a CRC32 in a chunk in parts of {len(view)} "
                                  "bytes. Got fewer bytes instead.")
    (stored,) = _U32.unpack(view[end : end + 4])
    lengths = struct.unpack(f"<{count}I", view[fixed:end])
    pos = end + 4
    if sum(lengths) != len(view) - pos or min(lengths, default=0) < 1:
        raise CorruptChunkError(f"Expected parts of at least 1 byte filling the {len(view) - pos} bytes after the "
                                f"framing. Got {count} lengths summing to {sum(lengths)} instead.")
    parts = []
    for n in lengths:
        parts.append(view[pos : pos + n])
        pos += n
    if stored != _framing_crc(view[:end], parts):
        raise CorruptChunkError("Expected the CRC32 of a chunk in parts' framing and its parts' CRCs to match. Got "
                                "another instead (the chunk is corrupt, or its parts moved).")
    if dtype_code not in CODE_DTYPES or not 3 <= ndim <= MAX_NDIM or min(shape) < 1 or min(part) < 1:
        raise CorruptChunkError(f"Expected a dtype code, 3 to {MAX_NDIM} axes and sizes >= 1 in a chunk in parts. Got "
                                f"dtype code {dtype_code}, shape {shape}, parts of {tuple(part)} instead.")
    if element_count(shape) > MAX_ELEMENTS:
        raise CorruptChunkError(f"Expected at most {MAX_ELEMENTS} elements. Got a chunk in parts of shape {shape} "
                                "instead.")
    layout = PartsLayout(tuple(shape), CODE_DTYPES[dtype_code], tuple(part))
    if count != layout.count:
        raise CorruptChunkError(f"Expected {layout.count} parts for shape {shape} in parts of {tuple(part)}. Got "
                                f"{count} instead.")
    for i, part in enumerate(parts):
        if is_parts(part):  # one level only: a part is a whole chunk
            raise CorruptChunkError(f"Expected whole chunks as the parts of a chunk in parts. Got part {i} in parts "
                                    "itself instead.")
    return layout, parts


def unpack_part_sections(buf) -> tuple[PartsLayout, list[memoryview], list[ChunkSections]]:
    """:func:`unpack_parts` with every part also parsed and checked against its place: shape and dtype."""
    layout, parts = unpack_parts(buf)
    return layout, parts, part_sections(layout, parts)


def part_sections(layout: PartsLayout, parts: Sequence) -> list[ChunkSections]:
    """Every part parsed (its CRC checked) and checked against its place in ``layout``: shape and dtype."""
    sections = [unpack_sections(p) for p in parts]
    for i, (s, shape) in enumerate(zip(sections, layout.part_shapes())):
        if tuple(s.header.shape) != shape or s.header.dtype != layout.dtype:
            raise ChunkShapeError(f"Expected part {i} of a chunk in parts to be {shape} {layout.dtype}. Got "
                                  f"{tuple(s.header.shape)} {s.header.dtype} instead.")
    return sections
