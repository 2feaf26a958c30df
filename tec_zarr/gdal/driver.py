"""What the native GDAL plug-in (``gdal_driver/tec_driver.cpp``, built by :mod:`.plugin`) calls in Python.

The plug-in parses nothing itself but the magic number: :func:`open` reads a ``.tec`` file's header and index (through
:class:`tec_zarr.gdal.raster.TecFile`, which verifies them) and returns what GDAL needs as one JSON string;
:func:`read_block` decodes one tile of one level and returns one band of it; :func:`decompress` decodes a Zarr
chunk for GDAL's Zarr driver. Only ints, strings and bytes cross the boundary. Any exception becomes a GDAL error
(``CE_Failure``) in the plug-in, with the exception's type and message.

Decoded tiles (all bands) stay in :data:`tec_zarr.gdal.pixelfunction.CACHE`, so reading the 12 bands of a block
decodes it once (``TEC_ZARR_TILE_CACHE_MB``, default 256).
"""

from __future__ import annotations

import itertools
import json
import os
import threading

import numpy as np

from ..errors import InvalidInputError
from ..pipeline import decode_chunk
from . import raster
from .pixelfunction import CACHE
from .vrt import GDAL_TYPES

_readers: dict[int, raster.TecFile] = {}
_handles = itertools.count(1)
_lock = threading.Lock()


def open(path: str) -> bytes:  # noqa: A001  (what the plug-in calls)
    """Open ``path`` (header and index only) and describe it for GDAL: a JSON object (UTF-8 bytes, as every result
    the plug-in takes) whose ``handle`` names the open file in :func:`read_block` and :func:`close`."""
    f = raster.TecFile(path)
    m = f.metadata
    with _lock:
        handle = next(_handles)
        _readers[handle] = f
    levels = [[k, *reversed(m.level_shape(k))] for k in m.levels]  # [level, width, height]
    return json.dumps({
        "handle": handle, "bands": m.bands, "width": m.shape[2], "height": m.shape[1],
        "data_type": GDAL_TYPES[m.dtype], "tile": m.tile, "crs_wkt": m.crs_wkt or "",
        "geotransform": list(m.geotransform) if m.geotransform else None,
        "nodata": None if m.nodata is None else repr(float(m.nodata)),  # a string: JSON has no NaN
        "band_names": list(m.band_names), "levels": levels,
        **({"scales": list(m.scales), "offsets": list(m.offsets)} if m.radiometry else {}),  # absent: PAM's, if any
        "metadata": {"TEC_UUID": m.uuid, "TEC_MODEL": str(m.codec["model"]), "TEC_QUALITY": str(m.codec["quality"])},
    }).encode()


def read_block(handle: int, level: int, band: int, ty: int, tx: int) -> bytes:
    """Band ``band`` (1-based) of tile (ty, tx) of ``level``: T x T values, edge padding included, native order."""
    with _lock:
        f = _readers[handle]
    if not 1 <= band <= f.metadata.bands:
        raise InvalidInputError(f"Expected a band in 1..{f.metadata.bands}. Got {band} instead.")
    tile = CACHE.get((("plugin", os.getpid(), handle), level, ty, tx), lambda: f.decode_tile(level, ty, tx))
    return np.ascontiguousarray(tile[band - 1]).tobytes()


def close(handle: int) -> None:
    with _lock:
        f = _readers.pop(handle, None)
    if f is not None:
        f.close()


def decompress(data: bytes, nbytes: int) -> bytes:
    """A TEC chunk (Zarr format 2 compressor ``tec_zarr.tec``) decoded to its raw bytes, C order, native byte order.
    ``nbytes`` > 0: the size GDAL's buffer expects; a chunk declaring another size is refused before decoding."""
    buf = np.frombuffer(data, np.uint8)
    chunk = decode_chunk(buf, expected_nbytes=nbytes) if nbytes > 0 else decode_chunk(buf)
    return np.ascontiguousarray(chunk).tobytes()
