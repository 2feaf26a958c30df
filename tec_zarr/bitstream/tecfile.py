"""The ``.tec`` raster file layout, format version 1: one georeferenced image as TEC tiles. This module is its only
definition; :mod:`tec_zarr.gdal.raster` encodes and decodes the tiles.

A ``.tec`` file holds a (bands, H, W) image and its overviews cut into square T x T tiles. Every tile is, byte for
byte, a TEC chunk bitstream (:mod:`tec_zarr.bitstream.chunk`) of a (bands, T, T) block: the chunk that a Zarr array of
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
contract); "overviews" the levels k >= 1, strictly increasing; "uuid" a uuid4 naming this file's content;
optional "scales" and "offsets", one number per band (value = stored x scale + offset, GDAL's band scale and
offset), written only where a band has other than 1 and 0 (readers that predate them ignore them).

Overview level k is the image downsampled by 2**k, ceil(H / 2**k) x ceil(W / 2**k) pixels, each the mean of the
valid (non-nodata) pixels of its 2**k x 2**k block (rounded for integer dtypes), or nodata where the block has
none. It is tiled like level 0.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import struct
import threading
import uuid as uuidlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bands import S2_L2A_BANDS
from ..errors import (
    CorruptTileError,
    InvalidInputError,
    TecFileError,
    TecFormatError,
    TruncatedTecFileError,
)
from ..parsing import parse_nodata
from ..radiometry import Radiometry, parse_radiometry
from .chunk import CODEC_ID, check_config_keys

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
    except (TypeError, ValueError, OverflowError):
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
    radiometry: Radiometry | None = None  # (scales, offsets) per band; None: stored values are the values

    @classmethod
    def create(cls, *, shape, dtype, band_names, crs_wkt, geotransform, nodata, tile, codec, overviews, uuid=None,
               radiometry=None):
        """Validated metadata; raises :class:`InvalidInputError`. ``radiometry``: (scales, offsets) per band, or
        None."""
        shape = parse_shape(shape)
        dtype = str(np.dtype(dtype).newbyteorder("=").name)
        if dtype not in DTYPES:
            raise InvalidInputError(f"Expected one of the dtypes {', '.join(DTYPES)}. Got {dtype} instead.")
        if crs_wkt is not None and not isinstance(crs_wkt, str):
            raise InvalidInputError(f"Expected a WKT string or None for the CRS. Got {crs_wkt!r} instead.")
        nodata = parse_nodata(nodata)
        try:
            check_config_keys(codec, complete=True)
        except ValueError as e:
            raise InvalidInputError(str(e)) from None
        if codec.get("id") != CODEC_ID or codec.get("nodata") != nodata:
            raise InvalidInputError(
                f"Expected the {CODEC_ID} codec config with nodata {nodata!r}. Got {codec!r} instead."
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
            radiometry=parse_radiometry(*(radiometry or (None, None)), shape[0]),
        )
        if meta.tile_count > MAX_TILES:
            raise InvalidInputError(f"Expected at most {MAX_TILES} tiles. Got {meta.tile_count} instead (use a larger tile).")
        return meta

    def to_json(self) -> bytes:
        meta = {
            "shape": list(self.shape), "dtype": self.dtype, "band_names": list(self.band_names),
            "crs_wkt": self.crs_wkt, "geotransform": None if self.geotransform is None else list(self.geotransform),
            "nodata": self.nodata, "tile": self.tile, "codec": self.codec, "overviews": list(self.overviews),
            "uuid": self.uuid,
        }
        if self.radiometry is not None:  # absent otherwise: files without it keep the bytes they always had
            meta["scales"], meta["offsets"] = (list(v) for v in self.radiometry)
        return json.dumps(meta, sort_keys=True).encode()

    @property
    def scales(self) -> tuple[float, ...]:
        return self.radiometry[0] if self.radiometry else (1.0,) * self.bands

    @property
    def offsets(self) -> tuple[float, ...]:
        return self.radiometry[1] if self.radiometry else (0.0,) * self.bands

    @classmethod
    def from_json(cls, data: bytes) -> TecMetadata:
        try:
            d = json.loads(data.decode())
            return cls.create(**{key: d[key] for key in (
                "shape", "dtype", "band_names", "crs_wkt", "geotransform", "nodata", "tile", "codec", "overviews", "uuid"
            )}, radiometry=(d.get("scales"), d.get("offsets")))
        except InvalidInputError as e:  # already says what it expected and got
            raise TecFormatError(f"Invalid .tec metadata: {e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError,
                RecursionError) as e:
            raise TecFormatError(f"Expected valid .tec metadata JSON. Got {type(e).__name__}: {e} instead.") from None

    @property
    def bands(self) -> int:
        return self.shape[0]

    @property
    def levels(self) -> tuple[int, ...]:
        return (0, *self.overviews)

    @property
    def fill(self) -> float | int:
        """The value of absent tiles, and of edge tiles' padding (float files without nodata pad with NaN,
        ``tec_zarr.gdal.raster.padding``)."""
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




class TecTiles:
    """A ``.tec`` file's verified header and index, and its tiles' bytes on demand (each checked by its CRC32)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = builtins.open(self.path, "rb")
        except OSError as e:
            raise TecFileError(f"Expected a readable .tec file at {self.path}. Got {e.strerror or e} instead.") from None
        self._lock = threading.Lock()
        try:
            self.metadata, self._index, self.header_bytes = read_header(self._file, os.fstat(self._file.fileno()).st_size)
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TecTiles:
        return self

    def __exit__(self, *args) -> None:
        self.close()

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


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TruncatedTecFileError(f"Expected {n} bytes of {what} in the .tec file. Got {len(data)} instead (truncated).")
    return data


def read_header(f, size: int) -> tuple[TecMetadata, np.ndarray, int]:
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
        offsets = index["offset"][present]
        if int(offsets.min()) < header_len:
            raise TecFormatError("Expected every tile after the header. Got a tile offset inside it instead (corrupt).")
        # in float64: a uint64 sum could wrap near 2**64; real sizes are far below 2**53, where it is exact
        end = int((offsets.astype(np.float64) + index["length"][present].astype(np.float64)).max())
        if end > size:
            raise TruncatedTecFileError(f"Expected a .tec file of at least {end} bytes. Got {size} instead (truncated).")
    return meta, index, header_len
