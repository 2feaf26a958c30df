"""Exact integer layers: convolutions of integers held in float64, every partial sum below 2**52.

Products and sums of such integers are exact in IEEE 754 double precision in any summation order, with or without
FMA, so BLAS (``np.matmul``) returns the same integers on every machine. Callers check their weights' bounds on load
against :data:`CLIP_BITS` (activations are clipped to +-2**22) and :data:`EXACT_LIMIT`.
"""

from __future__ import annotations

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


def live_channels(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (..., Cin) and ``w`` (..., Cin, Cout) without the input channels that are 0 at every position (dead
    ReLUs, latent channels quantized to 0). Their products are exact zeros, so every sum is the same integer, in
    any order; the static bounds hold for the fewer terms too."""
    live = np.flatnonzero(np.any(x, axis=tuple(range(x.ndim - 1))))
    if live.size == x.shape[-1]:
        return x, w
    live = live if live.size else np.arange(1)  # one (zero) channel keeps the matrix shapes non-empty
    return x[..., live], w[..., live, :]


def conv3(x: np.ndarray, w: np.ndarray, b, matmul) -> np.ndarray:
    """Conv2d(k3, s1, p1) of integer (B, H, W, Cin) with w (9, Cin, Cout), taps (ky, kx): exact (B, H, W, Cout).
    One product over all 9 taps (patches of 9 Cin columns) per block of rows: fewer, larger matrix products."""
    x, w = live_channels(x, w)
    bsz, h, wd, cin = x.shape
    padded = np.zeros((bsz, h + 2, wd + 2, cin), np.float64)
    padded[:, 1:-1, 1:-1] = x
    out = np.empty((bsz, h, wd, w.shape[-1]), np.float64)
    rows = max(1, PATCH_BYTES // max(1, bsz * wd * 9 * cin * 8))
    for top in range(0, h, rows):
        n = min(rows, h - top)
        patches = np.concatenate([padded[:, top + ky : top + ky + n, kx : kx + wd]
                                  for ky in range(3) for kx in range(3)], axis=-1)
        out[:, top : top + n] = matmul(patches.reshape(-1, 9 * cin), w.reshape(-1, w.shape[-1])).reshape(bsz, n, wd, -1)
    return out + b


def conv3_matrix(w: np.ndarray) -> np.ndarray:
    """Conv2d weight (Cout, Cin, 3, 3) -> (9, Cin, Cout), taps ordered (ky, kx)."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)).reshape(9, w.shape[1], w.shape[0]))
