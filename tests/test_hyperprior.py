"""tec-hp and tec-ctx: tec-fp's transforms and symbols, coded with a hyperprior (tec-hp) or a hyperprior with
channel-group and checkerboard context (tec-ctx), whose entropy parameters are integers only."""

from __future__ import annotations

import numpy as np
import pytest

from tec_zarr import TEC, bitstream, chunk, context, hyperprior, metrics, models, runtime
from tec_zarr.errors import CorruptChunkError, TecZarrError, WeightsIntegrityError

from common import FIXTURES, REGENERATE, check_golden

HP, CTX, FP = "tec-hp", "tec-ctx", "tec-fp"
INSTALLED = [c.name for c in models.list_models()]
pytestmark = pytest.mark.skipif(HP not in INSTALLED, reason="tec-hp is not installed")
ENTROPY_FILES = {HP: (hyperprior.FILENAME, hyperprior.ANALYSIS_FILENAME),
                 CTX: (hyperprior.FILENAME, hyperprior.ANALYSIS_FILENAME, context.FILENAME)}


@pytest.fixture(params=[HP, CTX])
def name(request) -> str:
    """Each shipped model whose entropy parameters come from integer networks."""
    if request.param not in INSTALLED:
        pytest.skip(f"{request.param} is not installed")
    return request.param


@pytest.fixture(scope="module")
def crops(cube) -> np.ndarray:
    """The sample's four dates cropped to 256 x 256: a multiple of 16, so both models see the same padded input."""
    return np.ascontiguousarray(cube[:, :, :256, :256])


def symbols_of(buf) -> np.ndarray:
    """A chunk's latent symbols, decoded without running any network."""
    header, _, payload = bitstream.unpack(buf)
    model = models.load_model(header.model)
    return chunk._entropy_decode(model, payload, header.quality, (header.batch,) + header.latent)


def test_manifest_shares_the_base_files_byte_for_byte(name):
    hp, fp = models.get_card(name), models.get_card(FP)
    kind = {HP: "hyperprior", CTX: "context"}[name]
    assert hp.manifest["entropy_model"] == kind and hp.manifest["base_model"]["sha256"] == fp.sha256
    for f in ("encoder.onnx", "decoder.onnx", "tables.npz", "synthesis_int.npz"):
        assert (hp.folder / f).read_bytes() == (fp.folder / f).read_bytes()
        assert hp.manifest["files"][f] == fp.manifest["files"][f]
    assert set(hp.manifest["files"]) >= set(ENTROPY_FILES[name])
    model = models.load_model(name)
    assert (model.multiple, model.latent_stride, model.entropy_model) == (16, 4, kind)
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
    if CTX in INSTALLED:  # the context model: same symbols again, fewer bits than the hyperprior alone
        ctx = TEC(model=CTX, quality=quality)
        enc_ctx = ctx.encode(crops)
        np.testing.assert_array_equal(symbols_of(enc_ctx), symbols_of(enc_fp))
        np.testing.assert_array_equal(ctx.decode(enc_ctx), fp.decode(enc_fp))
        assert len(enc_ctx) < len(enc_hp)


def test_codec_round_trip_any_size(cube, name):
    """264 x 264 pads to 272 (a multiple of 16) and is cropped back."""
    codec = TEC(model=name, quality=2)
    enc = codec.encode(cube)
    header = chunk.read_header(enc)
    assert header.pad == (8, 8) and header.latent == (192, 68, 68)
    dec = codec.decode(enc)
    assert dec.shape == cube.shape and metrics.mean_psnr(cube, dec) > 40
    small = np.ascontiguousarray(cube[:1, :, :37, :21])
    assert TEC(model=name, quality=0).decode(TEC(model=name, quality=0).encode(small)).shape == small.shape


def test_symbols_never_touch_a_float_network(crops, monkeypatch, name):
    enc = TEC(model=name, quality=3).encode(crops)
    expected = symbols_of(enc)

    def refuse(*args, **kwargs):
        raise AssertionError("no onnxruntime call may decide a symbol")

    monkeypatch.setattr(runtime, "run", refuse)
    monkeypatch.setattr(runtime, "session", refuse)
    np.testing.assert_array_equal(symbols_of(enc), expected)


def test_decode_under_other_runtime_settings_and_a_perturbed_decoder(crops, monkeypatch, name):
    codec = TEC(model=name, quality=1)
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


def test_hyper_analysis_only_chooses_z(crops, monkeypatch, name):
    """Another z (a perturbed encoder-side h_a) costs bits, never symbols: the decoder reads z from the chunk."""
    codec = TEC(model=name, quality=2)
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


def context_parts():
    """tec-ctx's hyperprior and context model (the test skips without tec-ctx)."""
    if CTX not in INSTALLED:
        pytest.skip("tec-ctx is not installed")
    model = models.load_model(CTX)
    return hyperprior.load(model), context.load(model)


def step_parameters(hp, ctx, z, symbols, quality, matmul=np.matmul) -> list[np.ndarray]:
    """(table index, mean) of every step of the context model, walking it with known ``symbols``."""
    steps = []
    coded = np.moveaxis(symbols[:, ctx.order], 1, -1)

    def record(index, mean, a, e, classes):
        steps.append(np.stack([index, mean]))
        return context.gather(coded[..., a:e], classes)

    walked = context.run_steps(hp, ctx, z, quality, symbols.shape, record, matmul=matmul)
    np.testing.assert_array_equal(walked, symbols)
    return steps


def test_integer_context_matches_golden_and_any_summation_order():
    """Every step's table indices and means, for given symbols, are fixed integers in any summation order."""
    hp, ctx = context_parts()
    rng = np.random.default_rng(11)
    z = rng.integers(-4, 5, (1, hp.z_channels, 2, 2)).astype(np.int32)
    symbols = rng.integers(-40, 41, (1, 192, 8, 8))
    symbols[0, ctx.order[0], 0, 0], symbols[0, ctx.order[-1], 1, 0] = hyperprior.Z_LIMIT, -(2**31)  # clipped inputs

    def parameters(quality, matmul=np.matmul):
        return np.concatenate([s.ravel() for s in step_parameters(hp, ctx, z, symbols, quality, matmul)])

    results = {f"q{q}": parameters(q) for q in range(hp.log_gain.shape[0])}
    for q in (0, 4):
        np.testing.assert_array_equal(parameters(q, _shuffled_matmul(q)), results[f"q{q}"])
    path = FIXTURES / "context" / "steps.npz"
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, z=z, symbols=symbols, **results)
    with np.load(path) as golden:
        np.testing.assert_array_equal(golden["z"], z)
        np.testing.assert_array_equal(golden["symbols"], symbols)
        for key, value in results.items():
            np.testing.assert_array_equal(golden[key], value)


def test_context_steps_are_causal():
    """A symbol changes only the parameters of later steps: the decoder has everything each step needs."""
    hp, ctx = context_parts()
    rng = np.random.default_rng(5)
    z = rng.integers(-3, 4, (1, hp.z_channels, 2, 2)).astype(np.int32)
    symbols = rng.integers(-20, 21, (1, 192, 8, 8))

    def steps_of(sym):
        return step_parameters(hp, ctx, z, sym, 2)

    reference = steps_of(symbols)
    channel = ctx.order[ctx.groups[0] + 3]  # a channel of group 1
    for (row, col), step in (((2, 4), 2), ((3, 4), 3)):  # an anchor (coded in step 2), a non-anchor (step 3)
        changed = symbols.copy()
        changed[0, channel, row, col] += 7
        got = steps_of(changed)
        for k in range(step + 1):
            np.testing.assert_array_equal(got[k], reference[k])
        assert any(not np.array_equal(g, r) for g, r in zip(got[step + 1 :], reference[step + 1 :]))


def test_context_model_structure_is_checked_on_load():
    if CTX not in INSTALLED:
        pytest.skip("tec-ctx is not installed")
    ctx = context.load(models.load_model(CTX))
    import dataclasses

    with pytest.raises(WeightsIntegrityError):
        dataclasses.replace(ctx, groups=ctx.groups[:-1] + (ctx.groups[-1] - 1,))
    with pytest.raises(WeightsIntegrityError):
        dataclasses.replace(ctx, order=np.zeros_like(ctx.order))
    huge = dataclasses.replace(ctx.networks[0], hidden_w=ctx.networks[0].hidden_w * 2.0**40)
    with pytest.raises(WeightsIntegrityError, match="2\\*\\*52"):
        dataclasses.replace(ctx, networks=(huge,) + ctx.networks[1:])
    with pytest.raises(WeightsIntegrityError):
        context.ContextModel.from_npz(b"not an npz")
    hp = hyperprior.load(models.load_model(CTX))
    assert hp.mean_bits > hyperprior.LOG_BITS == hyperprior.load(models.load_model(HP)).mean_bits
    with pytest.raises(WeightsIntegrityError, match="mean bits"):
        dataclasses.replace(hp, mean_bits=hyperprior.MAX_MEAN_BITS + 1)


@pytest.mark.parametrize("quality", [2])
def test_golden_bitstreams(cube, name, quality):
    check_golden(TEC(model=name, quality=quality), [np.ascontiguousarray(cube[1, :, :48, :40])], f"{name}-q{quality}")


def test_corrupt_and_truncated_chunks_raise(crops, name):
    enc = TEC(model=name, quality=2).encode(crops[:1])
    for pos in (len(enc) // 2, len(enc) - 10, 80):
        damaged = bytearray(enc)
        damaged[pos] ^= 0x10
        with pytest.raises(CorruptChunkError):
            chunk.decode_chunk(bytes(damaged))
    for cut in (len(enc) - 1, len(enc) // 2, 30):
        with pytest.raises(TecZarrError):
            chunk.decode_chunk(enc[:cut])
    header, _, payload = bitstream.unpack(enc)
    model = models.load_model(name)
    shape = (header.batch,) + header.latent
    bad = [payload[:3], b"\xff\xff\xff\x7f" + payload[4:], payload[:-2], payload[:4] + payload[4:-4]]
    for p in bad:
        with pytest.raises(CorruptChunkError):
            chunk._entropy_decode(model, p, header.quality, shape)
    with pytest.raises(CorruptChunkError):
        chunk._entropy_decode(model, payload, header.quality, (1, 192, 6, 64))


def test_escapes_and_extreme_symbols_round_trip(name):
    model = models.load_model(name)
    hp = hyperprior.load(model)
    rng = np.random.default_rng(3)
    y = rng.normal(0, 3, (1, 192, 8, 8)).astype(np.float32)
    symbols = np.rint(y * model.gain[4][None, :, None, None]).astype(np.int32)
    symbols[0, 5, 1, 1], symbols[0, 7, 2, 3] = np.iinfo(np.int32).max, np.iinfo(np.int32).min + 1
    payload = chunk._entropy_encode(model, y, symbols, 4)
    np.testing.assert_array_equal(chunk._entropy_decode(model, payload, 4, symbols.shape), symbols)
    assert hp.tables == len(hp.scale_lengths)


@pytest.mark.parametrize("shape", [(1, 192, 4, 4), (2, 192, 8, 12), (3, 192, 12, 4)])
def test_random_symbols_round_trip_any_latent_size(name, shape):
    """Symbols the encoder would never make (heavy tails, batches, thin and odd-by-4 latents) still come back."""
    model = models.load_model(name)
    rng = np.random.default_rng(sum(shape))
    for quality in range(model.gain.shape[0]):
        y = rng.laplace(0, 4, shape).astype(np.float32)
        symbols = np.rint(y * model.gain[quality][None, :, None, None]).astype(np.int32)
        symbols.flat[rng.integers(symbols.size, size=5)] = rng.integers(-5000, 5000, 5)
        payload = chunk._entropy_encode(model, y, symbols, quality)
        np.testing.assert_array_equal(chunk._entropy_decode(model, payload, quality, shape), symbols)


def test_max_error_works(crops, name):
    a = np.ascontiguousarray(crops[1])
    dec = TEC(model=name, quality=1, max_error=5).decode(TEC(model=name, quality=1, max_error=5).encode(a))
    assert np.abs(dec.astype(np.int64) - a).max() <= 5


@pytest.mark.parametrize("filename", [hyperprior.FILENAME, hyperprior.ANALYSIS_FILENAME, context.FILENAME])
def test_tampered_entropy_model_files_are_refused_on_load(tmp_path, monkeypatch, filename, name):
    import json
    import shutil

    if filename not in ENTROPY_FILES[name]:
        pytest.skip(f"{name} has no {filename}")
    dst = tmp_path / "models" / "copy"
    shutil.copytree(models.get_card(name).folder, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["name"] = "copy"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    data = bytearray((dst / filename).read_bytes())
    data[len(data) // 2] ^= 1
    (dst / filename).write_bytes(bytes(data))
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    try:
        with pytest.raises(WeightsIntegrityError, match="sha256"):
            models.load_model("copy")
    finally:
        models.clear_cache()


def test_blocked_patch_products_match_the_definition(monkeypatch):
    """3x3 and checkerboard sums built a few rows at a time equal the direct sums (memory stays bounded)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-1000, 1000, (2, 12, 8, 5)).astype(np.float64)
    w3 = rng.integers(-50, 50, (9, 5, 7)).astype(np.float64)
    w12 = rng.integers(-50, 50, (12, 5, 7)).astype(np.float64)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    direct3 = sum(padded[:, ky : ky + 12, kx : kx + 8] @ w3[3 * ky + kx] for ky in range(3) for kx in range(3))
    expected = []
    for r, q in context.HALVES[1]:
        for i in range(r, 12, 2):
            for j in range(q, 8, 2):
                taps = [(i + dy, j + dx, t) for t, (dy, dx) in enumerate(context.SPATIAL_TAPS)]
                expected.append(sum(x[:, a, b] @ w12[t] for a, b, t in taps if 0 <= a < 12 and 0 <= b < 8))
    for budget in (hyperprior.PATCH_BYTES, 1):
        monkeypatch.setattr(hyperprior, "PATCH_BYTES", budget)
        monkeypatch.setattr(context, "PATCH_BYTES", budget)
        np.testing.assert_array_equal(hyperprior._conv3(x, w3, 0.0, np.matmul), direct3)
        np.testing.assert_array_equal(context._spatial(x, context.HALVES[1], w12, np.matmul), np.stack(expected, 1))
