"""Two-component mixtures of integer tables, still integer-exact.

The temporal model codes a symbol, relative to the floor of its fine mean, with

    P(v) ~ (16 - w) * p_t(v) + w * p_u(v - d)

where ``p_t`` is the fine table of its scale and mean fraction (counts summing to 2**16, escape last), ``u`` its
partner: the integer-centred table of a scale as wide or narrower (``sharpen`` scale steps), ``d`` the previous
date's symbol minus the floor of the mean, and ``w`` in 1..15 sixteenths. The counts cover the union of both
supports (a gap between them gets count 1, so every symbol there can be coded); the escape gets
``(16 - w) * e_t + w * e_u``. Both sides build the same range-coder model from these integers.

:class:`MixedTables` exposes every (t, d, w) as one *key* with the interface the grouped range coder reads
(``offsets``, ``lengths``, ``min_bits``, ``model``), so mixtures are coded with the image model's machinery.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from .tables import TABLE_PRECISION_BITS, IndexedTables

WEIGHT_ONE = 16  # mixture weights are sixteenths
# What an escaped value costs beyond its escape symbol, roughly: only for the encoder's estimates.
ESCAPE_ESTIMATE_BITS = 8.0
# Range-coder models of mixtures kept per set, least recently used dropped: the key space holds millions, and a
# reader that lives for days (QGIS, a dask worker) must not keep every one it ever built.
MODEL_CACHE = 8192


class MixedTables:
    """Every mixture of a base table ``t`` with its partner table ``partner[t]`` shifted by ``d`` (|d| <=
    ``max_shift``), weights 0..15.

    Key of (t, d, w): ``(w * (2 * max_shift + 1) + d + max_shift) * T + t``. A key whose weight is 0, or whose
    shift is 0 with the partner the table itself, names the base table ``t`` (:meth:`mixes` says which). The key
    space is large (T x 25 x 16), so a key's offset, length and fewest bits are computed when asked
    (``offsets[k]``, ``lengths[k]``, ``min_bits[keys]``), and its model built on first use.
    """

    def __init__(self, base: IndexedTables, max_shift: int, partner: np.ndarray):
        if partner.shape != (base.count,) or partner.min() < 0 or partner.max() >= base.count:
            raise ValueError(f"Expected one partner table per base table. Got {partner.shape} instead.")
        self.base = base
        self.max_shift = int(max_shift)
        self.partner = np.asarray(partner, np.int64)
        self.shifts = 2 * self.max_shift + 1
        self.offsets = _PerKey(lambda k: self._layout(k)[0])
        self.lengths = _PerKey(lambda k: self._layout(k)[1])
        self.min_bits = _PerKey(self._min_bits)
        self._models: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self.base.count * self.shifts * WEIGHT_ONE

    def split(self, key):
        """(t, partner, d, w) of keys."""
        key = np.asarray(key, np.int64)
        t, rest = key % self.base.count, key // self.base.count
        return t, self.partner[t], rest % self.shifts - self.max_shift, rest // self.shifts

    def _is_mixture(self, t, u, d, w):
        return (w > 0) & ((d != 0) | (u != t))

    def mixes(self, index: np.ndarray, shift: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Where (table ``index``, shift, weight) is a mixture, not the base table itself."""
        return self._is_mixture(index, self.partner[index], shift, weight) & (np.abs(shift) <= self.max_shift)

    def keys(self, index: np.ndarray, shift: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Keys of (table ``index``, shift, weight); where :meth:`mixes` is False, the base table's key."""
        mixing = self.mixes(index, shift, weight)
        d = np.where(mixing, shift, 0)
        w = np.where(mixing, weight, 0)
        return (w * self.shifts + d + self.max_shift) * self.base.count + index

    def _layout(self, key):
        t, u, d, w = self.split(key)
        base = self.base
        mixed = self._is_mixture(t, u, d, w)
        first_lo, second_lo = base.offsets[t], base.offsets[u] + d
        last = np.maximum(first_lo + base.lengths[t], second_lo + base.lengths[u]) - 2  # last in-range symbol
        offsets = np.where(mixed, np.minimum(first_lo, second_lo), first_lo)
        return offsets, np.where(mixed, last - offsets + 2, base.lengths[t])

    def _min_bits(self, key):
        # A mixture's largest probability is at most the larger of its tables' largest (the gap counts only add
        # to the total): the smaller of their fewest bits, less a margin, stays a lower bound.
        t, u, d, w = self.split(key)
        own = self.base.min_bits[t]
        return np.where(self._is_mixture(t, u, d, w), np.minimum(own, self.base.min_bits[u]), own) - 2.0**-10

    def pmf(self, key: int) -> np.ndarray:
        """The integer counts of ``key`` (escape last); the base table's own counts where it is not a mixture."""
        t, u, d, w = (int(v) for v in self.split(key))
        first = self.base.pmf[t, : int(self.base.lengths[t])].astype(np.int64)
        if not self._is_mixture(t, u, d, w):
            return first
        second = self.base.pmf[u, : int(self.base.lengths[u])].astype(np.int64)
        offset, length = (int(v) for v in self._layout(key))
        out = np.zeros(length, np.int64)
        a = int(self.base.offsets[t]) - offset
        b = int(self.base.offsets[u]) + d - offset
        out[a : a + len(first) - 1] += (WEIGHT_ONE - w) * first[:-1]
        out[b : b + len(second) - 1] += w * second[:-1]
        out[:-1] = np.maximum(out[:-1], 1)  # a gap between the two supports
        out[-1] = (WEIGHT_ONE - w) * first[-1] + w * second[-1]
        return out

    def model(self, key: int):
        with self._lock:
            found = self._models.get(key)
            if found is not None:
                self._models.move_to_end(key)
                return found
        t, u, d, w = (int(v) for v in self.split(key))
        if not self._is_mixture(t, u, d, w):
            found = self.base.model(t)
        else:
            import constriction

            found = constriction.stream.model.Categorical(self.pmf(key).astype(np.float64), perfect=False)
        with self._lock:
            self._models[key] = found
            if len(self._models) > MODEL_CACHE:
                self._models.popitem(last=False)
        return found

    def bits(self, index: np.ndarray, value: np.ndarray, shift: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Roughly the bits of coding each ``value`` (symbol - the base table's centre) with these mixtures (the
        encoder's choice between mixture sets, and fitting; no decoder depends on it)."""
        mixing = self.mixes(index, shift, weight)
        w = np.where(mixing, weight, 0).astype(np.float64)
        first, escape_first = _counts(self.base, index, value)
        second, escape_second = _counts(self.base, self.partner[index], value - np.where(mixing, shift, 0))
        count = (WEIGHT_ONE - w) * first + w * second
        escaped = count == 0
        count = np.where(escaped, (WEIGHT_ONE - w) * escape_first + w * escape_second, count)
        total = TABLE_PRECISION_BITS + math.log2(WEIGHT_ONE)
        return total - np.log2(count) + np.where(escaped, ESCAPE_ESTIMATE_BITS, 0.0)


class _PerKey:
    """One attribute of every key of a :class:`MixedTables`, computed for the keys indexed (an int or an array)."""

    def __init__(self, compute):
        self._compute = compute

    def __getitem__(self, key):
        out = self._compute(key)
        return out[()] if np.ndim(out) == 0 else out


def sharpened(scales: int, fractions: int, sharpen: int) -> np.ndarray:
    """Partner of fine table ``t * (fractions + 1) + f``: the integer-centred table (the last of each scale's)
    ``sharpen`` scales narrower."""
    scale = np.arange(scales * (fractions + 1)) // (fractions + 1)
    return np.maximum(scale - sharpen, 0) * (fractions + 1) + fractions


def table_bits(tables: IndexedTables, index: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Roughly the bits of coding each ``value`` with the table ``index`` names (escapes estimated)."""
    count, escape = _counts(tables, index, value)
    escaped = count == 0
    extra = np.where(escaped, ESCAPE_ESTIMATE_BITS, 0.0)
    return TABLE_PRECISION_BITS - np.log2(np.where(escaped, escape, count)) + extra


def _counts(tables: IndexedTables, index: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's count in its table (0 outside the table's symbols) and the table's escape count."""
    escape = tables.lengths[index] - 1
    s = value - tables.offsets[index]
    inside = (s >= 0) & (s < escape)
    count = np.where(inside, tables.pmf[index, np.clip(s, 0, tables.pmf.shape[1] - 1)], 0)
    return count.astype(np.float64), tables.pmf[index, escape].astype(np.float64)
