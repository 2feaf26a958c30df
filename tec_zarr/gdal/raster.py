"""Reading and writing ``.tec`` raster files: tiles encoded and decoded by the TEC codec.

The file layout (header, metadata, tile index) is :mod:`tec_zarr.bitstream.tecfile`; this module cuts an image and
its overviews into tiles, codes them with the codec config stored in the metadata, and reads windows back decoding
only the tiles they cover.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property

import numpy as np

from ..bitstream.tecfile import MAGIC, SUFFIX, TecMetadata, TecTiles, write_tiles
from ..codec.config import CodecConfig
from ..errors import CorruptTileError, InvalidInputError
from ..parsing import env_limit
from ..radiometry import Radiometry
from ..pipeline import MAX_BATCH_IMAGES, decode_chunk, encode_chunks, parse_dtype

# One read allocates its whole window: a file declaring an absurd raster is refused instead (2**31 elements, 4 GiB of
# uint16, holds a full 12-band Sentinel-2 tile at 10 m).
MAX_READ_VARIABLE = "TEC_ZARR_MAX_READ_ELEMENTS"
DEFAULT_MAX_READ_ELEMENTS = 2**31


def max_read_elements() -> int:
    return env_limit(MAX_READ_VARIABLE, DEFAULT_MAX_READ_ELEMENTS)


__all__ = ["MAGIC", "SUFFIX", "TecFile", "TecMetadata", "decoded_tiles", "downsample", "open", "parse_window", "write", "write_rows"]


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
                step = 1 if int(nd) < np.iinfo(image.dtype).max else -1  # in Python ints: uint16 65535 - 1
                band[(counts > 0) & (band == nd)] = int(nd) + step
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
    progress: Callable[[int, int], None] | None = None,
    float_scale: float = 10000.0,
    dn_offset: int = 0,
    radiometry: Radiometry | None = None,
    refine: int = 0,
) -> TecMetadata:
    """Encode a (bands, H, W) image and its overviews into a ``.tec`` file; returns its metadata.

    ``max_error`` / ``psnr`` are :class:`tec_zarr.TEC`'s (error bound or per-tile PSNR target), for every level;
    ``float_scale`` (float32 x float_scale = DN), ``dn_offset`` (the DN of reflectance 0) and ``refine`` (the
    encoder's symbol search) too. ``radiometry``:
    the bands' (scales, offsets) the file states for readers (value = stored x scale + offset), as the source did.
    ``progress(done, total)`` is called after each tile.
    """
    if not isinstance(array, np.ndarray) or array.ndim != 3:
        raise InvalidInputError(f"Expected a (bands, H, W) numpy array. Got {getattr(array, 'shape', type(array))} instead.")
    return write_rows(path, lambda y0, y1: array[:, y0:y1], shape=array.shape, dtype=array.dtype, crs_wkt=crs_wkt,
                      geotransform=geotransform, band_names=band_names, nodata=nodata, tile=tile, quality=quality,
                      model=model, overviews=overviews, max_error=max_error, psnr=psnr, progress=progress,
                      float_scale=float_scale, dn_offset=dn_offset, radiometry=radiometry, refine=refine)


def write_rows(
    path,
    read_rows: Callable[[int, int], np.ndarray],
    *,
    shape: Sequence[int],
    dtype,
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
    progress: Callable[[int, int], None] | None = None,
    float_scale: float = 10000.0,
    dn_offset: int = 0,
    radiometry: Radiometry | None = None,
    refine: int = 0,
) -> TecMetadata:
    """:func:`write` for an image read a strip of whole rows at a time: ``read_rows(row0, row1)`` returns the
    (bands, row1 - row0, W) rows of a (bands, H, W) ``shape`` image. The same bytes as :func:`write`; memory holds
    one strip of ``tile`` rows (``2**k`` rows where an overview level k exceeds it) and a level's strip, never the
    image. Each level reads the image once more."""
    dtype = parse_dtype(dtype).newbyteorder("=")
    config = CodecConfig.create(quality=quality, model=model, nodata=nodata, max_error=max_error, psnr=psnr,
                                float_scale=float_scale, dn_offset=dn_offset, refine=refine)
    meta = TecMetadata.create(
        shape=tuple(shape), dtype=dtype, band_names=band_names, crs_wkt=crs_wkt, geotransform=geotransform,
        nodata=config.nodata, tile=tile, codec=config.to_json(), overviews=tuple(overviews),
        radiometry=radiometry,
    )

    def read(y0: int, y1: int) -> np.ndarray:
        rows = np.ascontiguousarray(read_rows(y0, y1), dtype=dtype)
        if rows.shape != (meta.bands, y1 - y0, meta.shape[2]):
            raise InvalidInputError(f"Expected rows {y0}..{y1} of shape {(meta.bands, y1 - y0, meta.shape[2])}. "
                                    f"Got {rows.shape} instead.")
        return rows

    tiles = _encode_levels(read, meta, meta.levels)
    if progress is not None:
        tiles = _reporting(tiles, meta.tile_count, progress)
    write_tiles(path, meta, tiles)
    return meta


def _reporting(tiles, total: int, progress: Callable[[int, int], None]):
    for done, data in enumerate(tiles, 1):
        yield data
        progress(done, total)


def encode_tiles(array: np.ndarray, meta: TecMetadata, levels: Iterable[int]):
    """The tiles of ``levels`` of the full-resolution ``array``, in index order (None: an absent tile)."""
    return _encode_levels(lambda y0, y1: array[:, y0:y1], meta, levels)


def _encode_levels(read, meta: TecMetadata, levels: Iterable[int]):
    params = CodecConfig.from_json(meta.codec).chunk_params()
    for level in levels:
        strips = _level_strips(read, meta, meta.parse_level(level))
        blocks = (block for strip in strips for block in _blocks(strip, meta))
        # Tiles go through the encoder network MAX_BATCH_IMAGES at a time (the same bytes as one by one).
        while batch := list(itertools.islice(blocks, MAX_BATCH_IMAGES)):
            # An all-fill tile is left absent, as Zarr leaves such chunks unwritten.
            empty = [bool((b == meta.fill).all()) for b in batch]
            coded = iter(encode_chunks([b for b, e in zip(batch, empty) if not e], **params))
            yield from (None if e else next(coded) for e in empty)


def _level_strips(read, meta: TecMetadata, level: int):
    """Level ``level`` of the image in strips of ``meta.tile`` rows (the last one shorter), in order.

    Overview rows come from reads of whole 2**k x 2**k block rows, so each strip holds the pixels of
    ``downsample(image, 2**level, nodata)`` (a block's mean depends on its own pixels only)."""
    t, h = meta.tile, meta.shape[1]
    factor = 2**level
    step = factor * -(-t // factor)  # source rows per read: whole blocks, at most max(t, 2**level) rows
    pending: list[np.ndarray] = []
    have = 0
    for y in range(0, h, step):
        rows = read(y, min(y + step, h))
        if level:
            rows = downsample(rows, factor, meta.nodata)
        pending.append(rows)
        have += rows.shape[1]
        while have >= t:
            joined = pending[0] if len(pending) == 1 else np.concatenate(pending, axis=1)
            yield joined[:, :t]
            rest = joined[:, t:]
            pending, have = ([rest] if rest.shape[1] else []), rest.shape[1]
    if have:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending, axis=1)


def padding(meta: TecMetadata) -> float | int:
    """What edge tiles are padded with: the nodata, and NaN in float data without one (stored as missing, so the
    padding costs nothing, as zarr's NaN fill does). Absent tiles still read as ``meta.fill``, as they always have."""
    if meta.nodata is None and np.dtype(meta.dtype).kind == "f":
        return float("nan")
    return meta.fill


def missing_tile(meta: TecMetadata) -> bytes:
    """A level-0 tile of a float file whose elements are all NaN (missing, whatever the nodata): what it stores
    where a Zarr store has a missing chunk of fill value NaN (an absent tile would read as ``meta.fill``)."""
    tile = np.full((meta.bands, meta.tile, meta.tile), np.nan, np.dtype(meta.dtype))
    return encode_chunks([tile], **CodecConfig.from_json(meta.codec).chunk_params())[0]


def _blocks(image: np.ndarray, meta: TecMetadata):
    t = meta.tile
    _, h, w = image.shape
    for y in range(0, h, t):
        for x in range(0, w, t):
            block = image[:, y : y + t, x : x + t]
            if block.shape[1:] != (t, t):
                padded = np.full((image.shape[0], t, t), padding(meta), image.dtype)
                padded[:, : block.shape[1], : block.shape[2]] = block
                block = padded
            yield np.ascontiguousarray(block)


_count_lock = threading.Lock()
_decoded = 0


def decoded_tiles() -> int:
    """How many tiles this process has decoded so far (tests use it to check that reads touch only their tiles)."""
    return _decoded


def _count_decode() -> None:
    global _decoded
    with _count_lock:
        _decoded += 1


class TecFile(TecTiles):
    """A ``.tec`` file opened for reading: header and index are read and verified at open (:class:`TecTiles`),
    tiles read and decoded on demand."""

    @classmethod
    def open(cls, path) -> TecFile:
        return cls(path)

    def __repr__(self) -> str:
        m = self.metadata
        return f"<TecFile {str(self.path)!r} {m.shape} {m.dtype} tile {m.tile} overviews {m.overviews}>"

    @cached_property
    def config(self) -> CodecConfig:
        """The stored codec config; parsing it refuses a config naming weights other than the installed ones."""
        return CodecConfig.from_json(self.metadata.codec, complete=True)

    @property
    def codec(self):
        """The stored config as a numcodecs codec (:class:`tec_zarr.TEC`)."""
        from ..codec.zarr2 import TEC

        return TEC.from_config(self.metadata.codec)

    def decode_tile(self, level: int, ty: int, tx: int) -> np.ndarray:
        """The whole (bands, T, T) tile, edge padding included."""
        m = self.metadata
        data = self.read_tile(level, ty, tx)
        if not data:
            return np.full((m.bands, m.tile, m.tile), m.fill, m.dtype)
        self.config  # a config naming other weights is refused before any tile decodes
        tile = decode_chunk(data, expected_shape=(m.bands, m.tile, m.tile))
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
        elements = len(index) * (y1 - y0) * (x1 - x0)
        if elements > max_read_elements():
            raise InvalidInputError(
                f"Expected a read of at most {max_read_elements()} elements ({MAX_READ_VARIABLE}). Got {elements} for "
                f"window {(y0, y1, x0, x1)} of level {level} instead: read it in windows, or raise the limit."
            )
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


