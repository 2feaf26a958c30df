"""The ``tec`` command line, called through main(argv) as a user would type it."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from common import assert_bound
from tec_zarr import cli, metrics

rasterio = pytest.importorskip("rasterio")


@pytest.fixture
def geotiff(tmp_path, image):
    from rasterio.transform import from_origin

    path = tmp_path / "scene.tif"
    a = np.ascontiguousarray(image[:, :200, :150])
    with rasterio.open(path, "w", driver="GTiff", width=150, height=200, count=12, dtype="uint16",
                       crs="EPSG:32610", transform=from_origin(600000, 4130000, 10, 10), nodata=0) as dst:
        dst.write(a)
        for i, name in enumerate(["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]):
            dst.set_band_description(i + 1, name)
    return path, a


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_compress_geotiff_then_info(geotiff, tmp_path, capsys, zarr_format):
    path, a = geotiff
    out = tmp_path / "scene.zarr"
    assert cli.main(["compress", str(path), str(out), "--zarr-format", str(zarr_format), "--chunk", "128",
                     "--quality", "1"]) == 0
    ds = xr.open_zarr(out)
    back = ds["reflectance"].values
    assert back.shape == a.shape and back.dtype == np.uint16
    assert metrics.psnr(a, back) > 37.5  # measured 38.8 dB at quality 1
    assert list(ds.band.values)[-1] == "B12"
    assert ds.x.values[0] == 600005.0 and ds.y.values[0] == 4129995.0
    # CF georeferencing: rioxarray finds the CRS and transform through the grid-mapping variable
    rioxarray = pytest.importorskip("rioxarray")  # noqa: F841 (registers .rio)
    assert ds["reflectance"].rio.crs.to_epsg() == 32610
    assert ds["reflectance"].rio.transform().to_gdal() == (600000.0, 10.0, 0.0, 4130000.0, 0.0, -10.0)
    assert "32610" in ds.attrs["crs"]
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "reflectance" in text and "TEC model tec-fp" in text and "quality 1" in text


def test_compress_zarr_input(tmp_path, cube):
    src = tmp_path / "raw.zarr"
    xr.Dataset({"refl": (("time", "band", "y", "x"), cube[:2, :, :64, :64])}).to_zarr(src)
    out = tmp_path / "tec.zarr"
    assert cli.main(["compress", str(src), str(out), "--quiet"]) == 0
    assert xr.open_zarr(out)["refl"].shape == (2, 12, 64, 64)


def test_a_vrt_is_a_raster_input_and_a_sidecar_is_refused(tmp_path, geotiff, capsys):
    """gdalbuildvrt -separate is how a SAFE's band files become one raster: tec compress reads a VRT like a
    GeoTIFF; the VRT sidecar of a .tec file is refused, naming the .tec."""
    import rasterio.shutil

    path, expected = geotiff
    vrt = tmp_path / "stack.vrt"
    rasterio.shutil.copy(path, vrt, driver="VRT")
    for out in ("s.zarr", "s.tec"):
        assert cli.main(["compress", str(vrt), str(tmp_path / out), "--quiet"]) == 0
    assert metrics.psnr(expected, xr.open_zarr(tmp_path / "s.zarr")["reflectance"].values) > 40
    prolog = tmp_path / "prolog.vrt"  # as editors and other tools write them
    prolog.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<!-- stacked -->\n' + vrt.read_text())
    assert cli.main(["compress", str(prolog), str(tmp_path / "p.zarr"), "--quiet"]) == 0
    assert cli.main(["to-vrt", str(tmp_path / "s.tec")]) == 0
    capsys.readouterr()
    assert cli.main(["compress", str(tmp_path / "s.tec.vrt"), str(tmp_path / "again.zarr")]) == 2
    err = capsys.readouterr().err
    assert "VRT sidecar" in err and "s.tec)" in err and not (tmp_path / "again.zarr").exists()


def test_compress_keeps_the_other_variables(tmp_path, cube, capsys):
    """A cube's SCL mask and per-date cloud fractions beside the reflectance are copied as they are (zarr's default
    compression); before, tec compress wrote the reflectance alone and exited 0."""
    a = cube[:2, :, :48, :64]
    scl = (a[:, 3] % 12).astype(np.uint8)
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    xr.Dataset({"refl": (("time", "band", "y", "x"), a), "scl": (("time", "y", "x"), scl, {"flag": "SCL"}),
                "cloud_fraction": (("time",), np.array([0.02, 0.31]))}).to_zarr(src, zarr_format=3)
    assert cli.main(["compress", str(src), str(out), "--quality", "1"]) == 0
    back = xr.open_zarr(out)
    np.testing.assert_array_equal(back["scl"].values, scl)
    assert back["scl"].dtype == np.uint8 and back["scl"].attrs["flag"] == "SCL"
    np.testing.assert_array_equal(back["cloud_fraction"].values, [0.02, 0.31])
    assert metrics.psnr(a, back["refl"].values) > 38
    text = capsys.readouterr().out
    assert "scl: (2, 48, 64) uint8" in text and "TEC model" not in text.split("scl:")[1].split("\n")[0]


def test_zarr_to_zarr_keeps_a_crs_stored_as_a_data_variable(tmp_path, cube, capsys):
    """rioxarray's write_crs, then a plain to_zarr, stores the grid mapping as a data variable the variable's
    grid_mapping attribute names: the compressed store (and a GeoTIFF decoded from it) keeps it."""
    rioxarray = pytest.importorskip("rioxarray")  # noqa: F841 (registers .rio)
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    da = xr.DataArray(cube[0, :, :48, :64], dims=("band", "y", "x"),
                      coords={"band": bands, "y": 2800000 - 10.0 * np.arange(48) - 5, "x": 200000 + 10.0 * np.arange(64) + 5})
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    da.rio.write_crs("EPSG:32629").to_dataset(name="refl").to_zarr(src, zarr_format=3)
    assert "spatial_ref" in xr.open_zarr(src).data_vars  # as xarray stores it
    assert cli.main(["compress", str(src), str(out), "--quiet"]) == 0
    assert xr.open_zarr(out, decode_coords="all")["refl"].rio.crs.to_epsg() == 32629
    assert cli.main(["decompress", str(out), str(tmp_path / "d.tif"), "--quiet"]) == 0
    with rasterio.open(tmp_path / "d.tif") as f:
        assert f.crs.to_epsg() == 32629


def test_arrays_in_groups(tmp_path, cube, capsys):
    """tec info lists TEC arrays in groups (a store per year, say); decompress names them when it needs one."""
    import tec_zarr

    ds = xr.Dataset({"refl": (("time", "band", "y", "x"), cube[:1, :, :32, :32])})
    for year in ("2019", "2020"):
        ds.to_zarr(tmp_path / "g.zarr", group=year, mode="a", encoding=tec_zarr.zarr_encoding(ds))
    assert cli.main(["info", str(tmp_path / "g.zarr")]) == 0
    text = capsys.readouterr().out
    assert "2019/refl: (1, 12, 32, 32)" in text and "2020/refl" in text and text.count("TEC model") == 2
    assert cli.main(["decompress", str(tmp_path / "g.zarr"), str(tmp_path / "a.tif"), "--quiet"]) == 2
    assert "['2019/refl', '2020/refl'] instead: name one (variable=..., --var on the command line)" in capsys.readouterr().err
    assert cli.main(["decompress", str(tmp_path / "g.zarr"), str(tmp_path / "a.tif"), "--var", "2020/refl",
                     "--quiet"]) == 0
    with rasterio.open(tmp_path / "a.tif") as f:
        np.testing.assert_array_equal(f.read(), xr.open_zarr(tmp_path / "g.zarr", group="2020")["refl"].values[0])


def test_models_lists_rd(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tec-fp" in out and "PSNR" in out and "(default)" in out


def test_errors_are_reported_not_raised(tmp_path, geotiff, capsys):
    path, _ = geotiff
    assert cli.main(["compress", str(path), str(tmp_path / "x.zarr"), "--model", "nope"]) == 2
    assert "Expected one of the installed models" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path / "missing.txt"), str(tmp_path / "y.zarr")]) == 2


def test_cli_lossless_and_max_error(cube, tmp_path):
    src = tmp_path / "in.zarr"
    a = np.ascontiguousarray(cube[:1, :, :50, :60])
    xr.Dataset({"reflectance": (("time", "band", "y", "x"), a)}).to_zarr(src, zarr_format=3)
    for flags, bound in ((["--lossless"], 0), (["--max-error", "10"], 10)):
        out = tmp_path / f"out{bound}.zarr"
        assert cli.main(["compress", str(src), str(out), "--quiet", *flags]) == 0
        assert_bound(a, xr.open_zarr(out)["reflectance"].values, bound)
    with pytest.raises(SystemExit):
        cli.main(["compress", str(src), str(tmp_path / "x.zarr"), "--lossless", "--psnr", "30"])


def test_entry_points_reach_main():
    """``tec`` (the console script), ``python -m tec_zarr`` and ``tec_zarr.cli.main(argv)`` are one function."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="tec")
    assert script.load() is cli.main and sys.modules["tec_zarr.cli.commands"].main is cli.main
    res = subprocess.run([sys.executable, "-m", "tec_zarr", "models"], capture_output=True, text=True)
    assert res.returncode == 0 and "tec-fp" in res.stdout


def _write_bands(path, data, names):
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(data),
                       dtype="uint16", crs="EPSG:32610", transform=from_origin(600000, 4130000, 10, 10)) as dst:
        dst.write(data)
        for i, name in enumerate(names):
            dst.set_band_description(i + 1, name)


def test_compress_reorders_named_bands(geotiff, tmp_path):
    """A GeoTIFF whose bands are described in another order is stored in the model's order, not coded as is."""
    from tec_zarr.bands import S2_L2A_BANDS

    _, a = geotiff
    reversed_tif = tmp_path / "reversed.tif"
    _write_bands(reversed_tif, a[::-1], S2_L2A_BANDS[::-1])
    assert cli.main(["compress", str(reversed_tif), str(tmp_path / "r.zarr"), "--quality", "2"]) == 0
    assert cli.main(["compress", str(reversed_tif), str(tmp_path / "r.tec"), "--quality", "2"]) == 0
    ds = xr.open_zarr(tmp_path / "r.zarr")
    assert list(ds.band.values) == list(S2_L2A_BANDS)
    assert metrics.psnr(a, ds["reflectance"].values) > 41.5  # the right order codes as well as the original
    from tec_zarr import tecfile

    with tecfile.open(tmp_path / "r.tec") as f:
        assert f.metadata.band_names == S2_L2A_BANDS
        assert metrics.psnr(a, f.read()) > 41.5


def test_compress_refuses_l1c_and_unknown_bands(geotiff, tmp_path, capsys):
    from tec_zarr.bands import S2_L2A_BANDS

    _, a = geotiff
    l1c = tmp_path / "l1c.tif"
    names = list(S2_L2A_BANDS[:10]) + ["B10"] + list(S2_L2A_BANDS[10:])
    _write_bands(l1c, np.concatenate([a[:10], a[9:10], a[10:]]), names)
    assert cli.main(["compress", str(l1c), str(tmp_path / "l1c.zarr")]) != 0
    err = capsys.readouterr().err
    assert "L1C" in err and "gdal_translate -b 1 -b 2 -b 3 -b 4 -b 5 -b 6 -b 7 -b 8 -b 9 -b 10 -b 12 -b 13" in err
    assert err.count("\n") == 1 and err.startswith("tec: error:")
    odd = tmp_path / "odd.tif"
    _write_bands(odd, a, ["B01"] * 12)
    assert cli.main(["compress", str(odd), str(tmp_path / "odd.tec")]) != 0
    assert "Expected the bands B01 B02" in capsys.readouterr().err


def test_compress_puts_a_stac_cubes_named_bands_in_the_models_order(image, tmp_path, capsys):
    """A Zarr cube as stackstac writes it from earth-search (STAC asset names on the band coordinate, in the item's
    alphabetical order) is stored in the model's order; with the item's other assets beside the bands it is refused,
    naming them."""
    from tec_zarr.bands import S2_L2A_BANDS

    stac = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09", "swir16",
            "swir22"]
    a = np.ascontiguousarray(image[:, :64, :80])
    ds = xr.Dataset({"stackstac": (("time", "band", "y", "x"), a[None])}, coords={"band": stac})
    alphabetical = ds.sel(band=sorted(stac))
    alphabetical.to_zarr(tmp_path / "in.zarr", zarr_format=3, consolidated=False)
    assert cli.main(["compress", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), "--quality", "2", "--quiet"]) == 0
    back = xr.open_zarr(tmp_path / "out.zarr")["stackstac"]
    assert list(back.band.values) == stac  # the coordinate travels with its bands
    assert metrics.psnr(a, back.values[0]) > 41.5
    extra = xr.concat([alphabetical, ds.isel(band=[0]).assign_coords(band=["scl"])], dim="band")
    extra.to_zarr(tmp_path / "extra.zarr", zarr_format=3, consolidated=False)
    assert cli.main(["compress", str(tmp_path / "extra.zarr"), str(tmp_path / "x.zarr"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "with scl beside them" in err and err.count("\n") == 1 and not (tmp_path / "x.zarr").exists()
    assert len(S2_L2A_BANDS) == len(stac)


def test_compress_float_dn_needs_float_scale_1_and_codes_it_with_it(image, tmp_path, capsys):
    """A float32 GeoTIFF of DN (a cube builder's unscaled float export) is refused at the default float_scale,
    naming --float-scale 1, for Zarr and .tec outputs; with it both code it as well as uint16 DN."""
    from rasterio.transform import from_origin

    from tec_zarr import tecfile

    a = np.ascontiguousarray(image[:, :64, :80]).astype(np.float32)
    path = tmp_path / "dn.tif"
    with rasterio.open(path, "w", driver="GTiff", width=80, height=64, count=12, dtype="float32", crs="EPSG:32610",
                       transform=from_origin(600000, 4130000, 10, 10)) as dst:
        dst.write(a)
    for out in ("a.zarr", "a.tec"):
        assert cli.main(["compress", str(path), str(tmp_path / out), "--quiet"]) != 0
        assert "--float-scale 1" in capsys.readouterr().err and not (tmp_path / out).exists()
        assert cli.main(["compress", str(path), str(tmp_path / out), "--quiet", "--float-scale", "1"]) == 0
    assert metrics.psnr(a, xr.open_zarr(tmp_path / "a.zarr")["reflectance"].values) > 41.5
    with tecfile.open(tmp_path / "a.tec") as f:
        assert f.metadata.codec["float_scale"] == 1.0 and metrics.psnr(a, f.read()) > 41.5
