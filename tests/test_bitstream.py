"""The chunk format (tec_zarr.chunk.chunk) and the framing of its payload sections (tec_zarr.chunk.payload):
every damaged chunk ends in a BitstreamError subclass, never a crash or wrong pixels."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from common import FIXTURES, check_golden
from tec_zarr import TEC
from tec_zarr.bitstream import chunk
from tec_zarr.bitstream import payload as sections
from tec_zarr.errors import BitstreamError, CorruptChunkError, ModelMismatchError, TruncatedChunkError
from tec_zarr.entropy import factorized
from tec_zarr.models import load_model
from tec_zarr.pipeline.decode import parse


@pytest.fixture(scope="module")
def encoded(image) -> bytes:
    a = np.ascontiguousarray(image[:, :40, :56])
    a[:, :3, :3] = 0
    return TEC(model="tec-fp").encode(a)


def test_header_round_trip(encoded):
    header, mask, payload = chunk.unpack(encoded)
    assert header.model == "tec-fp"
    assert header.shape == (12, 40, 56)
    model = load_model("tec-fp")
    m = model.multiple
    assert header.latent == (model.latent_channels, -(-40 // m), -(-56 // m))
    assert header.pad == (-40 % m, -56 % m)
    assert header.dtype == np.uint16 and header.nodata == 0.0
    assert mask is not None and payload
    again = chunk.pack(header, mask, payload)
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
    body[4] = chunk.FORMAT_VERSION + 1
    with pytest.raises(CorruptChunkError, match="format version"):
        TEC().decode(bytes(body) + struct.pack("<I", zlib.crc32(body)))


def test_chunk_from_other_weights(encoded):
    header, mask, payload = chunk.unpack(encoded)
    other = chunk.ChunkHeader(**{**header.__dict__, "model_hash": b"\x00" * 8})
    with pytest.raises(ModelMismatchError):
        TEC().decode(chunk.pack(other, mask, payload))


def test_inconsistent_header_with_valid_crc(encoded):
    header, mask, payload = chunk.unpack(encoded)
    m, h, w = header.latent
    lying = chunk.ChunkHeader(**{**header.__dict__, "latent": (m, h + 1, w)})
    with pytest.raises(CorruptChunkError):
        TEC().decode(chunk.pack(lying, mask, payload))
    huge = chunk.ChunkHeader(**{**header.__dict__, "shape": (4096, 12, 40, 56)})
    with pytest.raises(BitstreamError):
        TEC().decode(chunk.pack(huge, mask, payload))


def test_garbage_payload_with_valid_crc(encoded):
    header, mask, payload = chunk.unpack(encoded)
    rng = np.random.default_rng(1)
    junk = rng.integers(0, 256, len(payload) // 4 * 4, dtype=np.uint8).tobytes()
    try:
        out = TEC().decode(chunk.pack(header, mask, junk))
    except BitstreamError:
        return
    assert out.shape == (12, 40, 56)  # random symbols decode to *some* image; the CRC is what guards real data


def test_header_names_the_codec_and_checks_its_crc(encoded):
    assert chunk.CODEC_ID == "tec_zarr.tec" and encoded[:4] == chunk.MAGIC
    (crc,) = struct.unpack("<I", encoded[-4:])
    assert crc == zlib.crc32(encoded[:-4])
    with pytest.raises(CorruptChunkError):
        chunk.unpack(encoded[:-4] + struct.pack("<I", crc ^ 1))


def test_mask_packing_round_trips():
    rng = np.random.default_rng(0)
    for shape in ((1, 12, 1, 1), (2, 12, 5, 7), (1, 3, 40, 56)):
        mask = rng.random(shape) < 0.3
        np.testing.assert_array_equal(chunk.unpack_mask(chunk.pack_mask(mask), shape), mask)


def test_masks_every_band_shares_are_stored_once():
    """Edge padding and swath edges miss every band alike: one band's mask is stored, marked by its first byte;
    a mask whose bands differ is stored whole, as before (and as every earlier chunk stores it)."""
    mask = np.zeros((2, 12, 256, 256), bool)
    mask[:, :, 120:, :] = mask[:, :, :, 120:] = True
    shared = chunk.pack_mask(mask)
    whole = zlib.compress(np.packbits(mask.ravel()).tobytes(), 9)
    assert shared[0] == chunk.SHARED_MASK and whole[0] & 0x0F == 8 and len(shared) * 4 < len(whole)
    for data in (shared, whole):  # the shared form, and the form every earlier chunk holds
        np.testing.assert_array_equal(chunk.unpack_mask(data, mask.shape), mask)
    mask[1, 3, 0, 0] = True  # one band differs: stored whole
    assert chunk.pack_mask(mask)[0] & 0x0F == 8
    np.testing.assert_array_equal(chunk.unpack_mask(chunk.pack_mask(mask), mask.shape), mask)


@pytest.mark.parametrize("data", [
    bytes([1]) + zlib.compress(np.packbits(np.ones(40 * 56 * 2, bool)).tobytes()),  # one band's bits: too many
    bytes([1]) + zlib.compress(np.packbits(np.ones(40 * 56 - 8, bool)).tobytes()),  # too few
    bytes([1]), bytes([2]) + zlib.compress(b"x"), b"",
])
def test_a_shared_mask_of_the_wrong_size_or_kind_is_corrupt(data):
    with pytest.raises(CorruptChunkError):
        chunk.unpack_mask(data, (1, 12, 40, 56))


def test_a_shared_mask_needs_a_band_axis():
    with pytest.raises(CorruptChunkError, match="shared"):
        chunk.unpack_mask(bytes([1]) + zlib.compress(np.packbits(np.ones(56, bool)).tobytes()), (40, 56))


def test_version_one_chunks_unchanged(image):
    enc = TEC().encode(np.ascontiguousarray(image[:, :16, :16]))
    assert enc[4] == chunk.FORMAT_VERSION and chunk.unpack(enc)[0].residual is None
    assert TEC(max_error=0).encode(np.ascontiguousarray(image[:, :64, :64]))[4] == chunk.RESIDUAL_FORMAT_VERSION


def test_residual_coder_byte_is_strict(image):
    """Version 3 carries the coder byte (2); version 2 means coder 1. Any other pairing is refused."""
    enc = TEC(max_error=3).encode(np.ascontiguousarray(image[:, :64, :64]))
    assert chunk.unpack(enc)[0].residual.coder == 2
    tiny = TEC(max_error=100, quality=2).encode(np.ascontiguousarray(image[:, :16, :16]))  # coder 1 where smaller
    assert tiny[4] == chunk.RESIDUAL_V1_FORMAT_VERSION and chunk.unpack(tiny)[0].residual.coder == 1
    header, mask, latent = chunk.unpack(enc)
    for version, coder in ((3, 1), (3, 9), (2, 2)):
        body = bytearray(enc[:-4])
        body[4] = version
        pos = enc.index(struct.pack("<dB", header.residual.max_error, header.residual.mode), 40) + 9
        if version == 3:
            body[pos] = coder
        else:  # a version 2 reader takes the coder byte for the tile field: misaligned, refused
            pass
        with pytest.raises(BitstreamError):
            TEC().decode(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))



# -- payload sections ------------------------------------------------------------------------------------------------


def test_residual_seal_refuses_other_values_and_extra_words():
    values = np.array([3, -1, 0, 2**40], np.int64)
    words = np.arange(6, dtype=np.uint32).tobytes()
    sealed = sections.seal_residual(values, words)
    np.testing.assert_array_equal(sections.residual_words(sealed), np.arange(6, dtype=np.uint32))
    sections.check_residual_seal(sealed, values, exhausted=True)
    for other, exhausted in ((values + 1, True), (values[:-1], True), (values, False)):
        with pytest.raises(CorruptChunkError):
            sections.check_residual_seal(sealed, other, exhausted)
    with pytest.raises(CorruptChunkError):  # the seal covers the words' length: an appended word is refused
        sections.check_residual_seal(sealed + b"\0" * 4, values, exhausted=True)
    for bad in (b"", b"abc", sealed[:-1]):
        with pytest.raises(CorruptChunkError):
            sections.residual_words(bad)


def test_parameter_sections_are_strict():
    np.testing.assert_array_equal(sections.tile_parameters(bytes([1, 2, 3, 4])), [[1, 2], [3, 4]])
    with pytest.raises(CorruptChunkError):
        sections.tile_parameters(b"\x01\x02\x03")
    raw = bytes(range(200))
    packed = sections.deflate_parameters(raw)
    assert sections.inflate_parameters(packed, len(raw)) == raw
    for bad, limit in ((packed, len(raw) - 1), (packed + b"\0", len(raw)), (packed[:-3], len(raw)), (b"junk", 10),
                       (packed + packed, 2 * len(raw))):
        with pytest.raises(CorruptChunkError):
            sections.inflate_parameters(bad, limit)


# -- coded channels (flag bit 6): channels that are all 0 are left out of the payload ---------------------------------


def test_coded_channels_leave_out_the_all_zero_ones(image):
    """A factorized chunk marks the channels holding a nonzero symbol and codes those alone; the others decode to 0,
    to the pixels of the same symbols with every channel coded (the chunks earlier versions wrote)."""
    a = np.ascontiguousarray(image[:, :64, :64])
    enc = TEC(model="tec-fp", quality=0).encode(a)
    header, mask, payload = chunk.unpack(enc)
    symbols = parse(enc).symbols
    coded = header.coded_channels
    assert header.channels == chunk.channel_section(coded) and chunk.pack(header, mask, payload) == enc
    np.testing.assert_array_equal(coded, symbols.any(axis=(0, 2, 3)))
    assert 0 < coded.sum() < coded.size / 2  # at the lowest level most channels are all 0
    tables = load_model("tec-fp").coder.tables
    every = chunk.pack(dataclasses.replace(header, channels=None), mask, factorized.encode(symbols, 0, tables))
    np.testing.assert_array_equal(parse(every).symbols, symbols)
    codec = TEC(model="tec-fp", quality=0)
    np.testing.assert_array_equal(codec.decode(every), codec.decode(enc))
    assert len(enc) < len(every) + len(header.channels)  # leaving channels out costs at most the field


def test_a_chunk_with_no_coded_channel_decodes_to_the_zero_latent(image):
    a = np.ascontiguousarray(image[:, :16, :16])
    header, mask, payload = chunk.unpack(TEC(quality=0).encode(a))
    none = chunk.channel_section(np.zeros(header.latent[0], bool))
    empty = chunk.pack(dataclasses.replace(header, channels=none), mask, b"")
    assert TEC(quality=0).decode(empty).shape == a.shape and not parse(empty).symbols.any()


def test_coded_channels_field_is_checked(image):
    a = np.ascontiguousarray(image[:, :32, :32])
    header, mask, payload = chunk.unpack(TEC(quality=0).encode(a))
    assert header.channels is not None
    # bits after the latent channels must be 0: a 190-channel header keeps 24 bytes, its last two bits set
    body = bytearray(chunk.pack(dataclasses.replace(header, latent=(190, *header.latent[1:]),
                                                    channels=b"\xff" * 24), mask, payload)[:-4])
    with pytest.raises(CorruptChunkError, match="coded-channels"):
        chunk.unpack(bytes(body) + struct.pack("<I", zlib.crc32(body)))
    # a field longer than the chunk under a valid CRC is corrupt, not truncated
    lying = chunk.pack(dataclasses.replace(header, latent=(65535, *header.latent[1:])), mask, payload)
    with pytest.raises(CorruptChunkError, match="reaching past its end"):
        chunk.unpack(lying)


def test_coded_channels_only_for_coders_that_leave_channels_out(image):
    """tec-hp, tec-ctx and tec-tt code every channel (their y sections are cheap where a channel is all 0): a chunk
    of theirs marking channels is corrupt."""
    a = np.ascontiguousarray(image[:, :32, :32])
    enc = TEC(model="tec-hp", quality=0).encode(a)
    header, mask, payload = chunk.unpack(enc)
    assert header.channels is None
    marked = chunk.channel_section(parse(enc).symbols.any(axis=(0, 2, 3)))
    with pytest.raises(CorruptChunkError, match="codes them all"):
        TEC(model="tec-hp", quality=0).decode(chunk.pack(dataclasses.replace(header, channels=marked), mask, payload))


def test_golden_coded_channels(cube):
    """Chunks with flag bit 6 decode the same in every run (regenerated only with TEC_ZARR_REGENERATE_GOLDEN=1)."""
    a = np.ascontiguousarray(cube[2, :, :48, :40])
    a[:, :5, :6] = 0
    check_golden(TEC(model="tec-fp", quality=0), [a], "channels-tec-fp-q0")
    check_golden(TEC(model="tec-fp-lite", quality=1), [np.ascontiguousarray(cube[1, :, 8:56, 16:80])],
                 "channels-tec-fp-lite-q1")
    for f in (FIXTURES / "tec_zarr.tec").glob("channels-*/encoded.*.dat"):
        assert chunk.unpack(f.read_bytes())[0].channels is not None
