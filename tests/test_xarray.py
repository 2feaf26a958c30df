"""xarray writes with TEC; a fresh process that never imports tec_zarr reads the stores back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

from common import assert_bound
from tec_zarr import TEC, metrics, sample, zarr_encoding
from tec_zarr.codec.encoding import DEFAULT_TILE, default_tile
from tec_zarr.errors import InvalidInputError

READER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, xarray as xr
    ds = xr.open_zarr(sys.argv[1], consolidated=False)
    np.save(sys.argv[2], ds["reflectance"].values)
    print(json.dumps({"tec_zarr_imported_by_entry_point": "tec_zarr" in sys.modules, "band": list(ds.band.values)}))
    """
)


@pytest.fixture(scope="module")
def dataset():
    ds = sample.load_dataset().isel(x=slice(0, 150), y=slice(0, 130))  # odd sizes: edge chunks
    return ds


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_fresh_process_reads_store(dataset, tmp_path, zarr_format):
    store = tmp_path / f"s2-v{zarr_format}.zarr"
    enc = zarr_encoding(dataset, zarr_format=zarr_format, chunks={"time": 1, "y": 64, "x": 64})
    dataset.to_zarr(store, zarr_format=zarr_format, encoding=enc, consolidated=False)
    here = xr.open_zarr(store, consolidated=False)["reflectance"].values
    out = tmp_path / "read.npy"
    res = subprocess.run([sys.executable, "-c", READER, str(store), str(out)], capture_output=True, text=True, check=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["tec_zarr_imported_by_entry_point"]
    assert info["band"][0] == "B01"
    np.testing.assert_array_equal(np.load(out), here)
    assert metrics.mean_psnr(dataset["reflectance"].values, here) > 41.3  # measured 42.5 dB


def test_explicit_encodings_as_in_readme(dataset, tmp_path):
    from tec_zarr.zarr3 import TEC as TEC3

    chunks = (1, 12, 128, 128)
    dataset.to_zarr(tmp_path / "v2.zarr", zarr_format=2, encoding={"reflectance": {"compressors": TEC(), "chunks": chunks}})
    dataset.to_zarr(tmp_path / "v3.zarr", zarr_format=3,
                    encoding={"reflectance": {"serializer": TEC3(), "compressors": None, "chunks": chunks}})
    for name in ("v2.zarr", "v3.zarr"):
        back = xr.open_zarr(tmp_path / name)["reflectance"].values
        assert metrics.mean_psnr(dataset["reflectance"].values, back) > 41.3  # measured 42.6 dB


def test_band_axis_split_across_chunks_is_refused(dataset, tmp_path):
    from tec_zarr.zarr3 import TEC as TEC3

    with pytest.raises(InvalidInputError, match="all 12 bands"):
        dataset.to_zarr(tmp_path / "bad.zarr", zarr_format=3,
                        encoding={"reflectance": {"serializer": TEC3(), "compressors": None, "chunks": (1, 6, 64, 64)}})


def test_singular_compressor_key_is_rejected_by_xarray(dataset, tmp_path):
    with pytest.raises(ValueError, match="compressor"):
        dataset.to_zarr(tmp_path / "old.zarr", zarr_format=2, encoding={"reflectance": {"compressor": TEC()}})


def test_encoding_helper(dataset):
    enc = zarr_encoding(dataset, zarr_format=2)
    assert list(enc) == ["reflectance"] and isinstance(enc["reflectance"]["compressors"], TEC)
    enc3 = zarr_encoding(dataset, zarr_format=3, quality=0, chunks={"time": 1, "y": 100, "x": 1000})
    assert enc3["reflectance"]["compressors"] is None
    assert enc3["reflectance"]["serializer"].quality == 0
    assert enc3["reflectance"]["chunks"] == (1, 12, 100, 150)
    with pytest.raises(InvalidInputError):
        zarr_encoding(dataset, zarr_format=4)
    with pytest.raises(InvalidInputError):
        zarr_encoding(dataset.isel(band=slice(0, 3)), variables=["reflectance"])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_lossless_and_bounded(cube, tmp_path, zarr_format):
    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), np.ascontiguousarray(cube[:2, :, :70, :90]))})
    for bound in (0, 5):
        store = tmp_path / f"b{bound}.zarr"
        enc = zarr_encoding(ds, zarr_format=zarr_format, chunks={"time": 1, "y": 64, "x": 64}, max_error=bound)
        ds.to_zarr(store, zarr_format=zarr_format, encoding=enc)
        back = xr.open_zarr(store)["reflectance"].values
        assert_bound(ds["reflectance"].values, back, bound)


def test_encoding_helper_follows_dask_chunks(dataset, tmp_path):
    """A dask-backed dataset keeps its chunks; a Zarr chunk that would split them is refused with the fix."""
    pytest.importorskip("dask")
    lazy = dataset.chunk({"time": 1, "y": 128, "x": 128})
    enc = zarr_encoding(lazy, zarr_format=3)
    assert enc["reflectance"]["chunks"] == (1, 12, 128, 128)
    lazy.to_zarr(tmp_path / "dask.zarr", zarr_format=3, encoding=enc)
    back = xr.open_zarr(tmp_path / "dask.zarr")
    assert back["reflectance"].encoding["chunks"] == (1, 12, 128, 128)
    assert zarr_encoding(lazy, zarr_format=2, chunks={"x": 64, "y": 64})["reflectance"]["chunks"] == (1, 12, 64, 64)
    with pytest.raises(InvalidInputError, match=r"ds.chunk\(\{'x': 100\}\)"):
        zarr_encoding(lazy, zarr_format=3, chunks={"x": 100})
    with pytest.raises(InvalidInputError, match="one dask chunk"):
        zarr_encoding(lazy.chunk({"band": 6}), zarr_format=3)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_big_endian_data_reads_back_right(dataset, tmp_path, zarr_format):
    """netCDF 3 and FITS hand xarray big-endian arrays. zarr views a format 2 chunk's decoded bytes as the stored
    dtype, so the helper stores native data there, and the codec refuses a big-endian chunk it would see swapped."""
    import zarr

    small = dataset.isel(time=0, x=slice(0, 48), y=slice(0, 40))
    big = small.assign(reflectance=small["reflectance"].astype(">u2"))
    store = tmp_path / f"be{zarr_format}.zarr"
    big.to_zarr(store, zarr_format=zarr_format, encoding=zarr_encoding(big, zarr_format=zarr_format))
    back = xr.open_zarr(store)["reflectance"].values
    direct = TEC().decode(TEC().encode(np.ascontiguousarray(small["reflectance"].values)))
    np.testing.assert_array_equal(back, np.asarray(direct).reshape(back.shape))
    if zarr_format == 2:
        arr = zarr.create_array(tmp_path / "raw.zarr", shape=(12, 40, 48), dtype=">u2", zarr_format=2,
                                compressors=TEC(), filters=None)
        with pytest.raises(InvalidInputError, match="byte order"):
            arr[:] = big["reflectance"].values


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("where", ["attrs", "encoding", "nodata", "missing_value"])
def test_a_declared_missing_value_is_the_nodata(dataset, tmp_path, zarr_format, where):
    """int16 with _FillValue -9999 (as rioxarray declares a GeoTIFF's NoData, or xarray a masked variable's): the
    missing elements are stored exactly and read back as the fill value, which xarray masks to NaN. Before, the
    helper kept nodata 0 and coded them as data: lossy values near -9999 that no reader masked."""
    small = dataset.isel(time=0, x=slice(0, 48), y=slice(0, 40))
    x = small["reflectance"].values.astype(np.int16)
    x[:, 10:20, 10:30] = -9999
    var = xr.Variable(("band", "y", "x"), x)
    key = {"attrs": "_FillValue", "encoding": "_FillValue", "nodata": "nodata", "missing_value": "missing_value"}
    if where == "encoding":
        var.encoding["_FillValue"] = np.int16(-9999)
    else:
        var.attrs[key[where]] = np.int16(-9999)
    ds = xr.Dataset({"refl": var})
    enc = zarr_encoding(ds, zarr_format=zarr_format)
    codec = enc["refl"]["serializer" if zarr_format == 3 else "compressors"]
    assert codec.nodata == -9999
    store = tmp_path / f"fill{zarr_format}.zarr"
    ds.to_zarr(store, zarr_format=zarr_format, encoding=enc)
    raw = xr.open_zarr(store, mask_and_scale=False)["refl"].values
    np.testing.assert_array_equal(raw == -9999, x == -9999)
    if where != "nodata":  # CF readers mask it
        np.testing.assert_array_equal(np.isnan(xr.open_zarr(store)["refl"].values), x == -9999)
    # an explicit nodata= wins; a declared value the dtype cannot hold is refused, not coded as data
    assert zarr_encoding(ds, zarr_format=zarr_format, nodata=0)["refl"][
        "serializer" if zarr_format == 3 else "compressors"].nodata == 0
    bad = xr.Dataset({"refl": xr.Variable(("band", "y", "x"), x, {"nodata": 1.5})})
    with pytest.raises(InvalidInputError, match="missing value of variable 'refl'"):
        zarr_encoding(bad, zarr_format=zarr_format)



def test_format3_pads_edge_chunks_with_a_nonzero_nodata(dataset, tmp_path):
    """nodata 65535 (a swath edge): zarr pads edge chunks with the array's fill value, which the helper sets to the
    nodata, so the padding is nodata (no bits) and chunks holding only nodata are not written. Before, zarr's
    default 0 padded them with data. The values still read back as uint16 (no CF mask)."""
    small = dataset.isel(time=slice(0, 1), x=slice(0, 136), y=slice(0, 120))
    x = small["reflectance"].values.copy()
    x[..., 70:] = 65535
    ds = xr.Dataset({"refl": (small["reflectance"].dims, x)})
    enc = zarr_encoding(ds, zarr_format=3, nodata=65535, chunks={"y": 64, "x": 64})
    assert enc["refl"]["fill_value"] == 65535
    store = tmp_path / "fill.zarr"
    ds.to_zarr(store, zarr_format=3, encoding=enc)
    import zarr

    array = zarr.open_array(store / "refl")
    assert array.fill_value == 65535
    chunk_files = sorted(p.relative_to(store / "refl") for p in (store / "refl").rglob("*") if p.is_file()
                         and p.name != "zarr.json")
    assert len(chunk_files) == 4  # of 6: the two chunks right of column 128 are all nodata
    back = xr.open_zarr(store)["refl"]
    assert back.dtype == np.uint16
    got = back.values
    np.testing.assert_array_equal(got == 65535, x == 65535)
    assert metrics.psnr(x[0][:, :, :64], got[0][:, :, :64]) > 40  # the valid pixels, coded as before
    # the declared fill of a variable, and nodata 0 (zarr's default), are left as they are
    assert "fill_value" not in zarr_encoding(ds, zarr_format=3)["refl"]
    assert "fill_value" not in zarr_encoding(ds, zarr_format=2, nodata=65535)["refl"]
    # written again from the store (its encoding replaced by the helper's): the store's fill value stays
    again = xr.open_zarr(store, mask_and_scale=False)
    assert zarr_encoding(again, zarr_format=3, nodata=65535, chunks={"y": 64, "x": 64})["refl"]["fill_value"] == 65535
    # ... unless it is not the nodata now: a nonzero nodata becomes the fill, nodata 0 leaves zarr's default
    assert zarr_encoding(again, zarr_format=3, nodata=1000, chunks={"y": 64, "x": 64})["refl"]["fill_value"] == 1000
    assert "fill_value" not in zarr_encoding(again, zarr_format=3, chunks={"y": 64, "x": 64})["refl"]
    # a nodata the dtype cannot hold is refused (before: accepted, and its cast wrapped around to a data value)
    with pytest.raises(InvalidInputError, match=r"nodata for variable 'refl' to be an integer in 0..65535"):
        zarr_encoding(ds, zarr_format=3, nodata=70000)
    # format 2 pads with 0 whatever the nodata: said where edge chunks are partial (QA: 2.2x the bytes, 1.3 dB)
    import warnings

    from tec_zarr import EdgePaddingWarning

    with pytest.warns(EdgePaddingWarning, match="pads the edge chunks of 'refl' with 0, not its nodata 65535"):
        zarr_encoding(ds, zarr_format=2, nodata=65535, chunks={"y": 64, "x": 64})
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgePaddingWarning)
        zarr_encoding(ds, zarr_format=2, nodata=65535, chunks={"y": 60, "x": 68})  # chunks that divide the image
        zarr_encoding(ds, zarr_format=2, chunks={"y": 64, "x": 64})  # nodata 0: zarr's padding is the nodata
        zarr_encoding(ds, zarr_format=3, nodata=65535, chunks={"y": 64, "x": 64})


def test_encoding_helper_refuses_a_band_chunk_and_takes_whole_axis_shards(dataset):
    with pytest.raises(InvalidInputError, match=r"chunks\['band'\] to hold all 12 bands"):
        zarr_encoding(dataset, chunks={"band": 6})
    assert zarr_encoding(dataset, chunks={"band": -1, "y": 64})["reflectance"]["chunks"][1] == 12
    enc = zarr_encoding(dataset, chunks={"y": 64, "x": 64}, shards={"y": -1, "x": None})
    assert enc["reflectance"]["shards"][-2:] == (192, 192)  # whole axes in whole chunks (130 x 150 data)
    with pytest.raises(InvalidInputError, match=r"shards\['y'\], or -1 for the whole axis. Got 0"):
        zarr_encoding(dataset, shards={"y": 0})


def test_thirteen_unnamed_bands_get_the_l1c_advice(dataset):
    x = np.concatenate([dataset["reflectance"].values[:, :10], dataset["reflectance"].values[:, :3]], axis=1)
    ds = xr.Dataset({"refl": (("time", "b", "y", "x"), x)})
    with pytest.raises(InvalidInputError, match=r"Sentinel-2 L1C product \(with B10\): if so, drop B10, "
                                                r"ds = ds.isel\(b=\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12\]\)"):
        zarr_encoding(ds)

def test_float_reflectance_with_a_declared_fill(dataset, tmp_path):
    """float32 reflectance with _FillValue -9999: the fill is nodata, so the range check of lossy float data does
    not refuse it as a value (before: "values from -9999 ... outside the DN range"); a NaN fill keeps nodata 0."""
    small = dataset.isel(time=0, x=slice(0, 48), y=slice(0, 40))
    x = (small["reflectance"].values / 1e4).astype(np.float32)
    x[:, :5, :5] = -9999.0
    ds = xr.Dataset({"refl": xr.Variable(("band", "y", "x"), x, {"_FillValue": np.float32(-9999.0)})})
    enc = zarr_encoding(ds, zarr_format=3)
    assert enc["refl"]["serializer"].nodata == -9999.0
    ds.to_zarr(tmp_path / "f.zarr", zarr_format=3, encoding=enc)
    raw = xr.open_zarr(tmp_path / "f.zarr", mask_and_scale=False)["refl"].values
    np.testing.assert_array_equal(raw == -9999.0, x == -9999.0)
    nan = xr.Dataset({"refl": xr.Variable(("band", "y", "x"), x.clip(0), {"_FillValue": np.float32("nan")})})
    assert zarr_encoding(nan, zarr_format=3)["refl"]["serializer"].nodata == 0


def test_encoding_helper_checks_its_chunks(dataset):
    """-1 (and None) is the whole axis, as in dask and xarray; anything else that is not a positive integer along a
    dim of the dataset is refused before anything is written (zarr would fail late, or write chunks of 2.5 as 2)."""
    whole = zarr_encoding(dataset, zarr_format=3, chunks={"time": 1, "y": -1, "x": None})["reflectance"]["chunks"]
    assert whole == (1, 12, *dataset["reflectance"].shape[-2:])
    for bad, text in [({"y": 0}, "positive integer chunks\\['y'\\]"), ({"y": -5}, "Got -5"),
                      ({"y": "auto"}, "Got 'auto'"), ({"y": 2.5}, "Got 2.5"), ({"y": True}, "Got True"),
                      ({"tiem": 1}, "dims of the dataset .*'tiem'"), ([("y", 64)], "as a dict")]:
        with pytest.raises(InvalidInputError, match=text):
            zarr_encoding(dataset, zarr_format=3, chunks=bad)


def test_encoding_helper_checks_the_band_coordinate(dataset):
    from tec_zarr.bands import S2_L2A_BANDS

    reversed_ds = dataset.isel(band=slice(None, None, -1))
    with pytest.raises(InvalidInputError, match=r"model's order .*ds = ds.sel\(band="):
        zarr_encoding(reversed_ds, zarr_format=3)
    zarr_encoding(reversed_ds.sel(band=list(S2_L2A_BANDS)), zarr_format=3)  # the fix it names works
    l1c = xr.concat([dataset, dataset.isel(band=[9]).assign_coords(band=["B10"])], dim="band")
    with pytest.raises(InvalidInputError, match="L1C"):
        zarr_encoding(l1c, zarr_format=3, variables=["reflectance"])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_float32_with_nan_and_partial_chunks(dataset, tmp_path, zarr_format):
    """float32 reflectance with NaN (missing data, and xarray's padding of edge chunks) writes and reads back."""
    refl = (dataset["reflectance"].isel(time=[0, 1]).astype("float32") / 10000).where(lambda v: v < 0.25)
    refl[:, :, :10, :] = np.nan
    ds = refl.to_dataset(name="reflectance")
    enc = zarr_encoding(ds, zarr_format=zarr_format, chunks={"time": 1, "y": 100, "x": 100})  # 264 = 2 x 100 + 64
    ds.to_zarr(tmp_path / "f.zarr", zarr_format=zarr_format, encoding=enc)
    back = xr.open_zarr(tmp_path / "f.zarr")["reflectance"].values
    a = refl.values
    assert np.isnan(a).mean() > 0.1 and np.array_equal(np.isnan(a), np.isnan(back))
    assert metrics.psnr(np.nan_to_num(a), np.nan_to_num(back), scale=1e4) > 41.0  # measured 42.1


def test_float_dn_as_cube_builders_load_it_is_refused_before_writing_and_float_scale_1_codes_it(dataset, tmp_path):
    """stackstac and odc-stac load DN unscaled, as float64 (stackstac's default) or float32: read as reflectance at
    the default float_scale they would decode to garbage, so they are refused, naming the fix, before any store is
    created; with float_scale=1 they code as well as uint16 DN."""
    from tec_zarr.errors import UnsupportedDtypeError

    dn = dataset.isel(time=[1]).isel(y=slice(0, 70), x=slice(0, 90)).astype("float64")
    dn["reflectance"][:, :, :6] = np.nan  # a swath edge
    with pytest.raises(UnsupportedDtypeError, match=r"astype\('float32'\)"):
        zarr_encoding(dn, zarr_format=3)
    dn32 = dn.astype("float32")
    with pytest.raises(InvalidInputError, match="float_scale=1"):
        zarr_encoding(dn32, zarr_format=3, chunks={"y": 64, "x": 64})
    assert not list(tmp_path.iterdir())
    enc = zarr_encoding(dn32, zarr_format=3, chunks={"y": 64, "x": 64}, float_scale=1)
    dn32.to_zarr(tmp_path / "dn.zarr", zarr_format=3, encoding=enc)
    back = xr.open_zarr(tmp_path / "dn.zarr")["reflectance"].values
    a = dn32["reflectance"].values
    assert np.array_equal(np.isnan(a), np.isnan(back))
    assert metrics.psnr(np.nan_to_num(a), np.nan_to_num(back)) > 41.0
    # A dask-backed variable is checked as its chunks are encoded: the write fails, it never stores garbage.
    lazy = dn32.chunk({"y": 64, "x": 64})
    with pytest.raises(InvalidInputError, match="float_scale=1"):
        lazy.to_zarr(tmp_path / "lazy.zarr", zarr_format=3, encoding=zarr_encoding(lazy, zarr_format=3))


def test_float_values_beyond_the_dn_range_are_refused_for_lossy_coding_only(image):
    from tec_zarr import pipeline

    refl = np.ascontiguousarray(image[:, :32, :32]).astype(np.float32) / np.float32(1e4)
    pipeline.encode_chunk(refl, model="tec-fp", quality=1)  # reflectance: within range
    refl[0, 0, 0] = 7.0  # 70000 DN at float_scale 10000
    with pytest.raises(InvalidInputError, match=r"Got values from .* to 7 instead"):
        pipeline.encode_chunk(refl, model="tec-fp", quality=1)
    assert np.abs(pipeline.decode_chunk(pipeline.encode_chunk(refl, model="tec-fp", quality=1, max_error=1e-3))
                  - refl).max() <= 1e-3  # a bound keeps any finite value
    refl[0, 0, 0] = -1.0  # -10000 DN: negative reflectance (a BOA offset) is within range
    pipeline.encode_chunk(refl, model="tec-fp", quality=1)


def test_a_lazily_opened_float_variable_is_checked_on_a_sample(dataset, tmp_path):
    """A store opened without dask is checked before writing from a strided sample of its first image, not read
    whole."""
    dn = dataset.isel(time=[0, 1]).astype("float32")
    dn.to_zarr(tmp_path / "plain.zarr", zarr_format=3)  # xarray's own codecs
    lazy = xr.open_zarr(tmp_path / "plain.zarr", chunks=None)
    assert lazy["reflectance"].chunks is None and not lazy["reflectance"].variable._in_memory
    with pytest.raises(InvalidInputError, match="float_scale=1"):
        zarr_encoding(lazy, zarr_format=3)
    assert not lazy["reflectance"].variable._in_memory
    assert list(zarr_encoding(lazy, zarr_format=3, float_scale=1)) == ["reflectance"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_encoding_helper_chunks_in_memory_data_itself(dataset, tmp_path, zarr_format):
    """Without chunks= or dask, zarr's own guess would split the band axis (and the write fail): one date, whole
    rows and columns up to 512, equal tiles of at most 512 (a multiple of 16) beyond: a chunk is coded whole, and a
    1024 x 1024 one would need about 2 GB to encode with the context models (0.4 GB with tec-fp)."""
    enc = zarr_encoding(dataset, zarr_format=zarr_format)
    assert enc["reflectance"]["chunks"] == (1, 12, *dataset["reflectance"].shape[-2:])
    dataset.to_zarr(tmp_path / "s.zarr", zarr_format=zarr_format, encoding=enc)
    back = xr.open_zarr(tmp_path / "s.zarr")["reflectance"]
    assert back.encoding["chunks"] == enc["reflectance"]["chunks"] and back.shape == dataset["reflectance"].shape
    wide = xr.Dataset({"r": (("time", "band", "y", "x"), np.zeros((2, 12, 1500, 700), np.uint16))})
    assert zarr_encoding(wide, zarr_format=zarr_format)["r"]["chunks"] == (1, 12, 512, 352)
    assert zarr_encoding(wide, zarr_format=3, chunks={"y": 256})["r"]["chunks"] == (2, 12, 256, 700)  # as before


@pytest.mark.parametrize("size, tile", [(1, 1), (264, 264), (512, 512), (513, 272), (700, 352), (1024, 512),
                                        (1098, 368), (1500, 512), (10980, 512)])
def test_default_tile_is_whole_up_to_512_then_equal_tiles(size, tile):
    assert default_tile(size) == tile
    assert tile <= DEFAULT_TILE and (tile == size or tile % 16 == 0)
    tiles = -(-size // tile)
    assert tiles == -(-size // DEFAULT_TILE)  # no more chunks than tiles of 512 would make


def test_format2_chunks_its_readers_would_refuse_are_refused_before_writing(dataset, tmp_path, monkeypatch):
    """zarr reads format 2 chunks without telling the codec their shape, so the decoder's size limit applies: such a
    chunk is refused when written (helper and codec), where format 3 stores it and reads it back."""
    monkeypatch.setenv("TEC_ZARR_MAX_CHUNK_ELEMENTS", str(12 * 64 * 64))
    with pytest.raises(InvalidInputError, match="zarr_format=3"):
        zarr_encoding(dataset, zarr_format=2, chunks={"time": 1, "y": 128, "x": 128})
    enc = zarr_encoding(dataset, zarr_format=2, chunks={"time": 1, "y": 64, "x": 64})
    dataset.to_zarr(tmp_path / "ok.zarr", zarr_format=2, encoding=enc)
    assert xr.open_zarr(tmp_path / "ok.zarr")["reflectance"].shape == dataset["reflectance"].shape
    with pytest.raises(InvalidInputError, match="format 2"):
        TEC().encode(np.ascontiguousarray(dataset["reflectance"].values[0, :, :128, :128]))
    enc3 = zarr_encoding(dataset, zarr_format=3, chunks={"time": 1, "y": 128, "x": 128})
    dataset.to_zarr(tmp_path / "v3.zarr", zarr_format=3, encoding=enc3)
    back = xr.open_zarr(tmp_path / "v3.zarr")["reflectance"].values
    assert metrics.mean_psnr(dataset["reflectance"].values, back) > 40


@pytest.mark.parametrize("name", ["refl", None])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_dataarray_as_stackstac_returns_it(dataset, tmp_path, zarr_format, name):
    """``da.to_zarr(store, encoding=zarr_encoding(da))``: the encoding names the variable DataArray.to_zarr writes
    (its name, or xarray's for an unnamed array), and the store reads back as the array."""
    da = dataset["reflectance"].isel(time=slice(0, 1), x=slice(0, 40), y=slice(0, 36)).rename(name)
    enc = zarr_encoding(da, zarr_format=zarr_format, quality=3)
    assert list(enc) == [name or "__xarray_dataarray_variable__"]
    store = tmp_path / f"da{zarr_format}.zarr"
    da.to_zarr(store, zarr_format=zarr_format, encoding=enc)
    back = xr.open_dataarray(store, engine="zarr")
    assert back.dtype == da.dtype and back.shape == da.shape
    assert metrics.psnr(da.values[0], back.values[0]) > 45
    with pytest.raises(InvalidInputError, match="Expected an xarray Dataset or DataArray. Got ndarray"):
        zarr_encoding(da.values)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_time_chunk_asked_beyond_the_dates_stays_for_appends(dataset, tmp_path, zarr_format):
    """An archive begun with fewer dates than ``chunks={"time": T}`` (or with none) and appended to: the chunk stays
    T dates, so the temporal model codes the appended dates against the earlier ones (before: clipped to the dates
    of the first write, for good; 0 dates gave 0-sized chunks zarr could not append to)."""
    from tec_zarr.pipeline.decode import read_header

    # without its datetime coordinate: xarray's own encoding of appended times is not what is tested here
    small = dataset.isel(y=slice(0, 32), x=slice(0, 32)).drop_vars("time")
    for first in (1, 0):
        path = tmp_path / f"archive-{first}-{zarr_format}.zarr"
        begin = small.isel(time=slice(0, first))
        enc = zarr_encoding(begin, zarr_format=zarr_format, model="tec-tt-2", chunks={"time": 3})
        assert enc["reflectance"]["chunks"] == (3, 12, 32, 32)
        begin.to_zarr(path, zarr_format=zarr_format, encoding=enc)
        for t in range(first, 3):
            small.isel(time=slice(t, t + 1)).to_zarr(path, append_dim="time")
        chunk = path / "reflectance" / ("0.0.0.0" if zarr_format == 2 else "c/0/0/0/0")
        assert read_header(chunk.read_bytes()).shape[:-3] == (3,)
        got = xr.open_zarr(path).reflectance.values
        assert metrics.psnr(small.reflectance.values[:3], got) > 40
    assert zarr_encoding(small.isel(time=slice(0, 0)), zarr_format=3)["reflectance"]["chunks"] == (1, 12, 32, 32)
    # shards too: a leading axis keeps the shard asked; never 0 (-1 on no dates: one chunk)
    for first, asked, shard in ((1, 12, 12), (1, 4, None), (0, -1, 3), (2, -1, 3)):
        begin = small.isel(time=slice(0, first))
        if shard is None:
            with pytest.raises(InvalidInputError, match="multiple of its chunk 3"):
                zarr_encoding(begin, chunks={"time": 3}, shards={"time": asked})
            continue
        assert zarr_encoding(begin, chunks={"time": 3}, shards={"time": asked})["reflectance"]["shards"] == \
            (shard, 12, 32, 32)


def test_a_bound_above_the_lattice_with_several_dates_per_chunk_warns(dataset):
    """max_error above 25 DN holds for chunks written whole: appending dates into a chunk rewrites it from decoded
    values (QA measured 141 DN at E = 50). zarr_encoding says so where chunks hold several dates; not for one date
    per chunk, not at 25 DN or below, and in DN for float32 (E in reflectance times float_scale)."""
    import warnings

    from tec_zarr import BoundRewriteWarning

    with pytest.warns(BoundRewriteWarning, match="max_error=50 .* 3 dates per chunk"):
        zarr_encoding(dataset, max_error=50, chunks={"time": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error", BoundRewriteWarning)
        zarr_encoding(dataset, max_error=50)  # one date per chunk: appends write whole chunks
        zarr_encoding(dataset, max_error=25, chunks={"time": 3})
        zarr_encoding(dataset, max_error=25.9, chunks={"time": 3})  # integer data: coded as 25 (floored)
        zarr_encoding(dataset.astype("float32") / 1e4, max_error=0.0025, chunks={"time": 3})  # 25 DN
    with pytest.warns(BoundRewriteWarning):
        zarr_encoding(dataset.astype("float32") / 1e4, max_error=0.003, chunks={"time": 3})  # 30 DN
