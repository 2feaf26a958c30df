"""Exact integer networks: the layers (tec_zarr.integer.layers) and the integer synthesis transform built on them.

Integers held in float64 with every partial sum below 2**52 are exact in any summation order, so these give the
same bits on every machine: checked here against direct definitions and against matmuls that sum in other orders.
"""

from __future__ import annotations

import numpy as np
import pytest

from common import shuffled_matmul
from tec_zarr import metrics, pipeline
from tec_zarr.pipeline.decode import parse
from tec_zarr.bitstream import chunk
from tec_zarr.entropy import context
from tec_zarr.integer import layers
from tec_zarr.models import load_model

MODEL = load_model("tec-fp")


def symbols_of(a: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """A chunk of ``a`` and its latent symbols, decoded from its payload."""
    enc = pipeline.encode_chunk(a, model=MODEL, quality=quality, nodata=None)
    return enc, parse(enc).symbols


# -- the layers -------------------------------------------------------------------------------------------------------


def _integers(rng, shape, bits):
    return rng.integers(-(2**bits), 2**bits, shape).astype(np.float64)


def test_deconv_is_conv_transpose_exactly():
    """ConvTranspose2d(k5, s2, p2, output_padding 1) by its definition, on integers near the clip, any row blocks."""
    rng = np.random.default_rng(0)
    x = _integers(rng, (2, 3, 4, 5), layers.CLIP_BITS)
    w4 = _integers(rng, (5, 3, 5, 5), 12)  # (Cin, Cout, ky, kx)
    b = _integers(rng, (3,), 30)
    k, s, pad = layers.KERNEL, layers.STRIDE, layers.KERNEL // 2
    expected = np.zeros((2, 6, 8, 3))
    for i in range(3):
        for j in range(4):
            for ky in range(k):
                for kx in range(k):
                    y, xx = s * i + ky - pad, s * j + kx - pad
                    if 0 <= y < 6 and 0 <= xx < 8:
                        expected[:, y, xx] += x[:, i, j] @ w4[:, :, ky, kx]
    expected += b
    w = layers.deconv_matrix(w4)
    for rows, matmul in ((16, np.matmul), (1, np.matmul), (2, shuffled_matmul(0))):
        np.testing.assert_array_equal(layers.deconv(x, w, b, rows, matmul), expected)


def test_block_deconv_is_conv_transpose_exactly():
    rng = np.random.default_rng(1)
    x = _integers(rng, (2, 3, 2, 6), layers.CLIP_BITS)
    w4 = _integers(rng, (6, 4, 4, 4), 14)  # (M, C, block, block)
    expected = np.einsum("bijm,mcrs->birjsc", x, w4).reshape(2, 12, 8, 4)
    for matmul in (np.matmul, shuffled_matmul(1)):
        np.testing.assert_array_equal(layers.block_deconv(x, layers.linear_matrix(w4), 4, matmul), expected)


def test_activation_floors_clips_and_rectifies():
    acc = np.array([-7.0, -1.0, 0.0, 5.0, 2.0**40, -(2.0**40)])
    np.testing.assert_array_equal(layers.activation(acc, 2, False), [-2, -1, 0, 1, 2**22, -(2**22)])
    np.testing.assert_array_equal(layers.activation(acc, 2, True), [0, 0, 0, 1, 2**22, 0])


def test_blocked_patch_products_match_the_definition(monkeypatch):
    """3x3 and checkerboard sums built a few rows at a time equal the direct sums (memory stays bounded)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-1000, 1000, (2, 12, 8, 5)).astype(np.float64)
    w3 = rng.integers(-50, 50, (9, 5, 7)).astype(np.float64)
    w12 = rng.integers(-50, 50, (12, 5, 7)).astype(np.float64)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    direct3 = sum(padded[:, ky : ky + 12, kx : kx + 8] @ w3[3 * ky + kx] for ky in range(3) for kx in range(3))
    expected = []
    for r, q in context.HALVES[1]:
        for i in range(r, 12, 2):
            for j in range(q, 8, 2):
                taps = [(i + dy, j + dx, t) for t, (dy, dx) in enumerate(context.SPATIAL_TAPS)]
                expected.append(sum(x[:, a, b] @ w12[t] for a, b, t in taps if 0 <= a < 12 and 0 <= b < 8))
    for budget in (layers.PATCH_BYTES, 1):
        monkeypatch.setattr(layers, "PATCH_BYTES", budget)
        monkeypatch.setattr(context, "PATCH_BYTES", budget)
        np.testing.assert_array_equal(layers.conv3(x, w3, 0.0, np.matmul), direct3)
        np.testing.assert_array_equal(context._spatial(x, context.HALVES[1], w12, np.matmul), np.stack(expected, 1))


@pytest.mark.parametrize("shape", [(1, 8, 6), (2, 4, 10)])
def test_winograd_conv3_is_conv3_exactly(shape):
    """Winograd F(2x2, 3x3) with integer transforms gives the direct sums bit for bit, near its 2**52 bound too,
    with dead input channels dropped and with matmuls summing in other orders."""
    rng = np.random.default_rng(3)
    cin, cout = 40, 24
    w = rng.integers(-2**20, 2**20, (9, cin, cout)).astype(np.float64)
    b = rng.integers(-2**30, 2**30, cout).astype(np.float64)
    _, bound = layers._winograd_weights(w)
    top = float(2 ** np.floor(np.log2(layers.EXACT_LIMIT / bound)))  # the largest power of two that fits
    x = rng.integers(-top, top, shape + (cin,)).astype(np.float64)
    x[..., 3] = 0  # a dead channel
    assert layers._winograd_fits(x, w)
    expected = layers.direct_conv(x, w, b, np.matmul)
    np.testing.assert_array_equal(layers.conv3(x, w, b, np.matmul), expected)
    np.testing.assert_array_equal(layers.conv3(x, w, b, shuffled_matmul(4)), expected)
    x[0, 0, 0, 0] = 2 * top  # past the bound: the direct sums, still exact
    assert not layers._winograd_fits(x, w)
    np.testing.assert_array_equal(layers.conv3(x, w, b, np.matmul), layers.direct_conv(x, w, b, np.matmul))


def test_conv_matrix_orders_taps_as_conv3():
    rng = np.random.default_rng(2)
    w4 = rng.integers(-50, 50, (7, 5, 3, 3)).astype(np.float64)  # (Cout, Cin, ky, kx)
    m = layers.conv_matrix(w4)
    assert m.shape == (9, 5, 7)
    for ky in range(3):
        for kx in range(3):
            np.testing.assert_array_equal(m[3 * ky + kx], w4[:, :, ky, kx].T)


# -- the integer synthesis: close to the float network, and exact whatever the summation order ---------------------


@pytest.mark.parametrize("quality", [0, 4])
def test_integer_synthesis_close_to_onnx(image, quality):
    a = np.ascontiguousarray(image[:, :128, :128])
    enc, symbols = symbols_of(a, quality)
    base = np.clip(MODEL.int_synthesis(symbols, quality)[0], 0, 65535)
    onnx = pipeline.decode_chunk(enc)
    # Measured on the shipped model: identical PSNR to 0.001 dB, at most 1 DN apart.
    assert abs(metrics.psnr(a, base) - metrics.psnr(a, onnx)) < 0.02
    assert np.abs(base - onnx.astype(np.int64)).max() <= 2


def test_integer_synthesis_is_order_independent(cube):
    a = np.ascontiguousarray(cube[:2, :, :40, :72])
    _, symbols = symbols_of(a, 3)
    syn = MODEL.int_synthesis
    expected = syn(symbols, 3)
    np.testing.assert_array_equal(syn(symbols, 3, rows_per_block=3), expected)
    np.testing.assert_array_equal(syn(symbols, 3, matmul=shuffled_matmul(0)), expected)
    np.testing.assert_array_equal(np.concatenate([syn(symbols[1:], 3), syn(symbols[:1], 3)])[[1, 0]], expected)


def test_integer_synthesis_bounds_hold_for_any_symbols():
    syn = MODEL.int_synthesis
    huge = np.full((1, MODEL.latent_channels, 2, 3), np.iinfo(np.int32).max, np.int32)
    huge[:, ::2] = np.iinfo(np.int32).min
    np.testing.assert_array_equal(syn(huge, 4), syn(huge, 4, matmul=shuffled_matmul(1)))


def test_integer_synthesis_is_parsed_once_and_serializes():
    from tec_zarr.integer.synthesis import IntSynthesis

    syn = MODEL.int_synthesis
    assert MODEL.int_synthesis is syn and syn.qualities == MODEL.qualities
    again = IntSynthesis.from_npz(syn.to_npz())
    symbols = np.random.default_rng(3).integers(-30, 30, (1, MODEL.latent_channels, 3, 2)).astype(np.int32)
    np.testing.assert_array_equal(again(symbols, 2), syn(symbols, 2))
