"""Building blocks of the learned transforms and the factorized entropy model.

Written for this project (compressai cannot live beside zarr 3). Everything here exports to plain ONNX
operators (Conv, Mul, Sqrt, Max), so the runtime needs no custom ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GDN(nn.Module):
    """Generalized divisive normalization: ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``.

    ``inverse=True`` multiplies instead of dividing (the synthesis transform's IGDN). ``beta`` and ``gamma`` are
    kept non-negative by squaring a parameter that is clamped from below, which keeps gradients alive near zero.
    """

    def __init__(self, channels: int, *, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self._beta_floor = math.sqrt(beta_min)
        self.beta_sqrt = nn.Parameter(torch.ones(channels))
        self.gamma_sqrt = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + 1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta_sqrt.clamp(min=self._beta_floor) ** 2
        gamma = self.gamma_sqrt.clamp(min=0.0) ** 2
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        norm = torch.sqrt(norm)
        return x * norm if self.inverse else x / norm


def conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def deconv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=kernel // 2, output_padding=stride - 1)


class FactorizedDensity(nn.Module):
    """A learned univariate density per channel (Balle et al. 2018, appendix 6.1), in our own words.

    The cumulative ``c(x)`` is a small monotone network per channel: matrices made positive with softplus,
    biases, and ``tanh`` side terms whose factors are bounded below by -1 so every layer stays monotone.
    The probability of the integer bin around ``y`` is ``sigmoid(c(y + 1/2)) - sigmoid(c(y - 1/2))``.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        widths = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1.0 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))

    def cumulative_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (channels, 1, n) -> logits of the cumulative, same shape."""
        logits = x
        for i, matrix in enumerate(self.matrices):
            logits = torch.matmul(F.softplus(matrix), logits) + self.biases[i]
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Probability of the unit bin centred on each value of ``y`` (N, C, H, W)."""
        n, c, h, w = y.shape
        flat = y.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.cumulative_logits(flat - 0.5)
        upper = self.cumulative_logits(flat + 0.5)
        # Evaluate in the tail where the sigmoid difference is accurate.
        sign = -torch.sign(lower + upper).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        p = p.reshape(c, n, h, w).permute(1, 0, 2, 3)
        return p.clamp(min=1e-9)

    @torch.no_grad()
    def bin_probabilities(self, lo: int, hi: int) -> torch.Tensor:
        """Probabilities of every integer in [lo, hi] for each channel: (channels, hi - lo + 1), float64."""
        grid = torch.arange(lo, hi + 1, dtype=torch.float64)
        flat = grid.expand(self.channels, 1, -1)
        model = self.double()
        try:
            lower = model.cumulative_logits(flat - 0.5)
            upper = model.cumulative_logits(flat + 0.5)
            sign = -torch.sign(lower + upper)
            p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        finally:
            self.float()
        return p[:, 0, :]
