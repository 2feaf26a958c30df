"""Temporal context coding (TEC-TT): a chunk's images are dates, earliest first, and each later date's symbols are
coded against the date before it.

A model whose manifest says ``"entropy_model": "temporal"`` (``tec-tt``) is its base context model (:mod:`.context`:
same graphs, gains, symbols, hyperprior and context networks, so the same pixels) plus ``temporal.npz``. The chunk's
batch axis (its leading axes flattened) is the time axis. Date 0 is coded exactly as the context model codes a
one-image chunk. Every later date walks the same ten steps, and each symbol's distribution becomes a mixture
(:mod:`.mixture`) of the context model's table at its mean and a table at the previous date's co-located symbol,
``prev``: ``(16 - w) p_t(v - mean) + w p_u(v - prev)``.

The model holds K *mixture sets*, each a weight look-up table keyed by quality, channel, scale-index bucket and
``min(|prev - mean|, D - 1)`` and a ``sharpen``: the second table ``u = max(t - sharpen, 0)``, narrower the more the
previous date predicts. Set 0 is fitted on training sequences (dates months apart); the others trust the previous
date more, for revisits days apart or repeated acquisitions. The encoder picks the set per date (by estimated bits)
and stores its number; ``w = 0`` where the previous date's symbol was not coded (nodata) or lies more than
``max_shift`` from the mean. So every probability is still integer arithmetic on both sides.

Payload: the context model's (``u32 z_len | z section | y section``); the y section holds date 0's ten steps, then
for each later date its set number (uniform over K) and its ten steps, in one range-coder stream. Decoding is date
by date: date t needs date t - 1's symbols.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptChunkError, WeightsIntegrityError
from .context import FILENAME as CONTEXT_FILENAME
from .context import ContextCoder, ContextModel, gather, run_steps
from .hyperprior import Hyperprior, read_kept, write_kept
from .mixture import WEIGHT_ONE, MixedTables
from .rangecoder import DECODER_ERRORS, PayloadBudget
from .tables import EntropyTables

FILENAME = "temporal.npz"
ENTROPY_MODEL = "temporal"


@dataclass(frozen=True, eq=False)
class TemporalModel:
    """The mixture sets (``temporal.npz``): ``weights[k, q, c, index // index_bucket, min(|prev - mean|, D - 1)]`` in
    sixteenths, ``c`` in the context model's coded channel order, and ``sharpen[k]`` scale steps."""

    weights: np.ndarray  # (K, Q, M, index buckets, D) int64 in 0..15
    sharpen: tuple[int, ...]
    index_bucket: int
    max_shift: int

    def __post_init__(self):
        if self.weights.ndim != 5 or self.weights.shape[4] < 2 or not 1 <= self.weights.shape[0] <= 16:
            raise WeightsIntegrityError(
                f"Expected temporal weights of 5 axes (K <= 16, Q, M, I, D >= 2). Got {self.weights.shape} instead.")
        if self.weights.size and (self.weights.min() < 0 or self.weights.max() >= WEIGHT_ONE):
            raise WeightsIntegrityError(f"Expected mixture weights in 0..{WEIGHT_ONE - 1}. Got values outside instead.")
        if len(self.sharpen) != self.weights.shape[0] or any(not 0 <= s <= 1024 for s in self.sharpen):
            raise WeightsIntegrityError(
                f"Expected one sharpening in 0..1024 per mixture set. Got {self.sharpen} instead.")
        if not 1 <= self.index_bucket <= 1024 or not 1 <= self.max_shift <= 64:
            raise WeightsIntegrityError(
                f"Expected an index bucket in 1..1024 and a maximum shift in 1..64. Got {self.index_bucket} and "
                f"{self.max_shift} instead.")

    @property
    def sets(self) -> int:
        return int(self.weights.shape[0])

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, weights=self.weights.astype(np.uint8), sharpen=np.asarray(self.sharpen, np.int64),
                            index_bucket=np.int64(self.index_bucket), max_shift=np.int64(self.max_shift))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> TemporalModel:
        try:
            with np.load(io.BytesIO(data)) as z:
                return cls(weights=z["weights"].astype(np.int64), sharpen=tuple(int(s) for s in z["sharpen"]),
                           index_bucket=int(z["index_bucket"]), max_shift=int(z["max_shift"]))
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise WeightsIntegrityError(f"Expected a valid {FILENAME}. Got {type(e).__name__}: {e} instead.") from None


def coded_order(grid: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(B, M, h, w) in the model's channel order -> (B, h, w, M) in the context model's coded order."""
    return np.moveaxis(grid[:, order], 1, -1)


@dataclass
class _Step:
    """One step of a later date, recorded by the encoder before it chooses the mixture set."""

    index: np.ndarray
    mean: np.ndarray
    values: np.ndarray
    prev: np.ndarray
    prev_kept: np.ndarray | None
    kept: np.ndarray | None
    a: int


class TemporalCoder(ContextCoder):
    """The context model's coding of date 0, and mixtures with the previous date's symbols for every later date."""

    name = ENTROPY_MODEL
    files = (*ContextCoder.files, FILENAME)

    def __init__(self, hyperprior: Hyperprior, analysis, context: ContextModel, temporal: TemporalModel):
        super().__init__(hyperprior, analysis, context)
        q, m = hyperprior.log_gain.shape
        buckets = -(-hyperprior.scales.count // temporal.index_bucket)
        if temporal.weights.shape[1:4] != (q, m, buckets):
            raise WeightsIntegrityError(
                f"Expected temporal weights of shape (K, {q}, {m}, {buckets}, D) for this hyperprior. Got "
                f"{temporal.weights.shape} instead.")
        self.temporal = temporal
        self.mixed = tuple(MixedTables(hyperprior.scales, temporal.max_shift, s) for s in temporal.sharpen)

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

    def _write_date(self, encoder, steps: list[_Step], quality: int) -> None:
        """A later date: the set with the fewest estimated bits, its number, then every step with its mixtures."""
        def estimate(k):
            bits = 0.0
            for s in steps:
                w = self.weights(k, quality, s.index, s.prev - s.mean, s.prev_kept, s.a)
                sel = (slice(None),) if s.kept is None else (s.kept,)
                bits += float(self.mixed[k].bits(s.index[sel], (s.values - s.mean)[sel], (s.prev - s.mean)[sel],
                                                 w[sel]).sum())
            return bits

        chosen = min(range(self.temporal.sets), key=estimate) if self.temporal.sets > 1 else 0
        encoder.encode(np.array([chosen], np.int32), set_model(self.temporal.sets))
        for s in steps:
            w = self.weights(chosen, quality, s.index, s.prev - s.mean, s.prev_kept, s.a)
            keys = self.mixed[chosen].keys(s.index, s.prev - s.mean, w)
            write_kept(encoder, s.values - s.mean, keys, self.mixed[chosen], s.kept)

    def write_y(self, encoder, symbols: np.ndarray, z: np.ndarray, quality: int, keep: np.ndarray | None) -> None:
        """Date by date: date 0 as the context model, later dates mixed with the date before."""
        order = self.context.order
        known = coded_order(symbols, order)
        kept = None if keep is None else coded_order(keep, order)
        for t in range(symbols.shape[0]):
            now = known[t : t + 1]
            now_kept = None if kept is None else kept[t : t + 1]
            prev = None if t == 0 else known[t - 1 : t]
            prev_kept = None if t == 0 or kept is None else kept[t - 1 : t]
            steps: list[_Step] = []

            def code_step(index, mean, a, e, classes):
                values = gather(now[..., a:e], classes)
                step_kept = None if now_kept is None else gather(now_kept[..., a:e], classes)
                if prev is None:
                    write_kept(encoder, values - mean, index, self.hyperprior.scales, step_kept)
                else:  # the parameters do not depend on the set: record now, code once the set is chosen
                    steps.append(_Step(index, mean, values, gather(prev[..., a:e], classes),
                                       None if prev_kept is None else gather(prev_kept[..., a:e], classes),
                                       step_kept, a))
                return values

            run_steps(self.hyperprior, self.context, z[t : t + 1], quality, (1, *symbols.shape[1:]), code_step)
            if steps:
                self._write_date(encoder, steps, quality)

    def read_y(self, decoder, budget: PayloadBudget, z: np.ndarray, quality: int, shape,
               keep: np.ndarray | None) -> np.ndarray:
        order = self.context.order
        kept = None if keep is None else coded_order(keep, order)
        out = np.zeros(shape, np.int64)
        for t in range(shape[0]):
            now_kept = None if kept is None else kept[t : t + 1]
            prev = None if t == 0 else coded_order(out[t - 1 : t], order)
            prev_kept = None if t == 0 or kept is None else kept[t - 1 : t]
            chosen = 0
            if t:
                try:
                    chosen = int(decoder.decode(set_model(self.temporal.sets), 1)[0])
                except DECODER_ERRORS as e:
                    raise CorruptChunkError(f"Expected a decodable y section. Got {type(e).__name__}: {e} instead.") from None

            def code_step(index, mean, a, e, classes):
                step_kept = None if now_kept is None else gather(now_kept[..., a:e], classes)
                if prev is None:
                    return read_kept(decoder, index, mean, self.hyperprior.scales, budget, step_kept)
                shift = gather(prev[..., a:e], classes) - mean
                w = self.weights(chosen, quality, index, shift,
                                 None if prev_kept is None else gather(prev_kept[..., a:e], classes), a)
                return read_kept(decoder, self.mixed[chosen].keys(index, shift, w), mean, self.mixed[chosen], budget,
                                 step_kept)

            out[t : t + 1] = run_steps(self.hyperprior, self.context, z[t : t + 1], quality, (1, *shape[1:]),
                                       code_step)
        return out


def set_model(sets: int):
    """The uniform model of a later date's mixture-set number."""
    import constriction

    return constriction.stream.model.Uniform(sets)
