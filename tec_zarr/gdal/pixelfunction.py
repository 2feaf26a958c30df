"""The trusted VRT pixel function of ``.tec`` sidecars: it hands off to :mod:`.raster`.

GDAL imports it as ``gdal_driver.pixelfunction`` (the name existing sidecars carry), a module re-exporting this one.

GDAL calls :func:`tec_band` once per band and window, so whole decoded tiles (all bands) stay in a per-process LRU
cache: reading 12 bands decodes each tile once. Size it with ``TEC_ZARR_TILE_CACHE_MB`` (default 256).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from ..errors import SidecarMismatchError
from . import raster


class TileCache:
    """Decoded tiles by (path, file stamp, level, ty, tx), least recently used evicted past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, decode) -> np.ndarray:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
                return tile
        tile = decode()
        tile.setflags(write=False)
        with self._lock:
            if key not in self._tiles:
                self._tiles[key] = tile
                self._bytes += tile.nbytes
            while self._bytes > self.max_bytes and len(self._tiles) > 1:
                self._bytes -= self._tiles.popitem(last=False)[1].nbytes
        return tile

    def clear(self) -> None:
        with self._lock:
            self._tiles.clear()
            self._bytes = 0


CACHE = TileCache(int(float(os.environ.get("TEC_ZARR_TILE_CACHE_MB", "256")) * 2**20))
# Open files by path, least recently used closed past this many: a QGIS session that stays open for days and reads
# many .tec files keeps a bounded number of descriptors.
MAX_OPEN_FILES = 32
_readers: OrderedDict[str, tuple[tuple, raster.TecFile]] = OrderedDict()
_readers_lock = threading.Lock()


def reader(path: str, uuid: str) -> tuple[tuple, raster.TecFile]:
    """(stamp, open file) at ``path``, reopened when it changed on disk; refuses a missing file or another uuid."""
    try:
        st = os.stat(path)
    except OSError:
        raise SidecarMismatchError(
            f"Expected the .tec file {path} (uuid {uuid}) this VRT was written for. Got no file there instead: "
            "it was moved or deleted; write a new sidecar with `tec to-vrt NEW_PATH.tec`."
        ) from None
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _readers_lock:
        cached = _readers.get(path)
        if cached is not None and cached[0] == stamp:
            _readers.move_to_end(path)
            return cached
    opened = raster.TecFile(path)
    if opened.metadata.uuid != uuid:
        opened.close()
        raise SidecarMismatchError(
            f"Expected {path} to hold uuid {uuid}, the file this VRT was written for. Got uuid "
            f"{opened.metadata.uuid} instead: the file was replaced; write a new sidecar with `tec to-vrt {path}`."
        )
    with _readers_lock:
        # Dropped, not closed: a read in another thread may still use it; the file closes with its last reference.
        _readers.pop(path, None)
        _readers[path] = (stamp, opened)
        while len(_readers) > MAX_OPEN_FILES:
            _readers.popitem(last=False)
    return stamp, opened


def tec_band(in_ar, out_ar, xoff, yoff, xsize, ysize, raster_xsize, raster_ysize, buf_radius, gt, **kwargs):
    """Fill ``out_ar`` with band ``band`` (1-based) of level ``level`` of the .tec file ``path``."""
    path, uuid = kwargs["path"].decode(), kwargs["uuid"].decode()
    band, level = int(kwargs["band"]), int(kwargs["level"])
    stamp, f = reader(path, uuid)

    def cached(lv: int, ty: int, tx: int) -> np.ndarray:
        # Keyed by the file on disk, not the uuid alone: a damaged copy must not read a good copy's tiles.
        return CACHE.get((path, stamp, lv, ty, tx), lambda: f.decode_tile(lv, ty, tx))

    out_h, out_w = out_ar.shape
    if (out_h, out_w) == (ysize, xsize):
        window = (slice(yoff, yoff + ysize), slice(xoff, xoff + xsize))
        out_ar[:] = f.read(window, level, bands=[band - 1], decode_tile=cached)[0]
        return
    # GDAL asks for another size than the window (a zoomed-out view, -outsize): sample the nearest pixels, as GDAL's
    # default resampling does, from the coarsest level of the file still at least as fine as the output.
    fine = f.metadata.level_shape(level)
    finest_needed = min(xsize / out_w, ysize / out_h)
    source = max((k for k in f.metadata.levels if k >= level and 2 ** (k - level) <= finest_needed), default=level)
    scale = 2 ** (source - level)
    coarse = f.metadata.level_shape(source)
    rows = _nearest(yoff, ysize, out_h, scale, coarse[0], fine[0])
    cols = _nearest(xoff, xsize, out_w, scale, coarse[1], fine[1])
    window = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    block = f.read(window, source, bands=[band - 1], decode_tile=cached)[0]
    out_ar[:] = block[np.ix_(rows - window[0].start, cols - window[1].start)]


def _nearest(offset: int, size: int, out: int, scale: int, coarse: int, fine: int) -> np.ndarray:
    """Indices at a level ``scale`` times coarser of the pixels nearest to the centres of ``out`` output pixels
    spanning ``offset .. offset + size`` at the finer level (``fine`` pixels long, ``coarse`` at the source)."""
    centres = offset + (np.arange(out) + 0.5) * (size / out)  # in fine pixels
    index = np.floor(np.minimum(centres, fine - 0.5) / scale).astype(np.int64)
    return np.clip(index, 0, coarse - 1)
