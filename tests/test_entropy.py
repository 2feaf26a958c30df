"""Integer-table entropy coding: exact round trips, escapes included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tec_zarr import entropy
from tec_zarr.errors import CorruptChunkError
from tec_zarr.models import load_model

TABLES = load_model("tec-fp").tables


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    quality=st.integers(0, TABLES.qualities - 1),
    spread=st.sampled_from([0.5, 3, 40, 5000, 2**30]),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
)
def test_round_trip_including_escapes(seed, quality, spread, h, w):
    rng = np.random.default_rng(seed)
    symbols = np.clip(rng.normal(0, spread, (2, TABLES.channels, h, w)), -(2**31) + 1, 2**31 - 1).astype(np.int32)
    data = entropy.encode(symbols, quality, TABLES)
    np.testing.assert_array_equal(entropy.decode(data, quality, symbols.shape, TABLES), symbols)


def test_extreme_values():
    symbols = np.zeros((1, TABLES.channels, 1, 2), np.int32)
    symbols[0, :, 0, 0] = np.iinfo(np.int32).max
    symbols[0, :, 0, 1] = np.iinfo(np.int32).min
    data = entropy.encode(symbols, 0, TABLES)
    np.testing.assert_array_equal(entropy.decode(data, 0, symbols.shape, TABLES), symbols)


def test_quantized_tables_are_exact_and_positive():
    for q in range(TABLES.qualities):
        for c in range(TABLES.channels):
            n = TABLES.lengths[q, c]
            row = TABLES.pmf[q, c]
            assert row[:n].sum() == 1 << entropy.TABLE_PRECISION_BITS
            assert (row[:n] > 0).all() and (row[n:] == 0).all()


def test_quantize_pmf_properties():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 500):
        counts = entropy.quantize_pmf(rng.random(n) ** 8, 1e-9)
        assert counts.sum() == 1 << 16 and (counts >= 1).all() and len(counts) == n + 1


def test_bad_payload_length_and_quality():
    with pytest.raises(CorruptChunkError):
        entropy.decode(b"\x00" * 7, 0, (1, TABLES.channels, 1, 1), TABLES)
    with pytest.raises(CorruptChunkError):
        entropy.decode(b"\x00" * 8, TABLES.qualities, (1, TABLES.channels, 1, 1), TABLES)
