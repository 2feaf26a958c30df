"""Training smoke test (a few steps on small crops of real data), resume, export parity torch vs ONNX, and the
held-out validation places kept out of everything the trainer fits (images, band statistics, the KLT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
rasterio = pytest.importorskip("rasterio")

from tec_zarr import models, pipeline  # noqa: E402
from tec_zarr.entropy import factorized  # noqa: E402
from tec_zarr.train import __main__ as train_main  # noqa: E402
from tec_zarr.train import data, export  # noqa: E402

from common import seasonal_layout  # noqa: E402

pytestmark = pytest.mark.train

TINY = ["--channels", "8", "--latent-channels", "16", "--stages", "3", "--crop", "32", "--batch", "2",
        "--log-every", "2", "--val-every", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, cube):
    return seasonal_layout(tmp_path_factory.mktemp("data"), cube)


class FitSpy:
    """Records the images the trainer hands to data.band_statistics and data.block_klt (and what they returned)."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.images: dict[str, list] = {}
        self.results: dict[str, object] = {}
        for name in ("band_statistics", "block_klt"):
            mp.setattr(data, name, self._spy(name, getattr(data, name)))

    def _spy(self, name, real):
        def spy(images, *args, **kwargs):
            self.images[name] = list(images)
            self.results[name] = real(images, *args, **kwargs)
            return self.results[name]

        return spy


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_root):
    """A 3-step run of the trainer, and what it fitted its normalization and KLT on."""
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        spy = FitSpy(mp)
        assert train_main.main(["--data", str(data_root), "--out", str(out), "--steps", "3", *TINY]) == 0
    return out, spy


@pytest.fixture(scope="module")
def run_dir(fitted):
    return fitted[0]


def test_training_logs_and_checkpoints(run_dir):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    train = [x for x in lines if "train" in x]
    val = [x for x in lines if "validation" in x]
    assert train and val
    for per_q in train[-1]["train"].values():
        assert np.isfinite(per_q["bpp"]) and per_q["bpp"] > 0 and np.isfinite(per_q["psnr"])
    assert len(val[-1]["validation"]) == 5
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["validation_places"] == list(data.VALIDATION_PLACES)


def test_resume_continues(run_dir, data_root, tmp_path):
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    before = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert train_main.main(["--data", str(data_root), "--out", str(resumed), "--steps", "5", *TINY]) == 0
    after = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert after["step"] == 5
    assert not torch.equal(before["model"]["g_a.0.weight"], after["model"]["g_a.0.weight"])


def test_slim_checkpoint_continues_with_a_new_optimizer(run_dir, data_root, tmp_path):
    """What gets committed (loop.keep_checkpoint: weights, no optimizer or sampler) continues by --init or in place;
    --resume-optimizer, which needs the optimizer state, refuses it by name."""
    from tec_zarr.train import loop

    loop.keep_checkpoint(run_dir / "checkpoint.pt", tmp_path / "kept")
    slim = torch.load(tmp_path / "kept" / "checkpoint.pt", weights_only=False)
    assert not set(slim) & set(loop.RUN_STATE_KEYS) and slim["step"] == 3
    assert (tmp_path / "kept" / "log.jsonl").read_bytes() == (run_dir / "log.jsonl").read_bytes()
    init = ["--data", str(data_root), "--init", str(tmp_path / "kept" / "checkpoint.pt"), "--steps", "4", *TINY]
    assert train_main.main([*init, "--out", str(tmp_path / "a")]) == 0
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["step"] == 4
    with pytest.raises(SystemExit, match="slim"):
        train_main.main([*init, "--out", str(tmp_path / "b"), "--resume-optimizer"])
    assert train_main.main(["--data", str(data_root), "--out", str(tmp_path / "kept"), "--steps", "4", *TINY]) == 0
    assert torch.load(tmp_path / "kept" / "checkpoint.pt", weights_only=False)["step"] == 4


@pytest.fixture(scope="module")
def exported(run_dir, data_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tec-tiny"
    export.export(run_dir / "checkpoint.pt", "tec-tiny", "0", out_dir=folder, calibration_root=data_root)
    return folder


def test_export_parity(exported, run_dir, image, monkeypatch):
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(exported.parent))
    models.clear_cache()
    model = models.load_model("tec-tiny")
    torch_model, ckpt = export.load_checkpoint(run_dir / "checkpoint.pt")

    a = np.ascontiguousarray(image[:, :48, :40])
    x = ((a.astype(np.float32) / 1e4 - model.mean[:, None, None]) / model.std[:, None, None])[None]
    y_onnx = model.encoder.run(x)
    with torch.no_grad():
        y_torch = torch_model.analyse(torch.from_numpy(x)).numpy()
        x_torch = torch_model.synthesise(torch.from_numpy(y_torch)).numpy()
    np.testing.assert_allclose(y_onnx, y_torch, rtol=1e-4, atol=1e-4)
    x_onnx = model.decoder.run(y_torch)
    np.testing.assert_allclose(x_onnx, x_torch, rtol=1e-4, atol=1e-4)

    # symbols: what torch would write is what the runtime writes, and the bitstream returns them exactly
    for q in range(model.qualities):
        sym_torch = np.rint(y_torch * ckpt["model"]["gain"][q].numpy()[None, :, None, None]).astype(np.int32)
        sym_onnx = np.rint(y_onnx * model.gain[q][None, :, None, None]).astype(np.int32)
        assert np.mean(sym_torch != sym_onnx) < 1e-3
        data_bytes = factorized.encode(sym_onnx, q, model.coder.tables)
        np.testing.assert_array_equal(model.coder.decode(data_bytes, q, sym_onnx.shape), sym_onnx)

    enc = pipeline.encode_chunk(a, model="tec-tiny", quality=0)
    assert pipeline.decode_chunk(enc).shape == a.shape

    # the exported integer synthesis (linear path included) matches the float decoder, and lossless is exact
    sym = np.rint(y_onnx * model.gain[1][None, :, None, None]).astype(np.int32)
    dn_int = model.int_synthesis(sym, 1)
    y_hat = (sym * model.inv_gain[1][None, :, None, None]).astype(np.float32)
    x_float = model.decoder.run(y_hat)
    dn_float = (x_float * model.std[:, None, None] + model.mean[:, None, None]) * 1e4
    assert np.abs(dn_int - dn_float).max() <= 2.0
    lossless = pipeline.encode_chunk(a, model="tec-tiny", quality=1, max_error=0)
    np.testing.assert_array_equal(pipeline.decode_chunk(lossless), a)
    models.clear_cache()


# -- the validation places stay out of training ----------------------------------------------------------------------


def _assert_fitted_on_training_images_only(spy: FitSpy, images: list, mean, std, train_names) -> tuple[list, list]:
    """The trainer's training images (as it names them), the images it fitted its band statistics and KLT on, and
    its mean / std: no validation place anywhere. Returns (training, validation) images."""
    by_name = {im.name: im for im in images}
    training = [by_name[n] for n in train_names]
    validation = [im for im in images if im.place in data.VALIDATION_PLACES]
    assert training and validation
    assert not {im.place for im in training} & set(data.VALIDATION_PLACES)
    for name in ("band_statistics", "block_klt"):
        assert [im.name for im in spy.images[name]] == list(train_names), name
    own_mean, own_std = data.band_statistics(training)  # recomputed on the training images alone
    np.testing.assert_array_equal(mean, own_mean)
    np.testing.assert_array_equal(std, own_std)
    all_mean, all_std = data.band_statistics(training + validation)  # with the validation images: other statistics
    assert not np.allclose(all_mean, own_mean, rtol=1e-4) and not np.allclose(all_std, own_std, rtol=1e-4)
    return training, validation


def test_validation_places_stay_out_of_training(fitted, data_root):
    """The smoke run: two dates of a training place, two of validation place 0173706."""
    run_dir, spy = fitted
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    images = data.load_images(data_root)
    training, validation = _assert_fitted_on_training_images_only(
        spy, images, np.asarray(ckpt["mean"], np.float32), np.asarray(ckpt["std"], np.float32), ckpt["train_images"])
    assert len(training) == len(validation) == 2
    klt = spy.results["block_klt"]  # (bands * 8 * 8, 16) for the tiny model
    np.testing.assert_array_equal(klt, data.block_klt(training, *data.band_statistics(training), 8, 16))
    with_val = data.block_klt(training + validation, *data.band_statistics(training + validation), 8, 16)
    assert not np.allclose(np.abs(klt), np.abs(with_val), atol=1e-3)  # the validation images would change it


SHARED_DATA = train_main.DEFAULT_DATA


@pytest.mark.skipif(not (SHARED_DATA / data.SEASONAL).is_dir(), reason=f"no shared data at {SHARED_DATA}")
def test_trainer_on_the_shared_data_holds_out_the_validation_places(tmp_path, monkeypatch):
    """The trainer built on the real shared data (no step taken): places 0173706 and 0181476, all 4 dates each, are
    its validation set and nothing it fits sees them."""
    spy = FitSpy(monkeypatch)
    trainer = train_main.Trainer(train_main.parse_args(["--data", str(SHARED_DATA), "--out", str(tmp_path), *TINY]))
    images = data.load_images(SHARED_DATA)
    validation = [im for im in images if im.place in data.VALIDATION_PLACES]
    assert sorted({im.place for im in validation}) == sorted(data.VALIDATION_PLACES) and len(validation) == 8
    assert trainer.val.shape == (8, 12, 256, 256)
    np.testing.assert_array_equal(trainer.val.numpy(), data.validation_crops(validation))
    _assert_fitted_on_training_images_only(spy, images, trainer.mean, trainer.std, trainer.train_names)


# -- asymmetric models: a pruned synthesis trained together with the encoder ------------------------------------------

def test_asymmetric_model_starts_from_a_pruned_synthesis_trains_resumes_and_exports(data_root, tmp_path, image,
                                                                                     monkeypatch):
    """--synthesis-from puts a pruned light synthesis (train.light --kind pruned) in place of the starting weights'
    own and trains encoder and synthesis together; the run resumes as such, and the export decodes through the
    narrower synthesis."""
    from tec_zarr.train import light

    two_stages = [*TINY[:4], "--stages", "2", *TINY[6:]]
    start = tmp_path / "start"
    assert train_main.main(["--data", str(data_root), "--out", str(start), "--steps", "2", *two_stages]) == 0
    base, _ = export.load_checkpoint(start / "checkpoint.pt")
    pruned = light.build(light.LightConfig(latent_channels=16, channels=4, kind="pruned"))
    pruned.start_from(base)
    torch.save({"config": pruned.cfg.to_dict(), "model": pruned.state_dict()}, tmp_path / "pruned.pt")

    out = tmp_path / "asym"
    args = ["--data", str(data_root), "--out", str(out), *two_stages]
    assert train_main.main([*args, "--init", str(start / "checkpoint.pt"), "--synthesis-from",
                            str(tmp_path / "pruned.pt"), "--steps", "4"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["synthesis_channels"] == 4 and ckpt["step"] == 4
    assert ckpt["model"]["g_s.0.weight"].shape == (16, 4, 5, 5) and ckpt["model"]["g_s.1.gamma_sqrt"].shape == (4, 4)
    assert ckpt["model"]["g_a.0.weight"].shape[0] == 8  # the analysis keeps its width
    assert not torch.equal(ckpt["model"]["g_a.0.weight"], base.state_dict()["g_a.0.weight"])  # and learns
    assert train_main.main([*args, "--steps", "5"]) == 0  # resumes as an asymmetric model, no option needed
    assert torch.load(out / "checkpoint.pt", weights_only=False)["config"]["synthesis_channels"] == 4

    folder = export.export(out / "checkpoint.pt", "tec-asym", "0", out_dir=tmp_path / "m" / "tec-asym",
                           calibration_root=data_root)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["synthesis_channels"] == 4 and "asymmetric: 4 hidden synthesis" in manifest["architecture"]
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(folder.parent))
    models.clear_cache()
    try:
        a = np.ascontiguousarray(image[:, :32, :40])
        assert pipeline.decode_chunk(pipeline.encode_chunk(a, model="tec-asym", quality=0)).shape == a.shape
        lossless = pipeline.encode_chunk(a, model="tec-asym", quality=1, max_error=0)
        np.testing.assert_array_equal(pipeline.decode_chunk(lossless), a)  # the integer synthesis at 4 channels
    finally:
        models.clear_cache()

    with pytest.raises(SystemExit, match="Expected --init, without --resume-optimizer, with --synthesis-from"):
        train_main.main([*args[:2], "--out", str(tmp_path / "d"), *two_stages, "--synthesis-from",
                         str(tmp_path / "pruned.pt"), "--steps", "3"])
    init = ["--init", str(start / "checkpoint.pt"), "--steps", "3"]
    with pytest.raises(SystemExit, match="Got --resume-optimizer instead"):
        train_main.main([*args[:2], "--out", str(tmp_path / "e"), *two_stages, *init, "--resume-optimizer",
                         "--synthesis-from", str(tmp_path / "pruned.pt")])
    wrong = {"config": dict(pruned.cfg.to_dict(), kind="light"), "model": pruned.state_dict()}
    other_gains = {"config": pruned.cfg.to_dict(), "model": pruned.state_dict(),
                   "base_inv_gain": (base.inv_gain.detach() * 2).tolist()}
    for bad, message in ((wrong, "Expected a pruned light synthesis"), (other_gains, "fitted on another encoder")):
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(SystemExit, match=message):
            train_main.main([*args[:2], "--out", str(tmp_path / "c"), *two_stages, *init, "--synthesis-from",
                             str(tmp_path / "bad.pt")])


def test_symmetric_configs_stay_as_they_were():
    """Model cards of symmetric models keep their config keys: synthesis_channels appears only where it is set."""
    from tec_zarr.train.model import ModelConfig

    assert "synthesis_channels" not in ModelConfig().to_dict()
    asym = ModelConfig(synthesis_channels=32)
    assert ModelConfig.from_dict(asym.to_dict()) == asym and asym.synthesis_width == 32
    assert ModelConfig.from_dict(ModelConfig().to_dict()).synthesis_width == 64


def test_decoder_of_ships_the_base_decoder_only_where_the_weights_are_its_own(tmp_path):
    """``export --decoder-of``: a folder whose decoder holds the base's weights gets the base's decoder files byte for
    byte; another model's decoder is refused (its pixels would not be the base's)."""
    import shutil

    from tec_zarr.models.registry import file_path

    def exported_like(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        card = models.get_card(name)
        for f in ("decoder.onnx", "tables.npz"):
            shutil.copyfile(file_path(card, f), folder / f)
        (folder / "synthesis_int.npz").write_bytes(b"recalibrated")  # what a fresh export would have written
        return folder

    folder = exported_like("tec-fp-3")
    export.reuse_decoder(folder, "tec-fp-3")
    base = models.get_card("tec-fp-3")
    for f in ("decoder.onnx", "synthesis_int.npz"):
        assert (folder / f).read_bytes() == file_path(base, f).read_bytes()
    with pytest.raises(SystemExit, match="unchanged for --decoder-of"):
        export.reuse_decoder(exported_like("tec-fp-2"), "tec-fp-3")
