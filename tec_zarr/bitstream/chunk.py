"""The TEC chunk bitstream, format versions 1, 2 and 3: header and sections (their payloads: :mod:`.payload`).

Layout (all integers little-endian)::

    magic        4 bytes  b"TECZ"
    version      u8       1; 2 when a residual section of coder 1 is present (flag bit 2), 3 for a residual section
                          of a later coder, so readers that do not know it refuse it
    flags        u8       bit 0: a nodata value is set; bit 1: a mask section is present; bit 2: residual section
    quality      u8       quality level of the model used
    dtype        u8       1 uint16, 2 int16, 3 float32
    name_len     u8       then the model name, UTF-8
    model_hash   8 bytes  first 8 bytes of the model's sha256
    ndim         u8       then ndim x u32: the full chunk shape; the last three axes are (bands, H, W)
    pad_h, pad_w u16 x 2  rows / columns of edge replication added at the bottom / right
    latent       u16 + u32 x 2: latent channels, latent height, latent width
    nodata       f64      nodata value (meaningful when flag bit 0 is set)
    float_scale  f64      float32 input x float_scale = model units (DN); 1 for integer dtypes
    mask_len     u32      then zlib(packbits(mask)) of the chunk's nodata elements (bit 1 only)
    payload_len  u32      then the entropy-coded latent symbols
    -- residual section (bit 2 only): error-bounded / lossless coding, see tec_zarr.residual.bound --
    max_error    f64      the bound |x - decoded| <= max_error in data units (0: lossless)
    mode         u8       RESIDUAL_MODES: how residual steps map to values
    coder        u8       version 3 only: RESIDUAL_CODERS, the residual's entropy coder (version 2: coder 1)
    tile         u16      coder 1: residual tile size; coder 2: coarsest stride of its hierarchical passes.
                          The base is the integer synthesis at the header's quality
    params_len   u32      then the coder's parameters: coder 1, 2 bytes (table k, shift s) per (image, band,
                          tile), row-major; coder 2, zlib-compressed (tec_zarr.residual.hierarchical)
    residual_len u32      then crc32 of the residuals (4 bytes) + their range-coded words (coder 1:
                          tec_zarr.residual.tiled, coder 2: tec_zarr.residual.hierarchical)
    crc32        u32      zlib.crc32 of every byte before it
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import CorruptChunkError, TruncatedChunkError

# The codec id in every store's config (numcodecs, zarr.codecs) and in .tec metadata: part of the format.
CODEC_ID = "tec_zarr.tec"
MAGIC = b"TECZ"
FORMAT_VERSION = 1
RESIDUAL_V1_FORMAT_VERSION = 2  # residual section of coder 1, no coder byte (written before coder 2 existed)
RESIDUAL_FORMAT_VERSION = 3  # residual section with a coder byte
RESIDUAL_CODERS = (1, 2)
HASH_PREFIX_BYTES = 8
FLAG_NODATA = 1
FLAG_MASK = 2
FLAG_RESIDUAL = 4
# 0: integer dtypes, step 2E+1 in DN; 1: float32, step 2E in data units; 2: float32 exact, through an
# order-preserving integer view of the bits (step 1).
RESIDUAL_MODES = (0, 1, 2)
# Refuse headers describing absurd sizes instead of allocating them.
MAX_ELEMENTS = 2**31

DTYPE_CODES = {np.dtype("uint16"): 1, np.dtype("int16"): 2, np.dtype("float32"): 3}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass(frozen=True)
class ResidualSection:
    max_error: float
    mode: int
    tile: int
    params: bytes = field(repr=False)
    payload: bytes = field(repr=False)
    coder: int = 1


@dataclass(frozen=True)
class ChunkHeader:
    model: str
    model_hash: bytes
    quality: int
    dtype: np.dtype
    shape: tuple[int, ...]
    pad: tuple[int, int]
    latent: tuple[int, int, int]
    nodata: float | None
    float_scale: float
    residual: ResidualSection | None = None

    @property
    def batch(self) -> int:
        return int(np.prod(self.shape[:-3], dtype=np.int64))


def pack(header: ChunkHeader, mask: bytes | None, payload: bytes) -> bytes:
    name = header.model.encode()
    res = header.residual
    flags = (FLAG_NODATA if header.nodata is not None else 0) | (FLAG_MASK if mask is not None else 0)
    flags |= FLAG_RESIDUAL if res is not None else 0
    version = FORMAT_VERSION if res is None else RESIDUAL_V1_FORMAT_VERSION if res.coder == 1 else RESIDUAL_FORMAT_VERSION
    parts = [
        MAGIC,
        struct.pack("<BBBBB", version, flags, header.quality, DTYPE_CODES[np.dtype(header.dtype)], len(name)),
        name,
        header.model_hash[:HASH_PREFIX_BYTES],
        struct.pack(f"<B{len(header.shape)}I", len(header.shape), *header.shape),
        struct.pack("<HHHII", *header.pad, *header.latent),
        struct.pack("<dd", header.nodata if header.nodata is not None else 0.0, header.float_scale),
    ]
    if mask is not None:
        parts += [struct.pack("<I", len(mask)), mask]
    parts += [struct.pack("<I", len(payload)), payload]
    if res is not None:
        coder = b"" if res.coder == 1 else struct.pack("<B", res.coder)
        parts += [struct.pack("<dB", res.max_error, res.mode), coder, struct.pack("<HI", res.tile, len(res.params)),
                  res.params, struct.pack("<I", len(res.payload)), res.payload]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


class _Reader:
    def __init__(self, buf: memoryview):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise TruncatedChunkError(
                f"Expected at least {self.pos + n} bytes in the TEC chunk. Got {len(self.buf)} instead (truncated)."
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def unpack(buf: bytes | bytearray | memoryview) -> tuple[ChunkHeader, bytes | None, bytes]:
    """Parse and verify a chunk. Raises :class:`TruncatedChunkError` or :class:`CorruptChunkError`."""
    view = memoryview(buf).cast("B")
    if len(view) < len(MAGIC) + 4 or bytes(view[:4]) != MAGIC:
        if len(view) >= 4 and bytes(view[:4]) != MAGIC:
            raise CorruptChunkError(f"Expected a TEC chunk starting with {MAGIC!r}. Got {bytes(view[:4])!r} instead.")
        raise TruncatedChunkError(f"Expected a TEC chunk. Got only {len(view)} bytes instead.")
    r = _Reader(view[:-4])
    r.take(4)
    version, flags, quality, dtype_code, name_len = r.unpack("<BBBBB")
    if version not in (FORMAT_VERSION, RESIDUAL_V1_FORMAT_VERSION, RESIDUAL_FORMAT_VERSION) or (
        version != FORMAT_VERSION
    ) != bool(flags & FLAG_RESIDUAL):
        raise CorruptChunkError(
            f"Expected TEC chunk format version {FORMAT_VERSION}, or {RESIDUAL_V1_FORMAT_VERSION} or "
            f"{RESIDUAL_FORMAT_VERSION} with the residual flag set. "
            f"Got version {version}, flags {flags:#04x} instead (written by a newer tec_zarr, or corrupt)."
        )
    try:
        name = bytes(r.take(name_len)).decode()
        model_hash = bytes(r.take(HASH_PREFIX_BYTES))
        (ndim,) = r.unpack("<B")
        shape = r.unpack(f"<{ndim}I")
        pad_h, pad_w, m, lh, lw = r.unpack("<HHHII")
        nodata, float_scale = r.unpack("<dd")
        mask = bytes(r.take(r.unpack("<I")[0])) if flags & FLAG_MASK else None
        payload = bytes(r.take(r.unpack("<I")[0]))
        residual = None
        if flags & FLAG_RESIDUAL:
            max_error, mode = r.unpack("<dB")
            coder = r.unpack("<B")[0] if version == RESIDUAL_FORMAT_VERSION else 1
            tile, params_len = r.unpack("<HI")
            params = bytes(r.take(params_len))
            residual = ResidualSection(max_error, mode, tile, params, bytes(r.take(r.unpack("<I")[0])), coder)
    except UnicodeDecodeError as e:
        _check_crc(view)
        raise CorruptChunkError(f"Expected a UTF-8 model name in the TEC chunk. Got {e} instead.") from None
    _check_crc(view)
    if r.pos != len(r.buf):
        raise CorruptChunkError(f"Expected the TEC chunk to end after {r.pos} bytes. Got {len(r.buf)} instead.")
    if dtype_code not in CODE_DTYPES or ndim < 3 or int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
        raise CorruptChunkError(f"Expected a valid dtype code and shape. Got dtype code {dtype_code}, shape {shape} instead.")
    if residual is not None and (
        residual.mode not in RESIDUAL_MODES or residual.tile == 0 or not (residual.max_error >= 0)
        or residual.coder not in RESIDUAL_CODERS or (version == RESIDUAL_FORMAT_VERSION) == (residual.coder == 1)
        or residual.max_error == float("inf")
    ):
        raise CorruptChunkError(f"Expected a valid residual section. Got {residual} instead.")
    header = ChunkHeader(
        model=name,
        model_hash=model_hash,
        quality=quality,
        dtype=CODE_DTYPES[dtype_code],
        shape=tuple(shape),
        pad=(pad_h, pad_w),
        latent=(m, lh, lw),
        nodata=nodata if flags & FLAG_NODATA else None,
        float_scale=float_scale,
        residual=residual,
    )
    return header, mask, payload


def _check_crc(view: memoryview) -> None:
    if len(view) < 4:
        raise TruncatedChunkError(f"Expected a TEC chunk. Got only {len(view)} bytes instead.")
    (stored,) = struct.unpack("<I", view[-4:])
    actual = zlib.crc32(view[:-4])
    if stored != actual:
        raise CorruptChunkError(
            f"Expected CRC32 {stored:08x} over the TEC chunk. Got {actual:08x} instead (the chunk is corrupt or truncated)."
        )


def pack_mask(mask: np.ndarray) -> bytes:
    return zlib.compress(np.packbits(mask.ravel()).tobytes(), 9)


def unpack_mask(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    try:
        bits = np.frombuffer(zlib.decompress(data), np.uint8)
    except zlib.error as e:
        raise CorruptChunkError(f"Expected a zlib-compressed nodata mask. Got {e} instead.") from None
    if bits.size != (n + 7) // 8:
        raise CorruptChunkError(f"Expected {(n + 7) // 8} mask bytes. Got {bits.size} instead.")
    return np.unpackbits(bits, count=n).astype(bool).reshape(shape)
