"""Hostile inputs: chunks and ``.tec`` files written by an attacker or damaged on disk.

Every decode of a hostile input must end in a :class:`~tec_zarr.errors.TecZarrError` or in an array whose values are
finite, quickly, in bounded memory. Three parts:

* fuzzing: real chunks of every model and mode, and a small ``.tec`` file, mutated by a seeded generator (bit flips,
  overwrites, truncations, extensions, splices, header fields edited with the CRC32 recomputed so the edit reaches
  the decoder); a short run in the default suite, thousands of mutations under ``-m slow``. A failure names the
  case, the seed and the mutation's number: ``mutate_chunk(np.random.default_rng([seed, i]), ...)`` replays it;
* regressions: the attacks found earlier (decompression bombs, a zlib bomb in the mask, CRC-valid absurd header
  values, hostile ``.tec`` metadata, broken model manifests, descriptor exhaustion); the ones that could allocate
  run in a subprocess that reports its peak RSS and time (:func:`run_isolated`);
* this file's own layout readers follow ``tec_zarr/bitstream/FORMAT.md``, not the package's parser, so a parser
  bug cannot hide itself.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import time
import uuid as uuidlib
import warnings
import zlib
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest

import tec_zarr
from tec_zarr import errors, pipeline, sample, tecfile
from tec_zarr.bitstream import chunk as chunkfmt
from tec_zarr.errors import CorruptChunkError, InvalidInputError, TecFileError, TecZarrError

# A chunk declaring a size its caller did not ask for (the class was renamed while this file was written).
ChunkTooLargeError = getattr(errors, "ChunkTooLargeError", None) or getattr(errors, "ChunkShapeError")

# A decode of anything hostile must end within this (wall clock, these slow CI cores included).
CASE_SECONDS = 5.0
# The regression attacks, each in its own process: refused within this, in at most this much memory (the process
# with all three models loaded and a chunk decoded peaks near 150 MiB).
ATTACK_SECONDS = 2.0
ATTACK_MAX_RSS_MIB = 400

# Default suite: mutations per chunk case (15 cases) and per .tec group (4 groups); -m slow runs SLOW_* of each (a
# quarter of SLOW_TEC_MUTATIONS on the error-bounded tec-hp file, whose reads decode residual tiles).
CHUNK_MUTATIONS = 120
TEC_MUTATIONS = 80
SLOW_CHUNK_MUTATIONS = 1000
SLOW_TEC_MUTATIONS = 500

MODELS = ("tec-fp", "tec-hp", "tec-ctx", "tec-tt")
REPO = Path(__file__).resolve().parent.parent


# -- the chunk layout, read from FORMAT.md section 2 (independently of tec_zarr.bitstream.chunk) ------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each field and section of a valid chunk lies: fields by name -> (offset, struct code)."""

    fields: dict[str, tuple[int, str]]
    sections: dict[str, tuple[int, int]]  # name -> (start, end) of a variable-length body
    name_len_at: int
    ndim_at: int
    shape_end: int


def chunk_layout(buf: bytes) -> Layout:
    fields: dict[str, tuple[int, str]] = {}
    sections: dict[str, tuple[int, int]] = {}
    pos = 4

    def field(name, code):
        nonlocal pos
        fields[name] = (pos, code)
        (value,) = struct.unpack_from("<" + code, buf, pos)
        pos += struct.calcsize(code)
        return value

    def section(name, length):
        nonlocal pos
        sections[name] = (pos, pos + length)
        pos += length

    assert buf[:4] == b"TECZ"
    version = field("version", "B")
    flags = field("flags", "B")
    field("quality", "B")
    field("dtype", "B")
    name_len_at = pos
    name_len = field("name_len", "B")
    section("name", name_len)
    section("model_hash", 8)
    ndim_at = pos
    ndim = field("ndim", "B")
    shape = [field(f"shape[{i}]", "I") for i in range(ndim)]
    shape_end = pos
    values = {name: field(name, code) for name, code in (
        ("pad_h", "H"), ("pad_w", "H"), ("latent_m", "H"), ("latent_h", "I"), ("latent_w", "I"), ("nodata", "d"),
        ("float_scale", "d"))}
    if flags & 2:
        section("mask", field("mask_len", "I"))
    if flags & 8:  # added after FORMAT.md was written (chunk.py): a NaN mask section, float32 chunks with NaN
        section("nan_mask", field("nan_len", "I"))
    if flags & 16:  # FORMAT.md: bands x 3 bytes
        section("blocks", 3 * shape[-3])
    if flags & 32:  # FORMAT.md: a count, then that many qualities
        section("thinned", field("thinned_n", "B"))
    if flags & 64:  # FORMAT.md: the coded channels, one bit each
        section("channels", -(-values["latent_m"] // 8))
    if flags & 128:  # FORMAT.md: a count, then (tag, length, value) each
        for i in range(field("extensions_n", "B")):
            field(f"extension[{i}].tag", "B")
            section(f"extension[{i}]", field(f"extension[{i}].len", "I"))
    payload_len = field("payload_len", "I")
    if payload_len >= 4:
        fields["payload.z_len"] = (pos, "I")  # hyperprior / context framing (section 3); words for factorized
    section("payload", payload_len)
    if flags & 4:
        field("max_error", "d")
        field("mode", "B")
        if version in (3, 4):  # 4: latents under missing blocks not coded (chunk.py), coder byte as in 3
            field("coder", "B")
        field("tile", "H")
        section("params", field("params_len", "I"))
        residual_len = field("residual_len", "I")
        if residual_len >= 4:
            fields["residual.crc"] = (pos, "I")
        section("residual", residual_len)
    assert pos == len(buf) - 4, "not a chunk this layout reader knows"
    return Layout(fields, sections, name_len_at, ndim_at, shape_end)


def with_crc(body: bytes) -> bytes:
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def fix_crc(buf: bytes) -> bytes:
    """The chunk with its last 4 bytes replaced by the CRC32 of the rest: an edit that reaches the decoder."""
    return with_crc(bytes(buf[:-4]))


_U = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF}
_F32_MAX = float(np.finfo(np.float32).max)


def interesting(rng: np.random.Generator, code: str, old):
    """A value for a field: a boundary, a neighbour of the old value, or random."""
    if code == "d":
        choices = [0.0, -0.0, 1.0, -1.0, math.nan, -math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 1e-300,
                   _F32_MAX, _F32_MAX / 4, -_F32_MAX, 2.0**53, 65535.0, 65536.0, -32769.0, 2.0**17, 2.0**17 + 1,
                   0.5, 1e-3, old * 2, old / 2, -old, old + 1, float(np.float32(1e-45)),
                   float(rng.normal() * 10.0 ** rng.integers(-40, 40))]
        return choices[rng.integers(len(choices))]
    top = _U[code]
    choices = [0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 17, old - 1, old + 1, old * 2, old // 2, old * 4, top, top - 1,
               top // 2, top // 2 + 1, 0x7F, 0x80, 0x7FFF, 0x8000, 2**16, 2**24, 2**31, int(rng.integers(top + 1))]
    return int(choices[rng.integers(len(choices))]) & top


def edit_field(rng, buf: bytes, layout: Layout) -> tuple[str, bytes]:
    names = sorted(layout.fields)
    name = names[rng.integers(len(names))]
    offset, code = layout.fields[name]
    (old,) = struct.unpack_from("<" + code, buf, offset)
    new = interesting(rng, code, old)
    out = bytearray(buf)
    struct.pack_into("<" + code, out, offset, new)
    return f"field {name}={new!r}", fix_crc(out)


def edit_shape(rng, buf: bytes, layout: Layout) -> tuple[str, bytes]:
    """Another ndim and shape (the rest of the header unchanged)."""
    ndim = buf[layout.ndim_at]
    shape = list(struct.unpack_from(f"<{ndim}I", buf, layout.ndim_at + 1))
    recipes = {
        "batch": lambda s: [1, *s], "batch2": lambda s: [2, *s], "batch0": lambda s: [0, *s],
        "drop": lambda s: s[1:], "swap": lambda s: [*s[:-2], s[-1], s[-2]], "none": lambda s: [],
        "wrap": lambda s: [2**16] * 4 + s[-3:], "huge": lambda s: [2**32 - 1, *s],
        "big": lambda s: [*s[:-2], s[-2] * 64, s[-1] * 64], "zero": lambda s: [*s[:-1], 0],
        "bands": lambda s: [*s[:-3], s[-3] + 1, *s[-2:]], "flat": lambda s: [math.prod(s)],
    }
    name = sorted(recipes)[rng.integers(len(recipes))]
    new = recipes[name](shape)
    body = buf[: layout.ndim_at] + struct.pack(f"<B{len(new)}I", len(new), *new) + buf[layout.shape_end : -4]
    return f"shape {name} {new}", with_crc(body)


def edit_name(rng, buf: bytes, layout: Layout) -> tuple[str, bytes]:
    names = [b"", b"tec-fp", b"tec-hp", b"tec-ctx", b"tec-xx", b"\xff\xfe", b"../../../etc/passwd", b"tec-fp\x00",
             b"TEC-FP", b"x" * 255]
    new = names[rng.integers(len(names))]
    start, end = layout.sections["name"]
    body = buf[: layout.name_len_at] + bytes([len(new)]) + new + buf[end:-4]
    return f"name {new!r}", with_crc(body)


def flip_section(rng, buf: bytes, layout: Layout) -> tuple[str, bytes]:
    """Bits flipped inside a body (payload, mask, residual parameters or words), the CRC recomputed."""
    names = [n for n, (a, b) in sorted(layout.sections.items()) if b > a]
    name = names[rng.integers(len(names))]
    start, end = layout.sections[name]
    out = bytearray(buf)
    n = int(rng.integers(1, 4))
    for _ in range(n):
        bit = int(rng.integers((end - start) * 8))
        out[start + bit // 8] ^= 1 << (bit % 8)
    return f"section {name} {n} bits", fix_crc(out)


def transplant(rng, buf: bytes, other: bytes) -> tuple[str, bytes]:
    """A valid chunk's header with another valid chunk's payload, mask or residual section (lengths and CRC fixed)."""
    h1, m1, p1 = chunkfmt.unpack(buf)
    h2, m2, p2 = chunkfmt.unpack(other)
    recipes = {
        "payload": lambda: chunkfmt.pack(h1, m1, p2),
        "mask": lambda: chunkfmt.pack(dataclasses.replace(h1, nodata=h1.nodata if h1.nodata is not None else 0.0),
                                      m2 if m2 is not None else chunkfmt.pack_mask(np.ones(8, bool)), p1),
        "residual": lambda: chunkfmt.pack(dataclasses.replace(h1, residual=h2.residual), m1, p1),
        "no-residual": lambda: chunkfmt.pack(dataclasses.replace(h1, residual=None), m1, p1),
        "header": lambda: chunkfmt.pack(h2, m1, p1),
        "empty-payload": lambda: chunkfmt.pack(h1, m1, b""),
        "short-payload": lambda: chunkfmt.pack(h1, m1, p1[: len(p1) // 2 // 4 * 4]),
        "zero-payload": lambda: chunkfmt.pack(h1, m1, bytes(len(p1))),
        "ones-payload": lambda: chunkfmt.pack(h1, m1, b"\xff" * len(p1)),
        "random-payload": lambda: chunkfmt.pack(h1, m1, rng.bytes(len(p1))),
    }
    name = sorted(recipes)[rng.integers(len(recipes))]
    return f"transplant {name}", recipes[name]()


def mutate_chunk(rng: np.random.Generator, buf: bytes, other: bytes) -> tuple[str, bytes]:
    """One hostile variant of the valid chunk ``buf`` (``other``: another valid chunk, for splices); its recipe."""
    layout = chunk_layout(buf)
    kind = rng.choice(["flip", "overwrite", "truncate", "extend", "splice", "field", "field", "field", "shape",
                       "name", "section", "section", "transplant"])
    fix = bool(rng.integers(2))  # for raw edits: recompute the CRC half of the time
    out = bytearray(buf)
    if kind == "flip":
        n = int(rng.integers(1, 9))
        for bit in rng.integers(len(buf) * 8, size=n):
            out[bit // 8] ^= 1 << (bit % 8)
        recipe = f"flip {n} bits"
    elif kind == "overwrite":
        n = int(rng.integers(1, 17))
        at = int(rng.integers(len(buf)))
        fill = rng.choice(["random", "zero", "ff"])
        data = {"random": rng.bytes(n), "zero": bytes(n), "ff": b"\xff" * n}[str(fill)]
        out[at : at + n] = data[: len(out) - at]
        recipe = f"overwrite {n} {fill} bytes at {at}"
    elif kind == "truncate":
        n = int(rng.integers(len(buf)))
        return (f"truncate to {n}" + (" crc" if fix and n > 4 else ""),
                fix_crc(buf[:n]) if fix and n > 4 else bytes(buf[:n]))
    elif kind == "extend":
        extra = rng.bytes(int(rng.integers(1, 65)))
        return (f"extend by {len(extra)}" + (" crc" if fix else ""),
                with_crc(buf[:-4] + extra) if fix else bytes(buf) + extra)
    elif kind == "splice":
        i, j = int(rng.integers(len(buf))), int(rng.integers(len(other)))
        out = bytearray(buf[:i] + other[j:])
        recipe = f"splice {i} + other[{j}:]"
    elif kind == "field":
        return edit_field(rng, buf, layout)
    elif kind == "shape":
        return edit_shape(rng, buf, layout)
    elif kind == "name":
        return edit_name(rng, buf, layout)
    elif kind == "section":
        return flip_section(rng, buf, layout)
    else:
        return transplant(rng, buf, other)
    if fix and len(out) > 4:
        return recipe + " crc", fix_crc(out)
    return recipe, bytes(out)


# -- the chunks under attack -----------------------------------------------------------------------------------------

# (model, mode): (dtype, codec parameters); float32 and nodata cases cover every residual mode and int16.
MODES = {
    "lossy": ("uint16", {}),
    "max_error=5": ("uint16", {"max_error": 5}),
    "lossless": ("uint16", {"max_error": 0}),
}
FLOAT32 = {"tec-fp": {"max_error": 1e-3}, "tec-hp": {"max_error": 0}, "tec-ctx": {}, "tec-tt": {"max_error": 1e-3}}
NODATA = {"tec-fp": ("uint16", {"max_error": 5, "nodata": 0}), "tec-hp": ("uint16", {"nodata": 0}),
          "tec-ctx": ("int16", {"max_error": 0, "nodata": -1}), "tec-tt": ("uint16", {"nodata": 0})}
# The temporal model's chunks hold dates: three of the same crop, later dates coded against earlier ones.
TEMPORAL = ("tec-tt",)
# tec-fp-lite shares every file of tec-fp but its decoder graph: its lossy chunks are the ones reaching that graph.
LIGHT = "tec-fp-lite"
CHUNK_MODELS = (*MODELS, LIGHT)
# Thinned chunks of the hyperprior models whose payload codes runs summed (extension tag 3): quality 4 cut to 1.
THINNED = ("tec-hp", "tec-ctx")
CHUNK_CASES = ([(m, mode) for m in MODELS for mode in (*MODES, "float32", "nodata")] + [(LIGHT, "lossy")]
               + [(m, "thinned") for m in THINNED])


@functools.lru_cache(maxsize=None)
def crop() -> np.ndarray:
    """12 x 29 x 45 of the real sample: odd sizes, padded to the models' multiples."""
    return np.ascontiguousarray(sample.load_array()[1, :, 101:130, 37:82])


@functools.lru_cache(maxsize=None)
def dates_crop() -> np.ndarray:
    """3 x 12 x 29 x 45: the crop on three dates of the sample."""
    return np.ascontiguousarray(sample.load_array()[1:, :, 101:130, 37:82])


def case_input(model: str, mode: str) -> tuple[np.ndarray, dict]:
    a = dates_crop() if model in TEMPORAL else crop()
    if mode == "thinned":
        return a, {"quality": 4}
    if mode in MODES:
        dtype, params = MODES[mode]
        return a.astype(dtype), params
    if mode == "float32":
        return (a.astype(np.float32) / np.float32(1e4)), FLOAT32[model]
    dtype, params = NODATA[model]
    a = a.astype(dtype)  # the sample's DN are below 2**15
    a[..., 3:9, 5:17] = params["nodata"]  # a nodata block in every band, and a few lone pixels
    a[..., 2, 20, 30] = a[..., 7, 0, 44] = params["nodata"]
    return a, params


@functools.lru_cache(maxsize=None)
def encoded(model: str, mode: str) -> bytes:
    a, params = case_input(model, mode)
    buf = tec_zarr.TEC(model=model, **params).encode(a)
    if mode == "thinned":
        buf = tec_zarr.thin(buf, 1)
        assert chunkfmt.unpack_sections(buf).header.runs_summed
    flags = buf[5]
    assert (flags & 4) == (4 if "max_error" in params else 0) and (mode != "nodata" or flags & 2)
    return bytes(buf)


# -- decoding, and judging the outcome -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _v2():
    return tec_zarr.TEC()


@functools.lru_cache(maxsize=None)
def _v3():
    from tec_zarr.codec.zarr3 import TEC

    return TEC()


def array_spec(shape, dtype):
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.dtype import get_data_type_from_native_dtype

    return ArraySpec(tuple(shape), get_data_type_from_native_dtype(np.dtype(dtype)), 0, ArrayConfig.from_dict({}),
                     default_buffer_prototype())


def decode_zarr3(buf: bytes, shape, dtype, good=None) -> np.ndarray:
    from zarr.core.buffer import default_buffer_prototype

    data = default_buffer_prototype().buffer.from_bytes(buf)
    (out,) = _v3()._decode_batch_sync([(data, array_spec(shape, dtype))])
    return out.as_numpy_array()


# Each decoder: (hostile bytes, the shape and dtype the caller expects, a good chunk) -> array.
DECODERS = {
    "decode_chunk": lambda buf, shape, dtype, good: pipeline.decode_chunk(buf),
    "decode_chunk(expected_shape)": lambda buf, shape, dtype, good: pipeline.decode_chunk(buf, expected_shape=shape),
    "decode_chunks([good, bad])": lambda buf, shape, dtype, good: pipeline.decode_chunks([good, buf])[1],
    "TEC().decode": lambda buf, shape, dtype, good: _v2().decode(buf),
    "TEC().decode(out=)": lambda buf, shape, dtype, good: _v2().decode(buf, out=np.empty(shape, dtype)),
    "zarr3": decode_zarr3,
}


# The decoders told the chunk's shape: what they return must have it.
EXPECTING = ("decode_chunk(expected_shape)", "TEC().decode(out=)", "zarr3")


def judge(func, *args, expect_shape=None, allow_nan=False) -> tuple[str, float, str | None]:
    """(outcome, seconds, problem): outcome "ok" or the TecZarrError's class; problem None when acceptable.
    ``allow_nan``: the chunk declares a NaN mask (flag bit 3), so NaN (never inf) may be decoded."""
    t0 = time.perf_counter()
    problem = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # judged by the values below, not by numpy's warnings
            out = func(*args)
    except TecZarrError as e:
        outcome = type(e).__name__
    except Exception as e:  # noqa: BLE001  (what must never escape)
        outcome = type(e).__name__
        problem = f"escaped {type(e).__name__}: {str(e)[:300]}"
    else:
        outcome = "ok"
        if not isinstance(out, np.ndarray):
            problem = f"returned {type(out).__name__}, not an array"
        elif out.dtype.kind == "f" and not (np.isfinite(out) | (allow_nan & np.isnan(out))).all():
            problem = f"decoded {int((~np.isfinite(out)).sum())} non-finite values of {out.size} {out.dtype}"
        elif expect_shape is not None and out.shape != tuple(expect_shape):
            problem = f"returned shape {out.shape} where {tuple(expect_shape)} was expected"
    seconds = time.perf_counter() - t0
    if problem is None and seconds > CASE_SECONDS:
        problem = f"took {seconds:.2f} s ({outcome})"
    return outcome, seconds, problem


def fuzz_chunk(model: str, mode: str, count: int, seed: int) -> tuple[list[str], Counter, float]:
    buf = encoded(model, mode)
    a, _ = case_input(model, mode)
    pool = [encoded(m, md) for m, md in CHUNK_CASES if (m, md) != (model, mode)]
    names = sorted(DECODERS)
    problems: list[str] = []
    outcomes: Counter = Counter()
    slowest = 0.0
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        other = pool[rng.integers(len(pool))]
        recipe, bad = mutate_chunk(rng, buf, other)
        decoder = names[i % len(names)]
        outcome, seconds, problem = judge(DECODERS[decoder], bad, a.shape, a.dtype, buf,
                                          expect_shape=a.shape if decoder in EXPECTING else None,
                                          allow_nan=bad[:4] == b"TECZ" and len(bad) > 5 and bool(bad[5] & 8))
        outcomes[outcome] += 1
        slowest = max(slowest, seconds)
        if problem:
            problems.append(f"{model} {mode} seed {seed} #{i} [{recipe}] via {decoder}: {problem}")
    return problems, outcomes, slowest


def check_fuzz(problems: list[str], outcomes: Counter, count: int) -> None:
    assert not problems, f"{len(problems)} of {count} hostile inputs misbehaved:\n" + "\n".join(problems[:25])
    # The fuzzer itself: past the CRC into the decoders, both to refusals and to decoded arrays.
    assert outcomes["ok"] > 0 and sum(outcomes.values()) - outcomes["ok"] > 0, outcomes


@pytest.mark.parametrize(("model", "mode"), CHUNK_CASES)
def test_fuzz_chunk(model, mode):
    problems, outcomes, _ = fuzz_chunk(model, mode, CHUNK_MUTATIONS, seed=CHUNK_MODELS.index(model) * 100 + len(mode))
    check_fuzz(problems, outcomes, CHUNK_MUTATIONS)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "mode"), CHUNK_CASES)
def test_fuzz_chunk_long(model, mode):
    problems, outcomes, _ = fuzz_chunk(model, mode, SLOW_CHUNK_MUTATIONS, seed=10_000 + CHUNK_MODELS.index(model) * 100 + len(mode))
    check_fuzz(problems, outcomes, SLOW_CHUNK_MUTATIONS)


def test_the_layout_reader_matches_the_package():
    """This file's layout reader agrees with the package on every case (so its field edits hit the fields)."""
    for model, mode in CHUNK_CASES:
        buf = encoded(model, mode)
        layout = chunk_layout(buf)
        header, mask, payload = chunkfmt.unpack(buf)
        shape = [struct.unpack_from("<I", buf, layout.fields[f"shape[{i}]"][0])[0] for i in range(len(header.shape))]
        assert tuple(shape) == header.shape
        start, end = layout.sections["payload"]
        assert buf[start:end] == payload
        assert ("mask" in layout.sections) == (mask is not None)
        if header.channels is not None:
            start, end = layout.sections["channels"]
            assert buf[start:end] == header.channels


# -- .tec files: layout (FORMAT.md section 5) and mutations ------------------------------------------------------------

TEC_SHAPE = (12, 40, 50)  # tile 32: 2 x 2 tiles at level 0 (partial edge tiles), 1 at level 1
_PRE = struct.Struct("<4sHHI")
_ENTRY = struct.Struct("<QII")


@dataclasses.dataclass
class TecParts:
    version: int
    reserved: int
    meta: bytes
    entries: list[list[int]]  # [offset from the start of the tiles region (or absolute when absent), length, crc]
    tiles: bytes  # everything after the header

    @classmethod
    def parse(cls, data: bytes) -> TecParts:
        magic, version, reserved, meta_len = _PRE.unpack_from(data)
        assert magic == b"TECF"
        meta = data[_PRE.size : _PRE.size + meta_len]
        count = tecfile.TecMetadata.from_json(meta).tile_count
        at = _PRE.size + meta_len
        header_len = at + count * _ENTRY.size + 4
        assert struct.unpack_from("<I", data, header_len - 4)[0] == zlib.crc32(data[: header_len - 4])
        entries = [list(_ENTRY.unpack_from(data, at + k * _ENTRY.size)) for k in range(count)]
        for e in entries:
            if e[1]:
                e[0] -= header_len
        return cls(version, reserved, meta, entries, data[header_len:])

    def build(self, *, crc: bool = True, meta_len: int | None = None) -> bytes:
        """The file; present tiles' offsets follow the header, whatever its new size."""
        header_len = _PRE.size + len(self.meta) + len(self.entries) * _ENTRY.size + 4
        index = b"".join(_ENTRY.pack((off + header_len) % 2**64 if length else off, length, c)
                         for off, length, c in self.entries)
        head = _PRE.pack(b"TECF", self.version, self.reserved, len(self.meta) if meta_len is None else meta_len)
        head += self.meta + index
        stored = zlib.crc32(head) if crc else zlib.crc32(head) ^ 1
        return head + struct.pack("<I", stored) + self.tiles

    def index_at(self) -> int:
        return _PRE.size + len(self.meta)

    def tile(self, k: int) -> bytes:
        off, length, _ = self.entries[k]
        return self.tiles[off : off + length]

    def replace_tile(self, k: int, data: bytes) -> None:
        """The tile's bytes appended to the tiles region, its entry pointing there with a matching CRC."""
        self.entries[k] = [len(self.tiles), len(data), zlib.crc32(data)]
        self.tiles += data

    def with_meta(self, meta: dict | bytes) -> TecParts:
        """Other metadata, the index resized to its tile count (absent tiles added, extra entries dropped)."""
        data = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        try:
            count = tecfile.TecMetadata.from_json(data).tile_count
        except Exception:  # noqa: BLE001  (refused, or escaping: the test that reads it says which)
            count = len(self.entries)
        count = min(count, 1 << 16)
        entries = [list(e) for e in self.entries[:count]] + [[0, 0, 0]] * max(0, count - len(self.entries))
        return dataclasses.replace(self, meta=data, entries=entries)


@functools.lru_cache(maxsize=None)
def tec_bytes(model: str = "tec-fp", max_error=None) -> bytes:
    import tempfile

    a = np.ascontiguousarray(sample.load_array()[2, :, 60 : 60 + TEC_SHAPE[1], 90 : 90 + TEC_SHAPE[2]])
    a[:, :6, :9] = 0  # some nodata
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "small.tec"
        tecfile.write(path, a, crs_wkt=None, geotransform=None, tile=32, overviews=(1,), model=model,
                      max_error=max_error)
        return path.read_bytes()


def hostile_values(rng, key: str, value):
    """Replacement values for a metadata key."""
    common = [None, True, -1, 0, 1.5, "x", [], {}, 10**400, math.nan, math.inf, [[[[]]]]]
    specific = {
        "shape": [[12, 40], [12, 40, 50, 1], [12, 0, 50], [12, -40, 50], [12, 40.0, 50], [12, True, 50],
                  [13, 40, 50], [11, 40, 50], [12, 80, 50], [12, 40, 49], [12, 2**31, 50], [12, 2**20, 2**20],
                  [12, 2**64, 50], [10**400, 40, 50]],
        "dtype": ["float32", "int16", "uint8", "<u2", ">u2", "float64", "bool", "object", "U8", "S4", 2],
        "tile": [0, 4, 16, 33, 64, 4096, 8192, -32, 32.0, "32", 2**64],
        "nodata": [1, 65535, 65536, -1, 0.5, -0.0, 1e308, 10**400, "0"],
        "band_names": [["B"] * 11, ["B"] * 13, [1] * 12, "B01", ["x" * 100000] * 12],
        "overviews": [[1, 2], [2], [0], [31], [30], [1, 1], [2, 1], [-1], [True]],
        "geotransform": [[1] * 5, [1] * 7, [math.nan] * 6, ["a"] * 6, [10**400] * 6],
        "crs_wkt": [5, "", "x" * 100000],
        "uuid": ["x", 5, "00000000-0000-0000-0000-000000000000"],
    }
    choices = common + specific.get(key, [])
    return choices[rng.integers(len(choices))]


def codec_edit(rng, codec: dict) -> tuple[str, dict]:
    codec = dict(codec)
    edits = {
        "model": ["tec-hp", "tec-ctx", "tec-xx", 5, None, "../x"],
        "model_sha256": ["0" * 64, "A" * 64, "x", None, 5],
        "quality": [-1, 0, 1, 2, 5, 99, 1.5, True, None, "1", 10**400],
        "nodata": [1, None, -1, 0.5, math.nan, 10**400],
        "float_scale": [0, -1, 1e-320, 1e308, math.inf, math.nan, 10**400, None, "1"],
        "max_error": [0, 5, -1, 0.5, 1e308, 10**400, math.nan, "5", True],
        "psnr": [40, 0, -1, 1e308, 10**400, math.nan],
        "id": ["numcodecs.zlib", None, 5],
    }
    options = [*sorted(edits), "<unknown>", "<missing>"]
    key = options[rng.integers(len(options))]
    if key == "<unknown>":
        codec["unknown"] = 1
        return "codec unknown key", codec
    if key == "<missing>":
        gone = sorted(codec)[rng.integers(len(codec))]
        del codec[gone]
        return f"codec without {gone}", codec
    values = edits[key]
    codec[key] = values[rng.integers(len(values))]
    return f"codec {key}={codec[key]!r}", codec


def mutate_tec(rng: np.random.Generator, data: bytes, group: str) -> tuple[str, bytes]:
    """A hostile variant of a valid .tec file. Groups: raw bytes, metadata, index, tiles."""
    parts = TecParts.parse(data)
    if group == "raw":
        out = bytearray(data)
        kind = rng.choice(["flip", "overwrite", "truncate", "extend", "header"])
        if kind == "flip":
            n = int(rng.integers(1, 9))
            for bit in rng.integers(len(data) * 8, size=n):
                out[bit // 8] ^= 1 << (bit % 8)
            return f"flip {n} bits", bytes(out)
        if kind == "overwrite":
            at, n = int(rng.integers(len(data))), int(rng.integers(1, 17))
            out[at : at + n] = rng.bytes(n)[: len(out) - at]
            return f"overwrite {n} at {at}", bytes(out)
        if kind == "truncate":
            n = int(rng.integers(len(data)))
            return f"truncate to {n}", bytes(data[:n])
        if kind == "extend":
            return "extend", bytes(data) + rng.bytes(int(rng.integers(1, 4096)))
        # preamble fields, header CRC recomputed
        field = rng.choice(["version", "reserved", "meta_len"])
        if field == "meta_len":
            value = int(rng.choice([0, 1, len(parts.meta) - 1, len(parts.meta) + 1, 2**24, 2**24 + 1, 2**32 - 1]))
            return f"meta_len={value}", parts.build(meta_len=value)
        value = int(rng.choice([0, 2, 0xFFFF]))
        return f"{field}={value}", dataclasses.replace(parts, **{str(field): value}).build()
    if group == "meta":
        meta = json.loads(parts.meta)
        crc = bool(rng.integers(4))  # a quarter without the recomputed header CRC
        kind = rng.choice(["key", "key", "codec", "codec", "drop", "add", "text"])
        if kind == "key":
            key = sorted(meta)[rng.integers(len(meta))]
            meta[key] = hostile_values(rng, key, meta[key])
            recipe, new = f"{key}={meta[key]!r}"[:120], meta
        elif kind == "codec":
            recipe, meta["codec"] = codec_edit(rng, meta["codec"])
            new = meta
        elif kind == "drop":
            key = sorted(meta)[rng.integers(len(meta))]
            del meta[key]
            recipe, new = f"without {key}", meta
        elif kind == "add":
            meta["unknown"] = [1]
            recipe, new = "unknown key", meta
        else:
            texts = [b"", b"null", b"[]", b"5", b'"x"', b"\xff\xfe{}", b"{" * 100_000, b"[" * 100_000 + b"]" * 100_000,
                     parts.meta[: len(parts.meta) // 2], parts.meta + b" ", parts.meta.replace(b"[12,", b"[1e400,"),
                     parts.meta.replace(b'"nodata": 0', b'"nodata": NaN'), parts.meta.replace(b'"nodata": 0', b'"nodata": 1e400')]
            new = texts[rng.integers(len(texts))]
            recipe = f"metadata text {new[:40]!r}"
        return recipe + ("" if crc else " (stale CRC)"), parts.with_meta(new).build(crc=crc)
    if group == "index":
        k = int(rng.integers(len(parts.entries)))
        size = len(data)
        header_len = len(data) - len(parts.tiles)
        off, length, c = parts.entries[k]
        field = rng.choice(["offset", "length", "crc", "swap", "absent"])
        if field == "offset":  # absolute offsets, relative to the tiles region here
            value = int(rng.choice([0, header_len - 1, size, size - 1, size - length, 2**63, 2**64 - 8, 2**64 - 1]))
            parts.entries[k][0] = (value - header_len) % 2**64
        elif field == "length":
            value = int(rng.choice([1, 3, max(length - 1, 0), length + 1, 2**31, 2**32 - 1, size]))
            parts.entries[k][1] = value
        elif field == "crc":
            value = int(rng.integers(2**32))
            parts.entries[k][2] = value
        elif field == "swap":
            j = int(rng.integers(len(parts.entries)))
            parts.entries[k], parts.entries[j] = parts.entries[j], parts.entries[k]
            value = j
        else:
            parts.entries[k] = [0, 0, 0]
            value = 0
        return f"index entry {k} {field}={value}", parts.build()
    # group == "tiles": a tile mutated as a chunk, its index entry and the header CRC fixed to match
    present = [k for k, e in enumerate(parts.entries) if e[1]]
    k = present[rng.integers(len(present))]
    other = parts.tile(present[rng.integers(len(present))])
    recipe, bad = mutate_chunk(rng, parts.tile(k), other)
    parts.replace_tile(k, bad)
    return f"tile {k}: {recipe}", parts.build()


def read_everything(path: Path) -> np.ndarray:
    """Open, read every level (the values judged are level 0's and the overview's, concatenated flat)."""
    with tecfile.open(path) as f:
        levels = [f.read(level=k) for k in f.metadata.levels]
        window = f.read((slice(1, 33), slice(3, 35)), 0, bands=[0, 11])
    return np.concatenate([lv.ravel() for lv in levels] + [window.ravel()])


def fuzz_tec(group: str, count: int, seed: int, tmp_path: Path, model="tec-fp", max_error=None) -> tuple[list, Counter]:
    data = tec_bytes(model, max_error)
    path = tmp_path / "hostile.tec"
    problems: list[str] = []
    outcomes: Counter = Counter()
    for i in range(count):
        recipe, bad = mutate_tec(np.random.default_rng([seed, i]), data, group)
        path.write_bytes(bad)
        outcome, _, problem = judge(read_everything, path)
        outcomes[outcome] += 1
        if problem:
            problems.append(f".tec {group} seed {seed} #{i} [{recipe}]: {problem}")
    return problems, outcomes


TEC_GROUPS = ("raw", "meta", "index", "tiles")


@pytest.mark.parametrize("group", TEC_GROUPS)
def test_fuzz_tec(group, tmp_path):
    problems, outcomes = fuzz_tec(group, TEC_MUTATIONS, TEC_GROUPS.index(group), tmp_path)
    assert not problems, f"{len(problems)} of {TEC_MUTATIONS} hostile .tec files misbehaved:\n" + "\n".join(problems[:25])
    assert sum(outcomes.values()) - outcomes["ok"] > 0, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("group", TEC_GROUPS)
@pytest.mark.parametrize(("model", "max_error", "count"), [("tec-fp", None, SLOW_TEC_MUTATIONS),
                                                           ("tec-hp", 5, SLOW_TEC_MUTATIONS // 4)])  # ~1 s a read
def test_fuzz_tec_long(group, model, max_error, count, tmp_path):
    seed = 1000 + 10 * MODELS.index(model) + TEC_GROUPS.index(group)
    problems, outcomes = fuzz_tec(group, count, seed, tmp_path, model, max_error)
    assert not problems, f"{len(problems)} of {count} hostile .tec files misbehaved:\n" + "\n".join(problems[:25])


def test_tec_layout_reader_round_trips():
    data = tec_bytes()
    assert TecParts.parse(data).build() == data


# -- peak memory and time of one attack, in a process of its own -------------------------------------------------------

_HARNESS = r"""
import json, resource, sys, time, traceback, warnings
import numpy as np
from tec_zarr.errors import TecZarrError
from tec_zarr.models import load_model
for _m in ("tec-fp", "tec-hp", "tec-ctx"):
    load_model(_m)
def _rss():
    # VmHWM is this process image's own peak: Linux's ru_maxrss keeps the forking parent's (pytest's) across exec.
    try:
        for _line in open("/proc/self/status"):
            if _line.startswith("VmHWM:"):
                return int(_line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
{setup}
_results = []
for _name, _attack in ATTACKS.items():
    _t0 = time.perf_counter()
    _secs = _peak = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _out = _attack()
        _secs, _peak = time.perf_counter() - _t0, _rss()
        _a = _out if isinstance(_out, np.ndarray) else np.asarray(_out if _out is not None else 0)
        _r = {{"outcome": "ok", "tec_error": False, "finite": bool(_a.dtype.kind != "f" or np.isfinite(_a).all())}}
    except TecZarrError as _e:
        _r = {{"outcome": type(_e).__name__, "tec_error": True, "message": str(_e)[:300]}}
    except BaseException as _e:
        _r = {{"outcome": type(_e).__name__, "tec_error": False, "message": str(_e)[:300],
              "traceback": traceback.format_exc()[-1500:]}}
    _r.update(name=_name, seconds=time.perf_counter() - _t0 if _secs is None else _secs,
              peak_rss_mib=_rss() if _peak is None else _peak)
    _results.append(_r)
    print("RESULT " + json.dumps(_r), flush=True)
"""


def run_isolated(setup: str, timeout: float = 120, env: dict | None = None) -> list[dict]:
    """Run the attacks of ``setup`` (Python defining ``ATTACKS = {name: callable}``) one after another in a fresh
    process with all models loaded; per attack its outcome (``"ok"`` or the exception's class), whether that is a
    TecZarrError, its time, and the process's peak RSS so far (VmHWM, MiB)."""
    code = _HARNESS.format(setup=textwrap.dedent(setup))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0:
        raise AssertionError(f"the attack process died (rc {proc.returncode}) after {len(results)} attacks:\n"
                             f"{proc.stderr[-3000:]}")
    return results


def assert_refused(results: list[dict], *, allow_finite: bool = False, seconds: float = ATTACK_SECONDS,
                   max_rss_mib: float = ATTACK_MAX_RSS_MIB, errors: tuple[type, ...] = (TecZarrError,)) -> None:
    """Each attack refused with a TecZarrError (of ``errors``), or (``allow_finite``) decoded to finite values; fast
    and in bounded memory."""
    assert results
    bad = []
    for r in results:
        err = getattr(sys.modules["tec_zarr.errors"], r["outcome"], None)
        refused = r["tec_error"] and isinstance(err, type) and issubclass(err, errors)
        if not (refused or (allow_finite and r["outcome"] == "ok" and r["finite"])):
            bad.append(f"{r['name']}: {r['outcome']} {r.get('message', '')} {r.get('traceback', '')}"
                       + ("" if r.get("finite", True) else " (non-finite values)"))
        if r["seconds"] > seconds:
            bad.append(f"{r['name']}: took {r['seconds']:.2f} s (> {seconds}) ending in {r['outcome']}")
        if r["peak_rss_mib"] > max_rss_mib:
            bad.append(f"{r['name']}: peak RSS {r['peak_rss_mib']:.0f} MiB (> {max_rss_mib}) ending in {r['outcome']}")
    assert not bad, "\n".join(bad)


def test_run_isolated_measures():
    """The harness itself: a good chunk decodes, an escape is reported as such, peak RSS is seen to grow."""
    results = run_isolated("""
        import numpy as np
        from tec_zarr import TEC, sample
        a = sample.load_array()[1, :, :32, :32].copy()
        enc = TEC().encode(a)
        ATTACKS = {"good": lambda: TEC().decode(enc), "escape": lambda: {}["x"],
                   "allocate": lambda: np.ones(256 << 20, np.uint8)}
    """)
    by_name = {r["name"]: r for r in results}
    assert by_name["good"]["outcome"] == "ok" and by_name["good"]["finite"]
    assert by_name["escape"]["outcome"] == "KeyError" and not by_name["escape"]["tec_error"]
    assert by_name["allocate"]["peak_rss_mib"] >= by_name["good"]["peak_rss_mib"] + 128


# -- regressions: a. decompression bombs -------------------------------------------------------------------------------

_BOMB_SETUP = """
    import struct
    import numpy as np
    from tec_zarr import TEC, pipeline
    from tec_zarr.bitstream.chunk import ChunkHeader, pack
    from tec_zarr.codec.zarr3 import TEC as TEC3
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.dtype import get_data_type_from_native_dtype

    def bomb(model, shape=(12, 2048, 2048), latent=(192, 512, 512)):
        payload = b"" if model == "tec-fp" else struct.pack("<I", 0)
        return pack(ChunkHeader(model=model, model_hash=bytes.fromhex(load_model(model).sha256)[:8], quality=2,
                                dtype=np.dtype("uint16"), shape=shape, pad=(0, 0), latent=latent, nodata=None,
                                float_scale=1.0), None, payload)

    def zarr3(buf, shape=(12, 256, 256)):
        spec = ArraySpec(shape, get_data_type_from_native_dtype(np.dtype("uint16")), 0, ArrayConfig.from_dict({}),
                         default_buffer_prototype())
        return TEC3()._decode_batch_sync([(default_buffer_prototype().buffer.from_bytes(buf), spec)])[0].as_numpy_array()

    ATTACKS = {}
    for model in ("tec-fp", "tec-hp", "tec-ctx", "tec-tt"):
        b = bomb(model)
        ATTACKS.update({
            f"{model} decode_chunk": lambda b=b: pipeline.decode_chunk(b),
            f"{model} decode_chunks": lambda b=b: pipeline.decode_chunks([b]),
            f"{model} TEC().decode": lambda b=b: TEC().decode(b),
            f"{model} TEC().decode(out=)": lambda b=b: TEC().decode(b, out=np.empty((12, 256, 256), np.uint16)),
            f"{model} zarr3": lambda b=b: zarr3(b),
            f"{model} batch of 4": lambda b=b: pipeline.decode_chunk(bomb(model, (4, 12, 2048, 2048))),
        })
"""


def test_decompression_bomb_is_refused():
    for model in MODELS:  # well-formed: the refusal must come from the size checks
        assert chunkfmt.unpack(bomb_chunk(model))[0].shape == (12, 2048, 2048)
    results = run_isolated(_BOMB_SETUP)
    assert len(results) == 6 * len(MODELS)
    assert_refused(results, errors=(ChunkTooLargeError, CorruptChunkError))


def test_bomb_under_the_element_limit_env_is_refused():
    """A lowered TEC_ZARR_MAX_CHUNK_ELEMENTS refuses a chunk the default would take."""
    results = run_isolated(_BOMB_SETUP + """
    ATTACKS = {m: (lambda m=m: pipeline.decode_chunk(bomb(m, (12, 256, 256), (192, 64, 64)))) for m in ("tec-fp", "tec-hp")}
    """, env={"TEC_ZARR_MAX_CHUNK_ELEMENTS": str(2**16)})
    assert_refused(results, errors=(ChunkTooLargeError,))


# -- b. a .tec tile pointing at a bomb ---------------------------------------------------------------------------------


def bomb_chunk(model="tec-fp", shape=(12, 2048, 2048), latent=(192, 512, 512)) -> bytes:
    payload = b"" if model == "tec-fp" else struct.pack("<I", 0)
    from tec_zarr.models import load_model

    return chunkfmt.pack(chunkfmt.ChunkHeader(
        model=model, model_hash=bytes.fromhex(load_model(model).sha256)[:8], quality=2, dtype=np.dtype("uint16"),
        shape=shape, pad=(0, 0), latent=latent, nodata=None, float_scale=1.0), None, payload)


def test_tec_tile_bomb_is_refused(tmp_path):
    parts = TecParts.parse(tec_bytes())
    for k in (0, 3, len(parts.entries) - 1):  # a level-0 tile, an edge tile, the overview's
        parts.replace_tile(k, bomb_chunk())
    (tmp_path / "bomb.tec").write_bytes(parts.build())
    with tecfile.TecTiles(tmp_path / "bomb.tec") as tiles:  # the file is sound: each bomb reaches the decoder
        assert tiles.read_tile(0, 0, 0) == tiles.read_tile(0, 1, 1) == tiles.read_tile(1, 0, 0) == bomb_chunk()
    results = run_isolated(f"""
        from tec_zarr import tecfile
        path = {str(tmp_path / "bomb.tec")!r}
        def read(level=0, window=None):
            with tecfile.open(path) as f:
                return f.read(window, level)
        def tile(level, ty, tx):
            with tecfile.open(path) as f:
                return f.decode_tile(level, ty, tx)
        ATTACKS = {{"read": read, "read level 1": lambda: read(1), "tile (0, 1, 1)": lambda: tile(0, 1, 1),
                   "window": lambda: read(0, (slice(0, 4), slice(0, 4)))}}
    """)
    assert_refused(results, errors=(TecFileError, ChunkTooLargeError))


# -- c. a zlib bomb in the nodata mask ---------------------------------------------------------------------------------


def zlib_bomb(inflated: int = 256 << 20) -> bytes:
    """zlib of ``inflated`` bytes 0xff (256 MiB by default: about 256 KB), built 1 MiB at a time."""
    z = zlib.compressobj()
    block = b"\xff" * (1 << 20)
    return b"".join([z.compress(block) for _ in range(inflated >> 20)] + [z.flush()])


def test_mask_zlib_bomb_is_refused(tmp_path):
    good = encoded("tec-hp", "nodata")  # a real chunk with a mask section
    header, mask, payload = chunkfmt.unpack(good)
    bomb = zlib_bomb()
    assert len(bomb) < 1 << 20
    chunks = {
        "256 MiB mask": chunkfmt.pack(header, bomb, payload),
        "mask + trailing bytes": chunkfmt.pack(header, mask + b"\x00" * 16, payload),
        "two masks": chunkfmt.pack(header, mask + mask, payload),
        "truncated mask": chunkfmt.pack(header, mask[:-3], payload),
        "mask that is not zlib": chunkfmt.pack(header, b"\xff" * len(mask), payload),
    }
    # The same bomb under a large chunk the limit allows: still only its own bytes are inflated.
    big = dataclasses.replace(header, shape=(2, 12, 1024, 1024), latent=(192, 256, 256), pad=(0, 0))
    chunks["mask of a big chunk"] = chunkfmt.pack(big, bomb, payload)
    for name in ("256 MiB mask", "mask of a big chunk"):  # well-formed: refused for the mask alone
        assert chunkfmt.unpack(chunks[name])[1] == bomb
    for name, buf in chunks.items():
        (tmp_path / f"{len(name)}-{abs(hash(name))}.dat").write_bytes(buf)
    files = {name: str(tmp_path / f"{len(name)}-{abs(hash(name))}.dat") for name in chunks}
    results = run_isolated(f"""
        from pathlib import Path
        from tec_zarr import TEC, pipeline
        files = {files!r}
        data = {{name: Path(p).read_bytes() for name, p in files.items()}}
        ATTACKS = {{}}
        for name, buf in data.items():
            ATTACKS[name] = lambda buf=buf: pipeline.decode_chunk(buf)
            ATTACKS[name + " (out=)"] = lambda buf=buf: TEC().decode(buf, out=__import__("numpy").empty((12, 29, 45), "u2"))
    """)
    assert_refused(results)


# -- d. float32 max_error near the float limit -------------------------------------------------------------------------


@pytest.mark.parametrize("max_error", [1e308, 1e300, 3.4e38, _F32_MAX, _F32_MAX / 4, 1e38, 1e30])
def test_float32_max_error_near_the_float_limit(max_error):
    a = np.ascontiguousarray(crop()[:, :16, :16]).astype(np.float32) / np.float32(1e4)
    try:
        buf = tec_zarr.TEC(max_error=max_error).encode(a)
    except InvalidInputError:
        return
    dec = pipeline.decode_chunk(buf)
    bad = int((~np.isfinite(dec)).sum())
    assert bad == 0, f"TEC(max_error={max_error}) wrote a chunk decoding to {bad} non-finite values of {dec.size}"
    assert np.abs(dec.astype(np.float64) - a.astype(np.float64)).max() <= max_error


@pytest.mark.parametrize("max_error", [None, 0, 1e-3])
@pytest.mark.parametrize("float_scale", [5e-324, 1e-300, 1e-39, 1e-30, 1e300])
def test_float32_float_scale_extremes_never_decode_to_nan(float_scale, max_error):
    """A float_scale the codec accepts must not write a chunk that decodes to NaN or inf (refused, or finite)."""
    a = np.ascontiguousarray(crop()[:, :16, :16]).astype(np.float32) / np.float32(1e4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            buf = tec_zarr.TEC(float_scale=float_scale, max_error=max_error).encode(a)
        except InvalidInputError:
            return
        dec = pipeline.decode_chunk(buf)
    bad = int((~np.isfinite(dec)).sum())
    assert bad == 0, f"TEC(float_scale={float_scale}, max_error={max_error}) wrote a chunk decoding to {bad} non-finite values of {dec.size}"
    if max_error is not None:
        assert np.abs(dec.astype(np.float64) - a.astype(np.float64)).max() <= max_error


def test_float32_max_error_1e308_is_refused():
    a = np.ascontiguousarray(crop()[:, :16, :16]).astype(np.float32)
    with pytest.raises(InvalidInputError):
        tec_zarr.TEC(max_error=1e308).encode(a)


# -- e. CRC-valid header values ----------------------------------------------------------------------------------------


def header_attacks() -> dict[str, bytes]:
    """Chunks whose CRC is right and whose header says something absurd."""
    lossy = encoded("tec-fp", "lossy")
    bounded = encoded("tec-fp", "max_error=5")
    f32 = encoded("tec-ctx", "float32")
    h, m, p = chunkfmt.unpack(lossy)
    hb, mb, pb = chunkfmt.unpack(bounded)
    hf, mf, pf = chunkfmt.unpack(f32)
    hr, mr, pr = chunkfmt.unpack(encoded("tec-fp", "float32"))  # max_error 1e-3: residual mode 1
    hx, mx, px = chunkfmt.unpack(encoded("tec-hp", "float32"))  # lossless: residual mode 2
    rep = dataclasses.replace
    out = {
        "float_scale 0": chunkfmt.pack(rep(h, float_scale=0.0), m, p),
        "float_scale NaN": chunkfmt.pack(rep(h, float_scale=math.nan), m, p),
        "float_scale -1": chunkfmt.pack(rep(h, float_scale=-1.0), m, p),
        "float_scale inf": chunkfmt.pack(rep(h, float_scale=math.inf), m, p),
        "float32 float_scale 5e-324": chunkfmt.pack(rep(hf, float_scale=5e-324), mf, pf),
        "float32 float_scale 1e-300": chunkfmt.pack(rep(hf, float_scale=1e-300), mf, pf),
        "float32 float_scale 1e308": chunkfmt.pack(rep(hf, float_scale=1e308), mf, pf),
        "float32 float_scale 1.4e-45 (residual mode 1)": chunkfmt.pack(rep(hr, float_scale=1.401298464324817e-45), mr, pr),
        "float32 float_scale 1.4e-45 (residual mode 2)": chunkfmt.pack(rep(hx, float_scale=1.401298464324817e-45), mx, px),
        "integer residual max_error 1e308": chunkfmt.pack(rep(hb, residual=rep(hb.residual, max_error=1e308)), mb, pb),
        "integer residual max_error NaN": chunkfmt.pack(rep(hb, residual=rep(hb.residual, max_error=math.nan)), mb, pb),
        "integer residual max_error -5": chunkfmt.pack(rep(hb, residual=rep(hb.residual, max_error=-5.0)), mb, pb),
        "integer residual max_error 5.5": chunkfmt.pack(rep(hb, residual=rep(hb.residual, max_error=5.5)), mb, pb),
        "integer residual mode 1": chunkfmt.pack(rep(hb, residual=rep(hb.residual, mode=1)), mb, pb),
        "integer residual mode 7": chunkfmt.pack(rep(hb, residual=rep(hb.residual, mode=7)), mb, pb),
        "residual tile 0": chunkfmt.pack(rep(hb, residual=rep(hb.residual, tile=0)), mb, pb),
        "nodata NaN": chunkfmt.pack(rep(h, nodata=math.nan), m, p),
        "nodata inf": chunkfmt.pack(rep(h, nodata=math.inf), m, p),
        "zero height": chunkfmt.pack(rep(h, shape=(12, 0, 45)), m, p),
        "zero bands": chunkfmt.pack(rep(h, shape=(0, 29, 45)), m, p),
        "zero batch": chunkfmt.pack(rep(h, shape=(0, 12, 29, 45)), m, p),
        "zero latent": chunkfmt.pack(rep(h, latent=(192, 0, 12)), m, p),
        "shape of ndim 2": chunkfmt.pack(rep(h, shape=(29, 45)), m, p),
        "shape of ndim 0": chunkfmt.pack(rep(h, shape=()), m, p),
        "shape (2**16,)*3 + (12, 16, 16)": chunkfmt.pack(rep(h, shape=(2**16,) * 3 + (12, 16, 16)), m, p),
        "shape wrapping int64 to 0": chunkfmt.pack(rep(h, shape=(2**16,) * 4 + (12, 16, 16)), m, p),
        "shape wrapping with latent 0-sized": chunkfmt.pack(rep(h, shape=(2**16,) * 4 + (12, 16, 16), latent=(192, 4, 4)), m, p),
        "shape (2**32-1,)*3": chunkfmt.pack(rep(h, shape=(2**32 - 1,) * 3), m, p),
        "batch 2**32-1": chunkfmt.pack(rep(h, shape=(2**32 - 1, 12, 29, 45)), m, p),
        "latent (65535, 2**32-1, 2**32-1)": chunkfmt.pack(rep(h, latent=(65535, 2**32 - 1, 2**32 - 1)), m, p),
    }
    # Fields pack() refuses to write: edited in place, the CRC recomputed.
    layout = chunk_layout(lossy)
    for name, field, value in (("dtype code 0", "dtype", 0), ("dtype code 4", "dtype", 4), ("dtype code 255", "dtype", 255),
                               ("flags | 0x80", "flags", 0x80), ("flags 0xff", "flags", 255), ("version 0", "version", 0),
                               ("version 4", "version", 4), ("quality 255", "quality", 255),
                               ("quality 5 (one above the model's)", "quality", 5)):
        buf = bytearray(lossy)
        offset, code = layout.fields[field]
        if name.startswith("flags |"):  # the unknown bit beside the chunk's own
            value |= buf[offset]
        struct.pack_into("<" + code, buf, offset, value)
        out[name] = fix_crc(buf)
    return out


def test_crc_valid_absurd_headers_are_refused():
    attacks = header_attacks()
    # in process: the exception types (cheap), with the chunk declared shape and without
    problems = []
    for name, buf in attacks.items():
        finite_ok = name.startswith("float32 float_scale")  # a header the encoder could write: finite, or refused
        dtype = np.float32 if finite_ok else np.uint16
        for decoder in ("decode_chunk", "TEC().decode(out=)", "zarr3"):
            outcome, seconds, problem = judge(DECODERS[decoder], buf, (12, 29, 45), dtype, encoded("tec-fp", "lossy"))
            err = getattr(sys.modules["tec_zarr.errors"], outcome, None)
            refused = isinstance(err, type) and issubclass(err, (CorruptChunkError, ChunkTooLargeError))
            if problem or not (refused or (finite_ok and outcome == "ok")):
                problems.append(f"{name} via {decoder}: {outcome} {problem or ''}")
    assert not problems, "\n".join(problems)


def extreme_latents(mode: str, value: int, float_scale: float) -> bytes:
    """A tec-fp float32 chunk (``mode``: "lossy", or "float32" for max_error 1e-3, residual mode 1) whose latent
    symbols are all ``value``, coded by the model's own coder (escapes), with ``float_scale``: well-formed and
    CRC-valid, every field inside the ranges the header check allows."""
    from tec_zarr.models import load_model

    a, _ = case_input("tec-fp", "float32")
    buf = tec_zarr.TEC(model="tec-fp", **({} if mode == "lossy" else {"max_error": 1e-3})).encode(a)
    h, m, _ = chunkfmt.unpack(buf)
    symbols = np.full((h.batch, *h.latent), value, np.int64)
    payload = load_model("tec-fp").coder.encode(None, symbols, h.quality)
    return chunkfmt.pack(dataclasses.replace(h, float_scale=float_scale, channels=None), m, payload)


@pytest.mark.parametrize("mode", ["lossy", "float32"])
@pytest.mark.parametrize("value", [2**31 - 1, -(2**31)])
@pytest.mark.parametrize("float_scale", ["lowest", "highest"])
def test_extreme_latents_decode_finite(mode, value, float_scale):
    """Latents at int32's ends (each a legal escape) under the smallest float_scale a header may carry: the pixels
    (x_hat x 10000 / float_scale) must stay finite float32, or the chunk be refused."""
    lo, hi = getattr(chunkfmt, "FLOAT_SCALE_RANGE", (1e-20, 1e20))
    scale = {"lowest": lo, "highest": hi}.get(float_scale, float_scale)
    buf = extreme_latents(mode, value, scale)
    outcome, seconds, problem = judge(pipeline.decode_chunk, buf)
    assert problem is None, f"{mode} chunk, latents all {value}, float_scale {scale}: {problem}"


def test_crc_valid_absurd_headers_stay_bounded(tmp_path):
    """The same attacks without an expected shape, each in a fresh process: peak RSS and time."""
    paths = {}
    for i, (name, buf) in enumerate(header_attacks().items()):
        (tmp_path / f"{i}.dat").write_bytes(buf)
        paths[name] = str(tmp_path / f"{i}.dat")
    results = run_isolated(f"""
        from pathlib import Path
        from tec_zarr import pipeline
        ATTACKS = {{name: (lambda p=p: pipeline.decode_chunk(Path(p).read_bytes())) for name, p in {paths!r}.items()}}
    """)
    assert_refused([r for r in results if not r["name"].startswith("float32 float_scale")],
                   errors=(CorruptChunkError, ChunkTooLargeError))
    assert_refused([r for r in results if r["name"].startswith("float32 float_scale")], allow_finite=True)


# -- f. hostile .tec metadata and codec parameters ---------------------------------------------------------------------


def tec_metadata_attacks() -> dict[str, bytes]:
    parts = TecParts.parse(tec_bytes())
    meta = json.loads(parts.meta)
    out = {}
    far = dataclasses.replace(parts, entries=[list(e) for e in parts.entries])
    header_len = len(tec_bytes()) - len(parts.tiles)
    far.entries[0] = [(2**64 - 8 - header_len) % 2**64, 16, 0]
    out["tile offset 2**64-8"] = far.build()
    far.entries[0] = [(2**64 - 1 - header_len) % 2**64, 2**32 - 1, 0]
    out["tile offset 2**64-1, length 2**32-1"] = far.build()
    out["100000 nested lists"] = parts.with_meta(b"[" * 100_000 + b"]" * 100_000).build()
    out["100000 nested objects"] = parts.with_meta(b'{"a":' * 100_000 + b"1" + b"}" * 100_000).build()
    nested = dict(meta, band_names=json.loads("[" * 50 + "]" * 50))
    out["nested band names"] = parts.with_meta(nested).build()
    out["nodata 10**400"] = parts.with_meta(json.dumps(dict(meta, nodata=10**400)).encode()).build()
    out["nodata 1e400 (inf)"] = parts.with_meta(parts.meta.replace(b'"nodata": 0', b'"nodata": 1e400')).build()
    out["nodata NaN"] = parts.with_meta(parts.meta.replace(b'"nodata": 0', b'"nodata": NaN')).build()
    out["codec nodata 10**400"] = parts.with_meta(dict(meta, codec=dict(meta["codec"], nodata=10**400))).build()
    out["codec float_scale 10**400"] = parts.with_meta(dict(meta, codec=dict(meta["codec"], float_scale=10**400))).build()
    out["codec max_error 10**400"] = parts.with_meta(dict(meta, codec=dict(meta["codec"], max_error=10**400))).build()
    out["codec psnr 10**400"] = parts.with_meta(dict(meta, codec=dict(meta["codec"], psnr=10**400))).build()
    out["codec quality 10**400"] = parts.with_meta(dict(meta, codec=dict(meta["codec"], quality=10**400))).build()
    out["codec unknown key"] = parts.with_meta(dict(meta, codec=dict(meta["codec"], unknown=1))).build()
    out["codec missing quality"] = parts.with_meta(
        dict(meta, codec={k: v for k, v in meta["codec"].items() if k != "quality"})).build()
    out["codec missing model_sha256"] = parts.with_meta(
        dict(meta, codec={k: v for k, v in meta["codec"].items() if k != "model_sha256"})).build()
    out["codec a list"] = parts.with_meta(dict(meta, codec=[1, 2])).build()
    out["codec id other"] = parts.with_meta(dict(meta, codec=dict(meta["codec"], id="numcodecs.zlib"))).build()
    out["shape 10**400"] = parts.with_meta(dict(meta, shape=[12, 10**400, 50])).build()
    out["shape 1e400"] = parts.with_meta(parts.meta.replace(b'"shape": [12, 40, 50]', b'"shape": [12, 1e400, 50]')).build()
    out["tile 10**400"] = parts.with_meta(dict(meta, tile=10**400)).build()
    out["overviews 10**400"] = parts.with_meta(dict(meta, overviews=[10**400])).build()
    out["geotransform 10**400"] = parts.with_meta(dict(meta, geotransform=[10**400] * 6)).build()
    out["uuid a list"] = parts.with_meta(dict(meta, uuid=[1])).build()
    out["metadata a list"] = parts.with_meta(b"[1, 2]").build()
    out["metadata not UTF-8"] = parts.with_meta(b"\xff" + parts.meta).build()
    out["huge digits"] = parts.with_meta(parts.meta.replace(b'"nodata": 0', b'"nodata": ' + b"9" * 5000)).build()
    missing = {k: v for k, v in meta.items() if k != "tile"}
    out["metadata missing tile"] = parts.with_meta(missing).build()
    return out


# Refused by open itself with a TecFileError: the layout and the metadata (codec config keys included).
# The codec config's values are parsed when a tile is decoded: those attacks need a TecZarrError by then.
READ_TIME = ("codec nodata 10**400", "codec float_scale 10**400", "codec max_error 10**400", "codec psnr 10**400",
             "codec quality 10**400", "codec id other")


def test_hostile_tec_metadata_is_refused_at_open(tmp_path):
    meta = TecParts.parse(tec_bytes()).meta
    assert b'"nodata": 0' in meta and b'"shape": [12, 40, 50]' in meta  # the text edits below apply
    problems = []
    for name, data in tec_metadata_attacks().items():
        path = tmp_path / "meta.tec"
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            f = tecfile.open(path)
        except TecFileError:
            f = None
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name}: open raised {type(e).__name__}: {str(e)[:200]}")
            continue
        if f is not None:
            with f:
                if name not in READ_TIME:
                    problems.append(f"{name}: opened")
                outcome, _, problem = judge(f.read)
                if problem or outcome == "ok":
                    problems.append(f"{name}: read gave {outcome} {problem or ''}")
        if time.perf_counter() - t0 > ATTACK_SECONDS:
            problems.append(f"{name}: took {time.perf_counter() - t0:.2f} s")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key", ["max_error", "psnr", "float_scale", "nodata", "quality"])
@pytest.mark.parametrize("value", [10**400, -(10**400), math.nan, math.inf])
def test_codec_parameters_beyond_float_are_refused(key, value):
    from tec_zarr.codec.zarr3 import TEC as TEC3

    for make in (lambda: tec_zarr.TEC(**{key: value}), lambda: TEC3(**{key: value}),
                 lambda: tec_zarr.TEC.from_config({"id": "tec_zarr.tec", key: value}),
                 lambda: TEC3.from_dict({"name": "tec_zarr.tec", "configuration": {key: value}})):
        with pytest.raises(InvalidInputError):
            make()


def test_tecfile_write_parameters_beyond_float_are_refused(tmp_path):
    a = np.ascontiguousarray(crop()[:, :16, :16])
    for kwargs in ({"max_error": 10**400}, {"psnr": 10**400}, {"nodata": 10**400}, {"tile": 10**400},
                   {"overviews": (10**400,)}, {"geotransform": (10**400,) * 6}, {"geotransform": (math.nan,) * 6}):
        with pytest.raises(InvalidInputError):
            tecfile.write(tmp_path / "x.tec", a, **{"crs_wkt": None, "geotransform": None, **kwargs})
    assert not (tmp_path / "x.tec").exists()


# -- g. broken manifests on TEC_ZARR_MODEL_PATH ------------------------------------------------------------------------


def _manifest_texts() -> dict[str, bytes]:
    from tec_zarr import models

    real = json.loads((models.get_card("tec-fp").folder / "manifest.json").read_text())
    good = dict(real, name="tec-broken")
    return {
        "not json": b"{not json",
        "empty": b"",
        "not UTF-8": b"\xff\xfe\x00{",
        "a list": b"[]",
        "null": b"null",
        "a number": b"5",
        "no files": json.dumps({"name": "x"}).encode(),
        "files a list": json.dumps(dict(good, files=[1])).encode(),
        "files with a path": json.dumps(dict(good, files={"../x": "0" * 64})).encode(),
        "bands a number": json.dumps(dict(good, bands=5)).encode(),
        "qualities of numbers": json.dumps(dict(good, qualities=[1, 2])).encode(),
        "multiple a string": json.dumps(dict(good, multiple="x")).encode(),
        "multiple Infinity": json.dumps(dict(good, multiple=math.inf)).encode(),
        "multiple NaN": json.dumps(dict(good, multiple=math.nan)).encode(),
        "multiple 1e400": json.dumps(good).replace('"multiple": ', '"multiple": 1e400, "x": ').encode(),
        "multiple 10**5000": json.dumps(good).replace('"multiple": ', '"multiple": ' + "9" * 5000 + ', "x": ').encode(),
        "nested 100000": b"[" * 100_000 + b"]" * 100_000,
        "nested files": json.dumps(dict(good, files=json.loads("[" * 50 + "]" * 50))).encode(),
        "sha256 of other files": json.dumps(dict(good, sha256="0" * 64)).encode(),
        "default_quality a string": json.dumps(dict(good, default_quality="x")).encode(),
    }


@pytest.mark.parametrize("name", sorted(_manifest_texts()))
def test_broken_manifest_is_skipped(name, tmp_path, monkeypatch):
    from tec_zarr import models
    from tec_zarr.models.registry import BrokenModelWarning

    folder = tmp_path / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_bytes(_manifest_texts()[name])
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            names = [c.name for c in tec_zarr.list_models()]
            model = models.load_model("tec-fp")
            card = models.get_card("tec-fp")
        assert {"tec-fp", "tec-hp", "tec-ctx"} <= set(names)
        assert model.sha256 == card.sha256
        broken = [w for w in seen if issubclass(w.category, BrokenModelWarning)]
        # Skipped with a warning, or (a manifest that is valid JSON of a model whose files are absent) listed and
        # refused only when loaded.
        if "tec-broken" in names:
            with pytest.raises(TecZarrError):
                models.load_model("tec-broken")
        else:
            assert broken, f"{name}: skipped without a BrokenModelWarning"
    finally:
        monkeypatch.delenv("TEC_ZARR_MODEL_PATH")
        models.clear_cache()


def test_manifest_that_is_a_folder_is_skipped(tmp_path, monkeypatch):
    from tec_zarr import models
    from tec_zarr.models.registry import BrokenModelWarning

    (tmp_path / "models" / "broken" / "manifest.json").mkdir(parents=True)
    monkeypatch.setenv("TEC_ZARR_MODEL_PATH", str(tmp_path / "models"))
    models.clear_cache()
    try:
        with pytest.warns(BrokenModelWarning):
            assert {"tec-fp", "tec-hp", "tec-ctx"} <= {c.name for c in tec_zarr.list_models()}
    finally:
        monkeypatch.delenv("TEC_ZARR_MODEL_PATH")
        models.clear_cache()


# -- h. descriptors of the GDAL pixel function, and reads of absurd rasters --------------------------------------------


def empty_tec(path: Path, shape=(12, 16, 16), tile=16, nodata=0) -> tecfile.TecMetadata:
    """A .tec file with every tile absent (nothing encoded)."""
    from tec_zarr.codec.config import CodecConfig

    meta = tecfile.TecMetadata.create(shape=shape, dtype="uint16", band_names=None, crs_wkt=None, geotransform=None,
                                      nodata=nodata, tile=tile, codec=CodecConfig.create(nodata=nodata).to_json(),
                                      overviews=(), uuid=str(uuidlib.uuid4()))
    tecfile.write_tiles(path, meta, [None] * meta.tile_count)
    return meta


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_pixel_function_keeps_few_files_open(tmp_path, monkeypatch):
    from tec_zarr.gdal import pixelfunction

    monkeypatch.setattr(pixelfunction, "_readers", OrderedDict())
    limit = pixelfunction.MAX_OPEN_FILES
    files = []
    for i in range(limit + 10):
        path = tmp_path / f"f{i}.tec"
        files.append((str(path), empty_tec(path).uuid))
    linux = os.path.isdir("/proc/self/fd")
    before = _open_fds() if linux else 0
    for _ in range(2):  # twice over: reopened after eviction, never accumulated
        for path, uuid in files:
            stamp, f = pixelfunction.reader(path, uuid)
            assert f.metadata.uuid == uuid
            assert f.read().shape == (12, 16, 16)
            del f
            assert len(pixelfunction._readers) <= limit
    if linux:
        assert _open_fds() - before <= limit + 3
    pixelfunction._readers.clear()
    if linux:
        assert _open_fds() - before <= 3


def test_reading_an_absurd_raster_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "absurd.tec"
    meta = empty_tec(path, shape=(12, 2**20, 2**20), tile=4096)
    assert meta.tile_count == 256 * 256
    with tecfile.open(path) as f:
        for read in (lambda: f.read(), lambda: f.read(None, 0, bands=[0]),
                     lambda: f.read((slice(0, 2**20), slice(0, 2**16)), 0, bands=[0])):
            t0 = time.perf_counter()
            with pytest.raises(TecZarrError):
                read()
            assert time.perf_counter() - t0 < ATTACK_SECONDS
    monkeypatch.setenv("TEC_ZARR_MAX_READ_ELEMENTS", str(12 * 64 * 64))
    small = tmp_path / "small.tec"
    empty_tec(small, shape=(12, 100, 100), tile=32)
    with tecfile.open(small) as f:
        with pytest.raises(TecZarrError):
            f.read()
        assert f.read((slice(0, 64), slice(0, 64))).shape == (12, 64, 64)
    monkeypatch.setenv("TEC_ZARR_MAX_READ_ELEMENTS", "lots")
    with tecfile.open(small) as f:
        with pytest.raises(TecZarrError):
            f.read()


def test_reading_an_absurd_raster_stays_bounded(tmp_path):
    path = tmp_path / "absurd.tec"
    empty_tec(path, shape=(12, 2**20, 2**20), tile=4096)
    results = run_isolated(f"""
        from tec_zarr import tecfile
        def read(**kw):
            with tecfile.open({str(path)!r}) as f:
                return f.read(**kw)
        ATTACKS = {{"read": read, "read band 0": lambda: read(bands=[0])}}
    """)
    assert_refused(results)


def test_forged_headers_that_would_decode_to_infinity_or_a_wrapped_nodata_are_refused():
    """CRC-valid chunks whose header was rewritten (a fuzzing pass): a float32 bound at either end of what the
    header check allows made the residual arithmetic leave float32's range (all inf, no error), and a nodata the
    dtype cannot hold (float32 1e308, uint16 70000, 1.5) was cast to inf or wrapped. The encoder writes neither."""
    import numpy as np

    from tec_zarr import TEC
    from tec_zarr.bitstream import chunk as fmt
    from tec_zarr.errors import CorruptChunkError
    from tec_zarr.pipeline import decode_chunk

    rng = np.random.default_rng(0)
    a = (rng.integers(200, 3000, (12, 64, 64)) / 1e4).astype(np.float32)
    s = fmt.unpack_sections(TEC(max_error=1e-3).encode(a))
    assert np.isfinite(decode_chunk(fmt.pack(s.header, s.mask, s.payload, s.nan_mask))).all()
    for e in (float(np.finfo(np.float32).max) / 4, 5e-324):
        header = dataclasses.replace(s.header, residual=dataclasses.replace(s.header.residual, max_error=e))
        with pytest.raises(CorruptChunkError, match="Got infinity instead"):
            decode_chunk(fmt.pack(header, s.mask, s.payload, s.nan_mask))
    f = np.full((12, 32, 32), 0.05, np.float32)
    f[:, :8, :8] = -9999.0
    u = np.full((12, 32, 32), 500, np.uint16)
    u[:, :8, :8] = 0
    for data, nodata, forged in ((f, -9999.0, 1e308), (u, 0, 70000.0), (u, 0, 1.5), (u, 0, -1.0)):
        s = fmt.unpack_sections(TEC(nodata=nodata).encode(data))
        with pytest.raises(CorruptChunkError, match="nodata value the chunk's dtype holds"):
            decode_chunk(fmt.pack(dataclasses.replace(s.header, nodata=forged), s.mask, s.payload, s.nan_mask))
