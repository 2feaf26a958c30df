"""dn_offset: Sentinel-2 DN of processing baseline 04.00 and later (reflectance x 10000 + 1000), as odc-stac and
stackstac (rescale=False) load them, coded as the models were trained (offset off) and read back unchanged."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import xarray as xr

import tec_zarr
import tec_zarr.pipeline
from tec_zarr import TEC, metrics
from tec_zarr.bitstream import chunk as bitstream
from tec_zarr import DnOffsetWarning
from tec_zarr.dn_offset import packed_dn_offset, stated_dn_offset
from tec_zarr.errors import CorruptChunkError, InvalidInputError
from tec_zarr.models import DEFAULT_MODEL

from common import assert_bound, check_config, check_golden, check_repr

OFFSET = 1000


@pytest.fixture(scope="module")
def plain(image) -> np.ndarray:
    return np.ascontiguousarray(image[:, :128, :128])


@pytest.fixture(scope="module")
def shifted(plain) -> np.ndarray:
    """The same pixels as a baseline-04.00 product stores them."""
    return plain + np.uint16(OFFSET)


def coded(codec, a):
    enc = codec.encode(a)
    return enc, codec.decode(enc)


@pytest.mark.parametrize("model", ["tec-fp", "tec-ctx"])
def test_offset_data_codes_as_the_data_without_it(model, plain, shifted):
    enc_plain, dec_plain = coded(TEC(model=model), plain)
    enc_raw, dec_raw = coded(TEC(model=model), shifted)  # the offset left in: what users got before
    enc, dec = coded(TEC(model=model, dn_offset=OFFSET), shifted)
    assert bitstream.unpack(enc)[0].dn_offset == OFFSET and dec.dtype == np.uint16
    quality = metrics.psnr(shifted, dec, offset=OFFSET)
    assert abs(quality - metrics.psnr(plain, dec_plain)) < 0.05
    assert abs(len(enc) / len(enc_plain) - 1) < 0.01  # the same bits as the data without the offset
    assert len(enc) < 0.97 * len(enc_raw) and quality >= metrics.psnr(shifted, dec_raw, offset=OFFSET) - 0.05
    # the decoded values are the data's own: the offset is back on
    bias = float(np.mean(dec.astype(np.float64) - shifted))
    assert abs(bias - float(np.mean(dec_plain.astype(np.float64) - plain))) < 1


@pytest.mark.parametrize("max_error", [0, 3])
def test_bounds_hold_with_an_offset(shifted, max_error):
    codec = TEC(dn_offset=OFFSET, max_error=max_error)
    assert_bound(shifted, codec.decode(codec.encode(shifted)), max_error)


def test_float32_dn_with_an_offset(shifted):
    """stackstac(rescale=False, dtype='float32'): float DN with the offset, NaN where missing."""
    values = shifted.astype(np.float32)
    values[:, :10, :] = np.nan
    codec = TEC(float_scale=1, dn_offset=OFFSET, nodata=None)
    dec = codec.decode(codec.encode(values))
    assert np.isnan(dec[:, :10]).all() and not np.isnan(dec[:, 10:]).any()
    assert metrics.psnr(values[:, 10:], dec[:, 10:], offset=OFFSET) > 40
    exact = TEC(float_scale=1, dn_offset=OFFSET, nodata=None, max_error=0)
    assert_bound(np.nan_to_num(values), np.nan_to_num(exact.decode(exact.encode(values))), 0)


def test_psnr_target_is_met_on_reflectance(shifted):
    codec = TEC(dn_offset=OFFSET, psnr=42)
    assert metrics.psnr(shifted, codec.decode(codec.encode(shifted)), offset=OFFSET) >= 42


def test_nodata_is_a_stored_value_not_shifted(shifted):
    a = shifted.copy()
    a[:, :, :20] = 0  # odc-stac's nodata: raw 0, below the offset
    dec = TEC(dn_offset=OFFSET).decode(TEC(dn_offset=OFFSET).encode(a))
    assert (dec[:, :, :20] == 0).all() and (dec[:, :, 20:] != 0).all()


def test_thinning_keeps_the_offset(shifted):
    enc = TEC(dn_offset=OFFSET, quality=4).encode(shifted)
    thin = tec_zarr.thin(enc, 1)
    assert bitstream.unpack(thin)[0].dn_offset == OFFSET
    assert metrics.psnr(shifted, tec_zarr.pipeline.decode_chunk(thin), offset=OFFSET) > 36


def test_config_keeps_the_offset_only_where_set():
    codec = TEC(dn_offset=OFFSET)
    assert codec.get_config()["dn_offset"] == OFFSET and "dn_offset" not in TEC().get_config()
    check_config(codec)
    check_repr(codec, f"TEC(quality=2, model='{DEFAULT_MODEL}', nodata=0, float_scale=10000.0, dn_offset=1000)")
    from tec_zarr.codec.zarr3 import TEC as TEC3

    assert TEC3(dn_offset=OFFSET).to_dict()["configuration"]["dn_offset"] == OFFSET
    assert "dn_offset" not in TEC3().to_dict()["configuration"]
    assert TEC3.from_dict(TEC3(dn_offset=OFFSET).to_dict()).dn_offset == OFFSET


@pytest.mark.parametrize("bad", [1.5, True, "1000", 10**6, -40000, float("nan")])
def test_bad_offsets_are_refused(bad):
    with pytest.raises(InvalidInputError, match="Expected an integer dn_offset"):
        TEC(dn_offset=bad)


def test_numpy_integer_offset_is_taken():
    assert TEC(dn_offset=np.int64(OFFSET)).dn_offset == OFFSET


def test_chunks_without_offset_have_no_extensions_field(plain):
    assert not TEC().encode(plain)[5] & bitstream.FLAG_EXTENSIONS


def with_extensions(buf: bytes, field: bytes) -> bytes:
    """``buf`` (a chunk with a dn_offset extension) with its extensions field replaced by ``field``, CRC fixed."""
    old = bytes([1, bitstream.EXTENSION_DN_OFFSET]) + struct.pack("<I", 4) + struct.pack("<i", OFFSET)
    body = buf[:-4]
    assert body.count(old) == 1
    body = body.replace(old, field)
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(("name", "field"), [
    ("unknown tag", bytes([1, 3]) + struct.pack("<Ii", 4, OFFSET)),
    ("no extension", bytes([0])),
    ("zero offset", bytes([1, 1]) + struct.pack("<Ii", 4, 0)),
    ("offset out of range", bytes([1, 1]) + struct.pack("<Ii", 4, 70000)),
    ("wrong length", bytes([1, 1]) + struct.pack("<Ih", 2, 1000)),
    ("length past the end", bytes([1, 1]) + struct.pack("<Ii", 2**31, OFFSET)),
    ("tag twice", bytes([2, 1]) + struct.pack("<Ii", 4, OFFSET) + bytes([1]) + struct.pack("<Ii", 4, OFFSET)),
    ("saturated mask in a chunk with nothing saturated", bytes([2, 1]) + struct.pack("<Ii", 4, OFFSET) + bytes([2])
     + struct.pack("<I", 3) + b"xyz"),
])
def test_hostile_extension_fields_are_refused(shifted, name, field):
    buf = with_extensions(TEC(dn_offset=OFFSET).encode(shifted), field)
    with pytest.raises(CorruptChunkError):
        TEC().decode(buf)


def test_golden_offset_chunks(shifted):
    """Chunks with a dn_offset decode the same in every run (regenerated only with TEC_ZARR_REGENERATE_GOLDEN=1)."""
    small = np.ascontiguousarray(shifted[:, :64, :96])
    small[:, 50:, :] = 0
    check_golden(TEC(model="tec-fp", dn_offset=OFFSET), [small], "dn-offset-tec-fp")
    check_golden(TEC(model="tec-hp", dn_offset=OFFSET, max_error=0), [small], "dn-offset-tec-hp-e0", max_abs_error=0)


# -- what metadata states ------------------------------------------------------------------------------------------


def cube_with(values, **coords) -> xr.DataArray:
    t = len(next(iter(coords.values()))) if coords else 1
    data = np.ones((t, 12, 4, 4), values)
    return xr.DataArray(data, dims=("time", "band", "y", "x"), name="reflectance",
                        coords={k: ("time", v) for k, v in coords.items()})


def test_baseline_coordinates_state_the_offset():
    assert stated_dn_offset(cube_with(np.uint16, **{"s2:processing_baseline": ["04.00", "05.09"]})) == OFFSET
    assert stated_dn_offset(cube_with(np.uint16, **{"s2:processing_baseline": ["02.09", "03.01"]})) == 0
    applied = {"s2:processing_baseline": ["05.09", "05.09"], "earthsearch:boa_offset_applied": [True, True]}
    assert stated_dn_offset(cube_with(np.uint16, **applied)) == 0  # earth-search took it off in its COGs
    assert stated_dn_offset(cube_with(np.uint16)) is None
    assert stated_dn_offset(cube_with(np.uint16, **{"s2:processing_baseline": ["n/a"]})) is None
    # float values: reflectance (stackstac's rescale took the offset off), or DN where read at float_scale 1
    float_dn = cube_with(np.float32, **{"s2:processing_baseline": ["05.10"]})
    assert stated_dn_offset(float_dn) is None and stated_dn_offset(float_dn, float_scale=1) == OFFSET


def test_offset_flags_broadcast_against_baselines():
    """stackstac keeps a property equal on every date as a scalar coordinate."""
    var = cube_with(np.uint16, **{"s2:processing_baseline": ["05.09", "05.10"]})
    assert stated_dn_offset(var.assign_coords({"earthsearch:boa_offset_applied": True})) == 0
    three = cube_with(np.uint16, **{"s2:processing_baseline": ["05.09", "05.10", "05.10"]})
    with pytest.warns(DnOffsetWarning):  # a date without the flag keeps its baseline's offset
        flagged = three.assign_coords({"earthsearch:boa_offset_applied": ("time", [True, None, None])})
        assert stated_dn_offset(flagged) == OFFSET
    scalar = cube_with(np.uint16).assign_coords({"s2:processing_baseline": "05.09"})
    flags = scalar.assign_coords({"earthsearch:boa_offset_applied": ("time", [False])})
    assert stated_dn_offset(scalar) == OFFSET and stated_dn_offset(flags) == OFFSET
    assert packed_dn_offset(1e-4, None) == 0  # CF: no add_offset is an offset of 0


def test_mixed_baselines_warn_and_take_most_dates():
    cube = cube_with(np.uint16, **{"s2:processing_baseline": ["03.01", "04.00", "05.09"]})
    with pytest.warns(DnOffsetWarning, match="Harmonize"):
        assert stated_dn_offset(cube) == OFFSET


def test_cf_packing_states_the_offset():
    assert packed_dn_offset(1e-4, -0.1) == OFFSET and packed_dn_offset(1e-4, 0.0) == 0
    assert packed_dn_offset(1.0, 0.0) is None and packed_dn_offset(None, None) is None
    var = cube_with(np.uint16)
    var.attrs.update(scale_factor=1e-4, add_offset=-0.1)
    assert stated_dn_offset(var) == OFFSET
    assert stated_dn_offset(var.astype(np.float32)) is None  # float values: already scaled, nothing to take off


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_encoding_takes_the_stated_offset_and_reads_back(tmp_path, shifted, zarr_format):
    data = np.stack([shifted[:, :64, :64]] * 2)
    da = xr.DataArray(data, dims=("time", "band", "y", "x"), name="reflectance",
                      coords={"s2:processing_baseline": ("time", ["05.10", "05.11"])})
    ds = da.to_dataset()
    enc = tec_zarr.zarr_encoding(ds, zarr_format=zarr_format, chunks={"time": 1})
    codec = enc["reflectance"]["compressors" if zarr_format == 2 else "serializer"]
    assert codec.dn_offset == OFFSET
    ds.to_zarr(tmp_path / "c.zarr", zarr_format=zarr_format, encoding=enc, consolidated=False)
    back = xr.open_zarr(tmp_path / "c.zarr", consolidated=False)["reflectance"].values
    assert metrics.mean_psnr(data, back) > 40 and np.abs(back.astype(np.float64) - data).mean() < 100  # 1000 if lost
    explicit = tec_zarr.zarr_encoding(ds, zarr_format=zarr_format, dn_offset=0)
    assert explicit["reflectance"]["compressors" if zarr_format == 2 else "serializer"].dn_offset == 0


def test_tec_files_take_a_geotiffs_band_offset(tmp_path, shifted):
    import rasterio

    from tec_zarr.gdal.raster import TecFile
    from tec_zarr.gdal.convert import geotiff_to_tec

    src = tmp_path / "baseline4.tif"
    with rasterio.open(src, "w", driver="GTiff", width=128, height=128, count=12, dtype="uint16") as f:
        f.write(shifted)
        f.scales = [1e-4] * 12
        f.offsets = [-0.1] * 12
    meta = geotiff_to_tec(src, tmp_path / "s.tec", tile=64)
    assert meta.codec["dn_offset"] == OFFSET
    from tec_zarr.gdal.convert import describe

    assert "dn_offset 1000" in describe(tmp_path / "s.tec")  # tec info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = TecFile(tmp_path / "s.tec").read()
    assert metrics.psnr(shifted, back, offset=OFFSET) > 40


def test_cli_compress_takes_dn_offset_and_info_shows_it(tmp_path, shifted, capsys):
    """A Zarr cube as odc-stac loads baseline-04.00 products (no metadata about the offset): --dn-offset 1000."""
    from tec_zarr import cli

    a = np.ascontiguousarray(shifted[:, :64, :80])
    xr.Dataset({"odc": (("time", "band", "y", "x"), a[None])}).to_zarr(tmp_path / "in.zarr", zarr_format=3,
                                                                       consolidated=False)
    out = tmp_path / "out.zarr"
    assert cli.main(["compress", str(tmp_path / "in.zarr"), str(out), "--dn-offset", "1000"]) == 0
    assert "dn_offset 1000" in capsys.readouterr().out
    back = xr.open_zarr(out)["odc"].values[0]
    assert metrics.psnr(a, back, offset=OFFSET) > 41.5
    assert cli.main(["compress", str(tmp_path / "in.zarr"), str(tmp_path / "bad.zarr"), "--dn-offset", "99999"]) != 0
    assert "Expected an integer dn_offset" in capsys.readouterr().err


def test_inpainting_with_an_offset_is_inpainting_without_it(cube):
    cloudy = np.ascontiguousarray(cube[:2, :, :64, :64])
    mask = np.zeros((2, 64, 64), bool)
    mask[1, 20:40, 20:40] = True
    plain = tec_zarr.inpaint(cloudy, mask)
    offset = tec_zarr.inpaint(cloudy + np.uint16(OFFSET), mask, dn_offset=OFFSET)
    assert np.array_equal(offset[~np.broadcast_to(mask[:, None], cloudy.shape)],
                          (cloudy + np.uint16(OFFSET))[~np.broadcast_to(mask[:, None], cloudy.shape)])
    assert np.abs(offset.astype(np.int64) - OFFSET - plain).max() <= 1


def test_cli_takes_the_offset_a_geotiff_states(tmp_path, shifted):
    """A baseline-04.00 GeoTIFF whose bands state scale 0.0001 and offset -0.1: both outputs code it with 1000."""
    import json

    import rasterio

    from tec_zarr import cli

    src = tmp_path / "baseline4.tif"
    with rasterio.open(src, "w", driver="GTiff", width=128, height=128, count=12, dtype="uint16",
                       crs="EPSG:32610", transform=rasterio.transform.from_origin(600000, 4130000, 10, 10)) as f:
        f.write(shifted)
        f.scales, f.offsets = [1e-4] * 12, [-0.1] * 12
    for out in ("s.zarr", "s.tec"):
        assert cli.main(["compress", str(src), str(tmp_path / out), "--quiet"]) == 0
    meta = json.loads((tmp_path / "s.zarr" / "reflectance" / "zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["dn_offset"] == OFFSET
    back = xr.open_zarr(tmp_path / "s.zarr", mask_and_scale=False)["reflectance"].values  # the DN as stored
    assert back.dtype == np.uint16 and metrics.psnr(shifted, back, offset=OFFSET) > 40
    # and the bands' scale and offset as CF attributes: xarray reads reflectance, as rioxarray reads the GeoTIFF
    refl = xr.open_zarr(tmp_path / "s.zarr")["reflectance"].values
    np.testing.assert_allclose(refl, np.where(back == 0, np.nan, back * 1e-4 - 0.1), rtol=0, atol=1e-12)
    from tec_zarr import tecfile

    with tecfile.open(tmp_path / "s.tec") as f:
        assert f.metadata.codec["dn_offset"] == OFFSET and metrics.psnr(shifted, f.read(), offset=OFFSET) > 40
