"""Band identity: ESA, file-name and STAC spellings of the Sentinel-2 bands, and the orders and extra bands that
cube builders (stackstac and odc-stac over earth-search, rioxarray over GeoTIFFs) hand to the xarray helper."""

from __future__ import annotations

import numpy as np
import pytest

from tec_zarr.bands import S2_L2A_BANDS, STAC_NAMES, band_name, band_order
from tec_zarr.errors import InvalidInputError

xr = pytest.importorskip("xarray")

from tec_zarr import zarr_encoding  # noqa: E402

# earth-search v1 asset keys in the alphabetical order a STAC item lists them, the model's bands among others
EARTH_SEARCH = ["aot", "blue", "coastal", "green", "nir", "nir08", "nir09", "red", "rededge1", "rededge2", "rededge3",
                "scl", "swir16", "swir22", "visual", "wvp"]
STAC_IN_MODEL_ORDER = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
                       "swir16", "swir22"]


@pytest.mark.parametrize(("text", "expected"), [
    ("B02", "B02"), ("b2", "B02"), ("B8a", "B8A"), ("B04 (red)", "B04"), ("B02_10m", "B02"), ("B8A_20m", "B8A"),
    ("blue", "B02"), (" Nir08 ", "B8A"), ("swir22", "B12"), ("cirrus", "B10"),
    ("rededge", None), ("B123", None), ("B02x", None), ("scl", None), ("", None), (None, None), (3, None),
])
def test_band_name_spellings(text, expected):
    assert band_name(text) == expected


def test_stac_names_name_each_band_once():
    assert sorted(STAC_NAMES.values()) == sorted([*S2_L2A_BANDS, "B10"])
    assert [band_name(n) for n in STAC_IN_MODEL_ORDER] == list(S2_L2A_BANDS)


def test_band_order_of_stac_names_in_any_order():
    shuffled = STAC_IN_MODEL_ORDER[::-1]
    order = band_order(shuffled)
    assert [shuffled[i] for i in order] == STAC_IN_MODEL_ORDER
    assert band_order([1, 2, 3]) is None  # numbers name no band: the order cannot be checked


def test_extra_bands_are_refused_with_the_selection_that_fixes_it():
    with pytest.raises(InvalidInputError, match="with aot scl visual wvp beside them") as e:
        band_order(EARTH_SEARCH, source="the cube")
    message = str(e.value)
    order = [EARTH_SEARCH.index(n) for n in STAC_IN_MODEL_ORDER]
    assert f"ds.sel(band={STAC_IN_MODEL_ORDER})" in message and f"ds.isel(band={order})" in message
    assert "gdal_translate " + " ".join(f"-b {i + 1}" for i in order) in message


@pytest.mark.parametrize(("names", "what"), [
    (STAC_IN_MODEL_ORDER[:-1], "B12 missing"),
    ([*STAC_IN_MODEL_ORDER[:-1], "B11"], "B12 missing"),
    ([*STAC_IN_MODEL_ORDER, "B12"], "B12 more than once"),
])
def test_missing_and_repeated_bands_are_named(names, what):
    with pytest.raises(InvalidInputError, match=what):
        band_order(names)


def test_a_cube_of_a_few_bands_is_told_to_use_a_classical_codec():
    with pytest.raises(InvalidInputError, match="B01 B05 B06 B07 B8A B09 B11 B12 missing") as e:
        band_order(["blue", "green", "red", "nir"])
    assert "classical codec" in str(e.value)
    with pytest.raises(InvalidInputError) as e:
        band_order([*STAC_IN_MODEL_ORDER, "B12"])
    assert "classical codec" not in str(e.value)


def test_l1c_is_recognised_under_stac_names_too():
    with pytest.raises(InvalidInputError, match="L1C product. Drop B10"):
        band_order([*STAC_IN_MODEL_ORDER[:10], "cirrus", *STAC_IN_MODEL_ORDER[10:]])


def _cube(names, attrs=None, coord=True):
    data = np.zeros((2, len(names), 8, 8), np.uint16)
    da = xr.DataArray(data, dims=("time", "band", "y", "x"), attrs=attrs or {},
                      coords={"band": names} if coord else {"band": np.arange(1, len(names) + 1)})
    return da.to_dataset(name="reflectance")


def test_xarray_helper_refuses_a_stackstac_cube_with_extra_bands_and_its_fix_works():
    ds = _cube(EARTH_SEARCH)
    with pytest.raises(InvalidInputError, match="beside them") as e:
        zarr_encoding(ds)  # no variable has 12 bands: it says why instead of returning no encoding
    fix = str(e.value).split("xarray: ")[1].split(", or by position")[0]
    fixed = eval(fix, {"ds": ds})  # noqa: S307 - the message's own code
    assert list(fixed.band.values) == STAC_IN_MODEL_ORDER
    assert list(zarr_encoding(fixed)) == ["reflectance"]


def test_xarray_helper_refuses_stac_names_out_of_order_naming_them():
    ds = _cube(EARTH_SEARCH).sel(band=sorted(STAC_IN_MODEL_ORDER))
    with pytest.raises(InvalidInputError, match="model's order") as e:
        zarr_encoding(ds)
    fix = str(e.value).split("instead: ")[1].rstrip(".")
    assert fix == f"ds = ds.sel(band={STAC_IN_MODEL_ORDER})"
    assert list(zarr_encoding(ds.sel(band=STAC_IN_MODEL_ORDER))) == ["reflectance"]


def test_xarray_helper_reads_rioxarray_band_descriptions():
    """rioxarray numbers the band coordinate 1..n and keeps the GeoTIFF's descriptions in ``long_name``."""
    reversed_names = tuple(S2_L2A_BANDS[::-1])
    ds = _cube(list(reversed_names), attrs={"long_name": reversed_names}, coord=False)
    with pytest.raises(InvalidInputError, match=r"instead: ds = ds.isel\(band=\[11, 10, 9"):
        zarr_encoding(ds)
    fixed = ds.isel(band=list(range(11, -1, -1)))
    fixed["reflectance"].attrs["long_name"] = tuple(S2_L2A_BANDS)
    assert list(zarr_encoding(fixed)) == ["reflectance"]
    assert list(zarr_encoding(_cube(list(S2_L2A_BANDS), coord=False))) == ["reflectance"]  # nothing to check


def test_xarray_helper_without_any_band_variable_says_so():
    ds = xr.Dataset({"scl": (("y", "x"), np.zeros((4, 4), np.uint8))})
    with pytest.raises(InvalidInputError, match="Expected a variable with the model's 12 bands"):
        zarr_encoding(ds)


def _stacked_as_told(ds, match: str):
    """``ds`` after running the stacking code zarr_encoding's refusal (matching ``match``) gives."""
    with pytest.raises(InvalidInputError, match=match) as e:
        zarr_encoding(ds)
    fix = str(e.value).split("loads them): stack them on a band axis, ")[1].rstrip(".")
    scope = {"ds": ds}
    exec(fix, scope)  # noqa: S102 - the message's own code
    return scope["ds"]


def test_xarray_helper_shows_how_to_stack_an_odc_stac_dataset_of_one_variable_per_band():
    names = ["red", "green", "blue", "nir", "nir08", "nir09", "coastal", "rededge1", "rededge2", "rededge3", "swir16",
             "swir22", "scl"]
    ds = xr.Dataset({n: (("time", "y", "x"), np.full((2, 8, 8), i, np.uint16)) for i, n in enumerate(names)})
    stacked = _stacked_as_told(ds, "one each")
    assert stacked["reflectance"].dims == ("time", "band", "y", "x")
    assert list(stacked.band.values) == STAC_IN_MODEL_ORDER
    assert list(zarr_encoding(stacked)) == ["reflectance"]


def test_an_odc_stac_dataset_of_twelve_dates_is_not_taken_for_twelve_bands():
    """One variable per band with 12 dates: each band variable has 12 entries on axis -3 and was coded as if its
    dates were the bands (QA: B02 up to 2312 DN off instead of 823, silently). Refused with the stacking hint, whose
    code keeps the other variables (scl) and the bands' nodata."""
    names = ["red", "green", "blue", "nir", "nir08", "nir09", "coastal", "rededge1", "rededge2", "rededge3", "swir16",
             "swir22"]
    ds = xr.Dataset({n: (("time", "y", "x"), np.full((12, 8, 8), i + 1, np.uint16), {"nodata": 65535})
                     for i, n in enumerate(names)})
    ds["scl"] = (("time", "y", "x"), np.zeros((12, 8, 8), np.uint8))
    ds = ds.assign_coords(time=np.arange(12).astype("datetime64[D]"))
    stacked = _stacked_as_told(ds, "Got none among .* one each")
    assert stacked["reflectance"].dims == ("time", "band", "y", "x") and "scl" in stacked
    assert zarr_encoding(stacked)["reflectance"]["serializer"].nodata == 65535
    # named explicitly: a variable named as one band, or with dates on axis -3, is refused saying so
    with pytest.raises(InvalidInputError, match="a variable named as one band"):
        zarr_encoding(ds.rename({"time": "step"}).assign_coords(step=np.arange(12)), variables=["red"])
    with pytest.raises(InvalidInputError, match="Got dim 'time' \\(dates\\) on axis -3"):
        zarr_encoding(ds.rename({"red": "refl"}), variables=["refl"])


def test_bands_on_another_axis_are_refused_even_when_that_axis_has_twelve_entries():
    """``to_array('band')`` puts the bands first: with twelve monthly dates, axis -3 (time) would pass for bands."""
    ds = _cube(STAC_IN_MODEL_ORDER)
    months = xr.concat([ds] * 6, dim="time").assign_coords(time=np.arange(12))
    first = months.transpose("band", "time", "y", "x")
    with pytest.raises(InvalidInputError, match=r"Got them on axis 0 .* ds = ds.transpose\('time', 'band', 'y', 'x'\)"):
        zarr_encoding(first)
    with pytest.raises(InvalidInputError, match="axis 0"):
        zarr_encoding(first, variables=["reflectance"])
    assert list(zarr_encoding(first.transpose("time", "band", "y", "x"))) == ["reflectance"]


@pytest.mark.parametrize("dims", [("time", "y", "x", "band"), ("y", "x", "band")])
def test_bands_last_get_a_transpose_that_works(dims):
    """Channels-last arrays (as many ML pipelines hold them): the message's own transpose puts bands at -3."""
    shape = {"time": 1, "y": 16, "x": 16, "band": 12}
    ds = xr.Dataset({"refl": (dims, np.full([shape[d] for d in dims], 1000, np.uint16))},
                    coords={"band": STAC_IN_MODEL_ORDER})
    with pytest.raises(InvalidInputError, match="on axis -3") as e:
        zarr_encoding(ds)
    scope = {"ds": ds}
    exec(str(e.value).split("instead: ")[1].rstrip("."), scope)  # noqa: S102 - the message's own code
    assert scope["ds"]["refl"].dims[-3:] == ("band", "y", "x")
    assert list(zarr_encoding(scope["ds"])) == ["refl"]
