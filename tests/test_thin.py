"""Thinning: chunks cut to a lower quality without decoding the image (tec_zarr.thin), and stores thinned in place."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import zarr

import tec_zarr
from tec_zarr import TEC, metrics
from tec_zarr.bitstream.chunk import pack, unpack_sections
from tec_zarr.errors import CorruptChunkError, InvalidInputError, TecZarrError
from tec_zarr.pipeline import decode_chunk, encode_chunk, read_header
from tec_zarr.pipeline.decode import parse
from tec_zarr.requantize import DEADZONE, RATIO_BITS, doubled_middle, ratios, requantize, runs
from tec_zarr.thinning import thin_store
from tec_zarr.zarr3 import TEC as TEC3


@pytest.fixture(scope="module")
def tile(image) -> np.ndarray:
    return np.ascontiguousarray(image[:, :64, :64])


@pytest.fixture(scope="module")
def top_chunks(tile) -> dict[str, bytes]:
    return {name: encode_chunk(tile, model=name, quality=4, nodata=None) for name in ("tec-fp", "tec-hp", "tec-ctx")}


def test_requantize_runs_contain_exactly_the_symbols_mapped_to_them():
    gain = np.array([[1.0, 0.3, -0.1, 2.2], [2.0, 1.0, 1.0, 2.1]], np.float32)  # top: row 1
    ratio = ratios(gain, 1, 0)
    assert ratio[2] == 0 and ratio[3] == (1 << RATIO_BITS) - 1  # dropped; not lower: just below 1
    s = np.arange(-300, 301).reshape(1, 1, 1, -1).repeat(4, axis=1)
    t = requantize(s, ratio)
    lo, hi = runs(t, ratio)
    kept = ratio > 0
    assert ((lo <= s) & (s <= hi))[:, kept].all()
    for c in np.flatnonzero(kept):  # every symbol in a run maps back to its run's value
        for value in np.unique(t[0, c]):
            members = s[0, c][t[0, c] == value]
            if members.min() == s.min() or members.max() == s.max():
                continue  # a run cut by the test's range
            a, b = runs(np.array([[[[value]]]] * 1).repeat(4, axis=1), ratio)
            assert members.min() == a[0, c, 0, 0] and members.max() == b[0, c, 0, 0]
    assert (t[:, 2] == 0).all()
    assert (t[0, 0] == -t[0, 0, 0, ::-1]).all()  # odd: the run of 0 is centred
    # The deadzone: 0.4 instead of a half, so a value mapped to exactly 0.5 goes to 0.
    assert DEADZONE < 1 << (RATIO_BITS - 1)


def test_doubled_middle_composes_runs_of_runs():
    gain = np.array([[0.9], [1.7], [3.5]], np.float32)
    s = np.arange(-200, 201).reshape(1, 1, 1, -1)
    r21, r10 = ratios(gain, 2, 1), ratios(gain, 1, 0)
    t1 = requantize(s, r21)
    t0 = requantize(t1, r10)
    middle = doubled_middle(t0, [r21, r10])
    for value in np.unique(t0):
        members = s[t0 == value]
        if members.min() == s.min() or members.max() == s.max():
            continue
        assert middle[t0 == value][0] == members.min() + members.max()


@pytest.mark.parametrize("name", ["tec-fp", "tec-hp", "tec-ctx"])
def test_thinned_chunks_decode_smaller_with_quality_falling(name, tile, top_chunks):
    top = top_chunks[name]
    sizes, psnrs = [len(top)], [metrics.psnr(tile, decode_chunk(top))]
    for q in (3, 2, 1, 0):
        thinned = tec_zarr.thin(top, q)
        header = read_header(thinned)
        assert header.quality == q and header.thinned_from == (4,)
        sizes.append(len(thinned))
        psnrs.append(metrics.psnr(tile, decode_chunk(thinned, expected_shape=tile.shape)))
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 5
    assert psnrs == sorted(psnrs, reverse=True) and psnrs[-1] > 30


def test_thinned_chunk_is_close_to_a_direct_one(tile, top_chunks):
    """At the same level the thinned chunk's PSNR and size are near a chunk coded there directly (the benchmark
    measures bits at equal PSNR)."""
    for q in (3, 1):
        direct = encode_chunk(tile, model="tec-fp", quality=q, nodata=None)
        thinned = tec_zarr.thin(top_chunks["tec-fp"], q)
        assert abs(metrics.psnr(tile, decode_chunk(thinned)) - metrics.psnr(tile, decode_chunk(direct))) < 2.0
        assert 0.7 < len(thinned) / len(direct) < 1.3


def test_thinning_twice_lists_the_levels_and_nests(tile, top_chunks):
    top = top_chunks["tec-hp"]
    once = tec_zarr.thin(top, 3)
    twice = tec_zarr.thin(once, 1)
    assert read_header(twice).thinned_from == (4, 3)
    assert len(twice) < len(once)
    assert metrics.psnr(tile, decode_chunk(twice)) > metrics.psnr(tile, decode_chunk(tec_zarr.thin(top, 0)))


def test_same_quality_returns_the_chunk_and_bad_requests_are_refused(tile, top_chunks):
    top = top_chunks["tec-fp"]
    assert tec_zarr.thin(top, 4) == top
    for bad in (5, -1, 1.5, True, "2"):
        with pytest.raises(InvalidInputError):
            tec_zarr.thin(top, bad)
    bounded = encode_chunk(tile, model="tec-fp", quality=2, nodata=None, max_error=20)
    with pytest.raises(InvalidInputError, match="residual"):
        tec_zarr.thin(bounded, 0)
    with pytest.raises(TecZarrError):
        tec_zarr.thin(top[:-10], 1)
    with pytest.raises(TecZarrError):
        tec_zarr.thin(b"not a chunk at all", 1)


def test_masks_nan_and_edge_padding_survive_thinning(image):
    data = image[:, :50, :70].astype(np.float32) / 1e4
    data[:, :10, :] = np.nan  # a swath edge
    data[3, 20:25, 30:35] = np.nan
    top = encode_chunk(data, model="tec-fp", quality=4, nodata=None)
    thinned = tec_zarr.thin(top, 1)
    got = decode_chunk(thinned)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(data))
    valid = ~np.isnan(data)
    assert np.abs(got[valid] - data[valid]).max() < 0.2
    assert unpack_sections(thinned).nan_mask == unpack_sections(top).nan_mask
    ints = image[:, :40, :40].copy()
    ints[:, :8] = 0
    top = encode_chunk(ints, model="tec-hp", quality=3, nodata=0)
    got = decode_chunk(tec_zarr.thin(top, 0))
    assert (got[:, :8] == 0).all() and (got[:, 8:] != 0).all()


def test_temporal_chunks_thin(cube):
    dates = np.ascontiguousarray(cube[:3, :, :32, :32])
    top = encode_chunk(dates, model="tec-tt", quality=3, nodata=0)
    thinned = tec_zarr.thin(top, 1)
    direct = encode_chunk(dates, model="tec-tt", quality=1, nodata=0)
    got = decode_chunk(thinned, expected_shape=dates.shape)
    assert got.shape == dates.shape and len(thinned) < len(top)
    assert metrics.psnr(dates, got) > metrics.psnr(dates, decode_chunk(direct)) - 2.0


def own_tables_lose(monkeypatch) -> None:
    """Make thinning keep the runs-summed payload: the level's own-table payloads made longer than any."""
    from tec_zarr.entropy.temporal import TemporalCoder

    monkeypatch.setattr(TemporalCoder, "encode", lambda self, *args, **kwargs: bytes(1 << 20))


def test_temporal_chunks_thin_runs_summed_where_shorter(cube, monkeypatch):
    """tec-tt thinning also tries the runs-summed payload (tec-ctx's, every date at the top level's model): where
    it is shorter (data unlike the training data; forced here) the chunk carries the mark, holds the top chunk's
    z, decodes to the symbols the level's own tables give, and thins again."""
    from tec_zarr.bitstream.payload import split_z_section

    dates = np.ascontiguousarray(cube[:2, :, :48, :40])
    top = encode_chunk(dates, model="tec-tt", quality=4, nodata=0)
    own = tec_zarr.thin(top, 2)
    own_tables_lose(monkeypatch)
    summed = tec_zarr.thin(top, 2)
    assert read_header(summed).runs_summed and not read_header(own).runs_summed
    np.testing.assert_array_equal(parse(summed).symbols, parse(own).symbols)
    assert split_z_section(unpack_sections(summed).payload)[0] == split_z_section(unpack_sections(top).payload)[0]
    got = decode_chunk(summed, expected_shape=dates.shape)
    assert metrics.psnr(dates, got) > metrics.psnr(dates, decode_chunk(own)) - 0.3
    again = tec_zarr.thin(summed, 0)
    assert read_header(again).runs_summed and read_header(again).thinned_from == (4, 2)
    assert metrics.psnr(dates, decode_chunk(again)) < metrics.psnr(dates, got)


def test_hostile_thinned_headers_are_refused(top_chunks, monkeypatch):
    from tec_zarr.bitstream import chunk

    sections = unpack_sections(tec_zarr.thin(top_chunks["tec-fp"], 2))
    monkeypatch.setattr(chunk, "_check_thinned", lambda *args: None)  # write what a hostile encoder would
    hostile = {levels: pack(replace(sections.header, thinned_from=levels), sections.mask, sections.payload)
               for levels in ((), (2,), (1,), (3, 4), (4, 4, 3), (9,))}
    monkeypatch.undo()
    for levels, data in hostile.items():
        with pytest.raises(CorruptChunkError):
            decode_chunk(data)
    assert decode_chunk(pack(replace(sections.header, thinned_from=(4, 3)), sections.mask, sections.payload)).shape


def _store(tmp_path, image, zarr_format, **codec):
    path = tmp_path / f"v{zarr_format}.zarr"
    data = np.ascontiguousarray(image[:, :100, :90])
    kwargs = ({"compressors": TEC(quality=4, model="tec-fp", **codec)} if zarr_format == 2
              else {"serializer": TEC3(quality=4, model="tec-fp", **codec), "compressors": None})
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(12, 64, 64), dtype="uint16", zarr_format=zarr_format,
                            fill_value=0, **kwargs)
    arr[:] = data
    return path, data


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_thin_store_in_place(tmp_path, image, zarr_format):
    path, data = _store(tmp_path, image, zarr_format)
    before = zarr.open_array(str(path))[:]
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    meta_file = path / (".zarray" if zarr_format == 2 else "zarr.json")
    meta = meta_file.read_bytes()
    report = thin_store(path, 1)
    assert report.thinned == [""] and report.chunks == 4 and report.bytes_after < report.bytes_before
    assert sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) < size
    assert not [p for p in path.rglob("*thin-*")]
    after = zarr.open_array(str(path))[:]
    assert metrics.psnr(data, after) < metrics.psnr(data, before) and metrics.psnr(data, after) > 33
    assert meta_file.read_bytes() == meta  # the setting for later writes: quality 4 still
    again = thin_store(path, 3)  # its chunks already below: nothing to do
    assert again.chunks == 0
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], after)


def test_thin_store_with_xarray_and_consolidated_metadata(tmp_path, cube):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"refl": (("time", "band", "y", "x"), cube[:2, :, :64, :64])})
    path = tmp_path / "cube.zarr"
    ds.to_zarr(path, zarr_format=2, consolidated=True,
               encoding={"refl": {"compressors": TEC(quality=3, model="tec-hp"), "chunks": (1, 12, 64, 64)}})
    report = thin_store(path, 0, variables=["refl"])
    assert report.thinned == ["refl"]
    out = xr.open_zarr(path)
    assert json.loads((path / ".zmetadata").read_text())["metadata"]["refl/.zarray"]["compressor"]["quality"] == 3
    assert [read_header((path / "refl" / f"{t}.0.0.0").read_bytes()).quality for t in (0, 1)] == [0, 0]
    assert metrics.psnr(cube[:2, :, :64, :64], out.refl.values) > 30
    # The archive's use: older dates thinned, a new date appended at the quality the array was created with
    # (before: thinning rewrote the config, and every later date was written at the thinned quality).
    xr.Dataset({"refl": (("time", "band", "y", "x"), cube[2:3, :, :64, :64])}).to_zarr(path, append_dim="time")
    assert read_header((path / "refl" / "2.0.0.0").read_bytes()).quality == 3
    assert metrics.psnr(cube[2, :, :64, :64], xr.open_zarr(path).refl.values[2]) > \
        metrics.psnr(cube[1, :, :64, :64], xr.open_zarr(path).refl.values[1]) + 5


@pytest.mark.parametrize("damage", ["nested", "no shape", "codecs a dict", "key encoding a string",
                                    "configuration a list"])
def test_damaged_metadata_is_the_packages_error(tmp_path, image, damage):
    path, _ = _store(tmp_path, image, 3)
    meta = json.loads((path / "zarr.json").read_text())
    edit = {
        "nested": lambda m: json.dumps(m).replace('"attributes": {', '"attributes": {"x": ' + "[" * 10**5 + "]" * 10**5
                                                  + ", ", 1),
        "no shape": lambda m: json.dumps({k: v for k, v in m.items() if k != "shape"}),
        "codecs a dict": lambda m: json.dumps(dict(m, codecs={"name": "tec_zarr.tec"})),
        "key encoding a string": lambda m: json.dumps(dict(m, chunk_key_encoding="default")),
        "configuration a list": lambda m: json.dumps(dict(m, codecs=[{"name": "tec_zarr.tec", "configuration": [1]}])),
    }[damage]
    (path / "zarr.json").write_text(edit(meta))
    with pytest.raises(InvalidInputError):
        thin_store(path, 0, variables=[""])  # named: refused even where the damage hides the codec


def test_arrays_not_thinned_may_use_codecs_not_installed(tmp_path, image):
    """Only the arrays thinned are read through zarr: a neighbour stored with a codec this machine lacks is left
    alone (the check of damaged metadata must not refuse the whole store)."""
    path, _ = _store(tmp_path, image, 2)
    other = path / "other"
    other.mkdir()
    (other / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [4], "chunks": [4], "dtype": "<u2", "compressor": {"id": "imagecodecs_nothere"},
        "fill_value": 0, "filters": None, "order": "C"}))
    report = thin_store(path, 1)
    assert report.thinned == [""]


def test_a_store_coded_to_a_psnr_target_thins_chunk_by_chunk(tmp_path, cube):
    """psnr= writes each chunk at the level that reaches the target, above the config's default level: thinning
    to a level between checks each chunk, not the config (before: refused as "stored at quality 2")."""
    xr = pytest.importorskip("xarray")
    import tec_zarr

    ds = xr.Dataset({"refl": (("time", "band", "y", "x"), cube[:2, :, :64, :64])})
    path = tmp_path / "psnr.zarr"
    ds.to_zarr(path, zarr_format=3, encoding=tec_zarr.zarr_encoding(ds, zarr_format=3, psnr=50, chunks={"time": 1}))
    chunks = sorted(p for p in (path / "refl" / "c").rglob("*") if p.is_file())
    levels = [read_header(p.read_bytes()).quality for p in chunks]
    assert max(levels) > 3  # above the config's default level 2
    report = thin_store(path, 3)
    assert report.thinned == ["refl"] and report.chunks == sum(q > 3 for q in levels)
    assert [read_header(p.read_bytes()).quality for p in chunks] == [min(q, 3) for q in levels]
    codec = json.loads((path / "refl" / "zarr.json").read_text())["codecs"][0]["configuration"]
    assert codec["psnr"] == 50  # later writes still meet the target


def test_thin_store_leaves_bounded_arrays_and_refuses_unknown_ones(tmp_path, image):
    path, data = _store(tmp_path, image, 2, max_error=10)
    report = thin_store(path, 0)
    assert report.thinned == [] and "max_error" in report.left[""]
    np.testing.assert_array_less(np.abs(zarr.open_array(str(path))[:].astype(int) - data), 11)
    with pytest.raises(InvalidInputError):
        thin_store(path, 0, variables=["nope"])
    with pytest.raises(InvalidInputError):
        thin_store(tmp_path / "missing.zarr", 0)


def _sharded(path, data, index_location="end", index_codecs=None):
    from zarr.codecs import ShardingCodec

    kwargs = {} if index_codecs is None else {"index_codecs": index_codecs}
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(2, 12, 64, 128), dtype="uint16", fill_value=0,
                            compressors=None, serializer=ShardingCodec(chunk_shape=(1, 12, 64, 64), codecs=[TEC3(quality=3)],
                                                                       index_location=index_location, **kwargs))
    arr[:] = data
    return arr


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_sharded_arrays_thin_shard_by_shard(tmp_path, cube, index_location):
    """Each shard is rebuilt from its inner chunks thinned, with a new index: zarr reads the same pixels as from an
    unsharded array of the same chunks thinned, edge shards and an empty inner chunk included; the inner codec config
    stays (later writes), and ``tec info`` shows the codec inside the shards."""
    from tec_zarr.cli.commands import info_text

    data = np.ascontiguousarray(cube[:3, :, :100, :150])
    data[2, :, :, 64:128] = 0  # two inner chunks all fill value: zarr leaves them empty in their shards
    _sharded(tmp_path / "s.zarr", data, index_location)
    plain = zarr.create_array(str(tmp_path / "p.zarr"), shape=data.shape, chunks=(1, 12, 64, 64), dtype="uint16",
                              fill_value=0, serializer=TEC3(quality=3), compressors=None)
    plain[:] = data
    assert "in shards (2, 12, 64, 128)" in info_text(str(tmp_path / "s.zarr"))
    report = thin_store(tmp_path / "s.zarr", 1)
    assert report.thinned == [""] and report.chunks == 3 * 2 * 3 - 2 and report.bytes_after < report.bytes_before / 2
    thin_store(tmp_path / "p.zarr", 1)
    back = zarr.open_array(str(tmp_path / "s.zarr"))
    np.testing.assert_array_equal(back[:], zarr.open_array(str(tmp_path / "p.zarr"))[:])
    assert 36 < metrics.mean_psnr(data, back[:]) < 40
    assert back.metadata.codecs[0].codecs[0].quality == 3  # the setting for later writes stays
    assert "quality 3" in info_text(str(tmp_path / "s.zarr"))
    stored = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"}
    again = thin_store(tmp_path / "s.zarr", 1)  # a rerun (after an interruption) rewrites no shard
    assert again.chunks == 0 and {p: p.read_bytes() for p in stored} == stored


def test_damaged_or_unreadable_shards(tmp_path, cube):
    """A shard whose index fails its CRC32C is refused naming the shard, and left as it was; shards whose index is
    coded otherwise than zarr's default are left with the way to thin them."""
    data = np.ascontiguousarray(cube[:2, :, :64, :128])
    _sharded(tmp_path / "s.zarr", data)
    (shard,) = [p for p in (tmp_path / "s.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    damaged = bytearray(shard.read_bytes())
    damaged[-10] ^= 1
    shard.write_bytes(bytes(damaged))
    with pytest.raises(CorruptChunkError, match="CRC32C") as caught:
        thin_store(tmp_path / "s.zarr", 1)
    assert str(shard) in " ".join(caught.value.__notes__)
    assert shard.read_bytes() == bytes(damaged)
    from zarr.codecs import BytesCodec

    shard.write_bytes(b"")  # zarr reads an empty shard as fill value: left, and the rest thinned
    assert thin_store(tmp_path / "s.zarr", 1).thinned == [""] and shard.read_bytes() == b""
    _sharded(tmp_path / "other.zarr", data, index_codecs=[BytesCodec()])
    report = thin_store(tmp_path / "other.zarr", 1)
    assert report.thinned == [] and "sharded, with a shard index coded with" in report.left[""]


def test_thin_tec_file(tmp_path, scene, original):
    import shutil

    from tec_zarr import tecfile

    source, levels = scene
    path = tmp_path / "scene.tec"
    shutil.copy(source, path)
    with tecfile.open(path) as f:
        old_uuid, quality = f.metadata.uuid, f.metadata.codec["quality"]
    report = thin_store(path, 0)
    assert report.chunks > 0 and report.bytes_after < report.bytes_before
    with tecfile.open(path) as f:
        assert f.metadata.uuid != old_uuid and f.metadata.codec["quality"] == 0 < quality
        after = f.read()
        assert f.read(level=2).shape == levels[2].shape
    assert after.shape == levels[0].shape
    assert 30 < metrics.psnr(original, after) < metrics.psnr(original, levels[0])
    stored = path.read_bytes()
    report = thin_store(path, 2)  # above the file's quality now: nothing to do, and said why
    assert not report.thinned and "stored at quality 0" in report.already[path.name] and path.read_bytes() == stored
    with pytest.raises(InvalidInputError, match="0..4. Got 5"):  # a level the model lacks is a mistake
        thin_store(path, 5)


@pytest.mark.parametrize("model, levels, tag, summed", [
    ("tec-fp", (2, 0), "", False), ("tec-fp", (2, 0), "channels-", False), ("tec-hp", (1,), "", False),
    ("tec-tt", (1,), "", False), ("tec-hp", (0,), "", True), ("tec-ctx", (1,), "", True),
    ("tec-tt", (2,), "summed-", True)])
def test_golden_thinned_chunks_decode(cube, model, levels, tag, summed, monkeypatch):
    """Stored thinned chunks decode to their stored pixels in every run (regenerated only with
    TEC_ZARR_REGENERATE_GOLDEN=1); the top chunk they came from thins to the same bytes where thinning is integer
    arithmetic alone (tec-fp: no network chooses side information). ``thinned-tec-fp-2-0`` was written before
    chunks marked their coded channels (flag bit 6): thinning now writes the same symbols, its channels marked.
    ``thinned-tec-hp-1`` was written before runs-summed payloads (extension tag 3) and codes the level's tables;
    ``thinned-tec-hp-0`` and ``thinned-tec-ctx-1`` are runs summed; ``thinned-summed-tec-tt-2`` too (written with
    the own-table payloads made to lose: on this small held-out tile tec-tt's own tables are shorter)."""
    from common import FIXTURES, REGENERATE

    d = FIXTURES / "tec_zarr.tec" / f"thinned-{tag}{model}-{'-'.join(map(str, levels))}"
    array = np.ascontiguousarray(cube[:2, :, :48, :40] if model == "tec-tt" else cube[1, :, :48, :40])
    if REGENERATE:
        d.mkdir(parents=True, exist_ok=True)
        top = encode_chunk(array, model=model, quality=4, nodata=0)
        if tag == "summed-":
            own_tables_lose(monkeypatch)
        thinned = top
        for q in levels:
            thinned = tec_zarr.thin(thinned, q)
        (d / "top.bin").write_bytes(top)
        (d / "encoded.00.dat").write_bytes(thinned)
        (d / "config.json").write_text(json.dumps(TEC(model=model, quality=levels[-1]).get_config(), indent=1,
                                                  sort_keys=True) + "\n")
        np.save(d / "decoded.00.npy", decode_chunk(thinned))
    stored = (d / "encoded.00.dat").read_bytes()
    header = read_header(stored)
    assert header.thinned_from == (4, *levels[:-1]) and header.quality == levels[-1]
    assert header.runs_summed == summed
    got = decode_chunk(stored, expected_shape=array.shape)
    assert metrics.max_error(got, np.load(d / "decoded.00.npy")) <= 1
    if model == "tec-fp":
        again = (d / "top.bin").read_bytes()
        for q in levels:
            again = tec_zarr.thin(again, q)
        if tag:
            assert header.channels is not None and again == stored
        else:
            assert header.channels is None and read_header(again).channels is not None
            assert replace(read_header(again), channels=None) == header
            np.testing.assert_array_equal(parse(again).symbols, parse(stored).symbols)


def test_cli_thin(tmp_path, image, capsys):
    from tec_zarr.cli import main

    path, data = _store(tmp_path, image, 3)
    assert main(["thin", str(path), "--quality", "0"]) == 0
    out = capsys.readouterr().out
    assert "thinned / to quality 0: 4 chunks rewritten" in out
    assert metrics.psnr(data, zarr.open_array(str(path))[:]) > 30
    assert main(["thin", str(tmp_path / "none.zarr"), "--quality", "0"]) == 2
    assert "tec: error: Expected a Zarr store" in capsys.readouterr().err
    # chunks already at or below the quality asked: nothing to do, no failure (a cron job over stores of mixed
    # quality); a level the model lacks is an error
    stored = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert main(["thin", str(path), "--quality", "1"]) == 0
    assert "nothing to thin in /: every chunk at or below quality 1 already" in capsys.readouterr().out
    assert main(["thin", str(path), "--quality", "4"]) == 0  # the config's own level: the chunks are looked at
    assert "nothing to thin in /: every chunk at or below quality 4 already" in capsys.readouterr().out
    assert main(["thin", str(path), "--quality", "7"]) == 2
    assert "Expected a quality level of model 'tec-fp', 0..4. Got 7 instead" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == stored


def test_run_tables_give_each_thinned_symbol_its_run_of_top_counts():
    from tec_zarr.entropy.factorized import run_tables
    from tec_zarr.models import load_model
    from tec_zarr.requantize import Thinning, forward

    model = load_model("tec-fp")
    tables = model.coder.tables
    for levels in ((4, 3), (4, 2, 0), (3, 1)):
        thinning = Thinning.of(model.gain, levels)
        derived = run_tables(tables, thinning)
        top = levels[0]
        for c in (0, 7, 100, 191):
            n = int(tables.lengths[top, c])
            s = tables.offsets[top, c] + np.arange(n - 1)
            t = forward(s.reshape(1, 1, 1, -1).repeat(192, axis=1), thinning.chain)[0, c, 0]
            m = int(derived.lengths[0, c])
            assert derived.pmf[0, c, :m].sum() == tables.pmf[top, c, :n].sum()  # 2**16, escape kept
            assert derived.pmf[0, c, m - 1] == tables.pmf[top, c, n - 1]
            for k in range(m - 1):
                value = derived.offsets[0, c] + k
                assert derived.pmf[0, c, k] == tables.pmf[top, c, : n - 1][t == value].sum() > 0


def test_thinned_factorized_payloads_name_their_tables(tile, top_chunks):
    thinned = tec_zarr.thin(top_chunks["tec-fp"], 1)
    sections = unpack_sections(thinned)
    assert sections.payload[0] in (0, 1)
    for bad in (b"\x02", b""):
        hostile = pack(sections.header, sections.mask, bad + sections.payload[1:len(sections.payload) if bad else 0])
        with pytest.raises(CorruptChunkError):
            decode_chunk(hostile)


def test_a_thinned_flag_without_its_levels_is_refused(top_chunks):
    import struct
    import zlib

    from tec_zarr.errors import BitstreamError

    data = bytearray(top_chunks["tec-fp"][:-4])
    data[5] |= 32
    body = bytes(data)
    with pytest.raises(BitstreamError):
        decode_chunk(body + struct.pack("<I", zlib.crc32(body)))


def test_thin_store_leaves_arrays_whose_chunks_are_compressed_after_the_codec(tmp_path, image):
    from zarr.codecs import ZstdCodec

    data = np.ascontiguousarray(image[:, :64, :64])
    path = tmp_path / "zstd.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("plain", shape=data.shape, chunks=data.shape, dtype="uint16",
                       serializer=TEC3(quality=3, model="tec-fp"), compressors=None)[:] = data
    group.create_array("zstd", shape=data.shape, chunks=data.shape, dtype="uint16",
                       serializer=TEC3(quality=3, model="tec-fp"), compressors=ZstdCodec())[:] = data
    report = thin_store(path, 1)
    assert report.thinned == ["plain"] and "zstd" in report.left["zstd"]
    assert read_header((path / "plain" / "c" / "0" / "0" / "0").read_bytes()).quality == 1


def test_thin_store_keeps_links_and_modes_and_clears_leftovers(tmp_path, image):
    import os
    import stat

    path, data = _store(tmp_path, image, 2)
    chunk_file = path / "0.0.0"
    elsewhere = tmp_path / "elsewhere.bin"
    chunk_file.rename(elsewhere)
    chunk_file.symlink_to(elsewhere)
    os.chmod(path / "0.0.1", 0o640)
    (path / "0.1.0.thin-0123abcd").write_bytes(b"half a chunk")  # an interrupted run's temporary
    (path / "notes.txt").write_text("not a chunk")
    thin_store(path, 1)
    assert chunk_file.is_symlink() and read_header(elsewhere.read_bytes()).quality == 1
    assert stat.S_IMODE((path / "0.0.1").stat().st_mode) == 0o640
    assert not (path / "0.1.0.thin-0123abcd").exists() and (path / "notes.txt").read_text() == "not a chunk"
    assert metrics.psnr(data, zarr.open_array(str(path))[:]) > 30


def test_a_store_an_older_version_left_half_thinned_is_finished(tmp_path, image):
    """Older versions wrote the new quality into the config before the chunks were done: at the config's own level
    the chunks are looked at, so a rerun finishes such a store."""
    path, _ = _store(tmp_path, image, 3)
    meta = json.loads((path / "zarr.json").read_text())
    meta["codecs"][0]["configuration"]["quality"] = 1  # as an interrupted older thin left it
    (path / "zarr.json").write_text(json.dumps(meta))
    chunks = sorted(p for p in (path / "c").rglob("*") if p.is_file())
    assert [read_header(p.read_bytes()).quality for p in chunks] == [4] * 4
    report = thin_store(path, 1)
    assert report.chunks == 4 and [read_header(p.read_bytes()).quality for p in chunks] == [1] * 4


def test_a_level_one_array_lacks_is_refused_before_any_array_is_thinned(tmp_path, image, monkeypatch):
    """Array a (tec-fp) could be thinned to 3; array b's model is made to have levels 0..2 only: refused, and a is
    left as it was (before: checked array by array, a was thinned first)."""
    import tec_zarr.models

    path = tmp_path / "two.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, model in (("a", "tec-fp"), ("b", "tec-hp")):
        arr = group.create_array(name, shape=(12, 64, 64), chunks=(12, 64, 64), dtype="uint16",
                                 serializer=TEC3(quality=4, model=model), compressors=None)
        arr[:] = image[:, :64, :64]
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    real = tec_zarr.models.get_card
    monkeypatch.setattr(tec_zarr.models, "get_card", lambda name: replace(real(name), qualities=real(name).qualities[:3])
                        if name == "tec-hp" else real(name))
    with pytest.raises(InvalidInputError, match="quality level of model 'tec-hp', 0..2. Got 3"):
        thin_store(path, 3)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_a_thinned_store_converts_to_a_tec_file_of_its_chunks_quality(tmp_path, image):
    """The config keeps the creation quality (later writes); a .tec made from the thinned store says the quality of
    its tiles and codes its overviews at it (before: quality 4 and overviews at 4 beside base tiles at 1)."""
    from tec_zarr import tecfile
    from tec_zarr.cli.commands import info_text
    from tec_zarr.gdal import convert

    path = tmp_path / "sq.zarr"
    arr = zarr.create_array(str(path), shape=(12, 128, 128), chunks=(12, 64, 64), dtype="uint16", fill_value=0,
                            serializer=TEC3(quality=4), compressors=None)
    arr[:] = image[:, :128, :128]
    thin_store(path, 1)
    assert "quality 4 for new writes" in info_text(str(path))
    meta = convert.zarr_to_tec(path, tmp_path / "sq.tec", overviews=(2,))
    assert meta.codec["quality"] == 1
    with tecfile.TecTiles(tmp_path / "sq.tec") as tiles:
        assert {read_header(tiles.read_tile(level, ty, tx)).quality for level in tiles.metadata.levels
                for ty in range(tiles.metadata.grid(level)[0]) for tx in range(tiles.metadata.grid(level)[1])} == {1}


def test_a_failing_chunk_leaves_the_metadata_as_it_was(tmp_path, cube):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"refl": (("time", "band", "y", "x"), cube[:2, :, :64, :64])})
    path = tmp_path / "cube.zarr"
    ds.to_zarr(path, zarr_format=2, consolidated=True,
               encoding={"refl": {"compressors": TEC(quality=3, model="tec-fp", psnr=40), "chunks": (1, 12, 64, 64)}})
    (path / "refl" / "1.0.0.0").write_bytes(b"TECZ" + bytes(60))  # damaged
    with pytest.raises(TecZarrError):
        thin_store(path, 1)
    own = json.loads((path / "refl" / ".zarray").read_text())["compressor"]
    consolidated = json.loads((path / ".zmetadata").read_text())["metadata"]["refl/.zarray"]["compressor"]
    assert own == consolidated and own["quality"] == 3 and own["psnr"] == 40
    assert read_header((path / "refl" / "0.0.0.0").read_bytes()).quality == 1


def test_thin_tec_refreshes_its_sidecar_and_leaves_a_thin_enough_file_alone(tmp_path, scene):
    import shutil

    from tec_zarr import tecfile
    from tec_zarr.gdal.vrt import write_sidecar

    path = tmp_path / "scene.tec"
    shutil.copy(scene[0], path)
    sidecar = write_sidecar(path)
    report = thin_store(path, 0)
    assert report.sidecar == sidecar
    with tecfile.open(path) as f:
        assert f.metadata.uuid in sidecar.read_text()
        uuid = f.metadata.uuid
    before = path.read_bytes()
    again = thin_store(path, 0)
    assert again.chunks == 0 and path.read_bytes() == before
    with tecfile.open(path) as f:
        assert f.metadata.uuid == uuid


def test_symbols_in_dropped_channels_are_refused(top_chunks):
    from tec_zarr.models import load_model

    model = load_model("tec-fp")
    dropped = np.flatnonzero(model.gain[0] <= 0)
    assert dropped.size  # the shipped tec-fp drops a channel at its lowest level
    thinned = tec_zarr.thin(top_chunks["tec-fp"], 0)
    sections = unpack_sections(thinned)
    symbols = parse(thinned).symbols.copy()
    symbols[0, dropped[0], 0, 0] = 5
    payload = bytes([0]) + model.coder.encode(None, symbols, 0)  # the level's own tables, a hostile symbol
    with pytest.raises(CorruptChunkError, match="drop"):  # every channel coded, the dropped one too
        decode_chunk(pack(replace(sections.header, channels=None), sections.mask, payload))


@pytest.mark.parametrize("name", ["tec-hp", "tec-ctx"])
def test_thinned_decode_runs_the_hyper_synthesis_once(name, top_chunks, monkeypatch):
    """The tables and the top level's centroids come from one run of the integer hyper-synthesis: at the top level
    for a runs-summed chunk, at its own level otherwise."""
    from tec_zarr.entropy.hyperprior import Hyperprior

    thinned = tec_zarr.thin(top_chunks[name], 1)
    expected = decode_chunk(thinned)
    calls = []
    original = Hyperprior.synthesize_channels_last

    def counted(self, *args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("quality"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Hyperprior, "synthesize_channels_last", counted)
    np.testing.assert_array_equal(decode_chunk(thinned), expected)
    assert calls == [4 if read_header(thinned).runs_summed else 1]


@pytest.mark.parametrize("name", ["tec-hp", "tec-ctx"])
def test_wide_runs_decode_to_a_centroid_inside_the_run(name, top_chunks):
    from tec_zarr.entropy.hyperprior import CENTROID_MIN_RUN
    from tec_zarr.requantize import LIMIT, Thinning

    parsed = parse(tec_zarr.thin(top_chunks[name], 0))
    thinning = Thinning.of(parsed.model.gain, (4, 0))
    lo = hi = parsed.symbols.astype(np.int64)
    for ratio in reversed(thinning.chain):
        lo, hi = runs(lo, ratio)[0].clip(-LIMIT, LIMIT), runs(hi, ratio)[1].clip(-LIMIT, LIMIT)
    values = parsed.thinned_values
    assert ((2 * lo <= values) & (values <= 2 * hi)).all()
    wide = hi - lo + 1 >= CENTROID_MIN_RUN
    assert wide.any() and (values[~wide] == (lo + hi)[~wide]).all()
    moved = wide & (parsed.symbols != 0)  # pulled towards the top level's mean, off the middle
    assert moved.any() and (values[moved] != (lo + hi)[moved]).mean() > 0.9


def test_runs_from_the_table_equal_the_runs_computed():
    """Chunks' symbols take their runs from a per-channel table of their span: the same integers as computed."""
    from tec_zarr.requantize import TABLE_SPAN, _runs

    rng = np.random.default_rng(3)
    ratio = rng.integers(0, 1 << RATIO_BITS, 6)
    ratio[2] = 0  # a dropped channel
    small = rng.integers(-300, 301, (2, 6, 40, 40))
    wide = small.copy()
    wide[0, 0, 0, 0] = 2**31 - 1  # an escape: the span is too wide for a table
    for symbols in (small, wide):
        assert symbols.size > TABLE_SPAN
        for got, expected in zip(runs(symbols, ratio), _runs(symbols, ratio)):
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, expected)


def test_run_summed_tables_count_each_run_of_first_level_symbols():
    """Each table of runsum.run_tables gives a thinned symbol the first level's counts summed over its run, shifted by
    the element's mean, the escape's count kept: 2**16 in all, every symbol of the range at least 1."""
    from tec_zarr.entropy.runsum import run_tables
    from tec_zarr.models import load_model
    from tec_zarr.requantize import Thinning, forward

    model = load_model("tec-hp")
    scales = model.coder.hyperprior.scales
    for levels in ((4, 3), (4, 2, 0)):
        thinning = Thinning.of(model.gain, levels)
        channel = np.array([0, 5, 5, 191, 0, 100])
        index = np.array([3, 40, 40, 80, 3, 103])
        mean = np.array([0, -7, 12, 3, 0, 250])
        tables, keys = run_tables(scales, thinning.chain, channel, index, mean)
        assert tables.count == 5 and keys[0] == keys[4]
        assert keys[[0, 1, 2, 5, 3]].tolist() == [0, 1, 2, 3, 4]  # numbered by ascending (channel, index, mean)
        for c, i, m, k in zip(channel, index, mean, keys):
            n = int(scales.lengths[i])
            s = scales.offsets[i] + m + np.arange(n - 1)
            grid = np.zeros((1, 192, 1, n - 1), np.int64)
            grid[0, c, 0] = s
            t = forward(grid, thinning.chain)[0, c, 0].astype(np.int64)
            row = tables.rows(np.array([k]), int(tables.lengths[k]) + 3)[0].astype(np.int64)
            assert (row[-3:] == 0).all()  # padded with 0 to the width asked
            row = row[:-3]
            assert tables.offsets[k] == t[0] and tables.lengths[k] == t[-1] - t[0] + 2
            expected = np.bincount(t - t[0], weights=scales.pmf[i, : n - 1]).astype(np.int64)
            np.testing.assert_array_equal(row[:-1], expected)
            assert row[-1] == scales.pmf[i, n - 1] and row.sum() == 1 << 16 and (row > 0).all()


# A level each model's thinned chunk of this tile codes runs summed at (the encoder keeps the shortest payload: on
# small chunks of data like the training data, tec-hp's own tables can win from its top level's larger z section).
SUMMED_LEVEL = {"tec-hp": 1, "tec-ctx": 3}


@pytest.fixture(scope="module")
def own_tables_thinned(tile, top_chunks):
    """Thinned chunks as this version wrote them before runs-summed payloads: the level's own tables."""
    from tec_zarr.entropy.hyperprior import HyperpriorCoder

    patch = pytest.MonkeyPatch()
    patch.setattr(HyperpriorCoder, "sums_runs", False)
    try:
        return {name: tec_zarr.thin(top_chunks[name], q) for name, q in SUMMED_LEVEL.items()}
    finally:
        patch.undo()


@pytest.mark.parametrize("name", ["tec-hp", "tec-ctx"])
def test_hyperprior_thinning_sums_runs_where_shorter(name, tile, top_chunks, own_tables_thinned):
    """Thinning codes the symbols under the top level's model, its z kept byte for byte: fewer bits than the
    level's own tables on this tile, the same symbols, and pixels at least as good."""
    from tec_zarr.bitstream.payload import split_z_section

    own = own_tables_thinned[name]
    summed = tec_zarr.thin(top_chunks[name], SUMMED_LEVEL[name])
    assert read_header(summed).runs_summed and not read_header(own).runs_summed
    assert len(summed) < len(own)
    np.testing.assert_array_equal(parse(summed).symbols, parse(own).symbols)
    assert metrics.psnr(tile, decode_chunk(summed)) > metrics.psnr(tile, decode_chunk(own)) - 0.05
    top_z = split_z_section(unpack_sections(top_chunks[name]).payload)[0]
    assert split_z_section(unpack_sections(summed).payload)[0] == top_z


@pytest.mark.parametrize("name", ["tec-hp", "tec-ctx"])
def test_thinning_again_keeps_or_chooses_the_first_level_z(name, tile, top_chunks, own_tables_thinned):
    """A runs-summed chunk thinned again keeps the top level's z; a chunk thinned with the level's tables (an older
    store) thinned again chooses a top-level z from the estimate. Both decode to the same symbols as one step."""
    from tec_zarr.bitstream.payload import split_z_section

    first = SUMMED_LEVEL[name]
    once = tec_zarr.thin(top_chunks[name], first)
    assert read_header(once).runs_summed
    results = []
    for source in (once, own_tables_thinned[name]):
        twice = tec_zarr.thin(source, first - 1)
        header = read_header(twice)
        assert header.thinned_from == (4, first) and header.runs_summed
        results.append(twice)
        assert metrics.psnr(tile, decode_chunk(twice)) > 30
    np.testing.assert_array_equal(parse(results[0]).symbols, parse(results[1]).symbols)
    top_z = split_z_section(unpack_sections(top_chunks[name]).payload)[0]
    assert split_z_section(unpack_sections(results[0]).payload)[0] == top_z
    assert split_z_section(unpack_sections(results[1]).payload)[0] != top_z  # chosen again from the estimate


def _with_crc(buf: bytes) -> bytes:
    import zlib

    body = buf[:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_runs_summed_marks_are_checked(tile, top_chunks, cube):
    from tec_zarr.bitstream.chunk import _flag

    summed = tec_zarr.thin(top_chunks["tec-ctx"], 2)
    sections = unpack_sections(summed)
    assert sections.header.runs_summed
    field = bytes([3]) + (1).to_bytes(4, "little") + b"\x01"
    assert summed.count(field) == 1
    with pytest.raises(CorruptChunkError, match="runs-summed"):
        decode_chunk(_with_crc(summed.replace(field, field[:-1] + b"\x02")))
    with pytest.raises(CorruptChunkError, match="runs-summed"):
        _flag(b"\x01", "runs-summed", False, "a thinned chunk")  # on a chunk that is not thinned
    with pytest.raises(ValueError):
        pack(replace(read_header(top_chunks["tec-hp"]), runs_summed=True), None, b"")
    # The mark on a coder that never writes it: a factorized chunk names its tables in its payload.
    fp = unpack_sections(tec_zarr.thin(top_chunks["tec-fp"], 2))
    with pytest.raises(CorruptChunkError, match="runs summed"):
        decode_chunk(pack(replace(fp.header, runs_summed=True), fp.mask, fp.payload))
    # The mark taken off a runs-summed chunk: its z is the top level's, read at the wrong level or refused.
    plain = pack(replace(sections.header, runs_summed=False), sections.mask, sections.payload)
    try:
        got = decode_chunk(plain)
    except CorruptChunkError:
        pass
    else:
        assert metrics.psnr(tile, got) < metrics.psnr(tile, decode_chunk(summed))


def test_too_many_run_tables_fall_back_and_are_refused(top_chunks, monkeypatch):
    """A chunk needing more tables than a decoder builds is thinned with the level's own tables; a runs-summed
    chunk needing them (hostile side information) is refused, not built."""
    from tec_zarr.entropy import runsum

    summed = tec_zarr.thin(top_chunks["tec-ctx"], 2)
    assert read_header(summed).runs_summed
    symbols = parse(summed).symbols
    monkeypatch.setattr(runsum, "MAX_KEYS", 8)
    own = tec_zarr.thin(top_chunks["tec-ctx"], 2)
    assert not read_header(own).runs_summed
    np.testing.assert_array_equal(parse(own).symbols, symbols)
    with pytest.raises(CorruptChunkError, match="runs-summed"):
        decode_chunk(summed)
    monkeypatch.setattr(runsum, "MAX_KEYS", 1 << 17)
    monkeypatch.setattr(runsum, "MAX_ENTRIES", 64)
    with pytest.raises(CorruptChunkError, match="entries"):
        decode_chunk(summed)


def test_run_summed_symbols_round_trip_through_width_classes():
    """runsum.write / read: symbols of tables of every width class, escapes on both sides of a table among them, in
    one stream with other data after them; a symbol decoded into a table's zero padding is refused."""
    import constriction

    from tec_zarr.entropy import runsum
    from tec_zarr.entropy.rangecoder import PayloadBudget, range_decoder

    rng = np.random.default_rng(5)
    lengths = np.array([2, 3, 5, 9, 17, 40, 300, 1000])
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    counts = np.concatenate([np.full(n, 1 << 16) // n + np.eye(1, n, 0, np.int64)[0] * ((1 << 16) % n)
                             for n in lengths])
    tables = runsum.RunTables(rng.integers(-50, 50, lengths.size), lengths, starts, counts)
    keys = rng.integers(0, lengths.size, (3, 50))
    values = tables.offsets[keys] + (rng.random(keys.shape) * (lengths[keys] - 1)).astype(np.int64)
    values[0, :4] = tables.offsets[keys[0, :4]] - np.array([1, 7, 100, 5000])  # escapes below
    values[1, :3] = tables.offsets[keys[1, :3]] + lengths[keys[1, :3]] + np.array([0, 3, 70000])  # and above
    assert [w for w, _ in runsum.width_classes(keys.ravel(), tables)] == sorted({max(4, 1 << int(np.ceil(np.log2(n))))
                                                                               for n in lengths[np.unique(keys)]})
    encoder = constriction.stream.queue.RangeEncoder()
    runsum.write(encoder, values, keys, tables)
    encoder.encode(np.array([3], np.int32), constriction.stream.model.Uniform(10))
    data = encoder.get_compressed().tobytes()
    decoder = range_decoder(data, "test")
    np.testing.assert_array_equal(runsum.read(decoder, keys, tables, PayloadBudget(len(data), "test")), values)
    assert decoder.decode(constriction.stream.model.Uniform(10), 1)[0] == 3
    # A table of 2 symbols and its escape in a class of width 4: a stream of the padded symbol is refused.
    one = np.zeros((1, 1), np.int64)
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(np.array([3], np.int32), constriction.stream.model.Categorical(perfect=False),
                   tables.rows(one.ravel(), 4))
    data = encoder.get_compressed().tobytes()
    with pytest.raises(CorruptChunkError, match="padding|past"):
        runsum.read(range_decoder(data, "test"), one, tables, PayloadBudget(len(data), "test"))


def test_run_tables_built_in_pieces_equal_one_build(top_chunks, monkeypatch):
    """Building tables a few keys at a time (bounded memory) gives the same tables; width classes come from integer
    bit lengths."""
    from tec_zarr.entropy import runsum
    from tec_zarr.entropy.hyperprior import read_z
    from tec_zarr.requantize import Thinning

    parsed = parse(top_chunks["tec-hp"])
    hp = parsed.model.coder.hyperprior
    z, _ = read_z(hp, unpack_sections(top_chunks["tec-hp"]).payload, 4, parsed.symbols.shape)
    index, mean = hp.parameters(z, 4)
    thinning = Thinning.of(parsed.model.gain, (4, 2, 0))
    whole, keys = runsum.run_tables(hp.scales, thinning.chain, runsum.channel_grid(index.shape), index, mean)
    monkeypatch.setattr(runsum, "PIECE_ENTRIES", 50)
    pieces, again = runsum.run_tables(hp.scales, thinning.chain, runsum.channel_grid(index.shape), index, mean)
    assert whole.count > 100
    np.testing.assert_array_equal(keys, again)
    for name in ("offsets", "lengths", "starts", "counts"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(pieces, name))
    values = np.array([0, 1, 2, 3, 4, 7, 8, 9, 1023, 1024, 1025, 2**40])
    assert runsum.bit_length(values).tolist() == [int(v).bit_length() for v in values]


def test_shard_index_round_trip_and_hostile_offsets():
    """join then split gives the chunks back (empty ones as None), for both index locations; an index whose CRC
    holds but whose offsets leave the shard's chunk bytes is refused."""
    import struct

    from tec_zarr import shards

    chunks = [b"abc", None, b"xy", b"defgh"]
    for at_start in (False, True):
        layout = shards.ShardLayout(4, at_start)
        data = shards.join(chunks, layout, [3, 0, 2])  # zarr lays chunks out in Morton order, not index order
        shard = shards.split(data, layout)
        assert shard.chunks == chunks and shard.stored_order == [3, 0, 2] and len(data) == 10 + 16 * 4 + 4
        assert shards.join(shard.chunks, layout, shard.stored_order) == data
        assert (data.index(b"defgh") < data.index(b"abc")) and shards.split(
            shards.join([b"", None, b"xy", None], layout), layout).chunks == [None, None, b"xy", None]  # as zarr
    layout = shards.ShardLayout(1, False)
    for offset, nbytes in ((0, 9), (5, 1), (2**63, 2**63)):
        body = struct.pack("<2Q", offset, nbytes)
        with pytest.raises(CorruptChunkError, match="within the shard"):
            shards.split(b"abcd" + body + shards._crc32c(body), layout)
    with pytest.raises(CorruptChunkError, match="at least its"):
        shards.split(b"abc", layout)
