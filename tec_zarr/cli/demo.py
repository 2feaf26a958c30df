"""The main job on the bundled real sample: Sentinel-2 cube -> Zarr (formats 2 and 3) with TEC and with
JPEG 2000 at comparable quality -> read back with xarray -> size, ratio, PSNR, max error, time.

JPEG 2000 (imagecodecs, one codestream per band and date) is set to the lowest level whose PSNR reaches TEC's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics, sample
from ..codec.encoding import zarr_encoding
from ..models import get_card


@dataclass
class Row:
    codec: str
    zarr_format: int
    nbytes: int
    write_s: float
    read_s: float
    psnr: float
    max_error: float


def store_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _chunk_bytes(path: Path, var: str) -> int:
    """Bytes of the variable's chunks only (metadata and coordinates excluded)."""
    root = Path(path) / var
    meta = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and f.name not in meta)


# As benchmarks/baselines.py codes JPEG 2000: the bare codestream (no JP2 boxes) and the irreversible 9/7 wavelet.
JPEG2K_SETTINGS = {"codecformat": "j2k", "reversible": False}


def _jpeg2k_level(cube: np.ndarray, target_psnr: float) -> int:
    """Lowest imagecodecs level (an OpenJPEG PSNR target) whose per-band decode reaches ``target_psnr``."""
    import imagecodecs

    images = cube.reshape((-1,) + cube.shape[-3:])

    def reaches(level: int) -> bool:
        dec = np.stack([[imagecodecs.jpeg2k_decode(imagecodecs.jpeg2k_encode(b, level=level, **JPEG2K_SETTINGS))
                         for b in im] for im in images])
        return metrics.mean_psnr(images, dec) >= target_psnr

    lo, hi = 20, 100  # PSNR rises with the level: bisect for the lowest one that reaches the target
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid + 1, hi)
    return lo


def _jpeg2k_codec(level: int, zarr_format: int):
    from imagecodecs.numcodecs import Jpeg2k, register_codecs

    register_codecs(codecs=["imagecodecs_jpeg2k"], verbose=False)
    if zarr_format == 2:
        return Jpeg2k(level=level, **JPEG2K_SETTINGS)
    # imagecodecs ships no zarr 3 codec: wrap its numcodecs codec the way zarr wraps numcodecs' own.
    from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec
    from zarr.registry import register_codec

    class Jpeg2kZarr3(_NumcodecsArrayBytesCodec, codec_name="imagecodecs_jpeg2k"):
        pass

    register_codec(Jpeg2kZarr3.codec_name, Jpeg2kZarr3)
    return Jpeg2kZarr3(level=level, **JPEG2K_SETTINGS)


def _write_read(ds, path: Path, zarr_format: int, encoding: dict) -> tuple[float, float, np.ndarray]:
    import xarray as xr

    t0 = time.perf_counter()
    ds.to_zarr(path, mode="w", zarr_format=zarr_format, encoding=encoding, consolidated=False)
    t1 = time.perf_counter()
    back = xr.open_zarr(path, consolidated=False)["reflectance"].values
    return t1 - t0, time.perf_counter() - t1, back


def run(quality: int | None = None, workdir: Path | None = None, keep: bool = False) -> list[Row]:
    ds = sample.load_dataset()
    cube = ds["reflectance"].values
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tec-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    try:
        for fmt in (2, 3):
            enc = zarr_encoding(ds, zarr_format=fmt, chunks={"time": 1}, quality=quality)
            path = tmp / f"sample-tec-v{fmt}.zarr"
            w, r, back = _write_read(ds, path, fmt, enc)
            rows.append(Row("TEC", fmt, _chunk_bytes(path, "reflectance"), w, r,
                            metrics.mean_psnr(cube, back), metrics.max_error(cube, back)))
        level = _jpeg2k_level(cube, rows[0].psnr)
        for fmt in (2, 3):
            codec = _jpeg2k_codec(level, fmt)
            key = "compressors" if fmt == 2 else "serializer"
            enc = {"reflectance": {key: codec, "chunks": (1, 1) + cube.shape[-2:], "filters": None}}
            if fmt == 3:
                enc["reflectance"]["compressors"] = None
            path = tmp / f"sample-j2k-v{fmt}.zarr"
            w, r, back = _write_read(ds, path, fmt, enc)
            rows.append(Row(f"JPEG 2000 (level {level})", fmt, _chunk_bytes(path, "reflectance"), w, r,
                            metrics.mean_psnr(cube, back), metrics.max_error(cube, back)))
    finally:
        if not keep and workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def gdal_read(workdir: Path | None = None, quality: int | None = None) -> dict | None:
    """Write date 0 as a .tec file and read it through GDAL (rasterio + the VRT pixel function)."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return None
    from .. import gdal
    from ..gdal import raster as tecfile

    ds = sample.load_dataset()
    image = np.ascontiguousarray(ds["reflectance"].values[0])
    x, y = ds.x.values, ds.y.values
    geotransform = (x[0] - 5.0, 10.0, 0.0, y[0] + 5.0, 0.0, -10.0)
    from rasterio.crs import CRS

    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tec-demo-"))
    try:
        path = tmp / "sample-date0.tec"
        tecfile.write(path, image, crs_wkt=CRS.from_string(ds.attrs["crs"]).to_wkt(), geotransform=geotransform,
                      band_names=list(ds.band.values), nodata=0, tile=128, quality=quality, overviews=(1,))
        t0 = time.perf_counter()
        with gdal.open(path) as src:
            via_gdal = src.read()
            crs = str(src.crs)
        seconds = time.perf_counter() - t0
        with tecfile.open(path) as f:
            direct = f.read()
        return {"bytes": path.stat().st_size, "seconds": seconds, "crs": crs, "identical": bool(np.array_equal(via_gdal, direct)),
                "psnr": metrics.psnr(image, via_gdal), "shape": via_gdal.shape}
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def format_table(rows: list[Row], raw_bytes: int, pixels: int) -> str:
    head = f"{'codec':<24} {'zarr':>4} {'bytes':>10} {'ratio':>7} {'bpp':>7} {'PSNR dB':>8} {'max err':>8} {'write s':>8} {'read s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.codec:<24} {'v' + str(r.zarr_format):>4} {r.nbytes:>10,} {raw_bytes / r.nbytes:>7.1f} "
            f"{r.nbytes * 8 / pixels:>7.3f} {r.psnr:>8.2f} {r.max_error:>8.0f} {r.write_s:>8.2f} {r.read_s:>7.2f}"
        )
    return "\n".join(lines)


def main(quality: int | None = None) -> int:
    ds = sample.load_dataset()
    cube = ds["reflectance"]
    card = get_card("tec-fp")
    q = card.default_quality if quality is None else quality
    print(f"Sample: {sample.ATTRIBUTION}")
    print(f"        {dict(cube.sizes)} uint16, {cube.nbytes:,} bytes raw; never seen in training")
    print(f"Model:  {card.name} v{card.version} (sha256 {card.sha256[:12]}...), quality {q}\n")
    with warnings.catch_warnings():  # "numcodecs codecs are not in the Zarr 3 spec": known, J2K is the baseline
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
        rows = run(quality=q)
    pixels = cube.sizes["time"] * cube.sizes["y"] * cube.sizes["x"]
    print(format_table(rows, cube.nbytes, pixels))
    tec, j2k = rows[0], rows[2]
    ratio = j2k.nbytes / tec.nbytes
    verdict = f"{ratio:.2f}x smaller than" if ratio >= 1 else f"{1 / ratio:.2f}x LARGER than"
    print(f"\nTEC store is {verdict} per-band JPEG 2000 at PSNR {tec.psnr:.2f} vs {j2k.psnr:.2f} dB "
          "(metric: 10 log10(10000^2/MSE) per image, clipped to [0, 10000]).")
    print("bpp: bits per pixel for all 12 bands; bytes: chunk bytes of the variable, Zarr metadata excluded.")
    g = gdal_read(quality=q)
    if g is None:
        print("\nGDAL: skipped (rasterio not installed; pip install 'tec-zarr[gdal]').")
    else:
        print(f"\nGDAL: date 0 as a .tec file ({g['bytes']:,} bytes, {g['crs']}) read through rasterio and the VRT pixel "
              f"function in {g['seconds']:.2f} s: {g['shape']}, PSNR {g['psnr']:.2f} dB, "
              f"{'identical to' if g['identical'] else 'DIFFERENT from'} the codec's own decode.")
    return 0
