"""tec-hp: tec-fp's transforms and symbols, coded with a hyperprior whose entropy parameters are integers only."""

from __future__ import annotations

import numpy as np
import pytest

from tec_zarr import TEC, bitstream, chunk, hyperprior, metrics, models, runtime
from tec_zarr.errors import CorruptChunkError, TecZarrError

from common import FIXTURES, REGENERATE, check_golden

HP, FP = "tec-hp", "tec-fp"
pytestmark = pytest.mark.skipif(HP not in [c.name for c in models.list_models()], reason="tec-hp is not installed")


@pytest.fixture(scope="module")
def crops(cube) -> np.ndarray:
    """The sample's four dates cropped to 256 x 256: a multiple of 16, so both models see the same padded input."""
    return np.ascontiguousarray(cube[:, :, :256, :256])


def symbols_of(buf) -> np.ndarray:
    """A chunk's latent symbols, decoded without running any network."""
    header, _, payload = bitstream.unpack(buf)
    model = models.load_model(header.model)
    return chunk._entropy_decode(model, payload, header.quality, (header.batch,) + header.latent)


def test_manifest_shares_the_base_files_byte_for_byte():
    hp, fp = models.get_card(HP), models.get_card(FP)
    assert hp.manifest["entropy_model"] == "hyperprior" and hp.manifest["base_model"]["sha256"] == fp.sha256
    for f in ("encoder.onnx", "decoder.onnx", "tables.npz", "synthesis_int.npz"):
        assert (hp.folder / f).read_bytes() == (fp.folder / f).read_bytes()
        assert hp.manifest["files"][f] == fp.manifest["files"][f]
    assert set(hp.manifest["files"]) >= {hyperprior.FILENAME, hyperprior.ANALYSIS_FILENAME}
    model = models.load_model(HP)
    assert (model.multiple, model.latent_stride, model.entropy_model) == (16, 4, "hyperprior")
    for q in hp.qualities:
        v = q["validation"]
        assert v["bpp"] < v[f"{FP}_bpp"] and v["same_pixels_as_base"]


@pytest.mark.parametrize("quality", range(5))
def test_same_pixels_as_tec_fp_and_fewer_bits(crops, quality):
    hp, fp = TEC(model=HP, quality=quality), TEC(model=FP, quality=quality)
    enc_hp, enc_fp = hp.encode(crops), fp.encode(crops)
    np.testing.assert_array_equal(symbols_of(enc_hp), symbols_of(enc_fp))
    np.testing.assert_array_equal(hp.decode(enc_hp), fp.decode(enc_fp))
    assert len(enc_hp) < len(enc_fp)


def test_codec_round_trip_any_size(cube):
    """264 x 264 pads to 272 for tec-hp (a multiple of 16) and is cropped back."""
    codec = TEC(model=HP, quality=2)
    enc = codec.encode(cube)
    header = chunk.read_header(enc)
    assert header.pad == (8, 8) and header.latent == (192, 68, 68)
    dec = codec.decode(enc)
    assert dec.shape == cube.shape and metrics.mean_psnr(cube, dec) > 40
    small = np.ascontiguousarray(cube[:1, :, :37, :21])
    assert TEC(model=HP, quality=0).decode(TEC(model=HP, quality=0).encode(small)).shape == small.shape


def test_symbols_never_touch_a_float_network(crops, monkeypatch):
    enc = TEC(model=HP, quality=3).encode(crops)
    expected = symbols_of(enc)

    def refuse(*args, **kwargs):
        raise AssertionError("no onnxruntime call may decide a symbol")

    monkeypatch.setattr(runtime, "run", refuse)
    monkeypatch.setattr(runtime, "session", refuse)
    np.testing.assert_array_equal(symbols_of(enc), expected)


def test_decode_under_other_runtime_settings_and_a_perturbed_decoder(crops, monkeypatch):
    codec = TEC(model=HP, quality=1)
    enc = codec.encode(crops)
    expected, pixels = symbols_of(enc), codec.decode(enc)
    monkeypatch.setattr(runtime, "GRAPH_OPTIMIZATION", "ORT_DISABLE_ALL")
    monkeypatch.setattr(runtime, "_sessions", {})
    np.testing.assert_array_equal(symbols_of(enc), expected)
    assert metrics.max_error(codec.decode(enc), pixels) <= 1
    real_run = runtime.run

    def noisy(sha256, graph, inputs):  # every float graph returns slightly different numbers
        out = real_run(sha256, graph, inputs)
        return out + np.float32(1e-3) * np.sign(out)

    monkeypatch.setattr(runtime, "run", noisy)
    np.testing.assert_array_equal(symbols_of(enc), expected)


def test_hyper_analysis_only_chooses_z(crops, monkeypatch):
    """Another z (a perturbed encoder-side h_a) costs bits, never symbols: the decoder reads z from the chunk."""
    codec = TEC(model=HP, quality=2)
    reference = codec.encode(crops)
    real = hyperprior.analysis_z

    def perturbed(model, y, quality):
        z = real(model, y, quality)
        z[:, ::3] += 1
        return z

    monkeypatch.setattr(hyperprior, "analysis_z", perturbed)
    other = codec.encode(crops)
    assert other != reference
    np.testing.assert_array_equal(symbols_of(other), symbols_of(reference))
    np.testing.assert_array_equal(codec.decode(other), codec.decode(reference))


def _shuffled_matmul(seed: int):
    rng = np.random.default_rng(seed)

    def matmul(x, w):
        perm = rng.permutation(x.shape[1])
        parts = [x[:, p] @ w[p] for p in np.array_split(perm, 3)]
        return parts[2] + parts[0] + parts[1]

    return matmul


def test_integer_hyper_synthesis_matches_golden_and_any_summation_order():
    hp = hyperprior.load(models.load_model(HP))
    rng = np.random.default_rng(7)
    z = rng.integers(-6, 7, (1, hp.z_channels, 2, 3)).astype(np.int32)
    z[0, :, 0, 0] = [hyperprior.Z_LIMIT, -hyperprior.Z_LIMIT] * (hp.z_channels // 2)  # extremes stay exact
    path = FIXTURES / "hyperprior" / "h_s.npz"
    results = {f"q{q}": np.stack(hp.parameters(z, q)) for q in range(hp.log_gain.shape[0])}
    for q in (0, 4):
        np.testing.assert_array_equal(np.stack(hp.synthesize(z, q, matmul=_shuffled_matmul(q))),
                                      np.stack(hp.synthesize(z, q)))
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, z=z, **results)
    with np.load(path) as golden:
        np.testing.assert_array_equal(golden["z"], z)
        for key, value in results.items():
            np.testing.assert_array_equal(golden[key], value)


def test_golden_bitstreams(cube):
    check_golden(TEC(model=HP, quality=2), [np.ascontiguousarray(cube[1, :, :48, :40])], "tec-hp-q2")


def test_corrupt_and_truncated_chunks_raise(crops):
    enc = TEC(model=HP, quality=2).encode(crops[:1])
    for pos in (len(enc) // 2, len(enc) - 10, 80):
        damaged = bytearray(enc)
        damaged[pos] ^= 0x10
        with pytest.raises(CorruptChunkError):
            chunk.decode_chunk(bytes(damaged))
    for cut in (len(enc) - 1, len(enc) // 2, 30):
        with pytest.raises(TecZarrError):
            chunk.decode_chunk(enc[:cut])
    header, _, payload = bitstream.unpack(enc)
    model = models.load_model(HP)
    shape = (header.batch,) + header.latent
    bad = [payload[:3], b"\xff\xff\xff\x7f" + payload[4:], payload[:-2], payload[:4] + payload[4:-4]]
    for p in bad:
        with pytest.raises(CorruptChunkError):
            hyperprior.decode(model, p, header.quality, shape)
    with pytest.raises(CorruptChunkError):
        hyperprior.decode(model, payload, header.quality, (1, 192, 6, 64))


def test_escapes_and_extreme_symbols_round_trip():
    model = models.load_model(HP)
    hp = hyperprior.load(model)
    rng = np.random.default_rng(3)
    y = rng.normal(0, 3, (1, 192, 8, 8)).astype(np.float32)
    symbols = np.rint(y * model.gain[4][None, :, None, None]).astype(np.int32)
    symbols[0, 5, 1, 1], symbols[0, 7, 2, 3] = np.iinfo(np.int32).max, np.iinfo(np.int32).min + 1
    payload = hyperprior.encode(model, y, symbols, 4)
    np.testing.assert_array_equal(hyperprior.decode(model, payload, 4, symbols.shape), symbols)
    assert hp.tables == len(hp.scale_lengths)


def test_max_error_works_on_tec_hp(crops):
    a = np.ascontiguousarray(crops[1])
    dec = TEC(model=HP, quality=1, max_error=5).decode(TEC(model=HP, quality=1, max_error=5).encode(a))
    assert np.abs(dec.astype(np.int64) - a).max() <= 5


@pytest.mark.parametrize("filename", [hyperprior.FILENAME, hyperprior.ANALYSIS_FILENAME])
def test_tampered_hyperprior_files_are_refused_on_load(tmp_path, monkeypatch, filename):
    import json
    import shutil

    from tec_zarr.errors import WeightsIntegrityError

    dst = tmp_path / "models" / "tec-hp-copy"
    shutil.copytree(models.get_card(HP).folder, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["name"] = "tec-hp-copy"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    data = bytearray((dst / filename).read_bytes())
    data[len(data) // 2] ^= 1
    (dst / filename).write_bytes(bytes(data))
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    try:
        with pytest.raises(WeightsIntegrityError, match="sha256"):
            models.load_model("tec-hp-copy")
    finally:
        models.clear_cache()
