"""The second model family: tec-fp-2 (tec-fp's architecture, trained further on every image) and the entropy models
built on its symbols. Its own names, its own files: tec-fp's family and every store written with it stay as they
were (their golden chunks decode in every run), while the new weights must code the held-out place in fewer bytes
at a higher PSNR, and their own golden chunks decode in every run too."""

from __future__ import annotations

import numpy as np
import pytest
from common import check_fewer_bytes_same_pixels, check_golden, check_model_goldens

from tec_zarr import TEC, metrics, models, pipeline
from tec_zarr.entropy import factorized

FP, FP2 = "tec-fp", "tec-fp-2"


@pytest.fixture(scope="module")
def crop(image) -> np.ndarray:
    return np.ascontiguousarray(image[:, :128, :128])


def test_tec_fp_2_is_its_own_verified_model():
    new, old = models.load_model(FP2), models.load_model(FP)
    assert type(new.coder) is factorized.FactorizedCoder
    assert new.card.bands == old.card.bands and new.card.manifest["config"] == old.card.manifest["config"]
    # new weights in every file: nothing of tec-fp's is reused, so tec-fp's stores cannot change
    assert not set(new.card.files.values()) & set(old.card.files.values())
    assert new.card.manifest["training"]["steps"] > old.card.manifest["training"]["steps"]
    assert new.card.manifest["training"]["augment"]["p_resample"] > 0  # the recipe travels with the weights


def test_manifest_rd_beats_tec_fp_at_every_quality():
    """The shipped manifests' RD, measured by the exporter with the runtime codec on the validation places."""
    new, old = models.get_card(FP2).qualities, models.get_card(FP).qualities
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a["validation"]["bpp"] < b["validation"]["bpp"] and a["validation"]["psnr"] > b["validation"]["psnr"]


@pytest.mark.parametrize("quality", [0, 2, 4])
def test_fewer_bytes_and_higher_psnr_on_the_held_out_place(image, quality):
    img = np.ascontiguousarray(image[:, :256, :256])
    coded = {m: pipeline.encode_chunk(img, model=m, quality=quality) for m in (FP, FP2)}
    psnr = {m: metrics.psnr(img, pipeline.decode_chunk(b)) for m, b in coded.items()}
    assert len(coded[FP2]) < 0.98 * len(coded[FP])
    assert psnr[FP2] > psnr[FP]
    assert pipeline.read_header(coded[FP2]).model == FP2


@pytest.mark.parametrize("model", [FP2, "tec-fp-3"])  # and the default since, tec-fp-2's asymmetric successor
@pytest.mark.parametrize("max_error", [0, 7])
def test_bounded_and_lossless(crop, max_error, model):
    codec = TEC(model=model, quality=1, max_error=max_error)
    assert metrics.max_error(crop, codec.decode(codec.encode(crop))) <= max_error


def test_golden_bitstreams(cube):
    check_model_goldens(FP2, cube)


# -- tec-ctx-2 and tec-tt-2: tec-ctx and tec-tt on tec-fp-2's symbols ---------------------------------------------------

CTX2, TT2 = "tec-ctx-2", "tec-tt-2"


def test_entropy_models_name_their_base():
    fp2 = models.get_card(FP2)
    ctx2 = models.get_card(CTX2)
    assert ctx2.manifest["base_model"] == {"name": FP2, "sha256": fp2.sha256}
    assert models.get_card(TT2).manifest["base_model"] == {"name": CTX2, "sha256": ctx2.sha256}
    for name in (CTX2, TT2):  # tec-fp-2's transforms and tables, byte for byte
        assert all(models.get_card(name).files[f] == fp2.files[f] for f in ("encoder.onnx", "decoder.onnx", "tables.npz"))


@pytest.mark.parametrize("quality", [0, 2, 4])
def test_fewer_bytes_for_tec_fp_2s_pixels(image, quality):
    check_fewer_bytes_same_pixels(np.ascontiguousarray(image[:, :128, :128]), FP2, (CTX2, TT2), quality)


def test_temporal_chunks_round_trip(cube):
    dates = np.ascontiguousarray(cube[:, :, :64, :64])
    coded = pipeline.encode_chunk(dates, model=TT2, quality=2)
    alone = [pipeline.decode_chunk(pipeline.encode_chunk(np.ascontiguousarray(d), model=FP2, quality=2)) for d in dates]
    np.testing.assert_array_equal(pipeline.decode_chunk(coded), np.stack(alone))  # same pixels, dates coded jointly


def test_golden_bitstreams_of_the_entropy_models(cube):
    check_golden(TEC(model=CTX2, quality=2), [np.ascontiguousarray(cube[1, :, :48, :40])], "tec-ctx-2-q2")
    check_golden(TEC(model=TT2, quality=1), [np.ascontiguousarray(cube[:, :, 16:48, 8:40])], "tec-tt-2-q1")
