"""How graphs run: onnxruntime sessions (:mod:`.onnx`) and stacking images into calls (:mod:`.batching`).

Settings here change how fast, never which bytes are written.
"""

from .onnx import Graph, RuntimeSettings, configure, run, session, settings

__all__ = ["Graph", "RuntimeSettings", "configure", "run", "session", "settings"]
