"""Encode chunks: numpy in, TEC chunk bitstreams out.

A chunk is a batch of (bands, H, W) images: any leading axes are flattened into the batch. Pixels equal to the
nodata value are stored as a lossless mask and come back exactly; no other pixel decodes to the nodata value.

``max_error=E`` adds a residual section (:mod:`tec_zarr.residual.bound`): every element then decodes within E of
its value (E = 0: exactly). ``psnr=P`` picks, per chunk (per part of a chunk in parts), the lowest quality whose
decoded chunk reaches P dB (:func:`tec_zarr.metrics.psnr` over the chunk's valid elements, in DN; parts that all reach it
make a chunk that does); where no level does, the level with the highest PSNR, with a
:class:`~tec_zarr.errors.PsnrTargetWarning`.

Chunks larger than :data:`PART_SIDE` along H or W, or than :data:`PART_ELEMENTS` in all, are coded in parts
(:mod:`tec_zarr.bitstream.parts`), one part at a time: memory stays that of a chunk of one part, whatever the
chunk's size.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

import numpy as np

from .. import metrics
from ..bitstream.chunk import (
    MAX_ELEMENTS,
    ChunkHeader,
    ResidualSection,
    channel_section,
    element_count,
    pack,
    pack_mask,
)
from ..bitstream.parts import PartsLayout, pack_parts
from ..entropy.base import channel_argument
from ..errors import InvalidInputError, PsnrTargetWarning
from ..models import Model, load_model
from ..parsing import parse_refine
from ..residual import bound
from ..runtime.batching import run_stacked
from .decode import decode_chunk
from .prepare import PreparedChunk, prepare, validate
from .refine import check_refinable, objective, search


def encode_chunk(
    array: np.ndarray,
    *,
    model: str | Model,
    quality: int,
    nodata: float | None = 0,
    float_scale: float = 1e4,
    max_error: float | None = None,
    psnr: float | None = None,
    dn_offset: int = 0,
    refine: int = 0,
) -> bytes:
    return encode_chunks(
        [array], model=model, quality=quality, nodata=nodata, float_scale=float_scale, max_error=max_error, psnr=psnr,
        dn_offset=dn_offset, refine=refine,
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
    dn_offset: int = 0,
    refine: int = 0,
) -> list[bytes]:
    """:func:`encode_chunk` of each array, byte for byte, with one encoder run per stack of same-sized images.

    Every chunk's images (leading axes flattened) whose padded shapes match are stacked into onnxruntime calls
    of at most :data:`~tec_zarr.runtime.batching.MAX_BATCH_IMAGES` images; quantization, masks, residuals
    (``max_error``), the ``psnr`` search and entropy coding stay per chunk. Memory grows with the chunks passed:
    pass a codec pipeline's batch. ``dn_offset``: the DN of reflectance 0 (Sentinel-2 from processing baseline
    04.00 on: 1000), taken off before the models see the data and added back when decoding. ``refine``: rounds
    of the symbol search (:mod:`.refine`; lossy chunks: not with ``max_error``), 0 for rounded symbols.
    """
    model = load_model(model) if isinstance(model, str) else model
    refine = parse_refine(refine, max_error)
    if refine:
        check_refinable(model)
    arrays = list(arrays)
    layouts = [parts_layout(a) for a in arrays]
    whole = iter(_encode_whole([a for a, layout in zip(arrays, layouts) if layout is None], model, quality, nodata,
                               float_scale, max_error, psnr, dn_offset, refine))
    out = []
    for a, layout in zip(arrays, layouts):  # a loop, not a comprehension: warnings' stack levels count frames
        out.append(next(whole) if layout is None else _encode_in_parts(a, layout, model, quality, nodata, float_scale,
                                                                       max_error, psnr, dn_offset, refine))
    return out


# Chunks are coded whole up to this many rows and columns and elements, in parts of at most that above (memory:
# tec-ctx needs about 2 GB to encode and 1.4 GB to decode a 12 x 1024 x 1024 uint16 chunk, benchmarks/memory.py).
# Chunks within both, the sizes users store (zarr_encoding's default is at most 512 a side), are coded whole.
PART_SIDE = 1024
PART_ELEMENTS = 12 * 1024 * 1024
PART_MULTIPLE = 16  # part sides are multiples of it (but the last): whole latents, whole hyperprior cells


def parts_layout(array) -> PartsLayout | None:
    """How a chunk is cut into parts: about equal sides of at most PART_SIDE, as many images per part as fit in
    PART_ELEMENTS; None where it is coded whole (and for arrays the encoder refuses anyway)."""
    shape = tuple(getattr(array, "shape", ()))
    if len(shape) < 3 or min(shape) < 1 or getattr(array, "dtype", None) is None:
        return None
    bands, h, w = shape[-3:]
    if h <= PART_SIDE and w <= PART_SIDE and element_count(shape) <= PART_ELEMENTS:
        return None
    ph, pw = _part_side(h), _part_side(w)
    pb = max(1, PART_ELEMENTS // (bands * ph * pw))
    return PartsLayout(shape, np.dtype(array.dtype), (min(pb, element_count(shape[:-3])), ph, pw))


def _part_side(size: int) -> int:
    """``size`` itself up to PART_SIDE, else the side of about equal parts, rounded up to PART_MULTIPLE."""
    if size <= PART_SIDE:
        return size
    return _ceil_div(_ceil_div(size, _ceil_div(size, PART_SIDE)), PART_MULTIPLE) * PART_MULTIPLE


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _encode_in_parts(array, layout: PartsLayout, model: Model, quality: int, nodata, float_scale: float, max_error,
                     psnr, dn_offset: int, refine: int) -> bytes:
    """A chunk in parts, coded one part at a time; a ``psnr`` target some parts miss is one warning, not one each."""
    if element_count(layout.shape) > MAX_ELEMENTS:  # what decoders take (bitstream.chunk.MAX_ELEMENTS)
        raise InvalidInputError(f"Expected at most {MAX_ELEMENTS} elements in a chunk. Got shape {layout.shape} "
                                "instead: chunk it smaller (e.g. one date of 1024 x 1024 pixels).")
    images = validate(array, model).reshape(layout.images)  # refused as the whole chunk, not as a part
    parts, missed, seen = [], [], set()
    for sb, sy, sx in layout.slices():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PsnrTargetWarning)
            parts.append(_encode_whole([np.ascontiguousarray(images[sb, :, sy, sx])], model, quality, nodata,
                                       float_scale, max_error, psnr, dn_offset, refine)[0])
        for w in caught:
            if issubclass(w.category, PsnrTargetWarning):
                missed.append(w)
            elif (w.category, str(w.message)) not in seen:  # once a chunk, not once a part
                seen.add((w.category, str(w.message)))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missed:
        warnings.warn(f"Expected a quality level reaching {psnr} dB on every part of this chunk in parts. Got "
                      f"{len(missed)} of {layout.count} parts short of it instead, each written at its best level "
                      "(use max_error= for a guaranteed bound).", PsnrTargetWarning,
                      stacklevel=5)  # _encode_in_parts -> encode_chunks -> encode_chunk -> a codec's encode -> caller
    return pack_parts(layout, parts)


def _encode_whole(arrays: list, model: Model, quality: int, nodata, float_scale: float, max_error, psnr,
                  dn_offset: int, refine: int = 0) -> list[bytes]:
    """Chunks coded whole, with one encoder run per stack of same-sized images."""
    # Every mode stacks: a nodata mask only changes the encoder's input, and max_error / psnr act on the latent.
    chunks = [prepare(a, model, quality, nodata, float_scale, max_error, psnr, dn_offset) for a in arrays]
    latents = run_stacked([(model.encoder, c.normalized) for c in chunks], exact=True)
    out = []
    for c, y in zip(chunks, latents, strict=True):
        at = functools.partial(code, model, c, y, nodata, max_error, refine=refine)
        out.append(at(quality) if psnr is None else _lowest_rate_reaching(at, c, psnr, model.qualities))
    return out


def code(model: Model, chunk: PreparedChunk, y: np.ndarray, nodata, max_error, quality: int, *,
         refine: int = 0) -> bytes:
    """A prepared chunk's bitstream at ``quality``, from its encoder output ``y``; with ``refine`` rounds of the
    symbol search, the searched symbols' where they score better than the rounded ones'."""
    symbols = np.rint(y * model.gain[quality][None, :, None, None]).astype(np.int32)
    if chunk.skip is not None:  # not coded: the decoder reads 0 there, and the residual's base must agree
        symbols *= ~chunk.skip[:, None]
    rounded = _pack(model, chunk, y, symbols, nodata, max_error, quality)
    if not refine:
        return rounded
    searched = search(model, chunk, y, symbols, quality, refine)
    if np.array_equal(searched, symbols):
        return rounded
    candidate = _pack(model, chunk, y, searched, nodata, max_error, quality)
    scores = [objective(model, chunk, s, quality, len(data)) for s, data in ((symbols, rounded), (searched, candidate))]
    return candidate if scores[1] < scores[0] else rounded


def _pack(model: Model, chunk: PreparedChunk, y: np.ndarray, symbols: np.ndarray, nodata, max_error,
          quality: int) -> bytes:
    channels = coded_channels(model, symbols)
    residual: ResidualSection | None = None
    if max_error is not None:
        residual = bound.encode(chunk.images, chunk.valid, symbols, quality, model, chunk.scale, max_error, nodata,
                                chunk.blocks, chunk.offset)
    header = ChunkHeader(
        model=model.name,
        model_hash=bytes.fromhex(model.sha256),
        quality=quality,
        dtype=chunk.array.dtype,
        shape=tuple(chunk.array.shape),
        pad=chunk.pad,
        latent=tuple(symbols.shape[1:]),
        nodata=None if nodata is None else float(nodata),
        float_scale=chunk.scale,
        residual=residual,
        skips_missing=chunk.skip is not None,
        blocks=chunk.blocks,
        channels=None if channels is None else channel_section(channels),
        dn_offset=chunk.offset,
        saturated=None if chunk.saturated is None else pack_mask(chunk.saturated),
        saturation_kept=chunk.saturation_kept,
    )
    mask = pack_mask(chunk.mask) if chunk.mask is not None else None
    nan = pack_mask(chunk.nan) if chunk.nan is not None else None
    payload = model.coder.encode(y, symbols, quality, skip=chunk.skip, **channel_argument(model.coder, channels))
    return pack(header, mask, payload, nan_mask=nan)


def coded_channels(model: Model, symbols: np.ndarray) -> np.ndarray | None:
    """bool (M,): the channels a chunk's payload codes, those holding a nonzero symbol, where the model's coder
    can leave the others out (at the rates users store, most channels are all 0, and decoding each costs as much
    as a nonzero one); None: code every channel (none is all 0, or the coder codes them all)."""
    if not model.coder.skips_channels:
        return None
    nonzero = symbols.any(axis=(0, 2, 3))
    return None if nonzero.all() else nonzero


def _lowest_rate_reaching(at, chunk: PreparedChunk, target: float, qualities: int) -> bytes:
    """The first level (lowest rate) whose decoded chunk reaches ``target`` dB, else the best level seen."""
    best = None
    # over the valid elements: nodata, NaN and saturated ones come back exactly and would hide the pixels' error
    valid = None if chunk.missing is None else chunk.valid
    for q in range(qualities):
        data = at(q)
        decoded = decode_chunk(data, expected_shape=chunk.array.shape).reshape(chunk.images.shape)
        reached = metrics.psnr(chunk.images, np.nan_to_num(decoded), scale=chunk.scale, offset=chunk.offset,
                               valid=valid)
        if reached >= target:
            return data
        if best is None or reached > best[0]:
            best = (reached, data)
    warnings.warn(
        f"Expected a quality level reaching {target} dB on this chunk. Got at most {best[0]:.2f} dB instead: "
        "wrote the chunk at its best level (use max_error= for a guaranteed bound).",
        PsnrTargetWarning,
        stacklevel=6,  # _encode_whole -> encode_chunks -> encode_chunk -> a codec's encode -> its caller
    )
    return best[1]
