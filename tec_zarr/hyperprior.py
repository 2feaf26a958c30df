"""Hyperprior entropy coding of a model's latent symbols, with every probability fixed by integers.

A model whose manifest says ``"entropy_model": "hyperprior"`` (``tec-hp``) has the same analysis/synthesis graphs,
gains and symbols ``y_q = round(y * gain[q])`` as its base model; only the coding of the symbols differs::

    y ──h_a (ONNX, float, encoder only)──▶ × zgain[q] ──round──▶ z_q ──factorized integer tables[q]──▶ z section
    z_q ──integer h_s (this module)──▶ L, MU: log2 sigma and mean of y, round(real * 2**LOG_BITS | 2**mean_bits)
    table  = clip(round((L + log2|gain[q, c]| - log2 sigma_min) * steps_per_octave), 0, T - 1)   (integer ops)
    mean_q = round(MU * gain[q, c] / 2**mean_bits)                                             (integer ops)
    y_q - mean_q ──integer Gaussian table[table], grouped by table──▶ y section

The float ``h_a`` only chooses z, which is stored, so its rounding never reaches the decoder. ``h_s`` runs in exact
integer arithmetic like :mod:`tec_zarr.synthesis` (float64 holding integers, every partial sum below 2**52, checked
on load; ``np.floor`` of power-of-two multiples), so table indices and means are the same bits on any machine.
The scale tables are integer counts of discretized zero-mean Gaussians, computed once at export and stored.

Payload: ``u32 z_len | z section (entropy.encode of z_q) | y section`` (both constriction range-coder words).
Symbols are coded table by table in the stable order of the table index over the (B, M, h, w) elements; values
outside a table are escaped as in :mod:`tec_zarr.entropy`.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import numpy as np

from . import entropy, runtime
from .entropy import EntropyTables
from .errors import CorruptChunkError, WeightsIntegrityError
from .synthesis import KERNEL, _deconv

FILENAME = "hyperprior.npz"
ANALYSIS_FILENAME = "hyper_analysis.onnx"
ENTROPY_MODEL = "hyperprior"
LOG_BITS = 12  # L and MU are round(real * 2**LOG_BITS)
GAIN_BITS = 16  # gain_int = round(gain * 2**GAIN_BITS)
CLIP_BITS = 22  # activations (and L, MU) are clipped to +-2**22
EXACT_LIMIT = 2.0**52
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
    _models: dict = field(default_factory=dict, repr=False)

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
        t = self.scale_lengths.shape[0]
        if self.scale_pmf.shape[0] != t or self.scale_offsets.shape != (t,) or (self.scale_lengths < 2).any():
            raise WeightsIntegrityError("Expected one offset, length and table per scale.")
        for i in range(t):
            row = self.scale_pmf[i, : self.scale_lengths[i]]
            if (row <= 0).any() or row.sum() != 1 << entropy.TABLE_PRECISION_BITS:
                raise WeightsIntegrityError(f"Expected scale table {i} to hold positive counts summing to 2**16.")

    @property
    def tables(self) -> int:
        return int(self.scale_lengths.shape[0])

    @property
    def z_channels(self) -> int:
        return self.z_tables.channels

    def scale_model(self, t: int):
        model = self._models.get(t)
        if model is None:
            import constriction

            n = int(self.scale_lengths[t])
            model = constriction.stream.model.Categorical(self.scale_pmf[t, :n].astype(np.float64), perfect=False)
            self._models[t] = model
        return model

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
        limit = 2**CLIP_BITS
        s = np.clip(np.asarray(z, np.int64), -Z_LIMIT, Z_LIMIT)
        x = np.clip((s * self.z_in[quality][None, :, None, None]) >> INPUT_EXTRA_BITS, -limit, limit)
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1)).astype(np.float64)  # (B, h, w, C)
        last = len(self.weights) - 1
        for i, (w, b, shift) in enumerate(zip(self.weights, self.biases, self.shifts)):
            acc = _conv3(x, w, b, matmul) if w.ndim == 3 else _deconv(x, w, b, ROWS_PER_BLOCK, matmul)
            if i == last:
                break
            x = np.clip(np.floor(acc * 2.0**-shift), -limit, limit)
            np.maximum(x, 0.0, out=x)  # ReLU
        m = acc.shape[-1] // 2
        log_sigma = np.clip(np.floor(acc[..., :m] * 2.0**-shift), -limit, limit)
        extra = self.mean_bits - LOG_BITS
        mu = np.clip(np.floor(acc[..., m:] * 2.0 ** (extra - shift)), -limit << extra, limit << extra)
        return (np.ascontiguousarray(np.moveaxis(log_sigma, -1, 1).astype(np.int64)),
                np.ascontiguousarray(np.moveaxis(mu, -1, 1).astype(np.int64)))

    def parameters(self, z: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
        """z symbols -> (table index, integer mean of y_q), both int64 (B, M, 4h, 4w); integer operations only."""
        log_sigma, mu = self.synthesize(z, quality)
        return self.index_and_mean(log_sigma, mu, self.log_gain[quality][None, :, None, None],
                                   self.gain_int[quality][None, :, None, None])

    def index_and_mean(self, log_sigma, mu, log_gain, gain_int) -> tuple[np.ndarray, np.ndarray]:
        """Integer log2 sigma (2**LOG_BITS) and mean (2**mean_bits) of y -> scale table index, integer mean of y_q."""
        scaled = (log_sigma + log_gain - self.log_sigma_min) * self.steps_per_octave + (1 << (LOG_BITS - 1))
        index = np.clip(scaled >> LOG_BITS, 0, self.tables - 1)
        half = 1 << (self.mean_bits + GAIN_BITS - 1)
        mean = (mu * gain_int + half) >> (self.mean_bits + GAIN_BITS)
        return index, np.clip(mean, -MEAN_LIMIT, MEAN_LIMIT)


PATCH_BYTES = 1 << 24  # the 3x3 patch matrix is built a block of rows at a time, at most this large


def _conv3(x: np.ndarray, w: np.ndarray, b, matmul) -> np.ndarray:
    """Conv2d(k3, s1, p1) of integer (B, H, W, Cin) with w (9, Cin, Cout), taps (ky, kx): exact (B, H, W, Cout).
    One product over all 9 taps (patches of 9 Cin columns) per block of rows: fewer, larger matrix products."""
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


# -- coding ----------------------------------------------------------------------------------------------------------


def analysis_z(model, y: np.ndarray, quality: int) -> np.ndarray:
    """The encoder's side information: round(h_a(y) * zgain[q]) as int32 (B, Z, h/4, w/4)."""
    hp = load(model)
    graph, sha = analysis_graph(model)
    t = runtime.run(sha, graph, {"y": np.ascontiguousarray(y, np.float32)})
    z = np.rint(t.astype(np.float64) * hp.z_gain[quality][None, :, None, None].astype(np.float64))
    return np.clip(z, -Z_LIMIT, Z_LIMIT).astype(np.int32)


def encode(model, y: np.ndarray, symbols: np.ndarray, quality: int, z: np.ndarray | None = None) -> bytes:
    """``y`` float (B, M, h, w) from the encoder, ``symbols`` its int32 y_q. Returns the payload bytes."""
    hp = load(model)
    require_z_grid(symbols.shape)
    if z is None:
        z = analysis_z(model, y, quality)
    z_bytes = entropy.encode(z, quality, hp.z_tables)
    index, mean = hp.parameters(z, quality)
    y_bytes = encode_grouped(symbols.astype(np.int64) - mean, index, hp)
    return z_section(z_bytes) + y_bytes


def require_z_grid(shape) -> None:
    """Encoders' precondition (chunks pad to the model's multiple): latent sides that z's grid divides."""
    if shape[2] % Z_STRIDE or shape[3] % Z_STRIDE:
        raise ValueError(f"Expected latent sides that are multiples of {Z_STRIDE}. Got {tuple(shape)} instead.")


def decode(model, payload: bytes, quality: int, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`encode`: int32 symbols of ``shape`` (B, M, h, w). Raises CorruptChunkError."""
    hp = load(model)
    z, rest = read_z(hp, payload, quality, shape)
    index, mean = hp.parameters(z, quality)
    return checked_symbols(decode_grouped(rest, index, hp) + mean)


def read_z(hp: Hyperprior, payload: bytes, quality: int, shape: tuple[int, int, int, int]):
    """The z symbols at the head of a payload and the bytes after them. Raises CorruptChunkError."""
    b, m, h, w = shape
    if h % Z_STRIDE or w % Z_STRIDE or m != hp.log_gain.shape[1] or not 0 <= quality < hp.log_gain.shape[0]:
        raise CorruptChunkError(f"Expected latents of sides that are multiples of {Z_STRIDE}. Got {shape} instead.")
    if len(payload) < 4:
        raise CorruptChunkError("Expected a hyperprior payload with its z length. Got fewer than 4 bytes instead.")
    (z_len,) = struct.unpack_from("<I", payload)
    if 4 + z_len > len(payload):
        raise CorruptChunkError(f"Expected a z section of {z_len} bytes. Got {len(payload) - 4} instead.")
    z = entropy.decode(payload[4 : 4 + z_len], quality, (b, hp.z_channels, h // Z_STRIDE, w // Z_STRIDE), hp.z_tables)
    return z, payload[4 + z_len :]


def z_section(z_bytes: bytes) -> bytes:
    return struct.pack("<I", len(z_bytes)) + z_bytes


def checked_symbols(symbols: np.ndarray) -> np.ndarray:
    if symbols.min() < np.iinfo(np.int32).min or symbols.max() > np.iinfo(np.int32).max:
        raise CorruptChunkError("Expected latent symbols within int32. Got an overflowing escape instead.")
    return symbols.astype(np.int32)


def encode_grouped(values: np.ndarray, index: np.ndarray, hp: Hyperprior) -> bytes:
    """Each value with the scale table its index names, table by table (stable order within a table)."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    write_grouped(encoder, values, index, hp)
    return encoder.get_compressed().tobytes()


def write_grouped(encoder, values: np.ndarray, index: np.ndarray, hp: Hyperprior) -> None:
    """:func:`encode_grouped` into an open range encoder (later sections follow in the same stream)."""
    uniform_bits, uniform_chunk = entropy.escape_models()
    flat_index = index.ravel()
    order = np.argsort(flat_index, kind="stable")
    ordered = values.ravel()[order]
    counts = np.bincount(flat_index, minlength=hp.tables)
    start = 0
    for t in np.flatnonzero(counts):
        part = ordered[start : start + counts[t]]
        start += counts[t]
        lo, escape = int(hp.scale_offsets[t]), int(hp.scale_lengths[t]) - 1
        sym = part - lo
        outside = (sym < 0) | (sym >= escape)
        sym[outside] = escape
        encoder.encode(sym.astype(np.int32), hp.scale_model(int(t)))
        for v in part[outside]:
            entropy.encode_escape(encoder, int(v), lo, escape, uniform_bits, uniform_chunk)


def decode_grouped(data: bytes, index: np.ndarray, hp: Hyperprior) -> np.ndarray:
    """Inverse of :func:`encode_grouped`: int64 values shaped like ``index``."""
    decoder = range_decoder(data, "y section")
    out = read_grouped(decoder, index, hp)
    if not decoder.maybe_exhausted():
        raise CorruptChunkError("Expected the y section to end with its last symbol. Got trailing data instead.")
    return out


def range_decoder(data: bytes, what: str):
    import constriction

    if len(data) % 4:
        raise CorruptChunkError(f"Expected a {what} of whole 32-bit words. Got {len(data)} bytes instead.")
    return constriction.stream.queue.RangeDecoder(np.frombuffer(data, np.uint32).copy())


def read_grouped(decoder, index: np.ndarray, hp: Hyperprior) -> np.ndarray:
    """Inverse of :func:`write_grouped` from an open range decoder: int64 values shaped like ``index``."""
    uniform_bits, uniform_chunk = entropy.escape_models()
    flat_index = index.ravel()
    order = np.argsort(flat_index, kind="stable")
    counts = np.bincount(flat_index, minlength=hp.tables)
    ordered = np.empty(flat_index.size, np.int64)
    start = 0
    try:
        for t in np.flatnonzero(counts):
            n = int(counts[t])
            lo, escape = int(hp.scale_offsets[t]), int(hp.scale_lengths[t]) - 1
            sym = decoder.decode(hp.scale_model(int(t)), n).astype(np.int64)
            positions = np.flatnonzero(sym == escape)
            part = sym + lo
            if positions.size:
                zs = [entropy.decode_escape(decoder, uniform_bits, uniform_chunk) for _ in positions]
                part[positions] = entropy.escaped_values(zs, lo, escape)
            ordered[start : start + n] = part
            start += n
    except (AssertionError, ValueError, RuntimeError, OverflowError) as e:  # constriction's words for invalid data
        raise CorruptChunkError(f"Expected a decodable y section. Got {type(e).__name__}: {e} instead.") from None
    out = np.empty_like(ordered)
    out[order] = ordered
    return out.reshape(index.shape)


# -- loading -----------------------------------------------------------------------------------------------------


# Keyed by folder and digest: a copy of the model elsewhere (same digest) is verified on its own.
_cache: dict[tuple[str, str], Hyperprior] = {}
_graphs: dict[tuple[str, str], tuple[bytes, str]] = {}


def load(model) -> Hyperprior:
    """The verified hyperprior of a loaded hyperprior :class:`~tec_zarr.models.Model`, once per process."""
    key = (str(model.card.folder), model.sha256)
    found = _cache.get(key)
    if found is None:
        from .models import read_verified

        found = Hyperprior.from_npz(read_verified(model.card, FILENAME))
        _cache[key] = found
    return found


def analysis_graph(model) -> tuple[bytes, str]:
    """The verified hyper-analysis graph (encoder side only) and its sha256."""
    key = (str(model.card.folder), model.sha256)
    found = _graphs.get(key)
    if found is None:
        from .models import read_verified

        found = (read_verified(model.card, ANALYSIS_FILENAME), model.card.manifest["files"][ANALYSIS_FILENAME])
        _graphs[key] = found
    return found
