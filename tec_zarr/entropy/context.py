"""Context entropy coding (ELIC's image model) of a model's latent symbols, every probability fixed by integers.

A model whose manifest says ``"entropy_model": "context"`` (``tec-ctx``) has its base model's graphs, gains and
symbols and a hyperprior (:mod:`.hyperprior`, same ``hyperprior.npz`` layout). The symbols are coded in
steps: the channels, permuted by ``order``, form uneven groups (16, 16, 32, 64, 64); each group is coded in two
checkerboard halves, the anchors (``(i + j) % 2 == 0``) first. Before each step a group's parameter network
corrects the hyperprior's log2 sigma and mean of the step's symbols from

* the hyperprior features ``[L, L + log2|gain|, MU]`` of the group (1x1),
* the decoded values of all earlier groups (3x3, channel context),
* the group's decoded anchors (the 12 taps of a 5x5 window at odd offsets; non-anchors only: spatial context),

then ``ReLU -> 1x1 -> ReLU -> 1x1`` (log2 sigma at ``2**LOG_BITS``, mean at the hyperprior's ``2**mean_bits``).
Decoded values enter in latent units, ``symbol / gain`` at ``2**input_exp``
(integer: ``symbol * y_in[q, c] >> INPUT_EXTRA_BITS``). Every layer is exact integer arithmetic like the
hyperprior's (float64 holding integers, partial sums bounded below 2**52 and checked on load, ``np.floor`` of
power-of-two multiples), and the table index and mean come from the same integer mapping, so the encoder and any
decoder compute the same bits on any machine.

Payload: ``u32 z_len | z section | y section``; the y section is one range-coder stream holding the ten steps in
order (group 0 anchors, group 0 others, group 1 anchors, ...), each coded table by table as the hyperprior's.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import WeightsIntegrityError
from ..integer.layers import CLIP_BITS, EXACT_LIMIT, PATCH_BYTES, activation, conv3, live_channels
from ..requantize import Thinning, run_ends
from .hyperprior import (
    INPUT_EXTRA_BITS,
    LOG_BITS,
    Z_LIMIT,
    Hyperprior,
    HyperpriorCoder,
    Synthesized,
    read_kept,
    write_kept,
)
from . import runsum
from .base import SEARCH_STEPS
from .rangecoder import PayloadBudget
from .tables import EntropyTables

FILENAME = "context.npz"
ENTROPY_MODEL = "context"
# The 5x5 spatial taps (dy, dx) that can hold an anchor seen from a non-anchor: odd |dy| + |dx|.
SPATIAL_TAPS = tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy + dx) % 2)


@dataclass(frozen=True, eq=False)
class GroupNetwork:
    """One group's parameter network; float64 integer weights, accumulators shifted right into activations."""

    hyper_w: np.ndarray  # (3c, H): 1x1 over [L, L + log_gain, MU] at 2**input_exp
    channel_w: np.ndarray  # (9, earlier, H): 3x3 over earlier groups' decoded values (earlier may be 0)
    spatial_w: np.ndarray  # (12, c, H): SPATIAL_TAPS over the group's decoded anchors
    b1: np.ndarray
    hidden_w: np.ndarray  # (H, H)
    b2: np.ndarray
    out_w: np.ndarray  # (H, 2c): dL, dMU at 2**LOG_BITS
    b3: np.ndarray
    shifts: tuple[int, int, int]

    @property
    def channels(self) -> int:
        return self.spatial_w.shape[1]

    def check(self) -> None:
        limit = 2.0**CLIP_BITS
        first = (np.abs(self.hyper_w).sum(0) + np.abs(self.channel_w).sum((0, 1)) + np.abs(self.spatial_w).sum((0, 1)))
        layers = ((first, self.b1), (np.abs(self.hidden_w).sum(0), self.b2), (np.abs(self.out_w).sum(0), self.b3))
        for colsum, b in layers:
            if (colsum * limit + np.abs(b)).max() >= EXACT_LIMIT:
                raise WeightsIntegrityError("Expected context network sums bounded by 2**52. Got a larger bound.")
        if min(self.shifts) < 0:
            raise WeightsIntegrityError(f"Expected non-negative shifts. Got {self.shifts} instead.")


@dataclass(frozen=True, eq=False)
class ContextModel:
    """Everything the decoder needs besides the base model and the hyperprior (stored in ``context.npz``)."""

    order: np.ndarray  # (M,) int64: coded channel i is latent channel order[i]
    groups: tuple[int, ...]
    input_exp: int  # the networks' inputs are real values * 2**input_exp
    y_in: np.ndarray  # (Q, M) int64, coded order: round(2**(input_exp + INPUT_EXTRA_BITS) / gain[q, c])
    networks: tuple[GroupNetwork, ...]

    def __post_init__(self):
        m = self.order.shape[0]
        if sorted(self.order.tolist()) != list(range(m)) or sum(self.groups) != m or self.y_in.shape[1] != m:
            raise WeightsIntegrityError("Expected a channel permutation and groups covering every latent channel.")
        if len(self.networks) != len(self.groups) or (np.abs(self.y_in) >= 2**40).any():
            raise WeightsIntegrityError("Expected one network per group and input factors below 2**40.")
        earlier = 0
        for c, net in zip(self.groups, self.networks):
            if net.channels != c or net.channel_w.shape[1] != earlier or net.hyper_w.shape[0] != 3 * c:
                raise WeightsIntegrityError(f"Expected a network for a group of {c} after {earlier} channels.")
            net.check()
            earlier += c

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return group_bounds(self.groups)

    @cached_property
    def later_channel_w(self) -> tuple[np.ndarray, ...]:
        """Per group: the 3x3 channel-context weights of every later group's network for this group's channels,
        side by side (9, c, sum of the later networks' H): one convolution per decoded group feeds them all."""
        return tuple(np.ascontiguousarray(np.concatenate([net.channel_w[:, a:e] for net in self.networks[k + 1 :]],
                                                         axis=-1))
                     for k, (a, e) in enumerate(self.bounds[:-1]))

    # -- serialization ------------------------------------------------------------------------------------------

    def to_npz(self) -> bytes:
        arrays = {"order": self.order, "groups": np.asarray(self.groups, np.int64),
                  "input_exp": np.int64(self.input_exp), "y_in": self.y_in}
        for k, net in enumerate(self.networks):
            for name in ("hyper_w", "channel_w", "spatial_w", "b1", "hidden_w", "b2", "out_w", "b3"):
                arrays[f"g{k}_{name}"] = getattr(net, name).astype(np.int64)
            arrays[f"g{k}_shifts"] = np.asarray(net.shifts, np.int64)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> ContextModel:
        try:
            with np.load(io.BytesIO(data)) as z:
                groups = tuple(int(g) for g in z["groups"])
                networks = []
                for k in range(len(groups)):
                    f = {n: z[f"g{k}_{n}"].astype(np.float64)
                         for n in ("hyper_w", "channel_w", "spatial_w", "b1", "hidden_w", "b2", "out_w", "b3")}
                    networks.append(GroupNetwork(**f, shifts=tuple(int(s) for s in z[f"g{k}_shifts"])))
                return cls(order=z["order"].astype(np.int64), groups=groups, input_exp=int(z["input_exp"]),
                           y_in=z["y_in"].astype(np.int64), networks=tuple(networks))
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise WeightsIntegrityError(f"Expected a valid {FILENAME}. Got {type(e).__name__}: {e} instead.") from None


def group_bounds(groups: tuple[int, ...]) -> list[tuple[int, int]]:
    """(first, end) channel of each of the consecutive channel ``groups``."""
    starts = np.cumsum((0,) + tuple(groups))
    return [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


# -- the steps, shared by encoder and decoder -------------------------------------------------------------------------


# The two checkerboard halves, each as two parity classes (row % 2, column % 2): strided slices, no gathers.
HALVES = (((0, 0), (1, 1)), ((0, 1), (1, 0)))


def gather(grid: np.ndarray, classes) -> np.ndarray:
    """(B, h, w, C) -> (B, P, C): the positions of the parity classes, class by class, each row-major."""
    b, c = grid.shape[0], grid.shape[-1]
    return np.concatenate([grid[:, r::2, q::2].reshape(b, -1, c) for r, q in classes], axis=1)


def scatter(grid: np.ndarray, classes, values: np.ndarray) -> None:
    """Inverse of :func:`gather`: write (B, P, C) into the positions of ``classes`` of ``grid``."""
    b, h, w, c = grid.shape
    n = (h // 2) * (w // 2)
    for k, (r, q) in enumerate(classes):
        grid[:, r::2, q::2] = values[:, k * n : (k + 1) * n].reshape(b, h // 2, w // 2, -1)


def _spatial(anchors: np.ndarray, classes, w: np.ndarray, matmul) -> np.ndarray:
    """Exact 12-tap sum over the anchors-only map (B, h, w, c) at the positions of ``classes``: (B, P, H)."""
    live = live_channels(anchors)
    if live is not None:
        anchors, w = anchors[..., live], w[:, live]
    b, h, wd, c = anchors.shape
    padded = np.zeros((b, h + 4, wd + 4, c), np.float64)
    padded[:, 2:-2, 2:-2] = anchors
    half_h, half_w, taps = h // 2, wd // 2, len(SPATIAL_TAPS)
    out = np.empty((b, 2, half_h, half_w, w.shape[-1]), np.float64)
    rows = max(1, PATCH_BYTES // max(1, b * half_w * taps * c * 8))  # bounded patch matrix, as in _conv3
    for k, (r, q) in enumerate(classes):
        for top in range(0, half_h, rows):
            n = min(rows, half_h - top)
            y0 = 2 + r + 2 * top
            patches = np.concatenate([padded[:, y0 + dy : y0 + dy + 2 * n - 1 : 2, 2 + dx + q : 2 + dx + q + wd - 1 : 2]
                                      for dy, dx in SPATIAL_TAPS], axis=-1)  # (B, n, w/2, 12 c)
            out[:, k, top : top + n] = matmul(patches.reshape(-1, taps * c), w.reshape(-1, w.shape[-1])).reshape(
                b, n, half_w, -1)
    return out.reshape(b, -1, w.shape[-1])


def add_channel_context(channel_context: list, widths, k: int, sums: np.ndarray) -> None:
    """Add group ``k``'s 3x3 sums (B, h, w, sum of later H) to each later network's channel context
    (network j's ``widths[j]`` columns, in order).

    Network j's channel context is its 3x3 convolution over all earlier groups, summed here group by group: every
    part and partial sum is an integer bounded by the network's checked first-layer bound (below 2**52), so the
    grouping gives the same integers as one convolution over all earlier channels."""
    start = 0
    for j in range(k + 1, len(channel_context)):
        channel_context[j] = channel_context[j] + sums[..., start : start + widths[j]]
        start += widths[j]


def run_steps(hp: Hyperprior, ctx: ContextModel, z: np.ndarray, quality: int, shape, code_step, *,
              matmul=np.matmul, fraction_bits: int = 0, synthesized: Synthesized | None = None) -> np.ndarray:
    """Walk the ten steps; ``code_step(index, mean, a, e, classes)`` codes (encoder) or decodes (decoder) the
    step's symbols: coded channels a..e-1 at the positions of ``classes`` (see :func:`gather`), int64 (B, P, c),
    and returns them; ``mean`` is in units of 2**-fraction_bits symbols. Returns every symbol, int64 (B, M, h, w)
    in the model's channel order. ``matmul`` (tests): any exact summation order gives the same bits."""

    def dense(x, w):
        return matmul(x.reshape(-1, x.shape[-1]), w).reshape(x.shape[:-1] + (w.shape[1],))

    b, m, h, w = shape
    # (B, h, w, M) at 2**LOG_BITS
    log_sigma, mu = synthesized or hp.synthesize_channels_last(z, quality, matmul=matmul)
    order = ctx.order
    L = log_sigma[..., order].astype(np.int64)  # (B, h, w, M), coded channel order
    MU = mu[..., order].astype(np.int64)
    log_gain = hp.log_gain[quality][order]
    gain_int = hp.gain_int[quality][order]
    y_in = ctx.y_in[quality]
    limit = 2**CLIP_BITS
    decoded = np.zeros((b, h, w, m), np.float64)  # latent values at 2**input_exp, coded order
    symbols = np.zeros((b, h, w, m), np.int64)
    to_input = 2.0 ** (ctx.input_exp - LOG_BITS)
    mean_to_input = 2.0 ** (ctx.input_exp - hp.mean_bits)
    extra = hp.mean_bits - LOG_BITS
    channel_context = [0.0] * len(ctx.networks)  # per network: its 3x3 sum over the groups decoded so far
    widths = [net.b1.shape[0] for net in ctx.networks]
    for k, ((a, e), net) in enumerate(zip(ctx.bounds, ctx.networks)):
        c = e - a
        l = L[..., a:e]
        feats = np.concatenate([np.floor(l * to_input), np.floor((l + log_gain[a:e]) * to_input),
                                np.floor(MU[..., a:e] * mean_to_input)], axis=-1)
        feats = np.clip(feats, -limit, limit)
        base = dense(feats, net.hyper_w) + net.b1
        base += channel_context[k]
        for half, classes in enumerate(HALVES):
            acc = gather(base, classes)
            if half:
                acc += _spatial(decoded[..., a:e], classes, net.spatial_w, matmul)
            x = activation(acc, net.shifts[0], True)
            x = activation(dense(x, net.hidden_w) + net.b2, net.shifts[1], True)
            acc = dense(x, net.out_w) + net.b3
            d_l = activation(acc[..., :c], net.shifts[2], False).astype(np.int64)
            d_mu = np.clip(np.floor(acc[..., c:] * 2.0 ** (extra - net.shifts[2])), -limit << extra, limit << extra)
            step_l = gather(L[..., a:e], classes) + d_l
            step_mu = gather(MU[..., a:e], classes) + d_mu.astype(np.int64)
            index, mean = hp.index_and_mean(step_l, step_mu, log_gain[a:e], gain_int[a:e], fraction_bits)
            got = code_step(index, mean, a, e, classes)
            scatter(symbols[..., a:e], classes, got)
            values = (np.clip(got, -Z_LIMIT, Z_LIMIT) * y_in[a:e]) >> INPUT_EXTRA_BITS
            scatter(decoded[..., a:e], classes, np.clip(values, -limit, limit))
        if k + 1 < len(ctx.networks):  # the decoded group, 3x3, into every later network's first layer
            sums = conv3(decoded[..., a:e], ctx.later_channel_w[k], 0.0, matmul)
            add_channel_context(channel_context, widths, k, sums)
    out = np.empty((b, m, h, w), np.int64)
    out[:, order] = np.moveaxis(symbols, -1, 1)
    return out


# -- coding ----------------------------------------------------------------------------------------------------------


class ContextCoder(HyperpriorCoder):
    """The hyperprior's side information and tables, with the context networks refining each step's parameters
    from the symbols decoded before it: tec-ctx."""

    name = "context"
    files = (*HyperpriorCoder.files, FILENAME)

    def __init__(self, hyperprior: Hyperprior, analysis, context: ContextModel):
        super().__init__(hyperprior, analysis)
        if context.y_in.shape[0] != hyperprior.log_gain.shape[0]:
            raise WeightsIntegrityError("Expected context input factors for every quality of the hyperprior.")
        if min(net.shifts[2] for net in context.networks) < hyperprior.mean_bits - LOG_BITS:
            raise WeightsIntegrityError("Expected output shifts that leave room for the hyperprior's mean bits.")
        self.context = context

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], tables: EntropyTables) -> ContextCoder:
        base = HyperpriorCoder.from_files(files, tables)
        return cls(base.hyperprior, base.analysis, ContextModel.from_npz(files[FILENAME]))

    def write_y(self, encoder, symbols: np.ndarray, z: np.ndarray, quality: int, keep: np.ndarray | None) -> None:
        """The y section: the ten steps in order, each coded table by table (kept positions only)."""
        hp, ctx = self.hyperprior, self.context
        known = np.moveaxis(symbols[:, ctx.order], 1, -1)  # (B, h, w, M), coded order
        kept = None if keep is None else np.moveaxis(keep[:, ctx.order], 1, -1)

        def code_step(index, mean, a, e, classes):
            values = gather(known[..., a:e], classes)
            write_kept(encoder, values - mean, index, hp.scales, None if kept is None else gather(kept[..., a:e], classes))
            return values

        run_steps(hp, ctx, z, quality, symbols.shape, code_step)

    # The fraction bits of the means :meth:`step_tables` takes (the temporal coder's fine means keep some).
    search_fraction_bits = 0

    def step_tables(self, index: np.ndarray, mean: np.ndarray, quality: int):
        """(tables, table index, centre) a step's symbols are costed with by the symbol search: the scale tables
        around the integer mean."""
        return self.hyperprior.scales, index, mean

    def code_lengths(self, y: np.ndarray, symbols: np.ndarray, quality: int, *,
                     skip: np.ndarray | None = None) -> np.ndarray:
        """Each step's tables (:meth:`step_tables`) from the given symbols before it."""
        hp, ctx = self.hyperprior, self.context
        z, _ = self.coded_z(self.side_information(y, quality), quality, skip)
        known = np.moveaxis(np.asarray(symbols, np.int64)[:, ctx.order], 1, -1)  # (B, h, w, M), coded order
        bits = np.zeros((len(SEARCH_STEPS),) + known.shape, np.float32)

        def code_step(index, mean, a, e, classes):
            values = gather(known[..., a:e], classes)
            tables, table, centre = self.step_tables(index, mean, quality)
            for i, d in enumerate(SEARCH_STEPS):
                scatter(bits[i, ..., a:e], classes, tables.bits(table, values + d - centre))
            return values

        run_steps(hp, ctx, z, quality, symbols.shape, code_step, fraction_bits=self.search_fraction_bits)
        out = np.empty(bits.shape[:2] + symbols.shape[1:], np.float32)
        out[:, :, ctx.order] = np.moveaxis(bits, -1, 2)
        return out

    def read_y(self, decoder, budget: PayloadBudget, z: np.ndarray, quality: int, shape,
               keep: np.ndarray | None, synthesized: Synthesized | None = None) -> np.ndarray:
        hp = self.hyperprior
        kept = None if keep is None else np.moveaxis(keep[:, self.context.order], 1, -1)

        def code_step(index, mean, a, e, classes):
            return read_kept(decoder, index, mean, hp.scales, budget,
                             None if kept is None else gather(kept[..., a:e], classes))

        return run_steps(hp, self.context, z, quality, shape, code_step, synthesized=synthesized)

    def write_summed_y(self, encoder, symbols: np.ndarray, z: np.ndarray, thinning: Thinning,
                       keep: np.ndarray | None) -> None:
        """The ten steps at the first level, each thinned symbol coded with the first level's probability of its
        run (:mod:`.runsum`); the networks see each run's middle where the first level's symbols would be."""
        known = np.moveaxis(symbols[:, self.context.order], 1, -1)
        kept = None if keep is None else np.moveaxis(keep[:, self.context.order], 1, -1)

        def code(tables, keys, values, step_kept):
            runsum.write_kept(encoder, values, keys, tables, step_kept)
            return values

        self.summed_steps(z, thinning, symbols.shape, known, kept, code, runsum.run_tables)

    def read_summed_y(self, decoder, budget: PayloadBudget, z: np.ndarray, thinning: Thinning, shape,
                      keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kept = None if keep is None else np.moveaxis(keep[:, self.context.order], 1, -1)

        def code(tables, keys, values, step_kept):
            return runsum.read_kept(decoder, keys, tables, budget, step_kept)

        return self.summed_steps(z, thinning, shape, None, kept, code, runsum.tables_or_corrupt)

    def summed_steps(self, z, thinning: Thinning, shape, known, kept, code, build
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Walk the steps at the first level: ``code(tables, keys, values, kept)`` codes a step's thinned symbols
        (``values``: the encoder's, None for the decoder) and returns them. Returns the thinned symbols and their
        first-level table indices and means, int64 (B, M, h, w) in the model's channel order."""
        order, hp = self.context.order, self.hyperprior
        grids = [np.zeros((shape[0], shape[2], shape[3], shape[1]), np.int64) for _ in range(3)]  # coded order

        def code_step(index, mean, a, e, classes):
            channels = order[a:e]
            tables, keys = build(hp.scales, thinning.chain, channels, index, mean)
            values = code(tables, keys, None if known is None else gather(known[..., a:e], classes),
                          None if kept is None else gather(kept[..., a:e], classes))
            for grid, part in zip(grids, (values, index, mean)):
                scatter(grid[..., a:e], classes, part)
            # (B, P, c) as (B, c, P, 1): the run ends take each channel's ratios along axis 1
            lo, hi = run_ends(np.moveaxis(values, -1, 1)[..., None], tuple(r[channels] for r in thinning.chain))
            return np.moveaxis(((lo + hi) >> 1)[..., 0], 1, -1)

        run_steps(hp, self.context, z, thinning.levels[0], shape, code_step)
        out = []
        for grid in grids:
            full = np.empty(shape, np.int64)
            full[:, order] = np.moveaxis(grid, -1, 1)
            out.append(full)
        return tuple(out)
