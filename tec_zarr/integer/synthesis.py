"""The synthesis transform in integers: a base reconstruction every machine computes bit for bit.

Error-bounded chunks code ``x - base``, so the decoder must rebuild the encoder's base exactly; onnxruntime in
float32 does not promise that across CPUs. This transform does: integer weights (``synthesis_int.npz``, made
once at export by :func:`build`), integer activations, and only operations whose result IEEE 754 fixes:

* products and sums of integers held in float64 whose every partial sum stays below 2**52 (checked on load
  against the activation clip), so BLAS returns the exact integer in any summation order, with or without FMA;
* multiplications by powers of two and ``np.floor`` (exact), ``np.sqrt`` and one multiplication (each correctly
  rounded), in the inverse GDN.

Data flow per stage (``a`` = activation scale exponent, values are ``round(real * 2**a)``)::

    symbols x ig[q] >> 8 ─clip─▶ deconv (one matmul + 25 strided adds) ─floor >> s─▶ IGDN ─▶ ... ─▶ DN (rounded)

The last layer has the band ``std x 10000`` and ``mean x 10000`` folded in, so it outputs DN directly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..errors import WeightsIntegrityError
from .layers import CLIP_BITS, EXACT_LIMIT, KERNEL, block_deconv, deconv, deconv_matrix, linear_matrix

FILENAME = "synthesis_int.npz"
SQUARE_BITS = 14  # the IGDN squares activations shifted down to +-2**14
CALIBRATION_BITS = 19  # the largest calibration activation maps to 2**19: 8x headroom below the clip
INPUT_EXTRA_BITS = 8  # inv_gain keeps 8 more bits than the first activation
ROWS_PER_BLOCK = 16


@dataclass(frozen=True, eq=False)
class IntSynthesis:
    """Integer weights of one model's synthesis transform (see the module docstring)."""

    ig: np.ndarray  # (Q, M) int64: inv_gain x 2**(a0 + INPUT_EXTRA_BITS)
    weights: tuple[np.ndarray, ...]  # per deconv: (Cin, 25 * Cout) float64 holding integers, columns (ky, kx, cout)
    biases: tuple[np.ndarray, ...]  # per deconv: (Cout,) float64 integers at the accumulator's scale
    shifts: tuple[int, ...]  # per deconv: accumulator >> shift = next activation (last: DN, rounded)
    gammas: tuple[np.ndarray, ...]  # per IGDN: (C, C) float64 integers, transposed for x**2 @ gamma
    betas: tuple[np.ndarray, ...]  # per IGDN: (C,) float64 integers at the norm's scale
    gdn_shifts: tuple[tuple[int, int], ...]  # per IGDN: (pre: x >> pre before squaring, post: exponent of the result)
    # The linear block path (ConvTranspose k=s=block): (M, block * block * bands) integers at the last
    # accumulator's scale, columns (row, col, band); added to the last layer before it is shifted to DN.
    linear: np.ndarray | None = None
    block: int = 0

    def __post_init__(self):
        limit = 2.0**CLIP_BITS
        if self.linear is not None:
            worst = np.abs(self.linear).sum(axis=0).max() * limit
            last = self.weights[-1]
            cout = self.biases[-1].shape[0]
            worst += (np.abs(last).reshape(last.shape[0], KERNEL * KERNEL, cout).sum(axis=(0, 1)) * limit
                      + np.abs(self.biases[-1])).max()
            if worst >= EXACT_LIMIT:
                raise WeightsIntegrityError(f"Expected the linear path's sums bounded by 2**52. Got {worst:.3g} instead.")
        for w, b in zip(self.weights, self.biases):
            cout = b.shape[0]
            # Every output element sums at most all 25 taps of every input channel, plus the bias.
            worst = np.abs(w).reshape(w.shape[0], KERNEL * KERNEL, cout).sum(axis=(0, 1)) * limit + np.abs(b)
            if worst.max() >= EXACT_LIMIT:
                raise WeightsIntegrityError(f"Expected integer synthesis weights bounded by 2**52. Got {worst.max():.3g} instead.")
        for g, beta in zip(self.gammas, self.betas):
            worst = np.abs(g).sum(axis=0) * 2.0 ** (2 * SQUARE_BITS) + np.abs(beta)
            if worst.max() >= EXACT_LIMIT or (beta < 0).any() or (g < 0).any():
                raise WeightsIntegrityError(f"Expected IGDN integers non-negative and bounded by 2**52. Got {worst.max():.3g} instead.")

    @property
    def qualities(self) -> int:
        return self.ig.shape[0]

    def to_npz(self) -> bytes:
        arrays = {"ig": self.ig, "shifts": np.asarray(self.shifts, np.int64),
                  "gdn_shifts": np.asarray(self.gdn_shifts, np.int64).reshape(-1, 2)}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w.astype(np.int64), b.astype(np.int64)
        for i, (g, beta) in enumerate(zip(self.gammas, self.betas)):
            arrays[f"gamma{i}"], arrays[f"beta{i}"] = g.astype(np.int64), beta.astype(np.int64)
        if self.linear is not None:
            arrays["linear"], arrays["block"] = self.linear.astype(np.int64), np.int64(self.block)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> IntSynthesis:
        try:
            with np.load(io.BytesIO(data)) as z:
                shifts = tuple(int(s) for s in z["shifts"])
                n = len(shifts)
                return cls(
                    ig=z["ig"].astype(np.int64),
                    weights=tuple(z[f"w{i}"].astype(np.float64) for i in range(n)),
                    biases=tuple(z[f"b{i}"].astype(np.float64) for i in range(n)),
                    shifts=shifts,
                    gammas=tuple(z[f"gamma{i}"].astype(np.float64) for i in range(n - 1)),
                    betas=tuple(z[f"beta{i}"].astype(np.float64) for i in range(n - 1)),
                    gdn_shifts=tuple((int(a), int(b)) for a, b in z["gdn_shifts"]),
                    linear=z["linear"].astype(np.float64) if "linear" in z else None,
                    block=int(z["block"]) if "block" in z else 0,
                )
        except (KeyError, ValueError, OSError) as e:
            raise WeightsIntegrityError(f"Expected a valid {FILENAME}. Got {type(e).__name__}: {e} instead.") from None

    def __call__(self, symbols: np.ndarray, quality: int, *, rows_per_block: int = ROWS_PER_BLOCK,
                 matmul=np.matmul) -> np.ndarray:
        """``symbols`` int (B, M, h, w) -> DN as int64 (B, bands, h * 2**stages, w * 2**stages)."""
        limit = 2**CLIP_BITS
        s = np.asarray(symbols, np.int64)
        # int64 products of int32 symbols and < 2**31 gains can't overflow; >> is an exact floor.
        x = np.clip((s * self.ig[quality][None, :, None, None]) >> INPUT_EXTRA_BITS, -limit, limit)
        # Latent channels that are 0 throughout add exact zeros: left out of the products (most are, at low rates).
        active = np.flatnonzero(x.any(axis=(0, 2, 3)))
        if active.size == 0:  # all zero: one zero channel keeps the products' shapes
            active = np.zeros(1, np.intp)
        x = np.ascontiguousarray(np.moveaxis(x[:, active], 1, -1)).astype(np.float64)  # channels last: (B, h, w, C)
        first = x
        last = len(self.weights) - 1
        for i, (w, b, shift) in enumerate(zip(self.weights, self.biases, self.shifts)):
            acc = deconv(x, w[active] if i == 0 else w, b, rows_per_block, matmul)
            if i == last:
                if self.linear is not None:
                    acc += block_deconv(first, self.linear[active], self.block, matmul)
                return np.moveaxis(np.floor((acc + 2.0 ** (shift - 1)) * 2.0**-shift), -1, 1).astype(np.int64)
            x = np.clip(np.floor(acc * 2.0**-shift), -limit, limit)
            pre, post = self.gdn_shifts[i]
            squared = np.floor(x * 2.0**-pre) ** 2
            norm = matmul(squared.reshape(-1, x.shape[-1]), self.gammas[i]).reshape(x.shape) + self.betas[i]
            x = np.clip(np.floor(x * np.sqrt(norm) * 2.0**post), -limit, limit)
        raise AssertionError("unreachable")


def reference(state: dict[str, np.ndarray], y_hat: np.ndarray, record: list | None = None) -> np.ndarray:
    """The float64 synthesis (same layers, no rounding), normalized units; ``record`` collects max |input| per layer."""
    x = np.moveaxis(np.asarray(y_hat, np.float64), 1, -1)
    first = x
    n = stages(state)
    for i in range(n):
        if record is not None:
            record.append(("deconv", i, float(np.abs(x).max())))
        w = state[f"g_s.{2 * i}.weight"].astype(np.float64)
        x = deconv(x, deconv_matrix(w), state[f"g_s.{2 * i}.bias"].astype(np.float64), ROWS_PER_BLOCK, np.matmul)
        if i < n - 1:
            beta, gamma = _gdn_parameters(state, 2 * i + 1)
            if record is not None:
                record.append(("gdn", i, float(np.abs(x).max())))
            x = x * np.sqrt((x * x) @ gamma.T + beta)
    if "s_lin.weight" in state:
        w = state["s_lin.weight"].astype(np.float64)
        x = x + block_deconv(first, linear_matrix(w), w.shape[-1], np.matmul)
    return np.moveaxis(x, -1, 1)


def stages(state: dict) -> int:
    return sum(1 for k in state if k.startswith("g_s.") and k.endswith(".weight") and state[k].ndim == 4)


def _gdn_parameters(state: dict, index: int, beta_min: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """The IGDN's effective beta and gamma, as train/layers.py's GDN computes them."""
    beta = np.maximum(state[f"g_s.{index}.beta_sqrt"].astype(np.float64), np.sqrt(beta_min)) ** 2
    gamma = np.maximum(state[f"g_s.{index}.gamma_sqrt"].astype(np.float64), 0.0) ** 2
    return beta, gamma


def scale_exponent(max_value: float, bits: int) -> int:
    """The power-of-two scale mapping ``max_value`` to at most 2**bits."""
    return int(np.floor(bits - np.log2(max(max_value, 1e-12))))


def build(state: dict[str, np.ndarray], inv_gain: np.ndarray, mean: np.ndarray, std: np.ndarray,
          calibration: list[np.ndarray]) -> IntSynthesis:
    """Quantize a float synthesis (``g_s.*`` arrays, torch or ONNX names) once, at export.

    ``calibration``: float ŷ arrays (B, M, h, w) the transform will see; they fix each activation's scale.
    ``mean``/``std`` (reflectance) are folded into the last layer so that it outputs DN.
    """
    record: list = []
    for y_hat in calibration:
        reference(state, y_hat, record)
    n = stages(state)
    peaks = {}
    for kind, i, v in record:
        peaks[(kind, i)] = max(peaks.get((kind, i), 0.0), v)
    act = [scale_exponent(peaks[("deconv", i)], CALIBRATION_BITS) for i in range(n)]  # scale of each deconv's input
    gdn_in = [scale_exponent(peaks[("gdn", i)], CALIBRATION_BITS) for i in range(n - 1)]
    clip = 2.0**CLIP_BITS
    weights, biases, shifts, gammas, betas, gdn_shifts = [], [], [], [], [], []
    linear, block = None, 0
    if "s_lin.weight" in state:  # folded like the last layer: DN = (x * std) * 10000, the mean is in its bias
        w_lin = state["s_lin.weight"].astype(np.float64)
        block = w_lin.shape[-1]
        linear = linear_matrix(w_lin) * np.tile(std.astype(np.float64) * 1e4, block * block)[None, :]
    for i in range(n):
        w = deconv_matrix(state[f"g_s.{2 * i}.weight"].astype(np.float64))
        b = state[f"g_s.{2 * i}.bias"].astype(np.float64)
        if i == n - 1:  # DN = (x * std + mean) * 10000
            cols = np.tile(std.astype(np.float64) * 1e4, KERNEL * KERNEL)
            w, b = w * cols[None, :], b * std * 1e4 + mean.astype(np.float64) * 1e4
        cout = b.shape[0]
        colsum = np.abs(w).reshape(w.shape[0], KERNEL * KERNEL, cout).sum(axis=(0, 1)).max()
        out_scale = 0 if i == n - 1 else gdn_in[i]
        # Weight bits: the worst accumulation (clip x column sum, plus the bias) stays below 2**51.
        worst = colsum * clip + np.abs(b).max() * 2.0 ** act[i]
        if i == n - 1 and linear is not None:  # the linear path shares the last accumulator
            worst += np.abs(linear).sum(axis=0).max() * clip * 2.0 ** (act[i] - act[0])
        wexp = min(scale_exponent(worst, 51), 40)
        weights.append(np.rint(w * 2.0**wexp))
        biases.append(np.rint(b * 2.0 ** (wexp + act[i])))
        if i == n - 1 and linear is not None:  # its input is the first activation, at scale 2**act[0]
            linear = np.rint(linear * 2.0 ** (wexp + act[i] - act[0]))
        shifts.append(wexp + act[i] - out_scale)
        if i < n - 1:
            beta, gamma = _gdn_parameters(state, 2 * i + 1)
            a = gdn_in[i]
            pre = CLIP_BITS - SQUARE_BITS
            # norm scale 2**(2(a - pre) + g); g even so that sqrt(norm) has scale 2**(a - pre + g/2).
            g = scale_exponent(np.abs(gamma).sum(axis=1).max(), 51 - 2 * SQUARE_BITS) // 2 * 2
            while np.max(beta) * 2.0 ** (2 * (a - pre) + g) + np.abs(gamma).sum(axis=1).max() * 2.0 ** (2 * SQUARE_BITS + g) >= 2.0**51:
                g -= 2
            gammas.append(np.ascontiguousarray(np.rint(gamma * 2.0**g).T))
            betas.append(np.rint(beta * 2.0 ** (2 * (a - pre) + g)))
            # y * 2**a' = (x * 2**a) * sqrt(norm * 2**n) * 2**(a' - a - n/2); the next input scale a' = act[i + 1]
            gdn_shifts.append((pre, act[i + 1] - a - (a - pre) - g // 2))
    return IntSynthesis(
        ig=np.rint(inv_gain.astype(np.float64) * 2.0 ** (act[0] + INPUT_EXTRA_BITS)).astype(np.int64),
        weights=tuple(weights), biases=tuple(biases), shifts=tuple(shifts),
        gammas=tuple(gammas), betas=tuple(betas), gdn_shifts=tuple(gdn_shifts), linear=linear, block=block,
    )
