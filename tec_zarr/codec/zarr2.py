"""numcodecs codec (zarr format 2): ``encoding={"var": {"compressors": TEC()}}``.

Its JSON config (:class:`~tec_zarr.codec.config.CodecConfig`) is the decode contract: model name, model sha256,
quality, nodata and float scale. Chunks carry their own header too (see :mod:`tec_zarr.bitstream.chunk`), so a chunk
decodes even without the config.
"""

from __future__ import annotations

import math

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_ndarray_like, ndarray_copy

from .. import pipeline
from ..pipeline.decode import MAX_CHUNK_ELEMENTS_VARIABLE, max_chunk_elements
from ..errors import InvalidInputError
from .config import CODEC_NAME, CONFIG_KEYS, CodecConfig, refuse_foreign_dtype


class TEC(Codec):
    """Learned TerraCodec compression of Sentinel-2 chunks shaped (..., bands, H, W).

    A chunk's leading axes are its batch: all its (bands, H, W) images go through the networks together, in
    onnxruntime calls of up to :data:`tec_zarr.pipeline.MAX_BATCH_IMAGES` images (chunks such as (4, 12, 256, 256)
    batch four dates). numcodecs hands codecs one chunk at a time; :func:`tec_zarr.pipeline.encode_chunks` stacks
    several chunks, with the same bytes.

    Parameters
    ----------
    quality : int, optional
        Quality level of the model, 0 (smallest) to its highest; ``tec models`` lists each level's measured
        PSNR and bpp. Default: the model's default level; with ``max_error``, level 0 (the base under the
        residual; the fewest bits for bounds up to about 50 DN).
    model : str, optional
        Name of an installed model (``tec_zarr.list_models()``). Default ``"tec-fp-3"`` (``models.DEFAULT_MODEL``).
    nodata : int or float or None
        Elements equal to this value are stored losslessly and read back exactly; no other element decodes to
        it. Default 0 (Sentinel-2's nodata). ``None`` disables it.
    float_scale : float
        float32 input times ``float_scale`` gives DN (reflectance x 10000). Default 10000: float32 reflectance.
    max_error : int or float or None
        Guarantee ``|x - decoded| <= max_error`` on every element, in the array's own units (DN for integer
        dtypes, floored to an integer; the float32 values themselves for float32). 0 is lossless (bit-exact).
        ``quality`` then sets the learned base under the coded residual. Default None: lossy.
    psnr : float or None
        Per chunk, the lowest-rate quality level whose decoded chunk reaches this PSNR (dB, see
        :mod:`tec_zarr.metrics`); the chunk header records the level. When no level reaches it, the level with
        the highest PSNR, and a :class:`~tec_zarr.errors.PsnrTargetWarning`. Not together with ``max_error``.
    dn_offset : int
        The DN of reflectance 0: data DN = reflectance x 10000 + ``dn_offset``. Sentinel-2 products of processing
        baseline 04.00 and later (from 25 January 2022) add 1000, and odc-stac (and stackstac with
        ``rescale=False``) load them so: pass 1000 there, or the models see every value 0.1 too bright and need
        up to 20 % (tec-fp) or 2.5 times (tec-hp, tec-ctx, tec-tt) the bits. Decoded values are in the data's own
        units either way. Default 0.
    refine : int
        Rounds of the encoder's symbol search (:mod:`tec_zarr.pipeline.refine`), 0 to 16: symbols chosen for rate
        and distortion instead of rounded, about 3-15 % fewer bits at the same PSNR for several times the encode
        time (benchmarks/refine.py); decoding is unchanged. Lossy only (not with ``max_error``). Default 0.
    model_sha256 : str, optional
        Filled in from the installed model; a config naming other weights is refused.
    """

    codec_id = CODEC_NAME

    def __init__(self, quality=None, model=None, nodata=0, float_scale=10000.0, model_sha256=None, max_error=None,
                 psnr=None, dn_offset=0, refine=0):
        config = CodecConfig.create(quality=quality, model=model, nodata=nodata, float_scale=float_scale,
                                    model_sha256=model_sha256, max_error=max_error, psnr=psnr, dn_offset=dn_offset,
                                    refine=refine)
        # numcodecs' get_config() lists the public attributes in the order they are set: CONFIG_KEYS' order.
        for key in CONFIG_KEYS:
            setattr(self, key, getattr(config, key))
        self._config = config

    @property
    def dn_offset(self) -> int:
        return self._config.dn_offset

    @property
    def refine(self) -> int:
        return self._config.refine

    def get_config(self):
        """numcodecs' config, with dn_offset and refine only where they are set (stores without them stay readable
        by versions before them)."""
        return {**super().get_config(), **self._config.nonzero_keys()}

    @classmethod
    def from_config(cls, config):
        """Refuses unknown keys (numcodecs would pass them on as arguments)."""
        return cls(**{k: v for k, v in CodecConfig.from_json(config).to_json().items() if k != "id"})

    def encode(self, buf):
        array = ensure_ndarray_like(buf)
        if not isinstance(array, np.ndarray):
            raise InvalidInputError(f"Expected a numpy array chunk. Got {type(buf).__name__} instead.")
        check_format2_chunk(array.shape, "this chunk")  # what decode(buf), as zarr calls it, would refuse
        if not array.dtype.isnative:
            # zarr views a format 2 chunk's decoded bytes as the array's dtype: a big-endian array would read back
            # byte-swapped. The chunk header has no byte order, so the array must be native.
            raise InvalidInputError(
                f"Expected a chunk in the machine's byte order. Got dtype {array.dtype.str} instead: store the array "
                f"as {array.dtype.newbyteorder('=').str} (tec_zarr.zarr_encoding does; or arr.astype("
                f"{array.dtype.newbyteorder('=').str!r})).")
        return pipeline.encode_chunk(array, **self._config.chunk_params())

    def decode(self, buf, out=None):
        data = ensure_ndarray_like(buf).view("u1").reshape(-1)
        if out is None:
            return pipeline.decode_chunk(data)
        # The chunk must fill out= exactly: a header declaring anything else is refused before it is decoded.
        target = ensure_ndarray_like(out)
        decoded = pipeline.decode_chunk(data, expected_nbytes=target.nbytes)
        if target.dtype.itemsize > 1:  # a typed out= (not a byte buffer) says the array's dtype
            refuse_foreign_dtype(target.dtype, decoded.dtype)
        try:
            return ndarray_copy(decoded, out)
        except ValueError as e:
            raise InvalidInputError(f"Expected an out= buffer matching the decoded chunk. Got {e} instead.") from None

    def __repr__(self):
        return (
            f"{type(self).__name__}(quality={self.quality!r}, model={self.model!r}, nodata={self.nodata!r}, "
            f"float_scale={self.float_scale!r}{_bound_repr(self.max_error, self.psnr)}"
            + (f", dn_offset={self.dn_offset!r}" if self.dn_offset else "")
            + (f", refine={self.refine!r})" if self.refine else ")")
        )


def _bound_repr(max_error, psnr) -> str:
    """Only the parameters that are set, so the default repr stays the one older versions printed."""
    return (f", max_error={max_error!r}" if max_error is not None else "") + (f", psnr={psnr!r}" if psnr is not None else "")


def check_format2_chunk(shape, what: str) -> None:
    """Refuse a Zarr format 2 chunk shape its readers would refuse to decode (they are not told a chunk's shape, so
    a chunk's header may declare at most max_chunk_elements() elements): before it is written, not on reading."""
    elements, limit = math.prod(int(n) for n in shape), max_chunk_elements()
    if elements > limit:
        raise InvalidInputError(
            f"Expected Zarr format 2 chunks of at most {limit} elements ({MAX_CHUNK_ELEMENTS_VARIABLE}), as its "
            f"readers decode chunks without being told their shape. Got {tuple(shape)} ({elements}) for {what} instead: "
            "smaller chunks (e.g. one date of 1024 x 1024 pixels), or zarr_format=3, whose readers are told.")
