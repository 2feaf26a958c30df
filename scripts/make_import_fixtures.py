"""Make the checkpoint-import test fixtures (tests/fixture/import/) with TerraCodec's own reference package.

Runs ONLY in a throwaway virtual environment (TerraCodec needs CompressAI, which pins numpy < 2 and cannot live
beside zarr 3); nothing of the reference code is committed, only what this script writes:

    python3.11 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 terracodec==0.3.1
    /tmp/refvenv/bin/python scripts/make_import_fixtures.py

Writes, from the reference's own constructors and its own compress/decompress:

- ``fp_random.pt``: a random-weight TerraCodec FactorizedPrior state dict (12 bands, small N and M so the file
  stays small), keys under ``model.`` as the published checkpoints have them. The weights are perturbed so the
  test means something: the analysis' last layer scaled up (latents of a few units, not all zero), the density
  networks' parameters jittered per channel, the quantiles searched from the density and the medians moved off it.
- ``fp_random.yaml``: its config, in the published configs' keys.
- ``fp_reference.npz``: where the inputs are cut from the bundled sample, and for each the reference's
  compressed string (``strings_<size>``, uint8) and latent shape; for the small one also its decoded image in DN
  (``decoded_<size>``, rounded to int32: what the reference's x_hat denormalizes to).

The network of the reference's GPU-built torchvision cannot load beside the CPU torch here, and CompressAI only
imports it for its dataset registry: a stub module stands in for it.
"""

from __future__ import annotations

import lzma
import sys
import types
from pathlib import Path

import numpy as np

for _name in ("torchvision", "torchvision.transforms"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]

import torch  # noqa: E402
from terracodec.imagecodecs import FactorizedPrior  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixture" / "import"
SAMPLE = ROOT / "tec_zarr" / "sample" / "s2l2a_0173706.npz"

# TerraCodec's L2A normalization (DN, no +1000 offset), from its usage notebooks.
MEAN = [793.243, 924.863, 1184.553, 1340.936, 1671.402, 2240.082, 2468.412, 2563.243, 2627.704, 2711.071,
        2416.714, 1849.625]
STD = [1160.144, 1201.092, 1219.943, 1397.225, 1400.035, 1373.136, 1429.170, 1485.025, 1447.836, 1652.703,
       1471.002, 1365.307]
N, M = 12, 16
CROPS = {64: (1, 40, 72), 128: (2, 100, 8)}  # size -> (date, top, left) in the bundled sample


def sample_dn() -> np.ndarray:
    """The bundled sample, uint16 (4, 12, 264, 264), unpacked as tec_zarr.sample does."""
    with np.load(SAMPLE) as f:
        shape = tuple(int(n) for n in f["shape"])
        planes = np.frombuffer(lzma.decompress(f["reflectance_xz"].tobytes()), np.uint8).reshape(2, -1)
    diff = np.ascontiguousarray(planes.T).view("<u2").reshape(shape)
    return np.cumsum(diff, axis=-1, dtype=np.uint16)


def perturbed_model(seed: int) -> FactorizedPrior:
    torch.manual_seed(seed)
    model = FactorizedPrior(in_channels=12, N=N, M=M, image_size=64)
    eb = model.entropy_bottleneck
    with torch.no_grad():
        model.g_a[-1].weight.mul_(40.0)
        model.g_a[-1].bias.normal_(0.0, 2.0)
        for p in (*eb.matrices, *eb.factors):
            p.add_(0.5 * torch.randn_like(p))
        for b in eb.biases:
            b.add_(torch.randn_like(b))
        eb._update_quantiles()
        eb.quantiles[:, 0, 1] += torch.rand(M) - 0.5  # medians off the density's own, within its range
    model.update(force=True)
    return model.eval()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    model = perturbed_model(19)
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save(state, OUT / "fp_random.pt")
    (OUT / "fp_random.yaml").write_text(
        f"architecture: factorizedprior\nin_channels: 12\nN: {N}\nM: {M}\nlambda: 10\n"
    )
    cube = sample_dn()
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    arrays: dict[str, np.ndarray] = {"mean": np.asarray(MEAN), "std": np.asarray(STD)}
    for size, (t, y, x) in CROPS.items():
        dn = cube[t, :, y : y + size, x : x + size]
        z = ((torch.from_numpy(dn.astype(np.float32)) - mean) / std)[None]
        with torch.no_grad():
            enc = model.compress(z)
            x_hat = model.decompress(enc["strings"], enc["shape"])
        string = enc["strings"][0][0]
        arrays[f"crop_{size}"] = np.array([t, y, x, size])
        arrays[f"strings_{size}"] = np.frombuffer(string, np.uint8)
        arrays[f"shape_{size}"] = np.array(list(enc["shape"]))
        decoded = (x_hat[0] * std + mean).numpy()
        if size == 64:
            arrays[f"decoded_{size}"] = np.rint(decoded).astype(np.int32)
        with torch.no_grad():
            symbols = torch.round(model.g_a(z) - eb_medians(model)).abs()
        print(f"{size}: {len(string)} bytes ({len(string) * 8 / size**2:.3f} bpp), |symbols| mean "
              f"{float(symbols.mean()):.2f} max {float(symbols.max()):.0f}; decoded DN range "
              f"[{decoded.min():.0f}, {decoded.max():.0f}]")
    np.savez_compressed(OUT / "fp_reference.npz", **arrays)
    for path in sorted(OUT.iterdir()):
        print(path.relative_to(ROOT), path.stat().st_size)
    return 0


def eb_medians(model) -> torch.Tensor:
    return model.entropy_bottleneck.quantiles[:, 0, 1][None, :, None, None].detach()


if __name__ == "__main__":
    sys.exit(main())
