"""Thinning: a chunk cut to a lower quality of its model without decoding its image.

The chunk's symbols are entropy-decoded, mapped onto the lower level's grid in integers
(:mod:`tec_zarr.requantize`) and coded again; masks, blocks and the rest of the header are kept byte for byte. The result is an ordinary chunk of the same
model at the lower quality whose header names the quality it came from (format flag bit 5), so it decodes through
every reader of this version. Chunks with a residual section (``max_error``, lossless) are refused: their bound
holds for their own base only. A chunk in parts (:mod:`tec_zarr.bitstream.parts`) is thinned part by part.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import requantize
from ..bitstream.chunk import channel_section, pack, unpack_sections
from ..bitstream.parts import is_parts, pack_parts, unpack_part_sections
from ..entropy.base import channel_argument
from ..errors import InvalidInputError
from .decode import parse, skipped_latents
from .encode import coded_channels


def parse_level(quality) -> int:
    """A quality level to thin to: an integer >= 0 (the chunk's model bounds it from above)."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or quality < 0:
        raise InvalidInputError(f"Expected a quality level (an integer >= 0). Got {quality!r} instead.")
    return int(quality)


def thin_chunk(buf, quality: int) -> bytes:
    """``buf`` (a TEC chunk) at ``quality``, a level at or below its own: smaller, decoding to the lower level.

    A chunk already at ``quality`` comes back unchanged. Raises the chunk's
    :class:`~tec_zarr.errors.BitstreamError` if it is damaged, and :class:`~tec_zarr.errors.InvalidInputError` for
    a quality above the chunk's or a chunk with a residual section.
    """
    quality = parse_level(quality)
    if is_parts(buf):
        return _thin_parts(buf, quality)
    sections = unpack_sections(buf)
    header = sections.header
    if quality == header.quality:
        return bytes(buf)
    _refuse_above(quality, header.quality)
    if header.residual is not None:
        raise InvalidInputError(
            f"Expected a lossy chunk. Got one with a residual section (max_error={header.residual.max_error:g}) instead:"
            " thinning would break its bound, so decode it and encode it again at the lower quality.")
    parsed = parse(buf)
    model = parsed.model
    levels = (*(header.thinned_from or ()), header.quality)
    thinning = requantize.Thinning.of(model.gain, (*levels, quality))
    symbols = requantize.requantize(parsed.symbols, thinning.chain[-1])
    # The encoder's latents as well as the chunk knows them: the values its symbols decode to, in encoder units.
    top = model.gain[levels[0]].astype(np.float64)
    doubled = parsed.thinned_values if parsed.thinned_values is not None else 2.0 * parsed.symbols
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_top = np.where(top != 0, 0.5 / top, 0.0)
    y = np.ascontiguousarray((doubled * inv_top[None, :, None, None]).astype(np.float32))
    skip = skipped_latents(header, model.latent_stride, parsed.mask, parsed.nan, parsed.saturated)
    if skip is not None:
        symbols *= ~skip[:, None]
    channels = coded_channels(model, symbols)  # the level may drop channels, and zero more of them
    payload, summed = model.coder.recode(sections.payload, y, symbols, header.quality, thinning, skip=skip,
                                         source_summed=header.runs_summed, **channel_argument(model.coder, channels))
    thinned = replace(header, quality=quality, thinned_from=levels, runs_summed=summed,
                      channels=None if channels is None else channel_section(channels))
    return pack(thinned, sections.mask, payload, nan_mask=sections.nan_mask)


def _thin_parts(buf, quality: int) -> bytes:
    """Each part at ``quality`` or its own level, whichever is lower (parts coded with ``psnr`` may differ); refused
    where ``quality`` lies above every part's, as for a whole chunk."""
    layout, parts, sections = unpack_part_sections(buf)
    levels = [s.header.quality for s in sections]
    _refuse_above(quality, max(levels))
    thinned = [thin_chunk(p, min(quality, level)) for p, level in zip(parts, levels)]
    if all(t == bytes(p) for t, p in zip(thinned, parts)):
        return bytes(buf)
    return pack_parts(layout, thinned)


def _refuse_above(quality: int, level: int) -> None:
    if quality > level:
        raise InvalidInputError(f"Expected a quality at or below the chunk's {level}. Got {quality} instead: "
                                "thinning removes information, it cannot add any.")
