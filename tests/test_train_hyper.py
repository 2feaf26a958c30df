"""Hyperprior training smoke test: precompute latents, a few steps, resume, export to a folder that round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
rasterio = pytest.importorskip("rasterio")

from tec_zarr import models, pipeline  # noqa: E402
from tec_zarr.train import hyper, hyper_export  # noqa: E402

from common import seasonal_layout  # noqa: E402

pytestmark = pytest.mark.train
ARGS = ["--crops", "4", "--crop", "64", "--batch", "2", "--log-every", "1", "--val-every", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, cube):
    return seasonal_layout(tmp_path_factory.mktemp("data"), cube)


def test_train_resume_export_round_trip(data_root, tmp_path, monkeypatch, cube):
    run = tmp_path / "run"
    assert hyper.main(["--data", str(data_root), "--out", str(run), "--steps", "2", *ARGS]) == 0
    assert hyper.main(["--data", str(data_root), "--out", str(run), "--steps", "3", *ARGS]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3
    info = json.loads((run / "latents.json").read_text())
    assert not set(info["train_images"]) & set(info["validation_images"])
    out = tmp_path / "models" / "tec-hp-smoke"
    hyper_export.export(run / "checkpoint.pt", "tec-hp-smoke", "0", out, run, None)
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    try:
        image = np.ascontiguousarray(cube[1, :, :40, :50])  # pads to 48 x 64
        enc = pipeline.encode_chunk(image, model="tec-hp-smoke", quality=1)
        assert pipeline.read_header(enc).latent == (192, 12, 16)
        dec = pipeline.decode_chunk(enc)
        assert dec.shape == image.shape and dec.dtype == image.dtype
    finally:
        models.clear_cache()


def test_best_validated_checkpoint_is_kept_across_resumes(data_root, tmp_path):
    """best.pt holds the checkpoint of the lowest validation score in the log, over every leg of the run."""
    run = tmp_path / "run"
    args = ["--data", str(data_root), "--out", str(run), *ARGS, "--val-every", "1", "--lr", "3e-2"]
    assert hyper.main([*args, "--steps", "3"]) == 0
    assert hyper.main([*args, "--steps", "6"]) == 0
    scores = {r["step"]: hyper.Trainer.validation_score(r["validation"])
              for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "validation" in r}
    assert sorted(scores) == [1, 2, 3, 4, 5, 6]
    step = min(scores, key=scores.get)
    best = json.loads((run / "best.json").read_text())
    assert best["step"] == step and best["score"] == pytest.approx(scores[step])
    kept = torch.load(run / "best.pt", weights_only=False)
    assert kept["step"] == step
    if step != 6:  # the weights are that step's, not the last ones
        last = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
        assert any(not torch.equal(kept["model"][k], v) for k, v in last.items())


def test_context_train_resume_export_round_trip(data_root, tmp_path, monkeypatch, cube):
    from tec_zarr.train import context, context_export

    run = tmp_path / "run"
    args = ["--data", str(data_root), "--out", str(run), "--latent-crop", "8", *ARGS]
    assert context.main([*args, "--steps", "2"]) == 0
    assert context.main([*args, "--steps", "3"]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and sorted(ckpt["order"].tolist()) == list(range(192))
    # the last group's hidden ReLUs switched off, as fine-tuning tec-ctx on tec-fp-2's latents left them: its layer
    # has no calibration peak, and the export must still give every layer a shift of at least 0
    ckpt["model"]["contexts.4.hidden.weight"].zero_()
    ckpt["model"]["contexts.4.hidden.bias"].fill_(-1.0)
    torch.save(ckpt, run / "checkpoint.pt")
    out = tmp_path / "models" / "tec-ctx-smoke"
    context_export.export(run / "checkpoint.pt", "tec-ctx-smoke", "0", out, run, None)
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["entropy_model"] == "context" and manifest["context"]["groups"] == [16, 16, 32, 64, 64]
        dead = models.load_model("tec-ctx-smoke").coder.context.networks[4]
        assert min(dead.shifts) >= 0 and dead.shifts[1] == 0
        image = np.ascontiguousarray(cube[1, :, :48, :64])  # a multiple of 16: tec-fp pads it no differently
        enc = pipeline.encode_chunk(image, model="tec-ctx-smoke", quality=3)
        reference = pipeline.decode_chunk(pipeline.encode_chunk(image, model="tec-fp", quality=3))
        np.testing.assert_array_equal(pipeline.decode_chunk(enc), reference)  # same symbols, same pixels
    finally:
        models.clear_cache()


def test_reinit_groups_gives_a_silent_group_new_weights_where_a_run_starts(data_root, tmp_path):
    from tec_zarr.train import context

    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--data", str(data_root), "--latent-crop", "8", *ARGS]
    assert context.main(["--out", str(first), *common, "--steps", "1"]) == 0
    init = torch.load(first / "checkpoint.pt", weights_only=False)
    init["model"]["contexts.4.hidden.bias"].fill_(-1.0)  # group 4's hidden ReLUs off: no gradient reaches it
    torch.save(init, first / "init.pt")
    frozen = ["--lr", "0", "--lr-hyper", "0", "--lr-entropy", "0"]  # nothing trains: only the re-initialization
    args = ["--out", str(second), *common, *frozen, "--init", str(first / "init.pt"), "--reinit-groups", "4"]
    assert context.main([*args, "--steps", "2"]) == 0
    got = torch.load(second / "checkpoint.pt", weights_only=False)
    for key, value in init["model"].items():
        assert torch.equal(got["model"][key], value) != key.startswith("contexts.4."), key
    assert "channel groups [4] re-initialized" in got["started_from"]
    assert context.main([*args, "--steps", "3"]) == 0  # a resumed run keeps its weights: no second re-initialization
    again = torch.load(second / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(again["model"][k], v) for k, v in got["model"].items())
    with pytest.raises(SystemExit, match="reinit-groups"):
        context.main(["--out", str(tmp_path / "third"), *common, "--init", str(first / "init.pt"),
                      "--reinit-groups", "5", "--steps", "2"])


def test_init_from_another_base_keeps_the_bases_gains(data_root, tmp_path):
    """--init with a checkpoint trained on tec-fp, --base tec-fp-2: the networks start from the checkpoint, the
    latent gains stay tec-fp-2's (tec-fp's would code other symbols than tec-fp-2 writes), and the exporter refuses a
    checkpoint whose gains are not its base's."""
    first = tmp_path / "fp"
    assert hyper.main(["--data", str(data_root), "--out", str(first), "--steps", "1", *ARGS]) == 0
    second = tmp_path / "fp2"
    assert hyper.main(["--data", str(data_root), "--out", str(second), "--base", "tec-fp-2", "--init",
                       str(first / "checkpoint.pt"), "--steps", "2", *ARGS]) == 0
    ckpt = torch.load(second / "checkpoint.pt", weights_only=False)
    assert np.array_equal(ckpt["model"]["gain"].numpy(), np.asarray(models.load_model("tec-fp-2").gain, np.float32))
    assert not np.array_equal(ckpt["model"]["gain"].numpy(), np.asarray(models.load_model("tec-fp").gain, np.float32))
    ckpt["model"]["gain"] = torch.as_tensor(np.asarray(models.load_model("tec-fp").gain, np.float32))
    torch.save(ckpt, second / "checkpoint.pt")
    with pytest.raises(SystemExit, match="other latent gains"):
        hyper_export.export(second / "checkpoint.pt", "tec-hp-wrong", "0", tmp_path / "models" / "w", second, None)


def test_context_from_a_hyperprior_of_another_base_keeps_the_bases_gains(data_root, tmp_path):
    """--init-hyper (default checkpoints/tec-hp, trained on tec-fp) under --base tec-fp-2: tec-fp-2's gains, and the
    run records where its weights came from for the manifest."""
    from tec_zarr.train import context

    hp = tmp_path / "hp"
    assert hyper.main(["--data", str(data_root), "--out", str(hp), "--steps", "1", *ARGS]) == 0
    run = tmp_path / "ctx"
    assert context.main(["--data", str(data_root), "--out", str(run), "--base", "tec-fp-2", "--init-hyper",
                         str(hp / "checkpoint.pt"), "--latent-crop", "8", "--steps", "1", *ARGS]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert np.array_equal(ckpt["model"]["hyper.gain"].numpy(),
                          np.asarray(models.load_model("tec-fp-2").gain, np.float32))
    assert str(hp / "checkpoint.pt") in ckpt["started_from"]
