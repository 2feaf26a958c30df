"""The module name GDAL imports for ``.tec`` sidecars' pixel function (``gdal_driver.pixelfunction.tec_band``).

Sidecars written by every version name it, so it stays; the code lives in :mod:`tec_zarr.gdal`. The folder also
holds ``tec_driver.cpp``, the native GDAL plug-in's source (:mod:`tec_zarr.gdal.plugin` compiles it).
"""

from tec_zarr.gdal.vrt import PIXEL_FUNCTION, TRUSTED_MODULE

__all__ = ["PIXEL_FUNCTION", "TRUSTED_MODULE"]
