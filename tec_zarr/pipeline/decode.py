"""Decode chunks: TEC chunk bitstreams in, numpy out.

Every chunk is parsed and checked against its model before any network runs; lossy chunks' latents from several
chunks then go through the decoder graph in stacks, error-bounded chunks through the integer synthesis. A chunk
coded in parts (:mod:`tec_zarr.bitstream.parts`) has its framing and every part's header checked first, and is
decoded one part at a time into its result (each part parsed just before it is decoded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .. import requantize
from ..bitstream.chunk import (
    HASH_PREFIX_BYTES,
    ChunkHeader,
    element_count,
    below_saturated,
    saturated_value,
    unpack,
    unpack_mask,
    unpack_sections,
)
from ..bitstream.parts import PartsLayout, is_parts, part_sections, unpack_part_sections, unpack_parts
from ..entropy.base import channel_argument
from ..errors import ChunkShapeError, CorruptChunkError, ModelMismatchError, TecZarrError
from ..models import Model, load_model
from ..parsing import env_limit
from ..replication import from_header, project
from ..residual import bound
from ..runtime.batching import run_stacked
from .prepare import DN_PER_REFLECTANCE, latent_skip, union


# Chunks that arrive without an expected shape (numcodecs without out=, tec_zarr.pipeline.decode_chunk) may declare
# at most this many elements: 2**25 is a (1, 12, 1672, 1672) chunk, 64 MiB of uint16. Zarr format 3 and .tec files
# always pass the shape they expect, and a chunk declaring another is refused whatever its size.
MAX_CHUNK_ELEMENTS_VARIABLE = "TEC_ZARR_MAX_CHUNK_ELEMENTS"
DEFAULT_MAX_CHUNK_ELEMENTS = 2**25


def max_chunk_elements() -> int:
    return env_limit(MAX_CHUNK_ELEMENTS_VARIABLE, DEFAULT_MAX_CHUNK_ELEMENTS)


def check_size(shape: Sequence[int], dtype, expected_shape: Sequence[int] | None = None,
               expected_nbytes: int | None = None) -> None:
    """Refuse a chunk whose declared ``shape`` and ``dtype`` the caller did not ask for, before anything is
    decoded."""
    shape = tuple(shape)
    if expected_shape is not None and shape != tuple(int(n) for n in expected_shape):
        raise ChunkShapeError(f"Expected a chunk of shape {tuple(expected_shape)}. Got a header declaring {shape} instead.")
    nbytes = element_count(shape) * np.dtype(dtype).itemsize
    if expected_nbytes is not None and nbytes != expected_nbytes:
        raise ChunkShapeError(f"Expected a chunk of {expected_nbytes} bytes. Got a header declaring {shape} "
                                 f"{np.dtype(dtype)} ({nbytes} bytes) instead.")
    if expected_shape is None and expected_nbytes is None and element_count(shape) > max_chunk_elements():
        raise ChunkShapeError(
            f"Expected at most {max_chunk_elements()} elements in a chunk decoded without an expected shape. Got a "
            f"header declaring {shape} instead: raise {MAX_CHUNK_ELEMENTS_VARIABLE} if such chunks are yours."
        )


@dataclass(frozen=True, eq=False)
class ParsedChunk:
    """A chunk's verified header, its model, nodata and NaN masks (B, C, H, W) and its decoded latent symbols
    (B, M, h, w)."""

    header: ChunkHeader
    model: Model
    mask: np.ndarray | None
    nan: np.ndarray | None
    symbols: np.ndarray
    # Thinned chunks: twice the top-level value each symbol decodes to (the coder's decode_thinned), float64.
    thinned_values: np.ndarray | None = None
    saturated: np.ndarray | None = None  # elements that read back as the saturated DN (saturated_value)

    @property
    def valid(self) -> np.ndarray:
        missing = union(self.mask, self.nan, self.saturated)
        c, h, w = self.header.shape[-3:]
        return ~missing if missing is not None else np.ones((self.header.batch, c, h, w), bool)

    def y_hat(self) -> np.ndarray:
        """The decoder graph's input: symbols times the quality's inverse gains (thinned chunks: the values their
        coder reads from the runs the symbols stand for, :attr:`thinned_values`)."""
        header = self.header
        if self.thinned_values is not None:
            return requantize.reconstruct(self.thinned_values, self.model.gain[[header.thinned_from[0], header.quality]],
                                          self.model.inv_gain[header.quality])
        inv_gain = self.model.inv_gain[header.quality][None, :, None, None]
        return np.ascontiguousarray(self.symbols.astype(np.float32) * inv_gain)


def read_header(buf) -> ChunkHeader:
    """A chunk's header. For a chunk in parts: the whole chunk's shape and the highest quality of its parts (parts
    coded with ``psnr`` may differ), the rest (model, dtype, nodata, scale; also latent, pad, masks, thinning) its
    first part's."""
    if not is_parts(buf):
        return unpack(buf)[0]
    layout, _, sections = unpack_part_sections(buf)
    return replace(sections[0].header, shape=layout.shape, quality=max(s.header.quality for s in sections))


def decode_chunk(buf, *, expected_shape: Sequence[int] | None = None, expected_nbytes: int | None = None) -> np.ndarray:
    """One chunk's array; with ``expected_shape`` or ``expected_nbytes`` a chunk declaring another size is refused
    (:class:`~tec_zarr.errors.ChunkShapeError`) before decoding, without them one above
    :func:`max_chunk_elements`."""
    return _decode([buf], [(expected_shape, expected_nbytes)])[0]


def decode_chunks(buffers: Iterable, expected_shapes: Sequence[Sequence[int] | None] | None = None) -> list[np.ndarray]:
    """:func:`decode_chunk` of each buffer, with one decoder run per stack of same-sized latents.

    Every chunk is parsed and checked before the network runs; the first failure is raised (the package's
    :class:`~tec_zarr.errors.BitstreamError` subclasses, noted with the chunk's position) and no result is
    returned for any chunk. Residual (``max_error``) chunks use the integer synthesis, one chunk at a time.
    ``expected_shapes``: per buffer the shape its caller expects (None: any up to :func:`max_chunk_elements`).
    """
    buffers = list(buffers)
    shapes = list(expected_shapes) if expected_shapes is not None else [None] * len(buffers)
    if len(shapes) != len(buffers):
        raise ValueError(f"Expected one expected shape per buffer. Got {len(shapes)} for {len(buffers)} instead.")
    return _decode(buffers, [(shape, None) for shape in shapes])


def _decode(buffers: list, expected: list[tuple]) -> list[np.ndarray]:
    # Chunks in parts: framing, sizes and every part's header checked before any chunk is decoded.
    in_parts = {i: _located(i, len(buffers), _checked_parts, buf, *expected[i])
                for i, buf in enumerate(buffers) if is_parts(buf)}
    whole = [i for i in range(len(buffers)) if i not in in_parts]
    decoded = dict(zip(whole, _decode_whole([buffers[i] for i in whole], [expected[i] for i in whole], whole,
                                            len(buffers)))) if whole else {}
    decoded.update({i: _located(i, len(buffers), _decode_parts, *checked) for i, checked in in_parts.items()})
    return [decoded[i] for i in range(len(buffers))]


def _checked_parts(buf, expected_shape=None, expected_nbytes=None) -> tuple[PartsLayout, list]:
    """A chunk in parts' layout and parts, its size checked like a whole chunk's and each part's header against its
    place (shape, dtype), before any part is decoded."""
    layout, parts = unpack_parts(buf)
    check_size(layout.shape, layout.dtype, expected_shape, expected_nbytes)
    part_sections(layout, parts)
    return layout, parts


def _decode_parts(layout: PartsLayout, parts: list) -> np.ndarray:
    """A checked chunk in parts, decoded part by part into its result: the memory of one part at a time."""
    images = np.empty(layout.images, layout.dtype)
    for i, (part, (sb, sy, sx), shape) in enumerate(zip(parts, layout.slices(), layout.part_shapes())):
        try:
            images[sb, :, sy, sx] = _decode_whole([part], [(shape, None)])[0]
        except TecZarrError as e:
            e.add_note(f"(part {i} of {layout.count} of a chunk in parts)")
            raise
    return images.reshape(layout.shape)


def _decode_whole(buffers: list, expected: list[tuple], positions: list[int] | None = None,
                  of: int | None = None) -> list[np.ndarray]:
    """Whole chunks; errors name each chunk's place among ``of`` buffers (``positions``; default: as given)."""
    positions = list(range(len(buffers))) if positions is None else positions
    of = len(buffers) if of is None else of
    parsed = [_located(n, of, parse, buf, *expected[i]) for i, (n, buf) in enumerate(zip(positions, buffers))]
    lossy = [i for i, p in enumerate(parsed) if p.header.residual is None]
    x_hats = run_stacked([(parsed[i].model.decoder_for(parsed[i].header.quality), parsed[i].y_hat()) for i in lossy],
                         exact=False)
    x_hat_of = dict(zip(lossy, x_hats))
    return [_located(positions[i], of, finish, p, x_hat_of.get(i)) for i, p in enumerate(parsed)]


def _located(i: int, n: int, func, *args):
    try:
        return func(*args)
    except TecZarrError as e:
        if n > 1:
            e.add_note(f"(chunk {i} of a batch of {n})")
        raise


def parse(buf, expected_shape=None, expected_nbytes=None) -> ParsedChunk:
    """A chunk's header checked against the caller's expectation and its installed model, its mask unpacked and its
    symbols decoded."""
    sections = unpack_sections(buf)
    header, mask_bytes, payload = sections.header, sections.mask, sections.payload
    check_size(header.shape, header.dtype, expected_shape, expected_nbytes)
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
        or header.quality >= model.qualities
        or (header.thinned_from is not None and header.thinned_from[0] >= model.qualities)
    ):
        raise CorruptChunkError(f"Expected a header consistent with model {model.name}. Got {header} instead.")
    batch = header.batch
    mask = unpack_mask(mask_bytes, (batch, c, h, w)) if mask_bytes is not None else None
    if mask is not None and header.nodata is None:
        raise CorruptChunkError("Expected a nodata value with a nodata mask. Got a mask alone instead.")
    nan = unpack_mask(sections.nan_mask, (batch, c, h, w)) if sections.nan_mask is not None else None
    saturated = unpack_mask(header.saturated, (batch, c, h, w)) if header.saturated is not None else None
    skip = skipped_latents(header, model.latent_stride, mask, nan, saturated)
    thinning = None
    if header.thinned_from is not None:
        thinning = requantize.Thinning.of(model.gain, (*header.thinned_from, header.quality), header.runs_summed)
    channels = header.coded_channels
    if channels is not None and not model.coder.skips_channels:
        raise CorruptChunkError(f"Expected every latent channel coded for model {model.name}, whose {model.coder.name} "
                                "coder codes them all. Got a chunk marking some as not coded instead.")
    shape, coded = (batch, m, lh, lw), channel_argument(model.coder, channels)
    values = None
    if thinning is None:
        symbols = model.coder.decode(payload, header.quality, shape, skip=skip, **coded)
    else:
        symbols, values = model.coder.decode_thinned(payload, header.quality, shape, skip=skip, thinning=thinning,
                                                     **coded)
        if symbols[:, thinning.dropped].any():
            raise CorruptChunkError("Expected 0 in the channels a thinned chunk's levels drop. Got other symbols "
                                    "instead.")
    return ParsedChunk(header=header, model=model, mask=mask, nan=nan, symbols=symbols, thinned_values=values,
                       saturated=saturated)


def skipped_latents(header: ChunkHeader, stride: int, *masks: np.ndarray | None) -> np.ndarray | None:
    """The latents a version-4 chunk's encoder left out, found from its masks (nodata, NaN, saturated) as the
    encoder found them."""
    return latent_skip(union(*masks), header.pad, stride) if header.skips_missing else None


def finish(parsed: ParsedChunk, x_hat: np.ndarray | None) -> np.ndarray:
    """A parsed chunk's pixels, from the decoder's output ``x_hat`` (lossy) or its residual section."""
    header, model = parsed.header, parsed.model
    h, w = header.shape[-2:]
    if header.residual is not None:
        result = bound.decode(header, parsed.symbols, model, parsed.valid)
        if result.dtype.kind == "f" and np.isinf(result).any():  # the encoder refuses infinity: a forged bound
            raise CorruptChunkError("Expected finite values from the residual section. Got infinity instead: the "
                                    "chunk is damaged.")
    else:
        # Denormalize and scale to data units in one multiply-add per element, in place.
        units = np.float32(DN_PER_REFLECTANCE / header.float_scale)
        values = np.multiply(x_hat[:, :, :h, :w], (model.std * units)[:, None, None])
        values += (model.mean * units + np.float32(header.dn_offset / header.float_scale))[:, None, None]
        if header.blocks is not None:  # replicated bands: their blocks' means, as the encoder coded them
            info = np.finfo(np.float32) if np.dtype(header.dtype).kind == "f" else np.iinfo(header.dtype)
            np.clip(values, info.min, info.max, out=values)  # finite first: a block of +-inf would average to NaN
            values = project(values, from_header(header.blocks))
        result = _to_dtype(values, header.dtype)
    result = _apply_nodata(result, header.nodata, parsed.mask)
    if parsed.nan is not None:
        result[parsed.nan] = np.nan
    if header.saturation_kept:  # one step below: towards every valid value (all below it), so bounds hold too
        result[result == saturated_value(header.dtype, header.float_scale)] = below_saturated(header.dtype,
                                                                                              header.float_scale)
    if parsed.saturated is not None:
        result[parsed.saturated] = saturated_value(header.dtype, header.float_scale)
    return result.reshape(header.shape)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":  # finite whatever the latents say: a hostile chunk must not read back as inf
        info = np.finfo(dtype)
        return np.clip(values, info.min, info.max, out=values).astype(dtype)
    info = np.iinfo(dtype)
    np.rint(values, out=values)
    return np.clip(values, info.min, info.max, out=values).astype(dtype)


def _apply_nodata(result: np.ndarray, nodata: float | None, mask: np.ndarray | None) -> np.ndarray:
    """No valid element reads back as nodata; the masked elements are exactly nodata."""
    result = bound.avoid_nodata(result, nodata)
    if mask is not None:
        result[mask] = np.asarray(nodata).astype(result.dtype)
    return result
