"""TEC-FP: the factorized-prior multispectral image codec, variable-rate through per-quality latent gains.

Data flow (training ``forward``; the bitstream path lives in the runtime, from the exported graphs)::

    x (N,12,H,W) normalized ──g_a──▶ y (N,M,H/4,W/4) ──× gain[q]──▶ y_q ──round──▶ symbols
                                                                     │ factorized density[q] → rate
    x̂ ◀──g_s── ŷ = symbols × inv_gain[q]

Only ``g_a`` and ``g_s`` are exported to ONNX; gains and integer CDF tables go to an ``.npz`` beside them.
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
    # 4x4 pixels x 12 bands hold ~89 distinct values (20 m and 60 m bands are upsampled): M=128 keeps them all,
    # so the high qualities are not capped by the transform.
    latent_channels: int = 128  # M
    stages: int = 2  # stride-2 stages: the transform's multiple is 2**stages
    lambdas: tuple[float, ...] = field(default=(2.0e3, 8.3e3, 3.46e4, 1.44e5, 6.0e5))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["lambdas"] = tuple(d["lambdas"])
        return cls(**d)

    @property
    def multiple(self) -> int:
        return 2**self.stages


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
    cin = cfg.latent_channels
    for i in range(cfg.stages):
        last = i == cfg.stages - 1
        layers.append(deconv(cin, cfg.bands if last else cfg.channels))
        if not last:
            layers.append(GDN(cfg.channels, inverse=True))
        cin = cfg.channels
    return nn.Sequential(*layers)


class TECFactorized(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        q = len(cfg.lambdas)
        self.g_a = analysis(cfg)
        self.g_s = synthesis(cfg)
        # Higher quality -> finer latent quantization: start the gains a factor sqrt(lambda ratio) apart.
        lam = torch.tensor(cfg.lambdas, dtype=torch.float32)
        start = torch.sqrt(lam / lam[0])[:, None].expand(q, cfg.latent_channels).clone()
        self.gain = nn.Parameter(start)
        self.inv_gain = nn.Parameter(1.0 / start)
        self.densities = nn.ModuleList(FactorizedDensity(cfg.latent_channels) for _ in range(q))

    def transform_parameters(self):
        return list(self.g_a.parameters()) + list(self.g_s.parameters())

    def entropy_parameters(self):
        return [self.gain, self.inv_gain, *self.densities.parameters()]

    def forward(self, x: torch.Tensor, quality: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: normalized (N, bands, H, W); ``quality``: (N,) int64. Returns x_hat and per-sample bits."""
        y = self.g_a(x)
        gained = y * self.gain[quality][:, :, None, None]
        noisy = gained + torch.empty_like(gained).uniform_(-0.5, 0.5)
        bits = torch.zeros(x.shape[0], device=x.device)
        for q in torch.unique(quality).tolist():
            sel = quality == q
            lik = self.densities[q].likelihood(noisy[sel])
            bits[sel] = -torch.log2(lik).sum(dim=(1, 2, 3))
        # Straight-through rounding: the decoder trains on the symbols it will really get.
        rounded = gained + (torch.round(gained) - gained).detach()
        y_hat = rounded * self.inv_gain[quality][:, :, None, None]
        x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat, "bits": bits, "y": y}
