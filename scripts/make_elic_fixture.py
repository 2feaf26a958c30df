"""Make the ELIC checkpoint-import fixtures (tests/fixture/import/elic_*) with TerraCodec's own reference package.

Runs ONLY in a throwaway virtual environment, as scripts/make_import_fixtures.py (TerraCodec needs CompressAI, which
pins numpy < 2 and cannot live beside zarr 3); nothing of the reference code is committed:

    python3.11 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 'numpy<2' terracodec==0.3.1
    /tmp/refvenv/bin/python scripts/make_elic_fixture.py

ELIC's context networks have fixed widths (224, 128 and 512 channels, and 2M with M > 128), so even the smallest
random-weight model the constructor builds (N = 8, M = 132, groups [16, 16, 32, 64, 4]) holds 7.3 M parameters,
29 MB as float32. The weights are therefore made compressible before the reference runs: every tensor of more
than 4096 values becomes sparse ternary (one weight in 32 kept, +-2**e with 2**e matching the constructor's init
variance), every smaller one a multiple of a power of two in int8, so that the stored integers and exponents give
the reference's exact float32 weights back. Writes:

- ``elic_random.npz``: per float tensor ``q/<key>`` (int8) and ``e/<key>`` (its power-of-two step), or ``f/<key>``
  (float32, for the entropy bottleneck's quantiles and the scale bounds), and ``shape/<key>`` for the int32
  buffers that ``update()`` fills (stored empty, as the constructor makes them; the importer ignores them). The
  tests rebuild the ``model.``-prefixed state dict from it and ``torch.save`` it, as the published checkpoints are.
- ``elic_random.yaml``: its config, in the published configs' keys.
- ``elic_reference.npz``: where the inputs are cut from the bundled sample, and for each the reference's strings'
  total length (``bytes_<size>``), its dequantized latents (``y_hat_<size>``) and for 64 x 64 its decoded image in
  DN (``decoded_64``, rounded to int32).
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
from terracodec.imagecodecs import ELIC  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixture" / "import"
SAMPLE = ROOT / "tec_zarr" / "sample" / "s2l2a_0173706.npz"
MEAN = [793.243, 924.863, 1184.553, 1340.936, 1671.402, 2240.082, 2468.412, 2563.243, 2627.704, 2711.071,
        2416.714, 1849.625]
STD = [1160.144, 1201.092, 1219.943, 1397.225, 1400.035, 1373.136, 1429.170, 1485.025, 1447.836, 1652.703,
       1471.002, 1365.307]
N, M = 8, 132
CROPS = {64: (1, 40, 72), 128: (2, 100, 8)}  # size -> (date, top, left) in the bundled sample
SPARSE_ABOVE = 4096
KEEP = 1 / 32


def sample_dn() -> np.ndarray:
    with np.load(SAMPLE) as f:
        shape = tuple(int(n) for n in f["shape"])
        planes = np.frombuffer(lzma.decompress(f["reflectance_xz"].tobytes()), np.uint8).reshape(2, -1)
    diff = np.ascontiguousarray(planes.T).view("<u2").reshape(shape)
    return np.cumsum(diff, axis=-1, dtype=np.uint16)


def compressible(model: ELIC, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Replace the weights in place by sparse ternary / int8 multiples of 2**e; return the stored arrays."""
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                arrays[f"shape/{key}"] = np.asarray(t.shape, np.int64)
                continue
            if key.endswith(("quantiles", "bound", "scale_bound", "target", "pedestal")) or t.numel() == 0:
                arrays[f"f/{key}"] = t.numpy().astype(np.float32)
                continue
            w = t.numpy().astype(np.float64)
            std = float(w.std()) or 1e-3
            if key.endswith(".mask"):
                q, e = np.rint(w).astype(np.int8), 0
            elif w.size > SPARSE_ABOVE:
                e = int(np.round(np.log2(std / np.sqrt(KEEP))))
                q = (np.sign(w) * (rng.random(w.shape) < KEEP)).astype(np.int8)
            else:
                e = int(np.floor(np.log2(max(np.abs(w).max(), 1e-6) / 100)))
                q = np.clip(np.rint(w / 2.0**e), -127, 127).astype(np.int8)
            t.copy_(torch.from_numpy(q.astype(np.float32) * np.float32(2.0**e)))
            arrays[f"q/{key}"], arrays[f"e/{key}"] = q, np.int64(e)
    return arrays


def perturbed_model(seed: int) -> tuple[ELIC, dict[str, np.ndarray]]:
    torch.manual_seed(seed)
    model = ELIC(in_channels=12, N=N, M=M, image_size=64)
    lc = model.latent_codec
    eb = lc["hyper"].entropy_bottleneck
    with torch.no_grad():
        model.g_a[13].weight.mul_(6.0)  # latents of a few units, not all zero
        lc["hyper"].h_a[4].weight.mul_(3.0)
        for k in range(len(model.groups)):
            g = model.groups[k]
            last = lc["y"].latent_codec[f"y{k}"].entropy_parameters[4]
            last.bias[g:] += 1.5  # scales mostly above the 0.11 bound
        for p in (*eb.matrices, *eb.factors):
            p.add_(0.5 * torch.randn_like(p))
        for b in eb.biases:
            b.add_(torch.randn_like(b))
    arrays = compressible(model, np.random.default_rng(seed))
    with torch.no_grad():
        eb._update_quantiles()
        eb.quantiles[:, 0, 1] += torch.rand(N) - 0.5
    arrays["f/latent_codec.hyper.entropy_bottleneck.quantiles"] = eb.quantiles.detach().numpy().astype(np.float32)
    model.update(force=True)
    return model.eval(), arrays


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    model, arrays = perturbed_model(19)
    state = model.state_dict()
    for key in state:  # everything the tests rebuild equals what the reference runs (update() fills scale_table)
        if state[key].is_floating_point() and not key.endswith("scale_table"):
            if f"f/{key}" in arrays:
                got = torch.from_numpy(arrays[f"f/{key}"])
            else:
                got = torch.from_numpy(arrays[f"q/{key}"].astype(np.float32) * np.float32(2.0 ** arrays[f"e/{key}"]))
            if not torch.equal(got, state[key]):
                raise SystemExit(f"{key} does not round-trip")
    np.savez_compressed(OUT / "elic_random.npz", **arrays)
    (OUT / "elic_random.yaml").write_text(f"architecture: elic\nin_channels: 12\nN: {N}\nM: {M}\nlambda: 10\n")
    cube = sample_dn()
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    ref: dict[str, np.ndarray] = {"mean": np.asarray(MEAN), "std": np.asarray(STD)}
    for size, (t, y, x) in CROPS.items():
        dn = cube[t, :, y : y + size, x : x + size]
        z = ((torch.from_numpy(dn.astype(np.float32)) - mean) / std)[None]
        with torch.no_grad():
            enc = model.compress(z)
            x_hat = model.decompress(enc["strings"], enc["shape"])
            y_hat = model.latent_codec.decompress(enc["strings"], enc["shape"])["y_hat"]
            y_float = model.g_a(z)
        total = sum(len(s[0]) for s in enc["strings"])
        ref[f"crop_{size}"] = np.array([t, y, x, size])
        ref[f"bytes_{size}"] = np.int64(total)
        ref[f"strings_{size}"] = np.array([len(s[0]) for s in enc["strings"]])
        ref[f"y_hat_{size}"] = y_hat[0].numpy().astype(np.float32)
        decoded = (x_hat[0] * std + mean).numpy()
        if size == 64:
            ref["decoded_64"] = np.rint(decoded).astype(np.int32)
        print(f"{size}: {total} bytes in {len(enc['strings'])} strings ({total * 8 / size**2:.3f} bpp); |y| mean "
              f"{float(y_float.abs().mean()):.2f}, |y_hat| max {float(y_hat.abs().max()):.1f}; decoded DN range "
              f"[{decoded.min():.0f}, {decoded.max():.0f}]")
    np.savez_compressed(OUT / "elic_reference.npz", **ref)
    for path in sorted(OUT.glob("elic_*")):
        print(path.relative_to(ROOT), path.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
