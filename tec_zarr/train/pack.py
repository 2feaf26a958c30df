"""Training data packed into one small ``.npz``, so it can travel to a machine that has only the repository.

The device machine receives the whole working tree in at most 64 MiB, and the tracked files take 37-45 MiB of
that (as this was written), so plain ``savez_compressed`` (41 MiB for this data) does not fit. Each image is coded
losslessly instead: a planar prediction per band (``x - left - up + up_left``), then the band's residual less a
scaled residual of one earlier band (Sentinel-2 bands are strongly correlated), zigzag, byte planes, LZMA.
Every step is integer and vectorized, so decoding takes about a second; a sha256 per image checks it.

``step > 1`` stores DN rounded to multiples of ``step`` (an error of at most step / 2 DN), a fallback for a
tree that leaves too little room; the step is recorded per image.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "tec-zarr-train-pack-2"
GAIN_BITS = 6  # inter-band gains are multiples of 1/64: exact in float64, so both sides round alike


@dataclass(frozen=True)
class Entry:
    name: str
    place: str
    role: str  # "train", "val" (256x256 validation crop) or "ood" (out-of-source validation crop)
    dn: np.ndarray  # (bands, H, W) uint16


def _zigzag(r: np.ndarray) -> np.ndarray:
    return ((r << 1) ^ (r >> 63)).astype(np.uint32)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.int64)
    return (z >> 1) ^ -(z & 1)


def _planar(a: np.ndarray) -> np.ndarray:
    """Residual of the planar predictor left + up - up_left, per band (zero outside the image)."""
    return np.diff(np.diff(a, axis=1, prepend=0), axis=2, prepend=0)


def encode_dn(dn: np.ndarray, step: int = 1) -> tuple[bytes, list[int], list[int]]:
    """(LZMA bytes, reference band per band or -1, gain numerator per band) of a (bands, H, W) DN array."""
    q = np.rint(dn.astype(np.float64) / step).astype(np.int64) if step > 1 else dn.astype(np.int64)
    p = _planar(q)
    out = p.copy()
    refs, gains = [-1] * len(p), [0] * len(p)
    for b in range(1, len(p)):
        best = np.abs(p[b]).mean()
        for r in range(b):  # the earlier band whose scaled residual predicts this one best
            den = float((p[r] * p[r]).sum())
            if den == 0:
                continue
            g = int(round(float((p[b] * p[r]).sum()) / den * (1 << GAIN_BITS)))
            res = p[b] - np.rint(g * p[r] / (1 << GAIN_BITS)).astype(np.int64)
            cost = np.abs(res).mean()
            if cost < best:
                best, refs[b], gains[b], out[b] = cost, r, g, res
    if np.abs(out).max() >= 1 << 31:
        raise ValueError("Expected prediction residuals within 31 bits. Got larger ones instead.")
    planes = np.ascontiguousarray(_zigzag(out).view(np.uint8).reshape(-1, 4).T)
    return lzma.compress(planes.tobytes(), preset=9), refs, gains


def decode_dn(blob: bytes, shape: tuple[int, ...], refs: list[int], gains: list[int], step: int = 1) -> np.ndarray:
    planes = np.frombuffer(lzma.decompress(blob), np.uint8).reshape(4, -1)
    p = _unzigzag(np.ascontiguousarray(planes.T).view(np.uint32).reshape(shape))
    for b, (r, g) in enumerate(zip(refs, gains)):
        if r >= 0:
            p[b] += np.rint(g * p[r] / (1 << GAIN_BITS)).astype(np.int64)
    q = np.cumsum(np.cumsum(p, axis=1), axis=2)
    return np.minimum(q * step, 65535).astype(np.uint16)  # rounding may reach 65536


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def write(path: Path, entries: list[Entry], train_step: int = 1) -> None:
    """Write ``entries`` to ``path`` atomically; ``train_step`` > 1 rounds the training images only."""
    index, arrays = [], {}
    for i, e in enumerate(entries):
        dn = np.ascontiguousarray(e.dn, dtype=np.uint16)
        step = train_step if e.role == "train" else 1
        blob, refs, gains = encode_dn(dn, step)
        decoded = decode_dn(blob, dn.shape, refs, gains, step)  # what readers will get, checked by its hash
        index.append({"name": e.name, "place": e.place, "role": e.role, "shape": list(dn.shape), "step": step,
                      "refs": refs, "gains": gains, "sha256": sha256(decoded)})
        arrays[f"blob_{i:04d}"] = np.frombuffer(blob, np.uint8)
        if step == 1 and not np.array_equal(decoded, dn):
            raise AssertionError(f"Expected {e.name} to decode to its own DN. Got other values instead.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, format=np.array(FORMAT), index=np.array(json.dumps(index)), **arrays)
    tmp.replace(path)


def read(path: Path, roles: tuple[str, ...] = ("train", "val", "ood")) -> list[Entry]:
    """The entries of ``path`` whose role is in ``roles`` (the others are not decoded)."""
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"]) != FORMAT:
            raise ValueError(f"Expected a {FORMAT} file. Got {path} without that format tag instead.")
        entries = []
        for i, item in enumerate(json.loads(str(z["index"]))):
            if item["role"] not in roles:
                continue
            dn = decode_dn(z[f"blob_{i:04d}"].tobytes(), tuple(item["shape"]), item["refs"], item["gains"],
                           item["step"])
            if sha256(dn) != item["sha256"]:
                raise ValueError(f"Expected {item['name']} in {path} to match its sha256. Got other pixels instead.")
            entries.append(Entry(item["name"], item["place"], item["role"], dn))
    return entries
