"""Run ``tec_zarr.train.burst`` from a bare copy of the repository: ``python scripts/burst.py ARGS``.

The package's ``__init__`` loads the codec runtime (numcodecs, zarr, onnxruntime, constriction), which a training
machine may lack and the trainer never uses. This registers ``tec_zarr`` as a bare package (its ``__init__`` not
run) and runs the burst module as ``__main__``; the trainer imports only torch, numpy and ``tec_zarr.train``.
"""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tec_zarr"

if __name__ == "__main__":
    if "tec_zarr" not in sys.modules:
        bare = types.ModuleType("tec_zarr")
        bare.__path__ = [str(PACKAGE)]
        sys.modules["tec_zarr"] = bare
    runpy.run_module("tec_zarr.train.burst", run_name="__main__", alter_sys=True)
