"""A chunk checked and made ready for the encoder: validated, flattened to images, normalized, padded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..bitstream.chunk import DTYPE_CODES
from ..errors import InvalidInputError, UnsupportedDtypeError
from ..models import Model
from ..residual.bound import parse_bound

SUPPORTED_DTYPES = tuple(DTYPE_CODES)
DN_PER_REFLECTANCE = 10000.0


def parse_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.newbyteorder("=") not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(
            f"Expected one of uint16 (DN), int16 (DN) or float32 (reflectance x float_scale = DN). Got {dt} instead."
        )
    return dt


def check_nodata(nodata: float | None, dtype: np.dtype) -> None:
    if nodata is None:
        return
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
            raise InvalidInputError(f"Expected a nodata value representable as {dtype}. Got {nodata!r} instead.")
    elif not math.isfinite(nodata):
        raise InvalidInputError(f"Expected a finite nodata value for {dtype}. Got {nodata!r} instead.")


def validate(array: np.ndarray, model: Model) -> np.ndarray:
    """The chunk in native byte order, or an :class:`InvalidInputError` naming what is wrong with it."""
    if not isinstance(array, np.ndarray):
        raise InvalidInputError(f"Expected a numpy array. Got {type(array).__name__} instead.")
    dtype = parse_dtype(array.dtype)
    if not array.flags.c_contiguous:
        raise InvalidInputError("Expected a C-contiguous array. Got a non-C-order array instead (use np.ascontiguousarray).")
    if array.ndim < 3 or array.shape[-3] != len(model.bands):
        raise InvalidInputError(
            f"Expected a chunk of shape (..., {len(model.bands)}, H, W) with bands {' '.join(model.bands)} on axis -3. "
            f"Got shape {array.shape} instead: chunk the band axis whole, e.g. encoding chunks (1, "
            f"{len(model.bands)}, 256, 256), or use tec_zarr.zarr_encoding(ds, chunks=...)."
        )
    if 0 in array.shape:
        raise InvalidInputError(f"Expected a non-empty chunk. Got shape {array.shape} instead.")
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError("Expected finite values. Got NaN or infinity instead (mark missing data with nodata).")
    return array.astype(dtype.newbyteorder("="), copy=False)


def pad(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Edge-replicate (B, C, H, W) at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    amount = (-h % multiple, -w % multiple)
    if amount != (0, 0):
        x = np.pad(x, ((0, 0), (0, 0), (0, amount[0]), (0, amount[1])), mode="edge")
    return np.ascontiguousarray(x), amount


def normalize(images: np.ndarray, model: Model, mask: np.ndarray | None, scale: float) -> tuple[np.ndarray, tuple]:
    """(B, bands, H, W) data -> the encoder's normalized input, padded to the model's multiple."""
    reflectance = images.astype(np.float32) * np.float32(scale / DN_PER_REFLECTANCE)
    normalized = (reflectance - model.mean[:, None, None]) / model.std[:, None, None]
    if mask is not None:
        normalized[mask] = 0.0  # nodata becomes the band mean: cheap to code, and restored from the mask
    return pad(normalized.astype(np.float32), model.multiple)


@dataclass(frozen=True, eq=False)
class PreparedChunk:
    """One chunk ready to code: ``images`` (B, bands, H, W) in native order, its nodata ``mask`` (None: no nodata
    element), ``scale`` (data units -> DN), the edge ``pad`` and the encoder's ``normalized`` input."""

    array: np.ndarray
    images: np.ndarray
    mask: np.ndarray | None
    scale: float
    pad: tuple[int, int]
    normalized: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return ~self.mask if self.mask is not None else np.ones(self.images.shape, bool)


def prepare(array, model: Model, quality: int, nodata, float_scale: float, max_error, psnr) -> PreparedChunk:
    """One chunk checked, flattened to (B, bands, H, W) images and normalized for the encoder."""
    array = validate(array, model)
    dtype = array.dtype
    if not 0 <= quality < model.qualities:
        raise InvalidInputError(f"Expected a quality in 0..{model.qualities - 1}. Got {quality} instead.")
    if max_error is not None and psnr is not None:
        raise InvalidInputError(f"Expected max_error or psnr, not both. Got {max_error=}, {psnr=} instead.")
    if max_error is not None:
        parse_bound(max_error, dtype)
    check_nodata(nodata, dtype)
    scale = float(float_scale) if dtype.kind == "f" else 1.0
    images = array.reshape((-1,) + array.shape[-3:])
    mask = (images == nodata) if nodata is not None else None
    if mask is not None and not mask.any():
        mask = None
    normalized, amount = normalize(images, model, mask, scale)
    return PreparedChunk(array=array, images=images, mask=mask, scale=scale, pad=amount, normalized=normalized)
