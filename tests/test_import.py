"""``tec models import``: TerraCodec checkpoints as tec-zarr model folders.

The fixtures (tests/fixture/import/, made by scripts/make_import_fixtures.py with TerraCodec's own package in a
throwaway environment) hold a random-weight FactorizedPrior checkpoint built by the reference's constructors and
the reference's compress/decompress of two crops of the bundled sample. The imported model must decode what the
reference decodes (>= 50 dB between the two) from as many bits (within 10 %, plus our chunk header)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import tec_zarr  # noqa: E402
from tec_zarr import metrics, models, pipeline  # noqa: E402
from tec_zarr.bitstream.chunk import unpack  # noqa: E402
from tec_zarr.cli.commands import main as tec_main  # noqa: E402
from tec_zarr.errors import CheckpointImportError  # noqa: E402
from tec_zarr.train import importer  # noqa: E402

pytestmark = pytest.mark.train

FIXTURE = Path(__file__).parent / "fixture" / "import"
CHECKPOINT = FIXTURE / "fp_random.pt"
CONFIG = FIXTURE / "fp_random.yaml"
NAME = "tc-fp-random"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The fixture checkpoint imported once into a folder on TEC_ZARR_MODEL_PATH (RD measured on the sample)."""
    root = tmp_path_factory.mktemp("models")
    mp = pytest.MonkeyPatch()
    mp.setenv("TEC_ZARR_MODEL_PATH", str(root))
    mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))
    models.clear_cache()
    folder = importer.import_checkpoint(CHECKPOINT, NAME, config=CONFIG, data_root=root / "no-shared-data")
    yield folder
    mp.undo()
    models.clear_cache()


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE / "fp_reference.npz") as f:
        return dict(f)


def _crop(cube, reference, size):
    t, y, x, _ = (int(v) for v in reference[f"crop_{size}"])
    return np.ascontiguousarray(cube[t, :, y : y + size, x : x + size])


@pytest.mark.parametrize("size", [64, 128])
def test_imported_fp_codes_as_the_reference(installed, reference, cube, size):
    img = _crop(cube, reference, size)
    chunk = pipeline.encode_chunk(img, model=NAME, quality=0, nodata=None)
    _, _, payload = unpack(chunk)
    theirs = len(reference[f"strings_{size}"])
    header = len(chunk) - len(payload)
    assert abs(len(payload) - theirs) <= 0.1 * theirs, (len(payload), theirs)
    assert abs(len(chunk) - header - theirs) <= 0.1 * theirs and header < 128
    if size == 64:
        decoded = pipeline.decode_chunk(chunk)
        expected = np.clip(reference["decoded_64"], 0, 65535)
        assert metrics.psnr(expected, decoded) >= 50.0
        assert np.abs(expected - decoded.astype(np.int64)).max() <= 2  # in fact equal where checked


def test_imported_model_card(installed):
    card = models.get_card(NAME)
    assert card.folder == installed
    manifest = card.manifest
    assert manifest["imported"]["checkpoint_sha256"] == hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    assert manifest["imported"]["lambda"] == 10.0 == card.qualities[0]["lambda"]
    assert manifest["config"]["channels"] == 12 and manifest["config"]["latent_channels"] == 16
    assert manifest["multiple"] == 16
    validation = card.qualities[0]["validation"]
    assert validation["images"] == 4 and validation["bpp"] > 0 and validation["psnr"] > 0
    np.testing.assert_allclose(models.load_model(NAME).mean * 1e4, importer.TERRACODEC_MEAN_DN, rtol=1e-6)
    assert not list(installed.parent.glob(".*.part"))


def test_imported_model_in_a_zarr_store(installed, cube):
    import zarr

    from tec_zarr.zarr3 import TEC

    a = np.ascontiguousarray(cube[0, :, :64, :96])
    arr = zarr.create_array({}, shape=a.shape, chunks=a.shape, dtype="uint16", serializer=TEC(model=NAME),
                            compressors=None)
    arr[:] = a
    assert arr[:].shape == a.shape
    codec = tec_zarr.TEC(model=NAME)
    assert codec.decode(codec.encode(a)).shape == a.shape


def test_models_lists_the_imported_model(installed, capsys):
    assert tec_main(["models"]) == 0
    assert NAME in capsys.readouterr().out


class Opaque:
    """Any object torch can only load by unpickling arbitrary code."""


def test_refuses_what_is_not_a_state_dict(tmp_path):
    cases = {
        "object.pt": {"w": Opaque()},  # needs arbitrary unpickling: weights_only refuses it
        "list.pt": [torch.zeros(2)],
        "trainer.pt": {"config": {"bands": 12}, "model": {"w": torch.zeros(1)}},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointImportError, match="Expected"):
            importer.read_checkpoint(tmp_path / name)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointImportError, match="state dict"):
        importer.read_checkpoint(tmp_path / "junk.pt")


@pytest.mark.parametrize("keys, says", [
    (["model.g_a.0.weight", "model.g_s.0.weight", "model.latent_codec.y.entropy_bottleneck.quantiles"], "ELIC"),
    (["model.transform.encoder.0.weight", "model.entropy_model.prior.0.weight"], "TEC-TT"),
    (["h_a.0.weight", "foo.bar"], "Expected a TerraCodec FP or ELIC"),
])
def test_names_architectures_it_does_not_import(tmp_path, keys, says):
    torch.save({k: torch.zeros(1) for k in keys}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointImportError, match=says):
        importer.read_checkpoint(tmp_path / "ckpt.pt")


def test_config_must_agree_with_the_weights(tmp_path):
    (tmp_path / "c.yaml").write_text("architecture: factorizedprior\nin_channels: 12\nN: 128\nM: 192\n")
    ckpt = importer.read_checkpoint(CHECKPOINT, tmp_path / "c.yaml")
    with pytest.raises(CheckpointImportError, match="N"):
        importer.build_fp(ckpt)
    (tmp_path / "e.yaml").write_text("architecture: elic\n")
    with pytest.raises(CheckpointImportError, match="architecture"):
        importer.read_checkpoint(CHECKPOINT, tmp_path / "e.yaml")


def test_refuses_taken_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    for name, says in (("tec-fp", "shipped"), ("Bad Name", "lowercase")):
        with pytest.raises(CheckpointImportError, match=says):
            importer.import_checkpoint(CHECKPOINT, name)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    with pytest.raises(CheckpointImportError, match="choose another --name"):
        importer.import_checkpoint(CHECKPOINT, "mine")


def test_cli_import_into_the_per_user_folder(tmp_path, monkeypatch, capsys):
    """No TEC_ZARR_MODEL_PATH: the model goes to $XDG_DATA_HOME/tec-zarr/models, where the registry finds it."""
    monkeypatch.delenv("TEC_ZARR_MODEL_PATH", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    models.clear_cache()
    try:
        rc = tec_main(["models", "import", str(CHECKPOINT), "--name", "tc-cli", "--config", str(CONFIG),
                       "--data", str(tmp_path / "none")])
        out = capsys.readouterr().out
        assert rc == 0, out
        folder = tmp_path / "xdg" / "tec-zarr" / "models" / "tc-cli"
        assert (folder / "manifest.json").is_file() and str(folder) in out
        assert json.loads((folder / "manifest.json").read_text())["name"] == "tc-cli"
        a = np.zeros((12, 32, 32), np.uint16) + 1000
        codec = tec_zarr.TEC(model="tc-cli")
        assert codec.decode(codec.encode(a)).shape == a.shape
        rc = tec_main(["models", "import", str(FIXTURE / "fp_reference.npz"), "--name", "tc-bad"])
        assert rc == 2 and "state dict" in capsys.readouterr().err
    finally:
        models.clear_cache()
