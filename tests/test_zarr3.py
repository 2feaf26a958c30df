"""The zarr-python 3 serializer (format 3), and the numcodecs codec inside zarr format 2 arrays."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

from tec_zarr import TEC as TECv2
from tec_zarr import metrics
from tec_zarr.errors import InvalidInputError, UnsupportedDtypeError
from tec_zarr.zarr3 import TEC


def crop(a, h, w):
    return np.ascontiguousarray(a[..., :h, :w])


def test_dict_round_trip():
    codec = TEC(quality=1, nodata=None)
    d = codec.to_dict()
    assert d["name"] == "tec_zarr.tec"
    assert TEC.from_dict(d) == codec
    assert zarr.registry.get_codec_class("tec_zarr.tec") is TEC
    assert TEC.from_dict({"name": "tec_zarr.tec"}) == TEC()


def test_pickle_is_small_and_equal():
    codec = TEC(quality=2)
    data = pickle.dumps(codec)
    assert len(data) < 1000 and pickle.loads(data) == codec


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_array_round_trip_with_edge_chunks(cube, zarr_format):
    data = np.ascontiguousarray(np.tile(cube[:2], (1, 1, 2, 1))[:, :, :300, :260])  # (2, 12, 300, 260)
    kwargs = (
        {"serializer": TEC(), "compressors": None}
        if zarr_format == 3
        else {"compressors": TECv2(), "filters": None}
    )
    arr = zarr.create_array({}, shape=data.shape, chunks=(1, 12, 128, 128), dtype="uint16", fill_value=0,
                            zarr_format=zarr_format, **kwargs)
    arr[:] = data
    back = arr[:]
    assert back.shape == data.shape
    assert metrics.mean_psnr(data, back) > 41.7  # measured 42.9 dB, both formats
    # a window read decodes the same pixels as the whole read
    np.testing.assert_array_equal(arr[1, :, 250:300, 200:260], back[1, :, 250:300, 200:260])


def test_fill_value_as_nodata(image):
    arr = zarr.create_array({}, shape=(12, 64, 64), chunks=(12, 64, 64), dtype="uint16", fill_value=65535,
                            serializer=TEC(nodata="fill_value"), compressors=None)
    assert arr.metadata.codecs[0].nodata == 65535  # resolved at creation and stored as a number
    data = crop(image, 64, 64).copy()
    data[:, 5:9, 5:9] = 65535
    arr[:] = data
    np.testing.assert_array_equal(arr[:] == 65535, data == 65535)


def test_refuses_unsupported_dtype_at_creation():
    with pytest.raises(UnsupportedDtypeError):
        zarr.create_array({}, shape=(12, 16, 16), chunks=(12, 16, 16), dtype="float64", serializer=TEC(), compressors=None)
    with pytest.raises(InvalidInputError):
        zarr.create_array({}, shape=(16, 16), chunks=(16, 16), dtype="uint16", serializer=TEC(), compressors=None)


def test_sharded_array_codes_each_inner_chunk_with_tec(cube, tmp_path):
    """zarr 3 sharding (many small chunks in one object, as cloud stores of small chunks use) with TEC as the inner
    serializer: each inner chunk is a TEC chunk, partial shards and edge chunks included, and a window read
    decodes the same pixels as the whole read and as an unsharded array of the same chunks."""
    data = np.ascontiguousarray(cube[:3, :, :200, :264])  # (3, 12, 200, 264): partial shards on every axis
    kwargs = {"shape": data.shape, "chunks": (1, 12, 64, 128), "dtype": "uint16", "fill_value": 0,
              "serializer": TEC(quality=1), "compressors": None}
    sharded = zarr.create_array(str(tmp_path / "sharded.zarr"), shards=(2, 12, 128, 256), **kwargs)
    sharded[:] = data
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), **kwargs)
    plain[:] = data
    inner = zarr.open_array(str(tmp_path / "sharded.zarr")).metadata.codecs[0].codecs
    assert isinstance(inner[0], TEC) and inner[0].quality == 1
    back = sharded[:]
    np.testing.assert_array_equal(back, plain[:])  # same inner chunks, same bytes decoded
    assert metrics.mean_psnr(data, back) > 38.5  # measured 39.1 dB
    np.testing.assert_array_equal(sharded[2, :, 150:200, 100:264], back[2, :, 150:200, 100:264])
    shard_files = [p for p in (tmp_path / "sharded.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(shard_files) == 2 * 2 * 2  # shards, not inner chunks, are the stored objects


def test_xarray_writes_shards_of_tec_chunks(cube, tmp_path):
    """zarr_encoding(shards=...): the shards hold TEC inner chunks and read back."""
    import xarray as xr

    from tec_zarr import zarr_encoding

    data = np.ascontiguousarray(cube[:2, :, :128, :256])
    ds = xr.Dataset({"r": (("time", "band", "y", "x"), data)})
    enc = zarr_encoding(ds, zarr_format=3, chunks={"time": 1, "y": 64, "x": 128},
                        shards={"time": 2, "y": 128, "x": 256})
    assert enc["r"]["shards"] == (2, 12, 128, 256)
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3, encoding=enc, consolidated=False)
    (sharding,) = zarr.open_array(str(tmp_path / "s.zarr" / "r")).metadata.codecs
    assert isinstance(sharding.codecs[0], TEC) and sharding.chunk_shape == (1, 12, 64, 128)
    back = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)["r"].values
    assert metrics.mean_psnr(data, back) > 41.7  # measured 42.2 dB (quality 2)


def test_shards_that_zarr_or_xarray_would_refuse_are_refused_by_the_helper(cube):
    """Shards not a multiple of the chunk, along the band axis, in format 2, not positive, or split by dask chunks:
    refused with the package's error, naming what would work. A size reaching the axis means the whole axis."""
    import xarray as xr

    from tec_zarr import zarr_encoding

    ds = xr.Dataset({"r": (("time", "band", "y", "x"), np.ascontiguousarray(cube[:2, :, :200, :264])),
                     "s": (("band", "y", "x"), np.ascontiguousarray(cube[0, :, :200, :264]))})
    chunks = {"time": 1, "y": 64, "x": 128}
    enc = zarr_encoding(ds, chunks=chunks, shards={"time": 2, "x": 300})
    assert enc["r"]["shards"] == (2, 12, 64, 384) and enc["s"]["shards"] == (12, 64, 384)  # "s" has no time
    with pytest.raises(InvalidInputError, match="multiple of its chunk 64. Got 100 instead: 64 or 128"):
        zarr_encoding(ds, chunks=chunks, shards={"y": 100})
    with pytest.raises(InvalidInputError, match="band dim"):
        zarr_encoding(ds, chunks=chunks, shards={"band": 12})
    for bad in (128.0, -128, 0, True):
        with pytest.raises(InvalidInputError, match="positive integer"):
            zarr_encoding(ds, chunks=chunks, shards={"y": bad})
    with pytest.raises(InvalidInputError, match="dict dim -> size"):
        zarr_encoding(ds, chunks=chunks, shards=(2, 12, 128, 256))
    with pytest.raises(InvalidInputError, match="dims of the dataset"):
        zarr_encoding(ds, chunks=chunks, shards={"z": 2})
    with pytest.raises(InvalidInputError, match="format 2 has no sharding"):
        zarr_encoding(ds, zarr_format=2, chunks=chunks, shards={"y": 128})
    lazy = ds.chunk({"time": 1, "y": 64, "x": 128})
    # the fix keeps the Zarr chunk, which would otherwise follow the new dask chunk and leave one chunk per shard
    with pytest.raises(InvalidInputError, match=r"ds.chunk\(\{'y': 128\}\), and zarr_encoding\(\.\.\., "
                                                r"chunks=\{'y': 64\}\)"):
        zarr_encoding(lazy, shards={"y": 128})
    with pytest.raises(InvalidInputError,
                       match=r"Got \(64, 64, 64, \.\.\.\) instead: ds = ds.chunk\(\{'y': 128\}\)\.$"):
        zarr_encoding(lazy, chunks={"y": 64}, shards={"y": 128})


def test_dask_backed_sharded_write(cube, tmp_path):
    """Dask chunks holding whole shards (and one dask chunk along x) write sharded stores that read back."""
    import xarray as xr

    from tec_zarr import zarr_encoding

    data = np.ascontiguousarray(cube[:2, :, :200, :264])
    ds = xr.Dataset({"r": (("time", "band", "y", "x"), data)}).chunk({"time": 2, "y": 128, "x": -1})
    enc = zarr_encoding(ds, chunks={"time": 1, "y": 64, "x": 128}, shards={"time": 2, "y": 128, "x": 264})
    assert enc["r"]["chunks"] == (1, 12, 64, 128) and enc["r"]["shards"] == (2, 12, 128, 384)
    ds.to_zarr(tmp_path / "d.zarr", zarr_format=3, encoding=enc, consolidated=False)
    back = xr.open_zarr(tmp_path / "d.zarr", consolidated=False)["r"].values
    assert back.shape == data.shape and metrics.mean_psnr(data, back) > 41.0


def test_a_chunk_of_another_dtype_is_refused(image, tmp_path):
    """Chunks state their dtype and a format 3 serializer knows the array's: a chunk copied in from an int16 or
    float32 array is refused, not read as garbage (format 2 readers view the decoded bytes themselves)."""
    from tec_zarr.errors import ChunkShapeError

    a = np.ascontiguousarray(image[:, :32, :32])
    paths = {}
    for name, data in (("u2", a), ("i2", a.astype(np.int16) - 3000), ("f4", a.astype(np.float32) / 10000)):
        arr = zarr.create_array(tmp_path / f"{name}.zarr", shape=a.shape, chunks=a.shape, dtype=data.dtype,
                                serializer=TEC(nodata=None), compressors=None)
        arr[:] = data
        paths[name] = tmp_path / f"{name}.zarr" / "c" / "0" / "0" / "0"
    for other in ("i2", "f4"):
        paths["u2"].write_bytes(paths[other].read_bytes())
        with pytest.raises(ChunkShapeError, match="belongs to another array"):
            zarr.open_array(tmp_path / "u2.zarr")[:]


def test_unknown_config_keys_are_the_packages_error():
    """A store written by a newer tec_zarr (or damaged) names a key this one does not know: said, not a TypeError."""
    with pytest.raises(InvalidInputError, match=r"unknown \['new_key'\].*newer tec-zarr: pip install -U tec-zarr"):
        TEC.from_dict({"name": "tec_zarr.tec", "configuration": {**TEC().to_dict()["configuration"], "new_key": 1}})
    for damaged in ([1, 2], "tec-fp", 3):
        with pytest.raises(InvalidInputError, match="configuration as a JSON object"):
            TEC.from_dict({"name": "tec_zarr.tec", "configuration": damaged})


def test_a_filter_flattening_the_chunk_is_named(tmp_path):
    """Format 2 filters (Delta, FixedScaleOffset) hand the compressor a flat array: the error says so, instead of
    advising the band-axis chunking the user already has."""
    from numcodecs import Delta

    from tec_zarr.codec.zarr2 import TEC as TEC2

    z = zarr.create_array(tmp_path / "f.zarr", shape=(1, 12, 32, 32), chunks=(1, 12, 32, 32), dtype="uint16",
                          zarr_format=2, filters=[Delta(dtype="u2")], compressors=TEC2())
    with pytest.raises(InvalidInputError, match="a filter before TEC"):
        z[:] = np.full((1, 12, 32, 32), 1000, "uint16")


def test_numpy_numbers_are_numbers():
    """rioxarray's nodata is np.uint16(0), loops give np.int64 qualities: taken as the Python numbers, and the
    stored config holds plain JSON numbers."""
    import json

    codec = TEC(quality=np.int64(1), nodata=np.uint16(0), max_error=np.float32(5), float_scale=np.float32(1),
                dn_offset=np.int64(1000))
    config = codec.to_dict()["configuration"]
    assert (config["quality"], config["nodata"], config["max_error"], config["float_scale"]) == (1, 0, 5, 1.0)
    assert json.loads(json.dumps(config)) == config
    assert TECv2(psnr=np.float64(45), nodata=np.int16(-9999)).get_config()["nodata"] == -9999
    with pytest.raises(InvalidInputError, match="quality"):
        TEC(quality=np.bool_(True))
