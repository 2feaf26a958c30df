"""Integer probability tables: the only thing encoder and decoder build their range-coder models from.

A table holds counts summing to ``2**TABLE_PRECISION_BITS`` over the symbols ``offset .. offset + n - 2`` plus a
final *escape* entry for values outside it (coded after the escape, see :mod:`.rangecoder`).
:class:`EntropyTables` has one table per (quality, channel) (factorized priors); :class:`IndexedTables` a list of
tables chosen per symbol by an index (the hyperprior's scale tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..errors import CorruptChunkError, WeightsIntegrityError

TABLE_PRECISION_BITS = 16


@dataclass
class EntropyTables:
    """Per quality and channel: ``offsets`` (Q, M) int32, ``pmf`` (Q, M, L) int64 padded with 0, ``lengths`` (Q, M)."""

    offsets: np.ndarray
    pmf: np.ndarray
    lengths: np.ndarray
    _models: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        q, m = self.offsets.shape
        if self.pmf.shape[:2] != (q, m) or self.lengths.shape != (q, m):
            raise CorruptChunkError(f"Expected entropy tables of shape ({q}, {m}, L). Got {self.pmf.shape} instead.")
        if (self.lengths < 2).any() or (self.lengths > self.pmf.shape[2]).any():
            raise CorruptChunkError("Expected every entropy table to hold at least one symbol and the escape.")
        for qi in range(q):
            for c in range(m):
                if (self.pmf[qi, c, : self.lengths[qi, c]] <= 0).any():
                    raise CorruptChunkError(f"Expected positive table entries. Got a zero in quality {qi}, channel {c}.")

    @property
    def qualities(self) -> int:
        return self.offsets.shape[0]

    @property
    def min_bits(self) -> np.ndarray:
        """(Q, M): the fewest bits a symbol of each table costs, -log2 of its largest probability."""
        return _min_bits(self.pmf, self._models)

    @property
    def channels(self) -> int:
        return self.offsets.shape[1]

    def bits(self, quality: int, values: np.ndarray) -> np.ndarray:
        """:func:`code_length` of ``values`` (B, M, h, w) with each channel's table at ``quality``."""
        m = values.shape[1]
        index = np.broadcast_to(np.arange(m)[None, :, None, None], values.shape)
        return code_length(self.pmf[quality], self.offsets[quality], self.lengths[quality], index, values)

    def model(self, quality: int, channel: int):
        key = (quality, channel)
        model = self._models.get(key)
        if model is None:
            import constriction

            n = int(self.lengths[quality, channel])
            probabilities = self.pmf[quality, channel, :n].astype(np.float64)
            model = constriction.stream.model.Categorical(probabilities, perfect=False)
            self._models[key] = model
        return model


def _min_bits(pmf: np.ndarray, cache: dict) -> np.ndarray:
    found = cache.get("min_bits")
    if found is None:
        found = cache["min_bits"] = TABLE_PRECISION_BITS - np.log2(np.maximum(pmf.max(axis=-1), 1).astype(np.float64))
    return found


def code_length(pmf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, index: np.ndarray,
                values: np.ndarray) -> np.ndarray:
    """float32 bits of each value in table ``index`` (rows of ``pmf``, ``offsets``, ``lengths``): -log2 of its
    count over 2**16, or inf where the value lies outside the table and would need the escape (the encoder's
    symbol search never moves a symbol there)."""
    k = np.asarray(values, np.int64) - offsets[index]
    inside = (k >= 0) & (k < lengths[index] - 1)
    counts = pmf[index, np.where(inside, k, 0)]
    bits = TABLE_PRECISION_BITS - np.log2(np.maximum(counts, 1).astype(np.float32))
    return np.where(inside, bits, np.float32(np.inf))


def quantize_pmf(probabilities: np.ndarray, tail_mass: float) -> np.ndarray:
    """Float probabilities of the in-range symbols (+ the tail mass as the escape) -> integers summing to 2**16.

    Used once, at export. Every entry is at least 1 so any symbol can be coded.
    """
    p = np.append(np.asarray(probabilities, np.float64), max(tail_mass, 0.0))
    total = 1 << TABLE_PRECISION_BITS
    counts = np.maximum(1, np.floor(p / p.sum() * (total - len(p)))).astype(np.int64)
    # Hand the remainder to the largest entries, deterministically.
    deficit = int(total - counts.sum())  # in [0, 2 * len(p)]: hand it to the largest entries, deterministically
    largest = np.argsort(-p, kind="stable")
    np.add.at(counts, largest[np.arange(deficit) % len(p)], 1)
    if counts.sum() != total or (counts < 1).any():
        raise ValueError("Expected the quantized table to sum to 2**16 with positive entries.")
    return counts




@dataclass
class IndexedTables:
    """``offsets`` (T,), ``pmf`` (T, L) counts padded with 0, ``lengths`` (T,): table ``t`` for the symbols whose
    index is ``t``."""

    offsets: np.ndarray
    pmf: np.ndarray
    lengths: np.ndarray
    _models: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        t = self.lengths.shape[0]
        if self.pmf.shape[0] != t or self.offsets.shape != (t,) or (self.lengths < 2).any():
            raise WeightsIntegrityError("Expected one offset, length and table per scale.")
        if (self.lengths > self.pmf.shape[1]).any():
            raise WeightsIntegrityError("Expected every table length within its padded row.")
        for i in range(t):
            row = self.pmf[i, : self.lengths[i]]
            if (row <= 0).any() or row.sum() != 1 << TABLE_PRECISION_BITS:
                raise WeightsIntegrityError(f"Expected table {i} to hold positive counts summing to 2**16.")

    @property
    def count(self) -> int:
        return int(self.lengths.shape[0])

    @cached_property
    def prefix_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, L + 1) float64 prefix sums of each table's counts and of counts times value (the escape left out):
        a run's probability mass and first moment in two lookups each."""
        t, length = self.pmf.shape
        values = self.offsets[:, None] + np.arange(length)[None, :]
        pmf = np.where(np.arange(length)[None, :] < (self.lengths - 1)[:, None], self.pmf, 0).astype(np.float64)
        zero = np.zeros((t, 1))
        return np.concatenate([zero, np.cumsum(pmf, 1)], 1), np.concatenate([zero, np.cumsum(pmf * values, 1)], 1)

    def bits(self, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        """:func:`code_length` of ``values`` with the tables ``index`` names."""
        return code_length(self.pmf, self.offsets, self.lengths, index, values)

    @property
    def min_bits(self) -> np.ndarray:
        """(T,): the fewest bits a symbol of each table costs, -log2 of its largest probability."""
        return _min_bits(self.pmf, self._models)

    def model(self, t: int):
        model = self._models.get(t)
        if model is None:
            import constriction

            n = int(self.lengths[t])
            model = constriction.stream.model.Categorical(self.pmf[t, :n].astype(np.float64), perfect=False)
            self._models[t] = model
        return model
