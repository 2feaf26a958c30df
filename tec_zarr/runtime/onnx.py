"""onnxruntime sessions: built lazily, once per process and model file, never pickled.

Settings here choose *how* graphs run (threads, execution providers), never *what* is written: every setting
decodes every chunk to the same symbols. They come from the environment (``TEC_ZARR_THREADS``,
``TEC_ZARR_PROVIDERS``) or :func:`configure`, and apply to sessions built afterwards.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field

from ..parsing import env_limit

# Fixed so that a given machine always produces the same graphs (and so the same bytes).
GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"


@dataclass(frozen=True)
class RuntimeSettings:
    # zarr and dask already run chunks in parallel: one intra-op thread per session call avoids oversubscription.
    intra_op_threads: int = 1
    # In order of preference, each used only where onnxruntime offers it (CUDA with the `gpu` extra).
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _from_environment() -> RuntimeSettings:
    """The settings the environment asks for; a bad value is the package's InvalidInputError, raised when graphs
    first run (never at import: ``tec --version`` must work whatever the environment says)."""
    providers = os.environ.get("TEC_ZARR_PROVIDERS")
    return RuntimeSettings(
        intra_op_threads=env_limit("TEC_ZARR_THREADS", RuntimeSettings.intra_op_threads),
        providers=tuple(p.strip() for p in providers.split(",")) if providers else RuntimeSettings.providers,
    )


_settings: RuntimeSettings | None = None  # read from the environment on first use
_sessions: dict[tuple, object] = {}
_lock = threading.Lock()


def configure(*, intra_op_threads: int | None = None, providers: tuple[str, ...] | None = None) -> RuntimeSettings:
    """Change how later sessions run. Returns the settings now in force."""
    global _settings
    with _lock:
        base = _settings if _settings is not None else _from_environment()
        _settings = RuntimeSettings(
            intra_op_threads=base.intra_op_threads if intra_op_threads is None else int(intra_op_threads),
            providers=base.providers if providers is None else tuple(providers),
        )
        return _settings


def settings() -> RuntimeSettings:
    global _settings
    if _settings is None:
        _settings = _from_environment()
    return _settings


def session(sha256: str, model_bytes: bytes):
    """The process's session for a verified model graph, keyed by its hash and the settings in force."""
    current = settings()
    key = (sha256, current)
    found = _sessions.get(key)
    if found is not None:
        return found
    with _lock:
        found = _sessions.get(key)
        if found is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = current.intra_op_threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
            available = set(ort.get_available_providers())
            providers = [p for p in current.providers if p in available] or ["CPUExecutionProvider"]
            found = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
            _sessions[key] = found
        return found


def run(sha256: str, model_bytes: bytes, inputs: dict):
    return session(sha256, model_bytes).run(None, inputs)[0]


@dataclass(frozen=True, eq=False)
class Graph:
    """A verified ONNX graph: its bytes and their sha256 (the session key), and the name of its one input."""

    sha256: str
    data: bytes = field(repr=False)
    input_name: str

    @classmethod
    def from_bytes(cls, data: bytes, input_name: str) -> Graph:
        return cls(hashlib.sha256(data).hexdigest(), data, input_name)

    def run(self, x):
        return run(self.sha256, self.data, {self.input_name: x})

    def stack_key(self, x) -> None:
        """Which inputs of this graph may share a call, beyond shape and dtype (see :mod:`.gathered`): any."""
        return None

    def cpu_only(self) -> bool:
        """Whether this process runs the graph on onnxruntime's CPU provider alone."""
        return list(session(self.sha256, self.data).get_providers()) == ["CPUExecutionProvider"]
