"""Augmentations of what differs between real Sentinel-2 cubes, for the burst trainer (``burst.py``).

The shared data's SSL4EO images carry their 20 m and 60 m bands smoothly resampled to 10 m, while users' cubes
usually replicate them (2x2 and 6x6 blocks, at whatever phase the chunk grid cuts them), and calibration, haze,
snow, cloud tops and swath edges vary from scene to scene. Each crop gets, each with its own probability:

- resampling: the 20 m and 60 m bands averaged to their native grid (partial blocks at the crop's edges) at a
  random phase, then brought back by replication, bilinear or cubic interpolation; a replicated crop may be
  *coded* (``p_coded``): trained the way the codec codes such bands, its transform handed the smooth band with
  the same block means (``replication.smooth``) and its reconstruction taken as block means (the decoder's
  projection) before the distortion is measured against the blocks (:class:`Coding`);
- a per-band gain and offset (calibration and atmospheric correction differences);
- haze: a smooth offset that falls with wavelength;
- brightening as in snow and cloud tops: the crop scaled up so that its visible bands peak at a random level
  from 0.7 to 1.8 reflectance (by a factor from 1 to 3), in smooth blobs or all over, the SWIR bands less (snow
  is dark there), and clipped at 65535 DN;
- a straight nodata edge (a swath edge), filled with zeros or with the band mean (the codec's nodata path
  hands the transform the band mean, so both occur).

Results are rounded to whole DN, as real inputs are. Every random choice is drawn from the sampler's numpy
Generator, so a checkpoint's sampler state resumes the same sequence; the pixel work is torch on the batch's
device, with deterministic operations only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import replication
from . import data

BANDS_20M = (4, 5, 6, 8, 10, 11)  # B05 B06 B07 B8A B11 B12 in the 12-band L2A order
BANDS_60M = (0, 9)  # B01 B09
VISIBLE = (1, 2, 3)  # B02 B03 B04
KERNELS = ("nearest", "bilinear", "cubic")
# Central wavelengths (nm) of the 12 L2A bands: haze scatters the short ones most.
WAVELENGTHS = np.array([443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1610, 2190], np.float64)
MAX_REFLECTANCE = 65535 / 1e4
FIELD_GRID = 4  # smooth fields are cubic interpolations of a 4x4 random grid


@dataclass(frozen=True)
class AugmentConfig:
    p_resample: float = 0.7
    kernel_weights: tuple[float, float, float] = (0.5, 0.25, 0.25)  # nearest, bilinear, cubic
    p_gain: float = 0.5
    gain: tuple[float, float] = (0.9, 1.1)
    offset: float = 0.005  # reflectance, either sign (50 DN)
    p_haze: float = 0.2
    haze: tuple[float, float] = (0.01, 0.12)  # reflectance added at B01 where the field is 1
    haze_exponent: float = 1.5  # Angstrom-like fall-off with wavelength
    p_bright: float = 0.15
    bright: tuple[float, float] = (0.7, 1.8)  # visible peak (99th percentile) to scale to, drawn log-uniformly
    bright_max_gain: float = 3.0  # a dark crop stays darker than its target rather than turn into noise
    p_bright_whole: float = 0.5  # else only inside smooth blobs
    p_nodata: float = 0.05
    p_nodata_zero: float = 0.5  # else the band mean
    # Of the replicated (nearest) crops, those trained as coded. Drawn only where above 0, so that recipes without
    # it keep their sequence of draws (and a resumed run its crops).
    p_coded: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def resample_matrix(size: int, factor: int, phase: int, kernel: str) -> np.ndarray:
    """(size, size) matrix R with R @ column = the column averaged over blocks of ``factor`` pixels starting
    ``phase`` pixels before the first one, then brought back to every pixel by ``kernel``."""
    cells = -(-(size + phase) // factor)
    cell = (np.arange(size) + phase) // factor
    average = np.zeros((cells, size))
    average[cell, np.arange(size)] = 1.0
    average /= average.sum(axis=1, keepdims=True)
    up = np.zeros((size, cells))
    rows = np.arange(size)
    if kernel == "nearest":
        up[rows, cell] = 1.0
    else:
        # Pixel centres in native cell units (align_corners=False); taps beyond the edge repeat the edge cell.
        u = (rows + phase + 0.5) / factor - 0.5
        base = np.floor(u).astype(int)
        t = u - base
        if kernel == "bilinear":
            taps, weights = (0, 1), (1 - t, t)
        elif kernel == "cubic":
            a = -0.5  # Keys' kernel as GDAL's cubic uses it
            taps = (-1, 0, 1, 2)
            weights = tuple(_keys(np.abs(t - k), a) for k in taps)
        else:
            raise ValueError(f"Expected a kernel in {KERNELS}. Got {kernel!r} instead.")
        for k, w in zip(taps, weights):
            np.add.at(up, (rows, np.clip(base + k, 0, cells - 1)), w)
    return up @ average


def _keys(d: np.ndarray, a: float) -> np.ndarray:
    return np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1,
                    np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0))


class Resampler:
    """Resampling matrices per crop size, kept on the device: (kernel, phase, size, size) per band group."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def matrices(self, size: int, factor: int) -> torch.Tensor:
        key = (size, factor)
        if key not in self._cache:
            m = np.stack([np.stack([resample_matrix(size, factor, p, k) for p in range(factor)]) for k in KERNELS])
            self._cache[key] = torch.from_numpy(m.astype(np.float32)).to(self.device)
        return self._cache[key]

    def smoothing(self, size: int, factor: int) -> torch.Tensor:
        """(1, phase, size, size): per phase (this module's convention), what the encoder makes of a replicated
        band along an axis (:func:`tec_zarr.replication.smoothing_matrix`)."""
        key = (size, -factor)
        if key not in self._cache:
            m = np.stack([replication.smoothing_matrix(size, factor, (factor - p) % factor) for p in range(factor)])
            self._cache[key] = torch.from_numpy(m[None].astype(np.float32)).to(self.device)
        return self._cache[key]

    def __call__(self, x: torch.Tensor, kernel: np.ndarray, phase_y: np.ndarray, phase_x: np.ndarray) -> torch.Tensor:
        """``x`` (N, 12, S, S) with the 20 m and 60 m bands of crop i resampled by ``KERNELS[kernel[i]]`` (none
        where -1) at the 60 m phase (``phase_y[i]``, ``phase_x[i]``) in [0, 6); the 20 m grid shares it, as the
        grids of a real tile do."""
        return self.apply(x, kernel, phase_y, phase_x, self.matrices)

    def apply(self, x: torch.Tensor, kernel: np.ndarray, phase_y: np.ndarray, phase_x: np.ndarray,
              bank) -> torch.Tensor:
        """``x`` with the 20 m and 60 m bands of crop i multiplied by ``bank(S, factor)[kernel[i], phase]`` on
        both sides (crops where ``kernel`` is -1 unchanged)."""
        chosen = np.flatnonzero(kernel >= 0)
        if len(chosen) == 0:
            return x
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"Expected square crops. Got {tuple(x.shape[-2:])} instead.")
        x = x.clone()
        sel = torch.from_numpy(chosen).to(x.device)
        k = torch.from_numpy(kernel[chosen]).to(x.device)
        for factor, bands in ((2, BANDS_20M), (6, BANDS_60M)):
            m = bank(x.shape[-1], factor)
            py = torch.from_numpy(phase_y[chosen] % factor).to(x.device)
            px = torch.from_numpy(phase_x[chosen] % factor).to(x.device)
            b = torch.tensor(bands, device=x.device)
            part = x[sel[:, None], b[None, :]]
            part = m[k, py][:, None] @ part @ m[k, px][:, None].transpose(-1, -2)
            x[sel[:, None], b[None, :]] = part
        return x


def remade(x: torch.Tensor, kernel: str, resampler: Resampler | None = None) -> torch.Tensor:
    """Every crop's 20 m and 60 m bands block-averaged at phase 0 and brought back by ``kernel``, in whole DN."""
    n = x.shape[0]
    out = (resampler or Resampler(x.device))(x, np.full(n, KERNELS.index(kernel)), np.zeros(n, int), np.zeros(n, int))
    return to_dn_grid(out)


def to_dn_grid(x: torch.Tensor) -> torch.Tensor:
    """Clipped to what uint16 DN can hold and rounded to whole DN."""
    return torch.round(x.clamp(0.0, MAX_REFLECTANCE) * 1e4) / 1e4


def draw(rng: np.random.Generator, n: int, cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Every random choice for ``n`` crops. A fixed number of draws per batch, whatever gets applied."""
    bands = len(WAVELENGTHS)
    w = np.asarray(cfg.kernel_weights, np.float64)
    return {
        "kernel": np.where(rng.random(n) < cfg.p_resample, rng.choice(len(KERNELS), size=n, p=w / w.sum()), -1),
        "phase": rng.integers(6, size=(n, 2)),
        "gain_on": rng.random(n) < cfg.p_gain,
        "gain": rng.uniform(*cfg.gain, size=(n, bands)),
        "offset": rng.uniform(-cfg.offset, cfg.offset, size=(n, bands)),
        "haze_on": rng.random(n) < cfg.p_haze,
        "haze": rng.uniform(*cfg.haze, size=n)[:, None] * (WAVELENGTHS[0] / WAVELENGTHS) ** cfg.haze_exponent,
        "haze_field": rng.random((n, FIELD_GRID, FIELD_GRID)),
        "bright_on": rng.random(n) < cfg.p_bright,
        "bright": np.exp(rng.uniform(*np.log(cfg.bright), size=n)),
        # how much of the scale each band takes: SWIR (B11, B12) from 0.3, the others from 0.7
        "bright_band": rng.uniform(np.where(np.arange(bands) >= 10, 0.3, 0.7), 1.0, size=(n, bands)),
        "bright_whole": rng.random(n) < cfg.p_bright_whole,
        "bright_field": rng.random((n, FIELD_GRID, FIELD_GRID)),
        "bright_level": rng.uniform(0.3, 0.7, size=n),
        "nodata_on": rng.random(n) < cfg.p_nodata,
        "nodata_angle": rng.uniform(0.0, 2 * np.pi, size=n),
        "nodata_edge": rng.uniform(-0.5, 0.9, size=n),  # distance of the edge from the centre, in half-sizes
        "nodata_zero": rng.random(n) < cfg.p_nodata_zero,
    } | ({"coded": rng.random(n) < cfg.p_coded} if cfg.p_coded > 0 else {})


def _field(grid: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(n, 1, size, size) smooth field in [0, 1] from (n, g, g) random values."""
    g = torch.from_numpy(grid.astype(np.float32))[:, None].to(device)
    return F.interpolate(g, size=(size, size), mode="bicubic", align_corners=True).clamp(0.0, 1.0)


def apply(x: torch.Tensor, d: dict[str, np.ndarray], cfg: AugmentConfig, resampler: Resampler,
          fill: torch.Tensor) -> torch.Tensor:
    """``x`` (N, 12, S, S) reflectance augmented by the draws ``d`` (``draw(rng, N, cfg)``); ``fill`` (12,) is the
    band mean.

    Each step touches only the crops it applies to (gathered, changed, written back), which keeps the CPU cost
    proportional to what is applied; only changed crops are rounded back to whole DN.
    """
    dev, size = x.device, x.shape[-1]
    x = resampler(x, d["kernel"], d["phase"][:, 0], d["phase"][:, 1])
    changed = d["kernel"] >= 0
    if d["gain_on"].any():
        i = _index(d["gain_on"], dev)
        x[i] = x[i] * _bands(d["gain"][d["gain_on"]], dev) + _bands(d["offset"][d["gain_on"]], dev)
    if d["haze_on"].any():
        on = d["haze_on"]
        i = _index(on, dev)
        x[i] = x[i] + _bands(d["haze"][on], dev) * _field(d["haze_field"][on], size, dev)
    if d["bright_on"].any():
        on = d["bright_on"]
        i = _index(on, dev)
        blob = ((_field(d["bright_field"][on], size, dev) - _column(d["bright_level"][on], dev)) * 8).clamp(0, 1)
        mask = torch.where(_column(d["bright_whole"][on], dev) > 0, torch.ones_like(blob), blob)
        part = x[i]
        peak = torch.quantile(part[:, list(VISIBLE)].flatten(1), 0.99, dim=1).clamp(min=1e-3)
        gain = (torch.from_numpy(d["bright"][on].astype(np.float32)).to(dev) / peak).clamp(1.0, cfg.bright_max_gain)
        scale = 1.0 + (gain[:, None, None, None] - 1.0) * _bands(d["bright_band"][on], dev)
        x[i] = part * (1.0 + (scale - 1.0) * mask)
    changed = changed | d["gain_on"] | d["haze_on"] | d["bright_on"]
    if changed.any():
        i = _index(changed, dev)
        x[i] = to_dn_grid(x[i])
    if d["nodata_on"].any():
        on = d["nodata_on"]
        i = _index(on, dev)
        c = (torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size * 2 - 1  # -1..1 across the crop
        ang = _column(d["nodata_angle"][on], dev)
        side = c[:, None] * torch.sin(ang) + c[None, :] * torch.cos(ang)  # (n, 1, S, S)
        value = torch.where(_column(d["nodata_zero"][on], dev) > 0, torch.zeros_like(fill)[None, :, None, None],
                            to_dn_grid(fill)[None, :, None, None])
        x[i] = torch.where(side > _column(d["nodata_edge"][on], dev), value, x[i])
    return x


def _index(on: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(on)).to(device)


def _bands(v: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, bands) values as (n, bands, 1, 1) on ``device``."""
    return torch.from_numpy(np.asarray(v, np.float32))[:, :, None, None].to(device)


def _column(v: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n,) values as (n, 1, 1, 1) on ``device``."""
    return torch.from_numpy(np.asarray(v, np.float32))[:, None, None, None].to(device)


@dataclass(frozen=True, eq=False)
class Coding:
    """The crops of a batch trained as the codec codes replicated bands: ``kernel`` 0 (nearest) where coded, -1
    elsewhere, at the crops' 60 m phases (the 20 m grid shares them)."""

    kernel: np.ndarray
    phase_y: np.ndarray
    phase_x: np.ndarray
    resampler: Resampler

    @classmethod
    def of(cls, draws: dict[str, np.ndarray], resampler: Resampler) -> Coding | None:
        """The coded crops of a batch's ``draws``: replicated, without a nodata edge (which the encoder would fill
        before smoothing), haze or brightening (which leave no blocks); or None."""
        coded = draws.get("coded")
        if coded is None:
            return None
        # haze fields and bright blobs are smooth across blocks: such crops hold no blocks for an encoder to find
        coded = (coded & (draws["kernel"] == KERNELS.index("nearest")) & ~draws["nodata_on"] & ~draws["haze_on"]
                 & ~draws["bright_on"])
        if not coded.any():
            return None
        return cls(np.where(coded, KERNELS.index("nearest"), -1), draws["phase"][:, 0], draws["phase"][:, 1], resampler)

    @classmethod
    def every(cls, n: int, resampler: Resampler) -> Coding:
        """All ``n`` crops coded at phase 0 (the validation's nearest version, :func:`remade`)."""
        zeros = np.zeros(n, np.int64)
        return cls(np.full(n, KERNELS.index("nearest")), zeros, zeros, resampler)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder hands the transform: each coded crop's replicated bands smoothed, block means kept."""
        return self.resampler.apply(x, np.where(self.kernel >= 0, 0, -1), self.phase_y, self.phase_x,
                                    self.resampler.smoothing)

    def decoded(self, x_hat: torch.Tensor) -> torch.Tensor:
        """What the decoder makes of the transform's output: the coded crops' replicated bands as block means."""
        return self.resampler.apply(x_hat, self.kernel, self.phase_y, self.phase_x, self.resampler.matrices)


class DeviceSampler(data.CropSampler):
    """:class:`~tec_zarr.train.data.CropSampler`'s crops (the same draws for the same seed), cut from images kept
    on ``device`` and, with ``augment``, augmented there. ``batch`` returns a tensor on ``device``."""

    def __init__(self, images: list[data.Image], crop: int, seed: int, device: torch.device | str,
                 augment: AugmentConfig | None = None, fill: np.ndarray | None = None):
        super().__init__(images, crop, seed)
        self.device = torch.device(device)
        self.tensors = [torch.from_numpy(np.ascontiguousarray(im)).to(self.device) for im in self.images]
        self.augment = augment
        bands = self.images[0].shape[0]
        fill = np.zeros(bands) if fill is None else fill
        self.fill = torch.from_numpy(np.asarray(fill, np.float32)).to(self.device)
        self.resampler = Resampler(self.device)

    def batch(self, size: int) -> torch.Tensor:
        return self.batch_coded(size)[0]

    def batch_coded(self, size: int) -> tuple[torch.Tensor, Coding | None]:
        """A batch and its coded crops (None: none; see :class:`Coding`)."""
        c = self.crop
        crops = []
        for index, y, x, turns, flip in self.draw(size):
            patch = torch.rot90(self.tensors[index][:, y : y + c, x : x + c], turns, dims=(1, 2))
            crops.append(patch.flip(2) if flip else patch)
        out = torch.stack(crops)
        if self.augment is None:
            return out, None
        draws = draw(self.rng, size, self.augment)
        return apply(out, draws, self.augment, self.resampler, self.fill), Coding.of(draws, self.resampler)
