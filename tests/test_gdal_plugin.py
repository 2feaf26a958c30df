"""The native GDAL plug-in (gdal_driver/tec_driver.cpp, ``tec gdal-plugin``): Debian's GDAL programs and QGIS open
``scene.tec`` itself and GDAL's Zarr driver reads TEC chunks of format-2 stores, with the codec's exact pixels.

Built once per session with g++ against the system GDAL (a few seconds); the tests that need it skip, saying which
Debian packages are missing, where g++, libgdal-dev or gdal-bin is absent (CI installs them: .ci/run). The Python
side the plug-in calls (tec_zarr/gdal/driver.py) is tested without GDAL."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest
import xarray as xr

from common import (GDAL_CLI_MISSING, GEOTRANSFORM, PLUGIN_MISSING, QGIS_MISSING, QGIS_READER, TILE, corrupt_tile,
                    has_gdal_cli, system_python_with_qgis)
from tec_zarr import cli, tecfile
from tec_zarr.bands import S2_L2A_BANDS
from tec_zarr.codec.zarr2 import TEC
from tec_zarr.errors import CorruptTileError
from tec_zarr.gdal import driver, plugin


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory):
    """The environment of ``tec gdal-plugin``'s export lines, for a plug-in built once into a session folder."""
    if not has_gdal_cli():
        pytest.skip(GDAL_CLI_MISSING)
    missing = plugin.missing_packages()
    if missing:
        pytest.skip(f"{PLUGIN_MISSING} {' '.join(missing)} (apt-get install {' '.join(missing)})")
    folder = plugin.build(tmp_path_factory.mktemp("gdalplugins"))
    # Only the export lines: no GDAL_VRT_* or PYTHONSO left over from the VRT route's environment.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GDAL_", "TEC_ZARR_PYTHON")) and k != "PYTHONSO"}
    return {**base, **plugin.environment(folder)}


def run(*args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def patched_env(plugin_env, folder, code: str) -> dict:
    """``plugin_env`` whose Python first runs ``code`` (a sitecustomize.py in ``folder``), with ``driver`` and
    ``json`` imported: it replaces what the plug-in calls to play a Python side that misbehaves."""
    (folder / "sitecustomize.py").write_text(f"import json\nfrom tec_zarr.gdal import driver\n{code}\n")
    return {**plugin_env, "PYTHONPATH": os.pathsep.join([str(folder), plugin_env["PYTHONPATH"]])}


def read_tif(path) -> tuple[np.ndarray, object]:
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path) as ds:
        return ds.read(), (ds.descriptions, ds.crs.to_epsg() if ds.crs else None, ds.transform.to_gdal(), ds.nodata)


# --- the Python side, without GDAL ----------------------------------------------------------------------------------


def test_driver_describes_and_reads_blocks(scene):
    import json

    path, levels = scene
    info = json.loads(driver.open(str(path)))
    try:
        assert (info["bands"], info["width"], info["height"], info["tile"]) == (12, 150, 200, TILE)
        assert info["data_type"] == "UInt16" and info["nodata"] == "0.0" and info["band_names"] == list(S2_L2A_BANDS)
        assert info["levels"] == [[0, 150, 200], [1, 75, 100], [2, 38, 50]] and info["geotransform"] == list(GEOTRANSFORM)
        block = np.frombuffer(driver.read_block(info["handle"], 1, 3, 1, 0), np.uint16).reshape(TILE, TILE)
        np.testing.assert_array_equal(block[: 100 - TILE, :TILE], levels[1][2, TILE:100, :TILE])
        assert (block[100 - TILE :] == 0).all()  # edge padding: the fill value
    finally:
        driver.close(info["handle"])


def test_driver_decompress_is_the_codec(original):
    codec = TEC(quality=1, nodata=0)
    chunk = codec.encode(np.ascontiguousarray(original[:, :TILE, :TILE]))
    raw = driver.decompress(bytes(chunk), 12 * TILE * TILE * 2)
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint16).reshape(12, TILE, TILE), codec.decode(chunk))
    assert driver.decompress(bytes(chunk), 0) == raw
    with pytest.raises(Exception):
        driver.decompress(bytes(chunk), 100)  # a buffer of another size is refused before decoding


def test_build_names_the_missing_packages(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(plugin.PluginBuildError, match="apt-get install g\\+\\+ libgdal-dev"):
        plugin.build(tmp_path)
    assert cli.main(["gdal-plugin", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tec: error:") and "apt-get install g++ libgdal-dev" in err


# --- the GDAL programs ----------------------------------------------------------------------------------------------


def test_tec_gdal_plugin_prints_the_exports(plugin_env, tmp_path, capsys):
    assert cli.main(["gdal-plugin", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    library = tmp_path / f"{plugin.gdal_version().rsplit('.', 1)[0]}" / plugin.LIBRARY_NAME
    assert library.is_file() and f"export GDAL_DRIVER_PATH={library.parent}" in out
    assert "export TEC_ZARR_PYTHONSO=" in out and "export PYTHONPATH=" in out
    built = library.stat().st_mtime_ns
    assert cli.main(["gdal-plugin", "--dir", str(tmp_path)]) == 0  # up to date: not compiled again
    assert library.stat().st_mtime_ns == built


def test_gdalinfo_names_the_tec_driver(plugin_env, scene):
    path, _ = scene
    out = run("gdalinfo", path.name, env=plugin_env, cwd=path.parent)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("Driver: TEC/") and "Size is 150, 200" in text and text.count("\nBand ") == 12
    assert "WGS 84 / UTM zone 10N" in text and 'ID["EPSG",32610]' in text
    assert "Origin = (600000.000000000000000,4130000.000000000000000)" in text
    assert "Pixel Size = (10.000000000000000,-10.000000000000000)" in text
    assert "Block=64x64 Type=UInt16" in text and "Description = B12" in text and "NoData Value=0" in text
    assert "Overviews: 75x100, 38x50" in text and "Files: scene.tec\n" in text  # no sidecar


def test_gdalinfo_shows_the_band_scale_and_offset(plugin_env, original, scene, tmp_path):
    """value = stored x scale + offset, as the source stated (Sentinel-2 from baseline 04.00: 0.0001, -0.1)."""
    from tec_zarr.radiometry import parse_radiometry

    tecfile.write(tmp_path / "s.tec", original[:, :64, :64], crs_wkt=None, geotransform=None, tile=64,
                  radiometry=parse_radiometry([1e-4] * 12, [-0.1] * 12, 12))
    out = run("gdalinfo", "s.tec", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Offset: -0.1,   Scale:0.0001") == 12, out.stdout
    assert not (tmp_path / "s.tec.aux.xml").exists()  # reported, not a PAM change
    plain = run("gdalinfo", scene[0].name, env=plugin_env, cwd=scene[0].parent)
    assert plain.returncode == 0 and "Band 12 " in plain.stdout and "Scale:" not in plain.stdout


def test_gdal_translate_equals_tec_decompress(plugin_env, scene, tmp_path):
    path, _ = scene
    for level in (0, 1):
        assert cli.main(["decompress", str(path), str(tmp_path / f"ref{level}.tif"), "--level", str(level),
                         "--quiet"]) == 0
    ref, ref_meta = read_tif(tmp_path / "ref0.tif")
    out = run("gdal_translate", "-q", str(path), "out.tif", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got, meta = read_tif(tmp_path / "out.tif")
    np.testing.assert_array_equal(got, ref)
    assert meta == ref_meta and meta[0] == S2_L2A_BANDS and meta[1] == 32610
    out = run("gdal_translate", "-q", "-srcwin", "10", "20", "100", "90", str(path), "win.tif", env=plugin_env,
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(read_tif(tmp_path / "win.tif")[0], ref[:, 20:110, 10:110])
    out = run("gdal_translate", "-q", "-outsize", "75", "100", str(path), "ov.tif", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(read_tif(tmp_path / "ov.tif")[0], read_tif(tmp_path / "ref1.tif")[0])


def test_gdalinfo_stats_leave_the_file_untouched(plugin_env, scene, tmp_path):
    path = tmp_path / "scene.tec"
    shutil.copy(scene[0], path)
    before = sha256(path)
    out = run("gdalinfo", "-stats", path.name, env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and "STATISTICS_MEAN" in out.stdout, out.stderr
    assert sha256(path) == before  # statistics go to scene.tec.aux.xml
    assert (tmp_path / "scene.tec.aux.xml").exists()


def test_gdaladdo_adds_external_overviews_to_a_file_without_levels(plugin_env, image, tmp_path):
    """A .tec written without --overviews (the default) gets pyramids as GDAL gives any read-only format:
    gdaladdo -ro writes scene.tec.ovr beside it, the .tec untouched, and reads at those sizes use them."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    tif = tmp_path / "in.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=96, height=80, count=12, dtype="uint16", crs="EPSG:32610",
                       transform=from_origin(600000, 4130000, 10, 10)) as dst:
        dst.write(np.ascontiguousarray(image[:, :80, :96]))
    assert cli.main(["compress", str(tif), str(tmp_path / "s.tec"), "--tile", "32", "--quiet"]) == 0
    before = sha256(tmp_path / "s.tec")
    out = run("gdaladdo", "-q", "-ro", "-r", "average", "s.tec", "2", "4", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s.tec.ovr").exists() and sha256(tmp_path / "s.tec") == before
    info = run("gdalinfo", "s.tec", env=plugin_env, cwd=tmp_path)
    assert "Overviews: 48x40, 24x20" in info.stdout, info.stdout
    out = run("gdal_translate", "-q", "-outsize", "48", "40", "s.tec", "half.tif", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with rasterio.open(tmp_path / "s.tec.ovr") as ovr:
        np.testing.assert_array_equal(read_tif(tmp_path / "half.tif")[0], ovr.read())


def test_corrupt_tile_fails_the_read(plugin_env, scene, tmp_path):
    bad = corrupt_tile(scene[0], tmp_path / "bad.tec", 0, 2, 1)
    out = run("gdal_translate", "-q", bad.name, "x.tif", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 1 and CorruptTileError.__name__ in out.stderr  # a GDAL error, not a crash (signal)
    out = run("gdal_translate", "-q", "-srcwin", "0", "0", "64", "64", bad.name, "ok.tif", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr  # other tiles still read
    np.testing.assert_array_equal(read_tif(tmp_path / "ok.tif")[0], scene[1][0][:, :64, :64])


def test_no_python_is_a_gdal_error(plugin_env, scene, tmp_path):
    env = {k: v for k, v in plugin_env.items() if k != "TEC_ZARR_PYTHONSO"}
    out = run("gdalinfo", str(scene[0]), env=env, cwd=tmp_path)
    assert out.returncode == 1 and "TEC_ZARR_PYTHONSO" in out.stderr and "tec gdal-plugin" in out.stderr
    # libpython, but not the package: nor a virtualenv on PATH, where the embedded interpreter would find its
    # site-packages (as it does, rightly, for a user whose environment is active)
    path = os.pathsep.join(p for p in plugin_env.get("PATH", "").split(os.pathsep)
                           if p and not os.path.exists(os.path.join(p, "..", "pyvenv.cfg")))
    env = {**plugin_env, "PYTHONPATH": str(tmp_path), "PATH": path}
    out = run("gdalinfo", str(scene[0]), env=env, cwd=tmp_path)
    assert out.returncode == 1 and "No module named 'tec_zarr'" in out.stderr


def test_a_wrong_python_home_is_a_gdal_error(plugin_env, scene, tmp_path):
    """Python's init ends the process on a home without its standard library ("Fatal Python error"): refused first."""
    for env in ({**plugin_env, "TEC_ZARR_PYTHONHOME": str(tmp_path)},
                {**{k: v for k, v in plugin_env.items() if k != "TEC_ZARR_PYTHONHOME"}, "PYTHONHOME": str(tmp_path)}):
        out = run("gdalinfo", str(scene[0]), env=env, cwd=tmp_path)
        assert out.returncode == 1 and "Fatal Python error" not in out.stderr, out.stderr
        assert f"ERROR 1: TEC: the Python home {tmp_path} has no standard library" in out.stderr


@pytest.mark.parametrize("change", ["d['levels'] = [5]", "del d['band_names']", "d['levels'][1][0] = 31",
                                    "d['levels'][2][1] = 0", "d['tile'] = 2**31 - 1"])
def test_malformed_description_is_a_gdal_error(plugin_env, scene, tmp_path, change):
    """The plug-in checks open()'s JSON: json-c aborted gdalinfo (SIGABRT) on a level that was not an array."""
    code = (f"def fake(path, _open=driver.open):\n    d = json.loads(_open(path))\n    {change}\n"
            "    return json.dumps(d).encode()")
    env = patched_env(plugin_env, tmp_path, code + "\ndriver.open = fake")
    out = run("gdalinfo", str(scene[0]), env=env, cwd=tmp_path)
    assert out.returncode == 1 and "TEC: unexpected description" in out.stderr, out.stderr


def test_gdal_zarr_driver_reads_a_format_2_store(plugin_env, scene, tmp_path):
    store = tmp_path / "store.zarr"
    assert cli.main(["convert", str(scene[0]), str(store), "--zarr-format", "2", "--quiet"]) == 0
    out = run("gdal_translate", "-q", f'ZARR:"{store}":/reflectance:3', "b04.tif", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    expected = xr.open_zarr(store)["reflectance"][3].values
    got = read_tif(tmp_path / "b04.tif")[0]
    assert got.shape == (1, 200, 150)
    np.testing.assert_array_equal(got[0], expected)


@pytest.mark.parametrize("result", ["None", "'x' * len(_read_block(*args))", "_read_block(*args)[:-2]"])
def test_a_block_of_another_type_or_size_is_a_gdal_error(plugin_env, scene, tmp_path, result):
    """read_block() must return the block's bytes: a str of the right length passed for pixels."""
    env = patched_env(plugin_env, tmp_path, f"_read_block = driver.read_block\n"
                      f"driver.read_block = lambda *args: {result}")
    out = run("gdal_translate", "-q", str(scene[0]), "x.tif", env=env, cwd=tmp_path)
    assert out.returncode == 1 and "IReadBlock failed" in out.stderr, out.stderr
    assert "did not return bytes" in out.stderr or "expected 8192 bytes for block (0, 0). Got 8190" in out.stderr


def test_gdal_zarr_driver_refuses_a_chunk_of_another_size(plugin_env, scene, tmp_path):
    """A decoded chunk that does not fill GDAL's buffer exactly fails in the plug-in: older GDAL Zarr drivers do not
    check the size returned and would keep the previous tile's bytes in the rest of their buffer."""
    store = tmp_path / "store.zarr"
    assert cli.main(["convert", str(scene[0]), str(store), "--zarr-format", "2", "--quiet"]) == 0
    env = patched_env(plugin_env, tmp_path, "_decompress = driver.decompress\n"
                      "driver.decompress = lambda data, nbytes: _decompress(data, nbytes)[:-2]")
    out = run("gdal_translate", "-q", f'ZARR:"{store}":/reflectance:3', "b04.tif", env=env, cwd=tmp_path)
    assert out.returncode == 1 and "TEC: a chunk of 98302 bytes where GDAL expects 98304" in out.stderr, out.stderr


def test_qgis_opens_the_tec_file_itself(plugin_env, scene, tmp_path):
    """Debian's QGIS (headless PyQGIS, its own Python) opens scene.tec, not a .vrt, through the plug-in."""
    python = system_python_with_qgis()
    if python is None:
        pytest.skip(QGIS_MISSING)
    path, levels = scene
    out = tmp_path / "qgis.npy"
    res = run(python, "-c", QGIS_READER, str(path), str(out), env={**plugin_env, "QT_QPA_PLATFORM": "offscreen"},
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    valid, crs, band12, xmin, ymax, uri, driver_named = res.stdout.strip().splitlines()[-1].split("|")
    assert valid == "True" and crs == "EPSG:32610" and band12.endswith("B12") and uri == str(path)
    assert driver_named == "True"  # GDAL's driver in QGIS is the plug-in's
    assert (float(xmin), float(ymax)) == (GEOTRANSFORM[0], GEOTRANSFORM[3])
    np.testing.assert_array_equal(np.load(out), levels[0])
    with tecfile.open(path) as f:
        np.testing.assert_array_equal(np.load(out), f.read())
