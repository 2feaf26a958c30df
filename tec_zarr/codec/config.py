"""The codec's parameters: one frozen :class:`CodecConfig` that both codec front ends and ``.tec`` files hold.

The JSON form of the config is the decode contract stored with the data. Each ``parse_*`` returns the parsed value
or raises :class:`~tec_zarr.errors.InvalidInputError` with "Expected ... Got ... instead".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bitstream.chunk import CODEC_ID, check_config_keys
from ..errors import ChunkShapeError, InvalidInputError, ModelMismatchError
from ..models import DEFAULT_MODEL, ModelCard, get_card
from ..parsing import is_real, parse_dn_offset, parse_float_scale, parse_nodata, parse_refine, plain_number

CODEC_NAME = CODEC_ID  # one prefixed name for numcodecs (format 2) and zarr.codecs (format 3)
# zarr 3 only: take the array's fill value as nodata when the array is created.
FILL_VALUE = "fill_value"


def parse_model(model: str | None) -> ModelCard:
    if model is None:
        model = DEFAULT_MODEL
    if not isinstance(model, str):
        raise InvalidInputError(f"Expected a model name (str). Got {model!r} instead.")
    return get_card(model)


def parse_model_sha256(value: str | None, card: ModelCard) -> str:
    """A config written by another model version names different weights: refuse it rather than decode wrongly."""
    if value is None:
        return card.sha256
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise InvalidInputError(f"Expected a 64-digit lowercase hex sha256. Got {value!r} instead.")
    if value != card.sha256:
        raise ModelMismatchError(
            f"Expected the weights the data was written with ({card.name} sha256 {value[:16]}...). "
            f"Got the installed {card.name} with sha256 {card.sha256[:16]}... instead: install the matching tec_zarr."
        )
    return value


# The base quality when max_error is set and no quality is given. The lowest level: the residual coder predicts
# from decoded neighbours better than a finer base does, so q0 gives the fewest bits at every bound up to 50 DN
# and still beats SZ3 and LERC at 100 (benchmarks/bounded.py). Configs store the level, so this never changes
# how stored data decodes.
BOUNDED_DEFAULT_QUALITY = 0


def parse_config_keys(config: Any, *, complete: bool = False) -> None:
    """:func:`~tec_zarr.bitstream.chunk.check_config_keys` as the package's error: a stored config with keys this
    version does not know (written by a newer one, or damaged)."""
    try:
        check_config_keys(config, complete=complete)
    except ValueError as e:
        raise InvalidInputError(str(e)) from None


def refuse_foreign_dtype(expected: np.dtype, got: np.dtype) -> None:
    """A decoded chunk whose stated dtype is not its array's (native byte order) belongs to another array."""
    expected = np.dtype(expected).newbyteorder("=")
    if got != expected:
        raise ChunkShapeError(f"Expected a chunk of the array's dtype {expected}. Got a {got} chunk instead: it "
                              "belongs to another array.")


def parse_quality(quality: int | None, card: ModelCard, max_error: float | int | None = None) -> int:
    if quality is None:
        return BOUNDED_DEFAULT_QUALITY if max_error is not None else card.default_quality
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality < len(card.qualities):
        raise InvalidInputError(
            f"Expected a quality level 0..{len(card.qualities) - 1} of model {card.name}. Got {quality!r} instead."
        )
    return int(quality)


def parse_max_error(max_error: float | int | None) -> float | int | None:
    """None (lossy), or the bound |x - decoded| <= max_error in the array's units; 0 is lossless."""
    if max_error is None:
        return None
    if not (is_real(max_error) and max_error >= 0):
        raise InvalidInputError(f"Expected None or a finite max_error >= 0. Got {max_error!r} instead.")
    return int(max_error) if float(max_error).is_integer() else float(max_error)


def parse_psnr(psnr: float | int | None, max_error: float | int | None) -> float | None:
    """None, or a per-chunk PSNR target in dB; it can't be combined with max_error."""
    if psnr is None:
        return None
    if not (is_real(psnr) and psnr > 0):
        raise InvalidInputError(f"Expected None or a positive finite psnr (dB). Got {psnr!r} instead.")
    if max_error is not None:
        raise InvalidInputError(f"Expected either max_error or psnr. Got max_error={max_error!r} and psnr={psnr!r} instead.")
    return float(psnr)


def parse_nodata_or_fill_value(nodata: Any) -> float | int | str | None:
    return FILL_VALUE if nodata == FILL_VALUE else parse_nodata(nodata)


# The config's keys in the order numcodecs has always written them (its get_config follows attribute order).
CONFIG_KEYS = ("model", "model_sha256", "max_error", "quality", "nodata", "float_scale", "psnr")
# Keys written only where they differ from their default (0), so stores that don't use them stay readable by the
# versions before them (which refuse unknown keys).
NONZERO_KEYS = ("dn_offset", "refine")


@dataclass(frozen=True)
class CodecConfig:
    """A validated codec configuration: what a chunk is encoded with, and the contract for decoding it."""

    model: str
    model_sha256: str
    max_error: float | int | None
    quality: int
    nodata: float | int | str | None
    float_scale: float
    psnr: float | None
    dn_offset: int = 0  # the DN of reflectance 0 (Sentinel-2 from processing baseline 04.00 on: 1000)
    refine: int = 0  # rounds of the encoder's symbol search (lossy only); no effect on decoding

    @classmethod
    def create(cls, *, quality=None, model=None, nodata=0, float_scale=10000.0, model_sha256=None, max_error=None,
               psnr=None, dn_offset=0, refine=0, allow_fill_value: bool = False) -> CodecConfig:
        """Every parameter parsed; ``nodata="fill_value"`` only where ``allow_fill_value`` (zarr 3)."""
        card = parse_model(model)
        # numpy numbers (rioxarray's nodata, a loop over np.arange) as the Python numbers the JSON config holds
        quality, nodata, float_scale, max_error, psnr, dn_offset = (
            plain_number(v) for v in (quality, nodata, float_scale, max_error, psnr, dn_offset))
        max_error = parse_max_error(max_error)
        refine = parse_refine(refine, max_error)
        if refine:  # refused when the codec is made, not at its first chunk
            from .. import pipeline
            from ..models import load_model

            pipeline.check_refinable(load_model(card.name))
        return cls(
            model=card.name,
            model_sha256=parse_model_sha256(model_sha256, card),
            max_error=max_error,
            quality=parse_quality(quality, card, max_error),
            nodata=parse_nodata_or_fill_value(nodata) if allow_fill_value else parse_nodata(nodata),
            float_scale=parse_float_scale(float_scale),
            psnr=parse_psnr(psnr, max_error),
            dn_offset=parse_dn_offset(dn_offset),
            refine=refine,
        )

    @classmethod
    def from_json(cls, config: Any, *, complete: bool = False) -> CodecConfig:
        """A stored config (numcodecs style, with or without ``"id"``); unknown keys are refused, and with
        ``complete`` (configs this package wrote, as in .tec files) missing ones too."""
        parse_config_keys(config, complete=complete)
        return cls.create(**{k: v for k, v in config.items() if k != "id"})

    def to_json(self) -> dict[str, Any]:
        """The numcodecs form: ``{"id": ..., every key}``, as stored in format-2 arrays and ``.tec`` files (the
        :data:`NONZERO_KEYS` only where they are not 0)."""
        return {"id": CODEC_ID, **{key: getattr(self, key) for key in CONFIG_KEYS}, **self.nonzero_keys()}

    def nonzero_keys(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in NONZERO_KEYS if getattr(self, key)}

    def chunk_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`tec_zarr.pipeline.encode_chunks`."""
        nodata = None if self.nodata == FILL_VALUE else self.nodata
        return {"model": self.model, "quality": self.quality, "nodata": nodata, "float_scale": self.float_scale,
                "max_error": self.max_error, "psnr": self.psnr, "dn_offset": self.dn_offset, "refine": self.refine}
