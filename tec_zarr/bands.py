"""Sentinel-2 band order the models are trained for, and matching other orders and names against it."""

from __future__ import annotations

import re

from .errors import InvalidInputError

S2_L2A_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)
L1C_ONLY = "B10"  # the cirrus band: L1C products have it, L2A products and the models do not


# Names STAC catalogues give the bands: the asset keys of Element 84's earth-search (v1), which stackstac and
# odc-stac put on the band coordinate, and those eo:bands common names that name one band ("rededge" names three).
STAC_NAMES = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11", "swir22": "B12",
}
_ESA_NAME = re.compile(r"^\s*B0?(\d{1,2}|8A)(?![0-9A-Za-z])", re.IGNORECASE)


def band_name(text) -> str | None:
    """A Sentinel-2 band name in ESA's spelling (``B01`` .. ``B12``, ``B8A``) from common spellings (``b1``,
    ``B8a``, ``B04 (red)``, ``B02_10m``) and STAC names (``blue``, ``nir08``, ``swir16``), or None when ``text``
    names none."""
    text = str(text if text is not None else "")
    stac = STAC_NAMES.get(text.strip().lower())
    if stac is not None:
        return stac
    match = _ESA_NAME.match(text)
    if not match:
        return None
    number = match.group(1).upper()
    return "B8A" if number == "8A" else f"B{int(number):02d}"


def selection_hint(names, order: list[int]) -> str:
    """How to pick stored bands ``order`` (0-based, in the model's order), for GeoTIFFs and for xarray."""
    return (f"GeoTIFF: gdal_translate {' '.join(f'-b {i + 1}' for i in order)} IN.tif OUT.tif; xarray: "
            f"ds.sel(band={[str(names[i]) for i in order]}), or by position ds.isel(band={order})")


def band_order(names, expected: tuple[str, ...] = S2_L2A_BANDS, *, source: str = "the input") -> list[int] | None:
    """For band names as stored (``names``, in stored order): the stored index of each expected band, so that
    ``data[order]`` is in the expected order. None when no name is a band name (the order cannot be checked).
    Raises :class:`InvalidInputError` naming the expected order when the bands are not the expected ones: some
    missing, one twice, or others beside them (the message says how to select them)."""
    names = [str(n) for n in names]
    found = [band_name(n) for n in names]
    if not any(found):
        return None
    missing = [b for b in expected if b not in found]
    twice = sorted({f for f in found if f is not None and found.count(f) > 1})
    if missing or twice:
        what = f"{' '.join(missing)} missing" if missing else f"{' '.join(twice)} more than once"
        # A cube of a few bands (RGB + NIR, the 10 m bands): the models code the 12 bands jointly, and filling the
        # others in costs more than coding the few with a classical codec (measured: 2-3x KLT + JPEG 2000's bits).
        advice = (" The models code all twelve L2A bands together: store a cube of fewer bands with a classical "
                  "codec (zarr's default Zstd, or JPEG 2000 through imagecodecs), or add the missing bands."
                  if missing and not twice else "")
        raise InvalidInputError(
            f"Expected the bands {' '.join(expected)}. Got {' '.join(names)} in {source} instead: {what}.{advice}"
        )
    order = [found.index(b) for b in expected]
    if len(found) == len(expected):
        return order
    if found.count(L1C_ONLY) == 1 and len(found) == len(expected) + 1:
        raise InvalidInputError(
            f"Expected the {len(expected)} L2A bands {' '.join(expected)}. Got {len(found)} bands with {L1C_ONLY} in "
            f"{source} instead: an L1C product. Drop {L1C_ONLY} ({selection_hint(names, order)}); the models were "
            "trained on L2A reflectance."
        )
    others = [n for i, n in enumerate(names) if i not in order]
    raise InvalidInputError(
        f"Expected the {len(expected)} bands {' '.join(expected)}. Got {len(names)} in {source} instead, with "
        f"{' '.join(others)} beside them: select the model's bands in its order ({selection_hint(names, order)})."
    )
