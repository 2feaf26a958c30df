"""Trained models: manifests and their cards (:mod:`.card`), the verifying registry (:mod:`.registry`) and the
loaded :class:`~.model.Model` that owns its parts (:mod:`.model`). Model folders and shared ``blobs/`` sit here."""

from .card import ModelCard, model_digest
from .model import Model
from .registry import (
    DEFAULT_MODEL,
    MODELS_DIR,
    clear_cache,
    get_card,
    list_models,
    load_model,
    model_dirs,
    share_files,
    verified_bytes,
)

__all__ = [
    "DEFAULT_MODEL", "MODELS_DIR", "Model", "ModelCard", "clear_cache", "get_card", "list_models", "load_model",
    "model_digest", "model_dirs", "share_files", "verified_bytes",
]
