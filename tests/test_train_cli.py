"""``tec train``: a few fine-tuning steps of the default model (tec-fp-3) on a small Zarr store, resumed after an interruption, installed
with its measured RD, and then used to encode; the validation split by place or by tile."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import tec_zarr  # noqa: E402
from tec_zarr import metrics, models  # noqa: E402
from tec_zarr.cli.commands import main as tec_main  # noqa: E402
from tec_zarr.train import data, user  # noqa: E402

pytestmark = pytest.mark.train

FAST = ["--batch", "2", "--crop", "32", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, cube):
    """Two dates of the bundled sample, 160 x 160, as a plain uint16 Zarr store with an MGRS tile attribute."""
    import xarray as xr

    path = tmp_path_factory.mktemp("data") / "archive.zarr"
    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), np.ascontiguousarray(cube[:2, :, :160, :160]))},
                    attrs={"mgrs_tile": "10SFG"})
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path


def test_train_resumes_installs_and_encodes(store, tmp_path, monkeypatch, capsys, cube):
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    run = tmp_path / "run"
    argv = ["train", "--data", str(store), "--name", "my-fp", "--steps", "4", "--val-every", "1", "--out", str(run),
            *FAST]
    calls = {"n": 0}
    real_step = user.UserTrainer.train_step

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(user.UserTrainer, "train_step", interrupted)
    assert tec_main(argv) == 130  # interrupted after two steps, each validated and saved
    assert not (tmp_path / "models" / "my-fp").exists()
    saved = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["step"] - saved["user"]["start"] == 2
    assert tec_main(argv) == 2 and "--resume" in capsys.readouterr().err  # a run folder with a checkpoint
    monkeypatch.setattr(user.UserTrainer, "train_step", real_step)
    try:
        assert tec_main([*argv, "--resume"]) == 0
        out = capsys.readouterr().out
        folder = tmp_path / "models" / "my-fp"
        assert str(folder) in out
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["training"]["steps"] == 4
        assert manifest["training"]["base_training"]["steps"] == saved["user"]["start"] > 0
        default = models.get_card(models.DEFAULT_MODEL).manifest
        assert manifest["config"] == default["config"]  # the default's architecture, asymmetric synthesis included
        assert "by tile" in manifest["training"]["split"] and manifest["training"]["validation_places"] == ["10SFG"]
        assert [q["quality"] for q in manifest["qualities"]] == [0, 1, 2, 3, 4]
        for q in manifest["qualities"]:
            assert q["validation"]["images"] == 2 and q["validation"]["bpp"] > 0 and q["validation"]["psnr"] > 20
        steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
        assert steps[-1] == saved["user"]["start"] + 4
        a = np.ascontiguousarray(cube[3, :, :64, :64])
        codec = tec_zarr.TEC(model="my-fp", quality=2)
        decoded = codec.decode(codec.encode(a))
        assert decoded.shape == a.shape and metrics.psnr(a, decoded.reshape(a.shape)) > 30
        assert models.load_model("my-fp").int_synthesis is not None  # max_error works for trained models
    finally:
        models.clear_cache()


def test_split_by_place_and_by_tile():
    rng = np.random.default_rng(0)
    images = [data.Image(f"{p}_{t}", p, rng.random((12, 80, 64), np.float32)) for p in "abcde" for t in range(2)]
    train, val, how = user.split(images)
    assert {im.place for im in train}.isdisjoint({im.place for im in val}) and len(val) == 2 and "place" in how
    train, val, how = user.split(images[:2])
    assert "tile" in how and [im.reflectance.shape[1] for im in train + val] == [64, 64, 16, 16]


def test_train_refuses_bad_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    (tmp_path / "empty").mkdir()
    assert tec_main(["train", "--data", str(tmp_path / "empty"), "--name", "x", *FAST]) == 2
    assert "GeoTIFFs" in capsys.readouterr().err
    assert tec_main(["train", "--data", str(tmp_path), "--name", "tec-fp"]) == 2
    assert "shipped" in capsys.readouterr().err
    assert tec_main(["train", "--data", str(tmp_path), "--name", "x", "--base", "tec-hp"]) == 2
    assert "--base" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, match", [
    ("--steps", "-5", "--steps N in >= 1"), ("--batch", "0", "--batch N in 1..4096"),
    ("--minutes", "-1", "--minutes above 0"), ("--crop", "7", "--crop N in 16..2048, a multiple of 16"),
    ("--val-fraction", "1.5", "--val-fraction between 0 and 1"), ("--val-every", "0", "--val-every N"),
])
def test_train_refuses_nonsense_options_before_anything_runs(tmp_path, monkeypatch, capsys, option, value, match):
    """Before: --steps -5, --batch 0, --minutes -1 installed a model; --crop 7 crashed as "a bug"."""
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    assert tec_main(["train", "--data", str(tmp_path), "--name", "x", option, value]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "models").exists()


def test_train_on_a_gpu_torch_cannot_use_is_refused(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is there")
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    assert tec_main(["train", "--data", str(tmp_path), "--name", "x", "--device", "cuda"]) == 2
    assert "--device auto or cpu" in capsys.readouterr().err


def test_the_default_model_is_what_tec_train_fine_tunes():
    """``tec train --base`` defaults to the default model: it must be a TEC-FP transform whose checkpoint a checkout
    holds."""
    assert models.DEFAULT_MODEL in user.FINE_TUNABLE
    assert user.base_checkpoint(models.DEFAULT_MODEL, None).is_file()
