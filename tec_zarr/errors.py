"""The package's exception hierarchy: every failure a user can cause ends in a :class:`TecZarrError`."""

from __future__ import annotations


class TecZarrError(Exception):
    """Base class of every error raised by tec_zarr."""


class UnknownModelError(TecZarrError, ValueError):
    """No installed model has the requested name."""


class WeightsIntegrityError(TecZarrError):
    """A model file is missing or its sha256 differs from the manifest (or from a store's config)."""


class InvalidInputError(TecZarrError, ValueError):
    """An array the codec cannot encode: wrong shape, non-C-order, NaN, or an invalid parameter."""


class RefinementUnsupportedError(InvalidInputError):
    """``refine=`` asked of a model whose synthesis or entropy model the symbol search does not know."""


class UnsupportedDtypeError(InvalidInputError, TypeError):
    """A dtype other than uint16, int16 or float32."""


class BitstreamError(TecZarrError, ValueError):
    """A chunk that cannot be decoded."""


class TruncatedChunkError(BitstreamError):
    """The chunk ends before its declared content."""


class CorruptChunkError(BitstreamError):
    """The chunk's CRC32 does not match, or its header is inconsistent."""


class ChunkShapeError(CorruptChunkError):
    """A chunk declaring another shape than the caller expects, or, with no expectation, more elements than
    ``TEC_ZARR_MAX_CHUNK_ELEMENTS``: refused before anything is decoded."""


class ModelMismatchError(BitstreamError):
    """The chunk was written by a different model (name or weights) than the one available."""


class TecFileError(TecZarrError):
    """A ``.tec`` raster file (see :mod:`tec_zarr.tecfile`) that cannot be read, written or converted."""


class TecFormatError(TecFileError, ValueError):
    """Not a ``.tec`` file, a newer format version, or a header whose CRC32 or metadata is inconsistent."""


class TruncatedTecFileError(TecFileError):
    """The file ends before its header, index or last tile does."""


class CorruptTileError(TecFileError, CorruptChunkError):
    """A tile's bytes do not match the CRC32 in the file's index."""


class SidecarMismatchError(TecFileError):
    """A VRT sidecar names a ``.tec`` file that moved, vanished or was replaced (another uuid)."""


class PsnrTargetWarning(UserWarning):
    """No quality level reaches a chunk's ``psnr=`` target: the chunk was written at its best level instead."""


class MaxErrorFallbackWarning(UserWarning):
    """A chunk whose ``max_error`` bound could not be kept without decoding valid elements onto the nodata value
    (data on both sides of it): the chunk was coded losslessly instead, at a higher cost."""


class BoundRewriteWarning(UserWarning):
    """A ``max_error`` above the lattice's 25 DN with chunks that hold several dates: zarr rewrites a chunk from its
    decoded values when dates are appended into it (or ``region=`` covers part of it), and at such bounds each rewrite
    may move a value by up to another E."""


class EdgePaddingWarning(UserWarning):
    """Zarr format 2 pads edge chunks with its fill value 0, not a nonzero nodata: the padding is coded as image, at
    the cost of bits and of the edge pixels' quality (format 3 pads with the nodata)."""


class DnOffsetWarning(UserWarning):
    """A variable's metadata gives its dates different DN offsets (Sentinel-2 baselines before and after 04.00): it
    is coded with the offset of most dates."""


class CheckpointImportError(TecZarrError, ValueError):
    """A checkpoint ``tec models import`` cannot convert: not a state dict, an architecture it does not import
    (yet), weights that disagree with their config, or a model name already taken."""
