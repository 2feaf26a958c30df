"""``tec models import``: TerraCodec checkpoints as tec-zarr model folders.

The fixtures (tests/fixture/import/, made by scripts/make_import_fixtures.py with TerraCodec's own package in a
throwaway environment) hold a random-weight FactorizedPrior checkpoint built by the reference's constructors and
the reference's compress/decompress of two crops of the bundled sample. The imported model must decode what the
reference decodes (>= 50 dB between the two) from as many bits (within 10 %, plus our chunk header)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import tec_zarr  # noqa: E402
from tec_zarr import metrics, models, pipeline  # noqa: E402
from tec_zarr.bitstream.chunk import unpack  # noqa: E402
from tec_zarr.bitstream.payload import split_z_section  # noqa: E402
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


# -- ELIC ------------------------------------------------------------------------------------------------------------
# elic_random.npz (scripts/make_elic_fixture.py): a random-weight TerraCodec ELIC (N = 8, M = 132, groups
# [16, 16, 32, 64, 4]) built by the reference's constructor, its weights made sparse ternary / int8 multiples of
# powers of two so the file stays small; the tests rebuild the model.-prefixed state dict and torch.save it.
ELIC_NAME = "tc-elic-random"


def elic_state() -> dict:
    state = {}
    with np.load(FIXTURE / "elic_random.npz") as f:
        for name in f.files:
            kind, key = name.split("/", 1)
            if kind == "q":
                state[key] = torch.from_numpy(f[name].astype(np.float32) * np.float32(2.0 ** int(f[f"e/{key}"])))
            elif kind == "f":
                state[key] = torch.from_numpy(f[name].astype(np.float32))
            elif kind == "shape":
                state[key] = torch.zeros(tuple(int(n) for n in f[name]), dtype=torch.int32)
    return {f"model.{k}": v for k, v in state.items()}


@pytest.fixture(scope="module")
def elic_reference():
    with np.load(FIXTURE / "elic_reference.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def elic_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("elic") / "TerraCodec_v1_ELIC_S2L2A_lambda-10.pt"
    torch.save(elic_state(), path)
    return path


@pytest.fixture(scope="module")
def elic_installed(tmp_path_factory, elic_checkpoint, elic_reference, cube):
    """Imported once, calibrated and measured on the two reference crops (the sample's 256 x 256 dates take
    longer: ELIC's context networks are 224, 128 and 512 wide whatever N and M)."""
    root = tmp_path_factory.mktemp("elic-models")
    mp = pytest.MonkeyPatch()
    mp.setenv("TEC_ZARR_MODEL_PATH", str(root))
    models.clear_cache()
    images = np.stack([_crop(cube, elic_reference, 128)[:, :64, :128], _crop(cube, elic_reference, 64).repeat(2, -1)])
    folder = importer.import_checkpoint(elic_checkpoint, ELIC_NAME, config=FIXTURE / "elic_random.yaml",
                                        images=images)
    yield folder
    mp.undo()
    models.clear_cache()


@pytest.mark.parametrize("size", [64, 128])
def test_imported_elic_codes_as_the_reference(elic_installed, elic_reference, cube, size):
    from tec_zarr.pipeline.decode import parse

    img = _crop(cube, elic_reference, size)
    chunk = pipeline.encode_chunk(img, model=ELIC_NAME, quality=0, nodata=None)
    _, _, payload = unpack(chunk)
    theirs = int(elic_reference[f"bytes_{size}"])
    assert abs(len(payload) - theirs) <= 0.1 * theirs, (len(payload), theirs)
    assert len(chunk) - len(payload) < 128
    # the latents the decoder graph reads are the reference's y_hat = round(y - mean) + mean, to the mean's 2**-10
    y_hat = parse(chunk).y_hat()[0]
    np.testing.assert_allclose(y_hat, elic_reference[f"y_hat_{size}"], atol=2.0**-10)
    if size == 64:
        decoded = pipeline.decode_chunk(chunk)
        expected = np.clip(elic_reference["decoded_64"], 0, 65535)
        assert metrics.psnr(expected, decoded) >= 50.0
        assert np.abs(expected - decoded.astype(np.int64)).max() <= 2


def test_imported_elic_card_and_zarr_round_trip(elic_installed, elic_checkpoint, cube):
    import zarr

    from tec_zarr.zarr3 import TEC

    card = models.get_card(ELIC_NAME)
    manifest = card.manifest
    assert manifest["entropy_model"] == "elic" and manifest["multiple"] == 64 and manifest["latent_stride"] == 16
    assert manifest["imported"]["architecture"] == "elic" and manifest["imported"]["lambda"] == 10.0
    assert manifest["imported"]["checkpoint_sha256"] == hashlib.sha256(elic_checkpoint.read_bytes()).hexdigest()
    assert manifest["config"]["groups"] == [16, 16, 32, 64, 4] and manifest["config"]["latent_channels"] == 132
    assert card.qualities[0]["validation"]["bpp"] > 0
    a = np.ascontiguousarray(cube[0, :, :64, :96])  # padded to 64 x 128
    arr = zarr.create_array({}, shape=a.shape, chunks=a.shape, dtype="uint16", serializer=TEC(model=ELIC_NAME),
                            compressors=None)
    arr[:] = a
    back = arr[:]
    assert back.shape == a.shape and metrics.psnr(a, back) > 15
    codec = tec_zarr.TEC(model=ELIC_NAME)
    assert np.array_equal(codec.decode(codec.encode(a)), back)


def test_elic_decoding_is_integer_exact(elic_installed, cube):
    """Any exact summation order gives the same bits: a transposed product stands in for another BLAS."""
    from tec_zarr.entropy import elic

    model = models.load_model(ELIC_NAME)
    coder = model.coder
    assert isinstance(coder, elic.ElicCoder)
    a = np.ascontiguousarray(cube[3, :, :64, :64])
    chunk = pipeline.encode_chunk(a, model=ELIC_NAME, quality=0, nodata=None)
    _, _, payload = unpack(chunk)
    z_bytes, rest = split_z_section(payload)
    symbols = coder.decode(payload, 0, (1, 132, 4, 4))
    z = elic.factorized.decode(z_bytes, 0, (1, coder.model.z_tables.channels, 1, 1), coder.model.z_tables)

    def transposed(x, w):
        return np.ascontiguousarray((w.T @ x.T).T)

    seen = []

    def record(index, mean, a_, e, classes):
        seen.append((index, mean))
        return np.zeros_like(mean)

    elic.run_steps(coder.model, z, (1, 132, 4, 4), record)
    again = []
    elic.run_steps(coder.model, z, (1, 132, 4, 4), lambda i, m, *_: again.append((i, m)) or np.zeros_like(m),
                   matmul=transposed)
    assert all(np.array_equal(i1, i2) and np.array_equal(m1, m2) for (i1, m1), (i2, m2) in zip(seen, again))
    assert symbols.shape == (1, 132, 4, 4)


@pytest.mark.parametrize("change, says", [
    (lambda s: s.pop("model.latent_codec.y.channel_context.y2.0.weight"), "channel_context.y2.0.weight"),
    (lambda s: s.__setitem__("model.latent_codec.y.extra.weight", torch.zeros(1)), "Expected only ELIC keys"),
    (lambda s: s.__setitem__("model.latent_codec.y.latent_codec.y1.context_prediction.mask",
                             torch.ones(32, 16, 5, 5)), "checkerboard-masked"),
    (lambda s: s.__setitem__("model.g_a.3.weight", torch.zeros(8, 8, 4, 4)), "odd square kernel"),
    (lambda s: s.pop("model.latent_codec.y.latent_codec.y0.context_prediction.weight"), "channel groups"),
])
def test_refuses_malformed_elic_state_dicts(tmp_path, change, says):
    state = elic_state()
    change(state)
    torch.save(state, tmp_path / "elic.pt")
    with pytest.raises(CheckpointImportError, match=says):
        importer.import_checkpoint(tmp_path / "elic.pt", "tc-bad-elic", into=tmp_path / "models",
                                   images=np.zeros((1, 12, 64, 64), np.uint16))
    assert not (tmp_path / "models" / "tc-bad-elic").exists()


def test_elic_config_must_agree(tmp_path, elic_checkpoint):
    (tmp_path / "c.yaml").write_text("architecture: elic\nin_channels: 12\nN: 192\nM: 320\n")
    with pytest.raises(CheckpointImportError, match="N"):
        importer.import_checkpoint(elic_checkpoint, "tc-bad-cfg", config=tmp_path / "c.yaml", into=tmp_path / "m",
                                   images=np.zeros((1, 12, 64, 64), np.uint16))


def _elic_npz(folder: Path, change) -> bytes:
    """The installed model's elic.npz with ``change(arrays)`` applied."""
    with np.load(folder / "elic.npz") as f:
        arrays = dict(f)
    change(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _shrink(arrays, key, axis):
    arrays[key] = np.delete(arrays[key], 0, axis=axis)


@pytest.mark.parametrize("change, says", [
    (lambda a: _shrink(a, "g1_ch0_w", 0), "odd square of taps"),  # 24 taps
    (lambda a: _shrink(a, "g2_ch1_w", 1), r"channel context layer 1's weights"),  # Cin 223 after 224 outputs
    (lambda a: _shrink(a, "g1_ch2_b", 0), r"channel context layer 2's weights"),
    (lambda a: a.__setitem__("g0_b1", a["g0_b1"][:1]), "hyper_w of shape"),  # would broadcast silently
    (lambda a: _shrink(a, "g3_out_w", 1), "output weights"),
    (lambda a: _shrink(a, "hs2_w", 1), "h_s layer 2's weights"),
    (lambda a: a.__setitem__("hs_kinds", np.array([0, 1, 1])), "two deconv layers"),
    (lambda a: a.__setitem__("g0_out_w", a["g0_out_w"] + 0.5), "integer weights"),
    (lambda a: a.__setitem__("hs0_w", np.where(a["hs0_w"] == 0, np.nan, a["hs0_w"])), "integer weights"),
    (lambda a: a.__setitem__("g4_b3", a["g4_b3"] + 2**60), "bounded by 2[*][*]52"),
    (lambda a: a.__setitem__("g2_second0_w", a["g2_second0_w"] * 2.0**30), "bounded by 2[*][*]52"),
    (lambda a: a.__setitem__("z_exp", np.int64(60)), "z_exp in"),
    (lambda a: a.__setitem__("input_exp", np.int64(2000)), "input_exp"),
    (lambda a: a.__setitem__("groups", np.array([16, 16, 32, 64, 0])), "at least one channel"),
    (lambda a: a.pop("g4_shifts"), "valid elic.npz"),
])
def test_malformed_elic_npz_is_refused(elic_installed, change, says):
    from tec_zarr.entropy import elic
    from tec_zarr.errors import WeightsIntegrityError

    elic.ElicModel.from_npz((elic_installed / "elic.npz").read_bytes())  # the installed one loads
    with pytest.raises(WeightsIntegrityError, match=says):
        elic.ElicModel.from_npz(_elic_npz(elic_installed, change))


def test_malformed_elic_npz_is_refused_on_load(elic_installed, tmp_path, monkeypatch):
    """Through the registry: changed bytes fail their sha256; re-listed with their new sha256, the weights
    themselves are refused, before any chunk is decoded."""
    import shutil

    from tec_zarr.errors import WeightsIntegrityError
    from tec_zarr.models import model_digest

    folder = tmp_path / "tc-elic-bad"
    shutil.copytree(elic_installed, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"] = "tc-elic-bad"
    (folder / "elic.npz").write_bytes(_elic_npz(elic_installed, lambda a: _shrink(a, "g2_ch1_w", 1)))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path))
    models.clear_cache()
    try:
        with pytest.raises(WeightsIntegrityError, match="sha256"):
            models.load_model("tc-elic-bad")
        manifest["files"]["elic.npz"] = hashlib.sha256((folder / "elic.npz").read_bytes()).hexdigest()
        manifest["sha256"] = model_digest(manifest["files"])
        (folder / "manifest.json").write_text(json.dumps(manifest))
        models.clear_cache()
        with pytest.raises(WeightsIntegrityError, match="channel context layer 1"):
            models.load_model("tc-elic-bad")
    finally:
        models.clear_cache()


def test_hostile_elic_chunks_end_in_package_errors(elic_installed, cube):
    """tests/test_hostile.py's judge on an ELIC chunk (a nodata block: skipped latents too): payloads cut inside z
    and y, z_len beyond the payload, a y section of part words, filler and random bytes, trailing words, each with
    the CRC recomputed so it reaches elic.py, and a few of test_hostile's seeded mutations. Each ends in a
    TecZarrError or finite values of the chunk's shape, within test_hostile's CASE_SECONDS."""
    import struct

    from test_hostile import judge, mutate_chunk

    from tec_zarr.bitstream import chunk as chunkfmt

    a = np.ascontiguousarray(cube[1, :, 101:130, 37:82])  # padded to 64 x 64
    a[:, 3:9, 5:17] = 0
    codec = tec_zarr.TEC(model=ELIC_NAME, nodata=0)
    good = bytes(codec.encode(a))
    header, mask, payload = chunkfmt.unpack(good)
    z_len = struct.unpack_from("<I", payload)[0]
    y_at = 4 + z_len
    rng = np.random.default_rng(19)
    payloads = {
        "cut in z": payload[: 4 + z_len // 2 // 4 * 4],
        "cut in y": payload[: y_at + (len(payload) - y_at) // 2 // 4 * 4],
        "last word dropped": payload[:-4],
        "z_len past the end": struct.pack("<I", len(payload)) + payload[4:],
        "z_len 2**32 - 1": struct.pack("<I", 2**32 - 1) + payload[4:],
        "y of part words": payload + b"\x00\x00",
        "y all ones": payload[:y_at] + b"\xff" * (len(payload) - y_at),
        "y random": payload[:y_at] + rng.bytes(len(payload) - y_at),
        "trailing words": payload + rng.bytes(64),
    }
    cases = {name: chunkfmt.pack(header, mask, p) for name, p in payloads.items()}
    for i in range(4):
        flipped = bytearray(payload)
        for bit in rng.integers(8 * len(payload), size=i + 1):
            flipped[bit // 8] ^= 1 << (bit % 8)
        cases[f"{i + 1} payload bits flipped"] = chunkfmt.pack(header, mask, bytes(flipped))
    for i in range(10):
        recipe, bad = mutate_chunk(np.random.default_rng([19, i]), good, good)
        cases[f"mutation {i}: {recipe}"] = bad
    outcomes, problems = {}, []
    for name, bad in cases.items():
        outcomes[name], _, problem = judge(lambda b: pipeline.decode_chunk(b, expected_shape=a.shape), bad,
                                           expect_shape=a.shape)
        if problem:
            problems.append(f"{name}: {problem}")
    assert not problems, problems
    # the cut, mislabelled and replaced payloads are all detected (none decodes to another image)
    assert [n for n in payloads if outcomes[n] == "ok"] == [], outcomes
