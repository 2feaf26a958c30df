"""Encode and decode one chunk: numpy in, TEC bitstream out, and back. Both codecs call only this module.

A chunk is a batch of (bands, H, W) images: any leading axes are flattened into the batch. Pixels equal to the
nodata value are stored as a lossless mask and come back exactly; no other pixel decodes to the nodata value.

``max_error=E`` adds a residual section (:mod:`tec_zarr.bounded`): every element then decodes within E of its
value (E = 0: exactly). ``psnr=P`` picks, per chunk, the lowest quality whose decoded chunk reaches P dB
(:func:`tec_zarr.metrics.psnr` over the whole chunk, in DN); where no level does, the level with the highest
PSNR, with a :class:`PsnrTargetWarning`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import bitstream, bounded, entropy, metrics, runtime
from .errors import (
    CorruptChunkError,
    InvalidInputError,
    ModelMismatchError,
    UnsupportedDtypeError,
)
from .models import Model, load_model

SUPPORTED_DTYPES = tuple(bitstream.DTYPE_CODES)
DN_PER_REFLECTANCE = 10000.0


class PsnrTargetWarning(UserWarning):
    """No quality level reaches a chunk's ``psnr=`` target: the chunk was written at its best level instead."""


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


def _validate(array: np.ndarray, model: Model) -> np.ndarray:
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


def _pad(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = x.shape[-2:]
    pad = (-h % multiple, -w % multiple)
    if pad != (0, 0):
        x = np.pad(x, ((0, 0), (0, 0), (0, pad[0]), (0, pad[1])), mode="edge")
    return np.ascontiguousarray(x), pad


def normalize(images: np.ndarray, model: Model, mask: np.ndarray | None, scale: float) -> tuple[np.ndarray, tuple]:
    """(B, bands, H, W) data -> the encoder's normalized input, padded to the model's multiple."""
    reflectance = images.astype(np.float32) * np.float32(scale / DN_PER_REFLECTANCE)
    normalized = (reflectance - model.mean[:, None, None]) / model.std[:, None, None]
    if mask is not None:
        normalized[mask] = 0.0  # nodata becomes the band mean: cheap to code, and restored from the mask
    return _pad(normalized.astype(np.float32), model.multiple)


def encode_chunk(
    array: np.ndarray,
    *,
    model: str | Model,
    quality: int,
    nodata: float | None = 0,
    float_scale: float = 1e4,
    max_error: float | None = None,
    psnr: float | None = None,
) -> bytes:
    model = load_model(model) if isinstance(model, str) else model
    array = _validate(array, model)
    dtype = array.dtype
    if not 0 <= quality < model.tables.qualities:
        raise InvalidInputError(f"Expected a quality in 0..{model.tables.qualities - 1}. Got {quality} instead.")
    if max_error is not None and psnr is not None:
        raise InvalidInputError(f"Expected max_error or psnr, not both. Got {max_error=}, {psnr=} instead.")
    if max_error is not None:
        bounded.parse_bound(max_error, dtype)
    check_nodata(nodata, dtype)
    scale = float(float_scale) if dtype.kind == "f" else 1.0
    images = array.reshape((-1,) + array.shape[-3:])
    mask = (images == nodata) if nodata is not None else None
    if mask is not None and not mask.any():
        mask = None

    normalized, pad = normalize(images, model, mask, scale)
    y = runtime.run(model.encoder_sha256, model.encoder_onnx, {"x": normalized})

    def at(q: int) -> bytes:
        symbols = np.rint(y * model.gain[q][None, :, None, None]).astype(np.int32)
        res = None
        if max_error is not None:
            valid = ~mask if mask is not None else np.ones(images.shape, bool)
            res = bounded.encode(images, valid, symbols, q, model, scale, max_error, nodata)
        return _pack(model, q, array.shape, dtype, pad, symbols, nodata, scale, mask, res)

    if psnr is None:
        return at(quality)
    return _lowest_rate_reaching(at, array, psnr, model.tables.qualities, scale)


def _lowest_rate_reaching(at, array: np.ndarray, target: float, qualities: int, scale: float) -> bytes:
    """The first level (lowest rate) whose decoded chunk reaches ``target`` dB, else the best level seen."""
    best = None
    for q in range(qualities):
        data = at(q)
        reached = metrics.psnr(array, decode_chunk(data), scale=scale)
        if reached >= target:
            return data
        if best is None or reached > best[0]:
            best = (reached, data)
    warnings.warn(
        f"Expected a quality level reaching {target} dB on this chunk. Got at most {best[0]:.2f} dB instead: "
        "wrote the chunk at its best level (use max_error= for a guaranteed bound).",
        PsnrTargetWarning,
        stacklevel=4,
    )
    return best[1]


def _pack(model, quality, shape, dtype, pad, symbols, nodata, scale, mask, res) -> bytes:
    payload = entropy.encode(symbols, quality, model.tables)
    header = bitstream.ChunkHeader(
        model=model.name,
        model_hash=bytes.fromhex(model.sha256),
        quality=quality,
        dtype=dtype,
        shape=tuple(shape),
        pad=pad,
        latent=tuple(symbols.shape[1:]),
        nodata=None if nodata is None else float(nodata),
        float_scale=scale,
        residual=res,
    )
    return bitstream.pack(header, bitstream.pack_mask(mask) if mask is not None else None, payload)


def read_header(buf) -> bitstream.ChunkHeader:
    return bitstream.unpack(buf)[0]


def decode_chunk(buf) -> np.ndarray:
    header, mask_bytes, payload = bitstream.unpack(buf)
    model = load_model(header.model)
    if bytes.fromhex(model.sha256)[: bitstream.HASH_PREFIX_BYTES] != header.model_hash:
        raise ModelMismatchError(
            f"Expected a chunk written by the installed {model.name} (sha256 {model.sha256[:16]}...). "
            f"Got one written by weights {header.model_hash.hex()}... instead: install the tec_zarr version that wrote it."
        )
    c, h, w = header.shape[-3:]
    m, lh, lw = header.latent
    if (
        c != len(model.bands)
        or header.pad != (-h % model.multiple, -w % model.multiple)
        or (lh * model.multiple, lw * model.multiple) != (h + header.pad[0], w + header.pad[1])
        or m != model.tables.channels
    ):
        raise CorruptChunkError(f"Expected a header consistent with model {model.name}. Got {header} instead.")
    batch = header.batch
    symbols = entropy.decode(payload, header.quality, (batch, m, lh, lw), model.tables)
    mask = bitstream.unpack_mask(mask_bytes, (batch, c, h, w)) if mask_bytes is not None else None
    if mask is not None and header.nodata is None:
        raise CorruptChunkError("Expected a nodata value with a nodata mask. Got a mask alone instead.")
    if header.residual is not None:
        valid = ~mask if mask is not None else np.ones((batch, c, h, w), bool)
        result = bounded.decode(header, symbols, model, valid)
    else:
        y_hat = symbols.astype(np.float32) * model.inv_gain[header.quality][None, :, None, None]
        x_hat = runtime.run(model.decoder_sha256, model.decoder_onnx, {"y_hat": np.ascontiguousarray(y_hat)})
        x_hat = x_hat[:, :, :h, :w] * model.std[:, None, None] + model.mean[:, None, None]
        result = _to_dtype(x_hat * np.float32(DN_PER_REFLECTANCE / header.float_scale), header.dtype)
    return _apply_nodata(result, header.nodata, mask).reshape(header.shape)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def _apply_nodata(result: np.ndarray, nodata: float | None, mask: np.ndarray | None) -> np.ndarray:
    """No valid element reads back as nodata; the masked elements are exactly nodata."""
    result = bounded.avoid_nodata(result, nodata)
    if mask is not None:
        result[mask] = np.asarray(nodata).astype(result.dtype)
    return result
