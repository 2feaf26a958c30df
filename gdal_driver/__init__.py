"""The GDAL route for ``.tec`` files: a VRT sidecar (:mod:`gdal_driver.vrt`) whose derived bands call a trusted
Python pixel function (:mod:`gdal_driver.pixelfunction`). GDAL's Python driver plug-ins are vector-only, hence
this shape. Users go through :mod:`tec_zarr.gdal`.
"""

TRUSTED_MODULE = "gdal_driver.pixelfunction"  # the value of GDAL_VRT_PYTHON_TRUSTED_MODULES
PIXEL_FUNCTION = f"{TRUSTED_MODULE}.tec_band"
