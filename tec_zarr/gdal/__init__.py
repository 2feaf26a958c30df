"""``.tec`` raster files and GDAL: reading and writing them (:mod:`.raster`), converting to and from GeoTIFF and
Zarr (:mod:`.convert`), and GDAL's route to them, a VRT sidecar (:mod:`.vrt`) calling a trusted pixel function
(:mod:`.pixelfunction`), opened with rasterio or osgeo (:mod:`.open`); and the native GDAL plug-in for the system
GDAL and QGIS, built and installed by :mod:`.plugin`, calling :mod:`.driver`."""

from .open import config_options, export_lines, gdal_environment, libpython, open, open_osgeo, sidecar

__all__ = ["config_options", "export_lines", "gdal_environment", "libpython", "open", "open_osgeo", "sidecar"]
