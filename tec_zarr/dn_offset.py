"""The DN offset an xarray variable's own metadata states: Sentinel-2 processing baseline 04.00 (products from
25 January 2022 on) stores DN = reflectance x 10000 + 1000, and loaders that keep DN as stored (odc-stac,
stackstac with ``rescale=False``, rioxarray without ``mask_and_scale``) hand that over unchanged.

The models were trained on DN without the offset; coded as they are, such DN cost tec-fp up to 20 % more bits at
equal PSNR, the hyperprior and context models up to 2.5 times the bits (README, offset table). The codec's
``dn_offset`` takes the offset off before the models see the data and adds it back to the decoded values, so it
never changes what is read back, only what it costs. Catalog
flags are known to be wrong at times (Element84/earth-search#66, #71): an offset stated here is a default the user
can override, never a reason to refuse data.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .errors import DnOffsetWarning

# Sentinel-2's BOA_ADD_OFFSET / RADIO_ADD_OFFSET, negated: the DN of reflectance 0 from baseline 04.00 on.
SENTINEL2_DN_OFFSET = 1000
OFFSET_BASELINE = 4.0
# Item properties stackstac turns into coordinates (earth-search v1, Planetary Computer, CDSE).
BASELINE_COORDS = ("s2:processing_baseline", "processing:version", "sentinel:processing_baseline")
APPLIED_COORDS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
# CF packing a variable read as stored may carry: value = DN x scale_factor + add_offset, reflectance units.
REFLECTANCE_PER_DN = 1e-4


def stated_dn_offset(var, float_scale: float = 10000.0) -> int | None:
    """The DN of reflectance 0 that ``var``'s metadata states (CF ``scale_factor`` / ``add_offset`` attributes
    of integer DN, or the Sentinel-2 processing baseline of each date, as stackstac puts it on the time axis);
    None where it states none. Where dates disagree, the offset of most dates, with a :class:`DnOffsetWarning`.

    The baseline speaks of DN only: integer data, or float data read at ``float_scale`` 1. Float reflectance
    (stackstac's default ``rescale=True``) had its offset taken off when it was scaled."""
    integer = np.dtype(var.dtype).kind in "iu"
    if integer:
        packed = packed_dn_offset(var.attrs.get("scale_factor"), var.attrs.get("add_offset"))
        if packed is not None:
            return packed
    if not (integer or float_scale == 1):
        return None
    offsets = _baseline_offsets(var)
    if offsets is None:
        return None
    values, counts = np.unique(offsets, return_counts=True)
    if len(values) > 1:
        warnings.warn(
            f"Expected one DN offset for the dates of {var.name!r}. Got {dict(zip(values.tolist(), counts.tolist()))} "
            "(DN offset: dates) from their processing baselines instead: coding with the offset of most dates. "
            "Harmonize the dates first (subtract 1000 from those of baseline 04.00 and later) for the fewest bits.",
            DnOffsetWarning, stacklevel=3)
    return int(values[np.argmax(counts)])


def packed_dn_offset(scale, offset) -> int | None:
    """The DN of reflectance 0 of integer DN packed as ``value = DN x scale + offset`` in reflectance (CF attributes,
    a GeoTIFF band's scale and offset): -offset / scale where scale is 1e-4 (no offset: 0, as in CF); else None."""
    if offset is None and scale is not None:
        offset = 0.0
    try:
        scale, offset = float(np.squeeze(scale)), float(np.squeeze(offset))
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(scale) and math.isfinite(offset)):
        return None
    if not math.isclose(scale, REFLECTANCE_PER_DN, rel_tol=1e-6):
        return None
    dn = -offset / scale
    return int(round(dn)) if abs(dn - round(dn)) < 1e-6 and 0 <= round(dn) <= 32767 else None


def bands_dn_offset(scales, offsets, dtype) -> int | None:
    """:func:`packed_dn_offset` of a raster whose bands state ``scales`` and ``offsets`` (GDAL's), where every band
    states the same packing of integer data; else None."""
    pairs = set(zip(scales, offsets))
    if np.dtype(dtype).kind not in "iu" or len(pairs) != 1:
        return None
    return packed_dn_offset(*pairs.pop())


def _baseline_offsets(var) -> np.ndarray | None:
    """Per date of the baseline coordinate: 1000 from baseline 04.00 on, unless flagged as already removed (stackstac
    keeps a property equal on every date as a scalar coordinate: flags and baselines broadcast against each other;
    a date without the flag keeps its baseline's offset)."""
    name = next((c for c in BASELINE_COORDS if c in var.coords), None)
    if name is None:
        return None
    try:
        numbers = np.vectorize(float, otypes=[float])(np.atleast_1d(np.asarray(var.coords[name].values)))
    except (TypeError, ValueError):
        return None
    if not np.isfinite(numbers).all():
        return None
    offsets = np.where(numbers >= OFFSET_BASELINE, SENTINEL2_DN_OFFSET, 0)
    applied = next((c for c in APPLIED_COORDS if c in var.coords), None)
    if applied is not None:
        raw = np.atleast_1d(np.asarray(var.coords[applied].values, dtype=object))
        removed = np.vectorize(lambda f: isinstance(f, (bool, np.bool_)) and bool(f), otypes=[bool])(raw)
        try:
            offsets, removed = np.broadcast_arrays(offsets, removed)
        except ValueError:  # flags along another axis than the baselines: they say nothing per date
            return offsets.ravel()
        offsets = np.where(removed, 0, offsets)
    return offsets.ravel()
