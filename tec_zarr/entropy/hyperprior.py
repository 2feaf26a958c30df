"""Hyperprior entropy coding of a model's latent symbols, with every probability fixed by integers.

A model whose manifest says ``"entropy_model": "hyperprior"`` (``tec-hp``) has the same analysis/synthesis graphs,
gains and symbols ``y_q = round(y * gain[q])`` as its base model; only the coding of the symbols differs::

    y ──h_a (ONNX, float, encoder only)──▶ × zgain[q] ──round──▶ z_q ──factorized integer tables[q]──▶ z section
    z_q ──integer h_s (this module)──▶ L, MU: log2 sigma and mean of y, round(real * 2**LOG_BITS | 2**mean_bits)
    table  = clip(round((L + log2|gain[q, c]| - log2 sigma_min) * steps_per_octave), 0, T - 1)   (integer ops)
    mean_q = round(MU * gain[q, c] / 2**mean_bits)                                             (integer ops)
    y_q - mean_q ──integer Gaussian table[table], grouped by table──▶ y section

The float ``h_a`` only chooses z, which is stored, so its rounding never reaches the decoder. ``h_s`` runs in exact
integer arithmetic like :mod:`tec_zarr.integer.synthesis` (float64 holding integers, every partial sum below 2**52, checked
on load; ``np.floor`` of power-of-two multiples), so table indices and means are the same bits on any machine.
The scale tables are integer counts of discretized zero-mean Gaussians, computed once at export and stored.

Payload (:mod:`tec_zarr.bitstream.payload`): ``u32 z_len | z section (the factorized coding of z_q) | y section``
(both constriction range-coder words). Symbols are coded table by table in the stable order of the table index over
the (B, M, h, w) elements; values outside a table are escaped (:mod:`.rangecoder`). A thinned chunk's payload may
instead hold the first level's z and code each thinned symbol with the first level's probability of its run
(the chunk header's runs-summed extension, :mod:`.runsum`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..bitstream import payload as sections
from ..errors import CorruptChunkError, WeightsIntegrityError
from ..integer.layers import CLIP_BITS, EXACT_LIMIT, KERNEL, conv3, deconv
from ..requantize import Thinning, run_ends
from ..runtime import Graph
from . import factorized
from .base import SEARCH_STEPS, LatentCoder
from . import runsum
from .rangecoder import PayloadBudget, checked_symbols, range_decoder, read_grouped, write_grouped
from .tables import EntropyTables, IndexedTables

FILENAME = "hyperprior.npz"
ANALYSIS_FILENAME = "hyper_analysis.onnx"
ENTROPY_MODEL = "hyperprior"
LOG_BITS = 12  # L and MU are round(real * 2**LOG_BITS)
GAIN_BITS = 16  # gain_int = round(gain * 2**GAIN_BITS)
CALIBRATION_BITS = 18  # the largest calibration activation maps to 2**18: 16x headroom below the clip
INPUT_EXTRA_BITS = 8
Z_LIMIT = 1 << 20  # z symbols are clipped to this before h_s (only corrupt or absurd data reaches it)
MEAN_LIMIT = 1 << 24
MAX_MEAN_BITS = 20  # |MU * gain_int| < 2**(CLIP_BITS + MAX_MEAN_BITS - LOG_BITS) * 2**30 = 2**60
LOG_GAIN_FLOOR = -64  # log2 |gain| below this (dead channels) counts as this
Z_STRIDE = 4  # z is 1/4 of the latent resolution
ROWS_PER_BLOCK = 16


@dataclass(frozen=True, eq=False)
class Hyperprior:
    """Everything the decoder needs besides the base model (stored in ``hyperprior.npz``)."""

    z_in: np.ndarray  # (Q, Z) int64: 2**(a0 + INPUT_EXTRA_BITS) / zgain[q]
    weights: tuple[np.ndarray, ...]  # deconv, deconv: (Cin, 25 * Cout); conv3: (9, Cin, Cout); float64 integers
    biases: tuple[np.ndarray, ...]  # (Cout,) float64 integers at the accumulator's scale
    shifts: tuple[int, ...]  # accumulator >> shift = next activation (last: L and MU at 2**LOG_BITS)
    log_gain: np.ndarray  # (Q, M) int64: round(log2 |gain| * 2**LOG_BITS), floored at LOG_GAIN_FLOOR
    gain_int: np.ndarray  # (Q, M) int64: round(gain * 2**GAIN_BITS)
    log_sigma_min: int  # round(log2(sigma_min) * 2**LOG_BITS)
    steps_per_octave: int
    scale_offsets: np.ndarray  # (T,) int64: first symbol of each scale table
    scale_pmf: np.ndarray  # (T, L) int64 counts summing to 2**16, escape last, padded with 0
    scale_lengths: np.ndarray  # (T,) int64
    z_tables: EntropyTables  # (Q, Z, Lz): factorized z tables, as the base model's latent tables
    z_gain: np.ndarray  # (Q, Z) float32: encoder side only (z_q = round(h_a(y) * z_gain[q]))
    # MU is round(mean * 2**mean_bits): finer than LOG_BITS where large gains magnify its rounding (tec-ctx: 20).
    mean_bits: int = LOG_BITS

    def __post_init__(self):
        limit = 2.0**CLIP_BITS
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            cout = b.shape[0]
            if w.ndim == 3:  # conv3: (9, Cin, Cout)
                worst = np.abs(w).sum(axis=(0, 1)) * limit + np.abs(b)
            else:
                worst = np.abs(w).reshape(w.shape[0], KERNEL * KERNEL, cout).sum(axis=(0, 1)) * limit + np.abs(b)
            if worst.max() >= EXACT_LIMIT or self.shifts[i] < 0:
                raise WeightsIntegrityError(f"Expected integer hyper-synthesis sums bounded by 2**52. Got {worst.max():.3g}.")
        if not LOG_BITS <= self.mean_bits <= MAX_MEAN_BITS or self.shifts[-1] < self.mean_bits - LOG_BITS:
            raise WeightsIntegrityError(f"Expected mean bits in [{LOG_BITS}, {MAX_MEAN_BITS}]. Got {self.mean_bits}.")
        if (np.abs(self.z_in) >= 2**40).any() or (np.abs(self.gain_int) >= 2**30).any():
            raise WeightsIntegrityError("Expected hyperprior input and gain integers below 2**40 and 2**30.")
        # The scale tables, checked as they are built.
        object.__setattr__(self, "scales", IndexedTables(self.scale_offsets, self.scale_pmf, self.scale_lengths))

    @property
    def tables(self) -> int:
        return self.scales.count

    @property
    def z_channels(self) -> int:
        return self.z_tables.channels

    # -- serialization ------------------------------------------------------------------------------------------

    def to_npz(self) -> bytes:
        arrays = {
            "z_in": self.z_in, "shifts": np.asarray(self.shifts, np.int64), "log_gain": self.log_gain,
            "gain_int": self.gain_int, "log_sigma_min": np.int64(self.log_sigma_min),
            "steps_per_octave": np.int64(self.steps_per_octave), "scale_offsets": self.scale_offsets,
            "scale_pmf": self.scale_pmf.astype(np.int64), "scale_lengths": self.scale_lengths,
            "z_offsets": self.z_tables.offsets, "z_pmf": self.z_tables.pmf.astype(np.int64),
            "z_lengths": self.z_tables.lengths, "z_gain": self.z_gain.astype(np.float32),
            "mean_bits": np.int64(self.mean_bits),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w.astype(np.int64), b.astype(np.int64)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> Hyperprior:
        try:
            with np.load(io.BytesIO(data)) as z:
                shifts = tuple(int(s) for s in z["shifts"])
                return cls(
                    z_in=z["z_in"].astype(np.int64),
                    weights=tuple(z[f"w{i}"].astype(np.float64) for i in range(len(shifts))),
                    biases=tuple(z[f"b{i}"].astype(np.float64) for i in range(len(shifts))),
                    shifts=shifts,
                    log_gain=z["log_gain"].astype(np.int64),
                    gain_int=z["gain_int"].astype(np.int64),
                    log_sigma_min=int(z["log_sigma_min"]),
                    steps_per_octave=int(z["steps_per_octave"]),
                    scale_offsets=z["scale_offsets"].astype(np.int64),
                    scale_pmf=z["scale_pmf"].astype(np.int64),
                    scale_lengths=z["scale_lengths"].astype(np.int64),
                    z_tables=EntropyTables(offsets=z["z_offsets"].astype(np.int32), pmf=z["z_pmf"].astype(np.int64),
                                           lengths=z["z_lengths"].astype(np.int32)),
                    z_gain=z["z_gain"].astype(np.float32),
                    mean_bits=int(z["mean_bits"]) if "mean_bits" in z.files else LOG_BITS,
                )
        except (KeyError, ValueError, OSError, CorruptChunkError) as e:
            raise WeightsIntegrityError(f"Expected a valid {FILENAME}. Got {type(e).__name__}: {e} instead.") from None

    # -- the integer hyper-synthesis ------------------------------------------------------------------------------

    def synthesize(self, z: np.ndarray, quality: int, *, matmul=np.matmul) -> tuple[np.ndarray, np.ndarray]:
        """z symbols (B, Z, h, w) -> (L, MU): int64 (B, M, 4h, 4w), log2 sigma of y at 2**LOG_BITS and its mean
        at 2**mean_bits (the last layer's mean half is shifted that much less, and clipped that much wider)."""
        return channels_first(self.synthesize_channels_last(z, quality, matmul=matmul))

    def synthesize_channels_last(self, z: np.ndarray, quality: int, *, matmul=np.matmul) -> Synthesized:
        """:meth:`synthesize` as float64 integers (B, 4h, 4w, M), the layers' own layout (the context steps')."""
        limit = 2**CLIP_BITS
        s = np.clip(np.asarray(z, np.int64), -Z_LIMIT, Z_LIMIT)
        x = np.clip((s * self.z_in[quality][None, :, None, None]) >> INPUT_EXTRA_BITS, -limit, limit)
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1)).astype(np.float64)  # (B, h, w, C)
        last = len(self.weights) - 1
        for i, (w, b, shift) in enumerate(zip(self.weights, self.biases, self.shifts)):
            acc = conv3(x, w, b, matmul) if w.ndim == 3 else deconv(x, w, b, ROWS_PER_BLOCK, matmul)
            if i == last:
                break
            x = np.clip(np.floor(acc * 2.0**-shift), -limit, limit)
            np.maximum(x, 0.0, out=x)  # ReLU
        m = acc.shape[-1] // 2
        log_sigma = np.clip(np.floor(acc[..., :m] * 2.0**-shift), -limit, limit)
        extra = self.mean_bits - LOG_BITS
        mu = np.clip(np.floor(acc[..., m:] * 2.0 ** (extra - shift)), -limit << extra, limit << extra)
        return log_sigma, mu

    def parameters(self, z: np.ndarray, quality: int, synthesized: Synthesized | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """z symbols -> (table index, integer mean of y_q), both int64 (B, M, 4h, 4w); integer operations only.
        ``synthesized``: :meth:`synthesize_channels_last` of ``z`` at ``quality``, if already computed."""
        log_sigma, mu = channels_first(synthesized or self.synthesize_channels_last(z, quality))
        return self.index_and_mean(log_sigma, mu, self.log_gain[quality][None, :, None, None],
                                   self.gain_int[quality][None, :, None, None])

    def index_and_mean(self, log_sigma, mu, log_gain, gain_int, fraction_bits: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Integer log2 sigma (2**LOG_BITS) and mean (2**mean_bits) of y -> scale table index and the mean of y_q:
        rounded to an integer (``fraction_bits`` 0), else floor(mean * 2**fraction_bits), from which
        ``(m + 2**(fraction_bits - 1)) >> fraction_bits`` is the rounded integer mean exactly."""
        scaled = (log_sigma + log_gain - self.log_sigma_min) * self.steps_per_octave + (1 << (LOG_BITS - 1))
        index = np.clip(scaled >> LOG_BITS, 0, self.tables - 1)
        shift = self.mean_bits + GAIN_BITS - fraction_bits
        half = 0 if fraction_bits else 1 << (shift - 1)
        mean = (mu * gain_int + half) >> shift
        limit = MEAN_LIMIT << fraction_bits
        return index, np.clip(mean, -limit, limit)


# The integer hyper-synthesis' output as the layers leave it: (log2 sigma, mean), float64 integers (B, h, w, M). A
# thinned chunk's decode needs it twice (the level's tables, then the top level's centroids); it is computed once.
Synthesized = tuple[np.ndarray, np.ndarray]


def channels_first(synthesized: Synthesized) -> tuple[np.ndarray, np.ndarray]:
    """:data:`Synthesized` as int64 (B, M, h, w) each."""
    return tuple(np.ascontiguousarray(np.moveaxis(a, -1, 1).astype(np.int64)) for a in synthesized)


# -- coding ----------------------------------------------------------------------------------------------------------


def require_z_grid(shape) -> None:
    """Encoders' precondition (chunks pad to the model's multiple): latent sides that z's grid divides."""
    if shape[2] % Z_STRIDE or shape[3] % Z_STRIDE:
        raise ValueError(f"Expected latent sides that are multiples of {Z_STRIDE}. Got {tuple(shape)} instead.")


def z_skip(skip: np.ndarray | None) -> np.ndarray | None:
    """(B, h/4, w/4): z positions whose every latent is skipped (they are not coded either, and read as 0)."""
    if skip is None:
        return None
    b, h, w = skip.shape
    return skip.reshape(b, h // Z_STRIDE, Z_STRIDE, w // Z_STRIDE, Z_STRIDE).all(axis=(2, 4))


def read_z(hp: Hyperprior, payload: bytes, quality: int, shape: tuple[int, int, int, int],
           skip: np.ndarray | None = None):
    """The z symbols at the head of a payload and the bytes after them. Raises CorruptChunkError."""
    b, m, h, w = shape
    if h % Z_STRIDE or w % Z_STRIDE or m != hp.log_gain.shape[1] or not 0 <= quality < hp.log_gain.shape[0]:
        raise CorruptChunkError(f"Expected latents of sides that are multiples of {Z_STRIDE}. Got {shape} instead.")
    z_bytes, rest = sections.split_z_section(payload)
    z_shape = (b, hp.z_channels, h // Z_STRIDE, w // Z_STRIDE)
    z = factorized.decode(z_bytes, quality, z_shape, hp.z_tables, z_skip(skip))
    return z, rest


class HyperpriorCoder(LatentCoder):
    """Symbols coded with a Gaussian per symbol whose scale and mean the integer hyper-synthesis computes from the
    stored side information z: tec-hp."""

    name = "hyperprior"
    files = (FILENAME, ANALYSIS_FILENAME)
    # Whether thinned chunks may code their symbols under the first level's model summed over runs
    # (:mod:`.runsum`): the hyperprior and context coders; the temporal coder's mixtures have no such form.
    sums_runs: ClassVar[bool] = True
    refinable = True

    def __init__(self, hyperprior: Hyperprior, analysis: Graph):
        self.hyperprior = hyperprior
        self.analysis = analysis  # h_a, encoder side only: it chooses z

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], tables: EntropyTables) -> HyperpriorCoder:
        return cls(Hyperprior.from_npz(files[FILENAME]), Graph.from_bytes(files[ANALYSIS_FILENAME], "y"))

    def side_information(self, y: np.ndarray, quality: int) -> np.ndarray:
        """The encoder's side information: round(h_a(y) * zgain[q]) as int32 (B, Z, h/4, w/4)."""
        t = self.analysis.run(np.ascontiguousarray(y, np.float32))
        z = np.rint(t.astype(np.float64) * self.hyperprior.z_gain[quality][None, :, None, None].astype(np.float64))
        return np.clip(z, -Z_LIMIT, Z_LIMIT).astype(np.int32)

    def encode(self, y: np.ndarray, symbols: np.ndarray, quality: int, z: np.ndarray | None = None, *,
               skip: np.ndarray | None = None) -> bytes:
        """``z`` (tests): side information other than the encoder's own choice."""
        import constriction

        require_z_grid(symbols.shape)
        if z is None:
            z = self.side_information(y, quality)
        z, z_bytes = self.coded_z(z, quality, skip)
        encoder = constriction.stream.queue.RangeEncoder()
        keep = None if skip is None else np.broadcast_to(~skip[:, None], symbols.shape)
        self.write_y(encoder, np.asarray(symbols, np.int64), z, quality, keep)
        return sections.join_z_section(z_bytes, encoder.get_compressed().tobytes())

    def recode(self, payload: bytes, y: np.ndarray, symbols: np.ndarray, source: int, thinning: Thinning, *,
               skip: np.ndarray | None = None, source_summed: bool = False) -> tuple[bytes, bool]:
        """The shortest of up to three payloads, and whether it is the runs-summed one. Two code the symbols with
        the level's own tables, their z (side information only: it changes no symbol) from the source's z rounded
        at the new gain, or from h_a of the estimate ``y`` kept inside the bin the source's z stored for h_a(y)
        (measured on tec-hp: h_a of the estimate alone costs up to +50 % bits, each of the two up to +12 %). The
        third (:attr:`sums_runs`) keeps the first level's z (the source's own bytes where the source has it) and
        codes each symbol with the first level's probability of its run (:mod:`.runsum`)."""
        quality, top = thinning.levels[-1], thinning.levels[0]
        z_quality = top if source_summed else source  # the level the source's z was coded at
        source_z = read_z(self.hyperprior, payload, z_quality, symbols.shape, skip)[0].astype(np.float64)
        z_gain = self.hyperprior.z_gain.astype(np.float64)[:, None, :, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):  # a dead z channel (gain 0) bounds nothing
            ends = (source_z - 0.5) / z_gain[z_quality], (source_z + 0.5) / z_gain[z_quality]
            rounded = np.nan_to_num(source_z / z_gain[z_quality], nan=0.0, posinf=0.0, neginf=0.0)
        low, high = np.nan_to_num(np.minimum(*ends), nan=-np.inf), np.nan_to_num(np.maximum(*ends), nan=np.inf)
        estimated = np.clip(self.analysis.run(np.ascontiguousarray(y, np.float32)).astype(np.float64), low, high)
        payloads = []
        for h in (rounded, estimated):
            z = np.clip(np.rint(h * z_gain[quality]), -Z_LIMIT, Z_LIMIT).astype(np.int32)
            payloads.append((self.encode(y, symbols, quality, z, skip=skip), False))
        if self.sums_runs:
            if z_quality == top:
                z_top, z_bytes = source_z.astype(np.int32), sections.split_z_section(payload)[0]
            else:  # thinned before with the level's own tables: the first level's z chosen again
                z_top = np.clip(np.rint(estimated * z_gain[top]), -Z_LIMIT, Z_LIMIT).astype(np.int32)
                z_top, z_bytes = self.coded_z(z_top, top, skip)
            try:
                payloads.append((self.encode_summed(z_bytes, z_top, symbols, thinning, skip), True))
            except runsum.TooManyTables:
                pass  # only the level's own tables
        return min(payloads, key=lambda p: len(p[0]))

    def code_lengths(self, y: np.ndarray, symbols: np.ndarray, quality: int, *,
                     skip: np.ndarray | None = None) -> np.ndarray:
        z, _ = self.coded_z(self.side_information(y, quality), quality, skip)
        index, mean = self.hyperprior.parameters(z, quality)
        centred = np.asarray(symbols, np.int64) - mean
        return np.stack([self.hyperprior.scales.bits(index, centred + d) for d in SEARCH_STEPS])

    def coded_z(self, z: np.ndarray, quality: int, skip: np.ndarray | None) -> tuple[np.ndarray, bytes]:
        """``z`` as the decoder will read it (0 where every latent below is skipped) and its z section."""
        zs = z_skip(skip)
        if zs is not None:  # not coded, read as 0: the hyper-synthesis must see 0 there on both sides
            z = z * ~zs[:, None]
        return z, factorized.encode(z, quality, self.hyperprior.z_tables, zs)

    def encode_summed(self, z_bytes: bytes, z: np.ndarray, symbols: np.ndarray, thinning: Thinning,
                      skip: np.ndarray | None) -> bytes:
        """A runs-summed payload: the first level's z section ``z_bytes`` (of ``z``), then the thinned ``symbols``
        each with the first level's probability of its run. Raises :class:`~.runsum.TooManyTables`."""
        import constriction

        encoder = constriction.stream.queue.RangeEncoder()
        keep = None if skip is None else np.broadcast_to(~skip[:, None], symbols.shape)
        self.write_summed_y(encoder, np.asarray(symbols, np.int64), z, thinning, keep)
        return sections.join_z_section(z_bytes, encoder.get_compressed().tobytes())

    def write_summed_y(self, encoder, symbols: np.ndarray, z: np.ndarray, thinning: Thinning,
                       keep: np.ndarray | None) -> None:
        index, mean = self.hyperprior.parameters(z, thinning.levels[0])
        tables, keys = runsum.run_tables(self.hyperprior.scales, thinning.chain, runsum.channel_grid(symbols.shape),
                                         index, mean)
        runsum.write_kept(encoder, symbols, keys, tables, keep)

    def read_summed_y(self, decoder, budget: PayloadBudget, z: np.ndarray, thinning: Thinning, shape,
                      keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inverse of :meth:`write_summed_y`: the thinned symbols and each one's first-level table index and mean
        (for :func:`run_centroids`), int64 (B, M, h, w)."""
        index, mean = self.hyperprior.parameters(z, thinning.levels[0])
        tables, keys = runsum.tables_or_corrupt(self.hyperprior.scales, thinning.chain, runsum.channel_grid(shape),
                                                index, mean)
        return runsum.read_kept(decoder, keys, tables, budget, keep), index, mean

    def decode_summed(self, payload: bytes, shape: tuple[int, int, int, int], skip: np.ndarray | None,
                      thinning: Thinning) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A runs-summed payload's symbols, first-level table indices and means."""
        if not self.sums_runs:
            raise CorruptChunkError(f"Expected a thinned {self.name} chunk coded with its level's tables. Got one "
                                    "marked runs summed instead.")
        z, rest = read_z(self.hyperprior, payload, thinning.levels[0], shape, skip)
        decoder = range_decoder(rest, "y section")
        keep = None if skip is None else np.broadcast_to(~skip[:, None], shape)
        symbols, index, mean = self.read_summed_y(decoder, PayloadBudget(len(rest), "y section"), z, thinning, shape,
                                                  keep)
        if not decoder.maybe_exhausted():
            raise CorruptChunkError("Expected the y section to end with its last symbol. Got trailing data instead.")
        return checked_symbols(symbols), index, mean

    def decode_thinned(self, payload: bytes, quality: int, shape: tuple[int, int, int, int], *,
                       skip: np.ndarray | None, thinning: Thinning) -> tuple[np.ndarray, np.ndarray]:
        """Runs of at least CENTROID_MIN_RUN top symbols decode to their centroid under the top level's
        distribution (:func:`run_centroids`), shorter ones to their middle. Runs-summed chunks have that
        distribution at hand (the context models' refined one, for tec-ctx); the others take z's: tec-ctx and
        tec-tt without their context networks' refinement (which decoding at the thinned level never computes for
        the top level): measured on tec-ctx thinning 4 -> 0, -24 % bits at equal PSNR on the desert tile, +3 % on
        the held-out places. The hyper-synthesis runs once for both."""
        if thinning.summed:
            symbols, index, mean = self.decode_summed(payload, shape, skip, thinning)
            return symbols, run_centroids(symbols, thinning, self.hyperprior.scales, index, mean)
        z, rest = read_z(self.hyperprior, payload, quality, shape, skip)
        synthesized = self.hyperprior.synthesize_channels_last(z, quality)
        symbols = self.read_symbols(rest, z, quality, shape, skip, synthesized)
        log_sigma, mu = channels_first(synthesized)
        top = thinning.levels[0]
        index, mean = self.hyperprior.index_and_mean(log_sigma, mu, self.hyperprior.log_gain[top][None, :, None, None],
                                                     self.hyperprior.gain_int[top][None, :, None, None])
        return symbols, run_centroids(symbols, thinning, self.hyperprior.scales, index, mean)

    def decode(self, payload: bytes, quality: int, shape: tuple[int, int, int, int], *,
               skip: np.ndarray | None = None, thinning: Thinning | None = None) -> np.ndarray:
        if thinning is not None and thinning.summed:
            return self.decode_summed(payload, shape, skip, thinning)[0]
        z, rest = read_z(self.hyperprior, payload, quality, shape, skip)
        return self.read_symbols(rest, z, quality, shape, skip)

    def read_symbols(self, rest: bytes, z: np.ndarray, quality: int, shape, skip: np.ndarray | None,
                     synthesized: Synthesized | None = None) -> np.ndarray:
        """The y section ``rest`` (the payload after z) read through to its end."""
        decoder = range_decoder(rest, "y section")
        keep = None if skip is None else np.broadcast_to(~skip[:, None], shape)
        symbols = self.read_y(decoder, PayloadBudget(len(rest), "y section"), z, quality, shape, keep, synthesized)
        if not decoder.maybe_exhausted():
            raise CorruptChunkError("Expected the y section to end with its last symbol. Got trailing data instead.")
        return checked_symbols(symbols)

    def write_y(self, encoder, symbols: np.ndarray, z: np.ndarray, quality: int, keep: np.ndarray | None) -> None:
        """The y section: every coded symbol (``keep``; None: all) minus its mean, with the scale table its index
        names."""
        index, mean = self.hyperprior.parameters(z, quality)
        write_kept(encoder, symbols - mean, index, self.hyperprior.scales, keep)

    def read_y(self, decoder, budget: PayloadBudget, z: np.ndarray, quality: int, shape,
               keep: np.ndarray | None, synthesized: Synthesized | None = None) -> np.ndarray:
        """Inverse of :meth:`write_y`: int64 symbols of ``shape``, 0 where not kept. ``synthesized``: the
        hyper-synthesis of ``z`` at ``quality`` where the caller has it already."""
        index, mean = self.hyperprior.parameters(z, quality, synthesized)
        return read_kept(decoder, index, mean, self.hyperprior.scales, budget, keep)


# Runs this long (top symbols) decode to their centroid: measured on tec-hp, +1.1 to +1.3 dB thinning 4 -> 0 on the
# desert tile and +0.0 to +0.1 on the held-out places, but 0.1 to 0.5 dB worse than the middle over runs of 2 to 8
# (4 -> 3, 4 -> 1), where z's Gaussian fits the symbols less well than a uniform spread over the run.
CENTROID_MIN_RUN = 16


def run_centroids(symbols: np.ndarray, thinning: Thinning, scales: IndexedTables, index: np.ndarray,
                  mean: np.ndarray) -> np.ndarray:
    """float64: twice the value each thinned symbol decodes to: over runs of at least CENTROID_MIN_RUN top symbols the
    mean of the top symbols in the run weighted by their probability (table ``index``, centred on ``mean``: the top
    level's parameters), elsewhere (and where the run holds no table mass) the run's middle."""
    lo, hi = run_ends(symbols, thinning.chain)
    doubled = (lo + hi).astype(np.float64)
    wide = hi - lo + 1 >= CENTROID_MIN_RUN
    if not wide.any():
        return doubled
    index, mean, lo, hi = index[wide], mean[wide], lo[wide], hi[wide]  # the rest keep their middles
    counts, moments = scales.prefix_sums
    offsets = scales.offsets[index]
    width = counts.shape[1] - 1

    def below(table: np.ndarray, x: np.ndarray) -> np.ndarray:  # the table's sum over values <= x
        return table[index, np.clip(x - offsets + 1, 0, width)]

    a, b = lo - mean, hi - mean
    mass = below(counts, b) - below(counts, a - 1)
    centroid = 2.0 * mean + 2.0 * (below(moments, b) - below(moments, a - 1)) / np.maximum(mass, 1.0)
    doubled[wide] = np.where(mass > 0, centroid, doubled[wide])
    return doubled


def write_kept(encoder, values: np.ndarray, index: np.ndarray, tables, keep: np.ndarray | None) -> None:
    """:func:`~.rangecoder.write_grouped` of the kept elements (row-major order; None: all)."""
    if keep is None:
        write_grouped(encoder, values, index, tables)
    else:
        write_grouped(encoder, values[keep], index[keep], tables)


def read_kept(decoder, index: np.ndarray, mean: np.ndarray, tables, budget: PayloadBudget,
              keep: np.ndarray | None) -> np.ndarray:
    """Inverse of :func:`write_kept`: values + mean where kept, 0 elsewhere."""
    if keep is None:
        return read_grouped(decoder, index, tables, budget) + mean
    out = np.zeros(index.shape, np.int64)
    out[keep] = read_grouped(decoder, index[keep], tables, budget) + mean[keep]
    return out
