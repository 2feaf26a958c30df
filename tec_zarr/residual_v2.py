"""Residual coder 2: hierarchical, context-modelled coding of quantized residuals, from integers only.

Coder 1 (:mod:`tec_zarr.residual`) codes each 64 x 64 tile memoryless. The residual has local structure it misses:
its magnitude varies with the neighbours' and across bands, and for smooth bands the pixels are better predicted
from their neighbours than from the base. Coder 2 codes the bands in order and, within a band, the pixels in
hierarchical passes (strides ``STRIDE``, ``STRIDE/2``, ..., 1; per stride ``s`` the diagonal centres ``(s, s)`` of
the ``2s`` grid, then the edge midpoints ``(0, s)`` and ``(s, 0)``). Everything a pixel's model depends on has been
decoded earlier, so each pass decodes in one vectorized step:

* spatial prediction, in quarter data units (of the step grid): the mean over the decoded neighbours of
  ``4 step q_n + alpha (a_n - a)`` where ``a`` is the anchor (the base, integers) and ``alpha/4`` in 0..1 is chosen
  per (image, band): 0 predicts the residual from its neighbours', 4 predicts the value from its neighbours'
  values; ``alpha = NO_SPATIAL`` predicts 0 (the base; best when most residuals round to 0).
  ``D = 4 step q - P`` is the pixel's spatial prediction error;
* inter-band prediction: ``+ round(gamma D_ref / 4)``, ``D_ref`` the spatial error of an earlier band ``ref`` at
  the same pixel (``gamma`` in 0..``MAX_GAMMA`` quarters, ``ref``: both per (image, band));
* the coded symbol is ``e = q - round(prediction / (4 step))``;
* its context: the level (root, diagonal, edge pass) and the class of an activity, ``4 x`` the mean spatial error
  magnitude of the decoded neighbours plus ``|D_ref| / step``, cut at :data:`THRESHOLDS`;
* per (image, band, level, class) the encoder writes coder 1's ``(k, s)``: ``|e| >> s`` with geometric table
  ``k`` (escape beyond it), ``s`` low bits and the sign of a non-zero ``e`` uniformly.

All of it is integer arithmetic (rounded divisions ties away from zero), so the decoder's probabilities equal the
encoder's on any machine. Parameters: per (image, band) ``alpha, ref, gamma`` (u8 each; ``ref`` 255 = none), then
the ``(k, s)`` pairs, all zlib-compressed. Payload: crc32 of the residuals and the payload length, then the range
coded words, as in coder 1.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from .errors import CorruptChunkError
from .residual import MAX_SHIFT, PRECISION_BITS, TABLE_LENGTH, THETAS, _crc, _decode_escape, _encode_escape, _model
from .residual import _uniform, table

CODER = 2
STRIDE = 8
MAX_STRIDE = 64
THRESHOLDS = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
                       2048, 3072, 4096], np.int64)
CLASSES = len(THRESHOLDS) + 1
LEVELS = 3  # root, diagonal centres, edge midpoints
MAX_ALPHA = 4
NO_SPATIAL = 5  # alpha value: no spatial prediction
MAX_GAMMA = 8
NO_REF = 255
ALPHAS = (0, 2, 4, NO_SPATIAL)  # the encoder's candidates; any 0..MAX_ALPHA or NO_SPATIAL decodes
GAMMAS = (0, 1, 2, 3, 4, 5, 6)
_CHUNK_BITS = 16
_ESCAPE = TABLE_LENGTH - 1


def rdiv(a: np.ndarray, b) -> np.ndarray:
    """round(a / b) for b > 0, ties away from zero, in integers."""
    half = b // 2
    return np.where(a >= 0, (a + half) // b, -((half - a) // b))


@lru_cache(maxsize=None)
def passes(stride: int) -> tuple:
    """(level, y0, x0, step, neighbour offsets) in coding order."""
    out = [(0, 0, 0, stride, ())]
    s = stride // 2
    while s >= 1:
        out.append((1, s, s, 2 * s, ((-s, -s), (-s, s), (s, -s), (s, s))))
        cross = ((-s, 0), (s, 0), (0, -s), (0, s))
        out += [(2, 0, s, 2 * s, cross), (2, s, 0, 2 * s, cross)]
        s //= 2
    return tuple(out)


class _State:
    """Padded decoded residuals, known flags and spatial error magnitudes, (B, C, H + 2 pad, W + 2 pad)."""

    def __init__(self, shape, anchor: np.ndarray, stride: int):
        b, c, h, w = shape
        self.pad, self.h, self.w = stride, h, w
        p = self.pad
        self.q = np.zeros((b, c, h + 2 * p, w + 2 * p), np.int64)
        self.known = np.zeros_like(self.q)
        self.err = np.zeros_like(self.q)
        self.anchor = np.zeros_like(self.q)
        self.anchor[:, :, p : p + h, p : p + w] = anchor

    def slices(self, bands: slice, y0: int, x0: int, step: int, dy: int = 0, dx: int = 0):
        p = self.pad
        return (slice(None), bands, slice(p + y0 + dy, p + self.h + dy, step), slice(p + x0 + dx, p + self.w + dx, step))

    def predict(self, bands: slice, alpha4: np.ndarray, step: int, pass_):
        """Spatial prediction P (quarter units) and activity of one pass's pixels, for the bands selected."""
        _, y0, x0, st, offs = pass_
        sl = self.slices(bands, y0, x0, st)
        a0 = self.anchor[sl]
        if not offs:
            zero = np.zeros(a0.shape, np.int64)
            return sl, zero, zero
        total = np.zeros(a0.shape, np.int64)
        count = np.zeros(a0.shape, np.int64)
        err = np.zeros(a0.shape, np.int64)
        for dy, dx in offs:
            s2 = self.slices(bands, y0, x0, st, dy, dx)
            k = self.known[s2]
            total += (4 * step * self.q[s2] + np.minimum(alpha4, MAX_ALPHA) * (self.anchor[s2] - a0)) * k
            count += k
            err += self.err[s2] * k
        count = np.maximum(count, 1)
        return sl, np.where(alpha4 == NO_SPATIAL, 0, rdiv(total, count)), (4 * err) // count

    def fill(self, sl, q: np.ndarray, valid: np.ndarray, spatial: np.ndarray, step: int) -> None:
        self.q[sl] = np.where(valid, q, 0)
        self.known[sl] = valid
        self.err[sl] = np.where(valid, np.abs(q - rdiv(spatial, 4 * step)), 0)


def _inner(sl, h: int, w: int, pad: int):
    """The same pass slice, on unpadded (B, C, H, W) arrays."""
    return sl[:2] + (slice(sl[2].start - pad, h, sl[2].step), slice(sl[3].start - pad, w, sl[3].step))


def _spatial_all(q, valid, anchor, step, alpha4, stride):
    """Encoder: spatial prediction P, its activity and level for every element, all bands at once."""
    st = _State(q.shape, anchor, stride)
    shape = q.shape
    pred, act, level = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for pass_ in passes(stride):
        sl, p, a = st.predict(slice(None), alpha4, step, pass_)
        inner = _inner(sl, st.h, st.w, st.pad)
        pred[inner], act[inner], level[inner] = p, a, pass_[0]
        st.fill(sl, q[inner], valid[inner], p, step)
    return pred, act, level


def _context(pred, d_ref, gamma, act, level, step, group_base):
    """Final prediction (in steps) and context group of elements, from spatial P, D_ref, gamma and activity."""
    qhat = rdiv(pred + rdiv(gamma * d_ref, 4), 4 * step)
    cls = np.searchsorted(THRESHOLDS, act + rdiv(np.abs(d_ref), step), side="right")
    return qhat, (group_base * LEVELS + level) * CLASSES + cls


def _cost_tables() -> np.ndarray:
    return np.stack([-np.log2(table(k) / float(1 << PRECISION_BITS)) for k in range(len(THETAS))])


def choose_tables(m: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Encoder side: per group the (k, s) of the fewest estimated bits for magnitudes ``m``. uint8 (groups, 2)."""
    cost = _cost_tables()
    n = np.bincount(groups, minlength=n_groups).astype(np.float64)
    mean = np.bincount(groups, weights=m.astype(np.float64), minlength=n_groups) / np.maximum(n, 1)
    centre = np.clip(np.floor(np.log2(mean + 1)).astype(np.int64) - 2, 0, MAX_SHIFT)
    best = np.full(n_groups, np.inf)
    params = np.zeros((n_groups, 2), np.uint8)
    for offset in (-1, 0, 1, 2):
        s = np.clip(centre + offset, 0, MAX_SHIFT)
        high = m >> s[groups]
        hist = np.bincount(groups * TABLE_LENGTH + np.minimum(high, _ESCAPE), minlength=n_groups * TABLE_LENGTH)
        escapes = np.maximum(high - _ESCAPE, 0).astype(np.float64)
        extra = np.bincount(groups, weights=np.where(high >= _ESCAPE, 2 * np.log2(escapes + 1) + 6, 0.0),
                            minlength=n_groups)
        costs = hist.reshape(n_groups, TABLE_LENGTH).astype(np.float64) @ cost.T + (extra + s * n)[:, None]
        k = np.argmin(costs, axis=1)
        c = costs[np.arange(n_groups), k]
        better = c < best
        best[better] = c[better]
        params[better, 0], params[better, 1] = k[better], s[better]
    params[n == 0] = 0
    return params


def encode(q: np.ndarray, valid: np.ndarray, anchor: np.ndarray | None, step: int,
           stride: int = STRIDE) -> tuple[bytes, bytes]:
    """``q`` int64 (B, C, H, W) residual steps coded where ``valid``; ``anchor`` the base on the same integer grid
    as ``q * step`` (None: no anchor). Returns (params, payload)."""
    import constriction

    b, c, h, w = q.shape
    q = np.where(valid, q, 0).astype(np.int64)
    anchor = np.zeros(q.shape, np.int64) if anchor is None else anchor.astype(np.int64)
    alphas = ALPHAS if np.any(anchor != anchor.reshape(b, c, -1)[:, :, :1, None]) else (0, NO_SPATIAL)
    best = None
    for a in alphas:
        pred, act, level = _spatial_all(q, valid, anchor, step, a, stride)
        l1 = np.sum(np.where(valid, np.abs(q - rdiv(pred, 4 * step)), 0), axis=(2, 3))
        if best is None:
            best = [l1, pred, act, np.full((b, c), a, np.int64)]
            continue
        better = l1 < best[0]
        best[0] = np.where(better, l1, best[0])
        for i, new in ((1, pred), (2, act)):
            best[i] = np.where(better[:, :, None, None], new, best[i])
        best[3] = np.where(better, a, best[3])
    _, pred, act, alpha = best
    d = np.where(valid, 4 * step * q - pred, 0)
    ref = np.full((b, c), NO_REF, np.int64)
    gamma = np.zeros((b, c), np.int64)
    d_ref = np.zeros_like(d)
    for band in range(1, c):
        ref[:, band] = band - 1
        dr = d[:, band - 1]
        costs = [np.sum(np.where(valid[:, band], np.abs(q[:, band] - rdiv(pred[:, band] + rdiv(g * dr, 4), 4 * step)),
                                 0), axis=(1, 2)) for g in GAMMAS]
        gamma[:, band] = np.asarray(GAMMAS)[np.argmin(np.stack(costs), axis=0)]
        d_ref[:, band] = dr
    group_base = np.arange(b * c).reshape(b, c)[:, :, None, None]
    qhat, groups = _context(pred, d_ref, gamma[:, :, None, None], act, level, step, group_base)
    e = q - qhat
    n_groups = b * c * LEVELS * CLASSES
    tables = choose_tables(np.abs(e[valid]), groups[valid], n_groups)
    params = np.concatenate([np.stack([alpha, ref, gamma], -1).astype(np.uint8).ravel(), tables.ravel()])

    enc = constriction.stream.queue.RangeEncoder()
    for band in range(c):
        for pass_ in passes(stride):
            _, y0, x0, st, _ = pass_
            sl = (slice(None), band, slice(y0, h, st), slice(x0, w, st))
            v = valid[sl]
            _encode_symbols(enc, e[sl][v], tables[groups[sl][v]])
    words = enc.get_compressed().tobytes()
    payload = _crc(q[valid], len(words)).to_bytes(4, "little") + words
    return zlib.compress(params.tobytes(), 9), payload


def _encode_symbols(enc, e: np.ndarray, ks: np.ndarray) -> None:
    k, s = ks[:, 0].astype(np.int64), ks[:, 1].astype(np.int64)
    m = np.abs(e)
    high = m >> s
    order = np.argsort(k, kind="stable")
    for kk in np.unique(k):
        h = high[order[k[order] == kk]]
        enc.encode(np.minimum(h, _ESCAPE).astype(np.int32), _model(int(kk)))
        for z in h[h >= _ESCAPE] - _ESCAPE:
            _encode_escape(enc, int(z))
    order = np.argsort(s, kind="stable")
    for ss in np.unique(s):
        if ss == 0:
            continue
        low = m[order[s[order] == ss]] & ((1 << int(ss)) - 1)
        for shift in range(0, int(ss), _CHUNK_BITS):
            bits = min(_CHUNK_BITS, int(ss) - shift)
            enc.encode(((low >> shift) & ((1 << bits) - 1)).astype(np.int32), _uniform(bits))
    enc.encode((e[m != 0] < 0).astype(np.int32), _uniform(1))


def _decode_symbols(dec, ks: np.ndarray) -> np.ndarray:
    k, s = ks[:, 0].astype(np.int64), ks[:, 1].astype(np.int64)
    m = np.zeros(k.size, np.int64)
    order = np.argsort(k, kind="stable")
    for kk in np.unique(k):
        sel = order[k[order] == kk]
        h = dec.decode(_model(int(kk)), sel.size).astype(np.int64)
        for i in np.flatnonzero(h == _ESCAPE):
            h[i] = _ESCAPE + _decode_escape(dec)
        m[sel] = h
    m <<= s
    order = np.argsort(s, kind="stable")
    for ss in np.unique(s):
        if ss == 0:
            continue
        sel = order[s[order] == ss]
        low = np.zeros(sel.size, np.int64)
        for shift in range(0, int(ss), _CHUNK_BITS):
            bits = min(_CHUNK_BITS, int(ss) - shift)
            low |= dec.decode(_uniform(bits), sel.size).astype(np.int64) << shift
        m[sel] |= low
    nonzero = np.flatnonzero(m)
    negative = dec.decode(_uniform(1), nonzero.size).astype(bool)
    m[nonzero[negative]] *= -1
    return m


def _read_params(data: bytes, b: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_groups = b * c * LEVELS * CLASSES
    expected = 3 * b * c + 2 * n_groups
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, expected + 1)
        if d.unconsumed_tail or not d.eof or d.unused_data:
            raise CorruptChunkError("Expected one zlib stream of residual parameters. Got more data instead.")
    except zlib.error as e:
        raise CorruptChunkError(f"Expected zlib-compressed residual parameters. Got {e} instead.") from None
    if len(raw) != expected:
        raise CorruptChunkError(f"Expected {expected} residual parameter bytes. Got {len(raw)} instead.")
    p = np.frombuffer(raw, np.uint8).astype(np.int64)
    head, tables = p[: 3 * b * c].reshape(b, c, 3), p[3 * b * c :].reshape(n_groups, 2)
    alpha, ref, gamma = head[..., 0], head[..., 1], head[..., 2]
    bands = np.arange(c)[None, :]
    if ((alpha > NO_SPATIAL).any() or (gamma > MAX_GAMMA).any() or ((ref != NO_REF) & (ref >= bands)).any()
            or (tables[:, 0] >= len(THETAS)).any() or (tables[:, 1] > MAX_SHIFT).any()):
        raise CorruptChunkError("Expected residual parameters in range. Got others instead.")
    return alpha, ref, gamma, tables


def decode(params: bytes, data: bytes, valid: np.ndarray, anchor: np.ndarray | None, step: int,
           stride: int) -> np.ndarray:
    """Inverse of :func:`encode`: int64 residual steps shaped like ``valid``, 0 where not valid."""
    import constriction

    if len(data) < 4 or len(data) % 4:
        raise CorruptChunkError(f"Expected a residual payload of whole 32-bit words. Got {len(data)} bytes instead.")
    if stride < 1 or stride > MAX_STRIDE or stride & (stride - 1):
        raise CorruptChunkError(f"Expected a residual stride, a power of two up to {MAX_STRIDE}. Got {stride} instead.")
    b, c, h, w = valid.shape
    alpha, ref, gamma, tables = _read_params(params, b, c)
    anchor = np.zeros(valid.shape, np.int64) if anchor is None else anchor.astype(np.int64)
    state = _State(valid.shape, anchor, stride)
    d = np.zeros(valid.shape, np.int64)
    out = np.zeros(valid.shape, np.int64)
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data[4:], np.uint32).copy())
    images = np.arange(b)
    try:
        for band in range(c):
            has_ref = ref[:, band] != NO_REF
            ref_band = np.where(has_ref, ref[:, band], 0)
            g = np.where(has_ref, gamma[:, band], 0)[:, None, None, None]
            a4 = alpha[:, band][:, None, None, None]
            base = (images * c + band)[:, None, None, None]
            for pass_ in passes(stride):
                sl, pred, act = state.predict(slice(band, band + 1), a4, step, pass_)
                inner = _inner(sl, h, w, state.pad)
                v = valid[inner]
                d_ref = d[images, ref_band][:, None, inner[2], inner[3]] * has_ref[:, None, None, None]
                qhat, groups = _context(pred, d_ref, g, act, pass_[0], step, base)
                q = qhat.copy()
                q[v] += _decode_symbols(dec, tables[groups[v]])
                state.fill(sl, q, v, pred, step)
                out[inner] = np.where(v, q, 0)
                d[inner] = np.where(v, 4 * step * q - pred, 0)
    except (AssertionError, ValueError, RuntimeError, OverflowError) as e:  # constriction's words for invalid data
        raise CorruptChunkError(f"Expected a decodable residual payload. Got {type(e).__name__}: {e} instead.") from None
    if _crc(out[valid], len(data) - 4).to_bytes(4, "little") != data[:4] or not dec.maybe_exhausted():
        raise CorruptChunkError("Expected the residual payload to decode to its recorded CRC32. Got other values instead.")
    return out
