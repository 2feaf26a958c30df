"""The chunk format: every damaged chunk ends in a BitstreamError subclass, never a crash or wrong pixels."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from tec_zarr import TEC, bitstream
from tec_zarr.errors import BitstreamError, CorruptChunkError, ModelMismatchError, TruncatedChunkError
from tec_zarr.models import load_model


@pytest.fixture(scope="module")
def encoded(image) -> bytes:
    a = np.ascontiguousarray(image[:, :40, :56])
    a[:, :3, :3] = 0
    return TEC().encode(a)


def test_header_round_trip(encoded):
    header, mask, payload = bitstream.unpack(encoded)
    assert header.model == "tec-fp"
    assert header.shape == (12, 40, 56)
    model = load_model("tec-fp")
    m = model.multiple
    assert header.latent == (model.tables.channels, -(-40 // m), -(-56 // m))
    assert header.pad == (-40 % m, -56 % m)
    assert header.dtype == np.uint16 and header.nodata == 0.0
    assert mask is not None and payload
    again = bitstream.pack(header, mask, payload)
    assert again == encoded


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 10, 30, -5, -1])
def test_truncated(encoded, cut):
    with pytest.raises(BitstreamError):
        TEC().decode(encoded[:cut])


def test_truncated_payload_says_so(encoded):
    # Cut inside the payload but keep a plausible 4-byte tail: the declared length no longer fits.
    with pytest.raises((TruncatedChunkError, CorruptChunkError)):
        TEC().decode(encoded[:-40] + encoded[-4:])


def test_every_flipped_byte_is_detected(encoded):
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(encoded), size=60, replace=False):
        damaged = bytearray(encoded)
        damaged[pos] ^= 0x5A
        with pytest.raises(BitstreamError):
            TEC().decode(bytes(damaged))


def test_bad_magic_and_future_version(encoded):
    with pytest.raises(CorruptChunkError, match="TECZ"):
        TEC().decode(b"JUNK" + encoded[4:])
    body = bytearray(encoded[:-4])
    body[4] = bitstream.FORMAT_VERSION + 1
    with pytest.raises(CorruptChunkError, match="format version"):
        TEC().decode(bytes(body) + struct.pack("<I", zlib.crc32(body)))


def test_chunk_from_other_weights(encoded):
    header, mask, payload = bitstream.unpack(encoded)
    other = bitstream.ChunkHeader(**{**header.__dict__, "model_hash": b"\x00" * 8})
    with pytest.raises(ModelMismatchError):
        TEC().decode(bitstream.pack(other, mask, payload))


def test_inconsistent_header_with_valid_crc(encoded):
    header, mask, payload = bitstream.unpack(encoded)
    m, h, w = header.latent
    lying = bitstream.ChunkHeader(**{**header.__dict__, "latent": (m, h + 1, w)})
    with pytest.raises(CorruptChunkError):
        TEC().decode(bitstream.pack(lying, mask, payload))
    huge = bitstream.ChunkHeader(**{**header.__dict__, "shape": (4096, 12, 40, 56)})
    with pytest.raises(BitstreamError):
        TEC().decode(bitstream.pack(huge, mask, payload))


def test_garbage_payload_with_valid_crc(encoded):
    header, mask, payload = bitstream.unpack(encoded)
    rng = np.random.default_rng(1)
    junk = rng.integers(0, 256, len(payload) // 4 * 4, dtype=np.uint8).tobytes()
    try:
        out = TEC().decode(bitstream.pack(header, mask, junk))
    except BitstreamError:
        return
    assert out.shape == (12, 40, 56)  # random symbols decode to *some* image; the CRC is what guards real data
