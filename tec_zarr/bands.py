"""Sentinel-2 band order the models are trained for, and matching other orders and names against it."""

from __future__ import annotations

import re

from .errors import InvalidInputError

S2_L2A_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)
L1C_ONLY = "B10"  # the cirrus band: L1C products have it, L2A products and the models do not


def band_name(text) -> str | None:
    """A Sentinel-2 band name in ESA's spelling (``B01`` .. ``B12``, ``B8A``) from common spellings (``b1``,
    ``B8a``, ``B04 (red)``), or None when ``text`` names none."""
    match = re.match(r"^\s*B0?(\d{1,2}|8A)\b", str(text or ""), re.IGNORECASE)
    if not match:
        return None
    number = match.group(1).upper()
    return "B8A" if number == "8A" else f"B{int(number):02d}"


def band_order(names, expected: tuple[str, ...] = S2_L2A_BANDS, *, source: str = "the input") -> list[int] | None:
    """For band names as stored (``names``, in stored order): the stored index of each expected band, so that
    ``data[order]`` is in the expected order. None when no name is a band name (the order cannot be checked).
    Raises :class:`InvalidInputError` naming the expected order when the bands are not the expected ones."""
    found = [band_name(n) for n in names]
    if not any(found):
        return None
    if L1C_ONLY in found and len(found) == len(expected) + 1:
        keep = " ".join(f"-b {i + 1}" for i, f in enumerate(found) if f != L1C_ONLY)
        raise InvalidInputError(
            f"Expected the {len(expected)} L2A bands {' '.join(expected)}. Got {len(found)} bands with {L1C_ONLY} in "
            f"{source} instead: an L1C product. Drop {L1C_ONLY} (GeoTIFF: gdal_translate {keep} IN.tif OUT.tif; "
            f"xarray: ds.drop_sel(band='{L1C_ONLY}')); the models were trained on L2A reflectance."
        )
    if sorted(map(str, found)) != sorted(expected) or len(found) != len(expected):
        raise InvalidInputError(
            f"Expected the bands {' '.join(expected)}. Got {' '.join(str(f) for f in found)} in {source} instead."
        )
    return [found.index(b) for b in expected]
