"""The TEC chunk bitstream, format versions 1, 2 and 3: header and sections (their payloads: :mod:`.payload`).

Layout (all integers little-endian)::

    magic        4 bytes  b"TECZ"
    version      u8       1; 2 when a residual section of coder 1 is present (flag bit 2), 3 for a residual section
                          of a later coder, so readers that do not know it refuse it; 4 when latents under
                          all-missing blocks are not coded (SKIP_MARGIN), with or without a residual section
    flags        u8       bit 0: a nodata value is set; bit 1: a mask section is present; bit 2: residual section;
                          bit 3: a NaN mask section is present (added later: chunks without NaN never set it);
                          bit 4: a blocks section is present (added later: older readers refuse such chunks);
                          bit 5: thinned, the list of earlier qualities is present (added later: older readers refuse);
                          bit 6: a coded-channels section is present (added later: older readers refuse);
                          bit 7: an extensions field is present (added later: older readers refuse)
    quality      u8       quality level of the model used
    dtype        u8       1 uint16, 2 int16, 3 float32
    name_len     u8       then the model name, UTF-8
    model_hash   8 bytes  first 8 bytes of the model's sha256
    ndim         u8       then ndim x u32: the full chunk shape; the last three axes are (bands, H, W)
    pad_h, pad_w u16 x 2  rows / columns of edge replication added at the bottom / right
    latent       u16 + u32 x 2: latent channels, latent height, latent width
    nodata       f64      nodata value (meaningful when flag bit 0 is set)
    float_scale  f64      float32 input x float_scale = model units (DN); 1 for integer dtypes
    mask_len     u32      then zlib(packbits(mask)) of the chunk's nodata elements (bit 1 only), or 0x01 and
                          zlib(packbits) of one band's mask that every band shares (pack_mask)
    nan_len      u32      then the same for the chunk's NaN elements (bit 3 only: float32 chunks with NaN)
    blocks       u8 x 3 per band (bit 4 only): block size k, phase_y, phase_x of bands made of k x k blocks of equal
                          values (k = 1: not), see tec_zarr.replication. Lossy: the decoded band is projected onto
                          its blocks; residual: the base is, and the residual is coded on the native grid
    thinned      u8 + u8 x n  (bit 5 only) n >= 1, then the qualities the chunk was at before tec_zarr.thin cut it to
                          ``quality``, the one it was coded at first, strictly decreasing, all above ``quality``: its
                          symbols stand for runs of the first level's symbols and decode to the runs' middles or
                          centroids (tec_zarr.requantize, FORMAT.md). Never with a residual section
    channels     u8 x ceil(M / 8)  (bit 6 only) packbits, most significant bit first: bit c set where latent channel
                          c is coded; the others hold only 0 and are not in the payload (the bits after M are 0)
    extensions   u8 n, then n x (tag u8, length u32, value) in ascending tag order (bit 7 only); a reader refuses a
                          tag it does not know (every tag may change how the chunk decodes). Tag 1, dn_offset (i32):
                          the DN of reflectance 0 (Sentinel-2 from processing baseline 04.00 on: 1000), taken off before
                          the model's normalization and added back to the decoded values (and to a residual's base).
                          Tag 2, saturated (uint16, float32): a mask as the nodata mask's of the elements that hold
                          Sentinel-2's SATURATED DN 65535 (saturated_value), stored exactly and coded as missing data.
                          Tag 3, runs summed (u8 1; thinned chunks of hyperprior-family models only): the payload's z
                          is the first level's, and each thinned symbol is coded with the probability the first
                          level's model gives its run of first-level symbols (tec_zarr.entropy.runsum).
                          Tag 4, lattice residual (u8 1; residual sections with max_error > 0 only; encoders
                          write it up to 25 DN): the residual's
                          base is rounded to the lattice of multiples of the step before the steps are added, so
                          the decoded values lie on that lattice whatever the base, and coding decoded values again
                          (zarr's read-modify-write of a partial chunk) decodes to the same values.
                          Tag 5, saturation kept (u8 1; uint16 and float32 chunks whose nodata is neither the
                          saturated value nor the one below it): after the nodata rule, elements equal to the
                          saturated value move one step below it, then the saturated mask is applied, so a reader
                          masking 65535 masks only what was saturated (written on chunks with a saturated mask or
                          valid values from 20000 DN up, float32 chunks only where every valid value is below it)
    payload_len  u32      then the entropy-coded latent symbols
    -- residual section (bit 2 only): error-bounded / lossless coding, see tec_zarr.residual.bound --
    max_error    f64      the bound |x - decoded| <= max_error in data units (0: lossless)
    mode         u8       RESIDUAL_MODES: how residual steps map to values
    coder        u8       versions 3 and 4: RESIDUAL_CODERS, the residual's entropy coder (version 2: coder 1)
    tile         u16      coder 1: residual tile size; coder 2: coarsest stride of its hierarchical passes.
                          The base is the integer synthesis at the header's quality
    params_len   u32      then the coder's parameters: coder 1, 2 bytes (table k, shift s) per (image, band,
                          tile), row-major; coder 2, zlib-compressed (tec_zarr.residual.hierarchical)
    residual_len u32      then crc32 of the residuals (4 bytes) + their range-coded words (coder 1:
                          tec_zarr.residual.tiled, coder 2: tec_zarr.residual.hierarchical)
    crc32        u32      zlib.crc32 of every byte before it
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import CorruptChunkError, TruncatedChunkError

# The codec id in every store's config (numcodecs, zarr.codecs) and in .tec metadata: part of the format.
CODEC_ID = "tec_zarr.tec"
# The codec config's keys (the decode contract); max_error, psnr and dn_offset came later, so stored configs may lack
# them. refine (the encoder's symbol search) changes no decoding: it is there for later writes to the same array.
REQUIRED_CONFIG_KEYS = ("model", "model_sha256", "quality", "nodata", "float_scale")
OPTIONAL_CONFIG_KEYS = ("max_error", "psnr", "dn_offset", "refine")


def check_config_keys(config, *, complete: bool) -> None:
    """A codec config object with our id (if it names one) and no unknown keys; ``complete``: every required key."""
    if not isinstance(config, dict):
        raise ValueError(f"Expected a codec config object. Got {type(config).__name__} instead.")
    codec_id = config.get("id", CODEC_ID)
    if codec_id != CODEC_ID:
        raise ValueError(f"Expected the codec id {CODEC_ID!r}. Got {codec_id!r} instead.")
    unknown = sorted(str(k) for k in set(config) - {"id", *REQUIRED_CONFIG_KEYS, *OPTIONAL_CONFIG_KEYS})
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config] if complete else []
    if unknown or missing:
        raise ValueError(f"Expected the codec config keys {', '.join(REQUIRED_CONFIG_KEYS + OPTIONAL_CONFIG_KEYS)}. "
                         f"Got unknown {unknown} and missing {missing} instead (written by a newer tec-zarr: pip install -U "
                         "tec-zarr; or damaged).")
MAGIC = b"TECZ"
FORMAT_VERSION = 1
RESIDUAL_V1_FORMAT_VERSION = 2  # residual section of coder 1, no coder byte (written before coder 2 existed)
RESIDUAL_FORMAT_VERSION = 3  # residual section with a coder byte
SKIP_FORMAT_VERSION = 4  # latents under missing data not coded (older readers refuse the chunk instead of misreading it)
RESIDUAL_CODERS = (1, 2)
HASH_PREFIX_BYTES = 8
FLAG_NODATA = 1
FLAG_MASK = 2
FLAG_RESIDUAL = 4
FLAG_NAN = 8
FLAG_BLOCKS = 16
FLAG_THINNED = 32
FLAG_CHANNELS = 64
FLAG_EXTENSIONS = 128  # the last flag bit: later fields go into the extensions field as new tags
KNOWN_FLAGS = (FLAG_NODATA | FLAG_MASK | FLAG_RESIDUAL | FLAG_NAN | FLAG_BLOCKS | FLAG_THINNED | FLAG_CHANNELS
               | FLAG_EXTENSIONS)
# Extension tags (flag bit 7).
EXTENSION_DN_OFFSET = 1  # value: i32
EXTENSION_SATURATED = 2  # value: a packed mask (pack_mask)
EXTENSION_RUNS_SUMMED = 3  # value: u8 1
EXTENSION_LATTICE = 4  # value: u8 1
EXTENSION_SATURATION_KEPT = 5  # value: u8 1
EXTENSION_DN_GRID = 6  # value: u8 1; marks residual mode 3 (older readers refuse the tag, not misread the mode)
EXTENSION_TAGS = (EXTENSION_DN_OFFSET, EXTENSION_SATURATED, EXTENSION_RUNS_SUMMED, EXTENSION_LATTICE,
                  EXTENSION_SATURATION_KEPT, EXTENSION_DN_GRID)
# Residual mode of float32 chunks whose valid values are all float32(DN / float_scale): exact, coded as DN steps.
RESIDUAL_MODE_DN_GRID = 3
# Sentinel-2's SATURATED special value in DN (NODATA is 0): elements holding it are stored exactly, as a mask.
SATURATED_VALUE = 65535
# The DN offsets a chunk may declare: whatever shifts 16-bit DN into the models' range.
DN_OFFSET_RANGE = (-32768, 65535)
# 0: integer dtypes, step 2E+1 in DN; 1: float32, step 2E in data units; 2: float32 exact, through an
# order-preserving integer view of the bits (step 1).
RESIDUAL_MODES = (0, 1, 2)
# Refuse headers describing absurd sizes instead of allocating them.
MAX_ELEMENTS = 2**31
MAX_NDIM = 64  # numpy's limit on axes: a header declaring more could not be read back as an array

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
    lattice: bool = False  # extension tag 4: decoded values on the lattice of multiples of the step


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
    # Version 4: latents whose 4 x 4 block and its neighbours hold only missing elements (nodata or NaN in every
    # band, or edge padding) are not coded and read as 0; the decoder finds them from the masks.
    skips_missing: bool = False
    # Per band (size, phase_y, phase_x): bands made of size x size blocks of equal values (size 1: not); None
    # where no band is (tec_zarr.replication).
    blocks: tuple[tuple[int, int, int], ...] | None = None
    # A thinned chunk's earlier qualities, the one it was coded at first (tec_zarr.requantize); None: coded
    # at ``quality``.
    thinned_from: tuple[int, ...] | None = None
    # The latent channels coded in the payload, np.packbits of a bool (M,); the others are all 0 and cost no
    # decoding time. None: every channel is coded.
    channels: bytes | None = None
    # The DN of reflectance 0 (data DN = reflectance x 10000 + dn_offset): taken off before the normalization, added
    # back after decoding. 0 (no extensions field) in every chunk written before it existed.
    dn_offset: int = 0
    # The packed mask (pack_mask) of the elements holding saturated_value(dtype, float_scale); None where none does.
    saturated: bytes | None = field(default=None, repr=False)
    # Thinned chunks only: the payload codes the thinned symbols under the first level's model, summed over each
    # symbol's run (z at the first level); False: under the chunk's own level's model.
    runs_summed: bool = False
    # Elements outside the saturated mask never decode to the saturated value (extension tag 5; chunks written
    # before it may, and decode as ever).
    saturation_kept: bool = False

    @property
    def batch(self) -> int:
        return element_count(self.shape[:-3])

    @property
    def coded_channels(self) -> np.ndarray | None:
        """bool (M,): the channels the payload codes; None: all."""
        if self.channels is None:
            return None
        return np.unpackbits(np.frombuffer(self.channels, np.uint8), count=self.latent[0]).astype(bool)


def channel_section(coded: np.ndarray) -> bytes:
    """The header's channels field for a bool (M,) of coded channels."""
    return np.packbits(np.asarray(coded, bool)).tobytes()


@dataclass(frozen=True)
class ChunkSections:
    """A parsed chunk: its header, packed nodata and NaN masks (None: absent) and latent payload."""

    header: ChunkHeader
    mask: bytes | None = field(repr=False)
    nan_mask: bytes | None = field(repr=False)
    payload: bytes = field(repr=False)


def pack(header: ChunkHeader, mask: bytes | None, payload: bytes, nan_mask: bytes | None = None) -> bytes:
    name = header.model.encode()
    res = header.residual
    flags = (FLAG_NODATA if header.nodata is not None else 0) | (FLAG_MASK if mask is not None else 0)
    flags |= (FLAG_RESIDUAL if res is not None else 0) | (FLAG_NAN if nan_mask is not None else 0)
    flags |= FLAG_BLOCKS if header.blocks is not None else 0
    flags |= FLAG_THINNED if header.thinned_from is not None else 0
    flags |= FLAG_CHANNELS if header.channels is not None else 0
    extensions = _pack_extensions(header)
    flags |= FLAG_EXTENSIONS if extensions else 0
    if header.skips_missing:
        version = SKIP_FORMAT_VERSION
    else:
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
    if nan_mask is not None:
        parts += [struct.pack("<I", len(nan_mask)), nan_mask]
    if header.blocks is not None:
        if len(header.blocks) != header.shape[-3] or not all(0 <= int(v) <= 255 for b in header.blocks for v in b):
            raise ValueError(f"Expected one (size, phase_y, phase_x) of bytes per band. Got {header.blocks} instead.")
        _check_blocks(header.blocks)
        parts.append(bytes(int(v) for block in header.blocks for v in block))
    if header.thinned_from is not None:
        _check_thinned(header.thinned_from, header.quality, res)
        parts.append(struct.pack(f"<B{len(header.thinned_from)}B", len(header.thinned_from), *header.thinned_from))
    if header.channels is not None:  # as given (readers check it against the latent channels)
        parts.append(bytes(header.channels))
    if extensions:
        parts.append(extensions)
    parts += [struct.pack("<I", len(payload)), payload]
    if res is not None:
        coder = b"" if version == RESIDUAL_V1_FORMAT_VERSION else struct.pack("<B", res.coder)
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
    """Parse and verify a chunk: (header, nodata mask, payload). Raises :class:`TruncatedChunkError` or
    :class:`CorruptChunkError`."""
    sections = unpack_sections(buf)
    return sections.header, sections.mask, sections.payload


def unpack_sections(buf: bytes | bytearray | memoryview) -> ChunkSections:
    """Parse and verify a chunk. Raises :class:`TruncatedChunkError` or :class:`CorruptChunkError`."""
    view = memoryview(buf).cast("B")
    if len(view) < len(MAGIC) + 4 or bytes(view[:4]) != MAGIC:
        if len(view) >= 4 and bytes(view[:4]) != MAGIC:
            raise CorruptChunkError(f"Expected a TEC chunk starting with {MAGIC!r}. Got {bytes(view[:4])!r} instead.")
        raise TruncatedChunkError(f"Expected a TEC chunk. Got only {len(view)} bytes instead.")
    r = _Reader(view[:-4])
    r.take(4)
    version, flags, quality, dtype_code, name_len = r.unpack("<BBBBB")
    if version not in (FORMAT_VERSION, RESIDUAL_V1_FORMAT_VERSION, RESIDUAL_FORMAT_VERSION, SKIP_FORMAT_VERSION) or (
        version != SKIP_FORMAT_VERSION and (version != FORMAT_VERSION) != bool(flags & FLAG_RESIDUAL)
    ):
        raise CorruptChunkError(
            f"Expected TEC chunk format version {FORMAT_VERSION}, {RESIDUAL_V1_FORMAT_VERSION} or "
            f"{RESIDUAL_FORMAT_VERSION} with the residual flag set, or {SKIP_FORMAT_VERSION}. "
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
        nan_mask = bytes(r.take(r.unpack("<I")[0])) if flags & FLAG_NAN else None
        blocks = None
        if flags & FLAG_BLOCKS and ndim >= 3:  # (fewer axes: refused by the shape check below)
            raw = bytes(r.take(3 * shape[-3]))
            blocks = tuple(tuple(raw[i : i + 3]) for i in range(0, len(raw), 3))
        thinned_from = tuple(r.take(r.unpack("<B")[0])) if flags & FLAG_THINNED else None
        channels = bytes(r.take(-(-m // 8))) if flags & FLAG_CHANNELS else None
        extensions = _read_extensions(r) if flags & FLAG_EXTENSIONS else None
        payload = bytes(r.take(r.unpack("<I")[0]))
        residual = None
        if flags & FLAG_RESIDUAL:
            max_error, mode = r.unpack("<dB")
            coder = r.unpack("<B")[0] if version in (RESIDUAL_FORMAT_VERSION, SKIP_FORMAT_VERSION) else 1
            tile, params_len = r.unpack("<HI")
            params = bytes(r.take(params_len))
            residual = ResidualSection(max_error, mode, tile, params, bytes(r.take(r.unpack("<I")[0])), coder)
    except UnicodeDecodeError as e:
        _check_crc(view)
        raise CorruptChunkError(f"Expected a UTF-8 model name in the TEC chunk. Got {e} instead.") from None
    except TruncatedChunkError:
        if _crc_matches(view):  # the bytes are as written, not cut short: a field declares more than the chunk holds
            raise CorruptChunkError("Expected the TEC chunk's fields within its bytes. Got a field reaching past its "
                                    "end instead, under a valid CRC (written that way).") from None
        raise
    _check_crc(view)
    if r.pos != len(r.buf):
        raise CorruptChunkError(f"Expected the TEC chunk to end after {r.pos} bytes. Got {len(r.buf)} instead.")
    extensions = _check_extensions(extensions)
    if _flag(extensions.get(EXTENSION_LATTICE), "lattice", residual is not None and residual.max_error > 0,
             "a chunk with a residual bound above 0"):
        residual = replace(residual, lattice=True)
    grid = residual is not None and residual.mode == RESIDUAL_MODE_DN_GRID
    if _flag(extensions.get(EXTENSION_DN_GRID), "DN grid", grid, "a chunk of residual mode 3") != grid:
        raise CorruptChunkError("Expected residual mode 3 with the DN grid extension (tag 6). Got it without instead.")
    _check_header(dtype_code, shape, (m, lh, lw), flags, nodata, float_scale, residual, version)
    _check_blocks(blocks)
    if thinned_from is not None:
        _check_thinned(thinned_from, quality, residual)
    if channels is not None:
        _check_channels(channels, m)
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
        skips_missing=version == SKIP_FORMAT_VERSION,
        blocks=blocks,
        thinned_from=thinned_from,
        channels=channels,
        dn_offset=_dn_offset(extensions.get(EXTENSION_DN_OFFSET)),
        saturated=extensions.get(EXTENSION_SATURATED),
        saturation_kept=_flag(extensions.get(EXTENSION_SATURATION_KEPT), "saturation-kept",
                              saturated_value(CODE_DTYPES[dtype_code], float_scale) is not None,
                              "a uint16 or float32 chunk"),
        runs_summed=_flag(extensions.get(EXTENSION_RUNS_SUMMED), "runs-summed", thinned_from is not None,
                          "a thinned chunk"),
    )
    if header.saturation_kept and header.nodata is not None and header.nodata in (
            float(saturated_value(header.dtype, header.float_scale)), float(below_saturated(header.dtype, header.float_scale))):
        raise CorruptChunkError(f"Expected no saturation-kept extension with nodata {header.nodata}: the move would "
                                "change nodata elements or make valid ones nodata.")
    if header.saturated is not None and saturated_value(header.dtype, header.float_scale) is None:
        raise CorruptChunkError(f"Expected a saturated mask in uint16 and float32 chunks only. Got one in a "
                                f"{header.dtype} chunk instead.")
    if header.skips_missing and mask is None and nan_mask is None and header.saturated is None:
        raise CorruptChunkError("Expected a nodata or NaN mask in a chunk that skips missing latents. Got none instead.")
    return ChunkSections(header, mask, nan_mask, payload)


# The largest residual bound per mode: integer steps beyond 2**17 DN span any 16-bit range; a float step of 2E must
# stay a finite float32 (both are what encoders write: see tec_zarr.residual.bound.parse_bound).
MAX_INTEGER_BOUND = 1 << 17
MAX_FLOAT_BOUND = float(np.finfo(np.float32).max) / 4
# float32 x float_scale = DN: beyond these, 10000 / float_scale or its float32 reciprocal leaves float32's normal range.
FLOAT_SCALE_RANGE = (1e-20, 1e20)


def element_count(shape) -> int:
    """Elements of a shape, in Python integers (a numpy product can wrap to anything)."""
    count = 1
    for n in shape:
        count *= int(n)
    return count


def nodata_allowed(value, dtype) -> str | None:
    """None where ``value`` can be a declared NoData of ``dtype`` data (a GeoTIFF's, a store's); else what can, for
    the caller's message: an integer in the dtype's range, or for floats a number in its finite range or NaN."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if float(value).is_integer() and info.min <= value <= info.max:
            return None
        return f"an integer in {info.min}..{info.max}"
    largest = float(np.finfo(dtype).max)
    if value != value or abs(value) <= largest:
        return None
    return f"a number within +-{largest:.4g} or nan"


def _check_header(dtype_code, shape, latent, flags, nodata, float_scale, residual, version) -> None:
    """Every field a decoder sizes or scales anything by, checked before anything is allocated."""
    if dtype_code not in CODE_DTYPES:
        raise CorruptChunkError(f"Expected a dtype code in {sorted(CODE_DTYPES)}. Got {dtype_code} instead.")
    if not 3 <= len(shape) <= MAX_NDIM or min(shape) < 1 or element_count(shape) > MAX_ELEMENTS:
        raise CorruptChunkError(f"Expected a shape (..., bands, H, W) of 3 to {MAX_NDIM} positive sizes, at most "
                                f"{MAX_ELEMENTS} elements. Got {tuple(shape)} instead.")
    if min(latent) < 1 or element_count(shape[:-3]) * element_count(latent) > MAX_ELEMENTS:
        raise CorruptChunkError(f"Expected positive latent sizes. Got {tuple(latent)} instead.")
    if not FLOAT_SCALE_RANGE[0] <= float_scale <= FLOAT_SCALE_RANGE[1]:  # NaN fails too
        raise CorruptChunkError(f"Expected a float scale in {FLOAT_SCALE_RANGE}. Got {float_scale} instead.")
    if flags & FLAG_NODATA and (not math.isfinite(nodata) or nodata_allowed(nodata, CODE_DTYPES[dtype_code])):
        raise CorruptChunkError(f"Expected a finite nodata value the chunk's dtype holds (as the encoder checks). Got "
                                f"{nodata} instead.")
    if flags & ~KNOWN_FLAGS:
        raise CorruptChunkError(f"Expected flag bits 0 to 7. Got flags {flags:#04x} instead (written by a newer "
                                "tec_zarr).")
    if flags & FLAG_NAN and CODE_DTYPES[dtype_code].kind != "f":
        raise CorruptChunkError("Expected a NaN mask in float32 chunks only. Got one in an integer chunk instead.")
    if residual is None:
        return
    integer = CODE_DTYPES[dtype_code].kind in "iu"
    e = residual.max_error
    bound_ok = (
        (residual.mode == 0 and integer and 0 <= e <= MAX_INTEGER_BOUND and float(e).is_integer())
        or (residual.mode == 1 and not integer and 0 < e <= MAX_FLOAT_BOUND)
        or (residual.mode in (2, RESIDUAL_MODE_DN_GRID) and not integer and e == 0)
    )
    if (
        not bound_ok or residual.tile == 0 or residual.coder not in RESIDUAL_CODERS
        or (version == RESIDUAL_FORMAT_VERSION and residual.coder == 1)
        or (version == RESIDUAL_V1_FORMAT_VERSION and residual.coder != 1)
    ):
        raise CorruptChunkError(f"Expected a valid residual section. Got {residual} instead.")


def saturated_value(dtype, float_scale: float):
    """Sentinel-2's SATURATED DN in a chunk's units: 65535 in uint16, float32(65535 / float_scale) in float32 (DN
    loaded as float, ``float_scale`` 1, hold 65535.0); None for int16, whose range does not reach it."""
    dtype = np.dtype(dtype)
    if dtype == np.uint16:
        return np.uint16(SATURATED_VALUE)
    if dtype == np.float32:
        return np.float32(SATURATED_VALUE / float_scale)
    return None


def below_saturated(dtype, float_scale: float):
    """Where a chunk with saturation kept (extension tag 5) moves a decoded value equal to the saturated value: one
    step below it (uint16 65534, float32 the next float down)."""
    value = saturated_value(dtype, float_scale)
    if value is None:
        return None
    return value - 1 if np.dtype(dtype).kind == "u" else np.nextafter(value, -np.inf, dtype=value.dtype)


def _pack_extensions(header: ChunkHeader) -> bytes:
    """The extensions field's bytes (empty where no extension is set)."""
    values = {}
    if header.dn_offset != 0:
        if not DN_OFFSET_RANGE[0] <= header.dn_offset <= DN_OFFSET_RANGE[1]:
            raise ValueError(f"Expected a dn_offset in {DN_OFFSET_RANGE}. Got {header.dn_offset} instead.")
        values[EXTENSION_DN_OFFSET] = struct.pack("<i", int(header.dn_offset))
    if header.saturated is not None:
        values[EXTENSION_SATURATED] = bytes(header.saturated)
    if header.saturation_kept:  # as given: readers check it against the dtype and nodata
        values[EXTENSION_SATURATION_KEPT] = b"\x01"
    if header.runs_summed:
        if header.thinned_from is None:
            raise ValueError("Expected runs summed in thinned chunks only. Got a chunk coded at its own quality.")
        values[EXTENSION_RUNS_SUMMED] = b"\x01"
    if header.residual is not None and header.residual.lattice:  # as given: readers check it against the bound
        values[EXTENSION_LATTICE] = b"\x01"
    if header.residual is not None and header.residual.mode == RESIDUAL_MODE_DN_GRID:
        values[EXTENSION_DN_GRID] = b"\x01"
    if not values:
        return b""
    return bytes([len(values)]) + b"".join(struct.pack("<BI", tag, len(v)) + v for tag, v in sorted(values.items()))


def _read_extensions(r: _Reader) -> list[tuple[int, bytes]]:
    """The extensions field's (tag, value) pairs as stored (checked by _check_extensions once the CRC is)."""
    (count,) = r.unpack("<B")
    pairs = []
    for _ in range(count):
        tag, length = r.unpack("<BI")
        pairs.append((tag, bytes(r.take(length))))
    return pairs


def _check_extensions(pairs: list[tuple[int, bytes]] | None) -> dict[int, bytes]:
    """Tag -> value of the extensions field: at least one, each tag known, once, in ascending order."""
    if pairs is None:
        return {}
    tags = [tag for tag, _ in pairs]
    if not tags:
        raise CorruptChunkError("Expected at least one extension where flag bit 7 is set. Got none instead.")
    unknown = [tag for tag in tags if tag not in EXTENSION_TAGS]
    if unknown:
        raise CorruptChunkError(f"Expected extension tags {list(EXTENSION_TAGS)}. Got tag {unknown[0]} instead "
                                "(written by a newer tec_zarr).")
    if tags != sorted(set(tags)):
        raise CorruptChunkError(f"Expected extension tags once each in ascending order. Got {tags} instead.")
    return dict(pairs)


def _dn_offset(value: bytes | None) -> int:
    if value is None:
        return 0
    offset = struct.unpack("<i", value)[0] if len(value) == 4 else 0
    if offset == 0 or not DN_OFFSET_RANGE[0] <= offset <= DN_OFFSET_RANGE[1]:
        raise CorruptChunkError(f"Expected a nonzero 4-byte dn_offset in {DN_OFFSET_RANGE}. Got {value.hex()} instead.")
    return offset


def _flag(value: bytes | None, name: str, allowed: bool, where: str) -> bool:
    """A one-byte flag extension (the byte 01), which only chunks ``where`` names (``allowed``) may carry."""
    if value is None:
        return False
    if value != b"\x01" or not allowed:
        raise CorruptChunkError(f"Expected the {name} extension as the byte 01 of {where}. Got "
                                f"{value.hex() or 'nothing'}{'' if allowed else ' in another chunk'} instead.")
    return True


def _check_blocks(blocks) -> None:
    if blocks is None:
        return
    if not all(size >= 1 and py < size and px < size for size, py, px in blocks) or all(b[0] == 1 for b in blocks):
        raise CorruptChunkError(f"Expected per band a block size >= 1 and phases below it, some size above 1. "
                                f"Got {blocks} instead.")


def _check_channels(channels: bytes, m: int) -> None:
    if len(channels) != -(-m // 8) or np.unpackbits(np.frombuffer(channels, np.uint8))[m:].any():
        raise CorruptChunkError(f"Expected a coded-channels field of {-(-m // 8)} bytes for {m} latent channels, "
                                f"the bits after them 0. Got {channels.hex()} instead.")


def _check_thinned(levels: tuple[int, ...], quality: int, residual) -> None:
    steps = (*levels, quality)
    if not levels or any(a <= b for a, b in zip(steps, steps[1:])) or max(steps) > 255 or residual is not None:
        raise CorruptChunkError(f"Expected a thinned chunk's earlier qualities strictly decreasing above its quality "
                                f"{quality}, and no residual section. Got {levels}"
                                f"{' and a residual' if residual else ''} instead.")


def _crc_matches(view: memoryview) -> bool:
    return len(view) >= 4 and struct.unpack("<I", view[-4:])[0] == zlib.crc32(view[:-4])


def _check_crc(view: memoryview) -> None:
    if len(view) < 4:
        raise TruncatedChunkError(f"Expected a TEC chunk. Got only {len(view)} bytes instead.")
    (stored,) = struct.unpack("<I", view[-4:])
    actual = zlib.crc32(view[:-4])
    if stored != actual:
        raise CorruptChunkError(
            f"Expected CRC32 {stored:08x} over the TEC chunk. Got {actual:08x} instead (the chunk is corrupt or truncated)."
        )


# A mask section is a zlib stream (its first byte's low nibble is 8, deflate) over every element, or this byte and a
# zlib stream over one band's elements that every band shares: nodata padding and swath edges miss all bands alike,
# and deflate cannot take a 12-band mask below about 1/400 of its bits (a 256 x 256 edge chunk: 247 bytes; shared:
# 43). Readers older than the shared form refuse it as a corrupt mask, never misread it.
SHARED_MASK = 0x01


def pack_mask(mask: np.ndarray) -> bytes:
    """A (..., C, H, W) mask's section: shared by the C bands where they all hold the same mask."""
    if mask.ndim >= 3 and mask.shape[-3] > 1 and (mask == mask[..., :1, :, :]).all():
        return bytes([SHARED_MASK]) + zlib.compress(np.packbits(mask[..., 0, :, :].ravel()).tobytes(), 9)
    return zlib.compress(np.packbits(mask.ravel()).tobytes(), 9)


def unpack_mask(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The mask of ``shape`` (..., C, H, W), inflated no further than the bytes it must hold (no zlib bomb)."""
    shared = len(data) > 0 and data[0] == SHARED_MASK
    if shared and len(shape) < 3:
        raise CorruptChunkError(f"Expected a mask of every element for a chunk of shape {shape}. Got a shared one instead.")
    stored = (*shape[:-3], 1, *shape[-2:]) if shared else tuple(shape)
    mask = _inflate_bits(data[1:] if shared else data, stored)
    return np.ascontiguousarray(np.broadcast_to(mask, shape)) if shared else mask


def _inflate_bits(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    n = element_count(shape)
    size = (n + 7) // 8
    try:
        inflater = zlib.decompressobj()
        packed = inflater.decompress(data, size + 1)
        complete = inflater.eof and not inflater.unconsumed_tail and not inflater.unused_data
    except zlib.error as e:
        raise CorruptChunkError(f"Expected a zlib-compressed nodata mask. Got {e} instead.") from None
    if len(packed) != size or not complete:
        raise CorruptChunkError(f"Expected {size} mask bytes in one zlib stream. Got {len(packed)} or more instead.")
    bits = np.frombuffer(packed, np.uint8)
    return np.unpackbits(bits, count=n).astype(bool).reshape(shape)
