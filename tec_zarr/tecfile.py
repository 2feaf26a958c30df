"""The ``.tec`` raster file, format version 1: one georeferenced image as TEC tiles. This module is its only definition.

A ``.tec`` file holds a (bands, H, W) image and its overviews cut into square T x T tiles. Every tile is, byte for
byte, a TEC chunk bitstream (:mod:`tec_zarr.bitstream`) of a (bands, T, T) block: the chunk that a Zarr array of
shape (bands, H, W), chunks (bands, T, T), fill value = nodata and the same codec config stores. Edge tiles are
padded to T x T with the fill value (nodata, or 0 when nodata is null), as Zarr pads edge chunks; the padding is
never read back.

Layout (all integers little-endian)::

    magic        4 bytes  b"TECF"
    version      u16      FORMAT_VERSION
    reserved     u16      0
    meta_len     u32      then the metadata: UTF-8 JSON, keys below
    index        16 bytes per tile: offset u64 (from the start of the file), length u32, crc32 u32 (zlib.crc32 of
                 the tile's bytes). Level 0 first, then each overview level in the order of "overviews"; row-major
                 within a level. Length 0: the tile is absent and every pixel of it is the fill value, like a
                 missing Zarr chunk
    header_crc   u32      zlib.crc32 of every byte before it
    tiles        the chunk bitstreams, where the index says

Metadata keys: "shape" [bands, H, W]; "dtype" "uint16" | "int16" | "float32"; "band_names" one string per band;
"crs_wkt" WKT or null; "geotransform" 6 numbers in GDAL order or null; "nodata" a number or null; "tile" T;
"codec" the JSON config of :class:`tec_zarr.TEC` (model, model_sha256, quality, nodata, float_scale: the decode
contract); "overviews" the levels k >= 1, strictly increasing; "uuid" a uuid4 naming this file's content.

Overview level k is the image downsampled by 2**k, ceil(H / 2**k) x ceil(W / 2**k) pixels, each the mean of the
valid (non-nodata) pixels of its 2**k x 2**k block (rounded for integer dtypes), or nodata where the block has
none. It is tiled like level 0.
"""

from __future__ import annotations

import builtins
import itertools
import json
import math
import os
import struct
import threading
import uuid as uuidlib
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .bands import S2_L2A_BANDS
from .errors import (
    CorruptTileError,
    InvalidInputError,
    TecFileError,
    TecFormatError,
    TruncatedTecFileError,
)

MAGIC = b"TECF"
FORMAT_VERSION = 1
SUFFIX = ".tec"
DTYPES = ("uint16", "int16", "float32")
_PREAMBLE = struct.Struct("<4sHHI")
_ENTRY = struct.Struct("<QII")
_CRC = struct.Struct("<I")
_INDEX_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4"), ("crc32", "<u4")])
# Refuse headers describing absurd sizes instead of allocating them.
MAX_METADATA_BYTES = 1 << 24
MAX_TILES = 1 << 24


def parse_shape(shape) -> tuple[int, int, int]:
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise InvalidInputError(f"Expected an image shape (bands, H, W) of positive ints. Got {shape!r} instead.")
    return tuple(int(n) for n in shape)


def parse_tile(tile) -> int:
    if isinstance(tile, bool) or not isinstance(tile, int) or not 16 <= tile <= 4096 or tile % 4:
        raise InvalidInputError(f"Expected a tile size in 16..4096, a multiple of 4. Got {tile!r} instead.")
    return int(tile)


def parse_geotransform(gt) -> tuple[float, ...] | None:
    if gt is None:
        return None
    try:
        values = tuple(float(v) for v in gt)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise InvalidInputError(f"Expected a GDAL geotransform of 6 finite numbers, or None. Got {gt!r} instead.")
    return values


def parse_overviews(overviews) -> tuple[int, ...]:
    levels = tuple(overviews)
    if not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 30 for k in levels) or list(
        levels
    ) != sorted(set(levels)):
        raise InvalidInputError(f"Expected strictly increasing overview levels k >= 1 (2**k decimation). Got {overviews!r} instead.")
    return levels


def parse_band_names(names, bands: int) -> tuple[str, ...]:
    if names is None:
        names = S2_L2A_BANDS[:bands]
    names = tuple(names)
    if len(names) != bands or not all(isinstance(n, str) for n in names):
        raise InvalidInputError(f"Expected {bands} band names (str). Got {names!r} instead.")
    return names


@dataclass(frozen=True)
class TecMetadata:
    """The JSON metadata block of a ``.tec`` file (see the module docstring)."""

    shape: tuple[int, int, int]
    dtype: str
    band_names: tuple[str, ...]
    crs_wkt: str | None
    geotransform: tuple[float, ...] | None
    nodata: float | int | None
    tile: int
    codec: dict
    overviews: tuple[int, ...]
    uuid: str

    @classmethod
    def create(cls, *, shape, dtype, band_names, crs_wkt, geotransform, nodata, tile, codec, overviews, uuid=None):
        """Validated metadata; raises :class:`InvalidInputError`."""
        from .params import parse_nodata

        shape = parse_shape(shape)
        dtype = str(np.dtype(dtype).newbyteorder("=").name)
        if dtype not in DTYPES:
            raise InvalidInputError(f"Expected one of the dtypes {', '.join(DTYPES)}. Got {dtype} instead.")
        if crs_wkt is not None and not isinstance(crs_wkt, str):
            raise InvalidInputError(f"Expected a WKT string or None for the CRS. Got {crs_wkt!r} instead.")
        nodata = parse_nodata(nodata)
        if not (isinstance(codec, dict) and codec.get("id") == "tec_zarr.tec" and codec.get("nodata") == nodata):
            raise InvalidInputError(
                f"Expected the tec_zarr.tec codec config with nodata {nodata!r}. Got {codec!r} instead."
            )
        if uuid is None:
            uuid = str(uuidlib.uuid4())
        try:
            uuid = str(uuidlib.UUID(uuid))
        except (TypeError, ValueError, AttributeError):
            raise InvalidInputError(f"Expected a uuid string. Got {uuid!r} instead.") from None
        meta = cls(
            shape=shape,
            dtype=dtype,
            band_names=parse_band_names(band_names, shape[0]),
            crs_wkt=crs_wkt or None,
            geotransform=parse_geotransform(geotransform),
            nodata=nodata,
            tile=parse_tile(tile),
            codec=dict(codec),
            overviews=parse_overviews(overviews),
            uuid=uuid,
        )
        if meta.tile_count > MAX_TILES:
            raise InvalidInputError(f"Expected at most {MAX_TILES} tiles. Got {meta.tile_count} instead (use a larger tile).")
        return meta

    def to_json(self) -> bytes:
        return json.dumps({
            "shape": list(self.shape), "dtype": self.dtype, "band_names": list(self.band_names),
            "crs_wkt": self.crs_wkt, "geotransform": None if self.geotransform is None else list(self.geotransform),
            "nodata": self.nodata, "tile": self.tile, "codec": self.codec, "overviews": list(self.overviews),
            "uuid": self.uuid,
        }, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TecMetadata:
        try:
            d = json.loads(data.decode())
            return cls.create(**{key: d[key] for key in (
                "shape", "dtype", "band_names", "crs_wkt", "geotransform", "nodata", "tile", "codec", "overviews", "uuid"
            )})
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, InvalidInputError) as e:
            raise TecFormatError(f"Expected valid .tec metadata JSON. Got {type(e).__name__}: {e} instead.") from None

    @property
    def bands(self) -> int:
        return self.shape[0]

    @property
    def levels(self) -> tuple[int, ...]:
        return (0, *self.overviews)

    @property
    def fill(self) -> float | int:
        """The value of padding and of absent tiles."""
        return 0 if self.nodata is None else self.nodata

    def level_shape(self, level: int) -> tuple[int, int]:
        f = 2 ** self.parse_level(level)
        return -(-self.shape[1] // f), -(-self.shape[2] // f)

    def grid(self, level: int) -> tuple[int, int]:
        """Tiles per column and per row at a level."""
        h, w = self.level_shape(level)
        return -(-h // self.tile), -(-w // self.tile)

    @property
    def tile_count(self) -> int:
        return sum(math.prod(self.grid(k)) for k in self.levels)

    def parse_level(self, level) -> int:
        if level not in self.levels or isinstance(level, bool):
            raise InvalidInputError(f"Expected a level of this file, one of {self.levels}. Got {level!r} instead.")
        return int(level)

    def tile_number(self, level: int, ty: int, tx: int) -> int:
        """Position of a tile in the index."""
        ny, nx = self.grid(level)
        if not (0 <= ty < ny and 0 <= tx < nx):
            raise InvalidInputError(f"Expected a tile inside the {ny} x {nx} grid of level {level}. Got ({ty}, {tx}) instead.")
        before = sum(math.prod(self.grid(k)) for k in self.levels[: self.levels.index(level)])
        return before + ty * nx + tx


def parse_window(window, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(slice(row0, row1), slice(col0, col1))`` inside ``shape``, or None for all -> (row0, row1, col0, col1)."""
    if window is None:
        return 0, shape[0], 0, shape[1]
    bounds = []
    if isinstance(window, tuple) and len(window) == 2 and all(isinstance(s, slice) for s in window):
        for s, n in zip(window, shape):
            start = 0 if s.start is None else s.start
            stop = n if s.stop is None else s.stop
            if s.step in (None, 1) and isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= n:
                bounds += [start, stop]
    if len(bounds) != 4:
        raise InvalidInputError(
            f"Expected a window (slice(row0, row1), slice(col0, col1)) inside {shape}. Got {window!r} instead."
        )
    return tuple(bounds)


def downsample(image: np.ndarray, factor: int, nodata: float | int | None) -> np.ndarray:
    """Mean of the valid pixels of each factor x factor block (partial blocks at the edges); see the module docstring."""
    bands, h, w = image.shape
    oh, ow = -(-h // factor), -(-w // factor)
    pad = ((0, oh * factor - h), (0, ow * factor - w))
    out = np.empty((bands, oh, ow), image.dtype)
    for b in range(bands):  # one band at a time keeps the float64 copy small
        valid = np.ones((h, w), bool) if nodata is None else image[b] != nodata
        values = np.pad(np.where(valid, image[b], 0).astype(np.float64), pad)
        valid = np.pad(valid, pad)
        sums = values.reshape(oh, factor, ow, factor).sum(axis=(1, 3))
        counts = valid.reshape(oh, factor, ow, factor).sum(axis=(1, 3))
        mean = sums / np.maximum(counts, 1)
        if image.dtype.kind in "iu":
            info = np.iinfo(image.dtype)
            mean = np.clip(np.rint(mean), info.min, info.max)
        band = mean.astype(image.dtype)
        if nodata is not None:
            nd = np.asarray(nodata).astype(image.dtype)
            # A valid mean equal to nodata would be stored as missing: move it one step away.
            if image.dtype.kind == "f":
                band[(counts > 0) & (band == nd)] = np.nextafter(nd, np.inf, dtype=image.dtype)
            else:
                band[(counts > 0) & (band == nd)] = nd + (1 if nd < np.iinfo(image.dtype).max else -1)
            band[counts == 0] = nd
        out[b] = band
    return out


def write(
    path,
    array: np.ndarray,
    *,
    crs_wkt: str | None,
    geotransform: Sequence[float] | None,
    band_names: Sequence[str] | None = None,
    nodata: float | int | None = 0,
    tile: int = 256,
    quality: int | None = None,
    model: str | None = None,
    overviews: Iterable[int] = (),
    max_error: float | int | None = None,
    psnr: float | None = None,
) -> TecMetadata:
    """Encode a (bands, H, W) image and its overviews into a ``.tec`` file; returns its metadata.

    ``max_error`` / ``psnr`` are :class:`tec_zarr.TEC`'s (error bound or per-tile PSNR target), for every level.
    """
    from .chunk import parse_dtype
    from .codec import TEC

    if not isinstance(array, np.ndarray) or array.ndim != 3:
        raise InvalidInputError(f"Expected a (bands, H, W) numpy array. Got {getattr(array, 'shape', type(array))} instead.")
    array = np.ascontiguousarray(array, dtype=parse_dtype(array.dtype).newbyteorder("="))
    codec = TEC(quality=quality, model=model, nodata=nodata, max_error=max_error, psnr=psnr)
    meta = TecMetadata.create(
        shape=array.shape, dtype=array.dtype, band_names=band_names, crs_wkt=crs_wkt, geotransform=geotransform,
        nodata=codec.nodata, tile=tile, codec=codec.get_config(), overviews=tuple(overviews),
    )

    write_tiles(path, meta, encode_tiles(array, meta, meta.levels))
    return meta


def encode_tiles(array: np.ndarray, meta: TecMetadata, levels: Iterable[int]):
    """The tiles of ``levels`` of the full-resolution ``array``, in index order (None: an absent tile)."""
    from .chunk import MAX_BATCH_IMAGES, encode_chunks
    from .codec import TEC

    params = TEC(**{k: v for k, v in meta.codec.items() if k != "id"})._chunk_params()
    for level in levels:
        image = array if meta.parse_level(level) == 0 else downsample(array, 2**level, meta.nodata)
        blocks = _blocks(image, meta)
        # Tiles go through the encoder network MAX_BATCH_IMAGES at a time (the same bytes as one by one).
        while batch := list(itertools.islice(blocks, MAX_BATCH_IMAGES)):
            # An all-fill tile is left absent, as Zarr leaves such chunks unwritten.
            empty = [bool((b == meta.fill).all()) for b in batch]
            coded = iter(encode_chunks([b for b, e in zip(batch, empty) if not e], **params))
            yield from (None if e else next(coded) for e in empty)


def _blocks(image: np.ndarray, meta: TecMetadata):
    t = meta.tile
    _, h, w = image.shape
    for y in range(0, h, t):
        for x in range(0, w, t):
            block = image[:, y : y + t, x : x + t]
            if block.shape[1:] != (t, t):
                padded = np.full((image.shape[0], t, t), meta.fill, image.dtype)
                padded[:, : block.shape[1], : block.shape[2]] = block
                block = padded
            yield np.ascontiguousarray(block)


def write_tiles(path, meta: TecMetadata, tiles: Iterable[bytes | None]) -> None:
    """Write a ``.tec`` file from its metadata and its tiles in index order (None: absent tile)."""
    path = Path(path)
    meta_bytes = meta.to_json()
    header_len = _PREAMBLE.size + len(meta_bytes) + meta.tile_count * _ENTRY.size + _CRC.size
    part = path.with_name(path.name + ".part")
    entries = []
    try:
        with builtins.open(part, "wb") as f:
            f.seek(header_len)
            offset = header_len
            for data in tiles:
                if data is None or len(data) == 0:
                    entries.append((0, 0, 0))
                    continue
                data = bytes(data)
                f.write(data)
                entries.append((offset, len(data), zlib.crc32(data)))
                offset += len(data)
            if len(entries) != meta.tile_count:
                raise InvalidInputError(f"Expected {meta.tile_count} tiles. Got {len(entries)} instead.")
            head = (_PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(meta_bytes)) + meta_bytes
                    + b"".join(_ENTRY.pack(*e) for e in entries))
            f.seek(0)
            f.write(head + _CRC.pack(zlib.crc32(head)))
        os.replace(part, path)  # readers never see a half-written file
    finally:
        part.unlink(missing_ok=True)


_count_lock = threading.Lock()
_decoded = 0


def decoded_tiles() -> int:
    """How many tiles this process has decoded so far (tests use it to check that reads touch only their tiles)."""
    return _decoded


def _count_decode() -> None:
    global _decoded
    with _count_lock:
        _decoded += 1


class TecFile:
    """A ``.tec`` file opened for reading: header and index are read and verified at open, tiles on demand."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = builtins.open(self.path, "rb")
        except OSError as e:
            raise TecFileError(f"Expected a readable .tec file at {self.path}. Got {e.strerror or e} instead.") from None
        self._lock = threading.Lock()
        try:
            self.metadata, self._index, self.header_bytes = _read_header(self._file, os.fstat(self._file.fileno()).st_size)
        except BaseException:
            self._file.close()
            raise

    @classmethod
    def open(cls, path) -> TecFile:
        return cls(path)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TecFile:
        return self

    def __exit__(self, *args) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.metadata
        return f"<TecFile {str(self.path)!r} {m.shape} {m.dtype} tile {m.tile} overviews {m.overviews}>"

    @property
    def index(self) -> np.ndarray:
        """The tile index: a read-only structured array of (offset, length, crc32), in index order."""
        return self._index

    @property
    def stored_bytes(self) -> int:
        return self.header_bytes + int(self._index["length"].sum(dtype=np.int64))

    def tile_entry(self, level: int, ty: int, tx: int) -> tuple[int, int, int]:
        """(offset, length, crc32) of a tile from the index."""
        e = self._index[self.metadata.tile_number(self.metadata.parse_level(level), ty, tx)]
        return int(e["offset"]), int(e["length"]), int(e["crc32"])

    def read_tile(self, level: int, ty: int, tx: int) -> bytes:
        """The tile's chunk bitstream, checked against the index's CRC32 (b"" for an absent tile)."""
        offset, length, crc = self.tile_entry(level, ty, tx)
        if length == 0:
            return b""
        with self._lock:
            self._file.seek(offset)
            data = self._file.read(length)
        if len(data) != length:
            raise TruncatedTecFileError(
                f"Expected {length} bytes of tile {(level, ty, tx)} at offset {offset} of {self.path}. "
                f"Got {len(data)} instead (truncated)."
            )
        actual = zlib.crc32(data)
        if actual != crc:
            raise CorruptTileError(
                f"Expected CRC32 {crc:08x} for tile {(level, ty, tx)} of {self.path}. Got {actual:08x} instead "
                "(the file is corrupt)."
            )
        return data

    @cached_property
    def codec(self):
        """The codec of the stored config; building it refuses a config naming weights other than the installed ones."""
        from .codec import TEC

        return TEC(**{k: v for k, v in self.metadata.codec.items() if k != "id"})

    def decode_tile(self, level: int, ty: int, tx: int) -> np.ndarray:
        """The whole (bands, T, T) tile, edge padding included."""
        m = self.metadata
        data = self.read_tile(level, ty, tx)
        if not data:
            return np.full((m.bands, m.tile, m.tile), m.fill, m.dtype)
        tile = self.codec.decode(data)
        _count_decode()
        if tile.shape != (m.bands, m.tile, m.tile) or tile.dtype != np.dtype(m.dtype):
            raise CorruptTileError(
                f"Expected tile {(level, ty, tx)} of {self.path} to decode to {(m.bands, m.tile, m.tile)} {m.dtype}. "
                f"Got {tile.shape} {tile.dtype} instead."
            )
        return tile

    def read(
        self,
        window=None,
        level: int = 0,
        *,
        bands: Sequence[int] | None = None,
        decode_tile: Callable[[int, int, int], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Pixels of ``window`` (``(slice(row0, row1), slice(col0, col1))``, None: all) at ``level``, decoding only the
        tiles the window covers. ``bands``: 0-based band indices (None: all). ``decode_tile`` replaces
        :meth:`decode_tile`, e.g. by a cached one."""
        m = self.metadata
        level = m.parse_level(level)
        y0, y1, x0, x1 = parse_window(window, m.level_shape(level))
        index = list(range(m.bands)) if bands is None else list(bands)
        if not all(isinstance(b, (int, np.integer)) and 0 <= b < m.bands for b in index):
            raise InvalidInputError(f"Expected band indices in 0..{m.bands - 1}. Got {bands!r} instead.")
        get = decode_tile or self.decode_tile
        out = np.empty((len(index), y1 - y0, x1 - x0), m.dtype)
        t = m.tile
        for ty in range(y0 // t, -(-y1 // t)):
            for tx in range(x0 // t, -(-x1 // t)):
                tile = get(level, ty, tx)
                ya, yb = max(y0, ty * t), min(y1, (ty + 1) * t)
                xa, xb = max(x0, tx * t), min(x1, (tx + 1) * t)
                out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[index, ya - ty * t : yb - ty * t, xa - tx * t : xb - tx * t]
        return out


def open(path) -> TecFile:  # noqa: A001  (rasterio.open-style entry point)
    return TecFile(path)


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TruncatedTecFileError(f"Expected {n} bytes of {what} in the .tec file. Got {len(data)} instead (truncated).")
    return data


def _read_header(f, size: int) -> tuple[TecMetadata, np.ndarray, int]:
    pre = f.read(_PREAMBLE.size)
    if len(pre) >= len(MAGIC) and pre[: len(MAGIC)] != MAGIC:
        raise TecFormatError(f"Expected a .tec file starting with {MAGIC!r}. Got {pre[:len(MAGIC)]!r} instead.")
    if len(pre) < _PREAMBLE.size:
        raise TruncatedTecFileError(f"Expected a .tec header of at least {_PREAMBLE.size} bytes. Got {len(pre)} instead (truncated).")
    _, version, _, meta_len = _PREAMBLE.unpack(pre)
    if version != FORMAT_VERSION:
        raise TecFormatError(
            f"Expected .tec format version {FORMAT_VERSION}. Got {version} instead (written by a newer tec_zarr, or corrupt)."
        )
    if meta_len > MAX_METADATA_BYTES:
        raise TecFormatError(f"Expected at most {MAX_METADATA_BYTES} bytes of metadata. Got {meta_len} instead (corrupt).")
    meta_bytes = _read_exact(f, meta_len, "metadata")
    meta = TecMetadata.from_json(meta_bytes)
    index_bytes = _read_exact(f, meta.tile_count * _ENTRY.size, "tile index")
    (stored,) = _CRC.unpack(_read_exact(f, _CRC.size, "header CRC32"))
    actual = zlib.crc32(pre + meta_bytes + index_bytes)
    if stored != actual:
        raise TecFormatError(f"Expected header CRC32 {stored:08x}. Got {actual:08x} instead (the header is corrupt).")
    index = np.frombuffer(index_bytes, _INDEX_DTYPE)
    header_len = len(pre) + len(meta_bytes) + len(index_bytes) + _CRC.size
    present = index["length"] > 0
    if present.any():
        if int(index["offset"][present].min()) < header_len:
            raise TecFormatError("Expected every tile after the header. Got a tile offset inside it instead (corrupt).")
        end = int((index["offset"][present] + index["length"][present]).max())
        if end > size:
            raise TruncatedTecFileError(f"Expected a .tec file of at least {end} bytes. Got {size} instead (truncated).")
    return meta, index, header_len
