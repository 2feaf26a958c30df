"""The temporal model tec-tt: chunks whose leading axis is time, later dates coded against the date before.

tec-tt is tec-ctx's transform, symbols and entropy networks plus a mixture-weight table, so its pixels are
tec-ctx's and only the bits differ. The bundled sample is four dates of a place no model (and no weight table) was
fitted on.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr

import tec_zarr
from common import check_golden, shuffled_matmul
from tec_zarr import TEC, metrics, models
from tec_zarr.bitstream import chunk
from tec_zarr.entropy import context, temporal
from tec_zarr.entropy.mixture import WEIGHT_ONE, MixedTables, sharpened
from tec_zarr.errors import CorruptChunkError, WeightsIntegrityError
from tec_zarr.models.registry import file_path
from tec_zarr.pipeline.decode import parse
from tec_zarr.runtime import onnx

TT, CTX = "tec-tt", "tec-ctx"


@pytest.fixture(scope="module")
def dates(cube) -> np.ndarray:
    """Five 'dates' of 48 x 64: the sample's four, then the first again."""
    c = np.ascontiguousarray(cube[:, :, 100:148, 60:124])
    return np.concatenate([c, c[:1]])


def symbols_of(buf: bytes) -> np.ndarray:
    """A chunk's latent symbols (missing positions skipped as the chunk says)."""
    return parse(buf).symbols


def payload_of(buf: bytes) -> bytes:
    return chunk.unpack(buf)[2]


def test_manifest_is_tec_ctx_plus_a_temporal_file():
    tt, ctx = models.get_card(TT), models.get_card(CTX)
    assert tt.manifest["entropy_model"] == "temporal" and tt.manifest["base_model"]["sha256"] == ctx.sha256
    for f, digest in ctx.files.items():
        assert tt.files[f] == digest and file_path(tt, f).read_bytes() == file_path(ctx, f).read_bytes()
    assert set(tt.files) == set(ctx.files) | {temporal.FILENAME}


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5])
def test_round_trip_any_number_of_dates_same_symbols_as_tec_ctx(dates, t):
    cube = np.ascontiguousarray(dates[:t])
    enc = TEC(model=TT, quality=2).encode(cube)
    dec = TEC(model=TT).decode(enc)
    assert dec.shape == cube.shape and dec.dtype == cube.dtype
    per_date = [TEC(model=CTX, quality=2).encode(cube[i : i + 1]) for i in range(t)]
    np.testing.assert_array_equal(symbols_of(enc), np.concatenate([symbols_of(b) for b in per_date]))
    for i, b in enumerate(per_date):  # the same symbols through the same decoder: the same pixels
        assert metrics.max_error(dec[i : i + 1], TEC(model=CTX).decode(b)) <= 1


def test_one_date_has_tec_ctx_symbols_in_fewer_bits(cube):
    """T = 1: the fine means alone; the same symbols as tec-ctx, never more bits on the held-out sample."""
    one = np.ascontiguousarray(cube[1:2, :, :128, :128])
    for quality in (1, 3):
        tt, ctx = TEC(model=TT, quality=quality).encode(one), TEC(model=CTX, quality=quality).encode(one)
        np.testing.assert_array_equal(symbols_of(tt), symbols_of(ctx))
        assert len(payload_of(tt)) < len(payload_of(ctx))


@pytest.mark.parametrize("quality", [1, 3])
def test_later_dates_cost_less_than_coding_each_date_alone(cube, quality):
    """The sample's own place was never fitted on: four 128 x 128 dates in one chunk against four chunks."""
    seq = np.ascontiguousarray(cube[:, :, :128, :128])
    together = len(payload_of(TEC(model=TT, quality=quality).encode(seq)))
    alone = sum(len(payload_of(TEC(model=CTX, quality=quality).encode(seq[i : i + 1]))) for i in range(4))
    assert together < 0.99 * alone


def test_nodata_and_clouds_on_some_dates(dates):
    cube = dates[:4].copy()
    cube[1, :, :30, :20] = 0  # swath edge on date 2
    cube[3, :, 10:40, 30:] = 0  # another on date 4
    enc = TEC(model=TT, quality=1).encode(cube)
    dec = TEC(model=TT).decode(enc)
    missing = cube == 0
    assert (dec[missing] == 0).all() and (dec[~missing] != 0).all()
    assert metrics.psnr(cube[~missing], dec[~missing]) > 38
    per_date = np.concatenate([symbols_of(TEC(model=CTX, quality=1).encode(cube[i : i + 1])) for i in range(4)])
    np.testing.assert_array_equal(symbols_of(enc), per_date)


def test_float32_cube_with_nan_and_error_bound(dates):
    cube = dates[:3].astype(np.float32) / np.float32(1e4)
    cube[2, :, 5:9, 7:30] = np.nan
    codec = TEC(model=TT, max_error=1e-3)
    dec = codec.decode(codec.encode(cube))
    assert np.array_equal(np.isnan(dec), np.isnan(cube))
    assert np.nanmax(np.abs(dec - cube)) <= 1e-3


def test_lossless_and_bounded_chunks(dates):
    cube = np.ascontiguousarray(dates[:3])
    for bound in (0, 7):
        codec = TEC(model=TT, max_error=bound)
        assert metrics.max_error(cube, codec.decode(codec.encode(cube))) <= bound


@pytest.mark.parametrize("name", ["tec-tt-q2", "tec-tt-nodata-q0"])
def test_golden_temporal_chunks(dates, name):
    """Temporal chunks decode the same in every run (regenerated only with TEC_ZARR_REGENERATE_GOLDEN=1)."""
    cube = dates[:3, :, :40, :52].copy()
    quality = 2
    if "nodata" in name:
        cube[1, :, 20:, :30] = 0
        quality = 0
    check_golden(TEC(model=TT, quality=quality), [cube], name)


def test_symbols_do_not_depend_on_summation_order(dates):
    """Every probability is integer arithmetic: another exact summation order decodes the same symbols."""
    cube = np.ascontiguousarray(dates[:3])
    enc = TEC(model=TT, quality=2).encode(cube)
    header, _, payload = chunk.unpack(enc)
    coder = models.load_model(TT).coder
    expected = coder.decode(payload, 2, (header.batch,) + header.latent)
    real = context.run_steps

    def shuffled(*args, **kwargs):
        return real(*args, **{**kwargs, "matmul": shuffled_matmul(7)})

    try:
        temporal.run_steps = shuffled
        np.testing.assert_array_equal(coder.decode(payload, 2, (header.batch,) + header.latent), expected)
    finally:
        temporal.run_steps = real


def test_symbols_never_touch_onnxruntime_and_survive_other_settings(dates, monkeypatch):
    """Decoding a temporal chunk's symbols runs no float graph; other onnxruntime settings change no symbol."""
    cube = np.ascontiguousarray(dates[:3])
    enc = TEC(model=TT, quality=1).encode(cube)
    expected, pixels = symbols_of(enc), TEC(model=TT).decode(enc)

    def refuse(*args, **kwargs):
        raise AssertionError("no onnxruntime call may decide a symbol")

    with monkeypatch.context() as m:
        m.setattr(onnx, "run", refuse)
        m.setattr(onnx, "session", refuse)
        np.testing.assert_array_equal(symbols_of(enc), expected)
    monkeypatch.setattr(onnx, "GRAPH_OPTIMIZATION", "ORT_DISABLE_ALL")
    monkeypatch.setattr(onnx, "_sessions", {})
    np.testing.assert_array_equal(symbols_of(enc), expected)
    assert metrics.max_error(TEC(model=TT).decode(enc), pixels) <= 1


def test_corrupt_and_truncated_temporal_chunks_are_refused(dates):
    enc = bytearray(TEC(model=TT, quality=2).encode(np.ascontiguousarray(dates[:4])))
    header, _, payload = chunk.unpack(bytes(enc))
    coder = models.load_model(TT).coder
    shape = (header.batch,) + header.latent
    with pytest.raises(CorruptChunkError):
        coder.decode(payload[: len(payload) // 2], 2, shape)
    with pytest.raises(CorruptChunkError):
        coder.decode(payload[:-8], 2, shape)
    damaged = bytearray(payload)
    damaged[len(damaged) // 2] ^= 0xFF
    try:
        got = coder.decode(bytes(damaged), 2, shape)
    except CorruptChunkError:
        pass
    else:  # a range coder cannot always tell: then the symbols are still within int32 and of the right shape
        assert got.shape == shape and got.dtype == np.int32


@pytest.mark.parametrize("sharpen", [0, 8, 1024])
def test_mixture_tables_are_positive_and_sum_as_stated(sharpen):
    fine = _fine()
    mixed = MixedTables(fine, 12, sharpened(fine.count // 9, 8, sharpen))
    rng = np.random.default_rng(sharpen)
    for _ in range(300):
        t, d, w = int(rng.integers(fine.count)), int(rng.integers(-12, 13)), int(rng.integers(0, WEIGHT_ONE))
        key = int(mixed.keys(np.array(t), np.array(d), np.array(w)))
        pmf = mixed.pmf(key)
        assert len(pmf) == mixed.lengths[key] and (pmf > 0).all()
        u = max(t // 9 - sharpen, 0) * 9 + 8  # the integer-centred table of a scale as wide or narrower
        if w == 0 or (d == 0 and u == t):  # the fine table itself
            np.testing.assert_array_equal(pmf, fine.pmf[t, : fine.lengths[t]])
        else:  # both components' mass, plus a count of 1 per symbol in a gap between their supports
            assert pmf.sum() >= WEIGHT_ONE << 16 and pmf.sum() - (WEIGHT_ONE << 16) <= abs(d) + 1
        # the budget's lower bound holds: no symbol costs fewer bits than min_bits
        assert 16 + np.log2(pmf.sum() / (1 << 16)) - np.log2(pmf.max()) >= mixed.min_bits[key]
        assert mixed.offsets[key] <= min(fine.offsets[t], fine.offsets[u] + d) or w == 0 or (d == 0 and u == t)
    # beyond the maximum shift, or weight 0: the fine table itself
    far = int(mixed.keys(np.array(5), np.array(40), np.array(9)))
    assert far == int(mixed.keys(np.array(5), np.array(0), np.array(0))) and mixed.lengths[far] == fine.lengths[5]


def test_identical_dates_take_the_trusting_set_and_cost_little(dates):
    """A repeated acquisition: the encoder picks a set that trusts the previous date, and the repeat is cheap."""
    same = np.ascontiguousarray(np.stack([dates[0], dates[0], dates[1]]))
    enc = TEC(model=TT, quality=2).encode(same)
    one = len(payload_of(TEC(model=TT, quality=2).encode(same[:1])))
    two = len(payload_of(TEC(model=TT, quality=2).encode(same[:2])))
    assert two - one < 0.3 * one
    np.testing.assert_array_equal(symbols_of(enc), np.concatenate([symbols_of(
        TEC(model=CTX, quality=2).encode(same[i : i + 1])) for i in range(3)]))


def _fine():
    return models.load_model(TT).coder.temporal.fine


GOOD_TABLE = {"weights": np.zeros((2, 5, 192, 26, 5), np.int64), "sharpen": (0, 8), "index_bucket": 4,
              "max_shift": 12, "fraction_bits": 3, "coarse": np.zeros((5, 104), bool),
              "mixed_slot": np.array([2, 2, 2, 2, 5, 5, 5, 5, 8])}


@pytest.mark.parametrize("bad", [
    {"weights": np.full((2, 5, 192, 26, 5), 16)},
    {"weights": np.zeros((5, 192, 26, 5))},
    {"weights": np.zeros((17, 5, 192, 26, 5), np.int64), "sharpen": (0,) * 17},
    {"sharpen": (0,)},
    {"sharpen": (0, -1)},
    {"index_bucket": 0},
    {"max_shift": 1000},
    {"fraction_bits": 9},
    {"coarse": np.zeros((5, 103), bool)},
    {"mixed_slot": np.array([2, 2, 2, 2, 5, 5, 5, 5, 9])},
    {"mixed_slot": np.zeros(8, np.int64)},
])
def test_hostile_weight_tables_are_refused(bad):
    with pytest.raises(WeightsIntegrityError):
        temporal.TemporalModel(**{**GOOD_TABLE, "fine": _fine(), **bad})


def test_weight_tables_round_trip_and_damaged_files_are_refused():
    model = temporal.TemporalModel(**GOOD_TABLE, fine=_fine())
    data = model.to_npz()
    back = temporal.TemporalModel.from_npz(data)
    assert back.sharpen == model.sharpen and np.array_equal(back.weights, model.weights)
    assert np.array_equal(back.fine.pmf, model.fine.pmf) and np.array_equal(back.fine.offsets, model.fine.offsets)
    with pytest.raises(WeightsIntegrityError):
        temporal.TemporalModel.from_npz(b"not an npz")
    with np.load(io.BytesIO(data)) as z:
        arrays = dict(z)
    for damage in ({"fine_lengths": arrays["fine_lengths"] + 1}, {"fine_counts": arrays["fine_counts"][:-1]},
                   {"fine_counts": np.zeros_like(arrays["fine_counts"])}):
        buf = io.BytesIO()
        np.savez(buf, **{**arrays, **damage})
        with pytest.raises(WeightsIntegrityError):
            temporal.TemporalModel.from_npz(buf.getvalue())


def test_weight_table_must_fit_the_hyperprior():
    ctx = models.load_model(CTX).coder
    with pytest.raises(WeightsIntegrityError):
        temporal.TemporalCoder(ctx.hyperprior, ctx.analysis, ctx.context, temporal.TemporalModel(
            **{**GOOD_TABLE, "fine": _fine(), "weights": np.zeros((2, 5, 192, 3, 5), np.int64)}))
    with pytest.raises(WeightsIntegrityError):  # fine tables for another number of fractions
        temporal.TemporalCoder(ctx.hyperprior, ctx.analysis, ctx.context,
                               temporal.TemporalModel(**{**GOOD_TABLE, "fine": _fine(), "fraction_bits": 2}))


@pytest.mark.parametrize("model", [TT, "tec-tt-3"])  # and the README's example, the temporal model on the default
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_cube_chunked_by_time(cube, tmp_path, zarr_format, model):
    """A (time, band, y, x) cube in chunks of 3 dates (the last chunk holds one) and partial spatial chunks."""
    data = np.concatenate([cube, cube[:1]])[:, :, :70, :90]
    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), data)},
                    coords={"band": list(tec_zarr.bands.S2_L2A_BANDS)})
    encoding = tec_zarr.zarr_encoding(ds, model=model, quality=2, chunks={"time": 3, "y": 64, "x": 64},
                                      zarr_format=zarr_format)
    ds.to_zarr(tmp_path / "c.zarr", encoding=encoding, zarr_format=zarr_format, consolidated=False)
    back = xr.open_zarr(tmp_path / "c.zarr", consolidated=False)["reflectance"].values
    assert back.shape == data.shape and metrics.psnr(data, back) > 40


def test_info_names_the_temporal_model(dates, tmp_path):
    from tec_zarr.cli.commands import info_text

    import zarr

    group = zarr.open_group(tmp_path / "t.zarr", mode="w", zarr_format=2)
    z = group.create_array("cube", shape=(4, 12, 48, 64), chunks=(2, 12, 48, 64), dtype="uint16",
                           compressors=TEC(model=TT, quality=2))
    z[:] = dates[:4]
    text = info_text(str(tmp_path / "t.zarr"))
    assert TT in text and "2 dates per chunk" in text
    one = group.create_array("single", shape=(2, 12, 48, 64), chunks=(1, 12, 48, 64), dtype="uint16",
                             compressors=TEC(model=TT, quality=2))
    one[:] = dates[:2]
    text = info_text(str(tmp_path / "t.zarr"))
    assert "1 date per chunk (leading axes): no date is coded against another" in text


def cli_dates(tmp_path, dates: int, asked: int) -> int:
    """Dates per chunk `tec compress --dates asked` writes for an input of ``dates`` dates."""
    from tec_zarr import cli, sample

    ds = sample.load_dataset().isel(time=slice(0, dates), y=slice(0, 16), x=slice(0, 16))
    ds.to_zarr(tmp_path / f"in{dates}.zarr", zarr_format=3, consolidated=False)
    out = tmp_path / f"out{dates}-{asked}.zarr"
    assert cli.main(["compress", str(tmp_path / f"in{dates}.zarr"), str(out), "--model", TT, "--dates", str(asked),
                     "--quiet"]) == 0
    return xr.open_zarr(out, consolidated=False)["reflectance"].encoding["chunks"][0]


def test_cli_writes_time_series_chunks(tmp_path, capsys):
    from tec_zarr import cli, sample

    ds = sample.load_dataset().isel(y=slice(0, 40), x=slice(0, 52))
    ds.to_zarr(tmp_path / "in.zarr", zarr_format=3, consolidated=False)
    out = tmp_path / "tt.zarr"
    assert cli.main(["compress", str(tmp_path / "in.zarr"), str(out), "--model", TT, "--dates", "4", "--quiet"]) == 0
    back = xr.open_zarr(out, consolidated=False)["reflectance"]
    assert back.encoding["chunks"][0] == 4
    assert metrics.psnr(ds["reflectance"].values, back.values) > 40
    assert cli.main(["info", str(out)]) == 0
    assert "4 dates per chunk" in capsys.readouterr().out
    assert cli_dates(tmp_path, 3, 4) == 4  # a shorter input keeps the dates asked for (appends fill the chunk)
    assert cli.main(["compress", str(tmp_path / "in.zarr"), str(tmp_path / "x.zarr"), "--dates", "0"]) == 2
    assert "--dates N in 1..64" in capsys.readouterr().err
    ds.isel(time=0).to_zarr(tmp_path / "one.zarr", zarr_format=3, consolidated=False)
    assert cli.main(["compress", str(tmp_path / "one.zarr"), str(tmp_path / "y.zarr"), "--dates", "2"]) == 2
    assert "has no time axis" in capsys.readouterr().err


def test_built_mixture_models_stay_bounded(dates, monkeypatch):
    """A reader that lives for days keeps at most MODEL_CACHE mixture models per set, and still decodes the same."""
    from tec_zarr.entropy import mixture

    cube = np.ascontiguousarray(dates[:3])
    enc = TEC(model=TT, quality=2).encode(cube)
    expected = symbols_of(enc)
    monkeypatch.setattr(mixture, "MODEL_CACHE", 4)
    coder = models.load_model(TT).coder
    for mixed in coder.mixed:
        mixed._models.clear()
    np.testing.assert_array_equal(symbols_of(enc), expected)
    assert all(len(mixed._models) <= 4 for mixed in coder.mixed)
    assert any(len(mixed._models) == 4 for mixed in coder.mixed)


def test_too_many_dates_are_refused_before_any_work(dates):
    """Dates decode one after another: a chunk declaring more than MAX_DATES is refused, and never written."""
    from tec_zarr.errors import InvalidInputError

    coder = models.load_model(TT).coder
    enc = TEC(model=TT, quality=0).encode(np.ascontiguousarray(dates[:2, :, :16, :16]))
    payload = payload_of(enc)
    with pytest.raises(CorruptChunkError):  # here the z section's budget refuses it first
        coder.decode(payload, 0, (temporal.MAX_DATES + 1, 192, 4, 4))
    with pytest.raises(CorruptChunkError, match="at most 256 dates"):  # a payload long enough for z
        coder.read_y(None, None, None, 0, (temporal.MAX_DATES + 1, 192, 4, 4), None)
    many = np.broadcast_to(dates[:1, :, :4, :4], (temporal.MAX_DATES + 1, 12, 4, 4)).copy()
    with pytest.raises(InvalidInputError, match="at most 256 dates"):
        TEC(model=TT, quality=0).encode(many)
