"""A loaded model: the parts a chunk is coded with, each built from bytes the registry has verified."""

from __future__ import annotations

import io
import json
import reprlib
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
from ..runtime.protobuf import graph_inputs
from .card import ModelCard

REQUIRED_FILES = ("encoder.onnx", "decoder.onnx", "tables.npz")
# Optional: which synthesis graph decodes each quality, where a model decodes some qualities through another graph
# than decoder.onnx (a light synthesis where it loses nothing, its base model's where it would). A listed file, so
# its sha256 is part of the model's identity like the graphs it names.
DECODERS_FILENAME = "decoders.json"
SYNTHESIS_INPUT = "y_hat"


def parse_decoders(data: bytes, qualities: int, files: Mapping[str, bytes], model: str) -> tuple[str, ...]:
    """The synthesis graph file of each quality that ``decoders.json`` (``{"per_quality": [file, ...]}``) names: one
    ONNX file of the manifest per quality, each fed the latents ``y_hat`` alone."""
    try:
        per_quality = json.loads(data)["per_quality"]
    except (ValueError, RecursionError, KeyError, TypeError) as e:  # ValueError: bad UTF-8 and JSON too
        raise WeightsIntegrityError(f"Expected {model}'s {DECODERS_FILENAME} to be a JSON object with a per_quality "
                                    f"list. Got {type(e).__name__}: {reprlib.repr(str(e))} instead.") from None
    if (not isinstance(per_quality, list) or len(per_quality) != qualities
            or not all(isinstance(f, str) and f.endswith(".onnx") and f in files for f in per_quality)):
        raise WeightsIntegrityError(
            f"Expected {model}'s {DECODERS_FILENAME} to name one ONNX file of its manifest for each of its "
            f"{qualities} qualities. Got {reprlib.repr(per_quality)} instead.")
    for name in set(per_quality):
        try:
            inputs = graph_inputs(files[name])
        except (WeightsIntegrityError, UnicodeDecodeError, ValueError, IndexError) as e:
            raise WeightsIntegrityError(f"Expected {name} of {model} to be an ONNX graph. Got {type(e).__name__}: "
                                        f"{e} instead.") from None
        if inputs != [SYNTHESIS_INPUT]:
            raise WeightsIntegrityError(f"Expected {name} of {model}, named in its {DECODERS_FILENAME}, to be a "
                                        f"synthesis graph fed {SYNTHESIS_INPUT!r} alone. Got inputs {inputs} instead.")
    return tuple(per_quality)


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
    # The graph decoding each quality where decoders.json names them (else decoder for every quality).
    per_quality: tuple[Graph | GatheredGraph, ...] = field(default=(), repr=False)

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
        graphs = {"decoder.onnx": _synthesis(card, files, "decoder.onnx")}
        per_quality = ()
        if DECODERS_FILENAME in files:
            names = parse_decoders(files[DECODERS_FILENAME], len(arrays["gain"]), files, card.name)
            for name in names:
                if name not in graphs:
                    graphs[name] = _synthesis(card, files, name)
            per_quality = tuple(graphs[name] for name in names)
        return cls(
            card=card,
            encoder=Graph(card.manifest["files"]["encoder.onnx"], files["encoder.onnx"], "x"),
            decoder=graphs["decoder.onnx"],
            per_quality=per_quality,
            coder=coder_type.from_files(files, tables),
            multiple=multiple,
            latent_stride=int(card.manifest.get("latent_stride", multiple)),
            synthesis_bytes=files.get(SYNTHESIS_FILENAME),
            **arrays,
        )

    @property
    def name(self) -> str:
        return self.card.name

    def decoder_for(self, quality: int) -> Graph | GatheredGraph:
        """The synthesis graph that decodes ``quality``'s symbols (:data:`DECODERS_FILENAME`; else decoder.onnx)."""
        if not 0 <= quality < self.qualities:
            raise InvalidInputError(f"Expected a quality of {self.name} in 0..{self.qualities - 1}. Got {quality} "
                                    "instead.")
        return self.per_quality[quality] if self.per_quality else self.decoder

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


def _synthesis(card: ModelCard, files: Mapping[str, bytes], name: str) -> Graph | GatheredGraph:
    return gathered(Graph(card.manifest["files"][name], files[name], SYNTHESIS_INPUT))
