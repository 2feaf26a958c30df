"""Build the xarray ``encoding`` dict that stores a dataset's Sentinel-2 variables with TEC."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError
from .config import parse_model


def zarr_encoding(
    ds, *, zarr_format: int = 3, variables: list[str] | None = None, chunks: dict[str, int] | None = None, **codec_kwargs: Any
) -> dict[str, dict]:
    """``encoding`` for ``ds.to_zarr(..., zarr_format=zarr_format, encoding=...)``.

    Picks every variable whose axis -3 has as many entries as the model has bands (or those named in
    ``variables``) and gives it the TEC codec for that format: ``compressors`` for format 2, ``serializer``
    (with ``compressors=None``) for format 3. Note that xarray 2026.9 rejects the old singular ``"compressor"``.
    ``chunks`` (dim -> size) sets the Zarr chunk shape; the band axis is always one chunk.
    """
    card = parse_model(codec_kwargs.get("model"))
    nbands = len(card.bands)
    if zarr_format not in (2, 3):
        raise InvalidInputError(f"Expected zarr_format 2 or 3. Got {zarr_format!r} instead.")
    names = list(variables) if variables is not None else [
        name for name, var in ds.data_vars.items() if var.ndim >= 3 and var.shape[-3] == nbands
    ]
    encoding: dict[str, dict] = {}
    for name in names:
        var = ds[name]
        if var.ndim < 3 or var.shape[-3] != nbands:
            raise InvalidInputError(
                f"Expected variable {name!r} to have {nbands} bands on axis -3. Got dims {var.dims} shape {var.shape} instead."
            )
        if zarr_format == 2:
            from .zarr2 import TEC

            enc: dict[str, Any] = {"compressors": TEC(**codec_kwargs), "filters": None}
        else:
            from .zarr3 import TEC

            enc = {"serializer": TEC(**codec_kwargs), "compressors": None, "filters": None}
        if chunks:
            enc["chunks"] = tuple(
                nbands if i == var.ndim - 3 else min(chunks.get(dim, size), size)
                for i, (dim, size) in enumerate(zip(var.dims, var.shape))
            )
        encoding[name] = enc
    return encoding
