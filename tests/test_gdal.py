"""GDAL's route to ``.tec`` files: rasterio in this process, osgeo, the GDAL command line and QGIS, through the VRT
sidecar and its trusted pixel function. The format itself, without GDAL: test_tecfile.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest
import xarray as xr

from common import (
    GDAL_CLI_MISSING,
    GEOTRANSFORM,
    OSGEO_MISSING,
    QGIS_MISSING,
    QGIS_READER,
    TILE,
    corrupt_tile,
    has_gdal_cli,
    has_osgeo,
    system_python_with_qgis,
)
from tec_zarr import cli, tecfile
from tec_zarr.bands import S2_L2A_BANDS
from tec_zarr.errors import CorruptTileError, SidecarMismatchError, TecZarrError

rasterio = pytest.importorskip("rasterio")
from rasterio.errors import RasterioError  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from tec_zarr import gdal  # noqa: E402
from tec_zarr.gdal import convert, pixelfunction  # noqa: E402

needs_gdal_cli = pytest.mark.skipif(not has_gdal_cli(), reason=GDAL_CLI_MISSING)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gdal_cli(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, **gdal.gdal_environment()}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def covered(window: Window) -> int:
    rows = range(window.row_off // TILE, -(-(window.row_off + window.height) // TILE))
    cols = range(window.col_off // TILE, -(-(window.col_off + window.width) // TILE))
    return len(rows) * len(cols)


def test_sidecars_name_the_shim_module(scene):
    """Sidecars (of every version) name gdal_driver.pixelfunction.tec_band: the shim exports it, and only it."""
    import gdal_driver
    import gdal_driver.pixelfunction as shim

    assert shim.tec_band is pixelfunction.tec_band and shim.__all__ == ["tec_band"]
    assert gdal_driver.PIXEL_FUNCTION == "gdal_driver.pixelfunction.tec_band"
    assert gdal.config_options()["GDAL_VRT_PYTHON_TRUSTED_MODULES"] == "gdal_driver.pixelfunction"
    assert "gdal_driver.pixelfunction.tec_band" in gdal.sidecar(scene[0]).read_text()


# --- GDAL: rasterio in this process ----------------------------------------------------------------------------


def test_rasterio_window_read_is_tecfile_read(scene):
    path, levels = scene
    pixelfunction.CACHE.clear()
    with gdal.open(path) as ds:
        assert (ds.count, ds.height, ds.width) == (12, 200, 150) and ds.block_shapes[0] == (TILE, TILE)
        assert ds.crs.to_epsg() == 32610 and ds.transform.to_gdal() == GEOTRANSFORM and ds.nodata == 0
        assert ds.descriptions == S2_L2A_BANDS and ds.overviews(1) == [2, 4]
        window = Window(col_off=60, row_off=10, width=80, height=60)
        before = tecfile.decoded_tiles()
        got = ds.read(window=window)
        assert tecfile.decoded_tiles() - before == covered(window)  # each tile once for all 12 bands
        np.testing.assert_array_equal(got, levels[0][:, 10:70, 60:140])
        np.testing.assert_array_equal(ds.read(), levels[0])


def test_datasets_opened_and_read_in_other_threads(scene):
    """A tile server or a thread pool opens and reads in its worker threads, and may hand a dataset to another
    thread: every read is the codec's (before, threads other than the first failed: rasterio.Env is per thread)."""
    from concurrent.futures import ThreadPoolExecutor

    path, levels = scene
    windows = [Window(col_off=x, row_off=y, width=41, height=37) for y in range(0, 160, 53) for x in range(0, 110, 37)]

    def read(window):
        with gdal.open(path) as ds:
            return ds.read(window=window)

    with ThreadPoolExecutor(4) as pool:
        for window, got in zip(windows, pool.map(read, windows)):
            r, c = window.row_off, window.col_off
            np.testing.assert_array_equal(got, levels[0][:, r : r + 37, c : c + 41])
        with gdal.open(path) as ds:  # opened here, read there
            np.testing.assert_array_equal(pool.submit(ds.read, 3).result(), levels[0][2])


def test_gdal_python_turned_off_by_the_user_is_said_not_overridden(scene):
    """GDAL_VRT_ENABLE_PYTHON=NO is the user's choice: tec_zarr.gdal.open refuses, naming it and the way
    without GDAL, instead of switching Python on for the whole process."""
    from rasterio.env import get_gdal_config, set_gdal_config

    before = get_gdal_config("GDAL_VRT_ENABLE_PYTHON")
    set_gdal_config("GDAL_VRT_ENABLE_PYTHON", "NO")
    try:
        with pytest.raises(TecZarrError, match="GDAL_VRT_ENABLE_PYTHON=NO"):
            gdal.open(scene[0])
        assert get_gdal_config("GDAL_VRT_ENABLE_PYTHON") in (False, "NO")  # left as the user set it
    finally:
        set_gdal_config("GDAL_VRT_ENABLE_PYTHON", "TRUSTED_MODULES" if before is None else before)


def test_rasterio_reads_overviews(scene):
    path, levels = scene
    with gdal.open(path) as ds:
        np.testing.assert_array_equal(ds.read(out_shape=(12, 100, 75)), levels[1])
        np.testing.assert_array_equal(ds.read(3, out_shape=(50, 38)), levels[2][2])
    with rasterio.Env(**gdal.config_options()), rasterio.open(f"{path}.vrt", overview_level=1) as ds:
        assert ds.shape == (50, 38)
        np.testing.assert_array_equal(ds.read(), levels[2])


def near(got: np.ndarray, image: np.ndarray) -> bool:
    """Whether every pixel of ``got`` is one of the 3 x 3 pixels of ``image`` around its nearest-neighbour source:
    nearest resampling, whatever rounding GDAL or the pixel function used at the pixel borders."""
    rows = np.floor((np.arange(got.shape[1]) + 0.5) * image.shape[1] / got.shape[1]).astype(int)
    cols = np.floor((np.arange(got.shape[2]) + 0.5) * image.shape[2] / got.shape[2]).astype(int)
    found = np.zeros(got.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r = np.clip(rows + dy, 0, image.shape[1] - 1)
            c = np.clip(cols + dx, 0, image.shape[2] - 1)
            found |= got == image[:, r][:, :, c]
    return bool(found.all())


@pytest.mark.parametrize("shape", [(150, 112), (199, 149), (101, 77), (74, 55), (37, 28), (13, 9), (260, 190)])
def test_rasterio_reads_at_any_size(scene, shape):
    """Sizes between (or beyond) the levels, as QGIS asks when zoomed: nearest pixels of one level."""
    path, levels = scene
    with gdal.open(path) as ds:
        got = ds.read(out_shape=(12, *shape))
    assert got.shape == (12, *shape)
    assert any(near(got, image) for image in levels.values())
    if shape[0] >= 150:  # well finer than overview 1 (GDAL takes an overview up to a little finer than asked)
        assert near(got, levels[0])


def test_corrupt_tile_is_a_read_error(tmp_path, scene):
    path, levels = scene
    bad = corrupt_tile(path, tmp_path / "bad.tec", 0, 1, 1)
    with gdal.open(bad) as ds:
        with pytest.raises(RasterioError) as e:
            ds.read(1, window=Window(64, 64, 10, 10))
        assert "CRC32" in str(e.value.__cause__)
        np.testing.assert_array_equal(ds.read(1, window=Window(0, 0, 10, 10)), levels[0][0, :10, :10])


def test_moved_or_replaced_file_is_a_clear_error(tmp_path, scene, original):
    path = tmp_path / "scene.tec"
    shutil.copy(scene[0], path)
    sidecar = gdal.sidecar(path)
    moved = tmp_path / "moved.tec"
    path.rename(moved)
    with tecfile.open(moved) as f, pytest.raises(SidecarMismatchError, match="moved"):
        pixelfunction.reader(str(path), f.metadata.uuid)
    with rasterio.Env(**gdal.config_options()), rasterio.open(sidecar) as ds:
        with pytest.raises(RasterioError) as e:
            ds.read(1)
        assert "moved or deleted" in str(e.value.__cause__)
    tecfile.write(path, original[:, :32, :32], crs_wkt=None, geotransform=GEOTRANSFORM, tile=32)  # another uuid
    with rasterio.Env(**gdal.config_options()), rasterio.open(sidecar) as ds:
        with pytest.raises(RasterioError) as e:
            ds.read(1)
        assert "replaced" in str(e.value.__cause__)
    with gdal.open(path) as ds:  # opening the .tec refreshes the sidecar
        assert ds.shape == (32, 32)


@pytest.mark.skipif(not has_osgeo(), reason=OSGEO_MISSING)
def test_open_osgeo(scene):
    ds = gdal.open_osgeo(scene[0])
    np.testing.assert_array_equal(ds.ReadAsArray(), scene[1][0])


# --- GDAL: the command line ---------------------------------------------------------------------------------------


@needs_gdal_cli
def test_gdalinfo_describes_the_sidecar(scene):
    path, _ = scene
    sidecar = gdal.sidecar(path)
    out = gdal_cli("gdalinfo", sidecar.name, cwd=path.parent)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Size is 150, 200" in text and text.count("\nBand ") == 12 and "Block=64x64 Type=UInt16" in text
    assert "WGS 84 / UTM zone 10N" in text and 'ID["EPSG",32610]' in text
    assert "Origin = (600000.000000000000000,4130000.000000000000000)" in text
    assert "Pixel Size = (10.000000000000000,-10.000000000000000)" in text
    assert "Description = B12" in text and "NoData Value=0" in text and "Overviews: 75x100, 38x50" in text


@needs_gdal_cli
def test_gdal_translate_and_stats_read_the_pixels(scene):
    path, levels = scene
    sidecar = gdal.sidecar(path)
    before = sha256(path)
    out = gdal_cli("gdal_translate", "-q", sidecar.name, "out.tif", cwd=path.parent)
    assert out.returncode == 0, out.stderr
    with rasterio.open(path.parent / "out.tif") as ds:
        np.testing.assert_array_equal(ds.read(), levels[0])
        assert ds.descriptions == S2_L2A_BANDS and ds.crs.to_epsg() == 32610
    out = gdal_cli("gdal_translate", "-q", "-outsize", "75", "100", sidecar.name, "ov.tif", cwd=path.parent)
    with rasterio.open(path.parent / "ov.tif") as ds:
        np.testing.assert_array_equal(ds.read(), levels[1])
    out = gdal_cli("gdal_translate", "-q", "-outsize", "37%", "37%", sidecar.name, "p37.tif", cwd=path.parent)
    assert out.returncode == 0, out.stderr
    with rasterio.open(path.parent / "p37.tif") as ds:  # 74 x 55: nearest pixels of overview 1 (100 x 75)
        assert ds.shape == (74, 55)
        assert near(ds.read(), levels[1])
    out = gdal_cli("gdalinfo", "-stats", sidecar.name, cwd=path.parent)
    assert out.returncode == 0 and "STATISTICS_MEAN" in out.stdout, out.stderr
    assert sha256(path) == before  # GDAL rewrites the VRT sidecar, never the .tec


@needs_gdal_cli
def test_gdal_cli_reports_a_corrupt_tile(tmp_path, scene):
    bad = corrupt_tile(scene[0], tmp_path / "bad.tec", 0, 2, 1)
    out = gdal_cli("gdal_translate", "-q", gdal.sidecar(bad).name, "x.tif", cwd=tmp_path)
    assert out.returncode != 0 and CorruptTileError.__name__ in out.stderr


def test_zarr_crs_code_becomes_wkt(tmp_path, original):
    """A Zarr store naming its CRS by EPSG code converts to a .tec file holding the WKT (rasterio resolves it)."""
    from tec_zarr import zarr_encoding

    ds = xr.Dataset({"reflectance": (("band", "y", "x"), original[:, :64, :64])},
                    coords={"x": 600005.0 + 10 * np.arange(64), "y": 4129995.0 - 10 * np.arange(64)},
                    attrs={"crs": "EPSG:32610"})
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3, encoding=zarr_encoding(ds, zarr_format=3, chunks={"y": TILE, "x": TILE}),
               consolidated=False)
    meta = convert.zarr_to_tec(tmp_path / "s.zarr", tmp_path / "s.tec")
    assert "UTM zone 10N" in meta.crs_wkt and meta.geotransform == GEOTRANSFORM
    with gdal.open(tmp_path / "s.tec") as f:
        assert f.crs.to_epsg() == 32610


def test_sharded_store_is_found_and_read_but_not_copied_to_tec(tmp_path, original):
    """A store whose TEC array sits in shards: decompress finds and reads it; convert says why it cannot copy it."""
    from tec_zarr import zarr_encoding
    from tec_zarr.errors import TecFileError

    ds = xr.Dataset({"reflectance": (("band", "y", "x"), original[:, :64, :64])})
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3, encoding=zarr_encoding(ds, chunks={"y": 32, "x": 32},
                                                                          shards={"y": 64, "x": 64}))
    convert.zarr_to_geotiff(tmp_path / "s.zarr", tmp_path / "s.tif")
    with rasterio.open(tmp_path / "s.tif") as f:
        np.testing.assert_array_equal(f.read(), xr.open_zarr(tmp_path / "s.zarr")["reflectance"].values)
    with pytest.raises(TecFileError, match="sharded array"):
        convert.zarr_to_tec(tmp_path / "s.zarr", tmp_path / "s.tec")


def test_stores_convert_cannot_copy_say_what_to_do(tmp_path, original):
    """A store without TEC arrays, and a time series (4-D), are refused with the way forward, not a bare list."""
    from tec_zarr import zarr_encoding
    from tec_zarr.errors import TecFileError

    plain = xr.Dataset({"reflectance": (("band", "y", "x"), original[:, :32, :32])})
    plain.to_zarr(tmp_path / "plain.zarr", zarr_format=3)
    with pytest.raises(TecFileError, match=r"Got \[\] instead: the store holds no TEC-coded array"):
        convert.zarr_to_tec(tmp_path / "plain.zarr", tmp_path / "p.tec")
    series = xr.Dataset({"reflectance": (("time", "band", "y", "x"), np.stack([original[:, :32, :32]] * 2))})
    series.to_zarr(tmp_path / "series.zarr", zarr_format=3, encoding=zarr_encoding(series))
    with pytest.raises(TecFileError, match="tec decompress STORE date.tif --time-index N, then tec compress"):
        convert.zarr_to_tec(tmp_path / "series.zarr", tmp_path / "s.tec")


# --- the tec command ------------------------------------------------------------------------------------------------


def test_cli_geotiff_tec_geotiff(tmp_path, original, capsys):
    from rasterio.transform import from_origin

    tif = tmp_path / "scene.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=150, height=200, count=12, dtype="uint16", crs="EPSG:32610",
                       transform=from_origin(600000, 4130000, 10, 10), nodata=0) as dst:
        dst.write(original)
        for i, name in enumerate(S2_L2A_BANDS, 1):
            dst.set_band_description(i, name)
    tec = tmp_path / "scene.tec"
    assert cli.main(["compress", str(tif), str(tec), "--tile", "128", "--overviews", "1", "--quality", "0"]) == 0
    assert cli.main(["info", str(tec)]) == 0
    assert "tiles 128x128, levels [0, 1]" in capsys.readouterr().out
    assert cli.main(["decompress", str(tec), str(tmp_path / "back.tif")]) == 0
    with tecfile.open(tec) as f, rasterio.open(tmp_path / "back.tif") as ds:
        assert f.metadata.geotransform == GEOTRANSFORM and f.metadata.band_names == S2_L2A_BANDS
        np.testing.assert_array_equal(ds.read(), f.read())
        assert ds.crs.to_epsg() == 32610 and ds.transform.to_gdal() == GEOTRANSFORM and ds.descriptions == S2_L2A_BANDS
    assert cli.main(["to-vrt", str(tec)]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "scene.tec.vrt").exists() and "export GDAL_VRT_PYTHON_TRUSTED_MODULES=gdal_driver.pixelfunction" in text
    assert "export PYTHONPATH=" in text
    assert cli.main(["info", str(tmp_path / "missing.tec")]) == 2
    assert "tec: error: Expected a readable .tec file" in capsys.readouterr().err


def test_qgis_opens_the_sidecar(scene, tmp_path):
    """PyQGIS (Debian's QGIS, its own Python) reads the sidecar as a GIS user's QGIS would, headless."""
    python = system_python_with_qgis()
    if python is None:
        pytest.skip(QGIS_MISSING)
    path, levels = scene
    sidecar = gdal.sidecar(path)
    env = {**os.environ, **gdal.gdal_environment(), "QT_QPA_PLATFORM": "offscreen"}
    out = tmp_path / "qgis.npy"
    res = subprocess.run([python, "-c", QGIS_READER, str(sidecar), str(out)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    valid, crs, band12, xmin, ymax, _, _ = res.stdout.strip().splitlines()[-1].split("|")
    assert valid == "True" and crs == "EPSG:32610" and band12.endswith("B12")
    assert (float(xmin), float(ymax)) == (GEOTRANSFORM[0], GEOTRANSFORM[3])
    np.testing.assert_array_equal(np.load(out), levels[0])
