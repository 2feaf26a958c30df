"""Runtime settings (threads, execution providers) choose how graphs run, never what is written or read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tec_zarr import TEC, pipeline, runtime
from tec_zarr.runtime import batching, onnx
from tec_zarr.sample import load_array


@pytest.fixture
def restore_settings():
    before = runtime.settings()
    yield
    runtime.configure(intra_op_threads=before.intra_op_threads, providers=before.providers)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.ascontiguousarray(load_array()[:2, :, :120, :136])


def test_threads_change_neither_bytes_nor_pixels(images, restore_settings):
    runtime.configure(intra_op_threads=1)
    one = pipeline.encode_chunk(images, model="tec-fp", quality=1)
    decoded_one = pipeline.decode_chunk(one)
    runtime.configure(intra_op_threads=2)
    assert pipeline.encode_chunk(images, model="tec-fp", quality=1) == one
    np.testing.assert_array_equal(pipeline.decode_chunk(one), decoded_one)


def test_missing_provider_falls_back_to_cpu(images, restore_settings):
    import onnxruntime as ort

    runtime.configure(providers=("NoSuchExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    data = pipeline.encode_chunk(images, model="tec-fp", quality=0)
    from tec_zarr.models import load_model

    model = load_model("tec-fp")
    used = runtime.session(model.decoder.sha256, model.decoder.data).get_providers()
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else "CPUExecutionProvider"
    assert used[0] == expected
    if expected == "CPUExecutionProvider":  # the fallback is the plain CPU session, byte for byte
        runtime.configure(providers=("CPUExecutionProvider",))
        assert pipeline.encode_chunk(images, model="tec-fp", quality=0) == data


def test_settings_come_from_the_environment():
    env = dict(os.environ, TEC_ZARR_THREADS="3", TEC_ZARR_PROVIDERS="CUDAExecutionProvider, CPUExecutionProvider")
    code = "import json, tec_zarr.runtime as r; s = r.settings(); print(json.dumps([s.intra_op_threads, s.providers]))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [3, ["CUDAExecutionProvider", "CPUExecutionProvider"]]


def test_codec_config_holds_no_runtime_setting(restore_settings):
    runtime.configure(intra_op_threads=2, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    config = TEC(quality=2).get_config()
    runtime.configure(intra_op_threads=1, providers=("CPUExecutionProvider",))
    assert TEC(quality=2).get_config() == config
    assert not {"threads", "intra_op_threads", "providers"} & set(config)


def test_graphs_run_through_one_session_each(images):
    """A model's graphs are keyed by their verified bytes' sha256: one session per graph and settings, reused."""
    from tec_zarr.models import load_model

    model = load_model("tec-fp")
    assert runtime.Graph.from_bytes(model.decoder.data, "y_hat").sha256 == model.decoder.sha256
    y = model.encoder.run(np.ascontiguousarray((images[:1] / 1e4).astype(np.float32)))
    before = len(onnx._sessions)
    np.testing.assert_array_equal(model.encoder.run(np.ascontiguousarray((images[:1] / 1e4).astype(np.float32))), y)
    assert len(onnx._sessions) == before
    assert runtime.session(model.encoder.sha256, model.encoder.data) is runtime.session(model.encoder.sha256, b"")
    assert batching.stacks_exactly(model.encoder) == model.encoder.cpu_only()


def test_a_bad_thread_count_is_a_package_error_when_graphs_run_not_at_import():
    code = ("import numpy as np, tec_zarr\n"
            "try:\n"
            "    tec_zarr.TEC().encode(np.full((12, 8, 8), 5, np.uint16))\n"
            "except tec_zarr.TecZarrError as e:\n"
            "    print('refused:', e)\n")
    env = {**os.environ, "TEC_ZARR_THREADS": "abc"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: Expected a positive integer TEC_ZARR_THREADS. Got 'abc' instead." in out.stdout
