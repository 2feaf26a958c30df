"""``tec_zarr.tecfile``, as users import it: ``.tec`` files are read with :func:`open` and written with :func:`write`.

The layout is :mod:`tec_zarr.bitstream.tecfile`; reading and writing tiles is :mod:`tec_zarr.gdal.raster`.
"""

from .bitstream.tecfile import FORMAT_VERSION, MAGIC, SUFFIX, TecMetadata, TecTiles, write_tiles
from .gdal.raster import TecFile, decoded_tiles, downsample, encode_tiles, open, parse_window, write

__all__ = ["FORMAT_VERSION", "MAGIC", "SUFFIX", "TecFile", "TecMetadata", "TecTiles", "decoded_tiles", "downsample",
           "encode_tiles", "open", "parse_window", "write", "write_tiles"]
