"""Decode chunks: TEC chunk bitstreams in, numpy out.

Every chunk is parsed and checked against its model before any network runs; lossy chunks' latents from several
chunks then go through the decoder graph in stacks, error-bounded chunks through the integer synthesis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..bitstream.chunk import HASH_PREFIX_BYTES, ChunkHeader, unpack, unpack_mask
from ..errors import CorruptChunkError, ModelMismatchError, TecZarrError
from ..models import Model, load_model
from ..residual import bound
from ..runtime.batching import run_stacked
from .prepare import DN_PER_REFLECTANCE


@dataclass(frozen=True, eq=False)
class ParsedChunk:
    """A chunk's verified header, its model, nodata mask (B, C, H, W) and decoded latent symbols (B, M, h, w)."""

    header: ChunkHeader
    model: Model
    mask: np.ndarray | None
    symbols: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        c, h, w = self.header.shape[-3:]
        return ~self.mask if self.mask is not None else np.ones((self.header.batch, c, h, w), bool)

    def y_hat(self) -> np.ndarray:
        """The decoder graph's input: symbols times the quality's inverse gains."""
        inv_gain = self.model.inv_gain[self.header.quality][None, :, None, None]
        return np.ascontiguousarray(self.symbols.astype(np.float32) * inv_gain)


def read_header(buf) -> ChunkHeader:
    return unpack(buf)[0]


def decode_chunk(buf) -> np.ndarray:
    return decode_chunks([buf])[0]


def decode_chunks(buffers: Iterable) -> list[np.ndarray]:
    """:func:`decode_chunk` of each buffer, with one decoder run per stack of same-sized latents.

    Every chunk is parsed and checked before the network runs; the first failure is raised (the package's
    :class:`~tec_zarr.errors.BitstreamError` subclasses, noted with the chunk's position) and no result is
    returned for any chunk. Residual (``max_error``) chunks use the integer synthesis, one chunk at a time.
    """
    buffers = list(buffers)
    parsed = [_located(i, len(buffers), parse, buf) for i, buf in enumerate(buffers)]
    lossy = [i for i, p in enumerate(parsed) if p.header.residual is None]
    x_hats = run_stacked([(parsed[i].model.decoder, parsed[i].y_hat()) for i in lossy], exact=False)
    x_hat_of = dict(zip(lossy, x_hats))
    return [_located(i, len(buffers), finish, p, x_hat_of.get(i)) for i, p in enumerate(parsed)]


def _located(i: int, n: int, func, *args):
    try:
        return func(*args)
    except TecZarrError as e:
        if n > 1:
            e.add_note(f"(chunk {i} of a batch of {n})")
        raise


def parse(buf) -> ParsedChunk:
    """A chunk's header checked against its installed model, its mask unpacked and its symbols decoded."""
    header, mask_bytes, payload = unpack(buf)
    model = load_model(header.model)
    if bytes.fromhex(model.sha256)[:HASH_PREFIX_BYTES] != header.model_hash:
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
        or m != model.latent_channels
    ):
        raise CorruptChunkError(f"Expected a header consistent with model {model.name}. Got {header} instead.")
    batch = header.batch
    symbols = model.coder.decode(payload, header.quality, (batch, m, lh, lw))
    mask = unpack_mask(mask_bytes, (batch, c, h, w)) if mask_bytes is not None else None
    if mask is not None and header.nodata is None:
        raise CorruptChunkError("Expected a nodata value with a nodata mask. Got a mask alone instead.")
    return ParsedChunk(header=header, model=model, mask=mask, symbols=symbols)


def finish(parsed: ParsedChunk, x_hat: np.ndarray | None) -> np.ndarray:
    """A parsed chunk's pixels, from the decoder's output ``x_hat`` (lossy) or its residual section."""
    header, model = parsed.header, parsed.model
    h, w = header.shape[-2:]
    if header.residual is not None:
        result = bound.decode(header, parsed.symbols, model, parsed.valid)
    else:
        # Denormalize and scale to data units in one multiply-add per element, in place.
        units = np.float32(DN_PER_REFLECTANCE / header.float_scale)
        values = np.multiply(x_hat[:, :, :h, :w], (model.std * units)[:, None, None])
        values += (model.mean * units)[:, None, None]
        result = _to_dtype(values, header.dtype)
    return _apply_nodata(result, header.nodata, parsed.mask).reshape(header.shape)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    np.rint(values, out=values)
    return np.clip(values, info.min, info.max, out=values).astype(dtype)


def _apply_nodata(result: np.ndarray, nodata: float | None, mask: np.ndarray | None) -> np.ndarray:
    """No valid element reads back as nodata; the masked elements are exactly nodata."""
    result = bound.avoid_nodata(result, nodata)
    if mask is not None:
        result[mask] = np.asarray(nodata).astype(result.dtype)
    return result
