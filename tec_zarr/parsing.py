"""Validators of plain values shared by the codec config and the file formats.

Each returns the parsed value or raises :class:`~tec_zarr.errors.InvalidInputError` with "Expected ... Got ...
instead". Numbers are checked before any arithmetic, so 10**400 or NaN never reach a float conversion unchecked.
"""

from __future__ import annotations

import math

from .bitstream.chunk import DN_OFFSET_RANGE, FLOAT_SCALE_RANGE
from .bitstream.chunk import nodata_allowed  # noqa: F401 - re-exported: it lives beside the header check that uses it
from .errors import InvalidInputError


def plain_number(value):
    """A numpy integer, float or bool scalar as the Python number it holds; anything else as it is."""
    import numpy as np

    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


def single_number(value):
    """A numpy scalar or one-element array (as zarr, xarray and netCDF hand attributes over) as the Python number it
    holds; anything else as it is."""
    value = plain_number(value)
    if hasattr(value, "shape") and getattr(value, "size", 0) == 1:
        value = plain_number(value.reshape(-1)[0])
    return value


def declared_nodata(attrs, encoding=None):
    """The missing value a variable or array declares: its ``nodata`` attribute (rioxarray's and tec's), else CF's
    ``_FillValue`` (attribute, or xarray's encoding of a variable it masked), else ``missing_value``; a Python
    number (NaN included), None where it declares none."""
    for source, key in ((attrs, "nodata"), (attrs, "_FillValue"), (encoding or {}, "_FillValue"),
                        (attrs, "missing_value")):
        value = single_number(source.get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def is_real(value) -> bool:
    """An int or float (never a bool) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float's range
        return False


def parse_nodata(nodata: float | int | None) -> float | int | None:
    if nodata is None:
        return None
    if not is_real(nodata):
        raise InvalidInputError(f"Expected a finite number or None for nodata. Got {nodata!r} instead.")
    return int(nodata) if float(nodata).is_integer() else float(nodata)


def parse_float_scale(scale: float) -> float:
    if not (is_real(scale) and FLOAT_SCALE_RANGE[0] <= scale <= FLOAT_SCALE_RANGE[1]):
        raise InvalidInputError(f"Expected a float_scale in {FLOAT_SCALE_RANGE[0]:g}..{FLOAT_SCALE_RANGE[1]:g} "
                                f"(float32 x float_scale = DN). Got {scale!r} instead.")
    return float(scale)


MAX_REFINE_ROUNDS = 16


def parse_refine(rounds, max_error=None) -> int:
    """Rounds of the encoder's symbol search (:mod:`tec_zarr.pipeline.refine`): 0 (symbols rounded) to 16, and
    0 with ``max_error`` (the search is for lossy chunks)."""
    rounds = plain_number(rounds)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= MAX_REFINE_ROUNDS:
        raise InvalidInputError(f"Expected refine to be an integer in 0..{MAX_REFINE_ROUNDS} (rounds of the encoder's "
                                f"symbol search; 0: symbols rounded). Got {rounds!r} instead.")
    if rounds and max_error is not None:
        raise InvalidInputError(f"Expected refine=0 with max_error (the symbol search is for lossy chunks). Got "
                                f"refine={rounds!r}, max_error={max_error!r} instead.")
    return rounds


def parse_dn_offset(offset) -> int:
    """The DN of reflectance 0, an integer: 0 for data without an offset, 1000 for Sentinel-2 products of processing
    baseline 04.00 and later (from 25 January 2022) loaded as stored (odc-stac, stackstac with rescale=False)."""
    if offset is None:
        return 0
    if type(offset).__module__ == "numpy" and getattr(offset, "ndim", None) == 0:  # a value read from attrs
        offset = offset.item()
    if isinstance(offset, bool) or not is_real(offset) or not float(offset).is_integer() or not (
            DN_OFFSET_RANGE[0] <= offset <= DN_OFFSET_RANGE[1]):
        raise InvalidInputError(f"Expected an integer dn_offset in {DN_OFFSET_RANGE[0]}..{DN_OFFSET_RANGE[1]} (the DN "
                                f"of reflectance 0; Sentinel-2 baseline 04.00 and later: 1000). Got {offset!r} "
                                "instead.")
    return int(offset)


def env_limit(variable: str, default: int) -> int:
    """A positive integer limit from the environment (unset or empty: ``default``)."""
    import os

    value = os.environ.get(variable)
    if not value:
        return default
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise InvalidInputError(f"Expected a positive integer {variable}. Got {value!r} instead.")
    return limit
