"""Band radiometry a raster states beside its stored values: value = stored x scale + offset.

GDAL calls them a band's scale and offset, CF a variable's ``scale_factor`` and ``add_offset``. Sentinel-2 COGs of
processing baseline 04.00 and later state scale 0.0001 and offset -0.1 (reflectance = DN / 10000 - 0.1). TEC codes
the stored values; the radiometry travels beside them as metadata, so that rasterio (``mask_and_scale``), rioxarray
and xarray read the same physical values from a TEC store or ``.tec`` file as from its source.
"""

from __future__ import annotations

import math

from .errors import InvalidInputError
from .parsing import single_number

Radiometry = tuple[tuple[float, ...], tuple[float, ...]]  # (scales, offsets), one of each per band


def parse_radiometry(scales, offsets, bands: int) -> Radiometry | None:
    """Per-band ``(scales, offsets)``; None where neither is given or every band is plain (scale 1, offset 0).
    A missing scale is 1, a missing offset 0 (GDAL's and CF's defaults)."""
    if scales is None and offsets is None:
        return None
    try:
        s = tuple(1.0 if v is None else float(v) for v in (scales if scales is not None else [None] * bands))
        o = tuple(0.0 if v is None else float(v) for v in (offsets if offsets is not None else [None] * bands))
    except (TypeError, ValueError, OverflowError):
        s = o = ()
    if len(s) != bands or len(o) != bands or not all(math.isfinite(v) for v in s + o) or 0.0 in s:
        raise InvalidInputError(f"Expected {bands} finite nonzero band scales and {bands} finite band offsets, or "
                                f"none. Got scales {scales!r} and offsets {offsets!r} instead.")
    return None if all(v == 1.0 for v in s) and all(v == 0.0 for v in o) else (s, o)


def from_attrs(attrs, bands: int) -> Radiometry | None:
    """The radiometry of a variable's attributes: CF ``scale_factor`` / ``add_offset`` (one number each, for every
    band), else ``band_scales`` / ``band_offsets`` (one number per band, where the bands differ)."""
    scale, offset = _number(attrs.get("scale_factor"), "scale_factor"), _number(attrs.get("add_offset"), "add_offset")
    if scale is not None or offset is not None:
        return parse_radiometry(None if scale is None else [scale] * bands,
                                None if offset is None else [offset] * bands, bands)
    return parse_radiometry(attrs.get("band_scales"), attrs.get("band_offsets"), bands)


def to_attrs(radiometry: Radiometry | None, nodata=None) -> dict:
    """Attributes stating ``radiometry``: CF ``scale_factor`` / ``add_offset`` where every band has the same (CF
    readers such as xarray then read physical values, and nodata, as CF ``missing_value``, as NaN rather than as a
    value), else ``band_scales`` / ``band_offsets`` (CF has one packing per variable, so such bands read as stored)."""
    if radiometry is None:
        return {}
    scales, offsets = radiometry
    if len(set(scales)) == 1 and len(set(offsets)) == 1:
        attrs = {"scale_factor": scales[0], "add_offset": offsets[0]}
        if nodata is not None and nodata == nodata:  # a NaN needs no declaring: float NaN reads as NaN anyway
            attrs["missing_value"] = nodata
        return attrs
    return {"band_scales": list(scales), "band_offsets": list(offsets)}


def _number(value, name: str) -> float | None:
    if value is None:
        return None
    value = single_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"Expected a number for the CF attribute {name}. Got {value!r} instead.")
    return float(value)
