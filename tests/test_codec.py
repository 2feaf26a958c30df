"""The numcodecs codec (zarr format 2) on real Sentinel-2 data the model never saw, and the CodecConfig behind it."""

from __future__ import annotations

import dataclasses
import pickle

import numcodecs
import numpy as np
import pytest

from common import check_config, check_encode_decode, check_golden, check_repr
from tec_zarr.bitstream import chunk as bitstream
from tec_zarr import TEC, metrics, pipeline
from tec_zarr.codec import CodecConfig, config
from tec_zarr.errors import (
    InvalidInputError,
    ModelMismatchError,
    TecZarrError,
    UnknownModelError,
    UnsupportedDtypeError,
)
from tec_zarr.models import DEFAULT_MODEL, get_card
from tec_zarr.zarr3 import TEC as TEC3

CARD = get_card(DEFAULT_MODEL)


def crop(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.ascontiguousarray(a[..., :h, :w])


# Mean PSNR of the default model (tec-fp-3) per quality on the sample's 128 x 128 crop, as measured (36.2, 39.35,
# 42.9, 47.0, 51.2 dB; tec-fp-2: 36.15, 39.2, 42.8, 47.1, 51.7; tec-fp: 35.9, 38.9, 42.5, 47.0, 51.7; odd sizes,
# int16 and float32 at the default level: 42.4 to 44.2 dB with tec-fp). The card's validation PSNR (another place)
# is 0.8 to 1.7 dB above these.
MEASURED_PSNR = (36.15, 39.35, 42.85, 46.95, 51.2)


def expected_psnr(quality: int) -> float:
    """What the codec measured on the sample, less 1 dB: a regression in the transforms or gains fails here."""
    return MEASURED_PSNR[quality] - 1.0


@pytest.mark.parametrize("quality", range(len(CARD.qualities)))
def test_round_trip_every_quality(image, quality):
    codec = TEC(quality=quality)
    check_encode_decode(codec, crop(image, 128, 128), min_psnr=expected_psnr(quality))


def test_rate_grows_with_quality(image):
    sizes = [len(TEC(quality=q).encode(crop(image, 128, 128))) for q in range(len(CARD.qualities))]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("shape", [(120, 120), (300, 260), (37, 5), (1, 1)])
def test_odd_sizes(cube, shape):
    h, w = shape
    tile = np.ascontiguousarray(np.tile(cube[0], (1, 2, 2))[:, :h, :w])
    dec = check_encode_decode(TEC(), tile, min_psnr=expected_psnr(CARD.default_quality))
    assert dec.shape == tile.shape


def test_batch_dims_match_single_images(cube):
    codec = TEC()
    batch = np.ascontiguousarray(cube[:, :, :64, :80])
    dec = codec.decode(codec.encode(batch))
    assert dec.shape == batch.shape
    for t in range(batch.shape[0]):
        single = codec.decode(codec.encode(np.ascontiguousarray(batch[t])))
        assert metrics.max_error(single, dec[t]) <= 1
    five_d = batch.reshape((2, 2) + batch.shape[1:])
    np.testing.assert_array_equal(codec.decode(codec.encode(five_d)).reshape(batch.shape), dec)


def test_nodata_exact_and_no_false_nodata(image):
    codec = TEC(nodata=0)
    a = crop(image, 96, 96).copy()
    a[:, 10:30, 40:90] = 0  # a nodata block in every band
    a[3, 50, 50] = 0  # a single nodata element in one band
    a[:, 60:70, 0:10] = 1  # valid pixels just above nodata: must not decode to it
    dec = codec.decode(codec.encode(a))
    np.testing.assert_array_equal(dec == 0, a == 0)
    assert (dec[:, 60:70, 0:10] >= 1).all()


def test_nodata_none_and_other_value(image):
    a = crop(image, 64, 64).copy()
    a[:, :8, :8] = 65535
    dec = TEC(nodata=65535).decode(TEC(nodata=65535).encode(a))
    np.testing.assert_array_equal(dec == 65535, a == 65535)
    dec = TEC(nodata=None).decode(TEC(nodata=None).encode(a))
    assert dec.shape == a.shape


def test_all_nodata_chunk(image):
    a = np.zeros((12, 40, 40), np.uint16)
    np.testing.assert_array_equal(TEC().decode(TEC().encode(a)), a)


def test_int16_and_float32(image):
    a16 = crop(image, 64, 64).astype(np.int16)
    check_encode_decode(TEC(), a16, min_psnr=expected_psnr(CARD.default_quality))
    refl = (crop(image, 64, 64) / 1e4).astype(np.float32)
    dec = check_encode_decode(TEC(), refl, min_psnr=expected_psnr(CARD.default_quality))
    assert dec.dtype == np.float32
    dn = crop(image, 64, 64).astype(np.float32)
    check_encode_decode(TEC(float_scale=1.0), dn, min_psnr=expected_psnr(CARD.default_quality))


def test_big_endian_chunks_are_refused_by_the_format_2_codec(image):
    """zarr views a format 2 chunk's decoded (native) bytes as the array's dtype, so a big-endian array would read
    back byte-swapped: the codec refuses such chunks (zarr_encoding stores native data); the pipeline takes them."""
    a = crop(image, 32, 32)
    with pytest.raises(InvalidInputError, match="byte order"):
        TEC().encode(a.astype(">u2"))
    assert pipeline.decode_chunk(pipeline.encode_chunk(a.astype(">u2"), model="tec-fp", quality=2)).dtype == np.uint16


def test_config_and_repr():
    codec = TEC(quality=1, nodata=None)
    check_config(codec)
    check_repr(codec, f"TEC(quality=1, model='{DEFAULT_MODEL}', nodata=None, float_scale=10000.0)")
    assert codec.get_config()["model_sha256"] == CARD.sha256
    assert TEC() == TEC(quality=CARD.default_quality, model=DEFAULT_MODEL, nodata=0)


def test_pickle_carries_config_not_sessions(image):
    codec = TEC(quality=1)
    codec.decode(codec.encode(crop(image, 16, 16)))  # sessions now exist in this process
    data = pickle.dumps(codec)
    assert len(data) < 1000 and b"onnxruntime" not in data
    assert pickle.loads(data) == codec


def test_codec_config_and_validation():
    for codec in (TEC(max_error=3), TEC(max_error=0.5), TEC(psnr=35.0), TEC(quality=1, max_error=0)):
        check_config(codec)
    # A bound without a quality takes base level 0 (config.BOUNDED_DEFAULT_QUALITY); a given quality is kept.
    check_repr(TEC(max_error=0), f"TEC(quality=0, model='{DEFAULT_MODEL}', nodata=0, float_scale=10000.0, max_error=0)")
    assert TEC(max_error=5).quality == TEC3(max_error=5).quality == 0
    assert TEC(quality=2, max_error=5).quality == TEC3(quality=2, max_error=5).quality == 2
    check_repr(TEC(psnr=35), f"TEC(quality=2, model='{DEFAULT_MODEL}', nodata=0, float_scale=10000.0, psnr=35.0)")
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


def test_codec_config_is_frozen_and_round_trips_json():
    c = CodecConfig.create(quality=1, max_error=2.0)
    assert c.max_error == 2 and isinstance(c.max_error, int)  # integral bounds are stored as integers
    assert c.model == DEFAULT_MODEL and c.model_sha256 == CARD.sha256 and c.psnr is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.quality = 2
    stored = c.to_json()
    assert list(stored) == ["id", *config.CONFIG_KEYS] and stored["id"] == "tec_zarr.tec"
    assert CodecConfig.from_json(stored) == c
    assert CodecConfig.from_json({k: v for k, v in stored.items() if k != "id"}) == c
    assert TEC(quality=1, max_error=2).get_config() == stored
    assert c.chunk_params() == {"model": DEFAULT_MODEL, "quality": 1, "nodata": 0, "float_scale": 10000.0,
                                "max_error": 2, "psnr": None, "dn_offset": 0, "refine": 0}
    for bad in ([], {"id": "other"}, {**stored, "qualty": 1}):
        with pytest.raises(InvalidInputError, match="Expected"):
            CodecConfig.from_json(bad)


def test_fill_value_nodata_is_zarr3_only():
    zarr3 = CodecConfig.create(nodata=config.FILL_VALUE, allow_fill_value=True)
    assert zarr3.nodata == config.FILL_VALUE and zarr3.chunk_params()["nodata"] is None
    with pytest.raises(InvalidInputError):
        CodecConfig.create(nodata=config.FILL_VALUE)
    with pytest.raises(InvalidInputError):
        TEC(nodata=config.FILL_VALUE)


def test_registered_under_prefixed_id():
    assert numcodecs.get_codec({"id": "tec_zarr.tec"}) == TEC()


def test_golden_bitstreams(cube):
    a = np.ascontiguousarray(cube[1, :, 100:164, 30:102])
    a[:, :5, :7] = 0
    b = np.ascontiguousarray(cube[2:4, :, :40, :48]).astype(np.int16)
    check_golden(TEC(model="tec-fp"), [a, b], "default")  # written when tec-fp was the default
    refl = np.ascontiguousarray(cube[0, :, :24, :32] / 1e4).astype(np.float32)
    check_golden(TEC(model="tec-fp", quality=0, nodata=None), [refl], "q0-float32")


# Bad inputs: each ends in the package's own error, never a crash or wrong pixels.

def test_wrong_dtype(image):
    for dtype in (np.uint8, np.int32, np.float64, np.uint32):
        with pytest.raises(UnsupportedDtypeError, match="Expected one of uint16"):
            TEC().encode(crop(image, 16, 16).astype(dtype))


@pytest.mark.parametrize("params", [{}, {"max_error": 0.0005}, {"max_error": 0}, {"nodata": None}])
def test_nan_is_missing_data(image, params):
    """float32 NaN is stored as a mask and read back as NaN, beside nodata; the other values as without NaN."""
    a = (crop(image, 40, 40) / 1e4).astype(np.float32)
    a[:, 30:, :] = np.nan  # a NaN-padded edge, as xarray writes partial float chunks
    a[2, 3, 4] = np.nan
    a[5, 6, 7] = 0.0  # nodata (default 0) beside NaN
    codec = TEC(**params)
    data = codec.encode(a)
    header = bitstream.unpack(data)[0]
    assert bitstream.unpack_sections(data).nan_mask is not None and header.shape == a.shape
    b = codec.decode(data)
    assert b.dtype == np.float32 and np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    if params.get("nodata", 0) == 0:
        assert b[5, 6, 7] == 0.0
    if "max_error" in params:
        assert np.abs(a[ok].astype(np.float64) - b[ok]).max() <= params["max_error"]
    else:
        assert metrics.psnr(np.nan_to_num(a), np.nan_to_num(b), scale=1e4) > 38.0  # measured 39.7-40.5
    # a chunk without NaN is written exactly as before: no NaN section
    clean = np.nan_to_num(a)
    assert bitstream.unpack_sections(codec.encode(clean)).nan_mask is None


def test_inf_is_refused(image):
    a = (crop(image, 16, 16) / 1e4).astype(np.float32)
    a[2, 3, 4] = np.inf
    with pytest.raises(InvalidInputError, match="infinity"):
        TEC().encode(a)


def test_non_c_order(image):
    with pytest.raises(InvalidInputError, match="C-contiguous"):
        TEC().encode(np.asfortranarray(image[:, :16, :16]))
    with pytest.raises(InvalidInputError, match="C-contiguous"):
        TEC().encode(image[:, ::2, ::2])


def test_wrong_band_count_and_rank(image):
    with pytest.raises(InvalidInputError, match="12, H, W"):
        TEC().encode(np.ascontiguousarray(image[:4, :16, :16]))
    with pytest.raises(InvalidInputError):
        TEC().encode(np.ascontiguousarray(image[0, :16, :16]))
    with pytest.raises(InvalidInputError):
        TEC().encode(crop(image, 0, 16))


def test_unknown_model_and_bad_parameters():
    with pytest.raises(UnknownModelError, match="no-such-model"):
        TEC(model="no-such-model")
    with pytest.raises(UnknownModelError):
        numcodecs.get_codec({"id": "tec_zarr.tec", "model": "tec-fp-v99"})
    for bad in ({"quality": 99}, {"quality": -1}, {"quality": 1.5}, {"nodata": float("nan")},
                {"float_scale": 0}, {"model_sha256": "xyz"}):
        with pytest.raises(InvalidInputError, match="Expected"):
            TEC(**bad)


def test_config_naming_other_weights_is_refused():
    with pytest.raises(ModelMismatchError, match="install the matching"):
        numcodecs.get_codec({"id": "tec_zarr.tec", "model": "tec-fp", "model_sha256": "0" * 64})


def test_nodata_not_representable(image):
    with pytest.raises(InvalidInputError, match="representable"):
        TEC(nodata=-1).encode(crop(image, 16, 16))
    with pytest.raises(InvalidInputError, match="representable"):
        TEC(nodata=0.5).encode(crop(image, 16, 16))


def test_out_of_wrong_size(image):
    codec = TEC()
    enc = codec.encode(crop(image, 16, 16))
    with pytest.raises(TecZarrError):
        codec.decode(enc, out=np.empty((12, 16, 15), np.uint16))


def test_bytes_instead_of_array():
    with pytest.raises(InvalidInputError):
        TEC().encode(b"\x00" * (12 * 16 * 16 * 2))
