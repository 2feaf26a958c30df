"""The model registry: hashes verified on load, tampering detected, cards listed with measured RD, shared files
stored once in blobs/, and broken folders on TEC_ZARR_MODEL_PATH skipped with a warning."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import tec_zarr
from common import copy_model
from tec_zarr import models
from tec_zarr.errors import UnknownModelError, WeightsIntegrityError
from tec_zarr.models.registry import SHIPPED, BrokenModelWarning, file_path


@pytest.fixture
def model_copy(tmp_path, monkeypatch):
    """A copy of the shipped model under another name, found through TEC_ZARR_MODEL_PATH."""
    dst = copy_model("tec-fp", tmp_path / "models", "tec-copy")
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    yield dst
    models.clear_cache()


def test_list_models_has_measured_rd():
    cards = tec_zarr.list_models()
    assert set(SHIPPED) <= {c.name for c in cards}
    card = models.get_card("tec-fp")
    assert len(card.qualities) >= 4
    for q in card.qualities:
        assert q["validation"]["bpp"] > 0 and q["validation"]["psnr"] > 20
    rd = [(q["validation"]["bpp"], q["validation"]["psnr"]) for q in card.qualities]
    assert rd == sorted(rd) and len({p for _, p in rd}) == len(rd)  # both grow with the quality level
    assert len(card.sha256) == 64


def test_load_verifies_every_file():
    model = models.load_model("tec-fp")
    assert model.qualities == model.coder.tables.qualities == len(model.card.qualities)
    assert model.latent_channels == model.coder.tables.channels
    assert models.load_model("tec-fp") is model  # once per process
    assert (model.encoder.sha256, model.decoder.sha256) == (model.card.files["encoder.onnx"],
                                                            model.card.files["decoder.onnx"])
    assert (model.encoder.input_name, model.decoder.input_name) == ("x", "y_hat")


def test_shared_files_are_stored_once():
    """Files several shipped models list live once in blobs/<sha256>, and verify like any other. A family is the
    models that share an encoder (tec-fp's; tec-fp-2's): they share its tables and integer synthesis too."""
    families: dict[str, list] = {}
    for card in (models.get_card(n) for n in SHIPPED):
        families.setdefault(card.files["encoder.onnx"], []).append(card)
    assert [c.name for c in families[models.get_card("tec-fp").files["encoder.onnx"]]][:1] == ["tec-fp"]
    for cards in families.values():
        if len(cards) == 1:
            continue
        shared = set.intersection(*(set(c.files.items()) for c in cards))
        assert {f for f, _ in shared} >= {"encoder.onnx", "tables.npz", "synthesis_int.npz"}
        full = [c for c in cards if "synthesis" not in c.manifest]  # the light models: a decoder of their own
        assert len({c.files["decoder.onnx"] for c in full}) == 1
        for filename, digest in shared:
            for card in cards:
                assert file_path(card, filename) == models.MODELS_DIR / "blobs" / digest
                assert not (card.folder / filename).exists()
        assert models.verified_bytes(cards[1], "tables.npz") == models.verified_bytes(cards[0], "tables.npz")


def test_share_files_moves_duplicates_into_blobs(tmp_path):
    a = copy_model("tec-fp", tmp_path, "a")
    b = copy_model("tec-fp", tmp_path, "b")
    blobs = models.share_files(tmp_path)
    card = models.get_card("tec-fp")
    from tec_zarr.models.card import read_card

    assert sorted(p.name for p in blobs) == sorted(card.files.values())
    assert not any((a / f).exists() or (b / f).exists() for f in card.files)
    for folder in (a, b):
        copied = read_card(folder)
        assert copied.sha256 == card.sha256  # the model digest does not change
        for f in card.files:
            assert models.verified_bytes(copied, f) == models.verified_bytes(card, f)


def test_unknown_model():
    with pytest.raises(UnknownModelError, match="Expected one of the installed models"):
        models.load_model("nope")


@pytest.mark.parametrize("filename", ["encoder.onnx", "decoder.onnx", "tables.npz", "synthesis_int.npz"])
def test_tampered_file_is_refused(model_copy, filename):
    path = model_copy / filename
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        models.load_model("tec-copy")


def test_missing_file_is_refused(model_copy):
    (model_copy / "decoder.onnx").unlink()
    with pytest.raises(WeightsIntegrityError):
        models.load_model("tec-copy")


def test_edited_manifest_hash_is_refused(model_copy):
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["files"]["tables.npz"] = "0" * 64
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(BrokenModelWarning, match="digest"):
        with pytest.raises(UnknownModelError):
            models.get_card("tec-copy")


def test_broken_manifest_on_model_path_is_skipped_with_a_warning(model_copy):
    (model_copy.parent / "broken").mkdir()
    (model_copy.parent / "broken" / "manifest.json").write_text("{not json")
    with pytest.warns(BrokenModelWarning, match="broken"):
        names = [c.name for c in models.list_models()]
    assert "tec-copy" in names and set(SHIPPED) <= set(names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BrokenModelWarning)
        assert models.load_model("tec-copy").sha256 == models.get_card("tec-fp").sha256


def test_shipped_name_is_never_shadowed(model_copy):
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["name"] = "tec-fp"
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    assert models.get_card("tec-fp").folder == models.MODELS_DIR / "tec-fp"


def test_model_from_model_path_encodes(model_copy, image):
    codec = tec_zarr.TEC(model="tec-copy")
    a = np.ascontiguousarray(image[:, :32, :32])
    assert codec.decode(codec.encode(a)).shape == a.shape


def _with_decoders(folder, per_quality) -> None:
    """Give a model folder a decoders.json (and a second graph, tec-fp-lite's synthesis), both listed and hashed."""
    import hashlib

    from tec_zarr.models.card import model_digest

    manifest = json.loads((folder / "manifest.json").read_text())
    lite = models.get_card("tec-fp-lite")
    (folder / "lite-decoder.onnx").write_bytes(file_path(lite, "decoder.onnx").read_bytes())
    manifest["files"]["lite-decoder.onnx"] = lite.files["decoder.onnx"]
    data = per_quality if isinstance(per_quality, bytes) else json.dumps({"per_quality": per_quality}).encode()
    (folder / "decoders.json").write_bytes(data)
    manifest["files"]["decoders.json"] = hashlib.sha256(data).hexdigest()
    manifest["sha256"] = model_digest(manifest["files"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_decoders_json_chooses_the_synthesis_per_quality(model_copy, image):
    """A model naming its synthesis per quality decodes each quality through that graph: here tec-fp's own at 0 and
    2-4, tec-fp-lite's at 1, so the pixels equal those models' at the same symbols."""
    from tec_zarr import pipeline

    _with_decoders(model_copy, ["decoder.onnx", "lite-decoder.onnx", "decoder.onnx", "decoder.onnx", "decoder.onnx"])
    model = models.load_model("tec-copy")
    assert model.decoder_for(1) is not model.decoder and model.decoder_for(0) is model.decoder_for(4) is model.decoder
    chunks, expected = [], []
    for quality, same_as in ((1, "tec-fp-lite"), (2, "tec-fp"), (1, "tec-fp-lite")):
        chunks.append(pipeline.encode_chunk(image, model="tec-copy", quality=quality))
        expected.append(pipeline.decode_chunk(pipeline.encode_chunk(image, model=same_as, quality=quality)))
        assert np.array_equal(pipeline.decode_chunk(chunks[-1]), expected[-1])
    # decoded together, each quality's chunks still run through their own graph
    for got, want in zip(pipeline.decode_chunks(chunks), expected, strict=True):
        assert np.array_equal(got, want)
    with pytest.raises(tec_zarr.errors.InvalidInputError, match="quality of tec-copy in 0..4"):
        model.decoder_for(5)


@pytest.mark.parametrize("content", [
    b"not json", b"[]", b'{"per_quality": "decoder.onnx"}',
    json.dumps({"per_quality": ["decoder.onnx"] * 4}).encode(),  # one quality short
    json.dumps({"per_quality": ["decoder.onnx"] * 4 + ["missing.onnx"]}).encode(),  # not in the manifest
    json.dumps({"per_quality": ["decoder.onnx"] * 4 + ["tables.npz"]}).encode(),  # not a graph
    json.dumps({"per_quality": ["decoder.onnx"] * 4 + [7]}).encode(),
    json.dumps({"per_quality": ["decoder.onnx"] * 10**5}).encode(),
    json.dumps({"per_quality": ["decoder.onnx"] * 4 + ["encoder.onnx"]}).encode(),  # a graph fed images
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser recurses
    b'{"per_quality": ' + b"9" * 5000 + b"}",  # an integer longer than Python converts
    b"\xff\xfe",
])
def test_bad_decoders_json_is_refused(model_copy, content):
    _with_decoders(model_copy, content)
    with pytest.raises(WeightsIntegrityError, match="decoders.json|encoder.onnx of tec-copy") as e:
        models.load_model("tec-copy")
    assert len(str(e.value)) < 400 and "tec-copy" in str(e.value)


def test_tampered_decoders_json_is_refused(model_copy):
    """decoders.json decides pixels, so it is hashed like the graphs: an edit is refused before anything runs."""
    _with_decoders(model_copy, ["lite-decoder.onnx"] + ["decoder.onnx"] * 4)
    (model_copy / "decoders.json").write_text(json.dumps({"per_quality": ["decoder.onnx"] * 5}))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        models.load_model("tec-copy")
