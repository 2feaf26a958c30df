"""Error-bounded and lossless chunks (max_error=): the bound, residual coder 1 (tiles) and coder 2 (hierarchical),
their shared integer tables, damaged residual sections, and golden bitstreams of both coders."""

from __future__ import annotations

import dataclasses
import json
import warnings
import zlib
from unittest import mock

import numcodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import FIXTURES, assert_bound, check_golden, golden_chunks, golden_id, golden_skip
from tec_zarr.entropy.rangecoder import PayloadBudget
from tec_zarr import TEC, pipeline
from tec_zarr.entropy.base import channel_argument
from tec_zarr.pipeline.decode import parse
from tec_zarr.bitstream import chunk
from tec_zarr.bitstream import payload as sections
from tec_zarr.errors import BitstreamError, CorruptChunkError
from tec_zarr.models import load_model
from tec_zarr.residual import bound, hierarchical, tables, tiled

MODEL = load_model("tec-fp")
FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def roundtrip(a: np.ndarray, **kwargs) -> np.ndarray:
    dec = pipeline.decode_chunk(pipeline.encode_chunk(a, model=MODEL, quality=kwargs.pop("quality", 2), **kwargs))
    assert dec.dtype == a.dtype and dec.shape == a.shape
    return dec


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
        limit = max_error * 1e-4  # reflectance units
    else:
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, (12, h, w), endpoint=True).astype(dt)
        a.flat[::5] = info.max
        a.flat[1::5] = info.min
        limit = max_error
    if nodata is not None:
        a.flat[3::11] = nodata
    dec = roundtrip(a, max_error=limit, nodata=nodata)
    assert_bound(a, dec, limit)
    if nodata is not None:
        np.testing.assert_array_equal(dec == nodata, a == nodata)


@pytest.mark.parametrize("max_error", [2, 5, 20])
def test_data_on_both_sides_of_nodata_keep_the_bound(cube, max_error):
    """int16 reflectance harmonised by taking the +1000 offset off crosses the default nodata 0. The lattice the
    base is rounded to puts nodata between two of its points, so no valid element decodes onto nodata and the
    whole bound is kept (before: such chunks were coded losslessly, silently, at about 1.8x the bytes)."""
    from tec_zarr.errors import MaxErrorFallbackWarning

    a = (cube[0, :, :128, :128].astype(np.int32) - 1000).astype(np.int16)
    a[a == 0] = 1  # every element valid
    assert (a < 0).any() and (a > 0).any() and (a == -max_error).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaxErrorFallbackWarning)
        data = pipeline.encode_chunk(a, model=MODEL, quality=2, max_error=max_error, nodata=0)
    dec = pipeline.decode_chunk(data)
    assert_bound(a, dec, max_error)
    assert not (dec == 0).any()
    residual = parse(data).header.residual
    assert residual.max_error == max_error and residual.lattice
    # where the nodata rule alone would break the bound (the rule of chunks before the lattice), the chunk is coded
    # exactly and says so
    with mock.patch.object(bound, "on_lattice", lambda base, *args: base), pytest.warns(MaxErrorFallbackWarning,
                                                                                     match="nodata=0"):
        exact = pipeline.encode_chunk(a, model=MODEL, quality=2, max_error=max_error, nodata=0)
    assert parse(exact).header.residual.max_error == 0
    assert np.array_equal(pipeline.decode_chunk(exact), a)


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
    for limit in (1e-4, 2.5e-3):
        dec = roundtrip(refl, max_error=limit)
        assert_bound(refl, dec, limit)
    dn = np.ascontiguousarray(cube[1, :, :48, :48]).astype(np.float32)
    assert_bound(dn, roundtrip(dn, max_error=2.0, float_scale=1.0), 2.0)
    # A bound below float32's resolution at these values: still kept, by coding the chunk exactly.
    big = dn + np.float32(1e6)
    assert_bound(big, roundtrip(big, max_error=1e-6, float_scale=1.0, nodata=None), 1e-6)


def test_rate_falls_as_the_bound_grows(image):
    a = np.ascontiguousarray(image[:, :96, :96])
    sizes = [len(pipeline.encode_chunk(a, model=MODEL, quality=2, max_error=e)) for e in (0, 1, 5, 25, 100)]
    assert sizes == sorted(sizes, reverse=True)


def test_residual_tables_are_exact_integers():
    for k in range(len(tables.THETAS)):
        t = tables.table(k)
        assert t.dtype == np.int64 and t.sum() == 1 << tables.PRECISION_BITS and (t > 0).all()
    assert tables.table(0)[0] > tables.table(0)[1] and tables.table(23)[0] < tables.table(0)[0]
    assert tables.TABLES == 2 * len(tables.THETAS) == len(tables.THETAS) + len(tables.SECH_THETAS)
    for k in range(tables.TABLES):
        t = tables.any_table(k)
        assert t.dtype == np.int64 and t.size == tables.TABLE_LENGTH
        assert t.sum() == 1 << tables.PRECISION_BITS and (t > 0).all()
        if k < len(tables.THETAS):  # old indices keep their meaning
            np.testing.assert_array_equal(t, tables.table(k))
        else:  # decreasing, and flatter at the head than the geometric of the same mean
            head = t[: np.argmax(t <= 1)] if (t <= 1).any() else t[:-1]
            assert (np.diff(head) <= 0).all()
            geometric = tables.table(k - len(tables.THETAS))
            assert t[1] / t[0] >= geometric[1] / geometric[0]
    # The tables are part of the format: pinned, so that no edit changes them unnoticed.
    sech = np.concatenate([tables.any_table(k) for k in range(len(tables.THETAS), tables.TABLES)])
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
    tables.encode_symbols(enc, e, ks)
    words = enc.get_compressed()
    dec = constriction.stream.queue.RangeDecoder(words)
    np.testing.assert_array_equal(tables.decode_symbols(dec, ks, PayloadBudget(words.nbytes, "test")), e)
    assert dec.maybe_exhausted()
    with pytest.raises(CorruptChunkError, match="at least"):  # the same symbols cannot fit in a quarter of the words
        tables.decode_symbols(constriction.stream.queue.RangeDecoder(words[: words.size // 4]), ks,
                              PayloadBudget(words.nbytes // 4, "test"))


def test_residual_second_reference(image):
    """The optional block of second references: used on real chunks, decoded exactly, strict on damage."""
    a = np.ascontiguousarray(image[:, :64, :64])
    enc = TEC(max_error=0).encode(a)
    np.testing.assert_array_equal(TEC().decode(enc), a)
    header, mask, latent = chunk.unpack(enc)
    raw = zlib.decompress(header.residual.params)
    b, c = 1, a.shape[0]
    expected = 3 * b * c + 2 * b * c * hierarchical.LEVELS * hierarchical.CLASSES
    assert len(raw) == expected + 2 * b * c
    second = np.frombuffer(raw[expected:], np.uint8).reshape(c, 2)
    used = np.flatnonzero(second[:, 0] != hierarchical.NO_REF)
    assert used.size and (second[used, 0] < used).all()

    def refused(new: bytes) -> None:
        bad = dataclasses.replace(header.residual, params=zlib.compress(new))
        with pytest.raises(CorruptChunkError):
            TEC().decode(chunk.pack(chunk.ChunkHeader(**{**header.__dict__, "residual": bad}), mask, latent))

    band = int(used[0])
    for ref2, gamma2 in ((band, 1), (hierarchical.NO_REF, 1), (int(second[band, 0]), 9), (int(second[band, 0]), 0xF7),
                         (raw[3 * band + 1], 1)):  # itself, none with a gamma, gammas beyond +-8, the first reference
        damaged = bytearray(raw)
        damaged[expected + 2 * band : expected + 2 * band + 2] = bytes([ref2, gamma2])
        refused(bytes(damaged))
    refused(raw[:expected] + bytes([hierarchical.NO_REF, 0]) * c)  # a block naming no second reference
    refused(raw + b"\0\0")
    # Without the block, the same parameters are coder 2's original layout: decodable, other values (CRC).
    bad = dataclasses.replace(header.residual, params=zlib.compress(raw[:expected]))
    with pytest.raises(CorruptChunkError):
        TEC().decode(chunk.pack(chunk.ChunkHeader(**{**header.__dict__, "residual": bad}), mask, latent))


def test_residual_new_tables_used_and_refused_where_unknown(image):
    """Real lossless chunks pick hyperbolic-secant tables; coder 1 (tiles) and out-of-range indices refuse them."""
    a = np.ascontiguousarray(image[:, :64, :64])
    enc = TEC(max_error=0).encode(a)
    np.testing.assert_array_equal(TEC().decode(enc), a)
    header, mask, latent = chunk.unpack(enc)
    raw = bytearray(zlib.decompress(header.residual.params))
    b, c = 1, a.shape[0]
    chosen = np.frombuffer(bytes(raw[3 * b * c :]), np.uint8).reshape(-1, 2)
    assert (chosen[:, 0] >= len(tables.THETAS)).any()
    raw[3 * b * c] = tables.TABLES  # one past the last table
    bad = dataclasses.replace(header.residual, params=zlib.compress(bytes(raw)))
    with pytest.raises(CorruptChunkError):
        TEC().decode(chunk.pack(chunk.ChunkHeader(**{**header.__dict__, "residual": bad}), mask, latent))
    valid = np.ones((1, 1, 64, 64), bool)
    with pytest.raises(CorruptChunkError):
        tiled.decode(b"\0" * 8, valid, np.array([[len(tables.THETAS), 0]], np.uint8))


# Damaged residuals raise the package's errors, never return wrong pixels.

def _with_residual_payload(enc: bytes, payload: bytes) -> bytes:
    header, mask, latent = chunk.unpack(enc)
    res = header.residual
    fake = dataclasses.replace(res, payload=payload)
    return chunk.pack(chunk.ChunkHeader(**{**header.__dict__, "residual": fake}), mask, latent)


def test_wrong_residual_payload_raises(image):
    a = np.ascontiguousarray(image[:, :40, :40])
    b = np.ascontiguousarray(image[:, 100:140, 100:140])
    enc = TEC(max_error=1).encode(a)
    other = chunk.unpack(TEC(max_error=1).encode(b))[0].residual.payload
    payload = chunk.unpack(enc)[0].residual.payload
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x10
    for bad in (other, bytes(flipped), payload[:-4], payload + b"\0" * 4, b"", payload[:4] + b"\0" * 4):
        with pytest.raises(BitstreamError):
            TEC().decode(_with_residual_payload(enc, bad))  # header consistent, CRC recomputed


def test_damaged_residual_section_raises(image):
    enc = TEC(max_error=0).encode(np.ascontiguousarray(image[:, :24, :24]))
    with pytest.raises(CorruptChunkError):  # the chunk CRC
        TEC().decode(enc[:-30] + bytes([enc[-30] ^ 1]) + enc[-29:])
    header, mask, latent = chunk.unpack(enc)
    res = header.residual
    assert res.coder == hierarchical.CODER
    params = bytearray(zlib.decompress(res.params))
    params[0] = hierarchical.NO_SPATIAL + 1  # alpha out of range
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
            TEC().decode(chunk.pack(chunk.ChunkHeader(**{**header.__dict__, "residual": bad}), mask, latent))


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
    params, payload = hierarchical.encode(q, valid, anchor, step, stride)
    np.testing.assert_array_equal(hierarchical.decode(params, payload, valid, anchor, step, stride), np.where(valid, q, 0))


def test_residual_coder2_beats_coder1(image):
    """The context model: fewer bytes than coder 1's memoryless tiles, lossless and bounded."""
    a = np.ascontiguousarray(image[:, :128, :128])
    for e in (0, 5, 50):
        enc = pipeline.encode_chunk(a, model=MODEL, quality=0, max_error=e)
        header = chunk.unpack(enc)[0]
        symbols = parse(enc).symbols
        base = bound.base_values(MODEL, symbols, 0, a.shape[-2:], a.dtype, 1.0)
        q = bound.quantize(a[None], base, bound.MODE_INTEGER, e)
        valid = a[None] != 0
        q = np.where(valid, q, 0)
        old = tiled.encode(q, valid, tiled.choose_parameters(q, valid))
        new = header.residual
        assert len(new.params) + len(new.payload) < 0.9 * (len(old) + 2 * q.size // tiled.TILE**2)


def test_golden_bounded_bitstreams_coder1():
    """Chunks written by residual coder 1 (tec_zarr < coder 2) still decode to the same bits. Never regenerated."""
    for name, n in (("lossless", 1), ("max-error-7", 2)):
        d = FIXTURES / "tec_zarr.tec" / name
        codec = numcodecs.get_codec(json.loads((d / "config.json").read_text()))
        files = sorted(d.glob("encoded.*.dat"))
        assert len(files) == n
        for i, f in enumerate(files):
            enc = f.read_bytes()
            assert enc[4] == chunk.RESIDUAL_V1_FORMAT_VERSION and chunk.unpack(enc)[0].residual.coder == 1
            np.testing.assert_array_equal(codec.decode(enc), np.load(d / f"decoded.{i:02d}.npy"))


def test_golden_bounded_bitstreams(cube):
    """The integer synthesis makes these exact on any machine: stored chunks decode to the same bits."""
    a = np.ascontiguousarray(cube[0, :, 10:43, 20:61])
    a[:, :3, :4] = 0
    # Written at base quality 2 (the default before bounded chunks defaulted to 0): the configs name it.
    check_golden(TEC(model="tec-fp", quality=2, max_error=0), [a], "lossless-coder2", max_abs_error=0)
    check_golden(TEC(model="tec-fp", quality=1, max_error=7), [a, a.astype(np.int16)], "max-error-7-coder2", max_abs_error=0)
    refl = (a / 1e4).astype(np.float32)
    check_golden(TEC(model="tec-fp", quality=2, max_error=0, nodata=None), [refl], "float32-lossless-coder2", max_abs_error=0)
    # Written after the hyperbolic-secant tables and the second references were added: a chunk that uses both.
    b = np.ascontiguousarray(cube[2, :, 100:164, 60:124])
    check_golden(TEC(model="tec-fp", quality=2, max_error=0), [b], "lossless-coder2-sech", max_abs_error=0)
    sech = FIXTURES / "tec_zarr.tec" / "lossless-coder2-sech" / "encoded.00.dat"
    res = chunk.unpack(sech.read_bytes())[0].residual
    raw = np.frombuffer(zlib.decompress(res.params), np.uint8)
    expected = 3 * 12 + 2 * 12 * hierarchical.LEVELS * hierarchical.CLASSES
    assert raw.size == expected + 2 * 12 and (raw[3 * 12 : expected : 2] >= len(tables.THETAS)).any()
    for f in (FIXTURES / "tec_zarr.tec").glob("*-coder2/encoded.*.dat"):
        assert chunk.unpack(f.read_bytes())[0].residual.coder == 2
        assert not chunk.unpack(f.read_bytes())[0].residual.lattice  # written before the lattice: decode as ever
    # Written with the lattice (chunk extension tag 4): uint16, int16, int16 on both sides of nodata 0, float32.
    crossing = (a.astype(np.int32) - 1000).astype(np.int16)
    crossing[crossing == 0] = 1
    crossing[:, :3, :4] = 0
    check_golden(TEC(model="tec-fp", quality=1, max_error=7), [a, a.astype(np.int16), crossing], "max-error-7-lattice",
                 max_abs_error=0)
    check_golden(TEC(model="tec-fp", quality=1, max_error=7e-4, nodata=None), [refl], "float32-max-error-lattice", max_abs_error=0)
    for f in (FIXTURES / "tec_zarr.tec").glob("*-lattice/encoded.*.dat"):
        res = chunk.unpack(f.read_bytes())[0].residual
        assert res.lattice and res.max_error > 0


@pytest.mark.parametrize("scale", [1e4, 1.0])
def test_float32_on_the_dn_grid_is_coded_as_dn(cube, scale):
    """Lossless float32 whose values are all float32(DN / float_scale) (reflectance as cube builders scale it,
    DN held as float) codes DN steps (residual mode 3, extension tag 6): about the bytes of the same DN in uint16,
    where the float32 bits' view took 2.75 times them, more than zstd. Bit for bit, NaN and nodata included; a
    -0.0 (not such a value) keeps the float32 view, exactly as well."""
    dn = np.ascontiguousarray(cube[0, :, :48, :64])
    x = (dn / np.float64(scale)).astype(np.float32)
    x[:, :4, :6] = np.nan  # missing
    x[2, 10:12, 10:14] = 0  # nodata
    codec = TEC(model="tec-fp", quality=0, max_error=0, float_scale=scale)
    enc = codec.encode(x)
    res = chunk.unpack(enc)[0].residual
    assert res.mode == 3
    got = np.asarray(codec.decode(enc)).view(np.float32).reshape(x.shape)
    np.testing.assert_array_equal(got.view(np.int32), x.view(np.int32))
    as_dn = TEC(model="tec-fp", quality=0, max_error=0).encode(np.where(np.isnan(x), 0, dn).astype(np.uint16))
    assert len(enc) < 1.05 * len(as_dn)
    y = x.copy()
    y[5, 20, 20] = -0.0
    y[6, 20, 20] = np.nextafter(x[6, 20, 20], np.float32(1))  # between DN
    for z in (y, np.where(np.isnan(x), np.float32(-0.0), x)):
        enc2 = TEC(model="tec-fp", quality=0, max_error=0, float_scale=scale, nodata=None).encode(z)
        assert chunk.unpack(enc2)[0].residual.mode == 2
        back = np.asarray(codec.decode(enc2)).view(np.float32).reshape(z.shape)
        np.testing.assert_array_equal(back.view(np.int32), z.view(np.int32))
    # replicated 20 m bands: one DN step per block, still exact
    blocky = x.copy()
    blocky[4] = np.repeat(np.repeat(blocky[4][::2, ::2], 2, axis=0), 2, axis=1)
    enc3 = codec.encode(blocky)
    assert chunk.unpack(enc3)[0].blocks is not None and chunk.unpack(enc3)[0].residual.mode == 3
    np.testing.assert_array_equal(np.asarray(codec.decode(enc3)).view(np.int32).reshape(x.shape),
                                  blocky.view(np.int32))


def test_dn_grid_steps_beyond_the_decoders_clip_keep_the_float_view():
    """Values on the DN grid but so far from the base that the decoder's clip of the steps would change them (DN
    near 2**40 of either sign, float_scale 1): the encoder checks its own decoding and keeps mode 2, exact."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3000, (12, 32, 32)).astype(np.float32)
    x[:, ::2, ::2] = np.float32(2.0**40)
    x[0, 1, 1] = np.float32(-(2.0**40))
    codec = TEC(model="tec-fp", quality=0, max_error=0, float_scale=1.0, nodata=None)
    enc = codec.encode(x)
    assert chunk.unpack(enc)[0].residual.mode == 2
    np.testing.assert_array_equal(np.asarray(codec.decode(enc)).view(np.int32).reshape(x.shape), x.view(np.int32))


def test_golden_dn_grid_chunks(cube):
    """Mode 3 chunks as first written decode to the same bits in every run."""
    a = np.ascontiguousarray(cube[1, :, 30:70, 12:60])
    refl = (a / 1e4).astype(np.float32)
    refl[:, :3, :5] = np.nan
    check_golden(TEC(model="tec-fp", quality=0, max_error=0), [refl], "float32-lossless-dn-grid", max_abs_error=0)
    f = FIXTURES / "tec_zarr.tec" / "float32-lossless-dn-grid" / "encoded.00.dat"
    assert chunk.unpack(f.read_bytes())[0].residual.mode == 3


def test_hostile_dn_grid_marks_are_refused():
    import struct

    data = (FIXTURES / "tec_zarr.tec" / "float32-lossless-dn-grid" / "encoded.00.dat").read_bytes()
    header, mask, payload = chunk.unpack(data)

    def resealed(body: bytes) -> bytes:
        return body + struct.pack("<I", zlib.crc32(body))

    field = bytes([chunk.EXTENSION_DN_GRID]) + struct.pack("<I", 1) + b"\x01"
    assert data.count(field) == 1
    with pytest.raises(CorruptChunkError, match="DN grid extension as the byte 01"):
        chunk.unpack(resealed(data[:-4].replace(field, field[:-1] + b"\x02")))
    mode = struct.pack("<I", len(payload)) + payload + struct.pack("<dB", 0.0, 3)
    assert data.count(mode) == 1
    with pytest.raises(CorruptChunkError, match="DN grid extension as the byte 01 of a chunk of residual mode 3"):
        chunk.unpack(resealed(data[:-4].replace(mode, mode[:-1] + b"\x02")))  # the tag on a mode 2 chunk
    exact = chunk.pack(dataclasses.replace(header, residual=dataclasses.replace(header.residual, mode=2)), mask,
                       payload, chunk.unpack_sections(data).nan_mask)
    assert exact.count(field) == 0 and chunk.unpack(exact)[0].residual.mode == 2
    with pytest.raises(CorruptChunkError, match="mode 3 with the DN grid extension"):
        chunk.unpack(resealed(exact[:-4].replace(mode[:-1] + b"\x02", mode)))  # mode 3 without its tag
    ints = dataclasses.replace(header, dtype=np.dtype(np.uint16), float_scale=1.0)
    with pytest.raises(CorruptChunkError, match="valid residual section"):
        chunk.unpack(chunk.pack(ints, mask, payload, None))


def test_hostile_lattice_extensions_are_refused():
    import struct

    data = (FIXTURES / "tec_zarr.tec" / "max-error-7-lattice" / "encoded.00.dat").read_bytes()
    field = bytes([1, chunk.EXTENSION_LATTICE]) + struct.pack("<I", 1) + b"\x01"
    assert data.count(field) == 1

    def with_field(buf: bytes, new: bytes) -> bytes:
        body = buf[:-4].replace(field, new)
        return body + struct.pack("<I", zlib.crc32(body))

    for new in (field[:-1] + b"\x02", bytes([1, chunk.EXTENSION_LATTICE]) + struct.pack("<I", 0)):
        with pytest.raises(CorruptChunkError, match="lattice extension"):
            chunk.unpack(with_field(data, new))
    lossless = (FIXTURES / "tec_zarr.tec" / "lossless-coder2" / "encoded.00.dat").read_bytes()
    header, mask, payload = chunk.unpack(lossless)
    marked = chunk.pack(dataclasses.replace(header, residual=dataclasses.replace(header.residual, lattice=True)),
                        mask, payload)
    with pytest.raises(CorruptChunkError, match="lattice extension"):
        chunk.unpack(marked)


@pytest.mark.parametrize("dtype, max_error, nodata", [("uint16", 5, 0), ("int16", 3, 0), ("uint16", 25, None),
                                                     ("float32", 5e-4, None), ("float32", 2e-3, 0.0)])
def test_coding_decoded_values_again_gives_them_back(cube, dtype, max_error, nodata):
    """zarr re-encodes a partial chunk it appends to (or writes a region into) from its decoded values: the lattice
    makes that a fixed point, so the bound holds against the values first written. Before, each rewrite could move
    an element by up to another max_error."""
    x = np.ascontiguousarray(cube[1, :, :48, :40]).astype(np.int32)
    if dtype == "int16":
        x = x - 1000  # both sides of nodata 0
        x[x == 0] = 1
    x = (x / 1e4).astype(np.float32) if dtype == "float32" else x.astype(dtype)
    if nodata is not None:
        x[:, :2, :5] = nodata
    codec = TEC(quality=1, max_error=max_error, nodata=nodata)
    first = codec.decode(codec.encode(x))
    again = codec.decode(codec.encode(first))
    assert again.tobytes() == first.tobytes()
    assert_bound(x, again, max_error)
    assert parse(codec.encode(x)).header.residual.lattice
    # above LATTICE_MAX_DN DN the base-centred steps are kept (cheaper at large bounds): no lattice mark
    loose = TEC(quality=1, max_error=(30 if dtype != "float32" else 3e-3), nodata=nodata)
    assert not parse(loose.encode(x)).header.residual.lattice


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_appending_dates_keeps_the_bound(tmp_path, cube, zarr_format):
    """to_zarr(append_dim="time") into a store whose last time chunk is partial: zarr decodes that chunk, adds the
    new date and encodes it again."""
    import pandas as pd
    import xarray as xr

    import tec_zarr

    a = np.ascontiguousarray(cube[:, :, :64, :48])
    ds = xr.Dataset({"refl": (("time", "band", "y", "x"), a)},
                    coords={"time": pd.date_range("2021-01-01", periods=4, freq="90D")})
    first = ds.isel(time=slice(0, 3))
    store = tmp_path / "cube.zarr"
    first.to_zarr(store, zarr_format=zarr_format, mode="w",
                  encoding=tec_zarr.zarr_encoding(first, zarr_format=zarr_format, max_error=5, chunks={"time": 2}))
    before = xr.open_zarr(store).refl.values
    ds.isel(time=slice(3, 4)).to_zarr(store, append_dim="time")
    after = xr.open_zarr(store).refl.values
    np.testing.assert_array_equal(after[:3], before)
    assert_bound(a, after, 5)


# Encoder goldens: the integer-exact half of the residual encoder.

RESIDUAL_GOLDENS = [f for f in golden_chunks() if chunk.unpack(f.read_bytes())[0].residual is not None]


def _residual_of(path):
    """A golden chunk's residual section, nodata mask, base quantities, and the residuals decoded from it."""
    header, mask_bytes, payload = chunk.unpack(path.read_bytes())
    model = load_model(header.model)
    symbols = model.coder.decode(payload, header.quality, (header.batch,) + header.latent,
                                 skip=golden_skip(path.read_bytes()),
                                 **channel_argument(model.coder, header.coded_channels))
    c, h, w = header.shape[-3:]
    valid = np.ones((header.batch, c, h, w), bool)
    nan = chunk.unpack_sections(path.read_bytes()).nan_mask
    for packed in (mask_bytes, header.saturated, nan):  # nodata, saturated and NaN elements are not in the residual
        if packed is not None:
            valid &= ~chunk.unpack_mask(packed, (header.batch, c, h, w))
    res = header.residual
    _, coded = bound.coded_layout(header, symbols, model, valid)
    valid, anchor, step = coded.valid, coded.anchor, coded.step
    if res.coder == tiled.CODER:
        q = tiled.decode(res.payload, valid, sections.tile_parameters(res.params), res.tile)
    else:
        q = hierarchical.decode(res.params, res.payload, valid, anchor, step, res.tile)
    return res, valid, anchor, step, q


@pytest.mark.parametrize("path", RESIDUAL_GOLDENS, ids=golden_id)
def test_residual_encoder_goldens(path):
    """Re-encoding a golden chunk's decoded residuals with its stored parameters gives its stored bytes.

    The decision: the float analysis transform (onnxruntime) may round differently on other CPUs, so whole-chunk
    encoding is deterministic per machine only; everything after the latent symbols is integer-exact (the integer
    synthesis base, quantization, prediction, contexts, range coding) and pinned here byte for byte. The encoders'
    parameter *choices* are estimates in floating point (coder 1: per-tile costs; coder 2: least-squares predictor
    weights and table costs), so they are pinned to the stored ones: coder 2's own choice reproduces none of the
    stored chunks on this machine (the older fixtures predate its current predictor search), and is checked to round
    trip instead. Coder 2's parameters compare inflated: zlib builds may deflate the same bytes differently.
    """
    res, valid, anchor, step, q = _residual_of(path)
    if res.coder == tiled.CODER:
        assert tiled.encode(q, valid, sections.tile_parameters(res.params), res.tile) == res.payload
        own = tiled.choose_parameters(q, valid, res.tile)  # the encoder's own choice
        np.testing.assert_array_equal(tiled.decode(tiled.encode(q, valid, own, res.tile), valid, own, res.tile), q)
        return
    b, c = valid.shape[:2]
    alpha, ref, gamma, stored_tables, ref2, gamma2 = hierarchical._read_params(res.params, b, c)
    with mock.patch.object(hierarchical, "choose_predictors", lambda *args: (alpha, ref, gamma, ref2, gamma2)), \
            mock.patch.object(hierarchical, "choose_tables", lambda *args: stored_tables.astype(np.uint8)):
        params, payload = hierarchical.encode(q, valid, anchor, step, res.tile)
    assert zlib.decompress(params) == zlib.decompress(res.params)
    assert payload == res.payload
    params, payload = hierarchical.encode(q, valid, anchor, step, res.tile)  # the encoder's own choice
    np.testing.assert_array_equal(hierarchical.decode(params, payload, valid, anchor, step, res.tile), q)


def test_residual_encoder_goldens_cover_both_coders():
    coders = {chunk.unpack(f.read_bytes())[0].residual.coder for f in RESIDUAL_GOLDENS}
    assert coders == {tiled.CODER, hierarchical.CODER}
