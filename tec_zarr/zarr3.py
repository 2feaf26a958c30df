"""``tec_zarr.zarr3.TEC``, as users import it: the zarr-python 3 serializer of :mod:`tec_zarr.codec.zarr3`."""

from .codec.zarr3 import TEC

__all__ = ["TEC"]
