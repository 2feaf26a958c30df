"""Guaranteed quality: max_error (lossless at 0), psnr targets, and the integer synthesis they rest on."""

from __future__ import annotations

import dataclasses
import struct
import warnings
import zlib

import numcodecs
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import check_config, check_repr
from tec_zarr import TEC, bitstream, bounded, chunk, entropy, metrics, residual, residual_v2, synthesis
from tec_zarr.errors import BitstreamError, CorruptChunkError, InvalidInputError
from tec_zarr.models import load_model
from tec_zarr.zarr3 import TEC as TEC3

MODEL = load_model("tec-fp")
FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def roundtrip(a: np.ndarray, **kwargs) -> np.ndarray:
    dec = chunk.decode_chunk(chunk.encode_chunk(a, model=MODEL, quality=kwargs.pop("quality", 2), **kwargs))
    assert dec.dtype == a.dtype and dec.shape == a.shape
    return dec


def assert_bound(a: np.ndarray, dec: np.ndarray, max_error: float) -> None:
    if max_error == 0:
        np.testing.assert_array_equal(dec.view(f"u{a.itemsize}"), a.view(f"u{a.itemsize}"))  # bit-exact
    else:
        assert np.abs(dec.astype(np.float64) - a.astype(np.float64)).max() <= max_error


def symbols_of(a: np.ndarray, quality: int) -> np.ndarray:
    enc = chunk.encode_chunk(a, model=MODEL, quality=quality, nodata=None)
    header, _, payload = bitstream.unpack(enc)
    return enc, entropy.decode(payload, quality, (header.batch,) + header.latent, MODEL.tables)


# The integer synthesis: close to the float network, and exact whatever the summation order.

@pytest.mark.parametrize("quality", [0, 4])
def test_integer_synthesis_close_to_onnx(image, quality):
    a = np.ascontiguousarray(image[:, :128, :128])
    enc, symbols = symbols_of(a, quality)
    base = np.clip(synthesis.load(MODEL)(symbols, quality)[0], 0, 65535)
    onnx = chunk.decode_chunk(enc)
    # Measured on the shipped model: identical PSNR to 0.001 dB, at most 1 DN apart.
    assert abs(metrics.psnr(a, base) - metrics.psnr(a, onnx)) < 0.02
    assert np.abs(base - onnx.astype(np.int64)).max() <= 2


def _shuffled_matmul(seed: int):
    """A matmul summing in another order: a permuted inner axis, in uneven blocks, accumulated backwards."""
    rng = np.random.default_rng(seed)

    def matmul(x, w):
        perm = rng.permutation(x.shape[1])
        cuts = np.sort(rng.choice(np.arange(1, x.shape[1]), size=min(3, x.shape[1] - 1), replace=False))
        parts = [x[:, p] @ w[p] for p in np.split(perm, cuts)]
        out = np.zeros((x.shape[0], w.shape[1]))
        for part in reversed(parts):
            out += part
        return out

    return matmul


def test_integer_synthesis_is_order_independent(cube):
    a = np.ascontiguousarray(cube[:2, :, :40, :72])
    _, symbols = symbols_of(a, 3)
    syn = synthesis.load(MODEL)
    expected = syn(symbols, 3)
    np.testing.assert_array_equal(syn(symbols, 3, rows_per_block=3), expected)
    np.testing.assert_array_equal(syn(symbols, 3, matmul=_shuffled_matmul(0)), expected)
    np.testing.assert_array_equal(np.concatenate([syn(symbols[1:], 3), syn(symbols[:1], 3)])[[1, 0]], expected)


def test_integer_synthesis_bounds_hold_for_any_symbols():
    syn = synthesis.load(MODEL)
    huge = np.full((1, MODEL.tables.channels, 2, 3), np.iinfo(np.int32).max, np.int32)
    huge[:, ::2] = np.iinfo(np.int32).min
    np.testing.assert_array_equal(syn(huge, 4), syn(huge, 4, matmul=_shuffled_matmul(1)))


# The bound, on random and real data, every dtype, odd sizes, nodata and saturated values.

@FAST
@given(
    dtype=st.sampled_from(["uint16", "int16", "float32"]),
    max_error=st.sampled_from([0, 1, 2, 5, 37]),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    nodata=st.sampled_from([None, 0, 7]),
    seed=st.integers(0, 2**16),
)
def test_bound_on_random_data(dtype, max_error, h, w, nodata, seed):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = (rng.random((12, h, w)) * rng.choice([1.0, 1e-3, 100.0])).astype(np.float32)
        if nodata != 0:  # -0.0 equals a nodata of 0 and reads back as 0.0 (see test_lossless_every_dtype_real_data)
            a.flat[:: max(1, a.size // 7)] = -0.0
        bound = max_error * 1e-4  # reflectance units
    else:
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, (12, h, w), endpoint=True).astype(dt)
        a.flat[::5] = info.max
        a.flat[1::5] = info.min
        bound = max_error
    if nodata is not None:
        a.flat[3::11] = nodata
    dec = roundtrip(a, max_error=bound, nodata=nodata)
    assert_bound(a, dec, bound)
    if nodata is not None:
        np.testing.assert_array_equal(dec == nodata, a == nodata)


@FAST
@given(max_error=st.sampled_from([0, 1, 3, 10, 100]), quality=st.integers(0, 4),
       t=st.integers(0, 3), y=st.integers(0, 200), x=st.integers(0, 200), h=st.integers(5, 64), w=st.integers(5, 64))
def test_bound_on_real_sentinel2(cube, max_error, quality, t, y, x, h, w):
    a = np.ascontiguousarray(cube[t, :, y : y + h, x : x + w])  # edge chunks too: the crop may end at the border
    a[:, :2, :3] = 0  # nodata
    a[4, -1, -1] = 65535  # saturated
    assert_bound(a, roundtrip(a, max_error=max_error, quality=quality), max_error)


def test_lossless_every_dtype_real_data(cube):
    a = np.ascontiguousarray(cube[:2, :, :37, :53])
    np.testing.assert_array_equal(roundtrip(a, max_error=0), a)
    signed = (a.astype(np.int32) - 3000).clip(-32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(roundtrip(signed, max_error=0, nodata=None), signed)
    refl = (a / 1e4).astype(np.float32)
    refl[0, 0, 0, 1] = -0.0
    refl[0, 1, 0, 0] = np.float32(1e-42)  # subnormal
    assert_bound(refl, roundtrip(refl, max_error=0, nodata=None), 0)
    # With nodata 0, -0.0 equals nodata and reads back as nodata (0.0): equal, though not the same bits.
    dec = roundtrip(refl, max_error=0)
    assert dec[0, 0, 0, 1] == 0 and np.array_equal(dec, refl)


def test_float32_bound_in_data_units(cube):
    refl = np.ascontiguousarray(cube[1, :, :48, :48] / 1e4).astype(np.float32)
    for bound in (1e-4, 2.5e-3):
        dec = roundtrip(refl, max_error=bound)
        assert_bound(refl, dec, bound)
    dn = np.ascontiguousarray(cube[1, :, :48, :48]).astype(np.float32)
    assert_bound(dn, roundtrip(dn, max_error=2.0, float_scale=1.0), 2.0)
    # A bound below float32's resolution at these values: still kept, by coding the chunk exactly.
    big = dn + np.float32(1e6)
    assert_bound(big, roundtrip(big, max_error=1e-6, float_scale=1.0, nodata=None), 1e-6)


def test_rate_falls_as_the_bound_grows(image):
    a = np.ascontiguousarray(image[:, :96, :96])
    sizes = [len(chunk.encode_chunk(a, model=MODEL, quality=2, max_error=e)) for e in (0, 1, 5, 25, 100)]
    assert sizes == sorted(sizes, reverse=True)


def test_residual_tables_are_exact_integers():
    for k in range(len(residual.THETAS)):
        t = residual.table(k)
        assert t.dtype == np.int64 and t.sum() == 1 << residual.PRECISION_BITS and (t > 0).all()
    assert residual.table(0)[0] > residual.table(0)[1] and residual.table(23)[0] < residual.table(0)[0]
    assert residual.TABLES == 2 * len(residual.THETAS) == len(residual.THETAS) + len(residual.SECH_THETAS)
    for k in range(residual.TABLES):
        t = residual.any_table(k)
        assert t.dtype == np.int64 and t.size == residual.TABLE_LENGTH
        assert t.sum() == 1 << residual.PRECISION_BITS and (t > 0).all()
        if k < len(residual.THETAS):  # old indices keep their meaning
            np.testing.assert_array_equal(t, residual.table(k))
        else:  # decreasing, and flatter at the head than the geometric of the same mean
            head = t[: np.argmax(t <= 1)] if (t <= 1).any() else t[:-1]
            assert (np.diff(head) <= 0).all()
            geometric = residual.table(k - len(residual.THETAS))
            assert t[1] / t[0] >= geometric[1] / geometric[0]
    # The tables are part of the format: pinned, so that no edit changes them unnoticed.
    sech = np.concatenate([residual.any_table(k) for k in range(len(residual.THETAS), residual.TABLES)])
    assert zlib.crc32(sech.astype("<i8").tobytes()) == SECH_TABLES_CRC32


SECH_TABLES_CRC32 = 0xFEA5C0B2


@pytest.mark.parametrize("k", [0, 23, 24, 31, 40, 47])
def test_residual_coder2_each_table_round_trip(k):
    """Symbols coded with either family (shifts, escapes up to 2**37, signs) decode exactly."""
    import constriction

    rng = np.random.default_rng(k)
    n = 3000
    s = rng.choice([0, 1, 5, 17], n)
    high = np.where(rng.random(n) < 0.02, rng.integers(0, 2**20, n), rng.geometric(0.3, n) - 1)
    e = (high << s) | (rng.integers(0, 2**17, n) & ((1 << s) - 1))
    e[:3] = (0, 2**37, 95 << 5)
    e *= rng.choice([-1, 1], n)
    ks = np.stack([np.full(n, k), s], -1).astype(np.uint8)
    enc = constriction.stream.queue.RangeEncoder()
    residual_v2._encode_symbols(enc, e, ks)
    dec = constriction.stream.queue.RangeDecoder(enc.get_compressed())
    np.testing.assert_array_equal(residual_v2._decode_symbols(dec, ks), e)
    assert dec.maybe_exhausted()


def test_residual_second_reference(image):
    """The optional block of second references: used on real chunks, decoded exactly, strict on damage."""
    a = np.ascontiguousarray(image[:, :64, :64])
    enc = TEC(max_error=0).encode(a)
    np.testing.assert_array_equal(TEC().decode(enc), a)
    header, mask, latent = bitstream.unpack(enc)
    raw = zlib.decompress(header.residual.params)
    b, c = 1, a.shape[0]
    expected = 3 * b * c + 2 * b * c * residual_v2.LEVELS * residual_v2.CLASSES
    assert len(raw) == expected + 2 * b * c
    second = np.frombuffer(raw[expected:], np.uint8).reshape(c, 2)
    used = np.flatnonzero(second[:, 0] != residual_v2.NO_REF)
    assert used.size and (second[used, 0] < used).all()

    def refused(new: bytes) -> None:
        bad = dataclasses.replace(header.residual, params=zlib.compress(new))
        with pytest.raises(CorruptChunkError):
            TEC().decode(bitstream.pack(bitstream.ChunkHeader(**{**header.__dict__, "residual": bad}), mask, latent))

    band = int(used[0])
    for ref2, gamma2 in ((band, 1), (residual_v2.NO_REF, 1), (int(second[band, 0]), 9), (int(second[band, 0]), 0xF7),
                         (raw[3 * band + 1], 1)):  # itself, none with a gamma, gammas beyond +-8, the first reference
        damaged = bytearray(raw)
        damaged[expected + 2 * band : expected + 2 * band + 2] = bytes([ref2, gamma2])
        refused(bytes(damaged))
    refused(raw[:expected] + bytes([residual_v2.NO_REF, 0]) * c)  # a block naming no second reference
    refused(raw + b"\0\0")
    # Without the block, the same parameters are coder 2's original layout: decodable, other values (CRC).
    bad = dataclasses.replace(header.residual, params=zlib.compress(raw[:expected]))
    with pytest.raises(CorruptChunkError):
        TEC().decode(bitstream.pack(bitstream.ChunkHeader(**{**header.__dict__, "residual": bad}), mask, latent))


def test_residual_new_tables_used_and_refused_where_unknown(image):
    """Real lossless chunks pick hyperbolic-secant tables; coder 1 (tiles) and out-of-range indices refuse them."""
    a = np.ascontiguousarray(image[:, :64, :64])
    enc = TEC(max_error=0).encode(a)
    np.testing.assert_array_equal(TEC().decode(enc), a)
    header, mask, latent = bitstream.unpack(enc)
    raw = bytearray(zlib.decompress(header.residual.params))
    b, c = 1, a.shape[0]
    tables = np.frombuffer(bytes(raw[3 * b * c :]), np.uint8).reshape(-1, 2)
    assert (tables[:, 0] >= len(residual.THETAS)).any()
    raw[3 * b * c] = residual.TABLES  # one past the last table
    bad = dataclasses.replace(header.residual, params=zlib.compress(bytes(raw)))
    with pytest.raises(CorruptChunkError):
        TEC().decode(bitstream.pack(bitstream.ChunkHeader(**{**header.__dict__, "residual": bad}), mask, latent))
    valid = np.ones((1, 1, 64, 64), bool)
    with pytest.raises(CorruptChunkError):
        residual.decode(b"\0" * 8, valid, np.array([[len(residual.THETAS), 0]], np.uint8))


# psnr= targets.

def test_psnr_target_met_on_every_chunk(cube):
    codec = TEC(psnr=31.0)
    for t in range(cube.shape[0]):
        a = np.ascontiguousarray(cube[t, :, :64, :64])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", chunk.PsnrTargetWarning)
            enc = codec.encode(a)
        q = chunk.read_header(enc).quality
        reached = metrics.psnr(a, codec.decode(enc))
        lower = [metrics.psnr(a, TEC(quality=p).decode(TEC(quality=p).encode(a))) for p in range(q)]
        if reached >= 31.0:
            assert all(p < 31.0 for p in lower)  # the lowest level that reaches it
        else:  # unreachable: the best level, with a warning
            assert reached >= max(lower, default=0)


def test_psnr_unreachable_warns_and_takes_the_best_level(image):
    a = np.ascontiguousarray(image[:, :32, :32])
    with pytest.warns(chunk.PsnrTargetWarning, match="best level"):
        enc = TEC(psnr=90.0).encode(a)
    q = chunk.read_header(enc).quality
    psnrs = [metrics.psnr(a, TEC(quality=p).decode(TEC(quality=p).encode(a))) for p in range(5)]
    assert psnrs[q] == max(psnrs)


# Damaged residuals raise the package's errors, never return wrong pixels.

def _with_residual_payload(enc: bytes, payload: bytes) -> bytes:
    header, mask, latent = bitstream.unpack(enc)
    res = header.residual
    fake = dataclasses.replace(res, payload=payload)
    return bitstream.pack(bitstream.ChunkHeader(**{**header.__dict__, "residual": fake}), mask, latent)


def test_wrong_residual_payload_raises(image):
    a = np.ascontiguousarray(image[:, :40, :40])
    b = np.ascontiguousarray(image[:, 100:140, 100:140])
    enc = TEC(max_error=1).encode(a)
    other = bitstream.unpack(TEC(max_error=1).encode(b))[0].residual.payload
    payload = bitstream.unpack(enc)[0].residual.payload
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x10
    for bad in (other, bytes(flipped), payload[:-4], payload + b"\0" * 4, b"", payload[:4] + b"\0" * 4):
        with pytest.raises(BitstreamError):
            TEC().decode(_with_residual_payload(enc, bad))  # header consistent, CRC recomputed


def test_damaged_residual_section_raises(image):
    enc = TEC(max_error=0).encode(np.ascontiguousarray(image[:, :24, :24]))
    with pytest.raises(CorruptChunkError):  # the chunk CRC
        TEC().decode(enc[:-30] + bytes([enc[-30] ^ 1]) + enc[-29:])
    header, mask, latent = bitstream.unpack(enc)
    res = header.residual
    assert res.coder == residual_v2.CODER
    params = bytearray(zlib.decompress(res.params))
    params[0] = residual_v2.NO_SPATIAL + 1  # alpha out of range
    bad_ref = bytearray(zlib.decompress(res.params))
    bad_ref[1] = 0  # band 0 cannot refer to band 0
    for bad in (dataclasses.replace(res, mode=1),  # wrong mode
                dataclasses.replace(res, params=res.params[:-2]), dataclasses.replace(res, params=b""),
                dataclasses.replace(res, params=zlib.compress(bytes(params))),
                dataclasses.replace(res, params=zlib.compress(bytes(bad_ref))),
                dataclasses.replace(res, params=zlib.compress(zlib.decompress(res.params) + b"\0")),
                dataclasses.replace(res, params=res.params + b"\0"), dataclasses.replace(res, tile=3),
                dataclasses.replace(res, coder=1)):  # coder 2's data read as coder 1's
        with pytest.raises(BitstreamError):
            TEC().decode(bitstream.pack(bitstream.ChunkHeader(**{**header.__dict__, "residual": bad}), mask, latent))


def test_version_one_chunks_unchanged(image):
    enc = TEC().encode(np.ascontiguousarray(image[:, :16, :16]))
    assert enc[4] == bitstream.FORMAT_VERSION and bitstream.unpack(enc)[0].residual is None
    assert TEC(max_error=0).encode(np.ascontiguousarray(image[:, :64, :64]))[4] == bitstream.RESIDUAL_FORMAT_VERSION


def test_residual_coder_byte_is_strict(image):
    """Version 3 carries the coder byte (2); version 2 means coder 1. Any other pairing is refused."""
    enc = TEC(max_error=3).encode(np.ascontiguousarray(image[:, :64, :64]))
    assert bitstream.unpack(enc)[0].residual.coder == 2
    tiny = TEC(max_error=100, quality=2).encode(np.ascontiguousarray(image[:, :16, :16]))  # coder 1 where smaller
    assert tiny[4] == bitstream.RESIDUAL_V1_FORMAT_VERSION and bitstream.unpack(tiny)[0].residual.coder == 1
    header, mask, latent = bitstream.unpack(enc)
    for version, coder in ((3, 1), (3, 9), (2, 2)):
        body = bytearray(enc[:-4])
        body[4] = version
        pos = enc.index(struct.pack("<dB", header.residual.max_error, header.residual.mode), 40) + 9
        if version == 3:
            body[pos] = coder
        else:  # a version 2 reader takes the coder byte for the tile field: misaligned, refused
            pass
        with pytest.raises(BitstreamError):
            TEC().decode(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))


@FAST
@given(h=st.integers(1, 23), w=st.integers(1, 23), b=st.integers(1, 2), c=st.integers(1, 4),
       stride=st.sampled_from([1, 2, 8, 64]), scale=st.sampled_from([0, 1, 50, 10**6, 2**36]),
       step=st.sampled_from([1, 3, 201]), anchored=st.booleans(), seed=st.integers(0, 2**16))
def test_residual_coder2_round_trip(h, w, b, c, stride, scale, step, anchored, seed):
    """Any residuals (escapes up to 2**37, masks, tiny and odd sizes, any stride) decode exactly."""
    rng = np.random.default_rng(seed)
    q = np.rint(rng.laplace(0, 1, (b, c, h, w)) * scale).astype(np.int64)
    q.flat[:: 7] = rng.integers(-scale - 1, scale + 1, q.flat[::7].size)
    valid = rng.random(q.shape) > 0.2
    anchor = rng.integers(-(2**31), 2**31, q.shape) if anchored else None
    params, payload = residual_v2.encode(q, valid, anchor, step, stride)
    np.testing.assert_array_equal(residual_v2.decode(params, payload, valid, anchor, step, stride), np.where(valid, q, 0))


def test_residual_coder2_beats_coder1(image):
    """The context model: fewer bytes than coder 1's memoryless tiles, lossless and bounded."""
    a = np.ascontiguousarray(image[:, :128, :128])
    for e in (0, 5, 50):
        enc = chunk.encode_chunk(a, model=MODEL, quality=0, max_error=e)
        header, _, payload = bitstream.unpack(enc)
        symbols = entropy.decode(payload, 0, (header.batch,) + header.latent, MODEL.tables)
        base = bounded.base_values(MODEL, symbols, 0, a.shape[-2:], a.dtype, 1.0)
        q = bounded.quantize(a[None], base, bounded.MODE_INTEGER, e)
        valid = a[None] != 0
        q = np.where(valid, q, 0)
        old = residual.encode(q, valid, residual.choose_parameters(q, valid))
        new = header.residual
        assert len(new.params) + len(new.payload) < 0.9 * (len(old) + 2 * q.size // residual.TILE**2)


# Codecs, config, xarray, CLI.

def test_codec_config_and_validation():
    for codec in (TEC(max_error=3), TEC(max_error=0.5), TEC(psnr=35.0), TEC(quality=1, max_error=0)):
        check_config(codec)
    # A bound without a quality takes base level 0 (params.BOUNDED_DEFAULT_QUALITY); a given quality is kept.
    check_repr(TEC(max_error=0), "TEC(quality=0, model='tec-fp', nodata=0, float_scale=10000.0, max_error=0)")
    assert TEC(max_error=5).quality == TEC3(max_error=5).quality == 0
    assert TEC(quality=2, max_error=5).quality == TEC3(quality=2, max_error=5).quality == 2
    check_repr(TEC(psnr=35), "TEC(quality=2, model='tec-fp', nodata=0, float_scale=10000.0, psnr=35.0)")
    assert TEC(max_error=2) != TEC(max_error=3) and TEC() != TEC(max_error=0)
    assert numcodecs.get_codec(TEC(max_error=4).get_config()) == TEC(max_error=4)
    for bad in ({"max_error": -1}, {"max_error": float("nan")}, {"max_error": True}, {"psnr": 0},
                {"psnr": "40"}, {"max_error": 1, "psnr": 40}):
        with pytest.raises(InvalidInputError, match="Expected"):
            TEC(**bad)
        with pytest.raises(InvalidInputError, match="Expected"):
            TEC3(**bad)
    assert TEC3.from_dict(TEC3(max_error=2).to_dict()) == TEC3(max_error=2)
    assert "max_error" not in TEC3().to_dict()["configuration"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_lossless_and_bounded(cube, tmp_path, zarr_format):
    import tec_zarr

    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), np.ascontiguousarray(cube[:2, :, :70, :90]))})
    for bound in (0, 5):
        store = tmp_path / f"b{bound}.zarr"
        enc = tec_zarr.zarr_encoding(ds, zarr_format=zarr_format, chunks={"time": 1, "y": 64, "x": 64}, max_error=bound)
        ds.to_zarr(store, zarr_format=zarr_format, encoding=enc)
        back = xr.open_zarr(store)["reflectance"].values
        assert_bound(ds["reflectance"].values, back, bound)


def test_cli_lossless_and_max_error(cube, tmp_path):
    from tec_zarr import cli

    src = tmp_path / "in.zarr"
    a = np.ascontiguousarray(cube[:1, :, :50, :60])
    xr.Dataset({"reflectance": (("time", "band", "y", "x"), a)}).to_zarr(src, zarr_format=3)
    for flags, bound in ((["--lossless"], 0), (["--max-error", "10"], 10)):
        out = tmp_path / f"out{bound}.zarr"
        assert cli.main(["compress", str(src), str(out), "--quiet", *flags]) == 0
        assert_bound(a, xr.open_zarr(out)["reflectance"].values, bound)
    with pytest.raises(SystemExit):
        cli.main(["compress", str(src), str(tmp_path / "x.zarr"), "--lossless", "--psnr", "30"])


def test_golden_bounded_bitstreams_coder1():
    """Chunks written by residual coder 1 (tec_zarr < coder 2) still decode to the same bits. Never regenerated."""
    from common import FIXTURES

    import json

    for name, n in (("lossless", 1), ("max-error-7", 2)):
        d = FIXTURES / "tec_zarr.tec" / name
        codec = numcodecs.get_codec(json.loads((d / "config.json").read_text()))
        files = sorted(d.glob("encoded.*.dat"))
        assert len(files) == n
        for i, f in enumerate(files):
            enc = f.read_bytes()
            assert enc[4] == bitstream.RESIDUAL_V1_FORMAT_VERSION and bitstream.unpack(enc)[0].residual.coder == 1
            np.testing.assert_array_equal(codec.decode(enc), np.load(d / f"decoded.{i:02d}.npy"))


def test_golden_bounded_bitstreams(cube):
    """The integer synthesis makes these exact on any machine: stored chunks decode to the same bits."""
    from common import FIXTURES, check_golden

    a = np.ascontiguousarray(cube[0, :, 10:43, 20:61])
    a[:, :3, :4] = 0
    # Written at base quality 2 (the default before bounded chunks defaulted to 0): the configs name it.
    check_golden(TEC(quality=2, max_error=0), [a], "lossless-coder2", max_abs_error=0)
    check_golden(TEC(quality=1, max_error=7), [a, a.astype(np.int16)], "max-error-7-coder2", max_abs_error=0)
    refl = (a / 1e4).astype(np.float32)
    check_golden(TEC(quality=2, max_error=0, nodata=None), [refl], "float32-lossless-coder2", max_abs_error=0)
    # Written after the hyperbolic-secant tables and the second references were added: a chunk that uses both.
    b = np.ascontiguousarray(cube[2, :, 100:164, 60:124])
    check_golden(TEC(quality=2, max_error=0), [b], "lossless-coder2-sech", max_abs_error=0)
    sech = FIXTURES / "tec_zarr.tec" / "lossless-coder2-sech" / "encoded.00.dat"
    res = bitstream.unpack(sech.read_bytes())[0].residual
    raw = np.frombuffer(zlib.decompress(res.params), np.uint8)
    expected = 3 * 12 + 2 * 12 * residual_v2.LEVELS * residual_v2.CLASSES
    assert raw.size == expected + 2 * 12 and (raw[3 * 12 : expected : 2] >= len(residual.THETAS)).any()
    for f in (FIXTURES / "tec_zarr.tec").glob("*-coder2/encoded.*.dat"):
        assert bitstream.unpack(f.read_bytes())[0].residual.coder == 2
