"""The trusted module named in ``.tec`` sidecars: :func:`tec_band` is :mod:`tec_zarr.gdal.pixelfunction`'s."""

from tec_zarr.gdal.pixelfunction import tec_band

__all__ = ["tec_band"]
