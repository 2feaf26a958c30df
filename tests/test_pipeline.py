"""The chunk pipeline: batched inference (pipeline.encode_chunks / decode_chunks, the zarr 3 codec's batch methods,
``.tec`` tiles) and ``psnr=`` targets.

The reference for batching is the unbatched path: each chunk alone, with ``MAX_BATCH_IMAGES = 1`` so that every
onnxruntime call sees one image. Batched results must match it byte for byte (encode) and exactly (decode).
"""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest
import zarr
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.dtype import get_data_type_from_native_dtype

from tec_zarr import TEC as TECv2
from tec_zarr import metrics, pipeline
from tec_zarr.codec.zarr3 import TEC
from tec_zarr.errors import CorruptChunkError, PsnrTargetWarning
from tec_zarr.models import DEFAULT_MODEL, load_model
from tec_zarr.pipeline.decode import parse
from tec_zarr.runtime import batching, onnx

MODEL = DEFAULT_MODEL  # what TEC() writes
C = np.ascontiguousarray


@pytest.fixture
def calls(monkeypatch):
    """The batch size (images) of every onnxruntime call, in order."""
    seen: list[int] = []
    real = onnx.run

    def counting(sha256, graph, inputs):
        seen.append(len(next(iter(inputs.values()))))
        return real(sha256, graph, inputs)

    monkeypatch.setattr(onnx, "run", counting)  # every Graph.run goes through it
    return seen


def one_by_one(monkeypatch, func, items, **kwargs):
    """``func`` on each item alone, one image per onnxruntime call."""
    with monkeypatch.context() as m:
        m.setattr(batching, "MAX_BATCH_IMAGES", 1)
        return [func(item, **kwargs) for item in items]


@pytest.fixture(scope="module")
def mixed(cube):
    """Chunks of several shapes (odd edge sizes, a multi-image chunk), with and without nodata."""
    masked = C(cube[2, :, :48, :48]).copy()
    masked[:, 5:17, 20:31] = 0
    edge = C(cube[3, :, :48, :48]).copy()
    edge[:, 37:, :] = 0  # a zarr edge chunk: fill value beyond the array
    return [
        C(cube[0, :, :48, :48]),
        C(cube[1, :, 100:137, 7:28]),  # 37 x 21: padded to the model's multiple
        masked,
        C(cube[:, :, 60:108, 60:108]),  # 4 images in one chunk
        C(cube[1, :, 200:237, 200:221]),
        edge,
        np.zeros((12, 48, 48), np.uint16),  # all nodata
        C(cube[2, :, 9:10, 3:8]),  # 1 x 5
    ]


@pytest.mark.parametrize("quality", [0, 2, 4])
def test_encode_chunks_equals_one_by_one(monkeypatch, calls, mixed, quality):
    expected = one_by_one(monkeypatch, pipeline.encode_chunk, mixed, model=MODEL, quality=quality)
    assert calls == [1] * sum(len(a.reshape(-1, *a.shape[-3:])) for a in mixed)
    calls.clear()
    got = pipeline.encode_chunks(mixed, model=MODEL, quality=quality)
    assert got == expected
    # The 48 x 48 chunks (1 + 1 + 4 + 1 + 1 images) share a call; 37 x 21 chunks (2) another; 1 x 5 its own.
    assert sorted(calls) == [1, 2, 8]
    assert len(set(got)) == len(got)  # no chunk's bytes stood in for another's


def test_groups_larger_than_the_cap_are_split(monkeypatch, calls, cube):
    arrays = [C(cube[i % 4, :, 8 * i : 8 * i + 24, :24]) for i in range(11)]
    arrays.insert(6, C(cube[:3, :, :24, 30:54]))  # images 6, 7 and 8 of the stack
    expected = one_by_one(monkeypatch, pipeline.encode_chunk, arrays, model=MODEL, quality=1)
    calls.clear()
    assert pipeline.encode_chunks(arrays, model=MODEL, quality=1) == expected
    assert calls == [batching.MAX_BATCH_IMAGES, 14 - batching.MAX_BATCH_IMAGES]  # the 3-image chunk straddles two calls
    calls.clear()
    decoded = pipeline.decode_chunks(expected)
    # the decoder stacks chunks with the same nonzero latent channels only (runtime.gathered): each image once
    decoder = load_model(MODEL).decoder
    keys = {decoder.stack_key(parse(data).y_hat()) for data in expected}
    assert sum(calls) == 14 and len(keys) <= len(calls) <= len(expected)
    for got, want in zip(decoded, one_by_one(monkeypatch, pipeline.decode_chunk, expected), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.filterwarnings("ignore::tec_zarr.errors.PsnrTargetWarning")
def test_float_and_bounded_modes_batch(monkeypatch, cube):
    arrays = [C(cube[i, :, :40, :40]) for i in range(3)] + [C(cube[0, :, :13, :40])]
    floats = [(a.astype(np.float32) / 1e4) for a in arrays]
    for items, kwargs in [(floats, {"quality": 3}), (arrays, {"quality": 1, "max_error": 7}),
                          (arrays, {"quality": 2, "psnr": 38.0})]:
        expected = one_by_one(monkeypatch, pipeline.encode_chunk, items, model=MODEL, **kwargs)
        got = pipeline.encode_chunks(items, model=MODEL, **kwargs)
        assert got == expected, kwargs
        for data, want in zip(pipeline.decode_chunks(got), one_by_one(monkeypatch, pipeline.decode_chunk, got), strict=True):
            np.testing.assert_array_equal(data, want)


def test_decode_chunks_equals_decode_chunk(monkeypatch, calls, mixed):
    encoded = pipeline.encode_chunks(mixed, model=MODEL, quality=2)
    expected = one_by_one(monkeypatch, pipeline.decode_chunk, encoded)
    calls.clear()
    decoded = pipeline.decode_chunks(encoded)
    # one call per shape and set of nonzero latent channels (runtime.gathered), each image once
    decoder = load_model(MODEL).decoder
    groups = {(parse(d).y_hat().shape[1:], decoder.stack_key(parse(d).y_hat())) for d in encoded}
    assert sum(calls) == sum(len(a.reshape(-1, *a.shape[-3:])) for a in mixed) and len(calls) == len(groups)
    for got, want, a in zip(decoded, expected, mixed, strict=True):
        assert got.shape == a.shape and got.dtype == a.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got == 0, a == 0)  # nodata where, and only where, it was
    assert pipeline.decode_chunks([]) == [] and pipeline.encode_chunks([], model=MODEL, quality=1) == []


def corrupt(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x40
    return bytes(b)


def test_corrupt_chunk_in_a_batch_raises(mixed):
    encoded = pipeline.encode_chunks(mixed[:3], model=MODEL, quality=2)
    good = pipeline.decode_chunks(encoded)
    with pytest.raises(CorruptChunkError) as info:
        pipeline.decode_chunks([encoded[0], corrupt(encoded[1]), encoded[2]])
    assert "chunk 1 of a batch of 3" in "".join(getattr(info.value, "__notes__", []))
    # nothing was left behind: the good chunks still decode to the same pixels, alone or together
    for got, want in zip(pipeline.decode_chunks([encoded[0], encoded[2]]), [good[0], good[2]], strict=True):
        np.testing.assert_array_equal(got, want)


def spec(shape, dtype="uint16"):
    return ArraySpec(shape, get_data_type_from_native_dtype(np.dtype(dtype)), 0, ArrayConfig.from_dict({}),
                     default_buffer_prototype())


def test_codec_batch_keeps_order_and_none(mixed):
    codec = TEC(quality=2)
    nd = default_buffer_prototype().nd_buffer.from_numpy_array
    arrays = [mixed[1], mixed[3], mixed[0]]
    batch = [(None, spec(arrays[0].shape)), (nd(arrays[0]), spec(arrays[0].shape)),
             (nd(arrays[1]), spec(arrays[1].shape)), (None, spec(arrays[1].shape)), (nd(arrays[2]), spec(arrays[2].shape))]
    encoded = list(asyncio.run(codec.encode(batch)))
    assert encoded[0] is None and encoded[3] is None
    expected = [pipeline.encode_chunk(a, model=MODEL, quality=2) for a in arrays]
    assert [e.to_bytes() for e in encoded if e is not None] == expected
    assert list(asyncio.run(codec.encode([(None, spec(arrays[0].shape))]))) == [None]

    decoded = list(asyncio.run(codec.decode([(e, s) for e, (_, s) in zip(encoded, batch, strict=True)])))
    assert decoded[0] is None and decoded[3] is None
    for d, e in zip(decoded, encoded, strict=True):
        if e is not None:
            np.testing.assert_array_equal(d.as_numpy_array(), pipeline.decode_chunk(e.to_bytes()))
    # the single-chunk methods are the batch path with one element
    one = asyncio.run(codec._encode_single(nd(arrays[1]), spec(arrays[1].shape)))
    assert one.to_bytes() == encoded[2].to_bytes()
    np.testing.assert_array_equal(asyncio.run(codec._decode_single(one, spec(arrays[1].shape))).as_numpy_array(),
                                  decoded[2].as_numpy_array())
    # a chunk decoding to another shape than its spec's is refused
    with pytest.raises(CorruptChunkError, match="shape"):
        asyncio.run(codec.decode([(encoded[1], spec(arrays[0].shape)), (encoded[2], spec(arrays[0].shape))]))


@pytest.fixture
def written(tmp_path, cube, monkeypatch):
    """A zarr 3 array of edge chunks and one all-fill chunk, written in batches of 8 chunks."""
    data = C(cube[:3, :, :150, :140]).copy()  # chunks of 64: edges of 22 x 12
    data[2, :, :64, :64] = 0  # an all-fill chunk, left unwritten
    batches = []
    real = pipeline.encode_chunks

    def spy(arrays, **kwargs):
        arrays = list(arrays)
        batches.append(len(arrays))
        return real(arrays, **kwargs)

    with monkeypatch.context() as m, zarr.config.set({"codec_pipeline.batch_size": 8}):
        m.setattr(pipeline, "encode_chunks", spy)
        arr = zarr.create_array(zarr.storage.LocalStore(tmp_path / "a.zarr"), shape=data.shape,
                                chunks=(1, 12, 64, 64), dtype="uint16", fill_value=0,
                                serializer=TEC(quality=2), compressors=None)
        arr[:] = data
    assert max(batches) > 1  # the codec did see batches
    return tmp_path / "a.zarr", arr, data


def chunk_file(root, t, y, x):
    return root / "c" / str(t) / "0" / str(y) / str(x)


def test_zarr3_chunk_files_equal_per_chunk_encoding(written):
    root, arr, data = written
    for t in range(3):
        for y in range(3):
            for x in range(3):
                block = np.zeros((1, 12, 64, 64), np.uint16)  # zarr fills edge chunks with the fill value
                part = data[t : t + 1, :, 64 * y : 64 * y + 64, 64 * x : 64 * x + 64]
                block[..., : part.shape[-2], : part.shape[-1]] = part
                path = chunk_file(root, t, y, x)
                if (t, y, x) == (2, 0, 0):
                    assert not path.exists()
                    continue
                assert path.read_bytes() == pipeline.encode_chunk(block, model=MODEL, quality=2), (t, y, x)


def test_zarr3_reads_back_per_chunk_decode(written):
    root, arr, data = written
    expected = np.zeros(data.shape, np.uint16)
    for t in range(3):
        for y in range(3):
            for x in range(3):
                path = chunk_file(root, t, y, x)
                if path.exists():
                    block = pipeline.decode_chunk(path.read_bytes())
                    region = expected[t : t + 1, :, 64 * y : 64 * y + 64, 64 * x : 64 * x + 64]
                    region[...] = block[..., : region.shape[-2], : region.shape[-1]]
    for batch_size in (1, 8):
        with zarr.config.set({"codec_pipeline.batch_size": batch_size}):
            np.testing.assert_array_equal(zarr.open_array(root, mode="r")[:], expected)


def test_zarr3_corrupt_chunk_raises_and_spares_the_rest(written):
    root, arr, data = written
    before = zarr.open_array(root, mode="r")[:]
    path = chunk_file(root, 1, 1, 1)
    path.write_bytes(corrupt(path.read_bytes()))
    with zarr.config.set({"codec_pipeline.batch_size": 8}):
        reread = zarr.open_array(root, mode="r")
        with pytest.raises(CorruptChunkError):
            reread[:]
        with pytest.raises(CorruptChunkError):
            reread[1, :, 60:70, 60:70]  # a batch of four chunks, one of them corrupt
        # the chunks around it still read back as before
        np.testing.assert_array_equal(reread[0], before[0])
        np.testing.assert_array_equal(reread[1, :, :64, :], before[1, :, :64, :])
        np.testing.assert_array_equal(reread[1, :, :, :64], before[1, :, :, :64])


def test_tec_file_tiles_equal_one_by_one(monkeypatch, calls, cube):
    from tec_zarr.bitstream.tecfile import TecMetadata
    from tec_zarr.gdal import raster

    image = C(cube[1, :, :200, :150]).copy()
    image[:, :64, 64:128] = 0  # an all-nodata tile, left absent
    codec = TECv2(quality=1)
    meta = TecMetadata.create(shape=image.shape, dtype=image.dtype, band_names=None, crs_wkt=None,
                              geotransform=None, nodata=0, tile=64, codec=codec.get_config(), overviews=(1,))
    blocks = [b for level in meta.levels
              for b in raster._blocks(image if level == 0 else raster.downsample(image, 2**level, 0), meta)]
    with monkeypatch.context() as m:
        m.setattr(batching, "MAX_BATCH_IMAGES", 1)
        expected = [None if (b == 0).all() else codec.encode(b) for b in blocks]
    calls.clear()
    got = list(raster.encode_tiles(image, meta, meta.levels))
    assert got == expected and got.count(None) == 1 and len(got) == 4 * 3 + 2 * 2
    assert len(calls) < len(blocks) - 1 and max(calls) <= batching.MAX_BATCH_IMAGES


def test_run_stacked_splits_and_keeps_each_jobs_output(monkeypatch, calls):
    """Jobs of one graph and shape share calls of at most MAX_BATCH_IMAGES images; others run apart."""
    from tec_zarr.models import load_model

    model = load_model(MODEL)
    rng = np.random.default_rng(0)
    jobs = [(model.decoder, rng.normal(0, 1, (n, model.latent_channels, 2, h)).astype(np.float32))
            for n, h in ((3, 2), (1, 3), (7, 2), (2, 3))]
    alone = [model.decoder.run(x) for _, x in jobs]
    calls.clear()
    monkeypatch.setattr(batching, "MAX_BATCH_IMAGES", 4)
    got = batching.run_stacked(jobs, exact=False)
    assert sorted(calls) == [2, 3, 4, 4]  # width 2: 3 + 7 images in calls of 4, 4, 2; width 3: 1 + 2 together
    for g, a in zip(got, alone, strict=True):
        assert g.shape == a.shape
        if model.decoder.cpu_only():  # measured bit-identical on CPU (batching.stacks_exactly)
            np.testing.assert_array_equal(g, a)
        else:
            np.testing.assert_allclose(g, a, rtol=1e-4, atol=1e-4)
    assert batching.run_stacked([], exact=True) == []


# psnr= targets.

@pytest.mark.parametrize("target", [38.0, 41.0, 45.0])
def test_psnr_target_takes_the_lowest_level_reaching_it(cube, target):
    """On every date the chosen level reaches the target and the level below it does not (targets between levels:
    38 dB needs level 1, 41 dB level 2, 45 dB level 3 on these crops)."""
    codec = TECv2(psnr=target)
    chosen = []
    for t in range(cube.shape[0]):
        a = C(cube[t, :, :64, :64])
        with warnings.catch_warnings():
            warnings.simplefilter("error", PsnrTargetWarning)  # every target here is reachable
            enc = codec.encode(a)
        q = pipeline.read_header(enc).quality
        chosen.append(q)
        assert metrics.psnr(a, codec.decode(enc)) >= target
        assert enc == TECv2(quality=q).encode(a)  # the chunk is that level's, byte for byte
        if q > 0:
            below = TECv2(quality=q - 1)
            assert metrics.psnr(a, below.decode(below.encode(a))) < target
    assert min(chosen) > 0  # the search really moved past level 0


def test_psnr_unreachable_warns_and_takes_the_best_level(image):
    a = C(image[:, :32, :32])
    with pytest.warns(PsnrTargetWarning, match="best level"):
        enc = TECv2(psnr=90.0).encode(a)
    q = pipeline.read_header(enc).quality
    psnrs = [metrics.psnr(a, TECv2(quality=p).decode(TECv2(quality=p).encode(a))) for p in range(5)]
    assert psnrs[q] == max(psnrs)
    assert max(psnrs) < 90.0


@pytest.mark.parametrize("missing", ["nodata", "nan"])
def test_psnr_target_counts_the_valid_pixels_only(cube, missing):
    """A swath-edge chunk (three quarters missing): missing elements come back exactly, so counting them would meet
    the target with pixels far below it. The target holds on the valid pixels, and the level below misses it."""
    a = C(cube[0, :, :64, :64])
    if missing == "nan":
        a = C(a.astype(np.float32) / np.float32(1e4))
    a[:, 16:, :] = 0 if missing == "nodata" else np.nan
    valid = np.zeros(a.shape, bool)
    valid[:, :16] = True
    scale = 1.0 if missing == "nodata" else 1e4
    target = 44.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", PsnrTargetWarning)
        enc = TECv2(psnr=target).encode(a)
    q = pipeline.read_header(enc).quality
    got = np.nan_to_num(TECv2(psnr=target).decode(enc))
    assert metrics.psnr(a[:, :16], got[:, :16], scale=scale) >= target
    assert metrics.psnr(np.nan_to_num(a), got, scale=scale, valid=valid) >= target
    assert q > 0
    below = TECv2(quality=q - 1)
    assert metrics.psnr(a[:, :16], np.nan_to_num(below.decode(below.encode(a)))[:, :16], scale=scale) < target
