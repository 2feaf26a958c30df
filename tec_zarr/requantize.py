"""Nested requantization: a chunk's symbols at a higher quality mapped onto a lower quality's grid in integers, and
the values a decoder reads from symbols mapped that way (thinned chunks, :mod:`tec_zarr.pipeline.thin`).

A model's symbols are ``s = round(y * gain[q])`` per channel. Mapping top-quality symbols ``s`` to quality ``q``::

    R[c] = round(gain[q, c] / gain[top, c] * 2**RATIO_BITS)     (0 where the level drops the channel, < 2**RATIO_BITS)
    t    = sign(s) * ((|s| * R + DEADZONE) >> RATIO_BITS)

so each symbol ``t`` stands for a run ``lo..hi`` of top symbols, known to the decoder from ``t`` and ``R`` alone
(:func:`runs`). The
decoder reads the middle of that run, ``(lo + hi) / 2`` in top units, instead of ``t`` itself: adjacent levels'
gains are in ratio 1/2, so plain ``t * inv_gain[q]`` would sit a quarter step off the values the run stands for
(measured: +10-30 % bits at equal PSNR against +0-8 % with the middle). ``DEADZONE`` below one half widens the run
read as 0, as classical codecs' deadzone quantizers do: latents are peaked at 0, so it costs less rate than it adds
distortion. Everything here is integer arithmetic on the model's float32 gains, the same on every machine.

A chunk thinned again is requantized from its own symbols, so its runs are runs of runs: the decoder composes the
steps (the chunk header lists the levels, :func:`doubled_middle`), and every level's runs nest in the ones above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATIO_BITS = 16
LIMIT = 1 << 32  # run ends are clipped to +-LIMIT: top symbols are int32
# Rounding offset of the mapping, in 2**-RATIO_BITS: 0.4 (round half up would be 0.5).
DEADZONE = 26214


def ratios(gain: np.ndarray, top: int, quality: int) -> np.ndarray:
    """int64 (M,): ``R`` of each channel from ``top`` to ``quality``; 0 where the lower level drops the channel, and
    just below 1 where its gain is not lower (a few near-dead channels of the shipped models: a symbol below
    DEADZONE in magnitude then maps to itself, as no requantization can add precision)."""
    g_top = gain[top].astype(np.float64)
    g_low = gain[quality].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(g_top > 0, g_low / g_top, 0.0)
    return np.rint(np.clip(r, 0.0, 1.0) * 2**RATIO_BITS).astype(np.int64).clip(0, (1 << RATIO_BITS) - 1)


@dataclass(frozen=True, eq=False)
class Thinning:
    """How a thinned chunk's symbols came about: ``levels``, the qualities from the one it was coded at to its own,
    and ``chain``, the ratios of each step (:func:`ratios`); ``summed``: its payload codes them under the first
    level's model summed over their runs (the chunk header's runs-summed extension)."""

    levels: tuple[int, ...]
    chain: tuple[np.ndarray, ...]
    summed: bool = False

    @property
    def dropped(self) -> np.ndarray:
        """bool (M,): channels some step drops (their thinned symbols are all 0)."""
        return np.any([ratio <= 0 for ratio in self.chain], axis=0)

    @classmethod
    def of(cls, gain: np.ndarray, levels: tuple[int, ...], summed: bool = False) -> Thinning:
        """The thinning through ``levels`` (first the quality coded at) of a model with gains ``gain`` (Q, M)."""
        return cls(tuple(levels), tuple(ratios(gain, a, b) for a, b in zip(levels, levels[1:])), summed)


def forward(symbols: np.ndarray, chain) -> np.ndarray:
    """Top-level symbols (B, M, h, w) requantized through every step of ``chain``."""
    for ratio in chain:
        symbols = requantize(symbols, ratio)
    return symbols


def requantize(symbols: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """int32 symbols of the lower level from ``symbols`` (B, M, h, w) of the higher one."""
    return requantize_each(symbols, ratio[None, :, None, None])


def requantize_each(symbols: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """:func:`requantize` with each symbol's own ratio (``ratio`` broadcasts against ``symbols``)."""
    magnitude = (np.abs(symbols.astype(np.int64)) * ratio + DEADZONE) >> RATIO_BITS
    return (np.sign(symbols) * magnitude).astype(np.int32)


# Symbols spanning at most this many values get their runs from a per-channel table of the span (a chunk's symbols
# do, but for escapes): one look-up per symbol instead of a dozen int64 passes over the chunk.
TABLE_SPAN = 1 << 12


def runs(symbols: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 (lo, hi): the first and last higher-level symbol that :func:`requantize` maps to each of ``symbols``
    (monotone and odd, so a run's ends are the ends' runs; a dropped channel's 0 stands for 0). ``symbols`` at most
    :data:`LIMIT` in magnitude."""
    if symbols.size > TABLE_SPAN:
        low, high = int(symbols.min()), int(symbols.max())
        if high - low < TABLE_SPAN:
            m = symbols.shape[1]
            grid = np.broadcast_to(np.arange(low, high + 1, dtype=np.int64), (1, m, 1, high - low + 1))
            where = np.arange(m, dtype=np.int64)[None, :, None, None] * (high - low + 1) + (symbols - low)
            return tuple(np.take(table.reshape(-1), where) for table in _runs(grid, ratio))
    return _runs(symbols, ratio)


def _runs(symbols: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.maximum(ratio, 1)[None, :, None, None]
    a = np.abs(symbols.astype(np.int64))
    unit = np.int64(1 << RATIO_BITS)
    first = -((DEADZONE - a * unit) // r)  # ceil((a * unit - DEADZONE) / r): the smallest magnitude mapped to a
    last = -((DEADZONE - (a + 1) * unit) // r) - 1
    first = np.where(a == 0, -last, first)  # the run of 0 is symmetric
    dropped = ratio[None, :, None, None] <= 0
    first, last = np.where(dropped, 0, first), np.where(dropped, 0, last)
    negative = symbols < 0
    return np.where(negative, -last, first), np.where(negative, -first, last)


def run_ends(symbols: np.ndarray, chain) -> tuple[np.ndarray, np.ndarray]:
    """int64 (lo, hi): the first and last top-level symbol of the run each of ``symbols`` stands for, after the
    requantizations ``chain`` (their ratios, top first): runs of runs, through the ends."""
    lo = hi = symbols.astype(np.int64)
    for step, ratio in enumerate(reversed(chain)):
        # the first step maps the symbols themselves (lo is hi): one call gives both ends
        first, last = runs(lo, ratio) if step == 0 else (runs(lo, ratio)[0], runs(hi, ratio)[1])
        # Top symbols are int32: ends beyond stand for nothing, and clipping keeps every product below 2**63.
        lo, hi = np.clip(first, -LIMIT, LIMIT), np.clip(last, -LIMIT, LIMIT)
    return lo, hi


def doubled_middle(symbols: np.ndarray, chain) -> np.ndarray:
    """int64 ``lo + hi``: twice the middle of the run of top-level symbols that each of ``symbols`` stands for
    (:func:`run_ends`)."""
    lo, hi = run_ends(symbols, chain)
    return lo + hi


def reconstruct(doubled: np.ndarray, gain: np.ndarray, inv_gain: np.ndarray) -> np.ndarray:
    """The decoder graph's float32 input for a thinned chunk from ``doubled`` (B, M, h, w), twice the top-unit
    value each symbol decodes to (:func:`doubled_middle`, or a coder's estimate), in the chunk's level's units (times
    its gain over the top's, ``gain`` (2, M): top and level), times the level's inverse gains ``inv_gain`` (M,)."""
    g = gain.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(g[0] > 0, g[1] / g[0] / 2 * inv_gain, 0.0)
    return np.ascontiguousarray((doubled * scale[None, :, None, None]).astype(np.float32))
