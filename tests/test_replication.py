"""Nearest-replicated 20 m / 60 m bands (k x k blocks) are found, stored in the chunk and coded on their native grid:
lossless and bounded residuals code one value per block, lossy chunks code a smooth band and decode exact blocks."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from common import assert_bound, check_golden
from tec_zarr import TEC, metrics, replication
from tec_zarr.bitstream import chunk as bitstream
from tec_zarr.errors import BitstreamError, CorruptChunkError
from tec_zarr.pipeline import decode_chunk, encode_chunk
from tec_zarr.replication import NATIVE, Blocks

# Sentinel-2 native sizes on the 10 m grid, in the models' band order (B01 .. B12 without B10).
SIZES = (6, 1, 1, 1, 2, 2, 2, 1, 2, 6, 2, 2)


def replicate(image: np.ndarray, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``image`` (C, H, W) with its 20 m and 60 m bands as a cube builder makes them: each native pixel (the block
    mean) repeated over its block, blocks starting at ``phase``."""
    out = image.copy()
    for c, size in enumerate(SIZES):
        if size > 1:
            b = Blocks(size, phase[0] % size, phase[1] % size)
            means = replication.block_sums(image[c].astype(np.float64), b) / np.outer(
                replication.lengths(image.shape[1], *b[:2]), replication.lengths(image.shape[2], b.size, b.phase_x))
            out[c] = replication.expand(np.rint(means), b, image.shape[1:]).astype(image.dtype)
    return out


@pytest.fixture(scope="module")
def nearest(cube) -> np.ndarray:
    """A real image (never trained on) as a nearest-resampling cube builder stores it, blocks not at the chunk's
    corner: partial blocks on every edge."""
    return replicate(np.ascontiguousarray(cube[1][:, :100, :90]), phase=(1, 4))


def header(data: bytes) -> bitstream.ChunkHeader:
    return bitstream.unpack(data)[0]


def expected_blocks(phase=(1, 4)) -> tuple:
    return tuple((s, phase[0] % s, phase[1] % s) if s > 1 else (1, 0, 0) for s in SIZES)


# --- detection -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, phase", [(2, (0, 0)), (2, (1, 0)), (3, (2, 1)), (6, (5, 3)), (6, (0, 4))])
def test_detect_finds_size_and_phase(size, phase):
    rng = np.random.default_rng(size)
    b = Blocks(size, *phase)
    h, w = 37, 41  # partial blocks at both ends
    natives = (len(replication.starts(h, size, phase[0])), len(replication.starts(w, size, phase[1])))
    band = replication.expand(rng.integers(0, 9000, (2,) + natives), b, (h, w))
    assert replication.detect_band(band, np.ones(band.shape, bool)) == b


def test_detect_ignores_missing_elements_but_checks_whole_blocks():
    rng = np.random.default_rng(0)
    b = Blocks(2, 1, 1)
    band = replication.expand(rng.integers(100, 9000, (1, 9, 9)), b, (16, 16))
    valid = rng.random(band.shape) > 0.3
    noisy = np.where(valid, band, rng.integers(0, 99, band.shape))  # anything where missing
    assert replication.detect_band(noisy, valid) == b
    # 5 and 6 differ only across a missing element, so no neighbour test sees them: whole blocks are checked
    hidden = np.array([[[5, 5, 5, 0, 6, 6]]])
    gap = np.array([[[True, True, True, False, True, True]]])
    assert replication.detect_band(hidden, gap) == Blocks(3, 0, 0)  # not 6 x 6, whose one block holds 5 and 6


def test_native_bands_and_noise_are_not_replicated(cube):
    image = np.ascontiguousarray(cube[1][:, :64, :64])
    assert replication.detect(image[None], np.ones((1,) + image.shape, bool)) is None


def test_a_chunk_replicated_in_one_image_only_is_not():
    rng = np.random.default_rng(1)
    a = replication.expand(rng.integers(0, 999, (2, 1, 8, 8)), Blocks(2), (16, 16))
    a[1, 0, 3, 3] += 1
    assert replication.detect(a, np.ones(a.shape, bool)) is None


# --- the operators ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b", [Blocks(2, 0, 0), Blocks(2, 1, 1), Blocks(6, 5, 2), Blocks(3, 1, 0)])
def test_smooth_keeps_every_block_mean(b):
    rng = np.random.default_rng(b.size)
    x = rng.normal(size=(2, 1, 50, 47)).astype(np.float32)
    valid = np.ones(x.shape, bool)
    before = replication.block_sums(x[:, 0].astype(np.float64), b)
    replication.smooth(x, valid, (b,))
    after = replication.block_sums(x[:, 0].astype(np.float64), b)
    np.testing.assert_allclose(after, before, atol=1e-4)
    blocky = replication.expand(before, b, (50, 47))
    steps = lambda v: np.abs(np.diff(v, axis=-1)).mean()  # noqa: E731
    assert steps(x[:, 0]) < 0.5 * steps(blocky)  # smooth: no block steps left


@pytest.mark.parametrize("b", [Blocks(2, 1, 0), Blocks(6, 5, 2), Blocks(3, 0, 2)])
def test_smoothing_matrix_is_what_smooth_does(b):
    """The trainers hand the transform ``S_y band S_x.T``: the encoder's smooth band, on any band (blocks or not)."""
    rng = np.random.default_rng(b.size)
    x = rng.normal(size=(2, 2, 50, 37))
    x[:, 1] = replication.expand(replication.block_sums(x[:, 1], b), b, (50, 37))  # one band made of blocks
    want = x.copy()
    replication.smooth(want, np.ones(x.shape, bool), (b, b))
    sy, sx = replication.smoothing_matrix(50, b.size, b.phase_y), replication.smoothing_matrix(37, b.size, b.phase_x)
    np.testing.assert_allclose(sy @ x @ sx.T, want, atol=1e-9)
    np.testing.assert_allclose(sy.sum(axis=1), 1.0, atol=1e-12)  # constants stay: it commutes with normalization


def test_native_layout_round_trips_and_integer_projection_is_exact():
    rng = np.random.default_rng(3)
    blocks = (Blocks(2, 1, 0), NATIVE, Blocks(6, 2, 5))
    q = np.stack([replication.expand(rng.integers(-50, 50, (2, 11, 9)), Blocks(2, 1, 0), (20, 17)),
                  rng.integers(-50, 50, (2, 20, 17)),
                  replication.expand(rng.integers(-50, 50, (2, 4, 3)), Blocks(6, 2, 5), (20, 17))], axis=1)
    valid = rng.random(q.shape) > 0.2
    coded, ok = replication.to_native(q, valid, blocks)
    assert ok[:, 0].sum() <= 11 * 9 * 2 and ok[:, 2].sum() <= 4 * 3 * 2 and (ok == replication.native_valid(valid, blocks)).all()
    np.testing.assert_array_equal(replication.from_native(coded, blocks)[valid], q[valid])
    v = np.array([[[[1, 2, 2, 9]]]], np.int64)
    np.testing.assert_array_equal(replication.project(v, (Blocks(2, 0, 1),)), [[[[1, 2, 2, 9]]]])
    w = np.array([[[[1, 2, -3, -4]]]], np.int64)
    np.testing.assert_array_equal(replication.project(w, (Blocks(2),)), [[[[2, 2, -4, -4]]]])  # ties away from 0



# --- the codec -------------------------------------------------------------------------------------------------

def test_lossy_chunks_store_the_blocks_and_decode_exact_blocks(nearest):
    data = TEC().encode(nearest)
    assert header(data).blocks == expected_blocks()
    decoded = TEC().decode(data)
    assert replication.detect(decoded[None], np.ones((1,) + decoded.shape, bool)) == tuple(
        Blocks(*b) for b in expected_blocks())
    assert metrics.psnr(nearest, decoded) > 40


@pytest.mark.parametrize("model", ["tec-fp", "tec-ctx"])
def test_lossy_blocks_cost_fewer_bits_at_better_quality(model, nearest, monkeypatch):
    codec = TEC(model=model)
    aware = codec.encode(nearest)
    aware_psnr = metrics.psnr(nearest, codec.decode(aware))
    from tec_zarr.pipeline import prepare

    monkeypatch.setattr(prepare, "detect", lambda images, valid: None)
    blind = codec.encode(nearest)
    assert header(blind).blocks is None
    # measured 0.83x the bytes at +1.1 dB (tec-fp), 0.86x at +1.0 dB (tec-ctx)
    assert len(aware) < 0.92 * len(blind) and aware_psnr > metrics.psnr(nearest, codec.decode(blind)) + 0.5


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_lossless_codes_one_value_per_block(nearest, dtype, monkeypatch):
    a = nearest.astype(dtype) / (1e4 if dtype == "float32" else 1)
    a = np.ascontiguousarray(a.astype(dtype))
    codec = TEC(max_error=0, quality=0, nodata=None)
    data = codec.encode(a)
    assert header(data).blocks == expected_blocks()
    out = codec.decode(data)
    assert out.dtype == a.dtype and out.tobytes() == a.tobytes()
    from tec_zarr.pipeline import prepare

    monkeypatch.setattr(prepare, "detect", lambda images, valid: None)
    assert len(data) < 0.7 * len(codec.encode(a))  # measured 0.55x


@pytest.mark.parametrize("max_error", [3, 40])
def test_bounds_hold_on_blocks_with_nodata(nearest, max_error):
    a = nearest.copy()
    a[:, 60:, :30] = 0  # a swath edge cutting blocks
    a[4, 10, 11] = 0  # one nodata element inside a 20 m block
    codec = TEC(max_error=max_error)
    data = codec.encode(a)
    assert header(data).blocks is not None
    out = codec.decode(data)
    assert_bound(a, out, max_error)
    np.testing.assert_array_equal(out[a == 0], 0)


def test_float32_nan_inside_blocks(nearest):
    a = (nearest / 1e4).astype(np.float32)
    a[:, :7, :] = np.nan  # a NaN edge, not on block lines
    a[10, 50, 50] = np.nan
    for codec in (TEC(nodata=None), TEC(nodata=None, max_error=0)):
        data = codec.encode(a)
        assert header(data).blocks is not None
        out = codec.decode(data)
        assert np.array_equal(np.isnan(out), np.isnan(a))
        if codec.max_error == 0:
            assert out.tobytes() == a.tobytes()


def test_psnr_target_sees_the_projected_decode(nearest):
    data = encode_chunk(nearest, model="tec-fp", quality=0, psnr=45.0)
    assert metrics.psnr(nearest, decode_chunk(data)) >= 45.0


@pytest.mark.parametrize(("model", "max_error"), [("tec-fp", None), ("tec-ctx", None), ("tec-fp", 0), ("tec-hp", 4)])
def test_golden_block_chunks(model, max_error, nearest):
    """Chunks with a blocks section decode the same in every run (regenerated only with
    TEC_ZARR_REGENERATE_GOLDEN=1)."""
    small = np.ascontiguousarray(nearest[:, :40, :52])
    small[:, 30:, 40:] = 0
    name = f"blocks-{model}" + ("" if max_error is None else f"-e{max_error}")
    check_golden(TEC(model=model, max_error=max_error), [small], name, max_abs_error=1.0 if max_error is None else 0)


# --- hostile blocks sections -----------------------------------------------------------------------------------

def _with_blocks(data: bytes, blocks: bytes) -> bytes:
    """``data`` (a chunk with a blocks section) with other blocks bytes, CRC renewed."""
    h = header(data)
    raw = bytes(v for b in h.blocks for v in b)
    body = data[:-4]
    at = body.index(raw)
    body = body[:at] + blocks + body[at + len(raw):]
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("bad", [
    bytes([0, 0, 0] * 12),  # size 0
    bytes([2, 2, 0] * 12),  # phase not below the size
    bytes([1, 0, 0] * 12),  # flag set, no band replicated
    bytes([1, 1, 0] * 12),  # size 1 with a phase
])
def test_hostile_blocks_are_refused(nearest, bad):
    data = TEC().encode(nearest)
    with pytest.raises(CorruptChunkError):
        TEC().decode(_with_blocks(data, bad))


def test_any_block_size_decodes_within_the_chunk(nearest):
    """Block sizes the encoder never writes (255, larger than the chunk; 1 x 1 phases) still decode to the chunk's
    shape, as exact blocks."""
    data = TEC().encode(nearest)
    other = _with_blocks(data, bytes([255, 254, 3] + [1, 0, 0] * 10 + [7, 0, 6]))
    out = TEC().decode(other)
    assert out.shape == nearest.shape and np.isfinite(out).all()
    band = out[0].astype(np.int64)  # 255 x 255 blocks from row 254, column 3: four blocks on a 100 x 90 chunk
    assert (band[:, :3] == band[0, 0]).all() and (band[:, 3:] == band[0, 3]).all()


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_extreme_latents_with_blocks_decode_finite(nearest):
    """A float32 chunk whose latents decode to +-inf: the projection must not average them into NaN."""
    from tec_zarr.models import load_model

    a = (nearest / 1e4).astype(np.float32)
    h, m, _ = bitstream.unpack(TEC(nodata=None).encode(a))
    symbols = np.zeros((h.batch, *h.latent), np.int64)
    symbols[:, :, ::2] = 2**31 - 1
    symbols[:, :, 1::2] = -(2**31)
    payload = load_model(h.model).coder.encode(None, symbols, h.quality)
    out = TEC(nodata=None).decode(bitstream.pack(dataclasses.replace(h, float_scale=1e-20, channels=None), m, payload))
    assert h.blocks is not None and np.isfinite(out).all()


def test_signed_zeros_stay_exact_in_lossless_float32():
    rng = np.random.default_rng(5)
    a = replication.expand(rng.integers(1, 999, (12, 10, 10)).astype(np.float32) / 1e4, Blocks(2), (20, 20))
    a = np.ascontiguousarray(a.astype(np.float32))
    a[:, :2, :2] = 0.0
    a[:, 0, 0] = -0.0  # one block holds -0.0 and 0.0: equal values, other bits
    codec = TEC(max_error=0, nodata=None)
    out = codec.decode(codec.encode(a))
    assert out.tobytes() == a.tobytes()


def test_all_missing_residual_chunks_decode():
    """All-zero latents (every element missing): the integer synthesis has no channel to gather."""
    zeros = np.zeros((12, 32, 32), np.uint16)
    codec = TEC(max_error=0)
    np.testing.assert_array_equal(codec.decode(codec.encode(zeros)), zeros)
    nans = np.full((12, 32, 32), np.nan, np.float32)
    codec = TEC(max_error=0, nodata=None)
    assert np.isnan(codec.decode(codec.encode(nans))).all()


@pytest.mark.parametrize("shape", [(2, 2), (1, 2), (2, 1), (1, 1)])
def test_tiny_chunks_are_not_called_replicated(shape):
    noise = np.random.default_rng(0).integers(1, 9999, (12, *shape)).astype(np.uint16)
    assert header(TEC().encode(noise)).blocks is None  # 1 x 1 blocks would only cost a section


def test_extension_flag_without_its_field_is_refused(nearest):
    data = bytearray(TEC().encode(nearest)[:-4])
    data[5] |= 128  # bit 7 became the extensions field's flag: the payload length then reads as a bad extension
    body = bytes(data)
    with pytest.raises(CorruptChunkError, match="extension|within its bytes"):
        TEC().decode(body + struct.pack("<I", zlib.crc32(body)))


def test_a_blocks_flag_without_its_section_is_refused(cube):
    data = bytearray(TEC().encode(np.ascontiguousarray(cube[1][:, :64, :64]))[:-4])  # no blocks section
    data[5] |= bitstream.FLAG_BLOCKS
    body = bytes(data)
    with pytest.raises(BitstreamError):
        TEC().decode(body + struct.pack("<I", zlib.crc32(body)))


# --- through the stores ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_replicated_cube_through_xarray_with_partial_chunks(cube, tmp_path, zarr_format):
    """A cube as a nearest-resampling builder stores it, chunks that do not divide it (zarr pads the edge chunks
    with the fill value): stored with blocks where the chunk has them, read back by xr.open_zarr as written."""
    import xarray as xr

    import tec_zarr

    data = np.stack([replicate(np.ascontiguousarray(cube[t][:, :70, :90]), phase=(1, 1)) for t in range(2)])
    ds = xr.Dataset({"reflectance": (("time", "band", "y", "x"), data)})
    for max_error in (None, 0):
        store = tmp_path / f"cube-{max_error}.zarr"
        enc = tec_zarr.zarr_encoding(ds, zarr_format=zarr_format, chunks={"time": 1, "y": 48, "x": 48},
                                     max_error=max_error)
        ds.to_zarr(store, zarr_format=zarr_format, encoding=enc, consolidated=False)
        back = xr.open_zarr(store, consolidated=False)["reflectance"].values
        if max_error == 0:
            np.testing.assert_array_equal(back, data)
        else:
            assert metrics.psnr(data, back) > 40
            first = back[:1, :, :48, :48]  # one chunk: a block cut by a chunk edge decodes as two
            assert replication.detect(first, np.ones(first.shape, bool))[4] == Blocks(2, 1, 1)  # blocks again
        chunk_files = [p for p in store.rglob("*") if p.is_file() and p.stat().st_size > 100
                       and p.read_bytes()[:4] == bitstream.MAGIC]
        assert chunk_files and all(header(p.read_bytes()).blocks is not None for p in chunk_files)


def test_a_replicated_raster_through_a_tec_file(cube, tmp_path):
    from tec_zarr.gdal import raster

    image = replicate(np.ascontiguousarray(cube[1][:, :100, :90]), phase=(0, 1))
    path = tmp_path / "scene.tec"
    raster.write(path, image, crs_wkt=None, geotransform=None, tile=64, max_error=0)
    with raster.open(path) as f:
        np.testing.assert_array_equal(f.read(), image)
        assert header(f.read_tile(0, 0, 0)).blocks is not None
