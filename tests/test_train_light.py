"""Light-synthesis training smoke test: a few steps on tec-fp's frozen latents, resume, export beside tec-fp's
files; the exported model writes tec-fp's symbols and decodes them through its own synthesis."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
rasterio = pytest.importorskip("rasterio")

from tec_zarr import models, pipeline  # noqa: E402
from tec_zarr.bitstream.chunk import unpack  # noqa: E402
from tec_zarr.train import data, light, light_export  # noqa: E402

from common import seasonal_layout  # noqa: E402

pytestmark = pytest.mark.train
ARGS = ["--crop", "32", "--batch", "2", "--channels", "8", "--depth", "1", "--log-every", "1", "--val-every", "2",
        "--threads", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, cube):
    return seasonal_layout(tmp_path_factory.mktemp("data"), cube)


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert light.main(["--data", str(data_root), "--out", str(out), "--steps", "2", *ARGS]) == 0
    return out


def test_logs_hold_out_the_validation_places_and_resume(run, data_root):
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["quality"] for r in [x for x in lines if "validation" in x][-1]["validation"]] == list(range(5))
    before = torch.load(run / "checkpoint.pt", weights_only=False)
    assert before["step"] == 2 and not any(p in n for n in before["train_images"] for p in data.VALIDATION_PLACES)
    assert light.main(["--data", str(data_root), "--out", str(run), "--steps", "3", *ARGS]) == 0
    after = torch.load(run / "checkpoint.pt", weights_only=False)
    assert after["step"] == 3
    assert not torch.equal(before["model"]["to_pixels.weight"], after["model"]["to_pixels.weight"])


def test_slim_checkpoint_continues(run, data_root, tmp_path):
    """A committed (slim) light checkpoint continues in place with a new optimizer and sampler."""
    from tec_zarr.train import loop

    loop.keep_checkpoint(run / "checkpoint.pt", tmp_path / "kept")
    step = torch.load(tmp_path / "kept" / "checkpoint.pt", weights_only=False)["step"]
    assert light.main(["--data", str(data_root), "--out", str(tmp_path / "kept"), "--steps", str(step + 1), *ARGS]) == 0
    after = torch.load(tmp_path / "kept" / "checkpoint.pt", weights_only=False)
    assert after["step"] == step + 1 and "opt" in after


def test_export_writes_the_base_models_symbols(run, tmp_path, monkeypatch, cube):
    folder = light_export.export(run / "checkpoint.pt", "tec-light-smoke", "0", "tec-fp",
                                 tmp_path / "models" / "tec-light-smoke", None)
    manifest = json.loads((folder / "manifest.json").read_text())
    base = models.get_card("tec-fp")
    assert {f: d for f, d in manifest["files"].items() if f != "decoder.onnx"} == \
        {f: d for f, d in base.files.items() if f != "decoder.onnx"}
    assert manifest["files"]["decoder.onnx"] != base.files["decoder.onnx"]
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    try:
        image = np.ascontiguousarray(cube[1, :, :40, :52])
        ours = pipeline.encode_chunk(image, model="tec-light-smoke", quality=1)
        theirs = pipeline.encode_chunk(image, model="tec-fp", quality=1)
        assert unpack(ours)[2] == unpack(theirs)[2]  # the same payload: same symbols and bits
        assert pipeline.read_header(ours).model == "tec-light-smoke"
        decoded = pipeline.decode_chunk(ours)
        assert decoded.shape == image.shape and decoded.dtype == image.dtype
        net, _ = light_export.load_checkpoint(run / "checkpoint.pt")
        model = models.load_model("tec-light-smoke")
        y = pipeline.decode.parse(ours).y_hat()
        with torch.no_grad():
            expected = net(torch.from_numpy(y)).numpy()
        np.testing.assert_allclose(model.decoder.run(y), expected, rtol=0, atol=1e-4)  # the ONNX graph is the net
    finally:
        models.clear_cache()


def test_export_refuses_a_base_with_other_gains(run, tmp_path):
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert np.array_equal(np.asarray(ckpt["base_inv_gain"], np.float32), models.load_model("tec-fp").inv_gain)
    ckpt["base_inv_gain"] = (np.asarray(ckpt["base_inv_gain"]) * 1.01).tolist()
    torch.save(ckpt, tmp_path / "light.pt")
    with pytest.raises(SystemExit, match="inverse gains"):
        light_export.export(tmp_path / "light.pt", "tec-light-x", "0", "tec-fp", tmp_path / "m" / "tec-light-x", None)


def test_pruned_synthesis_keeping_every_channel_is_the_base_synthesis():
    """``--kind pruned`` starts from the base's weights: with all 64 hidden channels it is tec-fp's synthesis."""
    from tec_zarr.train.export import load_checkpoint

    base, _ = load_checkpoint(light.DEFAULT_BASE)
    net = light.build(light.LightConfig(channels=64, kind="pruned"))
    net.start_from(base)
    y = torch.randn(1, 192, 6, 5) * 3
    with torch.no_grad():
        torch.testing.assert_close(net(y), base.synthesise(y), rtol=0, atol=1e-5)


def test_pruned_synthesis_trains_resumes_and_exports(data_root, tmp_path):
    out = tmp_path / "pruned"
    args = ["--data", str(data_root), "--out", str(out), "--kind", "pruned", "--channels", "16", *ARGS[:4], *ARGS[8:]]
    assert light.main([*args, "--steps", "2"]) == 0
    before = torch.load(out / "checkpoint.pt", weights_only=False)
    assert before["config"]["kind"] == "pruned" and before["model"]["g_s.0.weight"].shape[1] == 16
    assert light.main([*args, "--steps", "3"]) == 0
    after = torch.load(out / "checkpoint.pt", weights_only=False)
    assert after["step"] == 3 and not torch.equal(before["model"]["g_s.0.weight"], after["model"]["g_s.0.weight"])
    folder = light_export.export(out / "checkpoint.pt", "tec-pruned-smoke", "0", "tec-fp", tmp_path / "m", None)
    assert "pruned copy of the base's synthesis" in json.loads((folder / "manifest.json").read_text())["architecture"]


def test_export_keeps_the_base_synthesis_at_chosen_qualities(run, tmp_path, monkeypatch, cube):
    """``--base-synthesis-at``: those qualities decode to the base model's very pixels, the others through the light
    synthesis; the same payload at every quality."""
    folder = light_export.export(run / "checkpoint.pt", "tec-light-mixed", "0", "tec-fp",
                                 tmp_path / "models" / "tec-light-mixed", None, base_synthesis_at=(3, 4))
    manifest = json.loads((folder / "manifest.json").read_text())
    base = models.get_card("tec-fp")
    assert manifest["files"]["base-decoder.onnx"] == base.files["decoder.onnx"]
    assert json.loads((folder / "decoders.json").read_text())["per_quality"] == \
        ["decoder.onnx"] * 3 + ["base-decoder.onnx"] * 2
    assert manifest["base_synthesis_at"] == [3, 4] and "qualities 3, 4 decode through tec-fp's own" in \
        manifest["architecture"]
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    try:
        image = np.ascontiguousarray(cube[1, :, :40, :52])
        for quality, same_pixels in ((1, False), (3, True), (4, True)):
            ours = pipeline.encode_chunk(image, model="tec-light-mixed", quality=quality)
            theirs = pipeline.encode_chunk(image, model="tec-fp", quality=quality)
            assert unpack(ours)[2] == unpack(theirs)[2]
            assert np.array_equal(pipeline.decode_chunk(ours), pipeline.decode_chunk(theirs)) == same_pixels
    finally:
        models.clear_cache()


def test_export_refuses_qualities_the_base_lacks(run, tmp_path):
    with pytest.raises(SystemExit, match="among the base's qualities 0..4"):
        light_export.export(run / "checkpoint.pt", "tec-light-x", "0", "tec-fp", tmp_path / "m" / "tec-light-x", None,
                            base_synthesis_at=(5,))
    assert not (tmp_path / "m").exists()  # refused before anything was written


def test_export_again_without_base_synthesis_drops_its_files(run, tmp_path):
    folder = tmp_path / "m" / "tec-light-y"
    light_export.export(run / "checkpoint.pt", "tec-light-y", "0", "tec-fp", folder, None, base_synthesis_at=(4, 4))
    assert json.loads((folder / "manifest.json").read_text())["base_synthesis_at"] == [4]
    light_export.export(run / "checkpoint.pt", "tec-light-y", "0", "tec-fp", folder, None)
    assert not (folder / "decoders.json").exists() and not (folder / "base-decoder.onnx").exists()
    assert "base_synthesis_at" not in json.loads((folder / "manifest.json").read_text())


def test_trains_only_the_qualities_asked(data_root, tmp_path):
    """--qualities: a synthesis that will decode only some qualities learns on those alone (the log's training
    records hold no other), validation still reports all five; a resumed run keeps them unless told otherwise, and
    the checkpoint and the exported manifest keep every stretch's steps and qualities."""
    out = tmp_path / "some"
    args = ["--data", str(data_root), "--out", str(out), "--kind", "pruned", "--channels", "16", *ARGS[:4], *ARGS[8:]]
    assert light.main([*args, "--steps", "3", "--qualities", "1", "0", "1"]) == 0
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    trained = {q for x in lines if "train" in x for q in x["train"]}
    assert trained and trained <= {"0", "1"}
    assert len([x for x in lines if "validation" in x][-1]["validation"]) == 5
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["trained_qualities"] == [0, 1]
    assert light.main([*args, "--steps", "4"]) == 0  # resumed without --qualities: the checkpoint's
    assert light.main([*args, "--steps", "6", "--qualities", "2"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["quality_segments"] == [{"steps": [0, 4], "qualities": [0, 1]}, {"steps": [4, 6], "qualities": [2]}]
    folder = light_export.export(out / "checkpoint.pt", "tec-some-smoke", "0", "tec-fp", tmp_path / "m", None,
                                 base_synthesis_at=(3, 4))
    assert json.loads((folder / "manifest.json").read_text())["training"]["synthesis_segments"] == \
        ckpt["quality_segments"]
    with pytest.raises(SystemExit, match="--qualities among the base's 0..4"):
        light.main([*args, "--steps", "7", "--qualities", "5"])


def test_export_refuses_a_base_with_per_quality_syntheses(run, tmp_path):
    """A base naming its graphs per quality (tec-fp-2-half) would lose them: export on its own base instead."""
    with pytest.raises(SystemExit, match="one synthesis for every quality"):
        light_export.export(run / "checkpoint.pt", "tec-light-z", "0", "tec-fp-2-half", tmp_path / "m" / "z", None)
    assert not (tmp_path / "m").exists()
