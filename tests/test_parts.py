"""Chunks too large to code whole in bounded memory are coded in parts (tec_zarr/bitstream/parts.py): each part an
ordinary chunk coded alone, decoded one at a time. The tests shrink the part limits so that small chunks take the
same paths as a whole Sentinel-2 tile would."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import xarray as xr

import tec_zarr
from tec_zarr import TEC, pipeline
from tec_zarr.bitstream import chunk as bitstream
from tec_zarr.bitstream.parts import PARTS_FORMAT_VERSION, PartsLayout, is_parts, pack_parts, unpack_parts
from tec_zarr.errors import BitstreamError, ChunkShapeError, CorruptChunkError, InvalidInputError, TruncatedChunkError
from tec_zarr.pipeline import encode as encode_module
from tec_zarr.pipeline.thin import thin_chunk

from common import check_golden

SIDE = 64  # the shrunk part side: chunks above it along H or W are coded in parts


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(encode_module, "PART_SIDE", SIDE)
    monkeypatch.setattr(encode_module, "PART_ELEMENTS", 12 * SIDE * SIDE)


@pytest.fixture(scope="module")
def big(image) -> np.ndarray:
    """150 x 100: over the shrunk side along both axes, with partial parts at the bottom and right."""
    return np.ascontiguousarray(image[:, :150, :100])


def alone(a: np.ndarray, **kwargs) -> bytes:
    return pipeline.encode_chunk(np.ascontiguousarray(a), model=kwargs.pop("model", "tec-fp"),
                                 quality=kwargs.pop("quality", 2), **kwargs)


def test_chunks_within_the_limits_are_coded_whole(image):
    """The sizes users store keep the bytes every earlier version wrote: no framing, one chunk."""
    for shape in ((12, 264, 264), (4, 12, 256, 256)):
        a = np.ascontiguousarray(np.broadcast_to(image[:, : shape[-2], : shape[-1]], shape))
        assert encode_module.parts_layout(a) is None
    assert encode_module.parts_layout(np.zeros((1, 12, 1025, 16), np.uint16)) is not None
    assert encode_module.parts_layout(np.zeros((5, 12, 1024, 1024), np.uint16)).part == (1, 1024, 1024)
    # about equal parts, multiples of 16 but the last: 2300 -> 768, 768, 764
    assert encode_module.parts_layout(np.zeros((12, 2300, 1000), np.uint16)).part == (1, 768, 1000)


def test_each_part_is_the_chunk_of_its_pixels(small_parts, big):
    data = alone(big)
    assert is_parts(data)
    layout, parts = unpack_parts(data)
    assert layout.shape == big.shape and layout.part == (1, 64, 64) and layout.count == 3 * 2
    # 150 rows: 3 parts of 50 rounded up to 64 (64, 64, 22); 100 columns: 2 of 50 -> 64 (64, 36)
    assert [s[2:] for s in layout.part_shapes()] == [(64, 64), (64, 36)] * 2 + [(22, 64), (22, 36)]
    decoded = pipeline.decode_chunk(data, expected_shape=big.shape)
    images = big.reshape(layout.images)
    for (sb, sy, sx), part in zip(layout.slices(), parts):
        assert bytes(part) == alone(images[sb, :, sy, sx])
        np.testing.assert_array_equal(decoded.reshape(layout.images)[sb, :, sy, sx],
                                      pipeline.decode_chunk(bytes(part)))
    assert tec_zarr.metrics.psnr(big, decoded) > 40


def test_batch_is_cut_into_groups_of_dates_in_order(small_parts, cube):
    """(T, 12, H, W) chunks: as many dates per part as the element limit holds, earliest first, so tec-tt codes
    each date against the one before within a part."""
    seq = np.ascontiguousarray(cube[:, :, :32, :40])  # 4 dates of 32 x 40: 3 fit in 12 x 64 x 64 elements
    data = alone(seq, model="tec-tt")
    layout, parts = unpack_parts(data)
    assert layout.part == (3, 32, 40) and [s[0] for s in layout.part_shapes()] == [3, 1]
    assert bytes(parts[0]) == alone(seq[:3], model="tec-tt") and bytes(parts[1]) == alone(seq[3:], model="tec-tt")
    decoded = pipeline.decode_chunk(data)
    np.testing.assert_array_equal(decoded[:3], pipeline.decode_chunk(alone(seq[:3], model="tec-tt")))
    assert decoded.shape == seq.shape


@pytest.mark.parametrize("kwargs", [{"max_error": 0}, {"max_error": 20}, {"nodata": 0}, {"psnr": 42.0}])
def test_every_mode_works_per_part(small_parts, big, kwargs):
    a = big.copy()
    a[:, 100:, 70:] = 0  # nodata over parts of two parts
    data = alone(a, **kwargs)
    assert is_parts(data)
    decoded = pipeline.decode_chunk(data)
    if "max_error" in kwargs:
        assert np.abs(decoded.astype(int) - a).max() <= kwargs["max_error"]
    if "nodata" in kwargs:
        assert ((decoded == 0) == (a == 0)).all()


def test_int16_with_several_leading_axes(small_parts, cube):
    a = np.ascontiguousarray(cube[:3, :, :40, :70].astype(np.int16).reshape(3, 1, 12, 40, 70))
    data = alone(a, max_error=3)
    layout, parts = unpack_parts(data)
    assert layout.shape == a.shape and layout.images == (3, 12, 40, 70) and layout.part == (2, 40, 48)
    decoded = pipeline.decode_chunk(data)
    assert decoded.shape == a.shape and decoded.dtype == np.int16
    assert np.abs(decoded.astype(int) - a).max() <= 3


def test_chunks_decoders_would_refuse_are_not_written(small_parts, big, monkeypatch):
    monkeypatch.setattr(encode_module, "MAX_ELEMENTS", big.size - 1)
    with pytest.raises(InvalidInputError, match="at most"):
        alone(big)


def test_a_missed_psnr_target_warns_once_per_chunk_at_the_caller(small_parts, big):
    with pytest.warns(tec_zarr.PsnrTargetWarning) as caught:
        TEC(psnr=99.0).encode(big)
    assert len(caught) == 1 and "6 of 6 parts" in str(caught[0].message)
    assert caught[0].filename == __file__
    with pytest.warns(tec_zarr.PsnrTargetWarning) as caught:
        TEC(psnr=99.0).encode(np.ascontiguousarray(big[:, :32, :32]))
    assert len(caught) == 1 and caught[0].filename == __file__


def test_float32_nan_in_parts(small_parts, big):
    a = big.astype(np.float32) / 1e4
    a[:, :10, :] = np.nan
    decoded = pipeline.decode_chunk(alone(a))
    assert np.array_equal(np.isnan(decoded), np.isnan(a))


def test_size_is_checked_before_any_part_is_decoded(small_parts, big, monkeypatch):
    data = alone(big)
    decoded_parts = []
    real = pipeline.decode._decode_whole
    monkeypatch.setattr(pipeline.decode, "_decode_whole", lambda *a, **k: decoded_parts.append(len(a[0])) or real(*a, **k))
    with pytest.raises(ChunkShapeError):
        pipeline.decode_chunk(data, expected_shape=(12, 150, 99))
    with pytest.raises(ChunkShapeError):
        pipeline.decode_chunk(data, expected_nbytes=big.nbytes // 2)
    assert decoded_parts == []
    monkeypatch.setenv("TEC_ZARR_MAX_CHUNK_ELEMENTS", str(big.size - 1))
    with pytest.raises(ChunkShapeError):
        pipeline.decode_chunk(data)
    assert decoded_parts == []
    monkeypatch.delenv("TEC_ZARR_MAX_CHUNK_ELEMENTS")
    pipeline.decode_chunk(data)
    assert decoded_parts == [1] * 6  # one part at a time: memory of one part, not of the chunk


def test_decode_chunks_mixes_whole_chunks_and_chunks_in_parts(small_parts, big, image):
    small = np.ascontiguousarray(image[:, :32, :32])
    buffers = [alone(small), alone(big), alone(small, quality=1)]
    got = pipeline.decode_chunks(buffers)
    for buf, g in zip(buffers, got):
        np.testing.assert_array_equal(g, pipeline.decode_chunk(buf))


def test_thinning_works_part_by_part(small_parts, big):
    data = alone(big, model="tec-hp", quality=3)
    thinned = thin_chunk(data, 1)
    assert is_parts(thinned) and len(thinned) < len(data)
    assert pipeline.read_header(thinned).quality == 1 and pipeline.read_header(thinned).shape == big.shape
    layout, parts = unpack_parts(thinned)
    assert all(bitstream.unpack(p)[0].thinned_from == (3,) for p in parts)
    for (sb, sy, sx), part in zip(layout.slices(), parts):
        assert bytes(part) == thin_chunk(alone(big.reshape(layout.images)[sb, :, sy, sx], model="tec-hp", quality=3),
                                         1)
    assert thin_chunk(thinned, 1) == thinned
    with pytest.raises(InvalidInputError):
        thin_chunk(thinned, 2)


def test_readers_before_parts_refuse_them(small_parts, big):
    """A reader of the plain chunk format meets version 5 and says it was written by a newer tec_zarr."""
    with pytest.raises(CorruptChunkError, match="newer tec_zarr"):
        bitstream.unpack(alone(big))


def test_zarr_stores_in_both_formats_and_their_thinning(small_parts, cube, tmp_path):
    from tec_zarr.cli.commands import info_text
    from tec_zarr.thinning import thin_store

    a = np.ascontiguousarray(cube[:2, :, :130, :90])
    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), a)})
    for fmt in (2, 3):
        path = tmp_path / f"s{fmt}.zarr"
        ds.to_zarr(path, zarr_format=fmt, encoding=tec_zarr.zarr_encoding(
            ds, zarr_format=fmt, chunks={"time": 1, "y": 130, "x": 90}))
        back = xr.open_zarr(path)["reflectance"].values
        assert back.shape == a.shape and tec_zarr.metrics.psnr(a, back) > 40
        text = info_text(str(path))  # tec info says how the chunks were cut: 130 = 48 + 48 + 34 rows, 90 = 48 + 42
        assert "each chunk coded in 6 parts of up to 1 x 48 x 48" in text, text
        report = thin_store(path, 1)
        assert report.chunks == 2 and report.bytes_after < report.bytes_before
        thinned = xr.open_zarr(path)["reflectance"].values
        assert 35 < tec_zarr.metrics.psnr(a, thinned) < tec_zarr.metrics.psnr(a, back)


# -- hostile chunks in parts ------------------------------------------------------------------------------------------


def framed(shape, part, parts, *, dtype_code=1, count=None, lengths=None, crc=None) -> bytes:
    """A version-5 chunk of ``parts`` (bytes), its fields overridable; the CRC as writers compute it unless given."""
    lengths = [len(p) for p in parts] if lengths is None else lengths
    head = (struct.pack("<4sBBB", b"TECZ", PARTS_FORMAT_VERSION, dtype_code, len(shape)) + struct.pack(
        f"<{len(shape)}I", *shape) + struct.pack("<IIII", *part, len(lengths) if count is None else count)
            + b"".join(struct.pack("<I", n) for n in lengths))
    if crc is None:
        crc = zlib.crc32(head)
        for p in parts:
            crc = zlib.crc32(p[-4:], crc)
    return head + struct.pack("<I", crc) + b"".join(parts)


@pytest.fixture(scope="module")
def two_parts(image) -> tuple[bytes, bytes]:
    return alone(image[None, :, :16, :32]), alone(image[None, :, :16, :16])  # parts are (batch, bands, H, W)


def hostile_cases(two_parts, image):
    a, b = two_parts
    good = framed((12, 16, 48), (1, 16, 32), [a, b])
    yield "valid", good, None
    yield "truncated", good[:-5], BitstreamError
    yield "framing cut short", good[:20], TruncatedChunkError
    yield "framing CRC", framed((12, 16, 48), (1, 16, 32), [a, b], crc=1), CorruptChunkError
    yield "count past the buffer", framed((12, 16, 48), (1, 16, 32), [], count=2**30), TruncatedChunkError
    yield "wrong count", framed((12, 16, 48), (1, 16, 16), [a, b]), CorruptChunkError
    yield "lengths short", framed((12, 16, 48), (1, 16, 32), [a, b], lengths=[len(a), len(b) - 1]), CorruptChunkError
    yield "empty part", framed((12, 16, 32), (1, 16, 16), [a + b, b""]), CorruptChunkError
    yield "parts swapped", framed((12, 16, 48), (1, 16, 32), [b, a]), ChunkShapeError
    yield "dtype", framed((12, 16, 48), (1, 16, 32), [a, b], dtype_code=3), ChunkShapeError
    yield "unknown dtype", framed((12, 16, 48), (1, 16, 32), [a, b], dtype_code=9), CorruptChunkError
    yield "zero part size", framed((12, 16, 48), (1, 0, 32), [a, b]), CorruptChunkError
    yield "two axes", framed((16, 48), (1, 16, 32), [a, b]), CorruptChunkError
    yield "more axes than numpy has", framed((1,) * 67 + (12, 16, 48), (1, 16, 32), [a, b]), CorruptChunkError
    yield "huge shape", framed((2**20, 12, 2**16, 2**16), (1, 16, 32), [a]), CorruptChunkError
    nested = framed((12, 16, 32), (1, 16, 32), [a])
    yield "nested", framed((12, 16, 64), (1, 16, 32), [nested, a]), CorruptChunkError
    yield "part damaged", good[:-3] + bytes([good[-3] ^ 1]) + good[-2:], CorruptChunkError
    # two parts of one shape and length, in each other's place: the framing's CRC covers the parts' CRCs
    c, d = (alone(np.full((1, 12, 16, 16), v, np.uint16), nodata=None) for v in (1000, 1001))
    assert len(c) == len(d) and c != d
    moved = framed((12, 16, 32), (1, 16, 16), [c, d])
    head = len(moved) - len(c) - len(d)
    yield "parts moved", moved[:head] + d + c, CorruptChunkError


def test_hostile_chunks_in_parts_are_refused(two_parts, image):
    for name, buf, error in hostile_cases(two_parts, image):
        if error is None:
            pipeline.decode_chunk(buf)
            continue
        with pytest.raises(error):
            pipeline.decode_chunk(buf)
        with pytest.raises((error, InvalidInputError)):  # thinning and headers read them the same way
            thin_chunk(buf, 0)
        with pytest.raises(error):
            pipeline.read_header(buf)


def test_pack_parts_checks_the_count():
    with pytest.raises(ValueError):
        pack_parts(PartsLayout((12, 16, 48), np.dtype("uint16"), (1, 16, 32)), [b"x"])


def test_golden_chunks_in_parts(small_parts, image, cube):
    """Chunks in parts decode the same in every run (regenerated only with TEC_ZARR_REGENERATE_GOLDEN=1)."""
    check_golden(TEC(model="tec-fp"), [np.ascontiguousarray(image[:, :80, :70])], "parts-tec-fp")
    check_golden(TEC(model="tec-tt", nodata=None), [np.ascontiguousarray(cube[:, :, :40, :40])], "parts-tec-tt")


def test_a_store_in_parts_converts_to_a_tec_file(small_parts, image, tmp_path):
    """zarr_to_tec copies chunk bytes: chunks in parts become .tec tiles that decode the same."""
    from tec_zarr import tecfile
    from tec_zarr.gdal import convert

    a = np.ascontiguousarray(image[:, :160, :160])
    ds = xr.Dataset({"reflectance": (("band", "y", "x"), a)})
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False,
               encoding=tec_zarr.zarr_encoding(ds, zarr_format=3, chunks={"y": 80, "x": 80}))
    from_zarr = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)["reflectance"].values
    stored = [p for p in (tmp_path / "s.zarr" / "reflectance").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(stored) == 4 and all(is_parts(p.read_bytes()) for p in stored)
    convert.zarr_to_tec(tmp_path / "s.zarr", tmp_path / "s.tec")
    with tecfile.open(tmp_path / "s.tec") as f:
        np.testing.assert_array_equal(f.read(), from_zarr)
