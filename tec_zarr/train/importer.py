"""Import a TerraCodec checkpoint as a tec-zarr model folder: ``tec models import CHECKPOINT --name NAME``.

TerraCodec publishes one plain torch state dict per rate (keys optionally under ``model.``) with a config YAML
(architecture, in_channels, N, M, lambda). This module reads it without unpickling anything but tensors
(``weights_only=True``), tells the architecture from the keys (or the config), and writes what the runtime codec
runs: ONNX transforms, integer CDF tables and a manifest with the checkpoint's sha256, its lambda and the RD the
imported model measures on our validation images. No TerraCodec or CompressAI code is involved: the layers are
rebuilt here from the tensors.

The factorized prior (TerraCodec-FP, CompressAI's FactorizedPrior layout) imports:

- the analysis and synthesis are stride-2 convolutions with GDN between them; GDN's ``beta`` and ``gamma`` are
  stored reparametrized, so the export bakes their values, ``max(stored, bound)**2 - pedestal``;
- the entropy bottleneck codes ``round(y - median)`` per channel and decodes ``symbol + median``. The encoder
  graph here outputs ``y - median`` and the decoder graph adds it back, so the runtime's symbols
  (``rint(y * gain)``, gain 1) are the reference's symbols; the integer tables are the density's bin
  probabilities at ``median + k``, the median folded exactly into the density network's first bias;
- TerraCodec's per-band z-score on DN, ``(DN - mean) / std``, is ours on reflectance with ``mean / 10000`` and
  ``std / 10000``: the same affine map, so the runtime normalizes as for every model.

ELIC (CompressAI's Elic2022Chandelier layout) imports too (:mod:`.elic_import`): its transforms as ONNX graphs, its
hyperprior, channel-group and checkerboard context networks as integer layers run by
:mod:`tec_zarr.entropy.elic` (``"entropy_model": "elic"``), scales mapped to integer Gaussian tables by integer
thresholds; the pipeline's gain ``2**10`` carries the reference's fractional means into the decoder graph. On the
test fixture (random weights, N = 8, M = 132) the decoded latents equal the reference's to 2**-11 (no symbol
differs) and the decoded image agrees with the reference's to 99.8 dB, from 860 and 4020 payload bytes where the
reference writes 876 and 3768 (64 x 64 and 128 x 128).

TEC-TT and FlexTEC checkpoints are recognised and refused with a clear message: their temporal entropy models have
no integer-exact runtime here.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bands import S2_L2A_BANDS
from ..entropy.tables import EntropyTables
from ..errors import CheckpointImportError
from .layers import FactorizedDensity

# TerraCodec's L2A normalization: per-band mean and std of DN (no +1000 offset), from its usage notebooks.
TERRACODEC_MEAN_DN = (793.243, 924.863, 1184.553, 1340.936, 1671.402, 2240.082, 2468.412, 2563.243, 2627.704,
                      2711.071, 2416.714, 1849.625)
TERRACODEC_STD_DN = (1160.144, 1201.092, 1219.943, 1397.225, 1400.035, 1373.136, 1429.170, 1485.025, 1447.836,
                     1652.703, 1471.002, 1365.307)
PEDESTAL = 2.0**-36  # CompressAI's NonNegativeParametrizer: (2**-18)**2
BETA_MIN = 1e-6
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ARCHITECTURES = {"factorizedprior": "fp", "fp": "fp", "elic": "elic", "temporaltransformer": "tt", "tt": "tt",
                 "flextec": "flextec"}


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str
    state: dict[str, torch.Tensor]  # without the ``model.`` prefix
    config: dict
    kind: str  # fp, elic, tt, flextec


# -- reading ----------------------------------------------------------------------------------------------------------


def read_config(path: Path | None) -> dict:
    """A TerraCodec config YAML (flat ``key: value`` lines suffice; PyYAML reads the rest where installed)."""
    if path is None:
        return {}
    text = Path(path).read_text()
    try:
        import yaml

        config = yaml.safe_load(text)
    except ImportError:
        config = {}
        for line in text.splitlines():
            key, sep, value = line.split("#", 1)[0].partition(":")
            if sep and key.strip() and value.strip():
                config[key.strip()] = _scalar(value.strip())
    except Exception as e:
        raise CheckpointImportError(f"Expected a YAML config at {path}. Got {type(e).__name__}: {e} instead.") from None
    if not isinstance(config, dict):
        raise CheckpointImportError(f"Expected a YAML mapping (architecture, in_channels, N, M, lambda) at {path}. "
                                    f"Got {type(config).__name__} instead.")
    return config


def _scalar(text: str):
    text = text.strip("'\"")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The checkpoint's tensors (``model.`` prefix removed) and its sha256. Only tensors are unpickled."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object that is not plain data or a tensor
        if "weights only load failed" in str(e).lower():
            got = "a pickle of other Python objects, which is never unpickled here"
        else:
            first = (re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() or [""])[0]
            got = f"{type(e).__name__}: {first}"
        raise CheckpointImportError(
            f"Expected a torch state dict (tensors only) at {path}. Got {got} instead."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a Lightning-style wrapper
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        what = type(obj).__name__ if not isinstance(obj, dict) else "a dict whose values are not all tensors"
        if isinstance(obj, dict) and "config" in obj and "model" in obj:
            what = "a tec-zarr training checkpoint (export it with python -m tec_zarr.train.export)"
        raise CheckpointImportError(f"Expected a state dict of tensors at {path}. Got {what} instead.")
    if all(k.startswith("model.") for k in obj):
        obj = {k[len("model."):]: v for k, v in obj.items()}
    return {k: v.detach().float() if v.is_floating_point() else v for k, v in obj.items()}, digest


def detect(state: dict[str, torch.Tensor], config: dict) -> str:
    """fp, elic, tt or flextec, from the keys (checked against the config's architecture where it names one)."""
    tops = {k.split(".")[0] for k in state}
    if {"transform", "entropy_model"} & tops or any(k.startswith("_dequantizer") for k in state):
        kind = "flextec" if any("flex" in k.lower() or "lr_" in k.lower() for k in state) else "tt"
    elif "latent_codec" in tops or {"h_a", "h_s"} <= tops:
        kind = "elic"
    elif {"g_a", "g_s", "entropy_bottleneck"} <= tops:
        kind = "fp"
    else:
        raise CheckpointImportError(
            "Expected a TerraCodec FP or ELIC state dict (keys g_a.*, g_s.*, entropy_bottleneck.* or latent_codec.*). "
            f"Got keys starting with {sorted(tops)[:8]} instead."
        )
    named = str(config.get("architecture") or config.get("model_type") or config.get("model") or "").lower()
    named = re.sub(r"[^a-z]", "", named.split("_v1")[0]) if named else ""
    expected = ARCHITECTURES.get(named)
    if named and expected is not None and expected != kind and not {expected, kind} <= {"tt", "flextec"}:
        raise CheckpointImportError(
            f"Expected the config's architecture ({named}) to match the weights. Got weights of {kind} instead."
        )
    return kind


def read_checkpoint(path: Path, config_path: Path | None = None) -> Checkpoint:
    config = read_config(config_path)
    state, digest = load_state(path)
    kind = detect(state, config)
    if kind in ("tt", "flextec"):
        raise CheckpointImportError(
            f"Expected an image codec checkpoint (TerraCodec FP or ELIC). Got a {'FlexTEC' if kind == 'flextec' else 'TEC-TT'} "
            "(temporal transformer) checkpoint instead: tec-zarr codes chunks image by image, and its temporal "
            "entropy model is not imported."
        )
    return Checkpoint(Path(path), digest, state, config, kind)


# -- the factorized prior ---------------------------------------------------------------------------------------------


class BakedGDN(nn.Module):
    """GDN with its effective ``beta`` and ``gamma`` (already un-reparametrized): ``x / sqrt(beta + gamma x^2)``, or
    times it for the inverse."""

    def __init__(self, beta: torch.Tensor, gamma: torch.Tensor, inverse: bool):
        super().__init__()
        self.inverse = inverse
        self.register_buffer("beta", beta.clone())
        self.register_buffer("gamma", gamma.clone()[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(F.conv2d(x * x, self.gamma, self.beta))
        return x * norm if self.inverse else x / norm


class _Keys:
    """The state dict, every key read counted, so that anything unexpected is refused rather than ignored."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state
        self.used: set[str] = set()

    def get(self, key: str) -> torch.Tensor | None:
        if key in self.state:
            self.used.add(key)
            return self.state[key]
        return None

    def need(self, key: str) -> torch.Tensor:
        value = self.get(key)
        if value is None:
            raise CheckpointImportError(f"Expected the key {key} in the checkpoint. Got none instead.")
        return value

    def ignore(self, pattern: str) -> None:
        self.used |= {k for k in self.state if re.fullmatch(pattern, k)}

    def check_all_used(self, architecture: str = "FactorizedPrior") -> None:
        left = sorted(set(self.state) - self.used)
        if left:
            raise CheckpointImportError(
                f"Expected only {architecture} keys. Got {len(left)} more, e.g. {left[:4]}, instead: not the "
                "architecture this importer knows."
            )


def _effective(keys: _Keys, prefix: str, name: str, minimum: float) -> torch.Tensor:
    stored = keys.need(f"{prefix}.{name}")
    pedestal = keys.get(f"{prefix}.{name}_reparam.pedestal")
    bound = keys.get(f"{prefix}.{name}_reparam.lower_bound.bound")
    pedestal = float(pedestal.reshape(-1)[0]) if pedestal is not None else PEDESTAL
    bound = float(bound.reshape(-1)[0]) if bound is not None else (minimum + pedestal) ** 0.5
    return torch.clamp(stored, min=bound) ** 2 - pedestal


def _transform(keys: _Keys, prefix: str, *, synthesis: bool) -> tuple[nn.Sequential, int]:
    """The analysis (``g_a``) or synthesis (``g_s``) as torch layers, and its number of stride-2 stages."""
    indices = sorted({int(k.split(".")[1]) for k in keys.state if k.startswith(prefix + ".")})
    if indices != list(range(len(indices))) or not indices:
        raise CheckpointImportError(f"Expected {prefix} layers numbered 0, 1, 2, ... Got {indices} instead.")
    layers: list[nn.Module] = []
    stages = 0
    for i in indices:
        p = f"{prefix}.{i}"
        weight = keys.get(f"{p}.weight")
        if weight is not None:
            if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] % 2 == 0:
                raise CheckpointImportError(f"Expected {p}.weight to be an odd square kernel. Got {tuple(weight.shape)}.")
            k = weight.shape[-1]
            if synthesis:
                cin, cout = weight.shape[:2]
                layer = nn.ConvTranspose2d(cin, cout, k, stride=2, padding=k // 2, output_padding=1)
            else:
                cout, cin = weight.shape[:2]
                layer = nn.Conv2d(cin, cout, k, stride=2, padding=k // 2)
            layer.weight.data.copy_(weight)
            layer.bias.data.copy_(keys.need(f"{p}.bias"))
            layers.append(layer)
            stages += 1
        elif f"{p}.beta" in keys.state:
            beta = _effective(keys, p, "beta", BETA_MIN)
            gamma = _effective(keys, p, "gamma", 0.0)
            layers.append(BakedGDN(beta, gamma, inverse=synthesis))
        else:
            raise CheckpointImportError(f"Expected {p} to be a convolution or a GDN. Got keys of neither instead.")
    return nn.Sequential(*layers), stages


class ImportedFactorizedPrior(nn.Module):
    """TerraCodec-FP's transforms around its entropy bottleneck's medians: ``analyse`` gives ``y - median``
    (rounded, the reference's symbols) and ``synthesise`` adds it back before the synthesis."""

    def __init__(self, g_a: nn.Sequential, g_s: nn.Sequential, median: torch.Tensor):
        super().__init__()
        self.g_a, self.g_s = g_a, g_s
        self.register_buffer("median", median.reshape(1, -1, 1, 1).clone())

    def analyse(self, x: torch.Tensor) -> torch.Tensor:
        return self.g_a(x) - self.median

    def synthesise(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.g_s(y_hat + self.median)


def _density(keys: _Keys, channels: int, median: torch.Tensor, prefix: str = "entropy_bottleneck") -> FactorizedDensity:
    """The bottleneck's density network as ours, with the median folded into its first bias: the returned density
    of ``k`` is the checkpoint's density of ``median + k``."""
    p = prefix

    def param(kind: str, legacy: str, i: int) -> torch.Tensor | None:
        return keys.get(f"{p}.{kind}.{i}") if f"{p}.{kind}.{i}" in keys.state else keys.get(f"{p}._{legacy}{i}")

    matrices, biases, factors = [], [], []
    i = 0
    while (m := param("matrices", "matrix", i)) is not None:
        matrices.append(m)
        biases.append(param("biases", "bias", i))
        factor = param("factors", "factor", i)
        if factor is not None:
            factors.append(factor)
        i += 1
    if not matrices or any(b is None for b in biases) or len(factors) != len(matrices) - 1:
        raise CheckpointImportError("Expected the entropy bottleneck's matrices, biases and factors. Got an incomplete set.")
    filters = tuple(int(m.shape[1]) for m in matrices[:-1])
    density = FactorizedDensity(channels, filters=filters)
    with torch.no_grad():
        for ours, theirs in ((density.matrices, matrices), (density.biases, biases), (density.factors, factors)):
            for param_, value in zip(ours, theirs):
                if param_.shape != value.shape:
                    raise CheckpointImportError(
                        f"Expected entropy bottleneck tensors of shape {tuple(param_.shape)}. Got {tuple(value.shape)}."
                    )
                param_.copy_(value)
        density.biases[0].add_(F.softplus(density.matrices[0]) * median.reshape(-1, 1, 1))
    return density


def build_fp(ckpt: Checkpoint) -> tuple[ImportedFactorizedPrior, FactorizedDensity, dict]:
    """The imported transforms, the density of the shifted symbols, and the config read off the weights."""
    keys = _Keys(ckpt.state)
    g_a, stages_a = _transform(keys, "g_a", synthesis=False)
    g_s, stages_s = _transform(keys, "g_s", synthesis=True)
    quantiles = keys.need("entropy_bottleneck.quantiles")
    keys.ignore(r"entropy_bottleneck\.(_offset|_quantized_cdf|_cdf_length|target|likelihood_lower_bound\.bound)")
    bands = int(g_a[0].in_channels)
    latent = int(g_a[-1].out_channels)
    hidden = int(g_a[0].out_channels)
    if stages_a != stages_s or g_s[0].in_channels != latent or g_s[-1].out_channels != bands:
        raise CheckpointImportError(
            f"Expected matching analysis and synthesis. Got {stages_a} and {stages_s} stages, "
            f"{latent} and {g_s[0].in_channels} latent channels, {bands} and {g_s[-1].out_channels} bands instead."
        )
    if bands != len(S2_L2A_BANDS):
        raise CheckpointImportError(
            f"Expected a checkpoint for the {len(S2_L2A_BANDS)} Sentinel-2 L2A bands. Got {bands} input channels "
            "instead (TerraCodec's L1C models take 13)."
        )
    if quantiles.shape != (latent, 1, 3):
        raise CheckpointImportError(f"Expected quantiles of shape ({latent}, 1, 3). Got {tuple(quantiles.shape)}.")
    median = quantiles[:, 0, 1].clone()
    density = _density(keys, latent, median)
    keys.check_all_used()
    for name, value in (("in_channels", bands), ("N", hidden), ("M", latent)):
        if name in ckpt.config and int(ckpt.config[name]) != value:
            raise CheckpointImportError(
                f"Expected the config's {name} ({ckpt.config[name]}) to match the weights. Got {value} instead."
            )
    config = {"bands": bands, "channels": hidden, "latent_channels": latent, "stages": stages_a}
    return ImportedFactorizedPrior(g_a, g_s, median).eval(), density, config


# -- writing the model folder -----------------------------------------------------------------------------------------


def checkpoint_lambda(ckpt: Checkpoint) -> float | None:
    for key in ("lambda", "lmbda", "lmbd", "rd_lambda"):
        if key in ckpt.config:
            try:
                return float(ckpt.config[key])
            except (TypeError, ValueError):
                pass
    found = re.search(r"lambda-([0-9]*\.?[0-9]+)", ckpt.path.name)
    return float(found.group(1)) if found else None


def check_name(name: str, into: Path) -> None:
    from ..models.registry import SHIPPED, list_models

    if not NAME.fullmatch(name):
        raise CheckpointImportError(
            f"Expected a model name of lowercase letters, digits, '.', '_' and '-' (at most 64). Got {name!r} instead."
        )
    if name in SHIPPED:
        raise CheckpointImportError(f"Expected a name other than the shipped models' {list(SHIPPED)}. Got {name!r}.")
    if (Path(into) / name).exists():
        raise CheckpointImportError(
            f"Expected no folder {Path(into) / name} yet. Got one instead: choose another --name or remove it."
        )
    taken = {c.name: c.folder for c in list_models()}
    if name in taken:
        raise CheckpointImportError(
            f"Expected a name no installed model has. Got {name!r}, installed at {taken[name]} instead."
        )


def import_checkpoint(checkpoint: Path, name: str, *, config: Path | None = None, into: Path | None = None,
                      data_root: Path | None = None, images: np.ndarray | None = None) -> Path:
    """Convert ``checkpoint`` into the model folder ``into/name`` (default: :func:`~tec_zarr.models.registry.install_dir`)
    and measure its RD. ``images``: uint16 DN (N, 12, H, W) to calibrate (ELIC) and measure on instead of the
    validation images. Returns the folder."""
    from ..models import model_digest
    from ..models.registry import install_dir
    from .export import entropy_tables, export_onnx, machine_description, sha256_file
    from .export import _Decoder, _Encoder

    into = Path(into) if into is not None else install_dir()
    check_name(name, into)
    ckpt = read_checkpoint(Path(checkpoint), Path(config) if config else None)
    if ckpt.kind == "elic":
        from . import elic_import

        keys = _Keys(ckpt.state)
        model, cfg, sigma_min = elic_import.build_elic(ckpt, keys)
        density = _density(keys, int(model.median.shape[1]), model.median.reshape(-1),
                           prefix=f"{elic_import.HYPER}.entropy_bottleneck")
        keys.check_all_used("ELIC")
        multiple = 4 * 2 ** cfg["stages"]  # z at 1/4 of the latent resolution
    else:
        model, density, cfg = build_fp(ckpt)
        multiple = 2 ** cfg["stages"]
    lam = checkpoint_lambda(ckpt)
    into.mkdir(parents=True, exist_ok=True)
    tmp = into / f".{name}.part"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir()
    example = torch.zeros(1, cfg["bands"], 4 * multiple, 4 * multiple)
    with torch.no_grad():
        export_onnx(_Encoder(model), example, "x", "y", tmp / "encoder.onnx")
        export_onnx(_Decoder(model), model.analyse(example), "y_hat", "x_hat", tmp / "decoder.onnx")
    ones = np.ones((1, cfg["latent_channels"]), np.float32)
    tables = entropy_tables(SimpleNamespace(gain=torch.from_numpy(ones[:, : int(density.matrices[0].shape[0])]), densities=[density]))
    gain = ones
    extra: dict = {}
    names = ["decoder.onnx", "encoder.onnx", "tables.npz"]
    if ckpt.kind == "elic":
        from ..entropy import elic
        from . import elic_import

        gain = ones * np.float32(2.0**elic_import.FINE_BITS)
        with torch.no_grad():
            export_onnx(elic_import._HyperAnalysis(model), model.analyse(example), "y", "t",
                        tmp / elic.ANALYSIS_FILENAME)
        found = images if images is not None else validation_images(data_root)[0]
        mean = torch.tensor(TERRACODEC_MEAN_DN)[:, None, None]
        std = torch.tensor(TERRACODEC_STD_DN)[:, None, None]
        calibration = (torch.from_numpy(found[:8].astype(np.float32)) - mean) / std
        z_tables = EntropyTables(offsets=tables["offsets"], pmf=tables["pmf"].astype(np.int64),
                                 lengths=tables["lengths"])
        entropy = elic_import.build_entropy(model, calibration, z_tables, sigma_min)
        (tmp / elic.FILENAME).write_bytes(entropy.to_npz())
        names += [elic.FILENAME, elic.ANALYSIS_FILENAME]
        extra = {"entropy_model": elic.ENTROPY_MODEL, "latent_stride": multiple // 4}
    np.savez_compressed(
        tmp / "tables.npz",
        mean=(np.asarray(TERRACODEC_MEAN_DN, np.float64) / 1e4).astype(np.float32),
        std=(np.asarray(TERRACODEC_STD_DN, np.float64) / 1e4).astype(np.float32),
        gain=gain, inv_gain=1 / gain, **tables,
    )
    files = {f: sha256_file(tmp / f) for f in names}
    manifest = {
        "name": name,
        "version": "1",
        "architecture": (f"TerraCodec-ELIC (imported): {cfg['stages']} stride-2 stages with residual bottleneck and "
                         f"attention blocks, N={cfg['channels']}, M={cfg['latent_channels']}, hyperprior, channel "
                         f"groups {cfg.get('groups')} with checkerboard and channel context (integer networks)"
                         if ckpt.kind == "elic" else
                         f"TerraCodec-FP (imported): factorized prior, {cfg['stages']} stride-2 GDN stages, "
                         f"N={cfg['channels']}, M={cfg['latent_channels']}"),
        **extra,
        "config": {**cfg, "lambdas": [lam]},
        "multiple": multiple,
        "bands": list(S2_L2A_BANDS),
        "normalization": {
            "units": "reflectance = DN / 10000; x_norm = (reflectance - mean) / std",
            "mean": [round(v / 1e4, 7) for v in TERRACODEC_MEAN_DN],
            "std": [round(v / 1e4, 7) for v in TERRACODEC_STD_DN],
            "source": "TerraCodec's L2A z-score, (DN - mean_dn) / std_dn, DN without the +1000 offset",
        },
        "qualities": [{"quality": 0, "lambda": lam}],
        "default_quality": 0,
        "imported": {
            "from": "TerraCodec",
            "architecture": "elic" if ckpt.kind == "elic" else "factorizedprior",
            "checkpoint": ckpt.path.name,
            "checkpoint_sha256": ckpt.sha256,
            "lambda": lam,
            "config": {k: v for k, v in ckpt.config.items() if isinstance(v, (str, int, float, bool))},
            "medians": ("hyper entropy bottleneck medians: the hyper-analysis graph outputs h_a(y) - median; latents "
                        "coded as round(y - mean), decoded as symbols / 2**fine_bits = s + mean"
                        if ckpt.kind == "elic" else
                        "entropy bottleneck medians: encoder outputs y - median, decoder adds it back"),
            "bounded_coding": "no integer synthesis: max_error/lossless coding is not available for this model",
        },
        "training": {"validation_places": []},
        "exported": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_description()},
        "files": files,
        "sha256": model_digest(files),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    measure(tmp, data_root, images)
    folder = into / name
    tmp.rename(folder)
    return folder


def validation_images(data_root: Path | None) -> tuple[np.ndarray, list[str], str]:
    """uint16 DN (N, 12, 256, 256): the shared data's validation places where they are found (``data_root`` or
    ../shared/data), else the bundled sample's four dates. Also the places and a description."""
    from .. import sample
    from . import data
    from .export import DEFAULT_DATA

    root = Path(data_root) if data_root is not None else DEFAULT_DATA
    try:
        _, val = data.split(data.load_images(root))
    except (FileNotFoundError, ImportError):
        val = []
    if val:
        crops = np.rint(data.validation_crops(val) * 1e4).astype(np.uint16)
        return crops, list(data.VALIDATION_PLACES), f"{len(crops)} validation images of {root.name}, 12x256x256"
    cube = sample.load_array()[:, :, :256, :256]
    return np.ascontiguousarray(cube), ["0173706"], "the bundled sample's 4 dates, 12x256x256"


def measure(folder: Path, data_root: Path | None = None, images: np.ndarray | None = None) -> None:
    """Measure the model in ``folder`` with the runtime codec (real bitstreams, headers included) on the validation
    images; write bpp and PSNR into its manifest's qualities."""
    from .. import metrics, pipeline
    from ..models import Model
    from ..models.card import read_card
    from ..models.registry import verified_bytes

    card = read_card(folder)
    model = Model.from_files(card, {f: verified_bytes(card, f) for f in card.files})
    if images is None:
        images, places, what = validation_images(data_root)
    else:
        places, what = [], f"{len(images)} images"
    manifest = json.loads((folder / "manifest.json").read_text())
    with _loaded_as(model):
        for q in manifest["qualities"]:
            bpps, psnrs = [], []
            for img in images:
                enc = pipeline.encode_chunk(np.ascontiguousarray(img), model=model, quality=q["quality"], nodata=None)
                dec = pipeline.decode_chunk(enc)
                bpps.append(len(enc) * 8 / (img.shape[1] * img.shape[2]))
                psnrs.append(metrics.psnr(img, dec))
            q["validation"] = {"bpp": round(float(np.mean(bpps)), 4), "psnr": round(float(np.mean(psnrs)), 3),
                               "images": len(images), "size": "x".join(str(n) for n in images.shape[1:])}
    manifest.setdefault("training", {})["validation_places"] = places
    manifest["training"]["validation"] = what
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


@contextmanager
def _loaded_as(model):
    """Decoders find ``model`` by its name while it is measured in a folder not (yet) on the model path."""
    from ..models import registry

    with registry._lock:
        if model.name in registry._loaded:
            raise CheckpointImportError(f"Expected no loaded model named {model.name}. Got one instead.")
        registry._loaded[model.name] = model
    try:
        yield
    finally:
        with registry._lock:
            registry._loaded.pop(model.name, None)
