"""Training smoke test (a few steps on small crops of real data), resume, and export parity torch vs ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
rasterio = pytest.importorskip("rasterio")

from tec_zarr import chunk, entropy, models, runtime  # noqa: E402
from tec_zarr.train import __main__ as train_main  # noqa: E402
from tec_zarr.train import data, export  # noqa: E402

pytestmark = pytest.mark.train

TINY = ["--channels", "8", "--latent-channels", "16", "--stages", "3", "--crop", "32", "--batch", "2",
        "--log-every", "2", "--val-every", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, cube):
    """The bundled real sample laid out like shared/data: two dates as a training place, two as validation."""
    root = tmp_path_factory.mktemp("data")
    folder = root / data.SEASONAL
    folder.mkdir()
    places = ["0080717", "0080717", data.VALIDATION_PLACES[0], data.VALIDATION_PLACES[0]]
    for t, place in enumerate(places):
        path = folder / f"ssl4eos12_val_{place}_{t}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=cube.shape[3], height=cube.shape[2], count=12,
                           dtype="int16") as dst:
            dst.write(cube[t].astype(np.int16))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("run")
    assert train_main.main(["--data", str(data_root), "--out", str(out), "--steps", "3", *TINY]) == 0
    return out


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


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tec-tiny"
    export.export(run_dir / "checkpoint.pt", "tec-tiny", "0", out_dir=folder)
    return folder


def test_export_parity(exported, run_dir, image, monkeypatch):
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(exported.parent))
    models.clear_cache()
    model = models.load_model("tec-tiny")
    torch_model, ckpt = export.load_checkpoint(run_dir / "checkpoint.pt")

    a = np.ascontiguousarray(image[:, :48, :40])
    x = ((a.astype(np.float32) / 1e4 - model.mean[:, None, None]) / model.std[:, None, None])[None]
    y_onnx = runtime.run(model.encoder_sha256, model.encoder_onnx, {"x": x})
    with torch.no_grad():
        y_torch = torch_model.analyse(torch.from_numpy(x)).numpy()
        x_torch = torch_model.synthesise(torch.from_numpy(y_torch)).numpy()
    np.testing.assert_allclose(y_onnx, y_torch, rtol=1e-4, atol=1e-4)
    x_onnx = runtime.run(model.decoder_sha256, model.decoder_onnx, {"y_hat": y_torch})
    np.testing.assert_allclose(x_onnx, x_torch, rtol=1e-4, atol=1e-4)

    # symbols: what torch would write is what the runtime writes, and the bitstream returns them exactly
    for q in range(model.tables.qualities):
        sym_torch = np.rint(y_torch * ckpt["model"]["gain"][q].numpy()[None, :, None, None]).astype(np.int32)
        sym_onnx = np.rint(y_onnx * model.gain[q][None, :, None, None]).astype(np.int32)
        assert np.mean(sym_torch != sym_onnx) < 1e-3
        data_bytes = entropy.encode(sym_onnx, q, model.tables)
        np.testing.assert_array_equal(entropy.decode(data_bytes, q, sym_onnx.shape, model.tables), sym_onnx)

    enc = chunk.encode_chunk(a, model="tec-tiny", quality=0)
    assert chunk.decode_chunk(enc).shape == a.shape

    # the exported integer synthesis (linear path included) matches the float decoder, and lossless is exact
    from tec_zarr import synthesis

    sym = np.rint(y_onnx * model.gain[1][None, :, None, None]).astype(np.int32)
    dn_int = synthesis.load(model)(sym, 1)
    y_hat = (sym * model.inv_gain[1][None, :, None, None]).astype(np.float32)
    x_float = runtime.run(model.decoder_sha256, model.decoder_onnx, {"y_hat": y_hat})
    dn_float = (x_float * model.std[:, None, None] + model.mean[:, None, None]) * 1e4
    assert np.abs(dn_int - dn_float).max() <= 2.0
    lossless = chunk.encode_chunk(a, model="tec-tiny", quality=1, max_error=0)
    np.testing.assert_array_equal(chunk.decode_chunk(lossless), a)
    models.clear_cache()
