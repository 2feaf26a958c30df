"""Lossless and error-bounded codecs behind the :class:`baselines.BenchCodec` interface; the setting is the bound E.

Every codec gets (bands, H, W) uint16 DN and must return values within E of them (E = 0: exactly); the
benchmark checks it. Lossy float codecs (SZ3, zfp) run on float32 and are rounded back to integers, which keeps
an integer bound. All side information (shapes, per-band framing) is counted.
"""

from __future__ import annotations

import numpy as np
from baselines import BenchCodec, frame, unframe

BOUNDS = (0, 1, 2, 5, 10, 25, 50, 100)


def _ic():
    import imagecodecs

    return imagecodecs


def _to_u16(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 65535).astype(np.uint16)


class TECBounded(BenchCodec):
    family = "TEC"

    def __init__(self, quality: int, model: str = "tec-fp"):
        self.model, self.quality = model, quality
        self.name = f"TEC {model} q{quality}"

    def settings(self):
        return list(BOUNDS)

    def encode(self, image, setting):
        from tec_zarr import pipeline

        return pipeline.encode_chunk(image, model=self.model, quality=self.quality, nodata=None, max_error=setting)

    def decode(self, data, setting, shape):
        from tec_zarr import pipeline

        return pipeline.decode_chunk(data)


class _PerBand(BenchCodec):
    """One codestream per band; subclasses give ``_enc(plane, E)`` and ``_dec(bytes)``."""

    lossless_only = False

    def settings(self):
        return [0] if self.lossless_only else list(BOUNDS)

    def encode(self, image, setting):
        return frame([self._enc(np.ascontiguousarray(b), setting) for b in image])

    def decode(self, data, setting, shape):
        return np.stack([self._dec(p, shape[1:]) for p in unframe(data)])


class JpegXLLossless(_PerBand):
    name, family, lossless_only = "JPEG XL lossless", "JPEG XL", True

    def _enc(self, plane, e):
        return _ic().jpegxl_encode(plane, lossless=True, effort=7, numthreads=1)

    def _dec(self, data, shape):
        return _ic().jpegxl_decode(data, numthreads=1)


class Jpeg2kReversible(_PerBand):
    name, family, lossless_only = "JPEG 2000 reversible", "JPEG 2000", True

    def _enc(self, plane, e):
        return _ic().jpeg2k_encode(plane, level=0, reversible=True, numthreads=1)

    def _dec(self, data, shape):
        return _ic().jpeg2k_decode(data, numthreads=1)


class JpegLS(_PerBand):
    """CharLS; E > 0 is JPEG-LS near-lossless (NEAR = E)."""

    name, family = "JPEG-LS", "JPEG-LS"

    def _enc(self, plane, e):
        return _ic().jpegls_encode(plane, level=int(e))

    def _dec(self, data, shape):
        return _ic().jpegls_decode(data)


class Lerc(_PerBand):
    """LERC with maxZError = E (its own guarantee), zstd-free raw output."""

    name, family = "LERC", "LERC"

    def _enc(self, plane, e):
        return _ic().lerc_encode(plane, level=float(e))

    def _dec(self, data, shape):
        return _ic().lerc_decode(data)


class Sz3(BenchCodec):
    """SZ3, absolute error bound E, on the whole (bands, H, W) cube as float32."""

    name, family = "SZ3", "SZ3"

    def settings(self):
        return [e for e in BOUNDS if e > 0]

    def encode(self, image, setting):
        return _ic().sz3_encode(image.astype(np.float32), mode="abs", abs=float(setting))

    def decode(self, data, setting, shape):
        return _to_u16(_ic().sz3_decode(data, shape, np.float32))


class Zfp(BenchCodec):
    """zfp accuracy mode (tolerance E) on the whole cube as float32."""

    name, family = "zfp", "zfp"

    def settings(self):
        return [e for e in BOUNDS if e > 0]

    def encode(self, image, setting):
        return _ic().zfp_encode(image.astype(np.float32), level=float(setting), mode="a", numthreads=1)

    def decode(self, data, setting, shape):
        return _to_u16(_ic().zfp_decode(data))


class Pcodec(BenchCodec):
    name, family = "pcodec", "pcodec"

    def settings(self):
        return [0]

    def encode(self, image, setting):
        return _ic().pcodec_encode(image, level=8)

    def decode(self, data, setting, shape):
        return _ic().pcodec_decode(data, shape=shape, dtype=np.uint16).reshape(shape)


class Blosc2Zstd(BenchCodec):
    name, family = "blosc2 zstd (bitshuffle)", "blosc2"

    def settings(self):
        return [0]

    def encode(self, image, setting):
        return _ic().blosc2_encode(image, level=9, compressor="zstd", shuffle="bitshuffle", typesize=2, numthreads=1)

    def decode(self, data, setting, shape):
        return np.frombuffer(_ic().blosc2_decode(data, numthreads=1), np.uint16).reshape(shape)


class Zstd(BenchCodec):
    name, family = "zstd 19", "zstd"

    def settings(self):
        return [0]

    def encode(self, image, setting):
        return _ic().zstd_encode(image.tobytes(), level=19)

    def decode(self, data, setting, shape):
        return np.frombuffer(_ic().zstd_decode(data), np.uint16).reshape(shape)


def bounded_codecs(qualities=(0, 2)) -> list[BenchCodec]:
    return [TECBounded(q) for q in qualities] + [
        JpegXLLossless(), Jpeg2kReversible(), JpegLS(), Pcodec(), Blosc2Zstd(), Zstd(), Lerc(), Sz3(), Zfp(),
    ]
