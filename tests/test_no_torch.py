"""The decode (and encode) path never imports torch: it runs in a process where importing torch fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")

    sys.meta_path.insert(0, BlockTorch())
    import numpy as np, zarr
    import tec_zarr
    from tec_zarr import sample
    from tec_zarr.zarr3 import TEC

    a = np.ascontiguousarray(sample.load_array()[0, :, :64, :64])
    for name in [m.name for m in tec_zarr.list_models()]:  # every entropy model: factorized, hyperprior, context
        codec = tec_zarr.TEC(model=name)
        assert codec.decode(codec.encode(a)).shape == a.shape
    arr = zarr.create_array({}, shape=a.shape, chunks=a.shape, dtype="uint16", serializer=TEC(), compressors=None)
    arr[:] = a
    assert arr[:].shape == a.shape
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "rasterio", "matplotlib"))
    print("HEAVY", heavy)
    """
)


def test_codec_runs_with_torch_blocked():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout


def test_import_loads_no_runtime():
    res = subprocess.run(
        [sys.executable, "-c", "import sys, tec_zarr; print(sorted(m for m in ('onnxruntime', 'constriction', 'torch') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    assert res.stdout.strip() == "[]"
