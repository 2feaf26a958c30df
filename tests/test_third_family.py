"""The entropy models on tec-fp-3's symbols: tec-ctx-3 (tec-ctx-2's networks trained further on tec-fp-3's latents)
and tec-tt-3 (the temporal tables fitted again on tec-ctx-3). Same pixels as the default model, fewer bits; names and
files of their own, so stores written with tec-ctx-2 and tec-tt-2 decode as before (their golden chunks)."""

from __future__ import annotations

import numpy as np
import pytest
from common import check_fewer_bytes_same_pixels, check_golden, check_model_goldens, log_bpp_at

from tec_zarr import TEC, metrics, models, pipeline
from tec_zarr.bitstream import chunk
from tec_zarr.entropy.context import ContextCoder
from tec_zarr.entropy.temporal import TemporalCoder
from tec_zarr.pipeline.decode import parse

FP3, CTX3, TT3 = "tec-fp-3", "tec-ctx-3", "tec-tt-3"
CTX2, TT2 = "tec-ctx-2", "tec-tt-2"


def test_entropy_models_name_their_base_and_share_its_transforms():
    fp3, ctx3 = models.get_card(FP3), models.get_card(CTX3)
    assert ctx3.manifest["base_model"] == {"name": FP3, "sha256": fp3.sha256}
    assert models.get_card(TT3).manifest["base_model"] == {"name": CTX3, "sha256": ctx3.sha256}
    for name in (CTX3, TT3):  # tec-fp-3's graphs, integer synthesis and tables, byte for byte
        card = models.get_card(name)
        assert all(card.files[f] == fp3.files[f] for f in fp3.files), name
    assert type(models.load_model(CTX3).coder) is ContextCoder
    assert type(models.load_model(TT3).coder) is TemporalCoder


def test_new_weights_leave_the_second_familys_files_alone():
    """tec-ctx-2's entropy networks are not tec-ctx-3's, so nothing written with tec-ctx-2 can change."""
    old, new = models.get_card(CTX2).files, models.get_card(CTX3).files
    assert old["context.npz"] != new["context.npz"] and old["hyperprior.npz"] != new["hyperprior.npz"]
    assert models.get_card(TT2).files["temporal.npz"] != models.get_card(TT3).files["temporal.npz"]


@pytest.mark.parametrize("quality", [0, 1, 2, 3, 4])
def test_manifest_rd_beats_tec_ctx_2(quality):
    """The exporters' measurement on the held-out places (runtime codec): at every quality tec-ctx-3 needs fewer
    bits than tec-ctx-2's curve at the same PSNR."""
    point = models.get_card(CTX3).qualities[quality]["validation"]
    assert np.log(point["bpp"]) < log_bpp_at(models.get_card(CTX2).qualities, point["psnr"])


@pytest.mark.parametrize("quality", [0, 2, 4])
def test_fewer_bytes_for_the_defaults_pixels(image, quality):
    check_fewer_bytes_same_pixels(np.ascontiguousarray(image[:, :128, :128]), FP3, (CTX3, TT3), quality)


@pytest.mark.parametrize("dates", [1, 2, 5])
def test_temporal_chunks_round_trip_with_the_defaults_symbols(cube, dates):
    """Every date's symbols are tec-fp-3's exactly; pixels within 1 DN (the float synthesis runs on a stack of dates
    there, on one date alone here)."""
    seq = np.ascontiguousarray(cube[np.arange(dates) % cube.shape[0], :, :48, :64])
    coded = pipeline.encode_chunk(seq, model=TT3, quality=1)
    alone = [pipeline.encode_chunk(np.ascontiguousarray(d), model=FP3, quality=1) for d in seq]
    np.testing.assert_array_equal(parse(coded).symbols, np.concatenate([parse(b).symbols for b in alone]))
    decoded = pipeline.decode_chunk(coded)
    assert decoded.shape == seq.shape
    assert metrics.max_error(decoded, np.stack([pipeline.decode_chunk(b) for b in alone])) <= 1


def test_later_dates_cost_less_than_coding_them_alone(cube):
    """Payloads (no headers): a 4-date chunk against the same model one date per chunk (its fine means alone), which
    in turn needs fewer bits than tec-ctx-3."""
    seq = np.ascontiguousarray(cube[:, :, :128, :128])

    def payload(a, model):
        return len(chunk.unpack(pipeline.encode_chunk(np.ascontiguousarray(a), model=model, quality=2))[2])

    joint = payload(seq, TT3)
    one_date = sum(payload(d, TT3) for d in seq)
    assert joint < one_date < sum(payload(d, CTX3) for d in seq)


def test_held_out_place_fewer_bytes_than_tec_ctx_2_at_a_higher_psnr(image):
    img = np.ascontiguousarray(image[:, :256, :256])
    coded = {m: pipeline.encode_chunk(img, model=m, quality=2) for m in (CTX2, CTX3)}
    psnr = {m: metrics.psnr(img, pipeline.decode_chunk(b)) for m, b in coded.items()}
    assert len(coded[CTX3]) < len(coded[CTX2]) and psnr[CTX3] > psnr[CTX2], ({m: len(b) for m, b in coded.items()}, psnr)


@pytest.mark.parametrize("model", [CTX3, TT3])
@pytest.mark.parametrize("max_error", [0, 7])
def test_bounded_and_lossless(cube, model, max_error):
    crop = np.ascontiguousarray(cube[:2, :, :64, :64] if model == TT3 else cube[1, :, :64, :64])
    codec = TEC(model=model, quality=1, max_error=max_error)
    assert metrics.max_error(crop, codec.decode(codec.encode(crop))) <= max_error


def test_golden_bitstreams(cube):
    check_model_goldens(CTX3, cube)
    check_golden(TEC(model=TT3, quality=1), [np.ascontiguousarray(cube[:, :, 16:48, 8:40])], "tec-tt-3-q1")

