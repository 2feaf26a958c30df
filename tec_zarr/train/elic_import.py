"""TerraCodec-ELIC checkpoints (CompressAI's Elic2022Chandelier layout) as tec-zarr model folders.

The transforms are rebuilt as torch layers from the tensors (stride-2 5x5 convolutions, residual bottleneck blocks
``x + conv1x1(relu(conv3x3(relu(conv1x1(x)))))``, attention blocks ``x + a(x) * sigmoid(b(x))`` of residual units)
and exported to ONNX; the entropy model (:mod:`tec_zarr.entropy.elic`) is quantized here once, in float64, to
integer layers whose activation scales come from the float model run on calibration images:

- z: ``round(h_a(y) - median)`` (the hyper-analysis graph subtracts the entropy bottleneck's medians), coded with
  the bottleneck's density tables at ``median + k``; h_s reads ``z_s + median``;
- group k's parameters: ``entropy_parameters(cat(spatial, channel, hyper))`` (1x1, ReLU, 1x1, ReLU, 1x1 -> means,
  scales), the masked 5x5 spatial context folded into the first layer's weights, its bias added for non-anchors
  only (anchors see a zero context, as in the reference); the channel context reads groups 0 and k - 1;
- scales pick integer tables of discretized Gaussians, ``sigma_min`` the reference's scale bound (0.11), through
  integer thresholds (geometric mid-points between the tables' scales).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..entropy import elic
from ..entropy.context import SPATIAL_TAPS
from ..entropy.tables import EntropyTables
from ..errors import CheckpointImportError
from ..integer.layers import CLIP_BITS, conv_matrix, deconv_matrix
from ..integer.synthesis import scale_exponent

HYPER = "latent_codec.hyper"
GROUPS = "latent_codec.y"
FINE_BITS = 10  # the pipeline's gain: means at 2**-10 of a latent unit
SCALE_EXP = 12  # scales at 2**-12 (up to 1024 before the clip)
STEPS_PER_OCTAVE = 8
SIGMA_MAX = 256.0  # the reference's largest table scale
CALIBRATION_BITS = 18
GAUSSIAN_KEYS = (r"latent_codec\.y\.latent_codec\.y\d+\.y\.gaussian_conditional\."
                 r"(_offset|_quantized_cdf|_cdf_length|scale_table|scale_bound|likelihood_lower_bound\.bound|"
                 r"lower_bound_scale\.bound)")


class ResidualBottleneck(nn.Module):
    def __init__(self, keys, p: str):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (_conv(keys, f"{p}.conv{i}", 1) for i in (1, 2, 3))
        self.skip = _conv(keys, f"{p}.skip", 1) if f"{p}.skip.weight" in keys.state else None

    def forward(self, x):
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return out + (x if self.skip is None else self.skip(x))


class ResidualUnit(nn.Module):
    def __init__(self, keys, p: str):
        super().__init__()
        self.convs = nn.ModuleList(_conv(keys, f"{p}.conv.{i}", 1) for i in (0, 2, 4))

    def forward(self, x):
        a, b, c = self.convs
        return F.relu(c(F.relu(b(F.relu(a(x))))) + x)


class Attention(nn.Module):
    def __init__(self, keys, p: str):
        super().__init__()
        self.a = nn.Sequential(*(ResidualUnit(keys, f"{p}.conv_a.{i}") for i in range(3)))
        self.b = nn.Sequential(*(ResidualUnit(keys, f"{p}.conv_b.{i}") for i in range(3)), _conv(keys, f"{p}.conv_b.3", 1))

    def forward(self, x):
        return x + self.a(x) * torch.sigmoid(self.b(x))


def _conv(keys, p: str, stride: int, transposed: bool = False) -> nn.Module:
    w = keys.need(f"{p}.weight")
    if w.ndim != 4 or w.shape[-1] != w.shape[-2] or w.shape[-1] % 2 == 0:
        raise CheckpointImportError(f"Expected {p}.weight to be an odd square kernel. Got {tuple(w.shape)} instead.")
    k = w.shape[-1]
    if transposed:
        layer = nn.ConvTranspose2d(w.shape[0], w.shape[1], k, stride=stride, padding=k // 2,
                                   output_padding=stride - 1)
    else:
        layer = nn.Conv2d(w.shape[1], w.shape[0], k, stride=stride, padding=k // 2)
    layer.weight.data.copy_(w)
    layer.bias.data.copy_(keys.need(f"{p}.bias"))
    return layer


def transform(keys, prefix: str, synthesis: bool) -> nn.Sequential:
    """ELIC's g_a or g_s: stride-2 (transposed) convolutions, residual bottleneck and attention blocks."""
    indices = sorted({int(k.split(".")[1]) for k in keys.state if k.startswith(prefix + ".")})
    if not indices or indices != list(range(len(indices))):
        raise CheckpointImportError(f"Expected {prefix} layers numbered 0, 1, 2, ... Got {indices} instead.")
    layers = []
    for i in indices:
        p = f"{prefix}.{i}"
        if f"{p}.weight" in keys.state:
            layers.append(_conv(keys, p, 2, transposed=synthesis))
        elif f"{p}.conv1.weight" in keys.state:
            layers.append(ResidualBottleneck(keys, p))
        elif f"{p}.conv_a.0.conv.0.weight" in keys.state:
            layers.append(Attention(keys, p))
        else:
            raise CheckpointImportError(f"Expected {p} to be a convolution, a residual bottleneck or an attention "
                                        "block. Got keys of none of them instead.")
    return nn.Sequential(*layers)


class ImportedElic(nn.Module):
    """The float model: transforms for ONNX, and the entropy model's float steps for calibration and checks."""

    def __init__(self, keys, groups: list[int]):
        super().__init__()
        self.groups = groups
        self.g_a = transform(keys, "g_a", synthesis=False)
        self.g_s = transform(keys, "g_s", synthesis=True)
        h = f"{HYPER}.h_a"
        self.h_a = nn.ModuleList([_conv(keys, f"{h}.0", 1), _conv(keys, f"{h}.2", 2), _conv(keys, f"{h}.4", 2)])
        h = f"{HYPER}.h_s"
        self.h_s = nn.ModuleList([_conv(keys, f"{h}.0", 2, True), _conv(keys, f"{h}.2", 2, True),
                                  _conv(keys, f"{h}.4", 1)])
        self.channel = nn.ModuleList([nn.ModuleList() if k == 0 else nn.ModuleList(
            _conv(keys, f"{GROUPS}.channel_context.y{k}.{i}", 1) for i in (0, 2, 4)) for k in range(len(groups))])
        self.spatial = nn.ModuleList()
        self.params = nn.ModuleList()
        for k, c in enumerate(groups):
            p = f"{GROUPS}.latent_codec.y{k}"
            spatial = _conv(keys, f"{p}.context_prediction", 1)
            mask = keys.get(f"{p}.context_prediction.mask")
            expected = torch.zeros_like(spatial.weight)
            for dy, dx in SPATIAL_TAPS:
                expected[:, :, dy + 2, dx + 2] = 1
            if spatial.weight.shape[1:] != (c, 5, 5) or (mask is not None and not torch.equal(mask, expected)):
                raise CheckpointImportError(f"Expected {p}.context_prediction to be a 5x5 checkerboard-masked "
                                            f"convolution over {c} channels. Got otherwise.")
            spatial.weight.data.mul_(expected)
            self.spatial.append(spatial)
            self.params.append(nn.ModuleList(_conv(keys, f"{p}.entropy_parameters.{i}", 1) for i in (0, 2, 4)))
        median = keys.need(f"{HYPER}.entropy_bottleneck.quantiles")
        self.register_buffer("median", median[:, 0, 1].reshape(1, -1, 1, 1).clone())

    def analyse(self, x):
        return self.g_a(x)

    def synthesise(self, y_hat):
        return self.g_s(y_hat)

    def hyper_analysis(self, y):
        a, b, c = self.h_a
        return c(F.relu(b(F.relu(a(y))))) - self.median

    def steps(self, y: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        """The reference's y_hat (``round(y - mean) + mean`` step by step); ``record`` collects peak |values| of
        every integer layer's input and of the hyper and channel features."""
        rec = record if record is not None else {}

        def peak(name, t):
            rec[name] = max(rec.get(name, 0.0), float(t.abs().max()))

        z_hat = torch.round(self.hyper_analysis(y)) + self.median
        peak("z", z_hat)
        x = z_hat
        for i, layer in enumerate(self.h_s):
            x = layer(x)
            if i < 2:
                x = F.relu(x)
                peak(f"hs{i + 1}", x)
        hyper = x
        peak("hyper", hyper)
        bounds = np.cumsum([0] + self.groups)
        y_hat = torch.zeros_like(y)
        anchor = torch.zeros(y.shape[-2:], dtype=torch.bool)
        anchor[0::2, 0::2] = True
        anchor[1::2, 1::2] = True
        for k, c in enumerate(self.groups):
            a, e = int(bounds[k]), int(bounds[k + 1])
            side = [hyper]
            if k:
                parts = [y_hat[:, : self.groups[0]]] + ([y_hat[:, bounds[k - 1] : bounds[k]]] if k > 1 else [])
                x = torch.cat(parts, 1)
                for i, layer in enumerate(self.channel[k]):
                    x = layer(x)
                    if i < 2:
                        x = F.relu(x)
                        peak(f"g{k}_ch{i + 1}", x)
                peak(f"g{k}_channel", x)
                side = [x, hyper]
            anchors = torch.zeros_like(y[:, a:e])
            for half in range(2):
                ctx = y.new_zeros((y.shape[0], 2 * c, *y.shape[2:])) if half == 0 else self.spatial[k](anchors)
                p1, p2, p3 = self.params[k]
                h1 = F.relu(p1(torch.cat([ctx, *side], 1)))
                h2 = F.relu(p2(h1))
                peak(f"g{k}_h1", h1)
                peak(f"g{k}_h2", h2)
                means = p3(h2)[:, :c]
                values = torch.round(y[:, a:e] - means) + means
                where = anchor if half == 0 else ~anchor
                y_hat[:, a:e] = torch.where(where, values, y_hat[:, a:e])
                if half == 0:
                    anchors = torch.where(anchor, values, anchors)
        peak("y_hat", y_hat)
        return y_hat


class _HyperAnalysis(nn.Module):
    def __init__(self, model: ImportedElic):
        super().__init__()
        self.model = model

    def forward(self, y):
        return self.model.hyper_analysis(y)


def groups_of(keys) -> list[int]:
    groups = []
    while f"{GROUPS}.latent_codec.y{len(groups)}.context_prediction.weight" in keys.state:
        groups.append(int(keys.state[f"{GROUPS}.latent_codec.y{len(groups)}.context_prediction.weight"].shape[1]))
    if len(groups) < 2:
        raise CheckpointImportError(f"Expected ELIC's channel groups ({GROUPS}.latent_codec.y0, y1, ...). Got "
                                    f"{len(groups)} instead.")
    return groups


# -- quantization ----------------------------------------------------------------------------------------------------


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _layer(kind: str, w: np.ndarray, b: np.ndarray, in_exp: int, out_exp: int, relu: bool) -> elic.Layer:
    """Float (matrix, bias) in the integer module's layout -> integer layer from activations at 2**in_exp to
    2**out_exp: the most weight bits that keep every sum below 2**51."""
    cout = b.shape[0]
    colsum = (np.abs(w).reshape(w.shape[0], 25, cout).sum((0, 1)) if kind == "deconv"
              else np.abs(w).reshape(-1, cout).sum(0)).max()
    wexp = min(scale_exponent(colsum * 2.0**CLIP_BITS + np.abs(b).max() * 2.0**in_exp, 51), 40)
    shift = wexp + in_exp - out_exp
    if shift < 0:
        raise CheckpointImportError(f"Expected weights small enough for exact integer layers. Got a {kind} layer "
                                    f"needing a negative shift ({shift}) instead.")
    return elic.Layer(kind, np.rint(w * 2.0**wexp), np.rint(b * 2.0 ** (wexp + in_exp)), shift, relu)


def _conv_layer(conv: nn.Module, in_exp: int, out_exp: int, relu: bool) -> elic.Layer:
    if isinstance(conv, nn.ConvTranspose2d):
        if conv.weight.shape[-1] != 5 or conv.stride != (2, 2):
            raise CheckpointImportError(f"Expected 5x5 stride-2 transposed convolutions in h_s. Got "
                                        f"{tuple(conv.weight.shape)} stride {conv.stride} instead.")
        return _layer("deconv", deconv_matrix(_np(conv.weight)), _np(conv.bias), in_exp, out_exp, relu)
    if conv.stride != (1, 1):
        raise CheckpointImportError(f"Expected stride-1 convolutions. Got stride {conv.stride} instead.")
    return _layer("conv", conv_matrix(_np(conv.weight)), _np(conv.bias), in_exp, out_exp, relu)


def _exp(record: dict, name: str) -> int:
    return scale_exponent(record[name], CALIBRATION_BITS)


def build_entropy(model: ImportedElic, calibration: torch.Tensor, z_tables: EntropyTables,
                  sigma_min: float) -> elic.ElicModel:
    """The integer entropy model; activation scales from the float steps on ``calibration`` images (z-scores)."""
    from .hyper_export import scale_tables

    record: dict = {}
    with torch.no_grad():
        for image in calibration:
            model.steps(model.analyse(image[None]), record)
    clip = 2.0**CLIP_BITS
    input_exp = min(_exp(record, "y_hat"), FINE_BITS + 8)
    z_exp = min(_exp(record, "z"), elic.Z_EXP_LIMIT)  # an all-zero z would ask for 2**58
    hyper_exp = _exp(record, "hyper")
    exps = [z_exp, _exp(record, "hs1"), _exp(record, "hs2"), hyper_exp]
    hyper = tuple(_conv_layer(layer, exps[i], exps[i + 1], i < 2) for i, layer in enumerate(model.h_s))
    median = _np(model.median).reshape(-1)
    networks = []
    for k, c in enumerate(model.groups):
        channel = ()
        channel_exp = 0
        if k:
            ch = model.channel[k]
            channel_exp = _exp(record, f"g{k}_channel")
            ins = [input_exp, _exp(record, f"g{k}_ch1"), _exp(record, f"g{k}_ch2"), channel_exp]
            channel = tuple(_conv_layer(layer, ins[i], ins[i + 1], i < 2) for i, layer in enumerate(ch))
        p1, p2, p3 = model.params[k]
        w1 = _np(p1.weight)[:, :, 0, 0].T  # (inputs, H1): [spatial 2c | channel 2c (k > 0) | hyper 2M]
        if w1.shape[0] != 2 * c * (2 if k else 1) + hyper[-1].b.shape[0]:
            raise CheckpointImportError(f"Expected group {k}'s parameter network to read {2 * c} spatial, "
                                        f"{2 * c if k else 0} channel and {hyper[-1].b.shape[0]} hyper features. Got "
                                        f"{w1.shape[0]} inputs instead.")
        w_sp, w_ch, w_hp = w1[: 2 * c], w1[2 * c : 2 * c * (2 if k else 1)], w1[2 * c * (2 if k else 1) :]
        wm = _np(model.spatial[k].weight)  # (2c, c, 5, 5), masked
        sp = np.stack([wm[:, :, dy + 2, dx + 2].T @ w_sp for dy, dx in SPATIAL_TAPS])  # (12, c, H1)
        b_sp = _np(model.spatial[k].bias) @ w_sp
        b1 = _np(p1.bias)
        h1_exp = _exp(record, f"g{k}_h1")
        # one accumulator 2**acc for all parts: weights of the part at 2**e are scaled by 2**(acc - e)
        worst = (np.abs(w_hp).sum(0) * clip * 2.0**-hyper_exp + np.abs(w_ch).sum(0) * clip * 2.0**-channel_exp
                 + np.abs(sp).sum((0, 1)) * clip * 2.0**-input_exp + np.abs(b1) + np.abs(b_sp)).max()
        acc = scale_exponent(worst, 51)
        second = _layer("dense", _np(p2.weight)[:, :, 0, 0].T, _np(p2.bias), h1_exp, _exp(record, f"g{k}_h2"), True)
        h2_exp = _exp(record, f"g{k}_h2")
        w3, b3 = _np(p3.weight)[:, :, 0, 0].T, _np(p3.bias)
        wexp3 = min(scale_exponent(np.abs(w3).sum(0).max() * clip + np.abs(b3).max() * 2.0**h2_exp, 51), 40)
        acc3 = wexp3 + h2_exp
        mean_shift, scale_shift = acc3 - FINE_BITS, acc3 - SCALE_EXP
        b3_int = np.rint(b3 * 2.0**acc3)
        b3_int[:c] += 2.0 ** (mean_shift - 1)  # the floor of the mean's shift rounds to nearest
        if min(acc - h1_exp, mean_shift - 1, scale_shift) < 0:
            raise CheckpointImportError(f"Expected group {k}'s parameter network to fit exact integer layers. Got "
                                        "weights too large for them instead.")
        networks.append(elic.GroupNetwork(
            channel=channel, hyper_w=np.rint(w_hp * 2.0 ** (acc - hyper_exp)),
            channel_w=np.rint(w_ch * 2.0 ** (acc - channel_exp)) if k else np.zeros((0, b1.shape[0])),
            spatial_w=np.rint(sp * 2.0 ** (acc - input_exp)), b1=np.rint(b1 * 2.0**acc),
            b1_spatial=np.rint(b_sp * 2.0**acc), shift1=acc - h1_exp, second=second,
            out_w=np.rint(w3 * 2.0**wexp3), b3=b3_int, mean_shift=mean_shift, scale_shift=scale_shift))
    log_bits = 12
    tables = math.ceil(math.log2(SIGMA_MAX / sigma_min) * STEPS_PER_OCTAVE) + 1
    log_sigma_min = int(round(math.log2(sigma_min) * 2**log_bits))
    offsets, pmf, lengths = scale_tables(SimpleNamespace(tables=tables, steps_per_octave=STEPS_PER_OCTAVE),
                                         log_sigma_min)
    sigma0 = 2.0 ** (log_sigma_min / 2**log_bits)
    thresholds = np.array([math.ceil(sigma0 * 2.0 ** ((i - 0.5) / STEPS_PER_OCTAVE) * 2**SCALE_EXP)
                           for i in range(1, tables)], np.int64)
    return elic.ElicModel(
        groups=tuple(model.groups), fine_bits=FINE_BITS, input_exp=input_exp, z_exp=z_exp,
        z_offset=np.rint(median * 2.0**z_exp).astype(np.int64), z_tables=z_tables, hyper=hyper,
        scale_exp=SCALE_EXP, thresholds=thresholds, scale_offsets=offsets, scale_pmf=pmf, scale_lengths=lengths,
        networks=tuple(networks))


def build_elic(ckpt, keys) -> tuple[ImportedElic, dict, float]:
    """The float model, the config read off the weights and the scale bound (the caller reads the entropy
    bottleneck's density, then checks that every key was used)."""
    groups = groups_of(keys)
    model = ImportedElic(keys, groups).eval()
    keys.ignore(GAUSSIAN_KEYS)
    keys.ignore(rf"{HYPER}\.entropy_bottleneck\.(_offset|_quantized_cdf|_cdf_length|target|"
                r"likelihood_lower_bound\.bound)")
    keys.ignore(rf"{GROUPS}\.latent_codec\.y\d+\.context_prediction\.mask")
    bound = None
    for k in range(len(groups)):
        for name in ("lower_bound_scale.bound", "scale_bound"):
            v = keys.state.get(f"{GROUPS}.latent_codec.y{k}.y.gaussian_conditional.{name}")
            if v is not None and v.numel():
                bound = float(v.reshape(-1)[0]) if bound is None else bound
    bands, latent, hidden = int(model.g_a[0].in_channels), sum(groups), int(model.g_a[0].out_channels)
    last = model.g_a[-2] if isinstance(model.g_a[-1], Attention) else model.g_a[-1]
    if getattr(last, "out_channels", latent) != latent or int(model.g_s[-1].out_channels) != bands:
        raise CheckpointImportError(f"Expected an analysis to {latent} latent channels (the groups' sum) and a "
                                    f"synthesis to {bands} bands. Got otherwise.")
    for name, value in (("in_channels", bands), ("N", hidden), ("M", latent)):
        if name in ckpt.config and int(ckpt.config[name]) != value:
            raise CheckpointImportError(
                f"Expected the config's {name} ({ckpt.config[name]}) to match the weights. Got {value} instead.")
    stages = sum(isinstance(m, nn.Conv2d) for m in model.g_a)
    config = {"bands": bands, "channels": hidden, "latent_channels": latent, "stages": stages, "groups": groups}
    return model, config, bound if bound is not None else 0.11
