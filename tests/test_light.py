"""The light models: tec-fp-lite and tec-fp-half (tec-fp's analysis, gains and tables with a lighter synthesis of their
own) and tec-fp-2-half (the same for tec-fp-2, whose own synthesis still decodes the qualities where the light one
would lose). Each writes its base's payload byte for byte under its own name, decodes it through its own (gathered)
graphs, stays within the quality its card states, and its golden chunks decode in every run."""

from __future__ import annotations

import numpy as np
import pytest
from common import check_golden

from tec_zarr import TEC, metrics, pipeline
from tec_zarr.bitstream.chunk import unpack
from tec_zarr.models import get_card, load_model
from tec_zarr.pipeline.decode import finish, parse
from tec_zarr.pipeline.thin import thin_chunk
from tec_zarr.runtime.gathered import GatheredGraph

LITE, HALF, HALF2 = "tec-fp-lite", "tec-fp-half", "tec-fp-2-half"
BASES = {LITE: "tec-fp", HALF: "tec-fp", HALF2: "tec-fp-2"}
# each light model and the names of its layers that read the latents (run on the nonzero channels)
READERS = {LITE: {"project.weight", "s_lin.weight"}, HALF: {"g_s.0.weight", "s_lin.weight"},
           HALF2: {"g_s.0.weight", "s_lin.weight"}}
# the qualities each decodes through its base's own synthesis (decoders.json)
BASE_SYNTHESIS_AT = {LITE: (), HALF: (), HALF2: (3, 4)}


@pytest.fixture(params=sorted(READERS))
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def crop(image) -> np.ndarray:
    return np.ascontiguousarray(image[:, :128, :128])


@pytest.mark.parametrize("quality", range(5))
def test_writes_the_base_payload_under_its_own_name(crop, quality, name):
    base_name = BASES[name]
    lite = pipeline.encode_chunk(crop, model=name, quality=quality)
    base = pipeline.encode_chunk(crop, model=base_name, quality=quality)
    assert unpack(lite)[2] == unpack(base)[2]  # same symbols, same bits
    header = pipeline.read_header(lite)
    assert (header.model, header.quality) == (name, quality)
    assert len(lite) - len(base) == len(name) - len(base_name)  # only the name in the header differs


def test_shares_every_file_but_the_decoder(name):
    lite, base = get_card(name), get_card(BASES[name])
    own = {"decoder.onnx", "base-decoder.onnx", "decoders.json"}
    assert {f: d for f, d in lite.files.items() if f not in own} == \
        {f: d for f, d in base.files.items() if f != "decoder.onnx"}
    assert lite.files["decoder.onnx"] != base.files["decoder.onnx"]
    assert lite.manifest["base_model"] == {"name": base.name, "sha256": base.sha256}
    if BASE_SYNTHESIS_AT[name]:
        assert lite.files["base-decoder.onnx"] == base.files["decoder.onnx"]
        assert tuple(lite.manifest["base_synthesis_at"]) == BASE_SYNTHESIS_AT[name]
    else:
        assert own & set(lite.files) == {"decoder.onnx"}


def test_decoder_runs_on_the_nonzero_channels(crop, name):
    decoder = load_model(name).decoder
    assert isinstance(decoder, GatheredGraph) and set(decoder.weights) == READERS[name]
    for quality in (0, 4):
        y = parse(pipeline.encode_chunk(crop, model=name, quality=quality)).y_hat()
        assert y.any(axis=(0, 2, 3)).sum() < y.shape[1]
        np.testing.assert_allclose(decoder.run(y), decoder.full.run(y), rtol=0, atol=1e-4)


def through_its_synthesis(buf) -> np.ndarray:
    """A lossy chunk's pixels computed here from its model's own light decoder graph."""
    parsed = parse(buf)
    return finish(parsed, parsed.model.decoder.run(parsed.y_hat()))


@pytest.mark.parametrize("quality", range(5))
def test_each_quality_decodes_through_the_synthesis_its_model_names(crop, name, quality):
    """The light synthesis, except at the qualities its model keeps its base's synthesis for: there the very pixels
    of the base model (same graph, same symbols)."""
    buf = pipeline.encode_chunk(crop, model=name, quality=quality)
    decoded = pipeline.decode_chunk(buf)
    if quality in BASE_SYNTHESIS_AT[name]:
        np.testing.assert_array_equal(decoded, pipeline.decode_chunk(
            pipeline.encode_chunk(crop, model=BASES[name], quality=quality)))
        assert load_model(name).decoder_for(quality).sha256 == get_card(BASES[name]).files["decoder.onnx"]
    else:
        np.testing.assert_array_equal(decoded, through_its_synthesis(buf))


def test_decodes_through_its_own_synthesis_alone_batched_and_thinned(crop, name):
    lite, base = (pipeline.encode_chunk(crop, model=m, quality=2) for m in (name, BASES[name]))
    alone = [pipeline.decode_chunk(b) for b in (lite, base)]
    np.testing.assert_array_equal(alone[0], through_its_synthesis(lite))
    assert not np.array_equal(alone[0], alone[1])
    for got, expected in zip(pipeline.decode_chunks([lite, base, lite]), [*alone, alone[0]], strict=True):
        np.testing.assert_array_equal(got, expected)  # one stack per graph: tec-fp's chunk never runs through ours
    thinned = thin_chunk(lite, 0)
    assert pipeline.read_header(thinned).model == name
    np.testing.assert_array_equal(pipeline.decode_chunk(thinned), through_its_synthesis(thinned))


@pytest.mark.parametrize("max_error", [0, 40])
def test_error_bounded_chunks_decode_from_the_shared_integer_synthesis(crop, max_error, name):
    """max_error and lossless chunks predict from tec-fp's synthesis_int.npz, which the light models ship unchanged:
    within the bound (exact at 0), the same payload and the same pixels as tec-fp's chunk."""
    a = np.ascontiguousarray(crop[:, :64, :72])
    lite, base = (pipeline.encode_chunk(a, model=m, quality=2, max_error=max_error) for m in (name, BASES[name]))
    assert pipeline.read_header(lite).model == name and unpack(lite)[2] == unpack(base)[2]
    decoded = pipeline.decode_chunk(lite)
    assert metrics.max_error(a, decoded) <= max_error
    np.testing.assert_array_equal(decoded, pipeline.decode_chunk(base))


def test_quality_within_what_its_card_states(crop, name):
    """Same bits as its base; PSNR on this held-out crop within 0.6 dB of what the card measured against the base per
    quality (the card: the mean over the validation places' 8 images; this crop: one of them, so the difference
    carries over, give or take the spread between images: at quality 4 tec-fp-half's lies 0.5-0.6 dB either side
    of its mean)."""
    card, base = get_card(name), BASES[name]
    previous = None
    for q in card.qualities:
        stated = q["validation"]["psnr"] - q["validation"][f"{base}_psnr"]
        got = [metrics.psnr(crop, pipeline.decode_chunk(pipeline.encode_chunk(crop, model=m, quality=q["quality"])))
               for m in (name, base)]
        assert got[0] - got[1] >= stated - 0.6, (q["quality"], got, stated)
        assert previous is None or got[0] > previous  # quality rises with the level
        previous = got[0]


def test_golden_bitstreams(cube):
    a = np.ascontiguousarray(cube[2, :, 40:104, 8:88])
    a[:, :6, :9] = 0  # nodata corner
    check_golden(TEC(model=LITE, quality=2), [a], "tec-fp-lite-q2")
    check_golden(TEC(model=LITE, quality=0), [np.ascontiguousarray(cube[3, :, :48, :40])], "tec-fp-lite-q0")


def test_golden_bitstreams_half(cube):
    a = np.ascontiguousarray(cube[2, :, 40:104, 8:88])
    a[:, :6, :9] = 0  # nodata corner
    check_golden(TEC(model=HALF, quality=2), [a], "tec-fp-half-q2")
    check_golden(TEC(model=HALF, quality=4), [np.ascontiguousarray(cube[1, :, 16:64, 24:64])], "tec-fp-half-q4")


def test_golden_bitstreams_second_family_half(cube):
    """tec-fp-2-half at quality 2 (its light synthesis) and 4 (tec-fp-2's own, named by decoders.json)."""
    a = np.ascontiguousarray(cube[2, :, 40:104, 8:88])
    a[:, :6, :9] = 0  # nodata corner
    check_golden(TEC(model=HALF2, quality=2), [a], "tec-fp-2-half-q2")
    check_golden(TEC(model=HALF2, quality=4), [np.ascontiguousarray(cube[1, :, 16:64, 24:64])], "tec-fp-2-half-q4")
