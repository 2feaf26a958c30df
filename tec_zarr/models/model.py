"""A loaded model: the parts a chunk is coded with, each built from bytes the registry has verified."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..entropy import LATENT_CODERS, EntropyTables, LatentCoder
from ..errors import InvalidInputError, WeightsIntegrityError
from ..integer.synthesis import FILENAME as SYNTHESIS_FILENAME
from ..integer.synthesis import IntSynthesis
from ..runtime import Graph
from ..runtime.gathered import GatheredGraph, gathered
from .card import ModelCard

REQUIRED_FILES = ("encoder.onnx", "decoder.onnx", "tables.npz")


@dataclass(frozen=True, eq=False)
class Model:
    """A verified, loaded model: graphs, normalization, gains, its latent coder and its integer synthesis."""

    card: ModelCard
    encoder: Graph
    decoder: Graph | GatheredGraph  # runs on the nonzero latent channels where it can (runtime.gathered)
    mean: np.ndarray  # (bands,) reflectance
    std: np.ndarray
    gain: np.ndarray  # (Q, M) float32
    inv_gain: np.ndarray
    coder: LatentCoder
    multiple: int  # chunks are edge-padded to multiples of it
    latent_stride: int  # image pixels per latent element along each axis
    synthesis_bytes: bytes | None = field(default=None, repr=False)  # verified; parsed on first bounded use

    @classmethod
    def from_files(cls, card: ModelCard, files: Mapping[str, bytes]) -> Model:
        """``files``: every file of the manifest, already checked against its sha256."""
        entropy_model = str(card.manifest.get("entropy_model", "factorized"))
        coder_type = LATENT_CODERS.get(entropy_model)
        if coder_type is None:
            raise WeightsIntegrityError(
                f"Expected an entropy model in {tuple(LATENT_CODERS)} for {card.name}. Got {entropy_model!r} instead: "
                "install a newer tec_zarr."
            )
        missing = [f for f in (*REQUIRED_FILES, *coder_type.files) if f not in files]
        if missing:
            raise WeightsIntegrityError(f"Expected model {card.name} to list {missing} in its manifest. Got none instead.")
        try:
            with np.load(io.BytesIO(files["tables.npz"])) as t:
                tables = EntropyTables(offsets=t["offsets"], pmf=t["pmf"].astype(np.int64), lengths=t["lengths"])
                arrays = {k: t[k].astype(np.float32) for k in ("mean", "std", "gain", "inv_gain")}
        except (KeyError, ValueError, OSError) as e:
            raise WeightsIntegrityError(f"Expected a valid tables.npz in {card.name}. Got {type(e).__name__}: {e}.") from None
        multiple = int(card.manifest["multiple"])
        return cls(
            card=card,
            encoder=Graph(card.manifest["files"]["encoder.onnx"], files["encoder.onnx"], "x"),
            decoder=gathered(Graph(card.manifest["files"]["decoder.onnx"], files["decoder.onnx"], "y_hat")),
            coder=coder_type.from_files(files, tables),
            multiple=multiple,
            latent_stride=int(card.manifest.get("latent_stride", multiple)),
            synthesis_bytes=files.get(SYNTHESIS_FILENAME),
            **arrays,
        )

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def sha256(self) -> str:
        return self.card.sha256

    @property
    def bands(self) -> tuple[str, ...]:
        return self.card.bands

    @property
    def entropy_model(self) -> str:
        return self.coder.name

    @property
    def qualities(self) -> int:
        return int(self.gain.shape[0])

    @property
    def latent_channels(self) -> int:
        return int(self.gain.shape[1])

    @cached_property
    def int_synthesis(self) -> IntSynthesis:
        """The integer synthesis transform (error-bounded chunks' base), parsed once from its verified bytes (two
        threads parsing it at once build equal objects; one is kept)."""
        if self.synthesis_bytes is None:
            raise InvalidInputError(
                f"Expected model {self.name} to ship {SYNTHESIS_FILENAME} for max_error/lossless coding. Got none "
                "instead: re-export it with python -m tec_zarr.train.export."
            )
        return IntSynthesis.from_npz(self.synthesis_bytes)
