"""Residual coder 2: hierarchical, context-modelled coding of quantized residuals, from integers only.

Coder 1 (:mod:`.tiled`) codes each 64 x 64 tile memoryless. The residual has local structure it misses:
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
  the same pixel (``gamma`` in 0..``MAX_GAMMA`` quarters, ``ref``: both per (image, band)); with an optional second
  reference (added later) ``+ round((gamma D_ref + gamma2 D_ref2) / 4)``, ``gamma2`` in -8..8 quarters;
* the coded symbol is ``e = q - round(prediction / (4 step))``;
* its context: the level (root, diagonal, edge pass) and the class of an activity, ``4 x`` the mean spatial error
  magnitude of the decoded neighbours plus ``|D_ref| / step``, cut at :data:`THRESHOLDS`;
* per (image, band, level, class) the encoder writes ``(k, s)``: ``|e| >> s`` with table ``k`` (escape beyond it),
  ``s`` low bits and the sign of a non-zero ``e`` uniformly. Tables ``k < 24`` are coder 1's geometric ones;
  ``24 <= k < 48`` the hyperbolic-secant family (:data:`.tables.SECH_THETAS`), added later: flatter near
  0, closer to the context-modelled residuals (streams written before use ``k < 24`` only and decode as ever).

The encoder chooses ``alpha``, the references and gammas per (image, band) by estimated bits
(:func:`choose_predictors`), and ``(k, s)`` per group by the tables' exact code lengths (:func:`choose_tables`);
the decoder takes what it reads.

All of it is integer arithmetic (rounded divisions ties away from zero), so the decoder's probabilities equal the
encoder's on any machine. Parameters: per (image, band) ``alpha, ref, gamma`` (u8 each; ``ref`` 255 = none), then
the ``(k, s)`` pairs, then, only where some band has one, per (image, band) ``ref2`` (u8, 255 = none; an earlier
band other than ``ref``) and ``gamma2`` (int8), all zlib-compressed. Streams without the last block (all written
before it existed) read as ever. Payload: crc32 of the residuals and the payload length, then the range
coded words, as in coder 1.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..bitstream.payload import (
    check_residual_seal,
    deflate_parameters,
    inflate_parameters,
    residual_words,
    seal_residual,
)
from ..entropy.rangecoder import PayloadBudget
from ..errors import CorruptChunkError
from ..integer.layers import rdiv
from .tables import ESCAPE, MAX_SHIFT, PRECISION_BITS, TABLE_LENGTH, TABLES, any_table, decode_symbols, encode_symbols

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
ALPHAS = (0, 1, 2, 3, 4, NO_SPATIAL)  # the encoder's candidates (all that decode)


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


def _context(pred, d_ref, gamma, act, level, step, group_base, d_ref2=0, gamma2=0):
    """Final prediction (in steps) and context group of elements, from spatial P, D_ref, gamma and activity (and
    the optional second reference's D_ref2, gamma2; 0 leaves the prediction as without)."""
    qhat = rdiv(pred + rdiv(gamma * d_ref + gamma2 * d_ref2, 4), 4 * step)
    cls = np.searchsorted(THRESHOLDS, act + rdiv(np.abs(d_ref), step), side="right")
    return qhat, (group_base * LEVELS + level) * CLASSES + cls


@lru_cache(maxsize=None)
def _cost_tables() -> np.ndarray:
    return np.stack([-np.log2(any_table(k) / float(1 << PRECISION_BITS)) for k in range(TABLES)])


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
        hist = np.bincount(groups * TABLE_LENGTH + np.minimum(high, ESCAPE), minlength=n_groups * TABLE_LENGTH)
        escapes = np.maximum(high - ESCAPE, 0).astype(np.float64)
        extra = np.bincount(groups, weights=np.where(high >= ESCAPE, 2 * np.log2(escapes + 1) + 6, 0.0),
                            minlength=n_groups)
        costs = hist.reshape(n_groups, TABLE_LENGTH).astype(np.float64) @ cost.T + (extra + s * n)[:, None]
        k = np.argmin(costs, axis=1)
        c = costs[np.arange(n_groups), k]
        better = c < best
        best[better] = c[better]
        params[better, 0], params[better, 1] = k[better], s[better]
    params[n == 0] = 0
    return params


def _bits(e: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Encoder's estimate of the bits per group: the entropy of a geometric of the group's mean ``|e|``, plus signs."""
    m = np.abs(e).astype(np.float64)
    n = np.bincount(groups, minlength=n_groups)
    mu = np.bincount(groups, m, n_groups) / np.maximum(n, 1)
    h = (mu + 1) * np.log2(mu + 1) - mu * np.log2(np.maximum(mu, 1e-300))
    return n * h + np.bincount(groups, m != 0, n_groups)


def _spatial_alphas(q, valid, anchor, step, alphas, stride):
    """Encoder: :func:`_spatial_all` for several ``alpha``: the prediction is linear in ``alpha`` before rounding, so
    the neighbour sums are gathered once; only the activity is gathered per ``alpha``. Yields (pred, act)."""
    b, c, h, w = q.shape
    p = stride
    pad = lambda a: np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))  # noqa: E731
    qp, kp, ap = pad(4 * step * q), pad(valid.astype(np.int64)), pad(anchor)
    t0, t1, count = (np.zeros(q.shape, np.int64) for _ in range(3))
    geometry = []
    for _, y0, x0, st, offs in passes(stride):
        inner = (slice(None), slice(None), slice(y0, h, st), slice(x0, w, st))
        around = [(slice(None), slice(None), slice(p + y0 + dy, p + h + dy, st), slice(p + x0 + dx, p + w + dx, st))
                  for dy, dx in offs]
        geometry.append((inner, around))
        a0 = anchor[inner]
        for sl in around:
            k = kp[sl]
            t0[inner] += qp[sl] * k
            t1[inner] += (ap[sl] - a0) * k
            count[inner] += k
    count = np.maximum(count, 1)
    errp = np.zeros(qp.shape, np.int64)
    for alpha in alphas:
        pred = np.zeros(q.shape, np.int64) if alpha == NO_SPATIAL else rdiv(t0 + alpha * t1, count)
        errp[:, :, p : p + h, p : p + w] = np.where(valid, np.abs(q - rdiv(pred, 4 * step)), 0)
        total = np.zeros(q.shape, np.int64)
        for inner, around in geometry:
            for sl in around:
                total[inner] += errp[sl] * kp[sl]
        yield pred, (4 * total) // count


def _sample(h: int, w: int, fraction: int = 4) -> np.ndarray:
    """Flat pixel indices the encoder estimates bits on: a fixed scatter of about 1/fraction of them (all if few)."""
    n = h * w
    if n <= 4096:
        return np.arange(n)
    return np.flatnonzero(np.random.default_rng(n).random(n) * fraction < 1)


def choose_predictors(q, valid, anchor, step, stride):
    """Encoder side: per (image, band) ``alpha, ref, gamma, ref2, gamma2`` of the fewest estimated bits, band by
    band (greedy). Each int64 (B, C).

    Predictions and activities come from the whole image; the bits are estimated on a scatter of its pixels.
    ``alpha`` with the previous band as the reference, then ``ref`` (any earlier band, or none) and ``gamma`` (near
    the least-squares one) for that ``alpha``, then a second reference with least-squares gammas."""
    b, c, h, w = q.shape
    idx = _sample(h, w)
    flat = lambda a: a.reshape(b, c, h * w)[:, :, idx]  # noqa: E731
    alphas = ALPHAS if np.any(anchor != anchor.reshape(b, c, -1)[:, :, :1, None]) else (0, NO_SPATIAL)
    spatial = [(flat(p), flat(a)) for p, a in _spatial_alphas(q, valid, anchor, step, alphas, stride)]
    level = flat(np.broadcast_to(_levels(h, w, stride), q.shape))[:, 0]
    qs, vs = flat(q), flat(valid)
    n_groups = b * LEVELS * CLASSES
    gbase = (np.arange(b)[:, None] * LEVELS + level) * CLASSES
    alpha = np.zeros((b, c), np.int64)
    ref = np.full((b, c), NO_REF, np.int64)
    gamma = np.zeros((b, c), np.int64)
    ref2 = np.full((b, c), NO_REF, np.int64)
    gamma2 = np.zeros((b, c), np.int64)
    images = np.arange(b)
    ds = np.zeros(qs.shape, np.int64)

    def groups_of(band, act, d_ref):  # as _context's; invalid elements in an extra group, left out
        g = gbase + np.searchsorted(THRESHOLDS, act + rdiv(np.abs(d_ref), step), side="right")
        return np.where(vs[:, band], g, n_groups)

    def bits(band, pred, groups, inter=None):  # inter: gamma D_ref (+ gamma2 D_ref2), as in _context
        qhat = rdiv(pred if inter is None else pred + rdiv(inter, 4), 4 * step)
        return _bits((qs[:, band] - qhat).ravel(), groups.ravel(), n_groups + 1)[:-1].reshape(b, -1).sum(1)

    def ls_gamma(dcur, dr):
        num = np.sum(dcur.astype(np.float64) * dr, axis=1)
        den = np.maximum(np.sum(dr.astype(np.float64) ** 2, axis=1), 1.0)
        return np.clip(np.floor(4 * num / den), 0, MAX_GAMMA).astype(np.int64)

    for band in range(c):
        cost = []
        for pred, act in spatial:
            p, a = pred[:, band], act[:, band]
            cst = bits(band, p, groups_of(band, a, 0))
            if band:
                dcur = np.where(vs[:, band], 4 * step * qs[:, band] - p, 0)
                d_prev = ds[:, band - 1]
                inter = ls_gamma(dcur, d_prev)[:, None] * d_prev
                cst = np.minimum(cst, bits(band, p, groups_of(band, a, d_prev), inter))
            cost.append(cst)
        pick = np.argmin(np.stack(cost), axis=0)
        alpha[:, band] = np.asarray(alphas)[pick]
        pred = np.stack([spatial[k][0][i, band] for i, k in enumerate(pick)])
        act = np.stack([spatial[k][1][i, band] for i, k in enumerate(pick)])
        best = bits(band, pred, groups_of(band, act, 0))
        dcur = np.where(vs[:, band], 4 * step * qs[:, band] - pred, 0)
        for r in range(band):
            dr = ds[:, r]
            groups = groups_of(band, act, dr)
            g_ls = ls_gamma(dcur, dr)
            # gamma near the least-squares one (quarters), and 0 (the reference as context only)
            for g in np.unique(np.concatenate([[0], np.clip(g_ls[:, None] + np.arange(-1, 2), 0, MAX_GAMMA).ravel()])):
                cst = bits(band, pred, groups, g * dr)
                better = cst < best
                best = np.where(better, cst, best)
                ref[better, band], gamma[better, band] = r, g
        has = ref[:, band] != NO_REF
        if band < 2 or not has.any():
            ds[:, band] = dcur
            continue
        d1 = ds[images, np.where(has, ref[:, band], 0)] * has[:, None]
        groups = groups_of(band, act, d1)  # the context keeps the first reference
        pair = np.full(b, -1)
        for r in range(band):
            d2 = ds[:, r]
            g1s, g2s = _ls_pair(dcur, d1, d2)
            cst = bits(band, pred, groups, g1s[:, None] * d1 + g2s[:, None] * d2)
            better = has & (r != ref[:, band]) & (g2s != 0) & (cst < best)
            best = np.where(better, cst, best)
            pair[better] = r
            ref2[better, band], gamma2[better, band], gamma[better, band] = r, g2s[better], g1s[better]
        if (pair >= 0).any():  # refine the pair's gammas around the least-squares ones
            d2 = ds[images, np.maximum(pair, 0)]
            for dg1, dg2 in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                gg1 = np.clip(gamma[:, band] + dg1, 0, MAX_GAMMA)
                gg2 = np.clip(gamma2[:, band] + dg2, -MAX_GAMMA, MAX_GAMMA)
                cst = bits(band, pred, groups, gg1[:, None] * d1 + gg2[:, None] * d2)
                better = (pair >= 0) & (gg2 != 0) & (cst < best)
                best = np.where(better, cst, best)
                gamma[better, band], gamma2[better, band] = gg1[better], gg2[better]
        ds[:, band] = dcur
    return alpha, ref, gamma, ref2, gamma2


def _ls_pair(dcur, d1, d2):
    """Least-squares gammas (quarters, rounded, first clipped to 0..MAX_GAMMA, second to +-MAX_GAMMA) per image."""
    a11 = np.sum(d1.astype(np.float64) ** 2, axis=1) + 1.0  # + 1: never singular
    a22 = np.sum(d2.astype(np.float64) ** 2, axis=1) + 1.0
    d1 = d1.astype(np.float64)  # float: the products may exceed int64
    a12 = np.sum(d1 * d2, axis=1)
    b1 = np.sum(dcur * d1, axis=1)
    b2 = np.sum(d2.astype(np.float64) * dcur, axis=1)
    det = np.maximum(a11 * a22 - a12 * a12, 1e-9 * a11 * a22)
    g1 = 4 * (b1 * a22 - b2 * a12) / det
    g2 = 4 * (a11 * b2 - a12 * b1) / det
    return (np.clip(np.rint(g1), 0, MAX_GAMMA).astype(np.int64),
            np.clip(np.rint(g2), -MAX_GAMMA, MAX_GAMMA).astype(np.int64))


@lru_cache(maxsize=8)
def _levels(h: int, w: int, stride: int) -> np.ndarray:
    out = np.zeros((h, w), np.int64)
    for level, y0, x0, st, _ in passes(stride):
        out[y0::st, x0::st] = level
    return out


def encode(q: np.ndarray, valid: np.ndarray, anchor: np.ndarray | None, step: int,
           stride: int = STRIDE) -> tuple[bytes, bytes]:
    """``q`` int64 (B, C, H, W) residual steps coded where ``valid``; ``anchor`` the base on the same integer grid
    as ``q * step`` (None: no anchor). Returns (params, payload)."""
    import constriction

    b, c, h, w = q.shape
    q = np.where(valid, q, 0).astype(np.int64)
    anchor = np.zeros(q.shape, np.int64) if anchor is None else anchor.astype(np.int64)
    alpha, ref, gamma, ref2, gamma2 = choose_predictors(q, valid, anchor, step, stride)
    pred, act, level = _spatial_all(q, valid, anchor, step, alpha[:, :, None, None], stride)
    d = np.where(valid, 4 * step * q - pred, 0)
    images = np.arange(b)[:, None]
    d_ref = d[images, np.where(ref == NO_REF, 0, ref)] * (ref != NO_REF)[:, :, None, None]
    d_ref2 = d[images, np.where(ref2 == NO_REF, 0, ref2)] * (ref2 != NO_REF)[:, :, None, None]
    group_base = np.arange(b * c).reshape(b, c)[:, :, None, None]
    qhat, groups = _context(pred, d_ref, gamma[:, :, None, None], act, level, step, group_base,
                            d_ref2, gamma2[:, :, None, None])
    e = q - qhat
    n_groups = b * c * LEVELS * CLASSES
    tables = choose_tables(np.abs(e[valid]), groups[valid], n_groups)
    params = np.concatenate([np.stack([alpha, ref, gamma], -1).astype(np.uint8).ravel(), tables.ravel()])
    if (ref2 != NO_REF).any():  # the optional block: absent, the stream reads as before it existed
        params = np.concatenate([params, np.stack([ref2, gamma2 & 0xFF], -1).astype(np.uint8).ravel()])

    enc = constriction.stream.queue.RangeEncoder()
    for band in range(c):
        for pass_ in passes(stride):
            _, y0, x0, st, _ = pass_
            sl = (slice(None), band, slice(y0, h, st), slice(x0, w, st))
            v = valid[sl]
            encode_symbols(enc, e[sl][v], tables[groups[sl][v]])
    return deflate_parameters(params.tobytes()), seal_residual(q[valid], enc.get_compressed().tobytes())


def _read_params(data: bytes, b: int, c: int) -> tuple[np.ndarray, ...]:
    n_groups = b * c * LEVELS * CLASSES
    expected = 3 * b * c + 2 * n_groups
    longest = expected + 2 * b * c
    raw = inflate_parameters(data, longest)
    if len(raw) not in (expected, longest):
        raise CorruptChunkError(f"Expected {expected} or {longest} residual parameter bytes. Got {len(raw)} instead.")
    p = np.frombuffer(raw, np.uint8).astype(np.int64)
    head, tables = p[: 3 * b * c].reshape(b, c, 3), p[3 * b * c : expected].reshape(n_groups, 2)
    alpha, ref, gamma = head[..., 0], head[..., 1], head[..., 2]
    second = p[expected:].reshape(b, c, 2) if len(raw) == longest else np.zeros((b, c, 2), np.int64) + [NO_REF, 0]
    ref2, gamma2 = second[..., 0], (second[..., 1] ^ 0x80) - 0x80  # gamma2: int8
    bands = np.arange(c)[None, :]
    if len(raw) == longest and (((ref2 != NO_REF) & ((ref2 >= bands) | (ref2 == ref) | (ref == NO_REF))).any()
                                or (np.abs(gamma2) > MAX_GAMMA).any() or ((ref2 == NO_REF) & (gamma2 != 0)).any()
                                or (ref2 == NO_REF).all()):
        raise CorruptChunkError("Expected second references in range. Got others instead.")
    if ((alpha > NO_SPATIAL).any() or (gamma > MAX_GAMMA).any() or ((ref != NO_REF) & (ref >= bands)).any()
            or (tables[:, 0] >= TABLES).any() or (tables[:, 1] > MAX_SHIFT).any()):
        raise CorruptChunkError("Expected residual parameters in range. Got others instead.")
    return alpha, ref, gamma, tables, ref2, gamma2


def decode(params: bytes, data: bytes, valid: np.ndarray, anchor: np.ndarray | None, step: int,
           stride: int) -> np.ndarray:
    """Inverse of :func:`encode`: int64 residual steps shaped like ``valid``, 0 where not valid."""
    import constriction

    words = residual_words(data)
    if stride < 1 or stride > MAX_STRIDE or stride & (stride - 1):
        raise CorruptChunkError(f"Expected a residual stride, a power of two up to {MAX_STRIDE}. Got {stride} instead.")
    b, c, h, w = valid.shape
    alpha, ref, gamma, tables, ref2, gamma2 = _read_params(params, b, c)
    anchor = np.zeros(valid.shape, np.int64) if anchor is None else anchor.astype(np.int64)
    state = _State(valid.shape, anchor, stride)
    d = np.zeros(valid.shape, np.int64)
    out = np.zeros(valid.shape, np.int64)
    dec = constriction.stream.queue.RangeDecoder(words)
    budget = PayloadBudget(len(data) - 4, "residual payload")
    images = np.arange(b)
    try:
        for band in range(c):
            has_ref = ref[:, band] != NO_REF
            ref_band = np.where(has_ref, ref[:, band], 0)
            g = np.where(has_ref, gamma[:, band], 0)[:, None, None, None]
            has_ref2 = ref2[:, band] != NO_REF
            ref2_band = np.where(has_ref2, ref2[:, band], 0)
            g2 = np.where(has_ref2, gamma2[:, band], 0)[:, None, None, None]
            any2 = bool(has_ref2.any())
            a4 = alpha[:, band][:, None, None, None]
            base = (images * c + band)[:, None, None, None]
            for pass_ in passes(stride):
                sl, pred, act = state.predict(slice(band, band + 1), a4, step, pass_)
                inner = _inner(sl, h, w, state.pad)
                v = valid[inner]
                d_ref = d[images, ref_band][:, None, inner[2], inner[3]] * has_ref[:, None, None, None]
                d_ref2 = d[images, ref2_band][:, None, inner[2], inner[3]] * has_ref2[:, None, None, None] if any2 else 0
                qhat, groups = _context(pred, d_ref, g, act, pass_[0], step, base, d_ref2, g2)
                q = qhat.copy()
                q[v] += decode_symbols(dec, tables[groups[v]], budget)
                state.fill(sl, q, v, pred, step)
                out[inner] = np.where(v, q, 0)
                d[inner] = np.where(v, 4 * step * q - pred, 0)
    except (AssertionError, ValueError, RuntimeError, OverflowError) as e:  # constriction's words for invalid data
        raise CorruptChunkError(f"Expected a decodable residual payload. Got {type(e).__name__}: {e} instead.") from None
    check_residual_seal(data, out[valid], dec.maybe_exhausted())
    return out
