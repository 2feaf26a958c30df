"""zarr-python 3 codec (format 3): ``{"serializer": tec_zarr.zarr3.TEC(), "compressors": None}``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

from .. import pipeline
from ..errors import CorruptChunkError, InvalidInputError
from ..parsing import parse_nodata
from .config import (CODEC_NAME, CONFIG_KEYS, FILL_VALUE, NONZERO_KEYS, CodecConfig, parse_config_keys, parse_model,
                     refuse_foreign_dtype)

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

@dataclass(frozen=True)
class TEC(ArrayBytesCodec):
    """Learned TerraCodec serializer for chunks shaped (..., bands, H, W); see :class:`tec_zarr.TEC` for parameters.

    ``nodata="fill_value"`` takes the array's fill value as nodata when the array is created.

    zarr passes a serializer ``codec_pipeline.batch_size`` chunks at a time (default 1); with e.g.
    ``zarr.config.set({"codec_pipeline.batch_size": 8})`` one network call covers several chunks (at most
    :data:`tec_zarr.pipeline.MAX_BATCH_IMAGES` images). The chunks' bytes are the same either way.
    """

    is_fixed_size = False

    quality: int
    model: str
    model_sha256: str
    nodata: float | int | str | None
    float_scale: float
    max_error: float | int | None
    psnr: float | None
    dn_offset: int
    refine: int

    def __init__(self, *, quality=None, model=None, nodata=0, float_scale=10000.0, model_sha256=None, max_error=None,
                 psnr=None, dn_offset=0, refine=0) -> None:
        config = CodecConfig.create(quality=quality, model=model, nodata=nodata, float_scale=float_scale,
                                    model_sha256=model_sha256, max_error=max_error, psnr=psnr, dn_offset=dn_offset,
                                    refine=refine,
                                    allow_fill_value=True)
        for key in (*CONFIG_KEYS, *NONZERO_KEYS):
            object.__setattr__(self, key, getattr(config, key))

    @property
    def config(self) -> CodecConfig:
        return CodecConfig(**{key: getattr(self, key) for key in (*CONFIG_KEYS, *NONZERO_KEYS)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        configuration = data.get("configuration") if isinstance(data, dict) else None
        if configuration is not None and not isinstance(configuration, dict):  # zarr would raise a bare TypeError
            raise InvalidInputError(f"Expected the {CODEC_NAME} configuration as a JSON object. Got "
                                    f"{configuration!r} instead: the store's metadata is damaged.")
        _, configuration = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        configuration = configuration or {}
        parse_config_keys(configuration)  # unknown keys: the package's error, not a TypeError from __init__
        return cls(**configuration)

    def to_dict(self) -> dict[str, Any]:
        configuration = {
            "model": self.model,
            "model_sha256": self.model_sha256,
            "quality": self.quality,
            "nodata": self.nodata,
            "float_scale": self.float_scale,
        }
        # Left out when unset, so lossy stores keep the metadata older versions wrote.
        for key in ("max_error", "psnr"):
            if getattr(self, key) is not None:
                configuration[key] = getattr(self, key)
        configuration.update(self.config.nonzero_keys())
        return {"name": CODEC_NAME, "configuration": configuration}

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> Self:
        if self.nodata != FILL_VALUE:
            return self
        fill = None if array_spec.fill_value is None else np.asarray(array_spec.fill_value).item()
        # A NaN fill value (xarray's for float32) is missing data already: every NaN is stored as a mask.
        missing = fill is None or (isinstance(fill, float) and np.isnan(fill))
        return replace(self, nodata=None if missing else parse_nodata(fill))

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        pipeline.parse_dtype(dtype.to_native_dtype())
        if len(shape) < 3:
            raise InvalidInputError(f"Expected an array of at least 3 dimensions (..., bands, H, W). Got shape {shape} instead.")
        bands = len(parse_model(self.model).bands)
        chunk_shape = getattr(chunk_grid, "chunk_shape", None)
        if chunk_shape is not None and chunk_shape[-3] != bands:
            raise InvalidInputError(
                f"Expected chunks holding all {bands} bands on axis -3. Got chunk shape {tuple(chunk_shape)} instead: "
                f"set chunks like (1, {bands}, 256, 256), or use tec_zarr.zarr_encoding(ds, chunks=...)."
            )

    def _encode_batch_sync(self, chunks_and_specs: list[tuple[NDBuffer | None, ArraySpec]]) -> list[Buffer | None]:
        present = [i for i, (chunk_array, _) in enumerate(chunks_and_specs) if chunk_array is not None]
        arrays = [np.ascontiguousarray(chunks_and_specs[i][0].as_numpy_array()) for i in present]
        out: list[Buffer | None] = [None] * len(chunks_and_specs)
        for i, data in zip(present, pipeline.encode_chunks(arrays, **self.config.chunk_params()), strict=True):
            out[i] = chunks_and_specs[i][1].prototype.buffer.from_bytes(data)
        return out

    def _decode_batch_sync(self, chunk_bytes_and_specs: list[tuple[Buffer | None, ArraySpec]]) -> list[NDBuffer | None]:
        present = [i for i, (chunk_bytes, _) in enumerate(chunk_bytes_and_specs) if chunk_bytes is not None]
        decoded = pipeline.decode_chunks([chunk_bytes_and_specs[i][0].as_numpy_array() for i in present],
                                         expected_shapes=[chunk_bytes_and_specs[i][1].shape for i in present])
        out: list[NDBuffer | None] = [None] * len(chunk_bytes_and_specs)
        for i, array in zip(present, decoded, strict=True):
            spec = chunk_bytes_and_specs[i][1]
            if array.shape != tuple(spec.shape):
                raise CorruptChunkError(f"Expected a chunk of shape {spec.shape}. Got {array.shape} instead.")
            refuse_foreign_dtype(spec.dtype.to_native_dtype(), array.dtype)  # zarr would cast it: garbage
            out[i] = spec.prototype.nd_buffer.from_numpy_array(array)
        return out

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        return self._encode_batch_sync([(chunk_array, chunk_spec)])[0]

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_batch_sync([(chunk_bytes, chunk_spec)])[0]

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    # zarr hands a serializer its chunks in batches (None: a chunk to skip, e.g. one left unwritten): the whole
    # batch goes to one worker thread, where the networks run on stacks of chunks (pipeline.encode_chunks).
    async def encode(
        self, chunks_and_specs: Iterable[tuple[NDBuffer | None, ArraySpec]]
    ) -> Iterable[Buffer | None]:
        batch = list(chunks_and_specs)
        if all(chunk_array is None for chunk_array, _ in batch):
            return [None] * len(batch)
        return await asyncio.to_thread(self._encode_batch_sync, batch)

    async def decode(
        self, chunk_bytes_and_specs: Iterable[tuple[Buffer | None, ArraySpec]]
    ) -> Iterable[NDBuffer | None]:
        batch = list(chunk_bytes_and_specs)
        if all(chunk_bytes is None for chunk_bytes, _ in batch):
            return [None] * len(batch)
        return await asyncio.to_thread(self._decode_batch_sync, batch)

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError
