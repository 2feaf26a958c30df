"""Error-bounded and lossless chunks: the learned base plus a quantized residual, ``|x - decoded| <= max_error``.

The base is :mod:`tec_zarr.integer.synthesis`'s integer transform of the chunk's latent symbols, so encoder and decoder
agree on it bit for bit on any machine. The residual ``x - base`` is quantized and coded by
:mod:`.hierarchical` (coder 2, context-modelled), or by :mod:`.tiled` (coder 1, memoryless
tiles) where that is smaller, as it can be when nearly every residual rounds to 0. Per dtype (``E`` = max_error, in the array's own units):

* uint16 / int16: residual steps of ``2 floor(E) + 1`` DN, ``q = sign(r) floor((|r| + E) / (2E + 1))``; the
  decoded value is clipped to the dtype's range, which only moves it towards ``x``. ``E = 0`` is lossless.
* float32, ``E > 0``: steps of ``2E (1 - 2**-12)`` in float64 (the margin absorbs the final rounding),
  rounded once to float32 (mode 1). The encoder checks every
  element against the bound with the decoder's own arithmetic; a chunk where float32 rounding would break it
  (``E`` below the values' resolution) is coded exactly instead.
* float32, ``E = 0`` (mode 2): bit-exact, through an order-preserving int32 view of the float32 bits; the
  residual counts units in the last place.
* float32, ``E = 0``, every valid value ``float32(k / float_scale)`` for an integer DN ``k`` (mode 3, chunk
  extension tag 6): reflectance as cube builders scale it from DN. The residual counts DN, as for uint16, and the
  decoder computes the same float32 from ``k`` (where mode 2 counted float32 units in the last place, about 2.75
  times the bits).

Nodata elements keep the package's lossless mask; other elements never decode to nodata. (For float32, -0.0
equals a nodata of 0 and so reads back as 0.0; with ``nodata=None`` lossless float32 is bit-exact throughout.) Should that rule move
an element past the bound, the chunk is coded exactly instead (with a
:class:`~tec_zarr.errors.MaxErrorFallbackWarning`). Chunks with 0 < max_error <= :data:`LATTICE_MAX_DN` DN written
since chunk extension tag 4 round the base to a lattice of multiples of the step, shifted to put nodata between two
points (:func:`on_lattice`): decoded values then never land on nodata, and coding decoded values again gives them
back.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from ..bitstream.chunk import (MAX_FLOAT_BOUND, MAX_INTEGER_BOUND, RESIDUAL_MODE_DN_GRID, ChunkHeader,
                                ResidualSection)
from ..bitstream.payload import tile_parameters
from ..errors import CorruptChunkError, InvalidInputError, MaxErrorFallbackWarning
from ..parsing import is_real
from ..replication import Blocks, from_header, from_native, native_layout, native_valid, project, to_native
from . import hierarchical, tiled

MODE_INTEGER, MODE_FLOAT, MODE_FLOAT_EXACT, MODE_DN_GRID = 0, 1, 2, RESIDUAL_MODE_DN_GRID
DN_GRID_MAX = 2**40  # |DN| of a mode 3 chunk: exact in float64, far past any 16-bit data times float_scale
FLOAT_STEP_MARGIN = 1.0 - 2.0**-12
# Bounds up to this many DN round the base to the lattice (extension tag 4). Its price is the residuals of pixels
# whose base and value fall in different lattice cells, which grows with the step: 0.1-0.4 % of the bits up to
# E = 10 DN, 1-4 % at 25 (base quality 0 / 2), 2-11 % at 50 and 7-55 % at 100 (benchmarks/bounded.py), so
# larger bounds keep the base-centred steps, whose partial-chunk rewrites can move a value by up to another E.
LATTICE_MAX_DN = 25
CODER1_MIN_AREA = 64 * 64  # pixels per band from which coder 1 is tried only where coder 2 is very small
_KEY_MAX = 0x7F7FFFFF  # key of float32's largest finite value; -_KEY_MAX - 1 is that of the most negative one


def parse_bound(max_error: float, dtype: np.dtype) -> float:
    if not (is_real(max_error) and max_error >= 0):
        raise InvalidInputError(f"Expected a finite max_error >= 0. Got {max_error!r} instead.")
    if dtype.kind in "iu":  # integer steps beyond 2**17 DN already span any 16-bit range
        return float(min(math.floor(max_error), MAX_INTEGER_BOUND))
    if max_error > MAX_FLOAT_BOUND:
        raise InvalidInputError(
            f"Expected a float32 max_error up to {MAX_FLOAT_BOUND:.3g}, whose steps float32 can represent. "
            f"Got {max_error!r} instead."
        )
    return float(max_error)


def base_values(model, symbols: np.ndarray, quality: int, shape: tuple[int, int], dtype: np.dtype, scale: float,
                blocks: tuple[Blocks, ...] | None = None, offset: int = 0, mode: int | None = None):
    """The base in data units: int64 clipped to the dtype's range, or float32 (DN / scale, rounded once), or for
    mode 3 the int64 DN themselves; replicated bands (``blocks``) projected onto their blocks, in integers;
    ``offset`` DN added (an integer, so the base stays exact)."""
    dn = base_dn(model, symbols, quality, shape, blocks, offset)
    return dn if mode == MODE_DN_GRID else in_data_units(dn, dtype, scale)


def base_dn(model, symbols: np.ndarray, quality: int, shape: tuple[int, int], blocks: tuple[Blocks, ...] | None,
            offset: int) -> np.ndarray:
    """The base as int64 DN: the integer synthesis cropped, ``offset`` added, replicated bands projected."""
    h, w = shape
    dn = model.int_synthesis(symbols, quality)[:, :, :h, :w]
    if offset:
        dn = dn + np.int64(offset)
    if blocks is not None:
        dn = project(np.ascontiguousarray(dn), blocks)
    return dn.astype(np.int64, copy=False)


def in_data_units(dn: np.ndarray, dtype: np.dtype, scale: float) -> np.ndarray:
    """Base DN in data units: clipped to an integer dtype's range, or float32 (DN / scale, rounded once)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(dn, info.min, info.max)
    return (dn.astype(np.float64) / scale).astype(np.float32)


def _key(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _unkey(k: np.ndarray) -> np.ndarray:
    k = np.clip(k, -_KEY_MAX - 1, _KEY_MAX)  # finite floats only, whatever the residual says
    bits = np.where(k < 0, (-k - 1) | 0x80000000, k).astype(np.uint32)
    return bits.view(np.float32)


def on_lattice(base: np.ndarray, mode: int, bound: float, nodata: float | None) -> np.ndarray:
    """The base rounded to the nearest point of the lattice of multiples of the residual step (chunk extension tag
    4), so that decoded values, base + steps, lie on that lattice whatever the base: coding them again (zarr
    re-encodes a partial chunk it appends to) finds the same lattice points, and the bound holds against the first
    values, not only the last. The lattice is shifted to put nodata between two points, so that no valid
    element decodes onto nodata. Lossless chunks (bound 0) keep their base."""
    if not bound > 0:
        return base
    shifted = nodata is not None and math.isfinite(nodata)
    if mode == MODE_INTEGER:
        step, e = 2 * int(bound) + 1, int(bound)
        c = (int(nodata) + e + 1) % step if shifted else 0
        return (base - c + e) // step * step + c
    step = 2.0 * bound * FLOAT_STEP_MARGIN  # float64 lattice points: decoded values round to float32 once
    c = math.fmod(float(nodata), step) + step / 2 if shifted else 0.0  # small whatever nodata (-3.4e38 is common)
    return np.floor((base.astype(np.float64) - c) / step + 0.5) * step + c


def dn_grid_steps(images: np.ndarray, valid: np.ndarray, dn: np.ndarray, scale: float) -> np.ndarray | None:
    """Mode 3's residual steps against the base ``dn`` (0 at invalid elements), where the decoder's own arithmetic
    (:func:`reconstruct`) gives every valid float32 element back bit for bit; else None (-0.0, values between DN,
    steps beyond its clip)."""
    x = np.where(valid, images, np.float32(0))
    k = np.rint(x.astype(np.float64) * scale)
    if not (np.abs(k) <= DN_GRID_MAX).all():
        return None
    q = np.where(valid, k.astype(np.int64) - dn, 0)
    back = reconstruct(dn, q, MODE_DN_GRID, 0.0, images.dtype, scale)
    same = back.view(np.int32)[valid] == np.ascontiguousarray(images, np.float32).view(np.int32)[valid]
    return q if same.all() else None


def _from_dn(k: np.ndarray, scale: float) -> np.ndarray:
    """The decoder's float32 of DN ``k`` (the base's own rounding, :func:`base_values`)."""
    return (k.astype(np.float64) / scale).astype(np.float32)


def quantize(x: np.ndarray, base: np.ndarray, mode: int, bound: float) -> np.ndarray:
    if mode == MODE_INTEGER:
        r = x.astype(np.int64) - base
        return np.sign(r) * ((np.abs(r) + int(bound)) // (2 * int(bound) + 1))
    if mode == MODE_FLOAT:
        d = x.astype(np.float64) - base.astype(np.float64)
        return np.floor(d / (2.0 * bound * FLOAT_STEP_MARGIN) + 0.5).astype(np.int64)
    return _key(x) - _key(base)


def reconstruct(base: np.ndarray, q: np.ndarray, mode: int, bound: float, dtype: np.dtype,
                scale: float = 1.0) -> np.ndarray:
    """The decoder's arithmetic (the encoder runs it too, to check the bound)."""
    if mode == MODE_DN_GRID:
        return _from_dn(base + np.clip(q, -DN_GRID_MAX, DN_GRID_MAX), scale)
    if mode == MODE_INTEGER:
        info = np.iinfo(dtype)
        step = 2 * int(bound) + 1
        return np.clip(base + np.clip(q, -(1 << 20), 1 << 20) * step, info.min, info.max).astype(dtype)
    if mode == MODE_FLOAT:
        return (base.astype(np.float64) + q.astype(np.float64) * (2.0 * bound * FLOAT_STEP_MARGIN)).astype(np.float32)
    return _unkey(_key(base) + q)


def encode(images, valid, symbols, quality, model, scale, max_error, nodata, blocks=None,
           offset: int = 0) -> ResidualSection:
    """The residual section of a chunk whose images (B, C, H, W) must decode within ``max_error``; bands made of
    blocks (``blocks``, as detected over ``valid``) have their residual coded on the native grid."""
    dtype = images.dtype
    bound = parse_bound(max_error, dtype)
    dn = base_dn(model, symbols, quality, images.shape[-2:], blocks, offset)
    unrounded = in_data_units(dn, dtype, scale)
    mode = MODE_INTEGER if dtype.kind in "iu" else MODE_FLOAT if bound > 0 else MODE_FLOAT_EXACT
    lattice = 0 < bound * scale <= LATTICE_MAX_DN
    base = on_lattice(unrounded, mode, bound, nodata) if lattice else unrounded
    q = quantize(images, base, mode, bound)
    raw = reconstruct(base, q, mode, bound, dtype)
    decoded = avoid_nodata(raw, nodata)
    # float32 rounding or the nodata rule broke the bound (NaN fails it too): code exactly instead
    if not _within(decoded, images, valid, bound):
        if bound > 0 and decoded is not raw and _within(raw, images, valid, bound):  # the nodata rule alone
            # (the lattice keeps decoded values off nodata: a safety net, never silent)
            warnings.warn(
                f"Expected every element within max_error={max_error} of its value. Got valid elements the "
                f"bound would put onto nodata={nodata} instead: coded this chunk losslessly (larger). Choose a "
                "nodata outside the data's values or nodata=None.", MaxErrorFallbackWarning, stacklevel=2)
        bound, lattice, base = 0.0, False, unrounded
        mode = MODE_INTEGER if dtype.kind in "iu" else MODE_FLOAT_EXACT
        q = quantize(images, base, mode, bound)
    if mode == MODE_FLOAT_EXACT and (grid_q := dn_grid_steps(images, valid, dn, scale)) is not None:
        mode, base, q = MODE_DN_GRID, dn, grid_q  # reflectance scaled from DN: count DN, not float32 ulps
    q = np.where(valid, q, 0)
    anchor, step = residual_anchor(base, mode, bound)
    if blocks is not None:  # x (bit for bit) and the base are constant over each block's valid elements: so is q
        coded, coded_valid = to_native(q, valid, blocks)
        if not np.array_equal(from_native(coded, blocks)[valid], q[valid]):  # never written wrong, whatever happens
            raise RuntimeError("internal error: residual steps not constant over blocks; please report it")
        q, valid = coded, coded_valid
        anchor = None if anchor is None else native_layout(anchor, blocks)
    params, payload = hierarchical.encode(q, valid, anchor, step)
    v2 = ResidualSection(bound, mode, hierarchical.STRIDE, params, payload, coder=hierarchical.CODER, lattice=lattice)
    # Coder 1's memoryless tiles can win where nearly every residual rounds to 0 (large bounds) or on small chunks:
    # tried there only (coder 2 below a quarter bit per element, or under 64 x 64 per band), keeping the smaller.
    size = len(v2.params) + len(v2.payload) + 1
    if 32 * size > max(int(valid.sum()), 1) and images.shape[-1] * images.shape[-2] >= CODER1_MIN_AREA:
        return v2
    tiles = tiled.choose_parameters(q, valid)
    v1 = ResidualSection(bound, mode, tiled.TILE, tiles.tobytes(), tiled.encode(q, valid, tiles), lattice=lattice)
    return v2 if size <= len(v1.params) + len(v1.payload) else v1


def _within(decoded: np.ndarray, images: np.ndarray, valid: np.ndarray, bound: float) -> bool:
    return bool((np.abs(decoded.astype(np.float64) - images.astype(np.float64))[valid] <= bound).all())


def residual_anchor(base: np.ndarray, mode: int, bound: float) -> tuple[np.ndarray | None, int]:
    """Coder 2's integer view of the base (on the grid of ``q * step``) and the step; None where there is none."""
    if mode in (MODE_INTEGER, MODE_DN_GRID):
        return base.astype(np.int64), 2 * int(bound) + 1
    if mode == MODE_FLOAT_EXACT:
        return _key(base), 1
    return None, 1


def decode(header: ChunkHeader, symbols, model, valid) -> np.ndarray:
    """Decoded images (B, C, H, W) in the header's dtype, before the nodata rule."""
    res = header.residual
    dtype = np.dtype(header.dtype)
    expected = MODE_INTEGER if dtype.kind in "iu" else (MODE_FLOAT, MODE_FLOAT_EXACT, MODE_DN_GRID)
    if res.mode not in np.atleast_1d(expected) or (res.mode == MODE_FLOAT) != (dtype.kind == "f" and res.max_error > 0):
        raise CorruptChunkError(f"Expected a residual mode matching dtype {dtype} and max_error. Got {res} instead.")
    if not 0 <= header.quality < model.int_synthesis.qualities:
        raise CorruptChunkError(f"Expected a base quality of model {model.name}. Got {header.quality} instead.")
    base, coded = coded_layout(header, symbols, model, valid)
    if res.coder == hierarchical.CODER:
        q = hierarchical.decode(res.params, res.payload, coded.valid, coded.anchor, coded.step, res.tile)
    else:
        q = tiled.decode(res.payload, coded.valid, tile_parameters(res.params), res.tile)
    if coded.blocks is not None:
        q = from_native(q, coded.blocks)
    return reconstruct(base, q, res.mode, res.max_error, dtype, header.float_scale)


class CodedLayout(NamedTuple):
    """Where and against what a chunk's residual steps are coded: ``valid`` elements of the layout (the native grid
    of replicated bands, :func:`tec_zarr.replication.to_native`), coder 2's ``anchor`` and ``step``, the ``blocks``."""

    valid: np.ndarray
    anchor: np.ndarray | None
    step: int
    blocks: tuple[Blocks, ...] | None


def coded_layout(header: ChunkHeader, symbols, model, valid) -> tuple[np.ndarray, CodedLayout]:
    """A residual chunk's base (data units) and the layout its residual steps are coded in, as the decoder finds
    them from the header, the latent symbols and the chunk's valid elements."""
    res = header.residual
    blocks = from_header(header.blocks)
    base = base_values(model, symbols, header.quality, header.shape[-2:], np.dtype(header.dtype),
                       header.float_scale, blocks, header.dn_offset, res.mode)
    if res.lattice:
        base = on_lattice(base, res.mode, res.max_error, header.nodata)
    anchor, step = residual_anchor(base, res.mode, res.max_error)
    if blocks is not None:
        anchor = None if anchor is None else native_layout(anchor, blocks)
        valid = native_valid(valid, blocks)
    return base, CodedLayout(valid, anchor, step, blocks)


def avoid_nodata(result: np.ndarray, nodata: float | None) -> np.ndarray:
    """A valid element must never read back as nodata: move it one step away (the decoder's rule)."""
    if nodata is None:
        return result
    value = np.asarray(nodata).astype(result.dtype)
    collide = result == value
    if collide.any():
        result = result.copy()
        if result.dtype.kind == "f":
            result[collide] = np.nextafter(value, np.inf, dtype=result.dtype)
        else:
            result[collide] = value + (1 if value < np.iinfo(result.dtype).max else -1)
    return result
