"""ELIC's entropy model (CompressAI's Elic2022Chandelier layout, imported TerraCodec-ELIC), every probability fixed
by integers.

A model whose manifest says ``"entropy_model": "elic"`` codes ``s = round(y - mean)`` per latent element with a
zero-mean discretized Gaussian of the element's scale, as the reference does, and its decoder graph reads
``s + mean``::

    y ──h_a - median (ONNX, encoder only)──▶ round ──▶ z_s ──factorized integer tables──▶ z section
    z_s ──integer h_s──▶ hyper features (2M)
    per channel group k (uneven: 16, 16, 32, 64, M - 128), anchors ((i + j) % 2 == 0) then the others:
        first layer  = hyper features (1x1) + channel context (k > 0: three 5x5 layers over groups 0 and k - 1)
                       + spatial context (non-anchors: the masked 5x5 over the group's decoded anchors)
        ReLU ─ 1x1 ─ ReLU ─ 1x1 ──▶ mean (at 2**fine_bits) and scale (at 2**scale_exp)
        table = number of stored thresholds <= scale (integer comparisons); s coded with that table

The pipeline's gain is ``2**fine_bits`` for every channel, so the "symbols" this coder returns are
``s * 2**fine_bits + mean``: the decoder graph's input ``symbols * 2**-fine_bits`` is the reference's
``y_hat = s + mean`` to within the mean's fixed point. Every network runs as :mod:`tec_zarr.integer.layers` runs
layers (float64 holding integers, every partial sum below 2**52, checked on load; ``np.floor`` of power-of-two
multiples), so indices and means are the same bits on any machine; the float ``h_a`` and the encoder's ``y`` only
choose what is stored.

Payload: ``u32 z_len | z section | y section``; the y section is one range-coder stream holding the steps in
order (group 0 anchors, group 0 others, group 1 anchors, ...), each coded table by table as the hyperprior's.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..bitstream import payload as sections
from ..errors import CorruptChunkError, WeightsIntegrityError
from ..integer.layers import CLIP_BITS, EXACT_LIMIT, KERNEL, activation, deconv, direct_conv
from ..runtime import Graph
from . import factorized
from .base import LatentCoder
from .context import HALVES, SPATIAL_TAPS, _spatial, gather, group_bounds, scatter
from .hyperprior import Z_LIMIT, Z_STRIDE, read_kept, require_z_grid, write_kept, z_skip
from .rangecoder import PayloadBudget, checked_symbols, range_decoder
from .tables import EntropyTables, IndexedTables

FILENAME = "elic.npz"
ANALYSIS_FILENAME = "hyper_analysis.onnx"
ENTROPY_MODEL = "elic"
KINDS = ("deconv", "conv", "dense")  # deconv: ConvTranspose2d(5, stride 2); conv: k x k, stride 1, same padding
MEAN_BITS_LIMIT = 24  # |mean| < 2**(fine_bits + 24)
Z_EXP_LIMIT = 40  # z_s << z_exp stays in int64: |z_s| <= Z_LIMIT = 2**20
ROWS_PER_BLOCK = 16


@dataclass(frozen=True, eq=False)
class Layer:
    """One integer layer: float64 integer weights (deconv: (Cin, 25 Cout); conv: (k k, Cin, Cout); dense:
    (Cin, Cout)), bias at the accumulator's scale, ``accumulator >> shift`` the next activation."""

    kind: str
    w: np.ndarray
    b: np.ndarray
    shift: int
    relu: bool

    def colsum(self) -> np.ndarray:
        cout = self.b.shape[0]
        if self.kind == "deconv":
            return np.abs(self.w).reshape(self.w.shape[0], KERNEL * KERNEL, cout).sum(axis=(0, 1))
        return np.abs(self.w).reshape(-1, cout).sum(0)

    def check(self, what: str, cin: int, kinds: tuple[str, ...] = KINDS) -> int:
        """Refuse a layer that is not a ``kinds`` layer over ``cin`` channels with exact sums; its output channels."""
        if self.kind not in kinds or self.shift < 0 or self.b.ndim != 1:
            raise WeightsIntegrityError(f"Expected a layer kind in {kinds}, a shift >= 0 and a bias vector in {what}. "
                                        f"Got {self.kind!r}, {self.shift} and a bias of shape {self.b.shape} instead.")
        cout = self.b.shape[0]
        taps = self.w.shape[0] if self.w.ndim == 3 else 0
        side = math.isqrt(taps)
        expected = {"deconv": (cin, KERNEL * KERNEL * cout), "conv": (side * side, cin, cout),
                    "dense": (cin, cout)}[self.kind]
        if self.w.shape != expected or (self.kind == "conv" and side % 2 == 0):
            raise WeightsIntegrityError(f"Expected {what}'s weights of shape {expected} (conv: an odd square of taps). "
                                        f"Got {self.w.shape} instead.")
        require_integers(what, self.w, self.b)
        if (self.colsum() * 2.0**CLIP_BITS + np.abs(self.b)).max() >= EXACT_LIMIT:
            raise WeightsIntegrityError(f"Expected integer sums bounded by 2**52 in {what}. Got a larger bound.")
        return cout

    def accumulate(self, x: np.ndarray, matmul) -> np.ndarray:
        if self.kind == "deconv":
            return deconv(x, self.w, self.b, ROWS_PER_BLOCK, matmul)
        if self.kind == "conv":
            return direct_conv(x, self.w, self.b, matmul)
        return matmul(x.reshape(-1, x.shape[-1]), self.w).reshape(x.shape[:-1] + (self.w.shape[1],)) + self.b

    def __call__(self, x: np.ndarray, matmul=np.matmul) -> np.ndarray:
        return activation(self.accumulate(x, matmul), self.shift, self.relu)


@dataclass(frozen=True, eq=False)
class GroupNetwork:
    """Group k's channel context (k > 0) and parameter aggregation, the spatial context folded into its first
    layer (weights per SPATIAL_TAPS, and ``b1_spatial``: the masked convolution's bias through it)."""

    channel: tuple[Layer, ...]  # over [group 0, group k - 1] (k = 1: group 0) at 2**input_exp; () for group 0
    hyper_w: np.ndarray  # (2M, H1) over the hyper features
    channel_w: np.ndarray  # (2c, H1) over the channel context's output ((0, H1) for group 0)
    spatial_w: np.ndarray  # (12, c, H1) over the group's decoded anchors at 2**input_exp
    b1: np.ndarray
    b1_spatial: np.ndarray  # added for the non-anchors only
    shift1: int
    second: Layer  # dense H1 -> H2, ReLU
    out_w: np.ndarray  # (H2, 2c): means, then scales
    b3: np.ndarray
    mean_shift: int  # accumulator >> mean_shift = mean at 2**fine_bits
    scale_shift: int  # accumulator >> scale_shift = scale at 2**scale_exp

    @property
    def channels(self) -> int:
        return self.spatial_w.shape[1]

    def check(self, k: int, hyper_channels: int, context_channels: int) -> None:
        """Refuse weights whose shapes do not chain from the hyper features and ``context_channels`` decoded
        latents (groups 0 and k - 1) to the group's means and scales, or whose sums could exceed 2**52."""
        cin = context_channels
        for i, layer in enumerate(self.channel):
            cin = layer.check(f"group {k}'s channel context layer {i}", cin, ("conv", "dense"))
        h1 = self.b1.shape[0] if self.b1.ndim == 1 else -1
        c = self.channels
        expected = {"hyper_w": (hyper_channels, h1), "channel_w": (cin if self.channel else 0, h1),
                    "spatial_w": (len(SPATIAL_TAPS), c, h1), "b1_spatial": (h1,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise WeightsIntegrityError(f"Expected group {k}'s {name} of shape {shape}. Got "
                                            f"{getattr(self, name).shape} instead.")
        h2 = self.second.check(f"group {k}'s second layer", h1, ("dense",))
        if self.out_w.shape != (h2, 2 * c) or self.b3.shape != (2 * c,):
            raise WeightsIntegrityError(f"Expected group {k}'s output weights ({h2}, {2 * c}) and bias ({2 * c},). Got "
                                        f"{self.out_w.shape} and {self.b3.shape} instead.")
        require_integers(f"group {k}'s parameter network", self.hyper_w, self.channel_w, self.spatial_w, self.b1,
                         self.b1_spatial, self.out_w, self.b3)
        limit = 2.0**CLIP_BITS
        first = (np.abs(self.hyper_w).sum(0) + np.abs(self.channel_w).sum(0) + np.abs(self.spatial_w).sum((0, 1)))
        worst = [first * limit + np.abs(self.b1) + np.abs(self.b1_spatial), np.abs(self.out_w).sum(0) * limit
                 + np.abs(self.b3)]
        if max(float(v.max()) for v in worst) >= EXACT_LIMIT or min(self.shift1, self.mean_shift, self.scale_shift) < 0:
            raise WeightsIntegrityError(f"Expected group {k}'s parameter sums bounded by 2**52 and shifts >= 0. Got "
                                        "otherwise.")


def require_integers(what: str, *arrays: np.ndarray) -> None:
    """Refuse weights that are not finite integers: exactness (and the bounds' checks) hold for integers only."""
    for a in arrays:
        if a.size and not (np.isfinite(a).all() and (a == np.rint(a)).all()):
            raise WeightsIntegrityError(f"Expected integer weights in {what}. Got non-integer or non-finite values "
                                        "instead.")


@dataclass(frozen=True, eq=False)
class ElicModel:
    """Everything the decoder needs besides the graphs (stored in ``elic.npz``)."""

    groups: tuple[int, ...]
    fine_bits: int  # the pipeline's gain is 2**fine_bits
    input_exp: int  # decoded latents enter the context networks at 2**input_exp
    z_exp: int  # z_hat = z_s + median enters h_s at 2**z_exp
    z_offset: np.ndarray  # (Z,) int64: round(median * 2**z_exp)
    z_tables: EntropyTables  # one quality: the entropy bottleneck's tables of z_s
    hyper: tuple[Layer, ...]  # h_s; the last one's output: the hyper features
    scale_exp: int
    thresholds: np.ndarray  # (T - 1,) int64, increasing: table t for thresholds[t - 1] <= scale < thresholds[t]
    scale_offsets: np.ndarray
    scale_pmf: np.ndarray
    scale_lengths: np.ndarray
    networks: tuple[GroupNetwork, ...]

    def __post_init__(self):
        if not self.groups or min(self.groups) < 1 or len(self.networks) != len(self.groups) or any(
                n.channels != c for n, c in zip(self.networks, self.groups)):
            raise WeightsIntegrityError(f"Expected one network per group of {list(self.groups)}, each of at least one "
                                        "channel. Got otherwise.")
        if self.z_tables.qualities != 1 or self.z_offset.shape != (self.z_tables.channels,):
            raise WeightsIntegrityError(f"Expected z tables of one quality and one z offset per z channel. Got "
                                        f"{self.z_tables.qualities} and {self.z_offset.shape} instead.")
        # h_s: two stride-2 transposed convolutions (z is 1/Z_STRIDE of the latent grid), then same-size layers
        if [la.kind == "deconv" for la in self.hyper] != [True, True] + [False] * (len(self.hyper) - 2):
            raise WeightsIntegrityError(f"Expected h_s to be two deconv layers and then conv or dense ones. Got "
                                        f"{[la.kind for la in self.hyper]} instead.")
        cin = self.z_tables.channels
        for i, layer in enumerate(self.hyper):
            cin = layer.check(f"h_s layer {i}", cin)
        for k, net in enumerate(self.networks):
            net.check(k, cin, 0 if k == 0 else self.groups[0] + (self.groups[k - 1] if k > 1 else 0))
        # the context inputs' factor 2**(input_exp - fine_bits) is a finite float
        if not (0 <= self.fine_bits <= 16 and 0 <= self.z_exp <= Z_EXP_LIMIT and abs(self.input_exp) <= 64
                and (np.abs(self.z_offset) < 2**40).all()):
            raise WeightsIntegrityError(f"Expected fine bits in [0, 16], z_exp in [0, {Z_EXP_LIMIT}], |input_exp| <= 64 and z "
                                        f"offsets below 2**40. Got {self.fine_bits}, {self.z_exp} and {self.input_exp} "
                                        "instead, or a larger offset.")
        if (self.thresholds.ndim != 1 or np.any(np.diff(self.thresholds) <= 0)
                or self.thresholds.shape[0] != self.scale_lengths.shape[0] - 1):
            raise WeightsIntegrityError("Expected increasing scale thresholds, one fewer than the scale tables.")
        object.__setattr__(self, "scales", IndexedTables(self.scale_offsets, self.scale_pmf, self.scale_lengths))

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return group_bounds(self.groups)

    # -- serialization ------------------------------------------------------------------------------------------

    def to_npz(self) -> bytes:
        a: dict[str, np.ndarray] = {
            "groups": np.asarray(self.groups, np.int64), "fine_bits": np.int64(self.fine_bits),
            "input_exp": np.int64(self.input_exp), "z_exp": np.int64(self.z_exp), "z_offset": self.z_offset,
            "z_offsets": self.z_tables.offsets, "z_pmf": self.z_tables.pmf.astype(np.int64),
            "z_lengths": self.z_tables.lengths, "scale_exp": np.int64(self.scale_exp), "thresholds": self.thresholds,
            "scale_offsets": self.scale_offsets, "scale_pmf": self.scale_pmf, "scale_lengths": self.scale_lengths,
        }
        _put_layers(a, "hs", self.hyper)
        for k, n in enumerate(self.networks):
            _put_layers(a, f"g{k}_ch", n.channel)
            _put_layers(a, f"g{k}_second", (n.second,))
            for name in ("hyper_w", "channel_w", "spatial_w", "b1", "b1_spatial", "out_w", "b3"):
                a[f"g{k}_{name}"] = getattr(n, name).astype(np.int64)
            a[f"g{k}_shifts"] = np.asarray([n.shift1, n.mean_shift, n.scale_shift], np.int64)
        buf = io.BytesIO()
        np.savez_compressed(buf, **a)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> ElicModel:
        try:
            with np.load(io.BytesIO(data)) as z:
                groups = tuple(int(g) for g in z["groups"])
                networks = []
                for k in range(len(groups)):
                    f = {n: z[f"g{k}_{n}"].astype(np.float64)
                         for n in ("hyper_w", "channel_w", "spatial_w", "b1", "b1_spatial", "out_w", "b3")}
                    shift1, mean_shift, scale_shift = (int(s) for s in z[f"g{k}_shifts"])
                    networks.append(GroupNetwork(channel=_get_layers(z, f"g{k}_ch"),
                                                 second=_get_layers(z, f"g{k}_second")[0], shift1=shift1,
                                                 mean_shift=mean_shift, scale_shift=scale_shift, **f))
                return cls(
                    groups=groups, fine_bits=int(z["fine_bits"]), input_exp=int(z["input_exp"]),
                    z_exp=int(z["z_exp"]), z_offset=z["z_offset"].astype(np.int64),
                    z_tables=EntropyTables(offsets=z["z_offsets"].astype(np.int32), pmf=z["z_pmf"].astype(np.int64),
                                           lengths=z["z_lengths"].astype(np.int32)),
                    hyper=_get_layers(z, "hs"), scale_exp=int(z["scale_exp"]),
                    thresholds=z["thresholds"].astype(np.int64), scale_offsets=z["scale_offsets"].astype(np.int64),
                    scale_pmf=z["scale_pmf"].astype(np.int64), scale_lengths=z["scale_lengths"].astype(np.int64),
                    networks=tuple(networks))
        except (KeyError, ValueError, TypeError, IndexError, OSError, CorruptChunkError) as e:
            raise WeightsIntegrityError(f"Expected a valid {FILENAME}. Got {type(e).__name__}: {e} instead.") from None

    # -- the integer networks ---------------------------------------------------------------------------------

    def hyper_features(self, z: np.ndarray, matmul=np.matmul) -> np.ndarray:
        """z symbols (B, Z, h, w) -> the hyper features, float64 integers (B, 4h, 4w, 2M)."""
        limit = 2**CLIP_BITS
        s = np.clip(np.asarray(z, np.int64), -Z_LIMIT, Z_LIMIT)
        x = np.clip((s << self.z_exp) + self.z_offset[None, :, None, None], -limit, limit)
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1)).astype(np.float64)
        for layer in self.hyper:
            x = layer(x, matmul)
        return x


def _put_layers(arrays: dict, prefix: str, layers) -> None:
    arrays[f"{prefix}_kinds"] = np.asarray([KINDS.index(la.kind) for la in layers], np.int64)
    arrays[f"{prefix}_shifts"] = np.asarray([la.shift for la in layers], np.int64)
    arrays[f"{prefix}_relu"] = np.asarray([la.relu for la in layers], np.int64)
    for i, la in enumerate(layers):
        arrays[f"{prefix}{i}_w"], arrays[f"{prefix}{i}_b"] = la.w.astype(np.int64), la.b.astype(np.int64)


def _get_layers(z, prefix: str) -> tuple[Layer, ...]:
    kinds = z[f"{prefix}_kinds"]
    if (kinds < 0).any() or (kinds >= len(KINDS)).any():
        raise ValueError(f"layer kinds of {prefix} outside {KINDS}")
    return tuple(Layer(kind=KINDS[int(kind)], w=z[f"{prefix}{i}_w"].astype(np.float64),
                       b=z[f"{prefix}{i}_b"].astype(np.float64), shift=int(shift), relu=bool(relu))
                 for i, (kind, shift, relu) in enumerate(zip(kinds, z[f"{prefix}_shifts"], z[f"{prefix}_relu"])))


# -- the steps, shared by encoder and decoder -------------------------------------------------------------------------


def run_steps(model: ElicModel, z: np.ndarray, shape, code_step, keep: np.ndarray | None = None, *,
              matmul=np.matmul) -> np.ndarray:
    """Walk the 2 x groups steps; ``code_step(index, mean, a, e, classes)`` codes (encoder) or decodes (decoder)
    ``s`` of channels a..e-1 at the positions of ``classes`` (int64 (B, P, c)) and returns it; ``mean`` is at
    2**fine_bits. ``keep`` (B, h, w, M): positions coded (None: all); the others read 0. Returns
    ``s * 2**fine_bits + mean`` (0 where not kept), int64 (B, M, h, w)."""

    def dense(x, w):
        return matmul(x.reshape(-1, x.shape[-1]), w).reshape(x.shape[:-1] + (w.shape[1],))

    b, m, h, w = shape
    fine_bits, limit = model.fine_bits, 2**CLIP_BITS
    mean_limit = 1 << (fine_bits + MEAN_BITS_LIMIT)
    hyper = model.hyper_features(z, matmul)
    fine = np.zeros((b, h, w, m), np.int64)
    inputs = np.zeros((b, h, w, m), np.float64)  # decoded latents at 2**input_exp
    to_input = 2.0 ** (model.input_exp - fine_bits)
    bounds = model.bounds
    for k, ((a, e), net) in enumerate(zip(bounds, model.networks)):
        c = e - a
        base = dense(hyper, net.hyper_w) + net.b1
        if k:
            parts = [inputs[..., bounds[0][0] : bounds[0][1]]] + ([inputs[..., slice(*bounds[k - 1])]] if k > 1 else [])
            x = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            for layer in net.channel:
                x = layer(x, matmul)
            base += dense(x, net.channel_w)
        for half, classes in enumerate(HALVES):
            acc = gather(base, classes)
            if half:
                acc += _spatial(inputs[..., a:e], classes, net.spatial_w, matmul) + net.b1_spatial
            x = activation(acc, net.shift1, True)
            x = net.second(x, matmul)
            acc = dense(x, net.out_w) + net.b3
            mean = np.clip(np.floor(acc[..., :c] * 2.0**-net.mean_shift), -mean_limit, mean_limit).astype(np.int64)
            scale = np.clip(np.floor(acc[..., c:] * 2.0**-net.scale_shift), -limit, limit).astype(np.int64)
            index = np.searchsorted(model.thresholds, scale, side="right")
            got = code_step(index, mean, a, e, classes)
            values = (got << fine_bits) + mean
            if keep is not None:
                values = np.where(gather(keep[..., a:e], classes), values, 0)
            scatter(fine[..., a:e], classes, values)
            scatter(inputs[..., a:e], classes, np.clip(np.floor(values * to_input), -limit, limit))
    return np.ascontiguousarray(np.moveaxis(fine, -1, 1))


# -- coding ----------------------------------------------------------------------------------------------------------


class ElicCoder(LatentCoder):
    """Imported ELIC checkpoints: the hyperprior's side information, then the channel groups' checkerboard steps,
    each element's mean and Gaussian scale table from the integer networks."""

    name = ENTROPY_MODEL
    files = (FILENAME, ANALYSIS_FILENAME)

    def __init__(self, model: ElicModel, analysis: Graph):
        self.model = model
        self.analysis = analysis  # h_a - median, encoder side only: it chooses z

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], tables: EntropyTables) -> ElicCoder:
        return cls(ElicModel.from_npz(files[FILENAME]), Graph.from_bytes(files[ANALYSIS_FILENAME], "y"))

    def side_information(self, y: np.ndarray) -> np.ndarray:
        t = self.analysis.run(np.ascontiguousarray(y, np.float32)).astype(np.float64)
        return np.clip(np.rint(t), -Z_LIMIT, Z_LIMIT).astype(np.int32)

    def encode(self, y: np.ndarray, symbols: np.ndarray, quality: int, *, skip: np.ndarray | None = None) -> bytes:
        """``symbols`` (``round(y * 2**fine_bits)``) only mark the skipped positions: ``s`` is ``round(y - mean)``
        from the encoder's ``y``, as the reference rounds it."""
        import constriction

        require_z_grid(symbols.shape)
        model = self.model
        z = self.side_information(y)
        zs = z_skip(skip)
        if zs is not None:
            z = z * ~zs[:, None]
        z_bytes = factorized.encode(z, 0, model.z_tables, zs)
        encoder = constriction.stream.queue.RangeEncoder()
        latent = np.moveaxis(np.asarray(y, np.float64), 1, -1)  # (B, h, w, M)
        keep = None if skip is None else np.broadcast_to(~skip[..., None], latent.shape)
        step = 2.0**-model.fine_bits

        def code_step(index, mean, a, e, classes):
            s = np.rint(gather(latent[..., a:e], classes) - mean * step)
            s = np.clip(s, -Z_LIMIT, Z_LIMIT).astype(np.int64)
            kept = None if keep is None else gather(keep[..., a:e], classes)
            write_kept(encoder, s, index, model.scales, kept)
            return s if kept is None else s * kept

        run_steps(model, z, symbols.shape, code_step, keep)
        return sections.join_z_section(z_bytes, encoder.get_compressed().tobytes())

    def decode(self, payload: bytes, quality: int, shape: tuple[int, int, int, int], *,
               skip: np.ndarray | None = None, thinning=None) -> np.ndarray:
        model = self.model
        b, m, h, w = shape
        if h % Z_STRIDE or w % Z_STRIDE or m != sum(model.groups) or quality != 0:
            raise CorruptChunkError(f"Expected quality 0 and latents of sides that are multiples of {Z_STRIDE} with "
                                    f"{sum(model.groups)} channels. Got quality {quality} and {shape} instead.")
        z_bytes, rest = sections.split_z_section(payload)
        z = factorized.decode(z_bytes, 0, (b, model.z_tables.channels, h // Z_STRIDE, w // Z_STRIDE), model.z_tables,
                              z_skip(skip))
        decoder = range_decoder(rest, "y section")
        budget = PayloadBudget(len(rest), "y section")
        keep = None if skip is None else np.broadcast_to(~skip[..., None], (b, h, w, m))

        def code_step(index, mean, a, e, classes):
            kept = None if keep is None else gather(keep[..., a:e], classes)
            return read_kept(decoder, index, np.zeros_like(mean), model.scales, budget, kept)

        fine = run_steps(model, z, shape, code_step, keep)
        if not decoder.maybe_exhausted():
            raise CorruptChunkError("Expected the y section to end with its last symbol. Got trailing data instead.")
        return checked_symbols(fine)


__all__ = ["ElicCoder", "ElicModel", "GroupNetwork", "Layer", "SPATIAL_TAPS"]
