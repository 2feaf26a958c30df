"""Band scale and offset (value = stored x scale + offset; GDAL's band scale and offset, CF's scale_factor and
add_offset) travel with the data: GeoTIFF -> Zarr / .tec -> GeoTIFF, Zarr <-> .tec, the VRT sidecar and the
plug-in, so that rasterio's mask_and_scale, rioxarray and xarray read the same physical values as from the source.
Sentinel-2 COGs of baseline 04.00 and later state scale 0.0001 and offset -0.1."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

from common import GEOTRANSFORM
from tec_zarr import cli, tecfile
from tec_zarr.errors import InvalidInputError, TecFormatError
from tec_zarr.radiometry import from_attrs, parse_radiometry, to_attrs

rasterio = pytest.importorskip("rasterio")

S2 = ([1e-4] * 12, [-0.1] * 12)


def test_parse_radiometry():
    assert parse_radiometry(None, None, 3) is None
    assert parse_radiometry([1, 1, 1], [0, 0, 0], 3) is None  # plain bands state nothing
    assert parse_radiometry([2, 1, 1], None, 3) == ((2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert parse_radiometry(None, [-0.1, None, 0], 3) == ((1.0, 1.0, 1.0), (-0.1, 0.0, 0.0))
    for scales, offsets in [([1, 1], None), ([0, 1, 1], None), ([float("nan")] * 3, None), ("abc", None),
                            (None, [1, 2, float("inf")]), ([1, 1, {}], None)]:
        with pytest.raises(InvalidInputError, match="Expected 3 finite nonzero band scales"):
            parse_radiometry(scales, offsets, 3)


def test_attributes_round_trip():
    same = ((1e-4,) * 12, (-0.1,) * 12)
    assert to_attrs(same, 0) == {"scale_factor": 1e-4, "add_offset": -0.1, "missing_value": 0}
    assert to_attrs(same, float("nan")) == {"scale_factor": 1e-4, "add_offset": -0.1}
    assert from_attrs(to_attrs(same, 0), 12) == same
    assert from_attrs({"scale_factor": np.float32(2.0)}, 2) == ((2.0, 2.0), (0.0, 0.0))
    assert from_attrs({"scale_factor": np.array([2.0])}, 2) == ((2.0, 2.0), (0.0, 0.0))
    differ = ((1e-4, 2e-4), (0.0, -0.1))
    assert to_attrs(differ) == {"band_scales": [1e-4, 2e-4], "band_offsets": [0.0, -0.1]}  # CF has one per variable
    assert from_attrs(to_attrs(differ), 2) == differ
    assert to_attrs(None) == {} and from_attrs({}, 2) is None
    with pytest.raises(InvalidInputError, match="Expected a number for the CF attribute scale_factor"):
        from_attrs({"scale_factor": "0.0001"}, 2)


def test_tec_metadata_states_it_only_where_set(tmp_path, original):
    plain = tecfile.write(tmp_path / "a.tec", original[:, :64, :64], crs_wkt=None, geotransform=None, tile=64)
    assert plain.radiometry is None and b"scales" not in plain.to_json()  # files keep the bytes they had
    meta = tecfile.write(tmp_path / "b.tec", original[:, :64, :64], crs_wkt=None, geotransform=None, tile=64,
                         radiometry=parse_radiometry(*S2, 12))
    with tecfile.open(tmp_path / "b.tec") as f:
        assert f.metadata.radiometry == meta.radiometry == ((1e-4,) * 12, (-0.1,) * 12)
    doc = json.loads(meta.to_json())
    for change in ({"scales": [1e-4] * 11}, {"offsets": ["x"] * 12}, {"scales": [0.0] * 12}):
        with pytest.raises(TecFormatError, match="Invalid .tec metadata"):
            tecfile.TecMetadata.from_json(json.dumps({**doc, **change}).encode())
    with pytest.raises(TecFormatError):
        tecfile.TecMetadata.from_json(b"[1, 2]")


@pytest.fixture
def stated(tmp_path, original):
    """A baseline-04.00 GeoTIFF: DN + 1000, bands stating scale 0.0001 and offset -0.1, NoData 0 in a corner."""
    dn = (original[:, :96, :80].astype(np.int64) + 1000).astype(np.uint16)
    dn[:, :4, :4] = 0
    path = tmp_path / "stated.tif"
    with rasterio.open(path, "w", driver="GTiff", width=80, height=96, count=12, dtype="uint16", nodata=0,
                       crs="EPSG:32610", transform=rasterio.Affine.from_gdal(*GEOTRANSFORM)) as f:
        f.write(dn)
        f.scales, f.offsets = S2
    return path, dn


def _reflectance(dn: np.ndarray) -> np.ndarray:
    return np.where(dn == 0, np.nan, dn * 1e-4 - 0.1)


def test_cli_outputs_keep_the_scale_and_offset(tmp_path, stated):
    src, dn = stated
    assert cli.main(["compress", str(src), str(tmp_path / "s.zarr"), "--chunk", "64", "--quiet"]) == 0
    assert cli.main(["compress", str(src), str(tmp_path / "s.tec"), "--quiet"]) == 0
    # Zarr: CF attributes, so xarray reads reflectance, NaN where the GeoTIFF had NoData, as rioxarray does
    refl = xr.open_zarr(tmp_path / "s.zarr")["reflectance"].values
    assert refl.dtype.kind == "f" and np.array_equal(np.isnan(refl), dn == 0)
    stored = xr.open_zarr(tmp_path / "s.zarr", mask_and_scale=False)["reflectance"]
    assert stored.dtype == np.uint16 and stored.attrs["scale_factor"] == 1e-4 and stored.attrs["add_offset"] == -0.1
    np.testing.assert_allclose(refl, _reflectance(stored.values), rtol=0, atol=1e-12)
    assert np.sqrt(np.nanmean((refl - _reflectance(dn)) ** 2)) < 0.01  # lossy, at the default quality
    # .tec: in the metadata, shown by tec info
    with tecfile.open(tmp_path / "s.tec") as f:
        assert f.metadata.radiometry == ((1e-4,) * 12, (-0.1,) * 12)
    from tec_zarr.gdal.convert import describe

    assert "scale 0.0001, offset -0.1 (every band)" in describe(tmp_path / "s.tec")
    # back to GeoTIFF, from both, and on through Zarr -> Zarr, .tec -> Zarr and Zarr -> .tec
    steps = [("compress", "s.zarr", "z2.zarr"), ("convert", "s.tec", "t.zarr"), ("convert", "s.zarr", "z.tec")]
    for command, a, b in steps:
        assert cli.main([command, str(tmp_path / a), str(tmp_path / b), "--quiet"]) == 0
    for name in ("s.zarr", "s.tec", "z2.zarr", "t.zarr", "z.tec"):
        tif = tmp_path / f"{name}.tif"
        assert cli.main(["decompress", str(tmp_path / name), str(tif), "--quiet"]) == 0
        with rasterio.open(tif) as f:
            assert f.scales == (1e-4,) * 12 and f.offsets == (-0.1,) * 12 and f.nodata == 0, name
            assert f.dtypes[0] == "uint16"
    for name in ("z2.zarr", "t.zarr"):
        assert np.array_equal(np.isnan(xr.open_zarr(tmp_path / name)["reflectance"].values), dn == 0)


def test_bands_of_different_scales_keep_them(tmp_path, stated):
    src, dn = stated
    scales = [1e-4] * 11 + [2e-4]
    with rasterio.open(src, "r+") as f:
        f.scales = scales
    assert cli.main(["compress", str(src), str(tmp_path / "s.zarr"), "--quiet"]) == 0
    attrs = xr.open_zarr(tmp_path / "s.zarr")["reflectance"].attrs
    assert attrs["band_scales"] == scales and "scale_factor" not in attrs  # CF has one packing per variable
    assert cli.main(["decompress", str(tmp_path / "s.zarr"), str(tmp_path / "o.tif"), "--quiet"]) == 0
    with rasterio.open(tmp_path / "o.tif") as f:
        assert list(f.scales) == scales


def test_gdal_readers_see_the_scale_and_offset(tmp_path, stated):
    """The VRT sidecar states them per band: rasterio's mask_and_scale (rioxarray) reads reflectance."""
    from tec_zarr import gdal
    from tec_zarr.gdal.convert import geotiff_to_tec

    src, dn = stated
    geotiff_to_tec(src, tmp_path / "s.tec", tile=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gdal.open(tmp_path / "s.tec") as ds:
            assert ds.scales == (1e-4,) * 12 and ds.offsets == (-0.1,) * 12
