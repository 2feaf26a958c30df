"""What a model's ``manifest.json`` says, read and checked without loading any weights."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsIntegrityError

MANIFEST = "manifest.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def model_digest(files: dict[str, str]) -> str:
    """The model's identity: sha256 over its files' names and hashes in a canonical form.

    Where a file is stored (the model's folder, or the shared ``blobs/`` folder) is not part of it.
    """
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

    @property
    def files(self) -> dict[str, str]:
        """File name -> sha256 of every file that decides the model's output."""
        return self.manifest["files"]


def read_card(folder: Path) -> ModelCard:
    """The card of a model folder. Raises :class:`WeightsIntegrityError` for a manifest that is not one."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not (isinstance(files, dict) and files and all(
            isinstance(k, str) and "/" not in k and isinstance(v, str) and _SHA256.fullmatch(v) for k, v in files.items()
        )):
            raise ValueError("files must map plain file names to sha256 digests")
        card = ModelCard(
            name=str(manifest["name"]),
            version=str(manifest["version"]),
            sha256=model_digest(files),
            bands=tuple(str(b) for b in manifest["bands"]),
            qualities=tuple(dict(q) for q in manifest["qualities"]),
            manifest=manifest,
            folder=Path(folder),
        )
        multiple = int(manifest["multiple"])
        if not 1 <= multiple <= 1024 or not 1 <= int(manifest.get("latent_stride", multiple)) <= 64:
            raise ValueError("multiple and latent_stride must be small positive integers")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError,
            RecursionError) as e:
        raise WeightsIntegrityError(f"Expected a valid model manifest at {path}. Got {type(e).__name__}: {e} instead.") from None
    if manifest.get("sha256") != card.sha256:
        raise WeightsIntegrityError(
            f"Expected model {Path(folder).name}'s manifest sha256 to be the digest of its file list ({card.sha256}). "
            f"Got {manifest.get('sha256')} instead."
        )
    return card
