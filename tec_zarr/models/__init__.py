"""The model registry: trained models shipped inside the package, each a folder with a ``manifest.json``.

A manifest lists every file with its sha256; :func:`load_model` verifies them all before anything runs, and the
model's own ``sha256`` (a digest of that file list) is what stores record in their codec config.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..entropy import EntropyTables
from ..errors import UnknownModelError, WeightsIntegrityError

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "tec-fp"
REQUIRED_FILES = ("encoder.onnx", "decoder.onnx", "tables.npz")
ENTROPY_MODELS = ("factorized", "hyperprior", "context")


def model_digest(files: dict[str, str]) -> str:
    """The model's identity: sha256 over its files' names and hashes in a canonical form."""
    return hashlib.sha256(json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """What ``manifest.json`` says about a model (read without loading or verifying the weights)."""

    name: str
    version: str
    sha256: str
    bands: tuple[str, ...]
    qualities: tuple[dict, ...]
    manifest: dict
    folder: Path

    @property
    def default_quality(self) -> int:
        return int(self.manifest.get("default_quality", len(self.qualities) // 2))


@dataclass(frozen=True, eq=False)
class Model:
    """A verified, loaded model: graphs as bytes, normalization, gains and integer entropy tables."""

    card: ModelCard
    encoder_onnx: bytes
    decoder_onnx: bytes
    encoder_sha256: str
    decoder_sha256: str
    mean: np.ndarray  # (bands,) reflectance
    std: np.ndarray
    gain: np.ndarray  # (Q, M) float32
    inv_gain: np.ndarray
    tables: EntropyTables
    multiple: int  # chunks are edge-padded to multiples of it
    latent_stride: int = 4  # image pixels per latent element along each axis
    entropy_model: str = "factorized"  # "hyperprior" or "context" (their modules): how symbols are coded

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def sha256(self) -> str:
        return self.card.sha256

    @property
    def bands(self) -> tuple[str, ...]:
        return self.card.bands


def _read_card(folder: Path) -> ModelCard:
    manifest = json.loads((folder / "manifest.json").read_text())
    files = manifest["files"]
    digest = model_digest(files)
    if manifest.get("sha256") != digest:
        raise WeightsIntegrityError(
            f"Expected model {folder.name}'s manifest sha256 to be the digest of its file list ({digest}). "
            f"Got {manifest.get('sha256')} instead."
        )
    return ModelCard(
        name=manifest["name"],
        version=str(manifest["version"]),
        sha256=digest,
        bands=tuple(manifest["bands"]),
        qualities=tuple(manifest["qualities"]),
        manifest=manifest,
        folder=folder,
    )


def model_dirs() -> list[Path]:
    """The package's own models, then the folders in ``TEC_ZARR_MODEL_PATH`` (os.pathsep-separated)."""
    extra = [Path(p) for p in os.environ.get("TEC_ZARR_MODEL_PATH", "").split(os.pathsep) if p]
    return [MODELS_DIR, *extra]


def _cards() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for folder in model_dirs():
        for manifest in sorted(folder.glob("*/manifest.json")):
            card = _read_card(manifest.parent)
            cards.setdefault(card.name, card)  # a shipped model is never shadowed
    return cards


def list_models() -> list[ModelCard]:
    """Every installed model, with its measured rate-distortion per quality (``card.qualities``)."""
    return list(_cards().values())


def get_card(name: str) -> ModelCard:
    cards = _cards()
    if name not in cards:
        raise UnknownModelError(f"Expected one of the installed models {sorted(cards)}. Got {name!r} instead.")
    return cards[name]


_loaded: dict[str, Model] = {}
_lock = threading.Lock()


def _verified_bytes(card: ModelCard, filename: str) -> bytes:
    expected = card.manifest["files"].get(filename)
    path = card.folder / filename
    if expected is None or not path.is_file():
        raise WeightsIntegrityError(f"Expected model file {path} listed in its manifest. Got none instead.")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise WeightsIntegrityError(
            f"Expected {path} to have sha256 {expected}. Got {actual} instead: the weights were modified or damaged."
        )
    return data


def read_verified(card: ModelCard, filename: str) -> bytes:
    """An optional model file (listed in the manifest), checked against its sha256."""
    return _verified_bytes(card, filename)


def load_model(name: str = DEFAULT_MODEL) -> Model:
    """Load and verify a model once per process. Raises UnknownModelError or WeightsIntegrityError."""
    found = _loaded.get(name)
    if found is not None:
        return found
    with _lock:
        if name in _loaded:
            return _loaded[name]
        card = get_card(name)
        blobs = {f: _verified_bytes(card, f) for f in REQUIRED_FILES}
        with np.load(io.BytesIO(blobs["tables.npz"])) as t:
            tables = EntropyTables(offsets=t["offsets"], pmf=t["pmf"].astype(np.int64), lengths=t["lengths"])
            model = Model(
                card=card,
                encoder_onnx=blobs["encoder.onnx"],
                decoder_onnx=blobs["decoder.onnx"],
                encoder_sha256=card.manifest["files"]["encoder.onnx"],
                decoder_sha256=card.manifest["files"]["decoder.onnx"],
                mean=t["mean"].astype(np.float32),
                std=t["std"].astype(np.float32),
                gain=t["gain"].astype(np.float32),
                inv_gain=t["inv_gain"].astype(np.float32),
                tables=tables,
                multiple=int(card.manifest["multiple"]),
                latent_stride=int(card.manifest.get("latent_stride", card.manifest["multiple"])),
                entropy_model=str(card.manifest.get("entropy_model", "factorized")),
            )
        if model.entropy_model not in ENTROPY_MODELS:
            raise WeightsIntegrityError(
                f"Expected an entropy model in {ENTROPY_MODELS} for {name}. Got {model.entropy_model!r} instead: "
                "install a newer tec_zarr."
            )
        if model.entropy_model in ("hyperprior", "context"):  # their own files, verified now like the others
            from .. import context, hyperprior

            hyperprior.load(model)
            hyperprior.analysis_graph(model)
            if model.entropy_model == "context":
                context.load(model)
        _loaded[name] = model
        return model


def clear_cache() -> None:
    """Forget loaded models (tests use it after changing files on disk)."""
    with _lock:
        _loaded.clear()
