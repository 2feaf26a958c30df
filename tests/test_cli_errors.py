"""Every ``tec`` failure is one line, ``tec: error: <cause>; <fix>``, with exit status 2, and leaves no output behind."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from tec_zarr import cli

rasterio = pytest.importorskip("rasterio")


def _geotiff(path, a, nodata=None):
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0],
                       dtype=a.dtype, crs="EPSG:32610", transform=from_origin(600000, 4130000, 10, 10),
                       nodata=nodata) as dst:
        dst.write(a)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, image):
    """A 12 x 40 x 48 GeoTIFF, its .tec and its Zarr store."""
    root = tmp_path_factory.mktemp("cli-errors")
    tif = _geotiff(root / "small.tif", np.ascontiguousarray(image[:, :40, :48]))
    assert cli.main(["compress", str(tif), str(root / "small.tec"), "--quiet"]) == 0
    assert cli.main(["compress", str(tif), str(root / "small.zarr"), "--quiet"]) == 0
    return root


def fails(capsys, argv, *needles) -> str:
    """Runs ``tec argv``, checks it fails with exactly one ``tec: error:`` line containing ``needles``."""
    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors exit through parser.error
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.startswith("tec: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_missing_input(capsys, tmp_path):
    fails(capsys, ["compress", tmp_path / "missing.tif", tmp_path / "out.zarr"], "missing.tif", "no such file",
          "check the path")
    fails(capsys, ["decompress", tmp_path / "missing.tec", tmp_path / "out.tif"], "missing.tec", "no such file")
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "out.tif").exists()


def test_info_on_a_missing_path_and_on_a_geotiff(capsys, tmp_path, small):
    fails(capsys, ["info", tmp_path / "missing"], "no such file", "check the path")
    fails(capsys, ["info", small / "small.tif"], "Got a GeoTIFF", "tec compress", "gdalinfo")
    (tmp_path / "empty").mkdir()
    fails(capsys, ["info", tmp_path / "empty"], "directory without Zarr metadata")
    fails(capsys, ["decompress", small / "small.tif", tmp_path / "x.tif"], "Got a GeoTIFF", "tec compress")
    fails(capsys, ["convert", small / "small.tif", tmp_path / "x.tec"], "Got a GeoTIFF", "tec compress")
    fails(capsys, ["to-vrt", small / "small.tif"], "Got a GeoTIFF", "GDAL opens it directly")
    fails(capsys, ["compress", small / "small.zarr", tmp_path / "x.tec"], "Got a Zarr store", "tec convert")
    assert not (tmp_path / "x.tec").exists()


def _with_codec_key(tec_bytes: bytes, key: str, value) -> bytes:
    """A .tec file whose codec config gains ``key`` (offsets and header CRC rewritten: only the key is wrong)."""
    from tec_zarr.bitstream.tecfile import TecMetadata

    (meta_len,) = struct.unpack_from("<I", tec_bytes, 8)
    meta = json.loads(tec_bytes[12 : 12 + meta_len])
    count = TecMetadata.from_json(tec_bytes[12 : 12 + meta_len]).tile_count
    meta["codec"][key] = value
    new_meta = json.dumps(meta, sort_keys=True).encode()
    delta = len(new_meta) - meta_len
    index = np.frombuffer(tec_bytes, dtype=[("offset", "<u8"), ("length", "<u4"), ("crc32", "<u4")], count=count,
                          offset=12 + meta_len).copy()
    index["offset"] = np.where(index["length"] > 0, index["offset"].astype(np.int64) + delta, 0).astype("<u8")
    head = tec_bytes[:8] + struct.pack("<I", len(new_meta)) + new_meta + index.tobytes()
    return head + struct.pack("<I", zlib.crc32(head)) + tec_bytes[12 + meta_len + 16 * count + 4 :]


def test_unknown_config_keys(capsys, tmp_path, small):
    import shutil

    bad = tmp_path / "bad.tec"
    bad.write_bytes(_with_codec_key((small / "small.tec").read_bytes(), "colour", "blue"))
    fails(capsys, ["info", bad], "colour", "newer")
    fails(capsys, ["decompress", bad, tmp_path / "bad.tif"], "colour")
    assert not (tmp_path / "bad.tif").exists()

    store = tmp_path / "bad.zarr"
    shutil.copytree(small / "small.zarr", store)
    for path, locate in ((store / "reflectance" / "zarr.json", lambda d: d),
                         (store / "zarr.json", lambda d: d["consolidated_metadata"]["metadata"]["reflectance"])):
        doc = json.loads(path.read_text())
        locate(doc)["codecs"][0]["configuration"]["colour"] = "blue"
        path.write_text(json.dumps(doc))
    fails(capsys, ["info", store], "colour", "newer tec-zarr", "pip install -U tec-zarr")
    fails(capsys, ["decompress", store, tmp_path / "bad2.tif"], "colour", "newer tec-zarr")


def test_unknown_output_extension_is_refused(capsys, tmp_path, small):
    fails(capsys, ["compress", small / "small.tif", tmp_path / "x.jp2"], "x.jp2", ".zarr", ".tec")
    assert not (tmp_path / "x.jp2").exists()
    fails(capsys, ["decompress", small / "small.tec", tmp_path / "x.png"], "GeoTIFF output", "x.png")
    fails(capsys, ["convert", small / "small.tec", tmp_path / "x.tif"], ".zarr")


@pytest.mark.parametrize("output, options, named", [
    ("o.tec", ["--chunk", "64"], "--chunk"),
    ("o.tec", ["--zarr-format", "2"], "--zarr-format"),
    ("o.tec", ["--chunk", "64", "--zarr-format", "2"], "--chunk and --zarr-format"),
    ("o.tec", ["--var", "x"], "--var"),
    ("o.zarr", ["--tile", "64"], "--tile"),
    ("o.zarr", ["--overviews", "2"], "--overviews"),
])
def test_options_that_do_nothing_are_refused(capsys, tmp_path, small, output, options, named):
    err = fails(capsys, ["compress", small / "small.tif", tmp_path / output, *options], named, "does nothing"
                if " and " not in named else "do nothing")
    assert "leave" in err
    assert not (tmp_path / output).exists()


def test_decompress_and_convert_refuse_options_that_do_nothing(capsys, tmp_path, small):
    fails(capsys, ["decompress", small / "small.tec", tmp_path / "a.tif", "--time-index", "0"], "--time-index")
    fails(capsys, ["decompress", small / "small.zarr", tmp_path / "a.tif", "--level", "1"], "--level")
    fails(capsys, ["convert", small / "small.tec", tmp_path / "a.zarr", "--overviews", "1"], "--overviews")
    assert not (tmp_path / "a.tif").exists() and not (tmp_path / "a.zarr").exists()


def test_existing_outputs_are_not_overwritten(capsys, tmp_path, small):
    tif = small / "small.tif"
    for name in ("keep.tec", "keep.zarr"):
        out = tmp_path / name
        assert cli.main(["compress", str(tif), str(out), "--quiet"]) == 0
        before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
        fails(capsys, ["compress", tif, out], "exists", "--overwrite")
        assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
        assert cli.main(["compress", str(tif), str(out), "--quiet", "--overwrite", "--quality", "0"]) == 0
    decoded = tmp_path / "decoded.tif"
    decoded.write_bytes(b"precious")
    fails(capsys, ["decompress", small / "small.tec", decoded], "exists", "--overwrite")
    assert decoded.read_bytes() == b"precious"
    assert cli.main(["decompress", str(small / "small.tec"), str(decoded), "--overwrite", "--quiet"]) == 0
    assert decoded.read_bytes()[:2] in (b"II", b"MM")


def test_overwrite_never_deletes_what_is_not_its_kind(capsys, tmp_path, small):
    folder = tmp_path / "photos.zarr"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"jpeg")
    fails(capsys, ["compress", small / "small.tif", folder, "--overwrite"], "not a Zarr store", "not deleting")
    assert (folder / "holiday.jpg").read_bytes() == b"jpeg"
    fails(capsys, ["compress", small / "small.zarr", small / "small.zarr", "--overwrite"], "other than the input")
    assert (small / "small.zarr" / "zarr.json").exists()


def test_argparse_errors_are_one_line(capsys, tmp_path):
    fails(capsys, ["compress", "a.tif"], "required", "tec compress --help")
    fails(capsys, ["compress", "a.tif", "b.zarr", "--quality", "high"], "--quality", "invalid int")
    fails(capsys, ["compress", "a.tif", "b.zarr", "--lossless", "--psnr", "40"], "not allowed with")
    fails(capsys, ["frobnicate"], "invalid choice")


def test_package_errors_are_one_line(capsys, tmp_path, small):
    fails(capsys, ["compress", small / "small.tif", tmp_path / "m.zarr", "--model", "nope"],
          "Expected one of the installed models", "tec-fp")
    fails(capsys, ["compress", small / "small.tif", tmp_path / "q.zarr", "--quality", "9"], "quality")
    fails(capsys, ["compress", small / "small.tif", tmp_path / "n.zarr", "--nodata", "zero"], "--nodata")


def test_unexpected_errors_are_one_line_and_debug_raises(capsys, tmp_path, small, monkeypatch):
    from tec_zarr.cli import commands

    def boom(args):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(commands, "info_text", lambda store: boom(None))
    fails(capsys, ["info", small / "small.zarr"], "unexpected RuntimeError: kaboom second line", "TEC_ZARR_DEBUG=1")
    monkeypatch.setenv("TEC_ZARR_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["info", str(small / "small.zarr")])


BASE_INSTALL = textwrap.dedent(
    """
    import sys
    for name in ("rasterio", "dask", "distributed", "imagecodecs", "netCDF4", "h5netcdf"):
        sys.modules[name] = None  # as in an install without the io, bench and distributed extras
    from tec_zarr import cli
    root = sys.argv[1]
    for argv in (["compress", root + "/small.tif", root + "/base.zarr"],
                 ["compress", root + "/small.tif", root + "/base.tec"],
                 ["decompress", root + "/small.tec", root + "/base.tif"],
                 ["demo"]):
        print("RC", cli.main(argv), flush=True)
    # what needs no extra still works: a Zarr store compressed again, described
    print("RC", cli.main(["compress", root + "/small.zarr", root + "/again.zarr", "--quiet", "--lossless"]), flush=True)
    print("RC", cli.main(["info", root + "/again.zarr"]), flush=True)
    """
)


def test_base_install_names_the_extra(small, tmp_path):
    import shutil

    for name in ("small.tif", "small.tec"):
        shutil.copy(small / name, tmp_path / name)
    shutil.copytree(small / "small.zarr", tmp_path / "small.zarr")
    res = subprocess.run([sys.executable, "-c", BASE_INSTALL, str(tmp_path)], capture_output=True, text=True)
    assert res.stdout.split("\n").count("RC 2") == 4 and res.stdout.count("RC 0") == 2, (res.stdout, res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("tec:")]
    assert errors == [
        "tec: error: tec compress needs rasterio (GeoTIFF input and output), which is not installed: "
        "pip install 'tec-zarr[io]'.",
        "tec: error: tec compress needs rasterio (GeoTIFF input and output), which is not installed: "
        "pip install 'tec-zarr[io]'.",
        "tec: error: tec decompress needs rasterio (GeoTIFF input and output), which is not installed: "
        "pip install 'tec-zarr[io]'.",
        "tec: error: tec demo needs imagecodecs (the JPEG 2000 baseline of the demo), which is not installed: "
        "pip install 'tec-zarr[bench]'.",
    ], res.stderr
    assert "Traceback" not in res.stderr
    assert "TEC model tec-fp" in res.stdout
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("rasterio") for d in extras["io"]) and any(d.startswith("imagecodecs") for d in extras["bench"])
