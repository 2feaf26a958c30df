"""Missing data costs (almost) nothing: latents under nodata, NaN and zarr's edge padding are not coded (chunk
format version 4), while every valid pixel decodes as it would without them."""

from __future__ import annotations

import numpy as np
import pytest

from common import assert_bound, check_golden
from tec_zarr import TEC, metrics
from tec_zarr.bitstream import chunk as bitstream
from tec_zarr.pipeline.prepare import latent_skip

MODELS = ["tec-fp", "tec-hp", "tec-ctx"]


@pytest.fixture(scope="module")
def exact(cube) -> np.ndarray:
    return np.ascontiguousarray(cube[1][:, :120, :120])


@pytest.fixture(scope="module")
def padded(exact) -> np.ndarray:
    """A 120 x 120 image in a 256 x 256 chunk padded with the fill value (= nodata 0), as zarr pads an edge chunk."""
    out = np.zeros((12, 256, 256), np.uint16)
    out[:, :120, :120] = exact
    return out


@pytest.mark.parametrize("model", MODELS)
def test_an_edge_chunk_costs_what_its_image_costs(model, exact, padded):
    codec = TEC(model=model)
    small, big = codec.encode(exact), codec.encode(padded)
    assert bitstream.unpack(big)[0].skips_missing and not bitstream.unpack(small)[0].skips_missing
    assert len(big) <= 1.10 * len(small)  # measured 0.99-1.08x; it was 2.3-3.8x before skipping
    decoded = codec.decode(big)
    np.testing.assert_array_equal(decoded[:, 120:], 0)
    np.testing.assert_array_equal(decoded[:, :, 120:], 0)
    # the valid pixels as good as in their own chunk (measured 42.42 against 42.45-42.47 dB)
    assert metrics.psnr(exact, decoded[:, :120, :120]) > metrics.psnr(exact, codec.decode(small)) - 0.2


@pytest.mark.parametrize("model", MODELS)
def test_a_half_nodata_image_costs_half(model, cube):
    full = np.ascontiguousarray(cube[1][:, :240, :240])
    half = full.copy()
    half[:, :, 120:] = 0  # an orbit swath edge
    codec = TEC(model=model)
    assert len(codec.encode(half)) <= 0.60 * len(codec.encode(full))  # measured 0.51-0.52x


@pytest.mark.parametrize("model", ["tec-fp", "tec-ctx"])
@pytest.mark.parametrize("max_error", [0, 5])
def test_bounds_hold_beside_skipped_latents(model, max_error, padded):
    codec = TEC(model=model, max_error=max_error)
    data = codec.encode(padded)
    assert bitstream.unpack(data)[0].skips_missing
    assert_bound(padded, codec.decode(data), max_error)


def test_nan_padding_is_skipped_too(exact):
    refl = np.full((12, 256, 256), np.nan, np.float32)
    refl[:, :120, :120] = exact / 1e4
    codec = TEC()
    data, own = codec.encode(refl), codec.encode(np.ascontiguousarray(refl[:, :120, :120]))
    assert bitstream.unpack(data)[0].skips_missing and len(data) <= 1.10 * len(own)
    decoded = codec.decode(data)
    assert np.isnan(decoded[:, 120:]).all() and np.isfinite(decoded[:, :120, :120]).all()


def test_skip_needs_every_band_and_a_margin():
    missing = np.zeros((1, 12, 32, 32), bool)
    missing[:, :, :, 16:] = True
    skip = latent_skip(missing, (0, 0), 4)
    # latent columns 4..7 cover pixels 16..31; column 4 borders valid data: kept by the one-latent margin
    assert skip.shape == (1, 8, 8) and not skip[:, :, :5].any() and skip[:, :, 5:].all()
    missing[:, 3, 0, 28] = False  # one band valid at one pixel keeps its block and its neighbours coded
    assert not latent_skip(missing, (0, 0), 4)[:, :2, 6:].any()
    assert latent_skip(np.zeros((1, 12, 32, 32), bool), (0, 0), 4) is None and latent_skip(None, (0, 0), 4) is None


def test_chunks_without_missing_data_keep_their_format(exact):
    assert not bitstream.unpack(TEC().encode(exact))[0].skips_missing


@pytest.mark.parametrize(("model", "max_error"), [("tec-fp", None), ("tec-ctx", None), ("tec-hp", 0)])
def test_golden_skipping_chunks(model, max_error, padded):
    """Version-4 chunks decode the same in every run (regenerated only with TEC_ZARR_REGENERATE_GOLDEN=1)."""
    small = np.ascontiguousarray(padded[:, :64, :96])
    small[:, 40:, :] = 0
    name = f"skip-missing-{model}" + ("" if max_error is None else f"-e{max_error}")
    check_golden(TEC(model=model, max_error=max_error), [small], name, max_abs_error=1.0 if max_error is None else 0)


@pytest.mark.parametrize(("model", "max_error", "dtype"), [("tec-fp", None, "uint16"), ("tec-hp", 0, "uint16"),
                                                           ("tec-fp", None, "float32")])
def test_golden_shared_masks(model, max_error, dtype, padded):
    """Chunks whose nodata (or NaN) mask every band shares store it once; they decode the same in every run."""
    from tec_zarr.bitstream.chunk import SHARED_MASK, unpack_sections

    small = np.ascontiguousarray(padded[:, :64, :96])
    small[:, 40:, :] = 0
    if dtype == "float32":  # xarray's NaN padding of a float32 edge chunk
        small = np.where(small == 0, np.float32(np.nan), small.astype(np.float32) / np.float32(1e4))
    codec = TEC(model=model, max_error=max_error)
    sections = unpack_sections(codec.encode(small))
    assert (sections.nan_mask if dtype == "float32" else sections.mask)[0] == SHARED_MASK
    name = f"shared-mask-{model}" + ("" if max_error is None else f"-e{max_error}") + ("-float32" if dtype == "float32" else "")
    check_golden(codec, [small], name, max_abs_error=(1.0 if dtype == "uint16" else 1e-4) if max_error is None else 0)
