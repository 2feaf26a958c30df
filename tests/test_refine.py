"""The encoder's symbol search (refine=): its gradient, its rate estimates, and chunks that every reader decodes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import tec_zarr
from tec_zarr import metrics, pipeline
from tec_zarr.codec import zarr3
from tec_zarr.errors import InvalidInputError, RefinementUnsupportedError
from tec_zarr.models import load_model
from tec_zarr.pipeline import prepare as prep
from tec_zarr.pipeline.encode import code
from tec_zarr.pipeline.refine import objective, search
from tec_zarr.runtime.synthesis_gradient import SynthesisGradient


@pytest.fixture(scope="module")
def patch(image) -> np.ndarray:
    """A 12 x 96 x 128 crop of the bundled place (never trained on)."""
    return np.ascontiguousarray(image[:, 40:136, 60:188])


def prepared(model, array, quality, nodata=None):
    chunk = prep.prepare(array, model, quality, nodata, 1e4, None, None, 0)
    y = model.encoder.run(chunk.normalized)
    symbols = np.rint(y * model.gain[quality][None, :, None, None]).astype(np.int32)
    if chunk.skip is not None:
        symbols *= ~chunk.skip[:, None]
    return chunk, y, symbols


def test_gradient_is_the_decoders_directional_derivative():
    """<vjp(y, g), v> against central differences of the shipped decoder graph along random directions v."""
    model = load_model("tec-fp-3")
    gradient = SynthesisGradient.from_graph(model.decoder.data)
    rng = np.random.default_rng(1)
    y = (rng.normal(size=(1, 192, 8, 8)) * 0.5).astype(np.float32)
    g = rng.normal(size=(1, 12, 32, 32)).astype(np.float32)
    vjp = gradient.vjp(y, g).astype(np.float64)
    for _ in range(3):
        v = rng.normal(size=y.shape).astype(np.float32)
        eps = 1e-2
        plus = model.decoder.run(y + eps * v).astype(np.float64)
        minus = model.decoder.run(y - eps * v).astype(np.float64)
        numeric = float((g * (plus - minus)).sum()) / (2 * eps)
        assert float((vjp * v).sum()) == pytest.approx(numeric, rel=2e-3)


@pytest.mark.parametrize("name", ["tec-fp-3", "tec-hp", "tec-ctx-3", "tec-tt-3"])
def test_code_lengths_are_the_payloads_bits(name, patch):
    """The search's rate: the symbols as they are cost about what the coder writes (the payload also holds z and
    the escapes), and a step of one costs what the moved symbol costs."""
    model = load_model(name)
    chunk, y, symbols = prepared(model, patch, 2)
    lengths = model.coder.code_lengths(y, symbols, 2)
    assert lengths.shape == (3,) + symbols.shape
    payload_bits = 8 * len(model.coder.encode(y, symbols, 2))
    coded = np.isfinite(lengths[1])  # inf: a symbol outside its table, coded by the escape
    assert coded.mean() > 0.999
    assert 0.85 * payload_bits < lengths[1][coded].sum() <= payload_bits
    if name == "tec-fp-3":  # no context: a moved symbol costs what the table says for its new value, exactly
        moved = model.coder.code_lengths(y, symbols + 1, 2)
        np.testing.assert_array_equal(moved[1], lengths[2])
        moved = model.coder.code_lengths(y, symbols - 1, 2)
        np.testing.assert_array_equal(moved[1], lengths[0])


@pytest.mark.parametrize("name", ["tec-fp-3", "tec-ctx-3"])
def test_search_lowers_the_objective_on_real_data(name, patch):
    """On a place no model trained on, two rounds find symbols whose real chunk scores better than the rounded
    ones' (lambda * MSE + bits per pixel), and encode_chunk keeps them."""
    model = load_model(name)
    quality = 2
    chunk, y, symbols = prepared(model, patch, quality)
    searched = search(model, chunk, y, symbols, quality, 2)
    assert not np.array_equal(searched, symbols)
    assert np.abs(searched.astype(np.int64) - symbols).max() <= 2  # at most one step a round
    rounded_bytes = code(model, chunk, y, None, None, quality)
    refined_bytes = pipeline.encode_chunk(patch, model=model, quality=quality, nodata=None, refine=2)
    before = objective(model, chunk, symbols, quality, len(rounded_bytes))
    after = objective(model, chunk, searched, quality, len(refined_bytes))
    assert after < 0.98 * before
    decoded = pipeline.decode_chunk(refined_bytes)
    assert decoded.shape == patch.shape and metrics.psnr(patch, decoded) > 40
    assert pipeline.encode_chunk(patch, model=model, quality=quality, nodata=None, refine=2) == refined_bytes


def test_refined_chunks_keep_masks_blocks_and_dates(cube):
    """nodata stays exact and its latents uncoded, replicated bands decode to blocks, a temporal chunk's dates
    round trip."""
    image = np.ascontiguousarray(cube[1, :, :64, :64])
    holed = image.copy()
    holed[:, :, :24] = 0
    enc = pipeline.encode_chunk(holed, model="tec-fp-3", quality=2, nodata=0, refine=2)
    dec = pipeline.decode_chunk(enc)
    assert (dec[:, :, :24] == 0).all() and (dec[:, :, 24:] != 0).all()
    blocky = image.copy()
    blocky[4] = np.repeat(np.repeat(image[4, ::2, ::2], 2, axis=0), 2, axis=1)
    dec = pipeline.decode_chunk(pipeline.encode_chunk(blocky, model="tec-ctx-3", quality=2, nodata=None, refine=1))
    np.testing.assert_array_equal(dec[4], np.repeat(np.repeat(dec[4, ::2, ::2], 2, axis=0), 2, axis=1))
    dates = np.ascontiguousarray(cube[:2, :, :64, :64])
    enc = pipeline.encode_chunk(dates, model="tec-tt-3", quality=1, nodata=None, refine=1)
    dec = pipeline.decode_chunk(enc)
    assert dec.shape == dates.shape and metrics.psnr(dates, dec) > 35


def test_refine_parameter_and_config():
    codec = tec_zarr.TEC(refine=2)
    assert codec.get_config()["refine"] == 2
    assert tec_zarr.TEC.from_config(codec.get_config()).refine == 2
    assert "refine" not in tec_zarr.TEC().get_config()  # stores without it stay readable by older versions
    assert repr(codec).endswith("refine=2)")
    assert zarr3.TEC(refine=1).to_dict()["configuration"]["refine"] == 1
    assert "refine" not in zarr3.TEC().to_dict()["configuration"]
    for bad in (-1, 17, 1.5, True, "2"):
        with pytest.raises(InvalidInputError, match="Expected refine to be an integer"):
            tec_zarr.TEC(refine=bad)
    with pytest.raises(InvalidInputError, match="refine=0 with max_error"):
        tec_zarr.TEC(refine=1, max_error=2)
    with pytest.raises(InvalidInputError, match="refine=0 with max_error"):
        pipeline.encode_chunk(np.zeros((12, 16, 16), np.uint16), model="tec-fp-3", quality=0, max_error=0, refine=1)
    with pytest.raises(RefinementUnsupportedError, match="use refine=0 with this model"):
        tec_zarr.TEC(model="tec-fp-lite", refine=1)  # a light synthesis: no gradient known


def test_refined_store_reads_back_in_both_formats(tmp_path, cube):
    data = np.ascontiguousarray(cube[:1, :, :64, :96])
    for fmt in (2, 3):
        if fmt == 2:
            arr = zarr.create_array(tmp_path / "v2.zarr", shape=data.shape, chunks=(1, 12, 64, 48), dtype="uint16",
                                    compressors=tec_zarr.TEC(refine=1), filters=None, zarr_format=2)
        else:
            arr = zarr.create_array(tmp_path / "v3.zarr", shape=data.shape, chunks=(1, 12, 64, 48), dtype="uint16",
                                    serializer=zarr3.TEC(refine=1), compressors=None, zarr_format=3)
        arr[:] = data
        back = zarr.open_array(arr.store, mode="r")[:]
        assert metrics.psnr(data[0], back[0]) > 38


def test_cli_refine_reaches_the_store_and_the_tec_file(tmp_path, image, capsys):
    import json

    rasterio = pytest.importorskip("rasterio")
    from tec_zarr import cli, tecfile

    path = tmp_path / "scene.tif"
    data = np.ascontiguousarray(image[:, :64, :64])
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=12, dtype="uint16", crs="EPSG:32610",
                       transform=from_origin(600000, 4130000, 10, 10)) as dst:
        dst.write(data)
    assert cli.main(["compress", str(path), str(tmp_path / "s.zarr"), "--refine", "1", "--quiet"]) == 0
    arr = zarr.open_group(tmp_path / "s.zarr", mode="r")["reflectance"]
    assert '"refine": 1' in json.dumps(arr.metadata.to_dict())
    assert metrics.psnr(data, arr[:]) > 38
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "s.zarr")]) == 0
    assert "refine 1" in capsys.readouterr().out
    assert cli.main(["compress", str(path), str(tmp_path / "s.tec"), "--refine", "1", "--quiet"]) == 0
    with tecfile.open(tmp_path / "s.tec") as f:
        assert f.metadata.codec["refine"] == 1
        assert metrics.psnr(data, f.read()) > 38
    assert cli.main(["compress", str(path), str(tmp_path / "x.zarr"), "--refine", "1", "--lossless", "--quiet"]) == 2


def test_refined_float32_with_nan_and_partial_edge_chunks(tmp_path, cube):
    """xarray's float32 cube, NaN for missing reflectance, chunks that do not divide it: NaN reads back exactly
    and the rest within the lossy error of the default quality, in both formats."""
    import xarray as xr

    values = cube[:1, :, :70, :90].astype(np.float32) / np.float32(1e4)
    values[0, :, :10, :20] = np.nan
    ds = xr.Dataset({"r": (("time", "band", "y", "x"), values)})
    missing = np.isnan(values)
    for fmt in (2, 3):
        path = tmp_path / f"nan{fmt}.zarr"
        enc = tec_zarr.zarr_encoding(ds, zarr_format=fmt, chunks={"time": 1, "y": 64, "x": 64}, refine=2)
        ds.to_zarr(path, zarr_format=fmt, encoding=enc, consolidated=False)
        back = xr.open_zarr(path, consolidated=False)["r"].values
        np.testing.assert_array_equal(np.isnan(back), missing)
        assert float(np.sqrt(np.mean((back[~missing] - values[~missing]) ** 2))) < 0.01  # 100 DN; measured 74
