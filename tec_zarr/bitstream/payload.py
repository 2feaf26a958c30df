"""The framing of a chunk's sections' contents (the range-coded words inside are the coders' own).

* Hyperprior and context payloads: ``u32 z_len | z section | y section`` (:func:`join_z_section`).
* Residual payloads, both coders: ``crc32 u32 | words``, the CRC over the decoded residuals (int64 little-endian)
  and the word count in bytes (u64), so a payload that decodes to other values or carries extra words is refused
  (:func:`seal_residual`, :func:`check_residual_seal`).
* Residual parameters: coder 1, 2 bytes ``(k, s)`` per (image, band, tile) row-major (:func:`tile_parameters`);
  coder 2, one zlib stream (:func:`inflate_parameters`) whose layout :mod:`tec_zarr.residual.hierarchical` reads.

``FORMAT.md`` beside this module lists every byte of a chunk and a ``.tec`` file.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ..errors import CorruptChunkError

_LENGTH = struct.Struct("<I")


def join_z_section(z: bytes, y: bytes) -> bytes:
    return _LENGTH.pack(len(z)) + z + y


def split_z_section(payload: bytes) -> tuple[bytes, bytes]:
    """(z section, y section) of a hyperprior or context payload. Raises CorruptChunkError."""
    if len(payload) < _LENGTH.size:
        raise CorruptChunkError("Expected a hyperprior payload with its z length. Got fewer than 4 bytes instead.")
    (z_len,) = _LENGTH.unpack_from(payload)
    if _LENGTH.size + z_len > len(payload):
        raise CorruptChunkError(f"Expected a z section of {z_len} bytes. Got {len(payload) - _LENGTH.size} instead.")
    return payload[_LENGTH.size : _LENGTH.size + z_len], payload[_LENGTH.size + z_len :]


def _residual_crc(values: np.ndarray, nbytes: int) -> int:
    """Over the values and the words' length: words appended after the last symbol are caught too."""
    return zlib.crc32(np.ascontiguousarray(values, np.int64).astype("<i8").tobytes() + nbytes.to_bytes(8, "little"))


def seal_residual(values: np.ndarray, words: bytes) -> bytes:
    """A residual payload: the CRC of the coded ``values`` and the words that code them."""
    return _residual_crc(values, len(words)).to_bytes(4, "little") + words


def residual_words(payload: bytes) -> np.ndarray:
    """The range-coder words of a residual payload, as uint32. Raises CorruptChunkError."""
    if len(payload) < 4 or len(payload) % 4:
        raise CorruptChunkError(f"Expected a residual payload of whole 32-bit words. Got {len(payload)} bytes instead.")
    return np.frombuffer(payload[4:], np.uint32).copy()


def check_residual_seal(payload: bytes, values: np.ndarray, exhausted: bool) -> None:
    """Refuse decoded residuals whose CRC differs from the payload's, or a decoder that left words unread."""
    if _residual_crc(values, len(payload) - 4).to_bytes(4, "little") != payload[:4] or not exhausted:
        raise CorruptChunkError("Expected the residual payload to decode to its recorded CRC32. Got other values instead.")


def tile_parameters(params: bytes) -> np.ndarray:
    """Coder 1's ``(k, s)`` pairs, (tiles, 2) uint8. Raises CorruptChunkError."""
    raw = np.frombuffer(params, np.uint8)
    if raw.size % 2:
        raise CorruptChunkError(f"Expected 2 bytes per residual tile. Got {raw.size} bytes instead.")
    return raw.reshape(-1, 2)


def deflate_parameters(raw: bytes) -> bytes:
    return zlib.compress(raw, 9)


def inflate_parameters(data: bytes, limit: int) -> bytes:
    """Coder 2's parameters: one zlib stream of at most ``limit`` bytes, inflated no further than that."""
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, limit + 1)
        if d.unconsumed_tail or not d.eof or d.unused_data or len(raw) > limit:
            raise CorruptChunkError("Expected one zlib stream of residual parameters. Got more data instead.")
    except zlib.error as e:
        raise CorruptChunkError(f"Expected zlib-compressed residual parameters. Got {e} instead.") from None
    return raw
