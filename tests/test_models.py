"""The model registry: hashes verified on load, tampering detected, cards listed with measured RD."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import tec_zarr
from tec_zarr import models
from tec_zarr.errors import UnknownModelError, WeightsIntegrityError


@pytest.fixture
def model_copy(tmp_path, monkeypatch):
    """A copy of the shipped model under another name, found through TEC_ZARR_MODEL_PATH."""
    src = models.get_card("tec-fp").folder
    dst = tmp_path / "models" / "tec-copy"
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["name"] = "tec-copy"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    yield dst
    models.clear_cache()


def test_list_models_has_measured_rd():
    cards = tec_zarr.list_models()
    assert "tec-fp" in [c.name for c in cards]
    card = models.get_card("tec-fp")
    assert len(card.qualities) >= 4
    for q in card.qualities:
        assert q["validation"]["bpp"] > 0 and q["validation"]["psnr"] > 20
    assert len(card.sha256) == 64


def test_load_verifies_every_file():
    model = models.load_model("tec-fp")
    assert model.tables.qualities == len(model.card.qualities)
    assert models.load_model("tec-fp") is model  # once per process


def test_unknown_model():
    with pytest.raises(UnknownModelError, match="Expected one of the installed models"):
        models.load_model("nope")


@pytest.mark.parametrize("filename", ["encoder.onnx", "decoder.onnx", "tables.npz"])
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
    with pytest.raises(WeightsIntegrityError, match="digest"):
        models.get_card("tec-copy")


def test_shipped_name_is_never_shadowed(model_copy):
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["name"] = "tec-fp"
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    assert models.get_card("tec-fp").folder == models.MODELS_DIR / "tec-fp"


def test_model_from_model_path_encodes(model_copy, image):
    codec = tec_zarr.TEC(model="tec-copy")
    a = np.ascontiguousarray(image[:, :32, :32])
    assert codec.decode(codec.encode(a)).shape == a.shape
