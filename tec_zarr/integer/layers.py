"""Exact integer layers: convolutions of integers held in float64, every partial sum below 2**52.

Products and sums of such integers are exact in IEEE 754 double precision in any summation order, with or without
FMA, so BLAS (``np.matmul``) returns the same integers on every machine. Callers check their weights' bounds on load
against :data:`CLIP_BITS` (activations are clipped to +-2**22) and :data:`EXACT_LIMIT`.
"""

from __future__ import annotations

import math
import weakref

import numpy as np

KERNEL = 5
STRIDE = 2
CLIP_BITS = 22  # activations are clipped to +-2**22: the static bounds then hold for any input
EXACT_LIMIT = 2.0**52
PATCH_BYTES = 1 << 24  # patch matrices are built a block of rows at a time, at most this large


def rdiv(a: np.ndarray, b) -> np.ndarray:
    """round(a / b) for integer arrays and b > 0, ties away from zero: the same on every machine."""
    r = (np.abs(a) + b // 2) // b
    return np.where(a >= 0, r, -r)


def activation(acc: np.ndarray, shift: int, relu: bool) -> np.ndarray:
    """``floor(acc / 2**shift)`` clipped to +-2**CLIP_BITS, then ReLU where asked: the next layer's integers."""
    limit = 2.0**CLIP_BITS
    x = np.clip(np.floor(acc * 2.0**-shift), -limit, limit)
    return np.maximum(x, 0.0, out=x) if relu else x


def deconv(x: np.ndarray, w: np.ndarray, b: np.ndarray, rows_per_block: int, matmul) -> np.ndarray:
    """ConvTranspose2d(k5, s2, p2, output_padding 1) of integer (B, H, W, Cin): exact integer (B, 2H, 2W, Cout)."""
    bsz, h, wd, cin = x.shape
    cout = b.shape[0]
    pad = KERNEL // 2
    # out[2i + k - pad] += in[i] * w[k]: accumulate into a frame of pad rows/columns each side, then crop.
    frame = np.zeros((bsz, STRIDE * h + KERNEL - 1, STRIDE * wd + KERNEL - 1, cout), np.float64)
    for r0 in range(0, h, rows_per_block):
        rows = x[:, r0 : r0 + rows_per_block]
        n = rows.shape[1]
        taps = matmul(rows.reshape(-1, cin), w).reshape(bsz, n, wd, KERNEL, KERNEL, cout)
        for ky in range(KERNEL):
            y0 = STRIDE * r0 + ky
            for kx in range(KERNEL):
                frame[:, y0 : y0 + STRIDE * n : STRIDE, kx : kx + STRIDE * wd : STRIDE] += taps[:, :, :, ky, kx]
    return frame[:, pad : pad + STRIDE * h, pad : pad + STRIDE * wd] + b


def block_deconv(x: np.ndarray, w: np.ndarray, block: int, matmul) -> np.ndarray:
    """ConvTranspose2d(kernel = stride = block) of (B, h, w, M) with w (M, block * block * C): (B, h*block, w*block, C).

    Blocks do not overlap, so each output element is one matmul sum: exact for bounded integers.
    """
    bsz, h, wd, m = x.shape
    cout = w.shape[1] // (block * block)
    taps = matmul(x.reshape(-1, m), w).reshape(bsz, h, wd, block, block, cout)
    return np.ascontiguousarray(taps.transpose(0, 1, 3, 2, 4, 5)).reshape(bsz, h * block, wd * block, cout)


def linear_matrix(w: np.ndarray) -> np.ndarray:
    """ConvTranspose weight (M, C, b, b) -> (M, b * b * C) with columns ordered (row, col, band)."""
    return np.ascontiguousarray(np.transpose(w, (0, 2, 3, 1)).reshape(w.shape[0], -1))


def deconv_matrix(w: np.ndarray) -> np.ndarray:
    """(Cin, Cout, 5, 5) -> (Cin, 25 * Cout) with columns ordered (ky, kx, cout)."""
    return np.ascontiguousarray(np.transpose(w, (0, 2, 3, 1)).reshape(w.shape[0], -1))


def live_channels(x: np.ndarray) -> np.ndarray | None:
    """The input channels of ``x`` (..., Cin) that are not 0 at every position (None: all of them). Dead ReLUs
    and latent channels quantized to 0 contribute exact zeros: dropping them and their weight rows leaves every
    integer sum unchanged, in any order, and the static bounds hold for the fewer terms too."""
    live = np.flatnonzero(np.any(x, axis=tuple(range(x.ndim - 1))))
    if live.size == x.shape[-1]:
        return None
    return live if live.size else np.arange(1)  # one (zero) channel keeps the matrix shapes non-empty


def conv3(x: np.ndarray, w: np.ndarray, b, matmul) -> np.ndarray:
    """Conv2d(k3, s1, p1) of integer (B, H, W, Cin) with w (9, Cin, Cout), taps (ky, kx): exact (B, H, W, Cout),
    over the live input channels only; by Winograd (:func:`winograd_conv3`) where it is exact and pays."""
    live = live_channels(x)
    if live is not None:
        x = x[..., live]
    if x.shape[-1] >= WINOGRAD_MIN_CHANNELS and _winograd_fits(x, w):
        return winograd_conv3(x, w, b, matmul, live)
    return direct_conv(x, w if live is None else w[:, live], b, matmul)


def direct_conv(x: np.ndarray, w: np.ndarray, b, matmul) -> np.ndarray:
    """Conv2d(k, stride 1, padding k // 2) of integer (B, H, W, Cin) with w (k * k, Cin, Cout), taps (ky, kx), for
    any odd k, as one product over all taps (patches of k * k * Cin columns) per block of rows: fewer, larger matrix
    products, exact for bounded integers."""
    taps, cin = w.shape[:2]
    k = math.isqrt(taps)
    bsz, h, wd, _ = x.shape
    p = k // 2
    padded = np.zeros((bsz, h + 2 * p, wd + 2 * p, cin), np.float64)
    padded[:, p : p + h, p : p + wd] = x
    out = np.empty((bsz, h, wd, w.shape[-1]), np.float64)
    rows = max(1, PATCH_BYTES // max(1, bsz * wd * taps * cin * 8))
    for top in range(0, h, rows):
        n = min(rows, h - top)
        patches = np.concatenate([padded[:, top + ky : top + ky + n, kx : kx + wd]
                                  for ky in range(k) for kx in range(k)], axis=-1)
        out[:, top : top + n] = matmul(patches.reshape(-1, taps * cin), w.reshape(-1, w.shape[-1])).reshape(bsz, n, wd, -1)
    return out + b


def conv_matrix(w: np.ndarray) -> np.ndarray:
    """Conv2d weight (Cout, Cin, k, k) -> (k * k, Cin, Cout), taps ordered (ky, kx)."""
    k = w.shape[-1]
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)).reshape(k * k, w.shape[1], w.shape[0]))


# -- Winograd F(2x2, 3x3) in integers ---------------------------------------------------------------------------------
# Y = A^T [(G g G^T) * (B^T d B)] A per 4x4 input tile d and 2x2 output tile: 16 products instead of 36. G holds
# halves; with 2G every transform is integer and the result is 4 Y, an integer, so Y = 0.25 * (4 Y) exactly.
# Its transforms cost memory passes, paid back from about 32 input channels up.
WINOGRAD_MIN_CHANNELS = 32  # measured: with fewer input channels the 16 thin products lose to one wide one
WINOGRAD_TILE_ROWS = 8  # tile rows per block: the 16 products' outputs stay a few MB
_WINOGRAD_G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.float64)
_WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
_winograd_cache: dict[int, tuple] = {}


def _winograd_weights(w: np.ndarray) -> tuple[np.ndarray, float]:
    """(16, Cin, Cout) transformed weights (2G) g (2G)^T, and the bound on |4 Y| and on every partial sum per unit
    of max|input|: |B^T d B| <= 4 max|d| (two +-1 per row of B^T), times sum_c |U| per frequency, summed over the
    frequencies each output takes with |A^T| weights. Cached per weight array (weights live as long as models)."""
    found = _winograd_cache.get(id(w))
    if found is not None and found[0]() is w:
        return found[1], found[2]
    cin, cout = w.shape[1:]
    key = id(w)
    u = np.einsum("ia,abco,jb->ijco", _WINOGRAD_G2, w.reshape(3, 3, cin, cout), _WINOGRAD_G2)
    at = np.abs(_WINOGRAD_AT)
    bound = 4.0 * float(np.einsum("pi,qj,ijo->pqo", at, at, np.abs(u).sum(2)).max())
    u = np.ascontiguousarray(u.reshape(16, cin, cout))
    _winograd_cache[key] = (weakref.ref(w, lambda _: _winograd_cache.pop(key, None)), u, bound)
    return u, bound


def _winograd_fits(x: np.ndarray, w: np.ndarray) -> bool:
    """Even sides, and every integer of :func:`winograd_conv3` below 2**52 for this ``x`` (checked per call: the
    static 2**CLIP_BITS input bound leaves too little room, real inputs leave plenty). The bound over all of
    ``w``'s input channels also bounds any subset of them."""
    if x.shape[1] % 2 or x.shape[2] % 2 or x.size == 0:
        return False
    return _winograd_weights(w)[1] * float(np.abs(x).max()) < EXACT_LIMIT


def winograd_conv3(x: np.ndarray, w: np.ndarray, b, matmul, live: np.ndarray | None = None) -> np.ndarray:
    """:func:`conv3` by Winograd F(2x2, 3x3), a block of tile rows at a time: 16 products (tiles, Cin) @ (Cin, Cout).
    ``x`` holds ``w``'s input channels ``live`` (None: all). Exact where :func:`_winograd_fits`: integers below
    2**52 in every sum, whatever its order."""
    bsz, h, wd, cin = x.shape
    u, _ = _winograd_weights(w)
    u = u if live is None else u[:, live]
    cout = u.shape[-1]
    padded = np.zeros((bsz, h + 2, wd + 2, cin), np.float64)
    padded[:, 1:-1, 1:-1] = x
    out = np.empty((bsz, h // 2, 2, wd // 2, 2, cout), np.float64)
    for top in range(0, h // 2, WINOGRAD_TILE_ROWS):
        n = min(WINOGRAD_TILE_ROWS, h // 2 - top)
        v = np.empty((4, 4, bsz, n, wd // 2, cin), np.float64)
        rows = [padded[:, 2 * top + a : 2 * top + a + 2 * n : 2] for a in range(4)]  # row a of every tile
        for i, t in enumerate(_bt(rows)):  # B^T d, then (B^T d) B
            _bt([t[:, :, q : q + wd : 2] for q in range(4)], out=v[i])
        v = v.reshape(16, -1, cin)
        m = np.matmul(v, u) if matmul is np.matmul else np.stack([matmul(vf, uf) for vf, uf in zip(v, u)])
        m = m.reshape(4, 4, bsz, n, wd // 2, cout)
        for p, s in enumerate(_at(list(m))):  # A^T M, then (A^T M) A = 4 Y at output pixel (p, q) of each tile
            for q, y in enumerate(_at(list(s))):
                np.multiply(y, 0.25, out=out[:, top : top + n, p, :, q])  # exact: an integer times 2**-2
    out = out.reshape(bsz, h, wd, cout)
    out += b
    return out


def _bt(d: list[np.ndarray], out=None) -> list[np.ndarray]:
    """B^T along a list of 4 arrays: d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    out = [None] * 4 if out is None else out
    steps = ((0, 2, np.subtract), (1, 2, np.add), (2, 1, np.subtract), (1, 3, np.subtract))
    return [op(d[i], d[j], out=o) for (i, j, op), o in zip(steps, out)]


def _at(m: list[np.ndarray]) -> list[np.ndarray]:
    """A^T along a list of 4 arrays: m0 + m1 + m2, m1 - m2 - m3."""
    first = np.add(m[0], m[1])
    first += m[2]
    second = np.subtract(m[1], m[2])
    second -= m[3]
    return [first, second]
