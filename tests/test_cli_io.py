"""``tec compress`` / ``tec decompress`` as a user runs them: decoded pixels, the GeoTIFF they write (predictor, NoData,
georeferencing), windowed reads of the input, progress on a terminal only, one line for missed ``--psnr`` targets,
and the help text."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import xarray as xr

from tec_zarr import cli

rasterio = pytest.importorskip("rasterio")

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
GEOTRANSFORM = (600000.0, 10.0, 0.0, 4130000.0, 0.0, -10.0)


def _geotiff(path, a, nodata=None, names=True):
    from rasterio.transform import Affine

    with rasterio.open(path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0],
                       dtype=a.dtype, crs="EPSG:32610", transform=Affine.from_gdal(*GEOTRANSFORM),
                       nodata=nodata) as dst:
        dst.write(a)
        if names:
            for i, name in enumerate(BANDS, 1):
                dst.set_band_description(i, name)
    return path


@pytest.fixture(scope="module")
def pixels(image):
    a = np.ascontiguousarray(image[:, :70, :90])
    a[:, :5, :7] = 0  # some nodata-valued pixels
    return a


def _read_tif(path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # the float32 store has no CRS
        src = rasterio.open(path)
    with src:
        return src.read(), src.nodata, src.tags(ns="IMAGE_STRUCTURE"), src.crs, src.transform.to_gdal(), src.descriptions


def _run(argv) -> int:
    return cli.main([str(a) for a in argv])


# -- decompress ----------------------------------------------------------------------------------------------------


def test_decompress_zarr_to_geotiff(tmp_path, pixels):
    """GeoTIFF (no NoData) -> Zarr -> GeoTIFF: the decoded pixels, DEFLATE + predictor 2, no NoData invented."""
    src = _geotiff(tmp_path / "in.tif", pixels)
    store = tmp_path / "s.zarr"
    assert _run(["compress", src, store, "--chunk", "32", "--quiet"]) == 0
    decoded = xr.open_zarr(store)["reflectance"].values
    assert "nodata" not in xr.open_zarr(store)["reflectance"].attrs  # the source declared none
    assert _run(["decompress", store, tmp_path / "out.tif", "--quiet"]) == 0
    data, nodata, structure, crs, gt, names = _read_tif(tmp_path / "out.tif")
    np.testing.assert_array_equal(data, decoded)
    assert nodata is None
    assert structure["COMPRESSION"] == "DEFLATE" and structure["PREDICTOR"] == "2"
    assert crs.to_epsg() == 32610 and gt == GEOTRANSFORM and list(names) == BANDS
    # the dask windows of the GeoTIFF code the same chunks as the whole array in memory
    import tec_zarr

    ref = tmp_path / "ref.zarr"
    ds = xr.Dataset({"reflectance": (("band", "y", "x"), pixels)})
    ds.to_zarr(ref, encoding=tec_zarr.zarr_encoding(ds, zarr_format=3, chunks={"y": 32, "x": 32}), consolidated=False)
    np.testing.assert_array_equal(xr.open_zarr(ref, consolidated=False)["reflectance"].values, decoded)


def test_decompress_declares_the_nodata_the_input_declares(tmp_path, pixels):
    src = _geotiff(tmp_path / "in.tif", pixels, nodata=0)
    assert _run(["compress", src, tmp_path / "s.zarr", "--quiet"]) == 0
    assert _run(["decompress", tmp_path / "s.zarr", tmp_path / "a.tif", "--quiet"]) == 0
    assert _read_tif(tmp_path / "a.tif")[1] == 0
    assert _run(["decompress", tmp_path / "s.zarr", tmp_path / "b.tif", "--quiet", "--nodata", "none"]) == 0
    assert _read_tif(tmp_path / "b.tif")[1] is None
    # --nodata at compress time is declared too
    assert _run(["compress", _geotiff(tmp_path / "plain.tif", pixels), tmp_path / "n.zarr", "--quiet",
                 "--nodata", "7"]) == 0
    assert xr.open_zarr(tmp_path / "n.zarr")["reflectance"].attrs["nodata"] == 7
    assert _run(["decompress", tmp_path / "n.zarr", tmp_path / "n.tif", "--quiet"]) == 0
    assert _read_tif(tmp_path / "n.tif")[1] == 7


def test_decompress_tec_to_geotiff(tmp_path, pixels):
    from tec_zarr import tecfile

    src = _geotiff(tmp_path / "in.tif", pixels)
    tec = tmp_path / "s.tec"
    assert _run(["compress", src, tec, "--tile", "32", "--overviews", "1", "--quiet"]) == 0
    assert _run(["decompress", tec, tmp_path / "l0.tif", "--quiet"]) == 0
    assert _run(["decompress", tec, tmp_path / "l1.tif", "--quiet", "--level", "1", "--nodata", "none"]) == 0
    with tecfile.open(tec) as f:
        level0, level1, declared = f.read(), f.read(level=1), f.metadata.nodata
    data, nodata, structure, crs, gt, names = _read_tif(tmp_path / "l0.tif")
    np.testing.assert_array_equal(data, level0)
    # a .tec file always has a nodata value (0 when the GeoTIFF declared none): its GeoTIFF declares it
    assert nodata == declared == 0 and structure["PREDICTOR"] == "2" and list(names) == BANDS
    data1, nodata1, _, _, gt1, _ = _read_tif(tmp_path / "l1.tif")
    np.testing.assert_array_equal(data1, level1)
    assert nodata1 is None and gt1 == (600000.0, 20.0, 0.0, 4130000.0, 0.0, -20.0)


@pytest.mark.parametrize("flag", [[], ["--nodata", "nan"]])
def test_float32_geotiff_with_nan_nodata_to_tec(tmp_path, pixels, flag):
    """The usual float NoData, NaN (declared, or given as --nodata nan), needs no nodata value: NaN is stored as
    missing in float32 whatever the nodata, so the pixels come back NaN exactly where they were."""
    from tec_zarr import metrics, tecfile

    a = (pixels / np.float32(10000)).astype(np.float32)
    a[:, 30:, :9] = np.nan  # a swath edge
    a[3, 2, 40] = np.nan
    tec = tmp_path / "f.tec"
    assert _run(["compress", _geotiff(tmp_path / "f.tif", a, nodata=float("nan")), tec, "--tile", "32", "--quiet",
                 *flag]) == 0
    with tecfile.open(tec) as f:
        back, declared = f.read(), f.metadata.nodata
    assert declared is None and back.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(back), np.isnan(a))
    valid = ~np.isnan(a)
    assert metrics.psnr(np.where(valid, a, 0) * 10000, np.where(valid, back, 0) * 10000) > 40
    assert _run(["decompress", tec, tmp_path / "d.tif", "--quiet"]) == 0
    np.testing.assert_array_equal(np.isnan(_read_tif(tmp_path / "d.tif")[0]), np.isnan(a))
    # the same to a Zarr store; a NaN nodata for integer data is refused
    assert _run(["compress", tmp_path / "f.tif", tmp_path / "f.zarr", "--quiet", *flag]) == 0
    stored = xr.open_zarr(tmp_path / "f.zarr")
    np.testing.assert_array_equal(np.isnan(stored[list(stored.data_vars)[0]].values), np.isnan(a))
    if flag:
        ints = _geotiff(tmp_path / "u.tif", pixels)
        assert _run(["compress", ints, tmp_path / "u.zarr", "--quiet", *flag]) == 2


def test_float32_tec_pads_edge_tiles_with_nan_and_converts_from_zarr(tmp_path, pixels):
    """Float data without nodata: edge tiles are padded with NaN (missing, no bits) as zarr pads such chunks, an
    all-NaN tile costs a mask, and a Zarr store written by tec compress (missing chunk, fill NaN) converts to a
    .tec file that reads the same. Before, the padding was 0.0, coded as data (2.7x the bytes on a 300 x 410
    scene), and the conversion was refused."""
    from tec_zarr import tecfile

    a = (pixels / np.float32(10000)).astype(np.float32)  # 70 x 90 in tiles of 32: edge tiles on both axes
    a[:, 32:, 64:] = np.nan  # the bottom-right tiles hold nothing
    a[:, :, 80:] = np.nan
    tif = _geotiff(tmp_path / "f.tif", a, nodata=float("nan"))
    assert _run(["compress", tif, tmp_path / "f.tec", "--tile", "32", "--quiet"]) == 0
    assert _run(["compress", tif, tmp_path / "f.zarr", "--chunk", "32", "--quiet"]) == 0
    with tecfile.open(tmp_path / "f.tec") as f:
        sizes = {(ty, tx): len(f.read_tile(0, ty, tx)) for ty in range(3) for tx in range(3)}
        np.testing.assert_array_equal(np.isnan(f.read()), np.isnan(a))
        for ty, tx in [(1, 2), (2, 2)]:  # all NaN (the valid part and the padding): a mask, no pixels
            assert np.isnan(f.decode_tile(0, ty, tx)).all() and sizes[ty, tx] < 300
        assert np.isnan(f.decode_tile(0, 2, 0)[:, 70 - 64 :]).all()  # the padding below the image
    whole = sizes[0, 0]
    assert sizes[2, 0] < 0.6 * whole  # 6 of 32 rows valid: far less than a whole tile
    assert _run(["convert", tmp_path / "f.zarr", tmp_path / "c.tec"]) == 0
    with tecfile.open(tmp_path / "c.tec") as f, tecfile.open(tmp_path / "f.tec") as g:
        np.testing.assert_array_equal(f.read(), g.read())
    # a store xarray wrote with zarr_encoding's defaults (nodata 0, NaN fill, the all-NaN chunk not written)
    import tec_zarr

    ds = xr.Dataset({"r": (("band", "y", "x"), a)})
    ds.to_zarr(tmp_path / "x.zarr", zarr_format=3, encoding=tec_zarr.zarr_encoding(ds, chunks={"y": 32, "x": 32}))
    assert _run(["convert", tmp_path / "x.zarr", tmp_path / "x.tec"]) == 0
    with tecfile.open(tmp_path / "x.tec") as f:
        np.testing.assert_array_equal(np.isnan(f.read()), np.isnan(a))
        assert f.metadata.nodata == 0 and np.isnan(f.decode_tile(0, 2, 2)).all()


def test_decompress_one_date_of_a_cube_and_float32(tmp_path, cube, capsys):
    raw = tmp_path / "raw.zarr"
    a = np.ascontiguousarray(cube[:3, :, :40, :48])
    xr.Dataset({"refl": (("time", "band", "y", "x"), a)}).to_zarr(raw, consolidated=False)
    assert _run(["compress", raw, tmp_path / "c.zarr", "--quiet"]) == 0
    decoded = xr.open_zarr(tmp_path / "c.zarr")["refl"].values
    capsys.readouterr()
    assert _run(["decompress", tmp_path / "c.zarr", tmp_path / "d.tif"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dates to write" in err and "--time-index" in err
    assert _run(["decompress", tmp_path / "c.zarr", tmp_path / "d.tif", "--time-index", "2", "--quiet"]) == 0
    np.testing.assert_array_equal(_read_tif(tmp_path / "d.tif")[0], decoded[2])

    floats = tmp_path / "f.zarr"
    xr.Dataset({"r": (("band", "y", "x"), (a[0] / np.float32(10000)).astype(np.float32))}).to_zarr(floats, consolidated=False)
    assert _run(["compress", floats, tmp_path / "fc.zarr", "--quiet"]) == 0
    assert _run(["decompress", tmp_path / "fc.zarr", tmp_path / "f.tif", "--quiet"]) == 0
    data, _, structure, *_ = _read_tif(tmp_path / "f.tif")
    assert data.dtype == np.float32 and structure["PREDICTOR"] == "3"
    np.testing.assert_array_equal(data, xr.open_zarr(tmp_path / "fc.zarr")["r"].values)


def test_decompressed_geotiff_is_smaller_than_deflate_without_predictor(tmp_path, image):
    src = _geotiff(tmp_path / "in.tif", np.ascontiguousarray(image[:, :128, :128]))
    assert _run(["compress", src, tmp_path / "s.tec", "--quiet"]) == 0
    assert _run(["decompress", tmp_path / "s.tec", tmp_path / "d.tif", "--quiet"]) == 0
    data = _read_tif(tmp_path / "d.tif")[0]
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=128, height=128, count=12, dtype="uint16", tiled=True,
                       compress="deflate", crs="EPSG:32610", transform=rasterio.transform.Affine.from_gdal(*GEOTRANSFORM)) as dst:
        dst.write(data)
    assert (tmp_path / "d.tif").stat().st_size < 0.95 * plain.stat().st_size


# -- .tec output: windows, not the whole raster ---------------------------------------------------------------------


def test_tec_output_reads_tile_rows_and_writes_the_same_bytes(tmp_path, image, monkeypatch):
    from tec_zarr import tecfile

    a = np.ascontiguousarray(image[:, :200, :150])
    src = _geotiff(tmp_path / "in.tif", a, nodata=0)
    heights = []
    read = rasterio.io.DatasetReader.read

    def recording_read(self, *args, **kwargs):
        out = read(self, *args, **kwargs)
        heights.append(out.shape[-2])
        return out

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recording_read)
    assert _run(["compress", src, tmp_path / "s.tec", "--tile", "64", "--overviews", "2", "--quiet"]) == 0
    monkeypatch.undo()
    assert max(heights) <= 64 and sum(heights) == 3 * 200  # one pass per level, a tile row at a time
    tecfile.write(tmp_path / "ref.tec", a, crs_wkt=None, geotransform=None, band_names=BANDS, nodata=0, tile=64,
                  overviews=(1, 2))
    with tecfile.open(tmp_path / "s.tec") as got, tecfile.open(tmp_path / "ref.tec") as ref:
        m = ref.metadata
        tiles = [(k, ty, tx) for k in m.levels for ty in range(m.grid(k)[0]) for tx in range(m.grid(k)[1])]
        assert all(got.read_tile(*t) == ref.read_tile(*t) for t in tiles)


@pytest.mark.parametrize("level", [1, 2, 3, 6])
def test_overview_strips_equal_the_whole_downsample(level):
    """Overview rows computed from strips of the image are the pixels of downsample(image) (floats bit for bit)."""
    from tec_zarr.bitstream.tecfile import TecMetadata
    from tec_zarr.codec.config import CodecConfig
    from tec_zarr.gdal import raster

    rng = np.random.default_rng(level)
    a = (rng.standard_normal((12, 203, 77)) * 10.0 ** rng.integers(-6, 6, (12, 203, 77))).astype(np.float32)
    a[rng.random(a.shape) < 0.3] = 0
    config = CodecConfig.create(nodata=0.0)
    for tile in (16, 20, 64):
        meta = TecMetadata.create(shape=a.shape, dtype=a.dtype, band_names=None, crs_wkt=None, geotransform=None,
                                  nodata=config.nodata, tile=tile, codec=config.to_json(), overviews=(level,))
        strips = list(raster._level_strips(lambda y0, y1: a[:, y0:y1], meta, level))
        assert all(s.shape[1] == tile for s in strips[:-1]) and 0 < strips[-1].shape[1] <= tile
        assert np.concatenate(strips, axis=1).tobytes() == raster.downsample(a, 2**level, 0.0).tobytes()


# -- progress, timing, --psnr ---------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("output", ["s.tec", "s.zarr"])
def test_progress_on_a_terminal_only(tmp_path, pixels, capsys, monkeypatch, output):
    src = _geotiff(tmp_path / "in.tif", pixels)
    extra = ["--tile", "32"] if output.endswith(".tec") else ["--chunk", "32"]
    assert _run(["compress", src, tmp_path / output, *extra]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # not a terminal: no progress lines
    assert out.startswith(f"compressed {src} into {tmp_path / output} in ") and " s\n" in out
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert _run(["compress", src, tmp_path / ("t" + output), *extra]) == 0
    drawn = terminal.getvalue()
    assert "\rtec compress: " in drawn and "100%" in drawn and drawn.endswith("\r\x1b[K")
    if output.endswith(".tec"):
        assert "9/9 tiles" in drawn
    terminal.truncate(0)
    assert _run(["compress", src, tmp_path / ("q" + output), *extra, "--quiet"]) == 0
    assert terminal.getvalue() == ""
    assert _run(["decompress", tmp_path / output, tmp_path / "d.tif"]) == 0
    assert "\rtec decompress: " in terminal.getvalue() and "70/70 rows 100%" in terminal.getvalue()


def test_progress_redraws_at_most_five_times_a_second():
    from tec_zarr.cli.progress import Progress

    terminal = _Terminal()
    progress = Progress("work", "items", stream=terminal)
    for i in range(1, 1001):
        progress(i, 1000)
    progress.close()
    lines = terminal.getvalue().split("\r")
    assert len(lines) < 20 and "work: 1000/1000 items 100%" in terminal.getvalue()
    off = io.StringIO()
    Progress("work", stream=off)(1, 2)
    assert off.getvalue() == ""


@pytest.mark.parametrize("output, unit", [("p.zarr", "chunks"), ("p.tec", "tiles")])
def test_unreachable_psnr_is_one_summary_line(tmp_path, pixels, capsys, output, unit):
    src = _geotiff(tmp_path / "in.tif", pixels)
    extra = ["--chunk", "48"] if output.endswith(".zarr") else ["--tile", "48"]
    with _no_warning_escapes():
        assert _run(["compress", src, tmp_path / output, "--psnr", "90", "--quiet", *extra]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tec: warning: 4 of 4 {unit} cannot reach --psnr 90 dB"), err
    assert "--max-error" in err and "max_error=" not in err and "PsnrTargetWarning" not in err
    # a reachable target prints nothing
    assert _run(["compress", src, tmp_path / ("r" + output), "--psnr", "30", "--quiet", *extra]) == 0
    assert capsys.readouterr().err == ""


class _no_warning_escapes:
    """Fails if a PsnrTargetWarning reaches the warnings machinery outside the command."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.log = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        from tec_zarr.errors import PsnrTargetWarning

        assert not [w for w in self.log if issubclass(w.category, PsnrTargetWarning)]


# -- help ------------------------------------------------------------------------------------------------------------


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_lists_choices_defaults_examples_and_environment(capsys):
    from tec_zarr import list_models

    text = _help(capsys, ["compress", "--help"])
    flat = "".join(text.split())  # argparse wraps to the terminal's width, also at hyphens

    def says(phrase):
        return "".join(phrase.split()) in flat

    for card in list_models():
        assert card.name in flat
    names = ", ".join(sorted(card.name for card in list_models()))
    assert says(f"--model NAME installed model: {names} (default tec-fp")
    assert says("quality level 0..4, 0 = smallest file (default 2")
    assert "examples:" in text and "tec compress scene.tif scene.zarr" in text
    assert "TEC_ZARR_THREADS" in text and "--overwrite" in text and says("no per-pixel bound")
    main = _help(capsys, ["--help"])
    assert "TEC_ZARR_THREADS" in main and "examples:" in main and "tec decompress" in main
    for command in ("decompress", "convert", "info", "to-vrt", "demo"):
        assert "example" in _help(capsys, [command, "--help"]) or command == "demo"


def test_every_option_has_help():
    parser = cli.commands.build_parser()
    subparsers = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)


# -- the demo --------------------------------------------------------------------------------------------------------


def test_demo_verdict_compares_at_equal_psnr():
    from tec_zarr.cli import demo

    tec = demo.Row("TEC quality 2", 2, 1000, 0.1, 0.1, 43.0, 1874)
    bounded = demo.Row("TEC max_error 50", 3, 4000, 1, 1, 50.7, 50)
    above = demo.Row("JPEG 2000 level 61", 2, 2000, 0.1, 0.1, 44.0, 910)
    below = demo.Row("JPEG 2000 level 60", 3, 1000 * 1.5, 0.1, 0.1, 42.0, 900)
    at = demo.interpolate_bytes(43.0, (42.0, 1500), (44.0, 2000))
    assert 1500 < at < 2000 and at == pytest.approx((1500 * 2000) ** 0.5)
    c = demo.Comparison(rows=[tec, bounded, above, below], tec=tec, bounded=bounded, j2k_above=above,
                        j2k_below=below, j2k_bytes_at_tec_psnr=at)
    text = "\n".join(demo.verdict(c, 2))
    assert "At equal PSNR (43.00 dB)" in text and f"{at / 1000:.2f}x smaller" in text
    assert "levels 60 and 61" in text and "PSNR in dB against the 16-bit peak 65535" in text
    assert "up to 1,874 DN" in text and "--max-error E" in text and "within 50 DN" in text


@pytest.mark.slow
def test_demo_runs(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "At equal PSNR" in out and "Maximum error: TEC at quality 2" in out and "max_error=E" in out
