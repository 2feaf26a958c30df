"""The burst trainer: packed data, robust augmentation, a clock-bounded run that either trainer resumes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tec_zarr.train import __main__ as train_main  # noqa: E402
from tec_zarr.train import burst, data, pack, robust  # noqa: E402

pytestmark = pytest.mark.train

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = ["--init", "", "--channels", "8", "--latent-channels", "16", "--stages", "2", "--crop", "32", "--batch", "2",
        "--threads", "1", "--device", "cpu", "--log-every", "2"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A small pack of real images from shared/data: two training images (one with replicated 20 m / 60 m bands),
    two validation crops and one desert crop, all cut small so the test stays quick."""
    if not (SHARED_DATA / data.SEASONAL).is_dir():
        pytest.skip("no shared/data beside the repository")
    pytest.importorskip("rasterio")
    images = data.load_images(SHARED_DATA)
    train, val = data.split(images)
    seasonal = next(im for im in train if im.name.startswith("ssl4eos12_val_"))
    replicated = next(im for im in train if im.place.startswith("T24"))  # SSL4EO L1C: nearest-upsampled bands
    train = [data.Image(im.name, im.place, im.reflectance[:, :96, :96]) for im in (seasonal, replicated)]
    val = [data.Image(im.name, im.place, im.reflectance[:, :64, :64]) for im in (val[0], val[-1])]
    desert = next(im for im in images if im.place == data.OUT_OF_SOURCE_PLACE)
    path = tmp_path_factory.mktemp("pack") / "burst-data.npz"
    pack.write(path, data.packed_entries(train, val, desert.reflectance[None, :, :64, :64], size=64))
    return path


def test_pack_round_trip_is_lossless(packed):
    rng = np.random.default_rng(1)
    dn = rng.integers(0, 65536, size=(12, 17, 23), dtype=np.uint16)
    dn[:, 0, 0], dn[:, -1, -1] = 0, 65535
    blob, refs, gains = pack.encode_dn(dn)
    np.testing.assert_array_equal(pack.decode_dn(blob, dn.shape, refs, gains), dn)
    smooth = np.cumsum(rng.integers(0, 40, size=(12, 31, 29)), axis=2).astype(np.uint16)
    for step in (2, 4, 8):  # the pack script's fallbacks where a lossless pack would not travel to a GPU machine
        blob, refs, gains = pack.encode_dn(smooth, step=step)
        error = np.abs(pack.decode_dn(blob, smooth.shape, refs, gains, step=step).astype(int) - smooth)
        assert error.max() <= step // 2

    train, val = data.split(data.load_images(packed))
    assert len(train) == 2 and len(val) == 2 and all(im.reflectance.dtype == np.float32 for im in train)
    assert data.out_of_source_crops(packed, 64).shape == (1, 12, 64, 64)


def _blocks_constant(x: torch.Tensor, bands, factor: int, phase: int) -> float:
    """Largest spread inside the whole ``factor`` blocks (grid starting ``phase`` before the first pixel)."""
    start = (factor - phase) % factor
    part = x[:, list(bands), start:, start:]
    n = part.shape[-1] // factor
    part = part[..., : n * factor, : n * factor].reshape(*part.shape[:2], n, factor, n, factor)
    return float((part.amax(dim=(3, 5)) - part.amin(dim=(3, 5))).max())


def test_augmentations_keep_shape_and_values(packed):
    train, val = data.split(data.load_images(packed))
    cfg = robust.AugmentConfig(p_resample=0.9, p_gain=0.5, p_haze=0.5, p_bright=0.5, p_nodata=0.3)
    sampler = robust.DeviceSampler(train, 48, seed=3, device="cpu", augment=cfg, fill=np.full(12, 0.1, np.float32))
    state = sampler.state()
    x = sampler.batch(16)
    assert x.dtype == torch.float32 and x.shape == (16, 12, 48, 48)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= robust.MAX_REFLECTANCE + 1e-6
    assert torch.allclose(x * 1e4, torch.round(x * 1e4), atol=2e-3)  # whole DN, up to float32 rounding
    sampler.restore(state)
    assert torch.equal(sampler.batch(16), x)  # resumable: the Generator's state decides everything

    # Without augmentation the device sampler cuts exactly CropSampler's crops.
    plain = robust.DeviceSampler(train, 48, seed=5, device="cpu")
    np.testing.assert_array_equal(plain.batch(4).numpy(), data.CropSampler(train, 48, seed=5).batch(4))

    crops = torch.from_numpy(data.validation_crops(val, 64))
    near = robust.remade(crops, "nearest")
    assert near.shape == crops.shape and near.dtype == crops.dtype and torch.isfinite(near).all()
    assert _blocks_constant(near, robust.BANDS_20M, 2, 0) == 0.0
    assert _blocks_constant(near, robust.BANDS_60M, 6, 0) == 0.0
    assert torch.equal(near[:, [1, 2, 3, 7]], crops[:, [1, 2, 3, 7]])  # 10 m bands untouched
    assert _blocks_constant(robust.remade(crops, "bilinear"), robust.BANDS_20M, 2, 0) > 0
    # random phases: blocks on the shifted grid, the 20 m grid inside the 60 m one
    r = robust.Resampler("cpu")
    for phase in (1, 4):
        y = r(crops, np.zeros(len(crops), int), np.full(len(crops), phase), np.full(len(crops), phase))
        assert _blocks_constant(y, robust.BANDS_20M, 2, phase % 2) < 1e-6
        assert _blocks_constant(y, robust.BANDS_60M, 6, phase) < 1e-6


def test_burst_runs_on_the_clock_and_both_trainers_resume(packed, tmp_path):
    out = tmp_path / "burst"
    # a budget spent before the first step: the run still takes one step, then validates and saves
    assert burst.main(["--data", str(packed), "--out", str(out), "--minutes", "0.001", *TINY]) == 0
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert lines[0]["initial"] and lines[0]["step"] == 0  # the starting weights, validated before any step
    val = [x for x in lines if "validation" in x][-1]
    assert set(val["out_of_source"]) == {"nearest", "nearest, coded", "bilinear", "desert"}
    for rows in [val["validation"], *val["out_of_source"].values()]:
        assert len(rows) == 5 and all(np.isfinite(r["bpp"]) and np.isfinite(r["psnr"]) for r in rows)
    first = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert first["step"] > 0 and first["augment"]["p_resample"] > 0

    # the protocol report reads the run's log: every set against the starting weights at equal PSNR
    spec = importlib.util.spec_from_file_location("protocol", Path(__file__).resolve().parents[1] / "benchmarks" /
                                                  "protocol.py")
    protocol = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protocol)

    report = protocol.summarize(out / "log.jsonl")
    assert report["start_step"] == 0 and report["validations"][-1]["step"] == first["step"]
    assert set(report["validations"][-1]["sets"]) == {"validation", "nearest", "nearest, coded", "bilinear", "desert"}
    # against another run's starting weights (here its own): the same rows; a log of other sets is refused
    assert protocol.summarize(out / "log.jsonl", against=out / "log.jsonl")["validations"] == report["validations"]
    other = tmp_path / "other.jsonl"
    first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    other.write_text(json.dumps({**first, "out_of_source": {}}) + "\n")
    with pytest.raises(SystemExit, match="expected the in-source set and an out-of-source one shared"):
        protocol.summarize(out / "log.jsonl", against=other)
    same = protocol.ratios(report["start"]["validation"], report["start"]["validation"])
    assert same and np.allclose(same, 1.0)  # the starting curve against itself
    assert "| step |" in protocol.table({**report, "utc": "now", "machine": "here"})
    # fresh weights saw no desert: nothing marked; a control run against itself changes nothing at any step
    assert report["start_trained_on"] == [] and "desert 100 m *" not in protocol.table(
        {**report, "utc": "now", "machine": "here"})
    itself = protocol.summarize(out / "log.jsonl", control=out / "log.jsonl", start_trained_on=("desert",))
    rows = itself["control"]["validations"]
    assert rows and all(r["control_step"] == r["step"] for r in rows)
    assert all(np.allclose(s["ratios"], 1.0) for r in rows for s in r["sets"].values() if s["ratios"])
    marked = protocol.table({**itself, "utc": "now", "machine": "here"})
    assert "desert 100 m *" in marked and "| step (control's step) |" in marked

    # the plain trainer continues the burst's run directory on CPU ...
    argv = ["--data", str(packed), "--out", str(out), "--steps", str(first["step"] + 2), "--crop", "32", "--batch",
            "2", "--threads", "1", "--device", "cpu", "--val-every", "1000"]
    assert train_main.main(argv) == 0
    second = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert second["step"] == first["step"] + 2
    # ... and so does the burst
    assert burst.main(["--data", str(packed), "--out", str(out), "--minutes", "0.001", *TINY[2:]]) == 0
    assert torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["step"] > second["step"]


def test_resampling_recipe_changes_only_the_20m_and_60m_bands(packed, tmp_path):
    """``--augment resampling``: the kernel of the 20 m and 60 m bands varies, nothing else does."""
    train, _ = data.split(data.load_images(packed))
    recipe = burst.AUGMENTS["resampling"]
    assert recipe.p_resample > 0 and recipe.p_gain == recipe.p_haze == recipe.p_bright == recipe.p_nodata == 0
    x = robust.DeviceSampler(train, 48, seed=7, device="cpu", augment=recipe).batch(16)
    plain = robust.DeviceSampler(train, 48, seed=7, device="cpu").batch(16)
    assert x.shape == plain.shape
    ten_m = [1, 2, 3, 7]
    # the same crops (the augmentation draws after the crop), 10 m bands untouched, others re-made on some crops
    assert torch.equal(x[:, ten_m], plain[:, ten_m])
    others = [b for b in range(12) if b not in ten_m]
    assert not torch.equal(x[:, others], plain[:, others])
    # a pack has no desert image to train on: refused, not silently ignored
    with pytest.raises(SystemExit, match="desert tile among the training images"):
        burst.main(["--data", str(packed), "--out", str(tmp_path / "d"), "--minutes", "0.001", "--with-desert",
                    *TINY])


def test_coded_crops_are_what_the_codec_codes(packed):
    """``p_coded``: a replicated crop is trained as the codec codes it. The transform gets what the encoder hands it
    (``replication.smooth`` of the blocks, at the crop's phase) and the reconstruction counts as its block means
    (``replication.project``, the decoder's step); other crops and the 10 m bands pass unchanged."""
    from tec_zarr import replication

    train, _ = data.split(data.load_images(packed))
    recipe = burst.AUGMENTS["resampling-coded"]
    sampler = robust.DeviceSampler(train, 48, seed=11, device="cpu", augment=recipe)
    x, coding = sampler.batch_coded(16)
    assert coding is not None
    coded = np.flatnonzero(coding.kernel >= 0)
    assert 0 < len(coded) < 16  # the replicated crops only (p_resample < 1, a third of them another kernel)
    smoothed = coding.encoder_input(x)
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.01, x.shape).astype(np.float32))
    projected = coding.decoded(x + noise)
    others = [i for i in range(16) if i not in coded]
    assert torch.equal(smoothed[others], x[others]) and torch.equal(projected[others], (x + noise)[others])
    for i in coded:
        for factor, bands in ((2, robust.BANDS_20M), (6, robust.BANDS_60M)):
            py, px = (factor - int(coding.phase_y[i]) % factor) % factor, (factor - int(coding.phase_x[i]) % factor) % factor
            blocks = tuple(replication.Blocks(factor, py, px) if c in bands else replication.NATIVE for c in range(12))
            image = x[i : i + 1].numpy().astype(np.float64)
            assert replication.detect(image, np.ones(image.shape, bool))[bands[0]] == blocks[bands[0]]
            want = image.copy()
            replication.smooth(want, np.ones(want.shape, bool), blocks)
            np.testing.assert_allclose(smoothed[i, list(bands)].numpy(), want[0, list(bands)], atol=2e-5)
            want = replication.project((x + noise)[i : i + 1].numpy().astype(np.float64), blocks)
            np.testing.assert_allclose(projected[i, list(bands)].numpy(), want[0, list(bands)], atol=2e-6)
    ten_m = [1, 2, 3, 7]
    assert torch.equal(smoothed[:, ten_m], x[:, ten_m]) and torch.equal(projected[:, ten_m], (x + noise)[:, ten_m])
    # a recipe without it draws exactly as before (resumed runs keep their crops), and codes nothing
    plain = robust.DeviceSampler(train, 48, seed=11, device="cpu", augment=burst.AUGMENTS["resampling"])
    y, none = plain.batch_coded(16)
    assert none is None and torch.equal(y, x)  # the same crops and kernels: the extra draw comes last
    after = robust.DeviceSampler(train, 48, seed=11, device="cpu", augment=burst.AUGMENTS["resampling"])
    after.batch(16)
    assert not torch.equal(after.batch(16), sampler.batch(16))  # ... but p_coded's draw moves the later batches


def test_burst_validates_the_coded_nearest_version(packed, tmp_path):
    out = tmp_path / "coded"
    assert burst.main(["--data", str(packed), "--out", str(out), "--minutes", "0.001", "--augment",
                       "resampling-coded", *TINY]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    seen = [r["out_of_source"] for r in rows if "out_of_source" in r]
    assert seen and all({"nearest", "nearest, coded", "bilinear"} <= set(s) for s in seen)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["augment"]["p_coded"] == 1.0


def test_out_of_source_sets_seen_by_the_starting_weights():
    """tec-fp's checkpoint was trained on the desert tile: a burst from it must say so in its settings line."""
    assert burst.out_of_source_seen(["ssl4eos12_val_0080717_0", "S2A_29RKH_20200219_0_L2A_12band_100m"]) == ["desert"]
    assert burst.out_of_source_seen(["ssl4eos12_val_0080717_0", "s2cloudless_scene"]) == []
    shipped = REPO / "checkpoints" / "tec-fp" / "checkpoint.pt"
    if shipped.exists():
        names = torch.load(shipped, map_location="cpu", weights_only=False)["train_images"]
        assert burst.out_of_source_seen(names) == ["desert"]


def test_burst_script_needs_no_codec_runtime(packed, tmp_path):
    """scripts/burst.py runs the trainer without the package's __init__: no onnx, onnxruntime or rasterio."""
    code = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "               ('onnx', 'onnxruntime', 'rasterio', 'numcodecs', 'zarr', 'constriction'))\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(REPO / "scripts" / "burst.py"), "--data", str(packed),
                          "--out", str(tmp_path / "run"), "--minutes", "0.001", *TINY],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout


def _tiny_context_checkpoint(path: Path, latent_channels: int) -> Path:
    """A context checkpoint for the tiny transforms of ``TINY`` (as ``train.context`` writes them)."""
    from tec_zarr.train.context import ContextConfig, ContextPrior
    from tec_zarr.train.hyper import HyperConfig

    half = latent_channels // 2
    hyper_cfg = HyperConfig(latent_channels=latent_channels, z_channels=8, hidden=8, synthesis_hidden=8)
    torch.manual_seed(5)
    net = ContextPrior(ContextConfig(groups=(half, half), hidden=8), hyper_cfg, np.ones((5, latent_channels)),
                       np.arange(latent_channels)[::-1].copy())
    torch.save({"config": hyper_cfg.to_dict(), "context": net.cfg.to_dict(), "order": net.order.numpy(),
                "model": net.state_dict(), "step": 0, "started_from": "a test"}, path)
    return path


def test_relaxed_context_rate_reaches_the_encoder():
    """The joint trainer's rate: relaxed (rounded straight through), its gradient reaches the latents; as coded, it
    does not; both are the bits of the same integers."""
    from tec_zarr.train.context import ContextConfig, ContextPrior
    from tec_zarr.train.hyper import HyperConfig

    net = ContextPrior(ContextConfig(groups=(8, 8), hidden=8),
                       HyperConfig(latent_channels=16, z_channels=8, hidden=8, synthesis_hidden=8),
                       np.full((5, 16), 3.0), np.arange(16))
    with torch.no_grad():  # z no longer depends on y: the only path left from y to the bits is the symbols'
        for p in net.hyper.h_a.parameters():
            p.zero_()
    start = torch.randn(2, 16, 8, 8)
    bits = {}
    for relaxed in (True, False):
        y = start.clone().requires_grad_(True)
        out = net(y, torch.tensor([0, 4]), relaxed=relaxed, noise=False)
        (out["bits_y"].sum()).backward()
        reached = float(y.grad.abs().sum())
        assert (reached > 0) == relaxed
        bits[relaxed] = out["bits_y"].detach()
    assert torch.isfinite(bits[True]).all() and (bits[True] > 0).all()
    torch.testing.assert_close(bits[True], bits[False])


def test_joint_trainer_keeps_the_decoder_resumes_and_splits(packed, tmp_path):
    from tec_zarr.train import context_export, joint
    from tec_zarr.train.model import ModelConfig, TECFactorized

    base = tmp_path / "base"
    assert burst.main(["--data", str(packed), "--out", str(base), "--minutes", "0.001", *TINY]) == 0
    start = torch.load(base / "checkpoint.pt", map_location="cpu", weights_only=False)
    ctx = _tiny_context_checkpoint(tmp_path / "ctx.pt", 16)
    out = tmp_path / "joint"
    args = ["--data", str(packed), "--out", str(out), "--crop", "32", "--batch", "2", "--threads", "1", "--device",
            "cpu", "--log-every", "2", "--no-initial-validation"]
    assert joint.main([*args, "--init", str(base / "checkpoint.pt"), "--context", str(ctx),
                       "--steps", str(start["step"] + 3)]) == 0
    first = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert first["step"] == start["step"] + 3
    decoder = [k for k in start["model"] if k.startswith(("g_s.", "s_lin.")) or k in ("gain", "inv_gain")]
    encoder = [k for k in start["model"] if k.startswith(("g_a.", "a_lin."))]
    assert decoder and encoder
    assert all(torch.equal(start["model"][k], first["model"][k]) for k in decoder)  # the decoder and gains stay
    assert all(not torch.equal(start["model"][k], first["model"][k]) for k in encoder)  # the encoder learns
    val = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if "validation" in x][-1]
    for rows in [val["validation"], *val["out_of_source"].values()]:
        assert len(rows) == 5 and all(np.isfinite([r["bpp"], r["factorized_bpp"], r["psnr"]]).all() for r in rows)

    assert joint.main([*args, "--steps", str(start["step"] + 5)]) == 0  # resumes: no --init or --context needed
    second = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert second["step"] == start["step"] + 5 and second["opt_prior"]["state"]
    with pytest.raises(SystemExit, match="without a context model"):
        joint.main(["--data", str(packed), "--out", str(base), "--steps", str(start["step"] + 9), *TINY[2:]])

    transform, context = joint.split(out / "checkpoint.pt", tmp_path / "split")
    fp = torch.load(transform, map_location="cpu", weights_only=False)
    model = TECFactorized(ModelConfig.from_dict(fp["config"]))
    model.load_state_dict(fp["model"])  # what train.export reads
    assert not any(k.startswith("opt") for k in fp) and "sampler" not in fp
    net, _ = context_export.load_checkpoint(context)  # what train.context_export reads
    assert torch.equal(net.hyper.gain, fp["model"]["gain"].float())
