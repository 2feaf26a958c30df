"""The chunk pipeline: numpy chunks to TEC bitstreams and back, calling the model's parts without knowing which.

:mod:`.prepare` validates and normalizes, :mod:`.encode` runs the analysis graph, quantizes and packs, :mod:`.decode`
parses, decodes the latents and runs the synthesis, :mod:`.thin` cuts a chunk to a lower quality. The codec front
ends (:mod:`tec_zarr.codec`) and ``.tec`` files call only the names below.
"""

from ..runtime.batching import MAX_BATCH_IMAGES
from .decode import decode_chunk, decode_chunks, read_header
from .encode import encode_chunk, encode_chunks
from .prepare import parse_dtype
from .refine import check_refinable
from .thin import thin_chunk

__all__ = ["MAX_BATCH_IMAGES", "check_refinable", "decode_chunk", "decode_chunks", "encode_chunk", "encode_chunks",
           "parse_dtype", "read_header", "thin_chunk"]
