"""Temporal context coding (TEC-TT): a chunk's images are dates, earliest first, and each later date's symbols are
coded against the date before it.

A model whose manifest says ``"entropy_model": "temporal"`` (``tec-tt``) is its base context model (:mod:`.context`:
same graphs, gains, symbols, hyperprior and context networks, so the same pixels) plus ``temporal.npz``. The chunk's
batch axis (its leading axes flattened) is the time axis. Every date walks the context model's ten steps.

*Fine means.* The context networks compute each symbol's mean far more finely than the integer the context model
codes around; tec-tt keeps ``fraction_bits`` of it, ``m = floor(mean * 2**fraction_bits)``, and codes
``v = symbol - floor(mean)`` with one of ``2**fraction_bits`` tables per scale, each a discretized Gaussian centred
in the middle of its fraction's interval (integer counts in ``temporal.npz``), except at the (quality, scale) pairs
the model marks *coarse*: there it codes around the context model's own rounded mean with an integer-centred table
(the networks were trained with rounded means, which at the narrowest scales code fewer bits). Date 0 is coded this
way alone.

*The previous date.* A later date's symbol is coded with a mixture (:mod:`.mixture`) of its fine table and a table
centred on the previous date's co-located symbol ``prev``: ``(16 - w) p_t(v) + w p_u(v - d)``, ``d = prev -
centre`` (the centre ``v`` is counted from). The model holds K *mixture sets*, each a weight look-up table keyed by
quality, channel, scale-index bucket and ``min(|prev - round(mean)|, D - 1)``, and a ``sharpen``: the second table
is the integer-centred table ``sharpen`` scale steps narrower, the more the previous date predicts. Set 0 is fitted
on training sequences (dates months apart), set 1 mixes nothing, the others trust the previous date more (revisits
days apart, repeated acquisitions). The encoder picks the set per date (by estimated bits) and stores its number.
Where a set's weight is 0, the previous date's symbol was not coded (nodata) or lies more than ``max_shift`` from
the mean, the fine table alone codes the symbol. Every probability is integer arithmetic on both sides.

Payload: the context model's framing (``u32 z_len | z section | y section``); the y section holds date 0's ten
steps, then for each later date its set number (uniform over K) and its ten steps, in one range-coder stream.
Decoding is date by date: date t needs date t - 1's symbols.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptChunkError, InvalidInputError, WeightsIntegrityError
from .context import FILENAME as CONTEXT_FILENAME
from .context import ContextCoder, ContextModel, gather, run_steps
from .hyperprior import Hyperprior, Synthesized, read_kept, write_kept
from .mixture import WEIGHT_ONE, MixedTables, sharpened
from .rangecoder import DECODER_ERRORS, PayloadBudget
from .tables import EntropyTables, IndexedTables

FILENAME = "temporal.npz"
ENTROPY_MODEL = "temporal"
# Dates are coded one after another (each needs the one before), so a chunk's dates bound its decoding time: a
# header declaring thousands of tiny dates must not keep a reader busy for minutes.
MAX_DATES = 256


@dataclass(frozen=True, eq=False)
class TemporalModel:
    """What ``temporal.npz`` holds: the mixture sets, ``weights[k, q, c, index // index_bucket, min(|prev - mean|,
    D - 1)]`` in sixteenths (``c`` in the context model's coded channel order) and ``sharpen[k]`` scale steps, and the
    fine-mean tables, table ``t * (2**fraction_bits + 1) + f`` for scale ``t`` centred at ``(f + 1/2) /
    2**fraction_bits`` (f < 2**fraction_bits) or at 0 (the last, integer-centred), per quality and scale whether
    the mean is rounded to an integer instead (the context networks were trained with rounded means, so at the
    narrowest scales the rounded mean codes fewer bits), and which fine table a mixed symbol's first component
    uses."""

    weights: np.ndarray  # (K, Q, M, index buckets, D) int64 in 0..15
    sharpen: tuple[int, ...]
    index_bucket: int
    max_shift: int
    fraction_bits: int
    fine: IndexedTables
    coarse: np.ndarray  # (Q, scales) bool: where the context model's mean is better rounded to an integer
    mixed_slot: np.ndarray  # (2**fraction_bits + 1,): the fine table a mixed symbol's first component uses

    def __post_init__(self):
        if self.weights.ndim != 5 or self.weights.shape[4] < 2 or not 1 <= self.weights.shape[0] <= 16:
            raise WeightsIntegrityError(
                f"Expected temporal weights of 5 axes (K <= 16, Q, M, I, D >= 2). Got {self.weights.shape} instead.")
        if self.weights.size and (self.weights.min() < 0 or self.weights.max() >= WEIGHT_ONE):
            raise WeightsIntegrityError(f"Expected mixture weights in 0..{WEIGHT_ONE - 1}. Got values outside instead.")
        if len(self.sharpen) != self.weights.shape[0] or any(not 0 <= s <= 1024 for s in self.sharpen):
            raise WeightsIntegrityError(
                f"Expected one sharpening in 0..1024 per mixture set. Got {self.sharpen} instead.")
        if not 1 <= self.index_bucket <= 1024 or not 1 <= self.max_shift <= 64 or not 0 <= self.fraction_bits <= 6:
            raise WeightsIntegrityError(
                f"Expected an index bucket in 1..1024, a maximum shift in 1..64 and fraction bits in 0..6. Got "
                f"{self.index_bucket}, {self.max_shift} and {self.fraction_bits} instead.")
        if self.coarse.shape != (self.weights.shape[1], self.fine.count // ((1 << self.fraction_bits) + 1)):
            raise WeightsIntegrityError(
                f"Expected one coarse flag per quality and scale. Got shape {self.coarse.shape} instead.")
        slots = (1 << self.fraction_bits) + 1
        if self.mixed_slot.shape != (slots,) or self.mixed_slot.min() < 0 or self.mixed_slot.max() >= slots:
            raise WeightsIntegrityError(
                f"Expected {slots} mixed slots in 0..{slots - 1}. Got {self.mixed_slot} instead.")

    @property
    def sets(self) -> int:
        return int(self.weights.shape[0])

    def to_npz(self) -> bytes:
        fine = self.fine
        flat = np.concatenate([fine.pmf[i, : fine.lengths[i]] for i in range(fine.count)])
        buf = io.BytesIO()
        np.savez_compressed(buf, weights=self.weights.astype(np.uint8), sharpen=np.asarray(self.sharpen, np.int64),
                            index_bucket=np.int64(self.index_bucket), max_shift=np.int64(self.max_shift),
                            fraction_bits=np.int64(self.fraction_bits), fine_offsets=fine.offsets.astype(np.int64),
                            fine_lengths=fine.lengths.astype(np.int64), fine_counts=flat.astype(np.uint16),
                            coarse=self.coarse.astype(np.uint8), mixed_slot=self.mixed_slot.astype(np.int64))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> TemporalModel:
        try:
            with np.load(io.BytesIO(data)) as z:
                lengths = z["fine_lengths"].astype(np.int64)
                flat = z["fine_counts"].astype(np.int64)
                if lengths.ndim != 1 or (lengths < 2).any() or lengths.sum() != flat.size or lengths.max() > 4096:
                    raise ValueError("fine table lengths that do not match their counts")
                pmf = np.zeros((lengths.size, int(lengths.max())), np.int32)
                for i, (start, n) in enumerate(zip(np.cumsum(lengths) - lengths, lengths)):
                    pmf[i, :n] = flat[start : start + n]
                fine = IndexedTables(z["fine_offsets"].astype(np.int64), pmf, lengths)
                return cls(weights=z["weights"].astype(np.int64), sharpen=tuple(int(s) for s in z["sharpen"]),
                           index_bucket=int(z["index_bucket"]), max_shift=int(z["max_shift"]),
                           fraction_bits=int(z["fraction_bits"]), fine=fine, coarse=z["coarse"].astype(bool),
                           mixed_slot=z["mixed_slot"].astype(np.int64))
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise WeightsIntegrityError(f"Expected a valid {FILENAME}. Got {type(e).__name__}: {e} instead.") from None


def fine_coding(index: np.ndarray, fine_mean: np.ndarray, coarse, fraction_bits: int):
    """(fine table, centre, integer mean) of symbols from their scale index and mean at 2**-fraction_bits: the
    fraction's table counted from floor(mean), or where ``coarse`` the integer-centred table counted from the
    context model's own rounded mean (exactly its integer mean: the fine mean is a floor)."""
    fractions = 1 << fraction_bits
    mean = (fine_mean + (fractions >> 1)) >> fraction_bits
    table = index * (fractions + 1) + np.where(coarse, fractions, fine_mean & (fractions - 1))
    return table, np.where(coarse, mean, fine_mean >> fraction_bits), mean


def mixed_first(table: np.ndarray, mixed_slot: np.ndarray) -> np.ndarray:
    """The fine table a mixed symbol's first component uses: fewer fractions, fewer distinct mixtures."""
    slots = mixed_slot.shape[0]
    return table - table % slots + mixed_slot[table % slots]


def coded_order(grid: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(B, M, h, w) in the model's channel order -> (B, h, w, M) in the context model's coded order."""
    return np.moveaxis(grid[:, order], 1, -1)


@dataclass
class _Step:
    """One step of a date as both sides see it before its symbols, with what no mixture set changes."""

    index: np.ndarray  # (1, P, c) scale-table index
    table: np.ndarray  # the fine table of each symbol
    centre: np.ndarray  # each symbol is coded as symbol - centre
    mean: np.ndarray  # the context model's integer mean
    prev: np.ndarray | None  # the previous date's co-located symbols (None: date 0)
    prev_kept: np.ndarray | None  # where they were coded (None: everywhere)
    kept: np.ndarray | None  # where this date's symbols are coded (None: everywhere)
    a: int  # the step's first coded channel


class TemporalCoder(ContextCoder):
    """Fine means for every date, and mixtures with the previous date's symbols where a set's weights say so."""

    name = ENTROPY_MODEL
    files = (*ContextCoder.files, FILENAME)
    # Thinned chunks may also be runs summed, as tec-ctx's (the ten steps at the first level, no fine means, no
    # previous date): thinning keeps the shorter payload. The level's fine tables and mixtures alone cost up to 16 %
    # more bits than direct chunks at the same PSNR on the desert tile; with runs summed at most 4 %.

    def __init__(self, hyperprior: Hyperprior, analysis, context: ContextModel, temporal: TemporalModel):
        super().__init__(hyperprior, analysis, context)
        q, m = hyperprior.log_gain.shape
        buckets = -(-hyperprior.scales.count // temporal.index_bucket)
        if temporal.weights.shape[1:4] != (q, m, buckets):
            raise WeightsIntegrityError(
                f"Expected temporal weights of shape (K, {q}, {m}, {buckets}, D) for this hyperprior. Got "
                f"{temporal.weights.shape} instead.")
        if temporal.fine.count != hyperprior.scales.count * ((1 << temporal.fraction_bits) + 1):
            raise WeightsIntegrityError(
                f"Expected {hyperprior.scales.count * ((1 << temporal.fraction_bits) + 1)} fine-mean tables. Got "
                f"{temporal.fine.count} instead.")
        self.temporal = temporal
        count = hyperprior.scales.count
        fractions = 1 << temporal.fraction_bits
        self.mixed = tuple(MixedTables(temporal.fine, temporal.max_shift, sharpened(count, fractions, s))
                           for s in temporal.sharpen)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], tables: EntropyTables) -> TemporalCoder:
        base = ContextCoder.from_files(files, tables)
        return cls(base.hyperprior, base.analysis, ContextModel.from_npz(files[CONTEXT_FILENAME]),
                   TemporalModel.from_npz(files[FILENAME]))

    def weights(self, mixture_set: int, quality: int, index: np.ndarray, shift: np.ndarray,
                prev_kept: np.ndarray | None, a: int) -> np.ndarray:
        """Mixture weights of a step's symbols (B, P, c) of coded channels a.. from their table index and
        ``shift`` = previous date's co-located symbol - mean."""
        tm = self.temporal
        distance = np.minimum(np.abs(shift), tm.weights.shape[4] - 1)
        channel = np.arange(a, a + index.shape[-1])
        weight = tm.weights[mixture_set, quality, channel, index // tm.index_bucket, distance]
        return weight if prev_kept is None else np.where(prev_kept, weight, 0)

    def step(self, index, fine_mean, a, e, classes, symbols: np.ndarray, kept: np.ndarray | None, t: int,
             quality: int) -> _Step:
        """Step ``(a, e, classes)`` of date ``t``; ``symbols`` and ``kept`` (B, h, w, M) in coded order, the dates
        before ``t`` known."""
        def at(grid, date):
            return gather(grid[date : date + 1, ..., a:e], classes)

        table, centre, mean = fine_coding(index, fine_mean, self.temporal.coarse[quality, index],
                                          self.temporal.fraction_bits)
        return _Step(index, table, centre, mean, None if t == 0 else at(symbols, t - 1),
                     None if t == 0 or kept is None else at(kept, t - 1), None if kept is None else at(kept, t), a)

    def keys(self, step: _Step, mixture_set: int, quality: int) -> np.ndarray:
        """Keys of a step's symbols: fine tables for date 0, set ``mixture_set``'s mixtures of them with the
        previous date's symbol for a later date."""
        if step.prev is None:
            return step.table
        weight = self.weights(mixture_set, quality, step.index, step.prev - step.mean, step.prev_kept, step.a)
        mixed, shift = self.mixed[mixture_set], step.prev - step.centre
        first = np.where(mixed.mixes(step.table, shift, weight), mixed_first(step.table, self.temporal.mixed_slot),
                         step.table)
        return mixed.keys(first, shift, weight)

    def tables(self, step: _Step, mixture_set: int):
        return self.temporal.fine if step.prev is None else self.mixed[mixture_set]

    def estimated_bits(self, steps: list[_Step], values: list[np.ndarray], mixture_set: int, quality: int) -> float:
        bits = 0.0
        mixed = self.mixed[mixture_set]
        for step, v in zip(steps, values):
            sel = (slice(None),) if step.kept is None else (step.kept,)
            t, _, d, w = mixed.split(self.keys(step, mixture_set, quality)[sel])
            bits += float(mixed.bits(t, (v - step.centre)[sel], d, w).sum())
        return bits

    def write_step(self, encoder, step: _Step, values: np.ndarray, mixture_set: int, quality: int) -> None:
        write_kept(encoder, values - step.centre, self.keys(step, mixture_set, quality), self.tables(step, mixture_set),
                   step.kept)

    def read_step(self, decoder, budget: PayloadBudget, step: _Step, mixture_set: int, quality: int) -> np.ndarray:
        return read_kept(decoder, self.keys(step, mixture_set, quality), step.centre, self.tables(step, mixture_set),
                         budget, step.kept)

    def write_y(self, encoder, symbols: np.ndarray, z: np.ndarray, quality: int, keep: np.ndarray | None) -> None:
        """Date by date: date 0 with fine means; a later date's steps are recorded, its set chosen by estimated
        bits and written first, then the steps."""
        if symbols.shape[0] > MAX_DATES:
            raise InvalidInputError(
                f"Expected at most {MAX_DATES} dates (images along the leading axes) in a {self.name} chunk. Got "
                f"{symbols.shape[0]} instead: chunk the time axis into fewer dates.")
        order = self.context.order
        known = coded_order(symbols, order)
        kept = None if keep is None else coded_order(keep, order)
        for t in range(symbols.shape[0]):
            steps: list[_Step] = []
            values: list[np.ndarray] = []

            def code_step(index, fine_mean, a, e, classes):
                step = self.step(index, fine_mean, a, e, classes, known, kept, t, quality)
                v = gather(known[t : t + 1, ..., a:e], classes)
                if t == 0:
                    self.write_step(encoder, step, v, 0, quality)
                else:  # the parameters do not depend on the set: record now, code once the set is chosen
                    steps.append(step)
                    values.append(v)
                return v

            run_steps(self.hyperprior, self.context, z[t : t + 1], quality, (1, *symbols.shape[1:]), code_step,
                      fraction_bits=self.temporal.fraction_bits)
            if t:
                sets = range(self.temporal.sets)
                chosen = min(sets, key=lambda k: self.estimated_bits(steps, values, k, quality))
                encoder.encode(np.array([chosen], np.int32), set_model(self.temporal.sets))
                for step, v in zip(steps, values):
                    self.write_step(encoder, step, v, chosen, quality)

    @property
    def search_fraction_bits(self) -> int:
        return self.temporal.fraction_bits

    def step_tables(self, index: np.ndarray, fine_mean: np.ndarray, quality: int):
        """Every date's fine-mean tables, as date 0 is coded (a later date's mixtures with the date before are left
        out: they make symbols near the previous date's cheaper, which the search does not weigh)."""
        tm = self.temporal
        table, centre, _ = fine_coding(index, fine_mean, tm.coarse[quality, index], tm.fraction_bits)
        return tm.fine, table, centre

    def read_y(self, decoder, budget: PayloadBudget, z: np.ndarray, quality: int, shape,
               keep: np.ndarray | None, synthesized: Synthesized | None = None) -> np.ndarray:
        if shape[0] > MAX_DATES:
            raise CorruptChunkError(
                f"Expected at most {MAX_DATES} dates in a {self.name} chunk. Got {shape[0]} instead.")
        order = self.context.order
        kept = None if keep is None else coded_order(keep, order)
        out = np.zeros(shape, np.int64)
        decoded = np.zeros((shape[0], shape[2], shape[3], shape[1]), np.int64)  # coded order, dates so far
        for t in range(shape[0]):
            chosen = 0
            if t:
                try:
                    chosen = int(decoder.decode(set_model(self.temporal.sets), 1)[0])
                except DECODER_ERRORS as e:
                    raise CorruptChunkError(
                        f"Expected a decodable y section. Got {type(e).__name__}: {e} instead.") from None

            def code_step(index, fine_mean, a, e, classes):
                return self.read_step(decoder, budget, self.step(index, fine_mean, a, e, classes, decoded, kept, t,
                                                                 quality), chosen, quality)

            date = None if synthesized is None else tuple(a[t : t + 1] for a in synthesized)
            out[t : t + 1] = run_steps(self.hyperprior, self.context, z[t : t + 1], quality, (1, *shape[1:]),
                                       code_step, fraction_bits=self.temporal.fraction_bits, synthesized=date)
            decoded[t : t + 1] = coded_order(out[t : t + 1], order)
        return out


def set_model(sets: int):
    """The uniform model of a later date's mixture-set number."""
    import constriction

    return constriction.stream.model.Uniform(sets)
