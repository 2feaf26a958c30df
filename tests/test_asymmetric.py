"""tec-fp-3, the asymmetric default: tec-fp-2's analysis width, a synthesis of half its hidden channels, encoder and
synthesis trained together (new symbols, its own name). It must read faster than tec-fp-2 without losing quality at
the default quality; stores written with tec-fp-2 keep decoding through tec-fp-2 (their golden chunks)."""

from __future__ import annotations

import numpy as np
import pytest
from common import check_golden, check_model_goldens, log_bpp_at

from tec_zarr import TEC, metrics, models, pipeline
from tec_zarr.entropy import factorized

FP2, FP3 = "tec-fp-2", "tec-fp-3"


def test_tec_fp_3_is_the_default_and_its_own_verified_model():
    new, old = models.load_model(FP3), models.load_model(FP2)
    assert models.DEFAULT_MODEL == FP3 and TEC().model == FP3
    assert type(new.coder) is factorized.FactorizedCoder and new.card.bands == old.card.bands
    assert not set(new.card.files.values()) & set(old.card.files.values())  # tec-fp-2's stores cannot change
    config = new.card.manifest["config"]
    assert config["synthesis_channels"] == old.card.manifest["config"]["channels"] // 2
    assert config["channels"] == old.card.manifest["config"]["channels"]  # the encoder keeps its width
    assert "asymmetric" in new.card.manifest["architecture"]


def _synthesis_weights(model) -> int:
    graph = model.decoder.full if hasattr(model.decoder, "full") else model.decoder
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load_from_string(graph.data).graph.initializer)


def test_synthesis_has_about_half_the_weights():
    """The decoder's multiply-adds per pixel follow its weights (same layers, same strides): about half of tec-fp-2's."""
    pytest.importorskip("onnx")
    ratio = _synthesis_weights(models.load_model(FP3)) / _synthesis_weights(models.load_model(FP2))
    assert 0.4 < ratio < 0.6


def test_manifest_rd_no_worse_than_tec_fp_2_up_to_the_default_quality():
    """The shipped manifests' RD (the exporter, runtime codec, validation places): at qualities 0 to the default,
    tec-fp-3's points need no more bits than tec-fp-2's curve at the same PSNR."""
    new, old = models.get_card(FP3), models.get_card(FP2)
    for point in new.qualities[: new.default_quality + 1]:
        v = point["validation"]
        assert np.log(v["bpp"]) <= log_bpp_at(old.qualities, v["psnr"]) + 1e-3, point


def test_held_out_place_at_the_default_quality(image):
    """A held-out 256 x 256 image at the default quality: fewer bytes than tec-fp-2 at a higher PSNR."""
    img = np.ascontiguousarray(image[:, :256, :256])
    quality = models.get_card(FP3).default_quality
    coded = {m: pipeline.encode_chunk(img, model=m, quality=quality) for m in (FP2, FP3)}
    psnr = {m: metrics.psnr(img, pipeline.decode_chunk(b)) for m, b in coded.items()}
    assert pipeline.read_header(coded[FP3]).model == FP3
    assert len(coded[FP3]) < len(coded[FP2]) and psnr[FP3] > psnr[FP2], ({m: len(b) for m, b in coded.items()}, psnr)


def test_golden_bitstreams(cube):
    """(Bounded and lossless round trips: test_second_family's, run for tec-fp-3 too.)"""
    check_model_goldens(FP3, cube)
    refl = np.ascontiguousarray(cube[0, :, :24, :32] / 1e4).astype(np.float32)
    refl[:, :3, :5] = np.nan
    check_golden(TEC(model=FP3, quality=0, nodata=None), [refl], "tec-fp-3-q0-float32")
