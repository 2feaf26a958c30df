"""The codec front ends: numcodecs (Zarr format 2, :mod:`.zarr2`) and zarr-python 3 (format 3, :mod:`.zarr3`),
one frozen :class:`~.config.CodecConfig` behind both, and the xarray ``encoding`` helper (:mod:`.encoding`)."""

from .config import CODEC_NAME, CodecConfig
from .encoding import zarr_encoding
from .zarr2 import TEC

__all__ = ["CODEC_NAME", "TEC", "CodecConfig", "zarr_encoding"]
