"""TEC-FP: the factorized-prior multispectral image codec, variable-rate through per-quality latent gains.

Data flow (training ``forward``; the bitstream path lives in the runtime, from the exported graphs)::

    x (N,12,H,W) normalized ──g_a + a_lin──▶ y (N,M,H/4,W/4) ──× gain[q]──▶ y_q ──round──▶ symbols
                                                                     │ factorized density[q] → rate
    x̂ ◀──g_s + s_lin── ŷ = symbols × inv_gain[q]

Only the transforms (``analyse``, ``synthesise``) are exported to ONNX; gains and integer CDF tables go to an ``.npz`` beside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .layers import GDN, FactorizedDensity, conv, deconv


@dataclass(frozen=True)
class ModelConfig:
    bands: int = 12
    channels: int = 64  # N: hidden width
    # M = 4 x 4 pixels x 12 bands: with the linear path below the transform is complete, so the high qualities
    # are limited by the rate, never by what the latent can hold.
    latent_channels: int = 192  # M
    stages: int = 2  # stride-2 stages: the transform's multiple is 2**stages
    # Rate-distortion trade-offs aimed at roughly 35, 40, 45, 50 and 55 dB.
    lambdas: tuple[float, ...] = field(default=(4.0e3, 1.6e4, 7.0e4, 3.0e5, 1.2e6))
    # A linear block transform beside each nonlinear one (4x4 blocks, initialized to the training data's KLT):
    # a plain GDN autoencoder learns near-invertibility slowly on 2 CPU cores and plateaus below 40 dB.
    linear_path: bool = True
    # Hidden width of the synthesis alone (0: ``channels``). An asymmetric model decodes through fewer channels
    # than its analysis encodes with: reads cost less, the encoder does more (decode speed issue).
    synthesis_channels: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        if not self.synthesis_channels:
            del d["synthesis_channels"]  # the configs (and model cards) of symmetric models stay as they were
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["lambdas"] = tuple(d["lambdas"])
        d.setdefault("linear_path", False)  # checkpoints from before the linear path
        return cls(**d)

    @property
    def multiple(self) -> int:
        return 2**self.stages

    @property
    def synthesis_width(self) -> int:
        return self.synthesis_channels or self.channels


def analysis(cfg: ModelConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = cfg.bands
    for i in range(cfg.stages):
        last = i == cfg.stages - 1
        layers.append(conv(cin, cfg.latent_channels if last else cfg.channels))
        if not last:
            layers.append(GDN(cfg.channels))
        cin = cfg.channels
    return nn.Sequential(*layers)


def synthesis(cfg: ModelConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin, width = cfg.latent_channels, cfg.synthesis_width
    for i in range(cfg.stages):
        last = i == cfg.stages - 1
        layers.append(deconv(cin, cfg.bands if last else width))
        if not last:
            layers.append(GDN(width, inverse=True))
        cin = width
    return nn.Sequential(*layers)


class TECFactorized(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        q = len(cfg.lambdas)
        self.g_a = analysis(cfg)
        self.g_s = synthesis(cfg)
        if cfg.linear_path:
            m = cfg.multiple
            self.a_lin = nn.Conv2d(cfg.bands, cfg.latent_channels, m, stride=m, bias=False)
            self.s_lin = nn.ConvTranspose2d(cfg.latent_channels, cfg.bands, m, stride=m, bias=False)
        # Higher quality -> finer latent quantization: start the gains a factor sqrt(lambda ratio) apart.
        lam = torch.tensor(cfg.lambdas, dtype=torch.float32)
        start = 0.8 * torch.sqrt(lam / lam[0])[:, None].expand(q, cfg.latent_channels).clone()
        self.gain = nn.Parameter(start)
        self.inv_gain = nn.Parameter(1.0 / start)
        self.densities = nn.ModuleList(FactorizedDensity(cfg.latent_channels) for _ in range(q))

    @torch.no_grad()
    def init_linear_path(self, basis: torch.Tensor) -> None:
        """Start from a block KLT: ``basis`` (bands * m * m, M), orthonormal columns ordered (band, row, col).

        The nonlinear branches start at zero (their last layers zeroed, as for residual branches), so training
        starts from a good transform coder, not a random one.
        """
        m, bands, latent = self.cfg.multiple, self.cfg.bands, self.cfg.latent_channels
        kernels = basis.T.reshape(latent, bands, m, m).to(self.a_lin.weight)
        self.a_lin.weight.copy_(kernels)
        self.s_lin.weight.copy_(kernels)
        for last in (self.g_a[-1], self.g_s[-1]):
            last.weight.zero_()
            last.bias.zero_()

    def analyse(self, x: torch.Tensor) -> torch.Tensor:
        y = self.g_a(x)
        return y + self.a_lin(x) if self.cfg.linear_path else y

    def synthesise(self, y_hat: torch.Tensor) -> torch.Tensor:
        x_hat = self.g_s(y_hat)
        return x_hat + self.s_lin(y_hat) if self.cfg.linear_path else x_hat

    def transform_parameters(self):
        return list(self.g_a.parameters()) + list(self.g_s.parameters())

    def linear_parameters(self):
        return [self.a_lin.weight, self.s_lin.weight] if self.cfg.linear_path else []

    def entropy_parameters(self):
        return [self.gain, self.inv_gain, *self.densities.parameters()]

    def bits(self, values: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """Bits of each sample's gained latents ``values`` (N, M, h, w) under its quality's factorized density."""
        bits = torch.zeros(values.shape[0], device=values.device)
        for q in torch.unique(quality).tolist():
            sel = quality == q
            bits[sel] = -torch.log2(self.densities[q].likelihood(values[sel])).sum(dim=(1, 2, 3))
        return bits

    def forward(self, x: torch.Tensor, quality: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: normalized (N, bands, H, W); ``quality``: (N,) int64. Returns x_hat and per-sample bits."""
        y = self.analyse(x)
        gained = y * self.gain[quality][:, :, None, None]
        bits = self.bits(gained + torch.empty_like(gained).uniform_(-0.5, 0.5), quality)
        # Straight-through rounding: the decoder trains on the symbols it will really get.
        rounded = gained + (torch.round(gained) - gained).detach()
        y_hat = rounded * self.inv_gain[quality][:, :, None, None]
        x_hat = self.synthesise(y_hat)
        return {"x_hat": x_hat, "bits": bits, "y": y}
