"""The model registry: trained models shipped inside the package, each a folder with a ``manifest.json``.

A manifest lists every file with its sha256; :func:`load_model` verifies them all before anything runs, and the
model's own ``sha256`` (a digest of that file list) is what stores record in their codec config. A file lives in
its model's folder or, when several models share it, once in the ``blobs/`` folder beside the model folders,
named by its sha256 (:func:`share_files`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import warnings
from pathlib import Path

from ..errors import UnknownModelError, WeightsIntegrityError
from .card import MANIFEST, ModelCard, read_card
from .model import Model

MODELS_DIR = Path(__file__).resolve().parent
BLOBS = "blobs"
DEFAULT_MODEL = "tec-fp-3"
SHIPPED = ("tec-fp", "tec-hp", "tec-ctx", "tec-tt", "tec-fp-lite", "tec-fp-half", "tec-fp-2", "tec-ctx-2", "tec-tt-2",
           "tec-fp-2-half", "tec-fp-3", "tec-ctx-3", "tec-tt-3")


class BrokenModelWarning(UserWarning):
    """A model folder on ``TEC_ZARR_MODEL_PATH`` could not be read and was skipped."""


def user_models_dir() -> Path | None:
    """The per-user model folder: ``$XDG_DATA_HOME/tec-zarr/models`` (default ``~/.local/share/tec-zarr/models``);
    None where neither XDG_DATA_HOME nor a home folder is known."""
    base = os.environ.get("XDG_DATA_HOME")
    if not base:
        try:
            base = str(Path.home() / ".local" / "share")
        except (RuntimeError, KeyError):
            return None
    return Path(base) / "tec-zarr" / "models"


def model_dirs() -> list[Path]:
    """The package's own models, then the folders in ``TEC_ZARR_MODEL_PATH`` (os.pathsep-separated), then the
    per-user folder (:func:`user_models_dir`), where ``tec models import`` and ``tec train`` write by default."""
    extra = [Path(p) for p in os.environ.get("TEC_ZARR_MODEL_PATH", "").split(os.pathsep) if p]
    user = user_models_dir()
    return [MODELS_DIR, *extra, *([user] if user is not None and user not in extra else [])]


def install_dir() -> Path:
    """Where new models go unless told otherwise: the first folder of ``TEC_ZARR_MODEL_PATH``, else the per-user
    folder."""
    extra = [Path(p) for p in os.environ.get("TEC_ZARR_MODEL_PATH", "").split(os.pathsep) if p]
    if extra:
        return extra[0]
    user = user_models_dir()
    if user is None:
        raise UnknownModelError("Expected TEC_ZARR_MODEL_PATH, XDG_DATA_HOME or a home folder to install models "
                                "into. Got none of them instead: set TEC_ZARR_MODEL_PATH.")
    return user


def _cards() -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for root in model_dirs():
        for manifest in sorted(root.glob(f"*/{MANIFEST}")):
            if manifest.parent.name.startswith("."):
                continue  # a model being written (.NAME.part) or a run folder, never an installed model
            try:
                card = read_card(manifest.parent)
            except WeightsIntegrityError as e:
                if root == MODELS_DIR:
                    raise  # the package itself is damaged: never hide it
                warnings.warn(f"Skipped the model folder {manifest.parent}: {e}", BrokenModelWarning, stacklevel=3)
                continue
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


def file_path(card: ModelCard, filename: str) -> Path:
    """Where a listed file is stored: its model's folder, else the shared ``blobs/`` folder by its sha256."""
    own = card.folder / filename
    return own if own.is_file() else card.folder.parent / BLOBS / card.files[filename]


def verified_bytes(card: ModelCard, filename: str) -> bytes:
    """A model file listed in the manifest, checked against its sha256."""
    expected = card.files.get(filename)
    path = file_path(card, filename) if expected is not None else card.folder / filename
    if expected is None or not path.is_file():
        raise WeightsIntegrityError(f"Expected model file {card.folder / filename} listed in its manifest. Got none instead.")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise WeightsIntegrityError(
            f"Expected {path} to have sha256 {expected}. Got {actual} instead: the weights were modified or damaged."
        )
    return data


_loaded: dict[str, Model] = {}
_lock = threading.Lock()


def load_model(name: str = DEFAULT_MODEL) -> Model:
    """Load and verify a model once per process. Raises UnknownModelError or WeightsIntegrityError."""
    found = _loaded.get(name)
    if found is not None:
        return found
    with _lock:
        if name in _loaded:
            return _loaded[name]
        card = get_card(name)
        model = Model.from_files(card, {f: verified_bytes(card, f) for f in card.files})
        _loaded[name] = model
        return model


def clear_cache() -> None:
    """Forget loaded models (tests use it after changing files on disk)."""
    with _lock:
        _loaded.clear()


def share_files(root: Path) -> list[Path]:
    """Store every file that two or more model folders under ``root`` hold with the same content once, in
    ``root/blobs/<sha256>``, and remove the folders' copies. Model digests do not change. Returns the blobs."""
    holders: dict[str, list[Path]] = {}
    for manifest in sorted(Path(root).glob(f"*/{MANIFEST}")):
        card = read_card(manifest.parent)
        for filename, digest in card.files.items():
            if (card.folder / filename).is_file():
                holders.setdefault(digest, []).append(card.folder / filename)
    shared = []
    for digest, paths in holders.items():
        blob = Path(root) / BLOBS / digest
        if len(paths) < 2 and not blob.is_file():
            continue
        blob.parent.mkdir(exist_ok=True)
        if not blob.is_file():
            if hashlib.sha256(paths[0].read_bytes()).hexdigest() != digest:
                raise WeightsIntegrityError(f"Expected {paths[0]} to have sha256 {digest}. Got other bytes instead.")
            tmp = blob.with_suffix(".part")
            shutil.copyfile(paths[0], tmp)
            os.replace(tmp, blob)
        for path in paths:
            path.unlink()
        shared.append(blob)
    return shared
