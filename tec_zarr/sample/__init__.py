"""The small real Sentinel-2 sample shipped with the package (see README.md here for source and licence)."""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np

from ..bands import S2_L2A_BANDS

SAMPLE_FILE = Path(__file__).resolve().parent / "s2l2a_0173706.npz"
ATTRIBUTION = (
    "SSL4EO-S12 v1.1 (CC-BY-4.0), patch 0173706; contains modified Copernicus Sentinel data 2020-2021"
)


def pack_cube(cube: np.ndarray) -> np.ndarray:
    """uint16 (..., W) -> uint8 bytes: differences along x (mod 2**16), low and high byte planes, xz. About a third
    smaller than zlib on the raw DN, so the package (wheel) stays small."""
    diff = cube.astype(np.uint16, copy=True)
    diff[..., 1:] -= cube[..., :-1]
    planes = diff.reshape(-1).view(np.uint8).reshape(-1, 2).T  # little-endian: row 0 low bytes, row 1 high
    return np.frombuffer(lzma.compress(np.ascontiguousarray(planes).tobytes(), preset=9 | lzma.PRESET_EXTREME), np.uint8)


def unpack_cube(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    planes = np.frombuffer(lzma.decompress(data.tobytes()), np.uint8).reshape(2, -1)
    diff = np.ascontiguousarray(planes.T).view("<u2").reshape(shape)
    return np.cumsum(diff, axis=-1, dtype=np.uint16)  # wraps mod 2**16, undoing the differences exactly


def _reflectance(f) -> np.ndarray:
    return unpack_cube(f["reflectance_xz"], tuple(int(n) for n in f["shape"]))


def load_array() -> np.ndarray:
    """uint16 DN, shape (time=4, band=12, y=264, x=264)."""
    with np.load(SAMPLE_FILE) as f:
        return _reflectance(f)


def load_dataset():
    """The sample as an xarray Dataset with variable ``reflectance`` (time, band, y, x), uint16, nodata 0."""
    import pandas as pd
    import xarray as xr

    with np.load(SAMPLE_FILE) as f:
        refl, times, x, y, epsg = _reflectance(f), f["time"], f["x"], f["y"], int(f["epsg"])
        tile = str(f["mgrs_tile"])
    ds = xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), refl, {"units": "reflectance x 10000", "nodata": 0})},
        coords={"time": pd.to_datetime(times), "band": np.array(S2_L2A_BANDS, dtype=object), "x": x, "y": y},
        attrs={"crs": f"EPSG:{epsg}", "mgrs_tile": tile, "source": ATTRIBUTION},
    )
    return ds
