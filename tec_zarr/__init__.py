"""tec-zarr: learned (TerraCodec) compression of Sentinel-2 datacubes in Zarr.

>>> from tec_zarr import TEC
>>> ds.to_zarr(store, zarr_format=2, encoding={"refl": {"compressors": TEC()}})  # doctest: +SKIP

Importing this package loads no model and never imports torch; models load (and are hash-verified) on first use.
"""

from __future__ import annotations

from .codec import TEC, zarr_encoding
from .errors import (BoundRewriteWarning, DnOffsetWarning, EdgePaddingWarning, MaxErrorFallbackWarning,
                     PsnrTargetWarning, TecZarrError)
from .inpainting import inpaint
from .models import list_models
from .pipeline.thin import thin_chunk as thin

__version__ = "0.1.0"
__all__ = ["TEC", "BoundRewriteWarning", "DnOffsetWarning", "EdgePaddingWarning", "MaxErrorFallbackWarning",
           "PsnrTargetWarning", "TecZarrError", "inpaint", "list_models", "thin", "zarr_encoding", "__version__"]
