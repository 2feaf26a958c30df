"""Sentinel-2's SATURATED value (65535 in uint16 DN) is stored exactly, as a mask, and coded as missing data: a few
saturated pixels must neither decode to other values nor cost the pixels around them."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

import tec_zarr
import tec_zarr.pipeline
from tec_zarr import TEC, metrics
from tec_zarr.bitstream import chunk as bitstream
from tec_zarr.errors import CorruptChunkError

from common import assert_bound, check_golden

SATURATED = 65535


@pytest.fixture(scope="module")
def clear(image) -> np.ndarray:
    return np.ascontiguousarray(image[:, :128, :128])


@pytest.fixture(scope="module")
def spiked(clear) -> np.ndarray:
    """0.1 % of the pixels saturated in some bands, one bright cloud top saturated in every band."""
    a = clear.copy()
    rng = np.random.default_rng(0)
    where = rng.random(a.shape) < 1e-3
    a[where] = SATURATED
    a[:, 60:70, 30:45] = SATURATED
    return a


def others(a: np.ndarray) -> np.ndarray:
    return a != SATURATED


@pytest.mark.parametrize("model", ["tec-fp", "tec-ctx"])
def test_saturated_pixels_cost_their_neighbours_nothing(model, clear, spiked):
    ok = others(spiked)
    enc_clear = TEC(model=model).encode(clear)
    dec_clear = TEC(model=model).decode(enc_clear)
    enc = TEC(model=model).encode(spiked)
    dec = TEC(model=model).decode(enc)
    assert (dec[~ok] == SATURATED).all() and bitstream.unpack(enc)[0].saturated is not None
    # the other pixels as good as in the clear image (where it differs, the cloud top is missing from both)
    quality = metrics.psnr(np.where(ok, spiked, 0), np.where(ok, dec, 0))
    assert quality >= metrics.psnr(np.where(ok, clear, 0), np.where(ok, dec_clear, 0)) - 0.1
    assert len(enc) - len(bitstream.unpack(enc)[0].saturated) < 1.02 * len(enc_clear)  # the mask, little else


@pytest.mark.parametrize("max_error", [0, 4])
def test_bounds_hold_with_saturated_pixels(spiked, max_error):
    codec = TEC(max_error=max_error)
    assert_bound(spiked, codec.decode(codec.encode(spiked)), max_error)


def test_saturated_as_nodata_stays_nodata(spiked):
    enc = TEC(nodata=SATURATED).encode(spiked)
    assert bitstream.unpack(enc)[0].saturated is None
    assert (TEC(nodata=SATURATED).decode(enc)[spiked == SATURATED] == SATURATED).all()


def test_int16_has_no_saturated_mask(clear):
    as_int16 = np.where(clear > 32767, 32767, clear).astype(np.int16)
    assert bitstream.unpack(TEC().encode(as_int16))[0].saturated is None
    assert bitstream.unpack(TEC().encode(clear))[0].saturated is None  # nothing saturated: the old layout


@pytest.mark.parametrize("max_error", [None, 0])
def test_float32_dn_saturate_at_65535(clear, spiked, max_error):
    """DN loaded as float (stackstac rescale=False, float_scale=1) hold 65535.0; reflectance (float_scale 1e4)
    float32(6.5535). Both read back exactly, with NaN beside them."""
    for scale in (1.0, 1e4):
        values = (spiked.astype(np.float64) / scale).astype(np.float32)
        values[:, :5, :] = np.nan
        codec = TEC(float_scale=scale, nodata=None, max_error=max_error)
        enc = codec.encode(values)
        assert bitstream.unpack(enc)[0].saturated is not None
        dec = codec.decode(enc)
        hit = values == np.float32(SATURATED / scale)
        assert np.array_equal(dec[hit], values[hit]) and np.isnan(dec[:, :5]).all()
        ok = ~hit & ~np.isnan(values)
        if max_error == 0:
            assert np.array_equal(dec[ok], values[ok])
        else:
            assert metrics.psnr(values[ok], dec[ok], scale=10000 / scale) > 40


def test_thinning_keeps_saturated_pixels(spiked):
    thin = tec_zarr.thin(TEC(quality=4).encode(spiked), 0)
    assert (tec_zarr.pipeline.decode_chunk(thin)[spiked == SATURATED] == SATURATED).all()


def test_golden_saturated_chunks(spiked):
    """Chunks with a saturated mask decode the same in every run (regenerated only with
    TEC_ZARR_REGENERATE_GOLDEN=1)."""
    small = np.ascontiguousarray(spiked[:, 50:114, 20:116])
    check_golden(TEC(model="tec-fp"), [small], "saturated-tec-fp")
    check_golden(TEC(model="tec-ctx"), [small], "saturated-tec-ctx")
    check_golden(TEC(model="tec-fp", max_error=0), [small], "saturated-tec-fp-e0", max_abs_error=0)
    check_golden(TEC(model="tec-fp", float_scale=1, nodata=None), [small.astype(np.float32)], "saturated-tec-fp-float32-dn")
    # written with chunk extension tag 5 (saturation kept): the spiked chunk and a bright one with nothing saturated
    bright = np.minimum(spiked[:, :64, :64].astype(np.int64) + 60000, 65534).astype(np.uint16)
    bright[spiked[:, :64, :64] == SATURATED] = 65534
    check_golden(TEC(model="tec-fp"), [small, bright], "saturation-kept-tec-fp")


def replaced_extension(buf: bytes, value: bytes, tag: int = bitstream.EXTENSION_SATURATED) -> bytes:
    """``buf`` (a chunk whose extensions are its saturated mask and saturation kept) with the mask's tag and value
    replaced."""
    h = bitstream.unpack(buf)[0]
    kept = (bitstream.EXTENSION_SATURATION_KEPT, b"\x01")
    assert h.saturated is not None and h.saturation_kept and h.dn_offset == 0

    def field(pairs):
        return bytes([len(pairs)]) + b"".join(struct.pack("<BI", t, len(v)) + v for t, v in sorted(pairs))

    old = field([(bitstream.EXTENSION_SATURATED, h.saturated), kept])
    body = buf[:-4]
    assert body.count(old) == 1
    body = body.replace(old, field([(tag, value), kept]))
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("name", ["empty", "not zlib", "too few bits", "unknown tag"])
def test_hostile_saturated_masks_are_refused(spiked, name):
    buf = TEC().encode(np.ascontiguousarray(spiked[:, :32, :32]))
    value = {"empty": b"", "not zlib": b"\x78garbage", "too few bits": zlib.compress(b"\x00" * 10),
             "unknown tag": b"\x00"}[name]
    bad = replaced_extension(buf, value, tag=9 if name == "unknown tag" else bitstream.EXTENSION_SATURATED)
    with pytest.raises(CorruptChunkError):
        TEC().decode(bad)


def test_nothing_else_decodes_to_the_saturated_value(clear):
    """Bright chunks (a saturated mask, or valid values from 20000 DN up) carry chunk extension tag 5: no element
    outside the mask decodes to 65535, so a reader masking 65535 masks only what was saturated. Before, lossy
    values near the top of the range decoded to 65535 (here hundreds of them)."""
    from tec_zarr.pipeline.decode import parse

    bright = np.minimum(clear.astype(np.int64) + 60000, 65534).astype(np.uint16)  # no pixel saturated
    for max_error in (None, 3):
        buf = TEC(max_error=max_error).encode(bright)
        assert parse(buf).header.saturation_kept
        back = TEC().decode(buf, out=np.empty_like(bright))
        assert not (back == SATURATED).any()
        if max_error:
            assert_bound(bright, back, max_error)
    assert not parse(TEC().encode(clear)).header.saturation_kept  # ordinary reflectance: the layout as before
    # without the tag (chunks written before it) the decoder leaves such values as they are
    h, m, p = bitstream.unpack(TEC().encode(bright))
    from dataclasses import replace

    old = TEC().decode(bitstream.pack(replace(h, saturation_kept=False), m, p), out=np.empty_like(bright))
    assert (old == SATURATED).any()
    bad = bitstream.pack(h, m, p)[:-4].replace(bytes([bitstream.EXTENSION_SATURATION_KEPT]) + struct.pack("<I", 1)
                                               + b"\x01", bytes([bitstream.EXTENSION_SATURATION_KEPT])
                                               + struct.pack("<I", 1) + b"\x02")
    with pytest.raises(CorruptChunkError, match="saturation-kept"):
        TEC().decode(bad + struct.pack("<I", zlib.crc32(bad)))


def test_saturation_kept_never_moves_values_onto_nodata(spiked):
    """With nodata one step below the saturated value (65534) the move would make valid pixels nodata: such chunks
    are not marked, and a chunk marked anyway (hostile) is refused, as is one whose nodata is 65535."""
    from dataclasses import replace

    from tec_zarr.pipeline.decode import parse

    bright = np.minimum(spiked.astype(np.int64) + 60000, 65535).astype(np.uint16)
    bright[:4, :4, :4] = 65534
    buf = TEC(nodata=65534).encode(bright)
    assert not parse(buf).header.saturation_kept
    back = TEC(nodata=65534).decode(buf, out=np.empty_like(bright))
    np.testing.assert_array_equal(back == 65534, bright == 65534)
    h, m, p = bitstream.unpack(TEC().encode(bright))
    for nodata in (65534.0, 65535.0):
        with pytest.raises(CorruptChunkError, match="saturation-kept extension with nodata"):
            TEC().decode(bitstream.pack(replace(h, nodata=nodata), m, p))


def test_a_saturated_mask_in_an_int16_chunk_is_refused(clear):
    from dataclasses import replace

    buf = TEC().encode(np.minimum(clear, 32767).astype(np.int16))
    h, m, p = bitstream.unpack(buf)
    mask = bitstream.pack_mask(np.zeros((1, *clear.shape), bool))
    with pytest.raises(CorruptChunkError, match="uint16 and float32"):
        TEC().decode(bitstream.pack(replace(h, saturated=mask), m, p))


def test_inpainting_reads_saturated_pixels_as_unusable(cube):
    """Saturated elements of a date (a bright roof, a cloud top) do not steer the prediction of its masked pixels
    or of the next date's, and stay 65535 where they are not masked."""
    dates = np.ascontiguousarray(cube[:2, :, :64, :64])
    mask = np.zeros((2, 64, 64), bool)
    mask[1, 20:40, 20:40] = True
    plain = tec_zarr.inpaint(dates, mask)
    spiked = dates.copy()
    spiked[0, :, 24:30, 24:30] = SATURATED  # the reference date, under the target's cloud
    spiked[1, 3, 10, 10] = SATURATED  # a clear pixel of the target, one band
    filled = tec_zarr.inpaint(spiked, mask)
    assert filled[1, 3, 10, 10] == SATURATED and (filled[0, :, 24:30, 24:30] == SATURATED).all()
    hole = (slice(None), slice(20, 40), slice(20, 40))
    truth = dates[1][hole].astype(np.float64)
    assert metrics.psnr(truth, filled[1][hole]) > metrics.psnr(truth, plain[1][hole]) - 1.0
