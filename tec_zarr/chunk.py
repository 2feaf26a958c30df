"""Encode and decode chunks: numpy in, TEC bitstream out, and back. Both codecs call only this module.

:func:`encode_chunks` / :func:`decode_chunks` take several chunks and run the networks on stacks of them;
the bytes are those of :func:`encode_chunk` / :func:`decode_chunk` on each chunk alone (see _stacks_exactly).

A chunk is a batch of (bands, H, W) images: any leading axes are flattened into the batch. Pixels equal to the
nodata value are stored as a lossless mask and come back exactly; no other pixel decodes to the nodata value.

``max_error=E`` adds a residual section (:mod:`tec_zarr.bounded`): every element then decodes within E of its
value (E = 0: exactly). ``psnr=P`` picks, per chunk, the lowest quality whose decoded chunk reaches P dB
(:func:`tec_zarr.metrics.psnr` over the whole chunk, in DN); where no level does, the level with the highest
PSNR, with a :class:`PsnrTargetWarning`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable

import numpy as np

from . import bitstream, bounded, context, entropy, hyperprior, metrics, runtime
from .errors import (
    CorruptChunkError,
    InvalidInputError,
    ModelMismatchError,
    TecZarrError,
    UnsupportedDtypeError,
)
from .models import Model, load_model

SUPPORTED_DTYPES = tuple(bitstream.DTYPE_CODES)
DN_PER_REFLECTANCE = 10000.0
# Images per onnxruntime call when chunks are encoded or decoded together (encode_chunks, decode_chunks); larger
# stacks are split. Bounds memory: a 12x256x256 float32 input is 3 MB and the decoder's widest activations about
# 64x128x128 float32 = 4 MB per image, so one call holds a few tens of MB.
MAX_BATCH_IMAGES = 8


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
    return encode_chunks(
        [array], model=model, quality=quality, nodata=nodata, float_scale=float_scale, max_error=max_error, psnr=psnr
    )[0]


def encode_chunks(
    arrays: Iterable[np.ndarray],
    *,
    model: str | Model,
    quality: int,
    nodata: float | None = 0,
    float_scale: float = 1e4,
    max_error: float | None = None,
    psnr: float | None = None,
) -> list[bytes]:
    """:func:`encode_chunk` of each array, byte for byte, with one encoder run per stack of same-sized images.

    Every chunk's images (leading axes flattened) whose padded shapes match are stacked into onnxruntime calls
    of at most :data:`MAX_BATCH_IMAGES` images; quantization, masks, residuals (``max_error``), the ``psnr``
    search and entropy coding stay per chunk. Memory grows with the chunks passed: pass a codec pipeline's batch.
    """
    model = load_model(model) if isinstance(model, str) else model
    # Every mode stacks: a nodata mask only changes the encoder's input, and max_error / psnr act on the latent.
    chunks = [_prepare(a, model, quality, nodata, float_scale, max_error, psnr) for a in arrays]
    latents = _run_stacked([(model.encoder_sha256, model.encoder_onnx, "x", c.pop("normalized")) for c in chunks],
                           exact=True)
    out = []
    for c, y in zip(chunks, latents, strict=True):
        at = functools.partial(_code, model, c, y, nodata, max_error)
        if psnr is None:
            out.append(at(quality))
        else:
            out.append(_lowest_rate_reaching(at, c["array"], psnr, model.tables.qualities, c["scale"]))
    return out


def _code(model: Model, c: dict, y: np.ndarray, nodata, max_error, q: int) -> bytes:
    """A prepared chunk's bitstream at quality ``q``, from its encoder output ``y``."""
    symbols = np.rint(y * model.gain[q][None, :, None, None]).astype(np.int32)
    res = None
    if max_error is not None:
        valid = ~c["mask"] if c["mask"] is not None else np.ones(c["images"].shape, bool)
        res = bounded.encode(c["images"], valid, symbols, q, model, c["scale"], max_error, nodata)
    payload = _entropy_encode(model, y, symbols, q)
    return _pack(model, q, c["array"].shape, c["array"].dtype, c["pad"], symbols, nodata, c["scale"], c["mask"], res,
                 payload)


def _entropy_encode(model: Model, y: np.ndarray, symbols: np.ndarray, q: int) -> bytes:
    """The latent payload: the base tables per channel, or the hyperprior or context model (z chosen from ``y``)."""
    if model.entropy_model == "factorized":
        return entropy.encode(symbols, q, model.tables)
    if model.entropy_model == "context":
        return context.encode(model, y, symbols, q)
    return hyperprior.encode(model, y, symbols, q)


def _entropy_decode(model: Model, payload: bytes, quality: int, shape: tuple[int, int, int, int]) -> np.ndarray:
    if model.entropy_model == "factorized":
        return entropy.decode(payload, quality, shape, model.tables)
    if model.entropy_model == "context":
        return context.decode(model, payload, quality, shape)
    return hyperprior.decode(model, payload, quality, shape)


def _prepare(array, model: Model, quality, nodata, float_scale, max_error, psnr) -> dict:
    """One chunk checked, flattened to (B, bands, H, W) images and normalized for the encoder."""
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
    return {"array": array, "images": images, "mask": mask, "scale": scale, "pad": pad, "normalized": normalized}


def _stacks_exactly(sha256: str, graph: bytes) -> bool:
    """Whether a graph's outputs for an image are the same bits alone and inside a stack of images.

    Measured with onnxruntime 1.32 on CPU (intra-op threads 1, 2 and 4; the bundled sample at 4x4 to 260x260,
    batches of 2, 3 and 8 at several positions): encoder and decoder outputs were bit-identical every time
    (the CPU kernels loop over the batch axis). GPU libraries may pick kernels by batch size,
    and that is unverified, so there the encoder keeps one call per chunk (the bitstream must not depend on
    how chunks were batched); decoded pixels may differ by float rounding between machines anyway.
    """
    return list(runtime.session(sha256, graph).get_providers()) == ["CPUExecutionProvider"]


def _run_stacked(jobs: list[tuple[str, bytes, str, np.ndarray]], *, exact: bool) -> list[np.ndarray]:
    """Run each job's graph on its (B, ...) input, stacking inputs of one graph and shape into calls of at most
    MAX_BATCH_IMAGES images. ``exact``: only where stacking changes no bit (else one call per job)."""
    outputs: list[list[np.ndarray]] = [[] for _ in jobs]
    groups: dict[tuple, list[int]] = {}
    for i, (sha256, graph, name, x) in enumerate(jobs):
        if exact and not _stacks_exactly(sha256, graph):
            outputs[i].append(runtime.run(sha256, graph, {name: x}))
        else:
            groups.setdefault((sha256, name, x.shape[1:], x.dtype.str), []).append(i)
    for members in groups.values():
        pending: list[tuple[int, int, int]] = []  # (job, first image, end) of the next call
        count = 0
        for i in members:
            n, start = len(jobs[i][3]), 0
            while start < n:
                take = min(n - start, MAX_BATCH_IMAGES - count)
                pending.append((i, start, start + take))
                count, start = count + take, start + take
                if count == MAX_BATCH_IMAGES:
                    _run_call(jobs, pending, outputs)
                    pending, count = [], 0
        if pending:
            _run_call(jobs, pending, outputs)
    return [o[0] if len(o) == 1 else np.concatenate(o) for o in outputs]


def _run_call(jobs, pending: list[tuple[int, int, int]], outputs: list[list[np.ndarray]]) -> None:
    """One onnxruntime call on images ``start:end`` of each pending job; each job's slice of the output."""
    sha256, graph, name, _ = jobs[pending[0][0]]
    parts = [jobs[i][3][start:end] for i, start, end in pending]
    y = runtime.run(sha256, graph, {name: parts[0] if len(parts) == 1 else np.concatenate(parts)})
    offset = 0
    for i, start, end in pending:
        outputs[i].append(y[offset : offset + end - start])
        offset += end - start


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
        stacklevel=5,  # encode_chunks -> encode_chunk -> a codec's encode -> its caller
    )
    return best[1]


def _pack(model, quality, shape, dtype, pad, symbols, nodata, scale, mask, res, payload: bytes) -> bytes:
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
    return decode_chunks([buf])[0]


def decode_chunks(buffers: Iterable) -> list[np.ndarray]:
    """:func:`decode_chunk` of each buffer, with one decoder run per stack of same-sized latents.

    Every chunk is parsed and checked before the network runs; the first failure is raised (the package's
    :class:`~tec_zarr.errors.BitstreamError` subclasses, noted with the chunk's position) and no result is
    returned for any chunk. Residual (``max_error``) chunks use the integer synthesis, one chunk at a time.
    """
    buffers = list(buffers)
    parsed = [_located(i, len(buffers), _parse, buf) for i, buf in enumerate(buffers)]
    lossy = [i for i, p in enumerate(parsed) if p["header"].residual is None]
    x_hats = _run_stacked(
        [(parsed[i]["model"].decoder_sha256, parsed[i]["model"].decoder_onnx, "y_hat", parsed[i].pop("y_hat"))
         for i in lossy],
        exact=False,
    )
    x_hat_of = dict(zip(lossy, x_hats))
    return [_located(i, len(buffers), _finish_decode, p, x_hat_of.get(i)) for i, p in enumerate(parsed)]


def _located(i: int, n: int, func, *args):
    try:
        return func(*args)
    except TecZarrError as e:
        if n > 1:
            e.add_note(f"(chunk {i} of a batch of {n})")
        raise


def _parse(buf) -> dict:
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
        or (lh * model.latent_stride, lw * model.latent_stride) != (h + header.pad[0], w + header.pad[1])
        or m != model.tables.channels
    ):
        raise CorruptChunkError(f"Expected a header consistent with model {model.name}. Got {header} instead.")
    batch = header.batch
    symbols = _entropy_decode(model, payload, header.quality, (batch, m, lh, lw))
    mask = bitstream.unpack_mask(mask_bytes, (batch, c, h, w)) if mask_bytes is not None else None
    if mask is not None and header.nodata is None:
        raise CorruptChunkError("Expected a nodata value with a nodata mask. Got a mask alone instead.")
    parsed = {"header": header, "model": model, "mask": mask}
    if header.residual is not None:
        parsed["symbols"] = symbols
    else:
        y_hat = symbols.astype(np.float32) * model.inv_gain[header.quality][None, :, None, None]
        parsed["y_hat"] = np.ascontiguousarray(y_hat)
    return parsed


def _finish_decode(parsed: dict, x_hat: np.ndarray | None) -> np.ndarray:
    """A parsed chunk's pixels, from the decoder's output ``x_hat`` (lossy) or its residual section."""
    header, model, mask = parsed["header"], parsed["model"], parsed["mask"]
    batch, (c, h, w) = header.batch, header.shape[-3:]
    if header.residual is not None:
        valid = ~mask if mask is not None else np.ones((batch, c, h, w), bool)
        result = bounded.decode(header, parsed["symbols"], model, valid)
    else:
        # Denormalize and scale to data units in one multiply-add per element, in place.
        units = np.float32(DN_PER_REFLECTANCE / header.float_scale)
        values = np.multiply(x_hat[:, :, :h, :w], (model.std * units)[:, None, None])
        values += (model.mean * units)[:, None, None]
        result = _to_dtype(values, header.dtype)
    return _apply_nodata(result, header.nodata, mask).reshape(header.shape)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    np.rint(values, out=values)
    return np.clip(values, info.min, info.max, out=values).astype(dtype)


def _apply_nodata(result: np.ndarray, nodata: float | None, mask: np.ndarray | None) -> np.ndarray:
    """No valid element reads back as nodata; the masked elements are exactly nodata."""
    result = bounded.avoid_nodata(result, nodata)
    if mask is not None:
        result[mask] = np.asarray(nodata).astype(result.dtype)
    return result
