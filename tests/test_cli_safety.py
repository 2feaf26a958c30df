"""``tec`` never loses or corrupts data: an output that contains the input (or lies inside it) is refused, outputs
are written to a temporary sibling and renamed into place only on success (an interrupted write leaves the old output
as it was), CF-masked integer inputs are coded as their stored integers, bad option values are one ``tec: error:``
line, and a closed pipe is no error."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

from tec_zarr import cli

rasterio = pytest.importorskip("rasterio")
pytest.importorskip("dask")

from test_cli_errors import _geotiff, fails  # noqa: E402


@pytest.fixture(scope="module")
def tiny(image):
    return np.ascontiguousarray(image[:, :32, :40])


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"") for p in path.rglob("*"))


# -- 1. an output containing the input, or inside it -----------------------------------------------------------------


@pytest.mark.parametrize("inner", ["in.zarr", "scene.tif"])
def test_overwrite_refuses_an_output_that_holds_the_input(capsys, tmp_path, tiny, inner):
    outer = tmp_path / "outer.zarr"
    outer.mkdir()
    (outer / ".zgroup").write_text('{"zarr_format": 2}')
    tif = _geotiff(outer / "scene.tif", tiny)
    if inner == "in.zarr":
        xr.Dataset({"refl": (("band", "y", "x"), tiny)}).to_zarr(outer / "in.zarr", zarr_format=2)
    source = outer / inner
    before = _snapshot(source) if source.is_dir() else source.read_bytes()
    fails(capsys, ["compress", source, outer, "--overwrite", *(["--var", "refl"] if inner == "in.zarr" else [])],
          "does not contain the input")
    assert (_snapshot(source) if source.is_dir() else source.read_bytes()) == before
    assert tif.exists()


def test_an_output_inside_the_input_store_is_refused(capsys, tmp_path, tiny):
    store = tmp_path / "in.zarr"
    xr.Dataset({"refl": (("band", "y", "x"), tiny)}).to_zarr(store, zarr_format=2)
    fails(capsys, ["compress", store, store / "out.zarr"], "outside the input")
    assert not (store / "out.zarr").exists()


# -- 2. outputs replaced only on success --------------------------------------------------------------------------------


def _interrupt(monkeypatch, module, name):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(module, name, boom)


@pytest.mark.parametrize("suffix", [".zarr", ".tec"])
def test_a_failed_compress_keeps_the_old_output_and_leaves_no_temporary(capsys, tmp_path, tiny, monkeypatch, suffix):
    tif = _geotiff(tmp_path / "scene.tif", tiny)
    out = tmp_path / f"scene{suffix}"
    assert cli.main(["compress", str(tif), str(out), "--quiet"]) == 0
    before = _snapshot(out) if out.is_dir() else out.read_bytes()
    import tec_zarr.gdal.raster as raster

    if suffix == ".zarr":  # the write starts (mode="w" clears the store it writes to), then is interrupted
        real = xr.Dataset.to_zarr

        def partial(self, store, *args, **kwargs):
            real(self.isel(x=slice(0, 1)), store, mode="w")
            raise KeyboardInterrupt
        monkeypatch.setattr(xr.Dataset, "to_zarr", partial)
    else:
        _interrupt(monkeypatch, raster, "write_rows")
    assert cli.main(["compress", str(tif), str(out), "--overwrite", "--quiet"]) == 130
    assert (_snapshot(out) if out.is_dir() else out.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["scene.tif", f"scene{suffix}"])


def test_an_interrupted_zarr_write_leaves_nothing_under_the_output_name(tmp_path, tiny, monkeypatch):
    """The write itself starts (a partial store exists on disk) and is interrupted: no store named out.zarr."""
    tif = _geotiff(tmp_path / "scene.tif", tiny)
    real = xr.Dataset.to_zarr

    def partial(self, store, *args, **kwargs):
        real(self.isel(x=slice(0, 1)), store, mode="w")
        raise KeyboardInterrupt
    monkeypatch.setattr(xr.Dataset, "to_zarr", partial)
    assert cli.main(["compress", str(tif), str(tmp_path / "out.zarr"), "--quiet"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_terminated_write_leaves_nothing_under_the_output_name(tmp_path, tiny, monkeypatch, signame):
    """timeout, SLURM, docker stop and Kubernetes send SIGTERM, a closed terminal SIGHUP: both unwind like Ctrl-C
    (temporaries removed, exit status 128 + the signal's number), and the handlers are restored afterwards."""
    import signal

    sig = getattr(signal, signame, None)
    if sig is None:
        pytest.skip(f"no {signame} on this platform")
    tif = _geotiff(tmp_path / "scene.tif", tiny)
    real = xr.Dataset.to_zarr

    def partial(self, store, *args, **kwargs):
        real(self.isel(x=slice(0, 1)), store, mode="w")
        os.kill(os.getpid(), sig)
    monkeypatch.setattr(xr.Dataset, "to_zarr", partial)
    # as a shell starts the command; under nohup (SIGHUP ignored) the ignore is kept: the next test
    outer = signal.signal(sig, signal.SIG_DFL)
    try:
        assert cli.main(["compress", str(tif), str(tmp_path / "out.zarr"), "--quiet"]) == 128 + sig
        assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
        assert signal.getsignal(sig) is signal.SIG_DFL
    finally:
        signal.signal(sig, outer)


def test_an_ignored_sighup_stays_ignored(tmp_path, tiny, monkeypatch):
    """Under nohup SIGHUP is ignored: the command keeps that (a closed terminal must not stop it), so a SIGHUP in the
    middle of the write changes nothing."""
    import signal

    if not hasattr(signal, "SIGHUP"):
        pytest.skip("no SIGHUP on this platform")
    tif = _geotiff(tmp_path / "scene.tif", tiny)
    real = xr.Dataset.to_zarr

    def hung_up(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGHUP)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(xr.Dataset, "to_zarr", hung_up)
    outer = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert cli.main(["compress", str(tif), str(tmp_path / "out.zarr"), "--quiet"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, outer)
    assert (tmp_path / "out.zarr").is_dir()


def test_a_failed_decompress_keeps_the_old_geotiff(tmp_path, tiny, monkeypatch):
    tif = _geotiff(tmp_path / "scene.tif", tiny)
    assert cli.main(["compress", str(tif), str(tmp_path / "scene.tec"), "--quiet"]) == 0
    out = tmp_path / "decoded.tif"
    assert cli.main(["decompress", str(tmp_path / "scene.tec"), str(out), "--quiet"]) == 0
    before = out.read_bytes()
    import tec_zarr.gdal.convert as convert

    def half(out_ds, read_rows, height, width, rows, *args):
        out_ds.write(read_rows(0, 16), window=rasterio.windows.Window(0, 0, width, 16))
        raise KeyboardInterrupt
    monkeypatch.setattr(convert, "_write_strips", half)
    assert cli.main(["decompress", str(tmp_path / "scene.tec"), str(out), "--overwrite", "--quiet"]) == 130
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoded.tif", "scene.tec", "scene.tif"]


def test_nodata_outside_the_dtype_is_refused_before_the_output(capsys, tmp_path, tiny):
    tif = _geotiff(tmp_path / "scene.tif", tiny)
    fails(capsys, ["compress", tif, tmp_path / "a.tec", "--nodata", "-1"], "--nodata", "0..65535")
    fails(capsys, ["compress", tif, tmp_path / "a.zarr", "--nodata", "70000"], "--nodata", "0..65535")
    fails(capsys, ["compress", tif, tmp_path / "a.zarr", "--nodata", "0.5"], "--nodata", "0..65535")
    assert cli.main(["compress", str(tif), str(tmp_path / "s.tec"), "--quiet"]) == 0
    fails(capsys, ["decompress", tmp_path / "s.tec", tmp_path / "o.tif", "--nodata", "1e10"], "0..65535")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tec", "scene.tif"]


# -- 3. CF _FillValue on an integer input --------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [[], ["--max-error", "0"]])
def test_uint16_zarr_with_fillvalue_is_coded_as_integers(tmp_path, tiny, bound):
    src = tmp_path / "in.zarr"
    a = tiny.copy()
    a[:, :4, :4] = 0
    xr.Dataset({"refl": (("band", "y", "x"), a)}).to_zarr(src, zarr_format=2, encoding={"refl": {"_FillValue": 0}})
    out = tmp_path / "out.zarr"
    assert cli.main(["compress", str(src), str(out), "--quiet", *bound]) == 0
    ds = xr.open_zarr(out, mask_and_scale=False)
    assert ds.refl.dtype == np.uint16
    assert ds.refl.attrs.get("nodata") == 0
    back = ds.refl.values.astype(np.int64)
    err = np.abs(back - a).max()
    if bound:
        assert err == 0
    else:
        assert err < 3000  # the usual lossy error in DN, not a float reflectance (millions of DN)
    assert (back[:, :4, :4] == 0).all()  # nodata stored exactly


# -- 4. a 4-D cube with band-split dask chunks --------------------------------------------------------------------------


def test_a_4d_cube_with_split_band_chunks_needs_no_var(tmp_path, tiny):
    cube = np.stack([tiny, tiny])
    src = tmp_path / "cube.zarr"
    ds = xr.Dataset({"refl": (("time", "band", "y", "x"), cube)}).chunk({"time": 1, "band": 4})
    ds.to_zarr(src, zarr_format=3)
    assert cli.main(["compress", str(src), str(tmp_path / "out.zarr"), "--quiet", "--max-error", "0"]) == 0
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "out.zarr").refl.values, cube)


# -- 5. bad option values -----------------------------------------------------------------------------------------------


def test_bad_sizes_and_levels_are_one_line(capsys, tmp_path, tiny):
    tif = _geotiff(tmp_path / "scene.tif", tiny)
    fails(capsys, ["compress", tif, tmp_path / "a.zarr", "--chunk", "-5"], "--chunk", ">= 1")
    fails(capsys, ["compress", tif, tmp_path / "a.zarr", "--chunk", "0"], "--chunk", ">= 1")
    fails(capsys, ["compress", tif, tmp_path / "a.tec", "--tile", "0"], "--tile", "16..4096")
    fails(capsys, ["compress", tif, tmp_path / "a.tec", "--overviews", "20"], "--overviews", "0..5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


# -- 6. a closed pipe ------------------------------------------------------------------------------------------------


def test_info_into_a_closed_pipe_is_quiet(tmp_path, tiny):
    tif = _geotiff(tmp_path / "scene.tif", tiny)
    assert cli.main(["compress", str(tif), str(tmp_path / "s.zarr"), "--quiet"]) == 0
    code = ("import sys, tec_zarr.cli.commands as c; sys.stdout = open(sys.stdout.fileno(), 'w', buffering=1); "
            "sys.exit(c.main(sys.argv[1:]))")
    r, w = os.pipe()
    os.close(r)  # the reader has gone before anything is written
    p = subprocess.run([sys.executable, "-c", code, "info", str(tmp_path / "s.zarr")], stdout=w,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr


# -- 7. a GeoTIFF without georeferencing ------------------------------------------------------------------------------


def test_a_geotiff_without_crs_warns_nothing_and_stores_no_geotransform(tmp_path, tiny, recwarn):
    tif = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tif, "w", driver="GTiff", width=40, height=32, count=12, dtype="uint16") as dst:
            dst.write(tiny)
    assert cli.main(["compress", str(tif), str(tmp_path / "p.zarr"), "--quiet"]) == 0
    assert cli.main(["compress", str(tif), str(tmp_path / "p.tec"), "--quiet"]) == 0
    assert not [w for w in recwarn if issubclass(w.category, rasterio.errors.NotGeoreferencedWarning)]
    ds = xr.open_zarr(tmp_path / "p.zarr")
    assert "geotransform" not in ds.attrs
    assert "GeoTransform" not in ds.spatial_ref.attrs


# -- 8. package errors pass through ------------------------------------------------------------------------------------


def test_package_type_errors_are_not_called_damage(capsys, tmp_path, tiny, monkeypatch):
    from tec_zarr.errors import UnsupportedDtypeError
    import tec_zarr.gdal.convert as convert

    tif = _geotiff(tmp_path / "scene.tif", tiny)
    assert cli.main(["compress", str(tif), str(tmp_path / "s.zarr"), "--quiet"]) == 0

    def unsupported(*args, **kwargs):
        raise UnsupportedDtypeError("Expected uint16 or float32. Got int8 instead.")
    monkeypatch.setattr(convert, "zarr_to_geotiff", unsupported)
    err = fails(capsys, ["decompress", tmp_path / "s.zarr", tmp_path / "o.tif"], "Expected uint16 or float32")
    assert "damaged" not in err and "complete" not in err
