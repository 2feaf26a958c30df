"""Two-component mixtures of integer scale tables, still integer-exact.

The temporal model codes a symbol, relative to its image-model mean, with

    P(v) ~ (16 - w) * p_t(v) + w * p_u(v - d)

where ``p_t`` is scale table ``t`` (counts summing to 2**16, escape last), ``u = max(t - sharpen, 0)`` a table as
wide or narrower (``sharpen`` scale steps), ``d`` the previous date's symbol minus the mean and ``w`` in 1..15
sixteenths. The counts cover the union of both supports (a gap between them gets count 1, so every symbol there can
be coded); the escape gets ``(16 - w) * e_t + w * e_u``. Both sides build the same range-coder model from these
integers.

:class:`MixedTables` exposes every (t, d, w) as one *key* with the interface the grouped range coder reads
(``offsets``, ``lengths``, ``min_bits``, ``model``), so mixtures are coded with the image model's machinery.
"""

from __future__ import annotations

import math

import numpy as np

from .tables import TABLE_PRECISION_BITS, IndexedTables

WEIGHT_ONE = 16  # mixture weights are sixteenths
# What an escaped value costs beyond its escape symbol, roughly: only for the encoder's estimates.
ESCAPE_ESTIMATE_BITS = 8.0


class MixedTables:
    """Every mixture of a base table ``t`` with table ``max(t - sharpen, 0)`` shifted by ``d`` (|d| <= ``max_shift``),
    weights 0..15.

    Key of (t, d, w): ``(w * (2 * max_shift + 1) + d + max_shift) * T + t``; with ``w = 0`` or ``d = 0`` and no
    sharpening the key names the base table itself (use :meth:`keys`).
    """

    def __init__(self, base: IndexedTables, max_shift: int, sharpen: int = 0):
        self.base = base
        self.max_shift = int(max_shift)
        self.sharpen = int(sharpen)
        self.shifts = 2 * self.max_shift + 1
        t = base.count
        key = np.arange(t * self.shifts * WEIGHT_ONE)
        self._t, rest = key % t, key // t
        self._u = np.maximum(self._t - self.sharpen, 0)
        self._d, self._w = rest % self.shifts - self.max_shift, rest // self.shifts
        first_lo, second_lo = base.offsets[self._t], base.offsets[self._u] + self._d
        first_hi = first_lo + base.lengths[self._t] - 2  # last in-range symbol
        second_hi = second_lo + base.lengths[self._u] - 2
        mixed = self._mixed(self._t, self._d, self._w)
        self.offsets = np.where(mixed, np.minimum(first_lo, second_lo), first_lo)
        self.lengths = np.where(mixed, np.maximum(first_hi, second_hi) - self.offsets + 2, base.lengths[self._t])
        # A mixture's largest probability is at most the larger of its tables' largest (plus the gap counts, far
        # below a table's largest): the smaller of their fewest bits, less a margin, stays a lower bound.
        self.min_bits = np.where(mixed, np.minimum(base.min_bits[self._t], base.min_bits[self._u]),
                                 base.min_bits[self._t]) - 2.0 ** -10
        self._models: dict[int, object] = {}

    def _mixed(self, t, d, w):
        return (w > 0) & ((d != 0) | (self.sharpen > 0) & (t > 0))

    @property
    def count(self) -> int:
        return int(self.offsets.shape[0])

    def keys(self, index: np.ndarray, shift: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Keys of (table ``index``, shift, weight); shifts beyond ``max_shift`` or weight 0 select the base."""
        plain = (weight <= 0) | (np.abs(shift) > self.max_shift)
        d = np.where(plain, 0, shift)
        w = np.where(plain, 0, weight)
        return (w * self.shifts + d + self.max_shift) * self.base.count + index

    def pmf(self, key: int) -> np.ndarray:
        """The integer counts of ``key`` (escape last); the base table's own counts where it is not a mixture."""
        t, u, d, w = int(self._t[key]), int(self._u[key]), int(self._d[key]), int(self._w[key])
        first = self.base.pmf[t, : int(self.base.lengths[t])].astype(np.int64)
        if not self._mixed(t, d, w):
            return first
        second = self.base.pmf[u, : int(self.base.lengths[u])].astype(np.int64)
        lo = int(self.offsets[key])
        out = np.zeros(int(self.lengths[key]), np.int64)
        a = int(self.base.offsets[t]) - lo
        b = int(self.base.offsets[u]) + d - lo
        out[a : a + len(first) - 1] += (WEIGHT_ONE - w) * first[:-1]
        out[b : b + len(second) - 1] += w * second[:-1]
        out[:-1] = np.maximum(out[:-1], 1)  # a gap between the two supports
        out[-1] = (WEIGHT_ONE - w) * first[-1] + w * second[-1]
        return out

    def model(self, key: int):
        found = self._models.get(key)
        if found is None:
            if not self._mixed(int(self._t[key]), int(self._d[key]), int(self._w[key])):
                found = self.base.model(int(self._t[key]))
            else:
                import constriction

                found = constriction.stream.model.Categorical(self.pmf(key).astype(np.float64), perfect=False)
            self._models[key] = found
        return found

    def bits(self, index: np.ndarray, value: np.ndarray, shift: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Roughly the bits of coding each ``value`` (symbol - mean) with these mixtures (the encoder's choice
        between mixture sets, and fitting; no decoder depends on it)."""
        plain = (weight <= 0) | (np.abs(shift) > self.max_shift)
        w = np.where(plain, 0, weight).astype(np.float64)
        first, escape_first = _counts(self.base, index, value)
        second, escape_second = _counts(self.base, np.maximum(index - self.sharpen, 0), value - np.where(plain, 0, shift))
        count = (WEIGHT_ONE - w) * first + w * second
        escaped = count == 0
        count = np.where(escaped, (WEIGHT_ONE - w) * escape_first + w * escape_second, count)
        total = TABLE_PRECISION_BITS + math.log2(WEIGHT_ONE)
        return total - np.log2(count) + np.where(escaped, ESCAPE_ESTIMATE_BITS, 0.0)


def _counts(tables: IndexedTables, index: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's count in its table (0 outside the table's symbols) and the table's escape count."""
    escape = tables.lengths[index] - 1
    s = value - tables.offsets[index]
    inside = (s >= 0) & (s < escape)
    count = np.where(inside, tables.pmf[index, np.clip(s, 0, tables.pmf.shape[1] - 1)], 0)
    return count.astype(np.float64), tables.pmf[index, escape].astype(np.float64)
