"""Shared checkers, after numcodecs' tests/common.py: every codec test goes through these."""

from __future__ import annotations

import array
import json
import os
from pathlib import Path

import numcodecs
import numpy as np

from tec_zarr import metrics

FIXTURES = Path(__file__).resolve().parent / "fixture"
REGENERATE = os.environ.get("TEC_ZARR_REGENERATE_GOLDEN") == "1"


def check_encode_decode(codec, arr: np.ndarray, min_psnr: float) -> np.ndarray:
    """Encode once; decode from bytes, bytearray, array.array, numpy and into out=; all equal and good enough."""
    enc = codec.encode(arr)
    dec = codec.decode(enc)
    assert dec.dtype == arr.dtype and dec.shape == arr.shape
    for buf in (bytes(enc), bytearray(enc), array.array("b", bytes(enc)), np.frombuffer(enc, np.uint8)):
        np.testing.assert_array_equal(codec.decode(buf), dec)
    out = np.empty_like(arr)
    assert codec.decode(enc, out=out) is out
    np.testing.assert_array_equal(out, dec)
    scale = 1e4 if arr.dtype.kind == "f" else 1.0
    assert metrics.mean_psnr(arr, dec, scale=scale) >= min_psnr
    return dec


def check_config(codec) -> None:
    config = codec.get_config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = numcodecs.get_codec(json.loads(json.dumps(config)))
    assert rebuilt == codec and type(rebuilt) is type(codec)


def check_repr(codec, expected: str) -> None:
    assert repr(codec) == expected
    from tec_zarr import TEC  # noqa: F401  (the name eval needs)

    assert eval(expected) == codec


def check_golden(codec, arrays: list[np.ndarray], name: str, max_abs_error: float = 1.0) -> None:
    """Decode stored bitstreams in every run; regenerate only with TEC_ZARR_REGENERATE_GOLDEN=1.

    Symbols are exact by construction; the pixels may differ by float rounding of the decoder network between
    machines, hence a tolerance of one data unit.
    """
    d = FIXTURES / codec.codec_id / name
    if REGENERATE:
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(codec.get_config(), indent=1, sort_keys=True) + "\n")
        for i, a in enumerate(arrays):
            enc = codec.encode(a)
            (d / f"encoded.{i:02d}.dat").write_bytes(enc)
            np.save(d / f"decoded.{i:02d}.npy", codec.decode(enc))
    if not (d / "config.json").exists():
        raise AssertionError(f"missing golden fixture {d}: run with TEC_ZARR_REGENERATE_GOLDEN=1 once, and commit it")
    stored = numcodecs.get_codec(json.loads((d / "config.json").read_text()))
    assert stored == codec
    files = sorted(d.glob("encoded.*.dat"))
    assert len(files) == len(arrays)
    for i, f in enumerate(files):
        expected = np.load(d / f"decoded.{i:02d}.npy")
        got = stored.decode(f.read_bytes())
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert metrics.max_error(got, expected) <= max_abs_error
