"""Build the small real Sentinel-2 sample shipped in the package (tec_zarr/sample/) from ../shared/data.

Place 0173706 (T10SFG, California, 4 dates) is one of the validation places: no shipped model trained on it.
The SSL4EO GeoTIFFs carry a dummy transform, so the 10 m UTM grid is rebuilt around index.csv's centre.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform

from tec_zarr.sample import pack_cube, unpack_cube

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "s2l2a_ssl4eo_seasonal"
PLACE = "0173706"


def main() -> int:
    rows = [r for r in csv.DictReader((DATA / "index.csv").open()) if r["sample_id"] == PLACE]
    rows.sort(key=lambda r: int(r["time_index"]))
    cube = []
    for r in rows:
        with rasterio.open(DATA / r["file"]) as src:
            cube.append(src.read())
    cube = np.stack(cube)
    if cube.min() < 0:
        raise SystemExit("expected non-negative DN")
    cube = cube.astype(np.uint16)
    epsg = int(rows[0]["utm_epsg"])
    (cx,), (cy,) = transform("EPSG:4326", f"EPSG:{epsg}", [float(rows[0]["center_lon"])], [float(rows[0]["center_lat"])])
    h, w = cube.shape[-2:]
    x0 = round(cx / 10) * 10 - w // 2 * 10
    y0 = round(cy / 10) * 10 + h // 2 * 10
    x = x0 + 5 + 10 * np.arange(w)
    y = y0 - 5 - 10 * np.arange(h)
    out = ROOT / "tec_zarr" / "sample" / f"s2l2a_{PLACE}.npz"
    np.savez(
        out, reflectance_xz=pack_cube(cube), shape=np.asarray(cube.shape), time=np.array([r["acq_time_utc"] for r in rows]), x=x, y=y, epsg=epsg,
        mgrs_tile=rows[0]["mgrs_tile"],
    )
    with np.load(out) as f:
        if not np.array_equal(unpack_cube(f["reflectance_xz"], cube.shape), cube):
            raise SystemExit("expected the packed sample to unpack to the same DN")
    print(f"wrote {out} ({out.stat().st_size} bytes), shape {cube.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
