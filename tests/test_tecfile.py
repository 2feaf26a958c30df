"""``.tec`` raster files without GDAL: the layout (tec_zarr.bitstream.tecfile), TecFile reads and writes
(tec_zarr.gdal.raster, imported by users as tec_zarr.tecfile) and Zarr byte copies. GDAL's reads: test_gdal.py."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from common import GEOTRANSFORM, TILE, UTM10N_WKT, corrupt_tile
from tec_zarr import TEC, cli, metrics, tecfile
from tec_zarr.bands import S2_L2A_BANDS
from tec_zarr.bitstream import tecfile as layout
from tec_zarr.errors import CorruptTileError, InvalidInputError, TecFormatError, TruncatedTecFileError
from tec_zarr.gdal import convert, raster


def test_public_module_is_the_reader_and_writer():
    """``tec_zarr.tecfile`` (what users import) is the codec-backed reader and the layout's names."""
    assert tecfile.open is raster.open and tecfile.write is raster.write and tecfile.TecFile is raster.TecFile
    assert tecfile.TecMetadata is layout.TecMetadata and tecfile.MAGIC == layout.MAGIC == b"TECF"


def test_metadata_and_quality(scene, original):
    path, levels = scene
    with tecfile.open(path) as f:
        m = f.metadata
        assert m.shape == (12, 200, 150) and m.dtype == "uint16" and m.band_names == S2_L2A_BANDS
        assert m.geotransform == GEOTRANSFORM and "UTM zone 10N" in m.crs_wkt and m.nodata == 0
        assert m.codec == TEC(quality=1, nodata=0).get_config() and len(m.uuid) == 36
        assert [m.level_shape(k) for k in m.levels] == [(200, 150), (100, 75), (50, 38)]
        assert f.read_tile(0, 0, 0)[:4] == b"TECZ"
        assert f.codec == TEC(quality=1, nodata=0)
    # Measured: 38.8, 37.1 and 35.6 dB (tiles of 64 at quality 1).
    assert metrics.psnr(original, levels[0]) > 37.5
    assert metrics.psnr(raster.downsample(original, 2, 0), levels[1]) > 35.8
    assert metrics.psnr(raster.downsample(original, 4, 0), levels[2]) > 34.3


def test_raw_tiles_read_and_copy_without_the_codec(tmp_path, scene):
    """TecTiles reads the layout alone (nothing decodes); write_tiles copies tiles into a file that reads the same."""
    path, levels = scene
    before = raster.decoded_tiles()
    with layout.TecTiles(path) as raw, tecfile.open(path) as f:
        m = raw.metadata
        assert m == f.metadata and raw.stored_bytes == f.stored_bytes == path.stat().st_size
        assert len(raw.index) == m.tile_count == 4 * 3 + 2 * 2 + 1
        tiles = [raw.read_tile(level, ty, tx) for level in m.levels
                 for ty in range(m.grid(level)[0]) for tx in range(m.grid(level)[1])]
        assert tiles[5] == f.read_tile(0, 1, 2) and all(t[:4] == b"TECZ" for t in tiles)
        assert raw.tile_entry(0, 1, 2) == f.tile_entry(0, 1, 2)
    assert raster.decoded_tiles() == before
    copy = tmp_path / "copy.tec"
    layout.write_tiles(copy, m, tiles)
    with tecfile.open(copy) as f:
        assert f.metadata == m
        np.testing.assert_array_equal(f.read(level=1), levels[1])


def test_absent_tiles_read_as_fill(tmp_path, original):
    a = original[:, :128, :128].copy()
    a[:, 64:, :64] = 0  # one all-nodata tile: stored as absent
    path = tmp_path / "holes.tec"
    meta = tecfile.write(path, a, crs_wkt=None, geotransform=None, tile=TILE, quality=0)
    with tecfile.open(path) as f:
        assert f.tile_entry(0, 1, 0)[1] == 0 and f.read_tile(0, 1, 0) == b""
        back = f.read()
    assert meta.crs_wkt is None and meta.geotransform is None
    assert (back[:, 64:, :64] == 0).all() and (back[:, :64] != 0).all()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_tiles_are_the_zarr_chunks(tmp_path, scene, original, zarr_format):
    """Zarr pads edge chunks with its fill value, .tec with nodata: the same bytes come out."""
    from tec_zarr.zarr3 import TEC as TEC3  # the name users import

    group = zarr.open_group(tmp_path / "z.zarr", mode="w", zarr_format=zarr_format)
    common = {"name": "r", "shape": original.shape, "dtype": "uint16", "chunks": (12, TILE, TILE), "fill_value": 0}
    if zarr_format == 3:
        array = group.create_array(**common, serializer=TEC3(quality=1), compressors=None)
    else:
        array = group.create_array(**common, compressors=TEC(quality=1))
    array[...] = original
    with tecfile.open(scene[0]) as f:
        for ty in range(4):
            for tx in range(3):
                assert convert._chunk_bytes(array, (0, ty, tx)) == f.read_tile(0, ty, tx)


def test_window_read_decodes_only_its_tiles(scene):
    path, levels = scene
    with tecfile.open(path) as f:
        before = tecfile.decoded_tiles()
        got = f.read((slice(10, 70), slice(60, 140)), bands=[3, 2, 1])
        assert tecfile.decoded_tiles() - before == 2 * 3  # rows 0-1, columns 0-2 of the 4 x 3 grid
        np.testing.assert_array_equal(got, levels[0][[3, 2, 1], 10:70, 60:140])
        np.testing.assert_array_equal(f.read((slice(40, 50), slice(0, 20)), level=2), levels[2][:, 40:50, :20])
        for bad in ((slice(0, 201), slice(0, 10)), (slice(5, 2), slice(0, 10)), (slice(0, 10, 2), slice(0, 10)),
                    "all"):
            with pytest.raises(InvalidInputError):
                f.read(bad)
        with pytest.raises(InvalidInputError):
            f.read(bands=[12])


def test_damaged_files_raise_package_errors(tmp_path, scene):
    data = scene[0].read_bytes()
    bad = tmp_path / "bad.tec"
    for cut in (3, 10, 100, len(data) - 5):
        bad.write_bytes(data[:cut])
        with pytest.raises(TruncatedTecFileError):
            tecfile.open(bad)
    for damaged, error in ((b"GIF8" + data[4:], TecFormatError), (data[:4] + b"\x09" + data[5:], TecFormatError),
                           (data[:30] + bytes([data[30] ^ 1]) + data[31:], TecFormatError)):
        bad.write_bytes(damaged)
        with pytest.raises(error):
            tecfile.open(bad)


def test_corrupt_tile_is_refused_by_its_crc(tmp_path, scene):
    path, levels = scene
    bad = corrupt_tile(path, tmp_path / "bad.tec", 0, 1, 1)
    with tecfile.open(bad) as f:
        with pytest.raises(CorruptTileError):
            f.read_tile(0, 1, 1)
        with pytest.raises(CorruptTileError):
            f.read((slice(64, 74), slice(64, 74)))
        np.testing.assert_array_equal(f.read((slice(0, 10), slice(0, 10))), levels[0][:, :10, :10])


# --- Zarr <-> .tec without re-encoding -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_to_tec_to_zarr_keeps_every_chunk(tmp_path, original, zarr_format):
    ds = xr.Dataset(
        {"reflectance": (("band", "y", "x"), original)},
        coords={"band": np.array(S2_L2A_BANDS, dtype=object), "x": 600005.0 + 10 * np.arange(150),
                "y": 4129995.0 - 10 * np.arange(200)},
        attrs={"crs": UTM10N_WKT},  # WKT already: no GDAL needed (test_gdal.py converts an EPSG code)
    )
    src, back = tmp_path / "src.zarr", tmp_path / "back.zarr"
    from tec_zarr import zarr_encoding

    enc = zarr_encoding(ds, zarr_format=zarr_format, chunks={"y": TILE, "x": TILE}, quality=0)
    ds.to_zarr(src, zarr_format=zarr_format, encoding=enc)
    assert cli.main(["convert", str(src), str(tmp_path / "s.tec"), "--quiet"]) == 0
    assert cli.main(["convert", str(tmp_path / "s.tec"), str(back), "--zarr-format", str(zarr_format), "--quiet"]) == 0
    a, b = zarr.open_array(src / "reflectance", mode="r"), zarr.open_array(back / "reflectance", mode="r")
    assert a.metadata.zarr_format == b.metadata.zarr_format == zarr_format
    for ty in range(4):
        for tx in range(3):
            chunk = convert._chunk_bytes(a, (0, ty, tx))
            assert chunk is not None and convert._chunk_bytes(b, (0, ty, tx)) == chunk
    with tecfile.open(tmp_path / "s.tec") as f:
        assert f.metadata.geotransform == GEOTRANSFORM and "UTM zone 10N" in f.metadata.crs_wkt
    opened, reopened = xr.open_zarr(src), xr.open_zarr(back)
    assert reopened["reflectance"].dims == ("band", "y", "x") and reopened["reflectance"].dtype == np.uint16
    np.testing.assert_array_equal(reopened["reflectance"].values, opened["reflectance"].values)
    np.testing.assert_array_equal(reopened.x.values, ds.x.values)
    np.testing.assert_array_equal(reopened.y.values, ds.y.values)
    assert list(reopened.band.values) == list(S2_L2A_BANDS)


def test_4d_chunks_are_refused(tmp_path, original):
    ds = xr.Dataset({"r": (("time", "band", "y", "x"), original[None, :, :64, :64])})
    ds.to_zarr(tmp_path / "t.zarr", encoding={"r": {"compressors": TEC()}}, zarr_format=2)
    assert cli.main(["convert", str(tmp_path / "t.zarr"), str(tmp_path / "t.tec")]) == 2


@pytest.mark.parametrize("dtype, nodata", [("uint16", 65535), ("uint16", 0), ("int16", 32767), ("int16", -32768)])
def test_overviews_with_nodata_at_either_end_of_the_dtype(dtype, nodata):
    """Overview blocks: all nodata stays nodata, valid pixels average (nodata left out). With nodata at the dtype's
    top (uint16 65535, a common fill) the step that moves a valid mean off nodata is -1, which NumPy 2 refused on a
    uint16 scalar even where no mean needed it (QA: tec compress --overviews crashed)."""
    from tec_zarr.gdal import raster

    valid = np.iinfo(dtype).max - 1 if nodata == np.iinfo(dtype).max else np.iinfo(dtype).min + 1
    image = np.full((1, 4, 4), nodata, dtype)
    image[0, 2:, :2] = valid
    image[0, 2, 2] = valid
    out = raster.downsample(image, 2, nodata)
    assert out.dtype == np.dtype(dtype)
    assert out[0, 0, 0] == nodata and out[0, 1, 0] == valid and out[0, 1, 1] == valid


def test_a_valid_overview_mean_equal_to_nodata_moves_one_step():
    from tec_zarr.gdal import raster

    image = np.full((1, 2, 2), 100, np.uint16)  # nodata 100 at two pixels
    image[0, 0] = [99, 101]  # their mean is the nodata
    assert raster.downsample(image, 2, 100)[0, 0, 0] == 101
