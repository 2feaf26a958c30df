"""The small real Sentinel-2 sample shipped with the package (see README.md here for source and licence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bands import S2_L2A_BANDS

SAMPLE_FILE = Path(__file__).resolve().parent / "s2l2a_0173706.npz"
ATTRIBUTION = (
    "SSL4EO-S12 v1.1 (CC-BY-4.0), patch 0173706; contains modified Copernicus Sentinel data 2020-2021"
)


def load_array() -> np.ndarray:
    """uint16 DN, shape (time=4, band=12, y=264, x=264)."""
    with np.load(SAMPLE_FILE) as f:
        return f["reflectance"]


def load_dataset():
    """The sample as an xarray Dataset with variable ``reflectance`` (time, band, y, x), uint16, nodata 0."""
    import pandas as pd
    import xarray as xr

    with np.load(SAMPLE_FILE) as f:
        refl, times, x, y, epsg = f["reflectance"], f["time"], f["x"], f["y"], int(f["epsg"])
        tile = str(f["mgrs_tile"])
    ds = xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), refl, {"units": "reflectance x 10000", "nodata": 0})},
        coords={"time": pd.to_datetime(times), "band": np.array(S2_L2A_BANDS, dtype=object), "x": x, "y": y},
        attrs={"crs": f"EPSG:{epsg}", "mgrs_tile": tile, "source": ATTRIBUTION},
    )
    return ds
