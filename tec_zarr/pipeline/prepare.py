"""A chunk checked and made ready for the encoder: validated, flattened to images, normalized, padded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..bitstream.chunk import DTYPE_CODES, below_saturated, saturated_value
from ..errors import InvalidInputError, UnsupportedDtypeError
from ..models import Model
from ..parsing import parse_dn_offset, parse_float_scale
from ..replication import Blocks, detect, smooth
from ..residual.bound import parse_bound

SUPPORTED_DTYPES = tuple(DTYPE_CODES)
DN_PER_REFLECTANCE = 10000.0


def parse_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.newbyteorder("=") not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(
            f"Expected one of uint16 (DN), int16 (DN) or float32 (reflectance x float_scale = DN). Got {dt} instead"
            + (": convert it, e.g. ds['name'] = ds['name'].astype('float32') (stackstac loads float64 by default)."
               if dt.kind == "f" else ".")
        )
    return dt


# Lossy chunks of float data code values x float_scale as DN: the range of the integer dtypes the models code. Beyond
# it the data are not reflectance at that scale (DN loaded as float32 read as reflectance are 10000x too large) and
# would decode to garbage: refused. Bounded and lossless chunks keep any finite value within their bound.
LOSSY_DN_RANGE = (-32768.0, 65535.0)


def check_lossy_range(images: np.ndarray, valid: np.ndarray | None, scale: float) -> None:
    """Refuse float data whose valid values x ``scale`` fall outside :data:`LOSSY_DN_RANGE`."""
    if valid is not None and not valid.any():
        return
    # min and max over the valid elements in place: no copy of them on the encoder's path
    lo = float(np.min(images, where=valid if valid is not None else True, initial=np.inf)) * scale
    hi = float(np.max(images, where=valid if valid is not None else True, initial=-np.inf)) * scale
    if LOSSY_DN_RANGE[0] <= lo and hi <= LOSSY_DN_RANGE[1]:
        return
    low, high = (v / scale for v in LOSSY_DN_RANGE)
    raise InvalidInputError(
        f"Expected float values x float_scale {scale:g} within the DN range {LOSSY_DN_RANGE[0]:g}..{LOSSY_DN_RANGE[1]:g}"
        f" (values {low:.4g}..{high:.4g}) for lossy coding. Got values from {lo / scale:.6g} to {hi / scale:.6g} "
        "instead: DN stored as float (stackstac and odc-stac load them unscaled) need float_scale=1 (tec compress "
        "--float-scale 1); other data need max_error (kept within that bound)."
    )


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
    if array.ndim == 1:  # what numcodecs filters (Delta, FixedScaleOffset, ...) hand the compressor after them
        raise InvalidInputError(
            f"Expected a chunk of shape (..., {len(model.bands)}, H, W). Got a flat array of {array.size} elements "
            "instead: a filter before TEC (Zarr format 2 filters= such as Delta) flattens the chunk; store it with "
            "filters=None, TEC codes the chunk's bands and pixels as an image."
        )
    if array.ndim < 3 or array.shape[-3] != len(model.bands):
        raise InvalidInputError(
            f"Expected a chunk of shape (..., {len(model.bands)}, H, W) with bands {' '.join(model.bands)} on axis -3. "
            f"Got shape {array.shape} instead: chunk the band axis whole, e.g. encoding chunks (1, "
            f"{len(model.bands)}, 256, 256), or use tec_zarr.zarr_encoding(ds, chunks=...)."
        )
    if 0 in array.shape:
        raise InvalidInputError(f"Expected a non-empty chunk. Got shape {array.shape} instead.")
    if dtype.kind == "f" and np.isinf(array).any():
        raise InvalidInputError("Expected finite values or NaN (missing data). Got infinity instead.")
    return array.astype(dtype.newbyteorder("="), copy=False)


def pad(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Edge-replicate (B, C, H, W) at the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    amount = (-h % multiple, -w % multiple)
    if amount != (0, 0):
        x = np.pad(x, ((0, 0), (0, 0), (0, amount[0]), (0, amount[1])), mode="edge")
    return np.ascontiguousarray(x), amount


def normalize(images: np.ndarray, model: Model, mask: np.ndarray | None, scale: float,
              blocks: tuple[Blocks, ...] | None = None, offset: int = 0) -> tuple[np.ndarray, tuple]:
    """(B, bands, H, W) data -> the encoder's normalized input, padded to the model's multiple. DN (data x
    ``scale``) are reflectance x 10000 + ``offset``."""
    reflectance = images.astype(np.float32) * np.float32(scale / DN_PER_REFLECTANCE)
    if offset:
        reflectance -= np.float32(offset / DN_PER_REFLECTANCE)
    normalized = (reflectance - model.mean[:, None, None]) / model.std[:, None, None]
    if mask is not None:  # restored from the mask: any value will do, so the cheapest to code
        fill_missing(normalized, mask)
    if blocks is not None:  # the decoder projects these bands onto their blocks: code smooth ones, not block edges
        smooth(normalized, ~mask if mask is not None else np.ones(normalized.shape, bool), blocks)
    return pad(normalized.astype(np.float32), model.multiple)


# How far (pixels) missing elements take their valid neighbours' values: past the analysis transform's reach from the
# coded latents (one latent of margin, 4 pixels, and two 5 x 5 stride-2 layers), where values no longer matter.
FILL_REACH = 12


def fill_missing(x: np.ndarray, missing: np.ndarray) -> None:
    """In place: missing elements near valid ones take the mean of their filled 4-neighbours, ring by ring, so the
    analysis sees smooth continuations instead of edges it would pay for; the rest the band mean (0)."""
    filled = ~missing
    x[missing] = 0.0  # unfilled elements then add nothing to their neighbours' sums
    if not filled.any():
        return
    frame = ((0, 0),) * (x.ndim - 2) + ((1, 1), (1, 1))
    for _ in range(FILL_REACH):
        todo = ~filled
        if not todo.any():
            break
        xs, fs = np.pad(x, frame), np.pad(filled.astype(np.float32), frame)  # no neighbour across the border
        neighbours = ((slice(1, -1), slice(None, -2)), (slice(1, -1), slice(2, None)),
                      (slice(None, -2), slice(1, -1)), (slice(2, None), slice(1, -1)))  # left, right, up, down
        total = sum(xs[(..., *n)] for n in neighbours)
        count = sum(fs[(..., *n)] for n in neighbours)
        grow = todo & (count > 0)
        x[grow] = total[grow] / count[grow]
        filled |= grow


# Latents are left uncoded only where their block and this many latents around it hold nothing but missing data, so
# the synthesis of every valid pixel near the edge of missing data still gets the latents it was encoded with.
SKIP_MARGIN = 1


def latent_skip(missing: np.ndarray | None, pad: tuple[int, int], stride: int) -> np.ndarray | None:
    """(B, h, w) True where a latent need not be coded: its ``stride`` x ``stride`` block, and the blocks within
    SKIP_MARGIN of it, are missing in every band (nodata, NaN or edge padding). None where no latent is skipped.
    Encoder and decoder both compute it from the chunk's masks."""
    if missing is None:
        return None
    blocks = np.pad(missing.all(axis=1), ((0, 0), (0, pad[0]), (0, pad[1])), constant_values=True)
    b, h, w = blocks.shape
    empty = blocks.reshape(b, h // stride, stride, w // stride, stride).all(axis=(2, 4))
    keep = ~empty
    for _ in range(SKIP_MARGIN):  # grow the coded area by one latent in all 8 directions
        grown = np.pad(keep, ((0, 0), (1, 1), (1, 1)))
        keep = np.zeros_like(keep)
        for dy in range(3):
            for dx in range(3):
                keep |= grown[:, dy : dy + keep.shape[1], dx : dx + keep.shape[2]]
    skip = ~keep
    return skip if skip.any() else None


def union(*masks: np.ndarray | None) -> np.ndarray | None:
    """Elements set in any of the masks that are present (None: none is)."""
    present = [m for m in masks if m is not None]
    return np.logical_or.reduce(present) if present else None


@dataclass(frozen=True, eq=False)
class PreparedChunk:
    """One chunk ready to code: ``images`` (B, bands, H, W) in native order with NaN replaced by 0, its nodata
    ``mask`` and ``nan`` mask (None: no such element), ``scale`` (data units -> DN), the edge ``pad``, the
    encoder's ``normalized`` input and ``offset``, the DN of reflectance 0."""

    array: np.ndarray
    images: np.ndarray
    mask: np.ndarray | None
    nan: np.ndarray | None
    scale: float
    pad: tuple[int, int]
    normalized: np.ndarray
    skip: np.ndarray | None = None  # (B, h, w): latents not coded (see latent_skip)
    blocks: tuple[Blocks, ...] | None = None  # per band, where some band is made of k x k blocks (replication)
    offset: int = 0
    saturated: np.ndarray | None = None  # elements holding the saturated DN 65535 (None: none does)
    saturation_kept: bool = False  # decoders keep other elements off the saturated value (chunk extension tag 5)

    @property
    def missing(self) -> np.ndarray | None:
        """Elements the codec stores as masks, not pixels: nodata, NaN and saturated."""
        return union(self.mask, self.nan, self.saturated)

    @property
    def valid(self) -> np.ndarray:
        missing = self.missing
        return ~missing if missing is not None else np.ones(self.images.shape, bool)


def prepare(array, model: Model, quality: int, nodata, float_scale: float, max_error, psnr,
            dn_offset: int = 0) -> PreparedChunk:
    """One chunk checked, flattened to (B, bands, H, W) images and normalized for the encoder."""
    array = validate(array, model)
    offset = parse_dn_offset(dn_offset)
    dtype = array.dtype
    if not 0 <= quality < model.qualities:
        raise InvalidInputError(f"Expected a quality in 0..{model.qualities - 1}. Got {quality} instead.")
    if max_error is not None and psnr is not None:
        raise InvalidInputError(f"Expected max_error or psnr, not both. Got {max_error=}, {psnr=} instead.")
    if max_error is not None:
        parse_bound(max_error, dtype)
    check_nodata(nodata, dtype)
    scale = parse_float_scale(float_scale) if dtype.kind == "f" else 1.0
    images = array.reshape((-1,) + array.shape[-3:])
    # float32 NaN is missing data (xarray's fill value and mask): stored as a mask, read back as NaN.
    nan = np.isnan(images) if dtype.kind == "f" else None
    if nan is not None and nan.any():
        images = np.where(nan, np.float32(0), images)
    else:
        nan = None
    mask = (images == nodata) if nodata is not None else None
    if mask is not None and nan is not None:
        mask &= ~nan
    if mask is not None and not mask.any():
        mask = None
    saturated = saturated_elements(images, nodata, scale)
    missing = union(mask, nan, saturated)
    if dtype.kind == "f" and max_error is None:
        check_lossy_range(images, None if missing is None else ~missing, scale)
    blocks = detect(images, ~missing if missing is not None else np.ones(images.shape, bool))
    normalized, amount = normalize(images, model, missing, scale, blocks, offset)
    return PreparedChunk(array=array, images=images, mask=mask, nan=nan, scale=scale, pad=amount,
                         normalized=normalized, skip=latent_skip(missing, amount, model.latent_stride), blocks=blocks,
                         offset=offset, saturated=saturated,
                         saturation_kept=keeps_saturation(images, missing, nodata, scale, saturated))


# DN from which a chunk's decoded values may reach 65535: chunks with saturated pixels or valid ones this bright
# (clouds, snow; ordinary reflectance stays far below) are marked so that nothing else decodes to 65535. Other
# chunks keep the layout older readers read.
SATURATION_GUARD_DN = 20000


def keeps_saturation(images: np.ndarray, missing: np.ndarray | None, nodata, scale: float,
                     saturated: np.ndarray | None) -> bool:
    value = saturated_value(images.dtype, scale)
    if value is None:
        return False  # int16 never reaches it
    if nodata is not None and np.asarray(nodata).astype(images.dtype) in (value, below_saturated(images.dtype, scale)):
        return False  # as nodata no valid element decodes to it; one below, the move would make valid ones nodata
    valid = images if missing is None else images[~missing]
    if not valid.size or (images.dtype.kind == "f" and valid.max() > value):
        return False  # float32 values above it: the move would not go towards them, nor keep their bound
    return saturated is not None or float(valid.max()) * scale >= SATURATION_GUARD_DN


def saturated_elements(images: np.ndarray, nodata, scale: float = 1.0) -> np.ndarray | None:
    """Elements holding Sentinel-2's SATURATED DN 65535 (uint16 65535, float32 65535 / ``scale``), unless it is
    the nodata value: stored exactly as a mask and coded as missing, since one such spike among reflectances costs
    its whole neighbourhood (the missing benchmark's saturated rows)."""
    value = saturated_value(images.dtype, scale)
    if value is None or (nodata is not None and np.asarray(nodata).astype(images.dtype) == value):
        return None
    saturated = images == value
    return saturated if saturated.any() else None
