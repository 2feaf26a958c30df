"""Validators shared by both codecs: each returns the parsed value or raises with "Expected ... Got ... instead"."""

from __future__ import annotations

import math
import re

from .errors import InvalidInputError, ModelMismatchError
from .models import DEFAULT_MODEL, ModelCard, get_card

CODEC_NAME = "tec_zarr.tec"  # one prefixed name for numcodecs (format 2) and zarr.codecs (format 3)


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


def parse_quality(quality: int | None, card: ModelCard, max_error: float | int | None = None) -> int:
    if quality is None:
        return BOUNDED_DEFAULT_QUALITY if max_error is not None else card.default_quality
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality < len(card.qualities):
        raise InvalidInputError(
            f"Expected a quality level 0..{len(card.qualities) - 1} of model {card.name}. Got {quality!r} instead."
        )
    return int(quality)


def parse_nodata(nodata: float | int | None) -> float | int | None:
    if nodata is None:
        return None
    if isinstance(nodata, bool) or not isinstance(nodata, (int, float)) or not math.isfinite(nodata):
        raise InvalidInputError(f"Expected a finite number or None for nodata. Got {nodata!r} instead.")
    return int(nodata) if float(nodata).is_integer() else float(nodata)


def parse_float_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise InvalidInputError(f"Expected a positive finite float_scale. Got {scale!r} instead.")
    return float(scale)


def parse_max_error(max_error: float | int | None) -> float | int | None:
    """None (lossy), or the bound |x - decoded| <= max_error in the array's units; 0 is lossless."""
    if max_error is None:
        return None
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float)) or not (
        math.isfinite(max_error) and max_error >= 0
    ):
        raise InvalidInputError(f"Expected None or a finite max_error >= 0. Got {max_error!r} instead.")
    return int(max_error) if float(max_error).is_integer() else float(max_error)


def parse_psnr(psnr: float | int | None, max_error: float | int | None) -> float | None:
    """None, or a per-chunk PSNR target in dB; it can't be combined with max_error."""
    if psnr is None:
        return None
    if isinstance(psnr, bool) or not isinstance(psnr, (int, float)) or not (math.isfinite(psnr) and psnr > 0):
        raise InvalidInputError(f"Expected None or a positive finite psnr (dB). Got {psnr!r} instead.")
    if max_error is not None:
        raise InvalidInputError(f"Expected either max_error or psnr. Got max_error={max_error!r} and psnr={psnr!r} instead.")
    return float(psnr)
