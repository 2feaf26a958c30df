"""Shared checkers, after numcodecs' tests/common.py: every codec test goes through these."""

from __future__ import annotations

import array
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import numcodecs
import numpy as np

from tec_zarr import metrics

FIXTURES = Path(__file__).resolve().parent / "fixture"
REGENERATE = os.environ.get("TEC_ZARR_REGENERATE_GOLDEN") == "1"

# The scene of the .tec and GDAL tests: UTM zone 10N (EPSG:32610, WKT as GDAL writes it), 10 m pixels.
UTM10N_WKT = (
    'PROJCS["WGS 84 / UTM zone 10N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
    'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],'
    'UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]],'
    'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",-123],'
    'PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],'
    'UNIT["metre",1,AUTHORITY["EPSG","9001"]],AXIS["Easting",EAST],AXIS["Northing",NORTH],AUTHORITY["EPSG","32610"]]'
)
GEOTRANSFORM = (600000.0, 10.0, 0.0, 4130000.0, 0.0, -10.0)
TILE = 64

# System packages the GDAL tests need beyond the venv; the skip reasons name them (conftest.py summarizes the skips).
GDAL_CLI_MISSING = "gdalinfo is not on PATH (Debian package gdal-bin)"
QGIS_MISSING = "QGIS's Python bindings are not importable by /usr/bin/python3 (Debian package python3-qgis)"
OSGEO_MISSING = "GDAL's Python bindings (osgeo) are not importable by this interpreter"
PLUGIN_MISSING = "the GDAL plug-in cannot be built here: missing Debian packages"


def has_gdal_cli() -> bool:
    return shutil.which("gdalinfo") is not None


@functools.lru_cache(maxsize=None)
def system_python_with_qgis() -> str | None:
    """Debian's Python, which QGIS's bindings are built for (not the venv's), where it imports qgis.core."""
    python = shutil.which("python3", path="/usr/bin")
    if python is None:
        return None
    probe = subprocess.run([python, "-c", "import qgis.core"], capture_output=True)
    return python if probe.returncode == 0 else None


def has_osgeo() -> bool:
    import importlib.util

    return importlib.util.find_spec("osgeo") is not None


def check_encode_decode(codec, arr: np.ndarray, min_psnr: float) -> np.ndarray:
    """Encode once; decode from bytes, bytearray, array.array, numpy and into out=; all equal and good enough."""
    enc = codec.encode(arr)
    dec = codec.decode(enc)
    assert dec.dtype == arr.dtype and dec.shape == arr.shape
    for buf in (bytes(enc), bytearray(enc), array.array("b", bytes(enc)), np.frombuffer(enc, np.uint8)):
        np.testing.assert_array_equal(codec.decode(buf), dec)
    out = np.empty_like(arr)
    assert codec.decode(enc, out=out) is out
    np.testing.assert_array_equal(out, dec)
    scale = 1e4 if arr.dtype.kind == "f" else 1.0
    assert metrics.mean_psnr(arr, dec, scale=scale) >= min_psnr
    return dec


def assert_bound(a: np.ndarray, dec: np.ndarray, max_error: float) -> None:
    """``dec`` within ``max_error`` of ``a`` everywhere; bit-exact at 0."""
    if max_error == 0:
        np.testing.assert_array_equal(dec.view(f"u{a.itemsize}"), a.view(f"u{a.itemsize}"))
    else:
        assert np.abs(dec.astype(np.float64) - a.astype(np.float64)).max() <= max_error


def check_config(codec) -> None:
    config = codec.get_config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = numcodecs.get_codec(json.loads(json.dumps(config)))
    assert rebuilt == codec and type(rebuilt) is type(codec)


def check_repr(codec, expected: str) -> None:
    assert repr(codec) == expected
    from tec_zarr import TEC  # noqa: F401  (the name eval needs)

    assert eval(expected) == codec


def log_bpp_at(points: list[dict], psnr: float) -> float:
    """log bpp of a manifest's RD curve (its qualities' ``validation`` points) at ``psnr``, linear in log bpp."""
    s = [p["validation"]["psnr"] for p in points]
    b = [np.log(p["validation"]["bpp"]) for p in points]
    if not s[0] <= psnr <= s[-1]:
        raise AssertionError(f"{psnr} dB lies outside the curve {s}")
    return float(np.interp(psnr, s, b))


def check_golden(codec, arrays: list[np.ndarray], name: str, max_abs_error: float = 1.0) -> None:
    """Decode stored bitstreams in every run; regenerate only with TEC_ZARR_REGENERATE_GOLDEN=1.

    Symbols are exact by construction; the pixels may differ by float rounding of the decoder network between
    machines, hence a tolerance of one data unit.
    """
    d = FIXTURES / codec.codec_id / name
    if REGENERATE:
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(codec.get_config(), indent=1, sort_keys=True) + "\n")
        for i, a in enumerate(arrays):
            enc = codec.encode(a)
            (d / f"encoded.{i:02d}.dat").write_bytes(enc)
            np.save(d / f"decoded.{i:02d}.npy", codec.decode(enc))
    if not (d / "config.json").exists():
        raise AssertionError(f"missing golden fixture {d}: run with TEC_ZARR_REGENERATE_GOLDEN=1 once, and commit it")
    stored = numcodecs.get_codec(json.loads((d / "config.json").read_text()))
    assert stored == codec
    files = sorted(d.glob("encoded.*.dat"))
    assert len(files) == len(arrays)
    for i, f in enumerate(files):
        expected = np.load(d / f"decoded.{i:02d}.npy")
        got = stored.decode(f.read_bytes())
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if expected.dtype.kind == "f":  # NaN (missing) exactly where it was, the rest within the tolerance
            nan = np.isnan(expected)
            assert np.array_equal(np.isnan(got), nan)
            got, expected = np.where(nan, 0, got), np.where(nan, 0, expected)
        assert metrics.max_error(got, expected) <= max_abs_error


def check_fewer_bytes_same_pixels(image: np.ndarray, base: str, entropy_models, quality: int) -> None:
    """Each of ``entropy_models`` (on ``base``'s symbols) codes ``image`` in fewer bytes than ``base``, names itself
    in the chunk header, and decodes to ``base``'s pixels exactly."""
    from tec_zarr import pipeline

    coded_base = pipeline.encode_chunk(image, model=base, quality=quality)
    pixels = pipeline.decode_chunk(coded_base)
    for name in entropy_models:
        coded = pipeline.encode_chunk(image, model=name, quality=quality)
        assert pipeline.read_header(coded).model == name
        assert len(coded) < len(coded_base), (name, len(coded), len(coded_base))
        np.testing.assert_array_equal(pipeline.decode_chunk(coded), pixels)


def check_model_goldens(model: str, cube: np.ndarray) -> None:
    """A shipped model's two golden chunks, ``{model}-q2`` and ``{model}-q4-e3``: quality 2 on a 48 x 40 crop of
    the sample's second date, and quality 4 bounded to 3 DN on a 64 x 48 crop of its third (pixels exact)."""
    from tec_zarr import TEC

    check_golden(TEC(model=model, quality=2), [np.ascontiguousarray(cube[1, :, :48, :40])], f"{model}-q2")
    check_golden(TEC(model=model, quality=4, max_error=3), [np.ascontiguousarray(cube[2, :, 8:72, 16:64])],
                 f"{model}-q4-e3", max_abs_error=0)


def shuffled_matmul(seed: int):
    """A matmul summing in another order: a permuted inner axis, in uneven blocks, accumulated backwards."""
    rng = np.random.default_rng(seed)

    def matmul(x, w):
        perm = rng.permutation(x.shape[1])
        cuts = np.sort(rng.choice(np.arange(1, x.shape[1]), size=min(3, x.shape[1] - 1), replace=False))
        parts = [x[:, p] @ w[p] for p in np.split(perm, cuts)]
        out = np.zeros((x.shape[0], w.shape[1]))
        for part in reversed(parts):
            out += part
        return out

    return matmul


def copy_model(name: str, root: Path, new_name: str) -> Path:
    """A copy of an installed model as ``root/new_name``, every file in its own folder (files shared in the package's
    ``blobs/`` are copied too, resolved through the registry), its manifest renamed. Returns the folder."""
    from tec_zarr import models
    from tec_zarr.models.card import MANIFEST
    from tec_zarr.models.registry import file_path

    card = models.get_card(name)
    dst = Path(root) / new_name
    dst.mkdir(parents=True)
    for filename in card.files:
        shutil.copyfile(file_path(card, filename), dst / filename)
    manifest = json.loads((card.folder / MANIFEST).read_text())
    manifest["name"] = new_name
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def golden_chunks() -> list[Path]:
    """Every stored golden chunk coded whole (tests/fixture/tec_zarr.tec/<name>/encoded.NN.dat); chunks in parts
    (version 5) frame whole chunks of the same coders and are decoded by their own golden test."""
    from tec_zarr.bitstream.parts import is_parts

    return sorted(f for f in (FIXTURES / "tec_zarr.tec").glob("*/encoded.*.dat") if not is_parts(f.read_bytes()))


def corrupt_tile(src: Path, dst: Path, level: int, ty: int, tx: int) -> Path:
    """A copy of the .tec file ``src`` at ``dst`` with one byte flipped in the middle of a tile (index untouched)."""
    from tec_zarr import tecfile

    with tecfile.open(src) as f:
        offset, length, _ = f.tile_entry(level, ty, tx)
    data = bytearray(Path(src).read_bytes())
    data[offset + length // 2] ^= 0xFF
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def golden_skip(data: bytes):
    """The latents a golden chunk's encoder left out (version 4), None for older chunks."""
    from tec_zarr.bitstream.chunk import unpack_mask, unpack_sections
    from tec_zarr.models import load_model
    from tec_zarr.pipeline.decode import skipped_latents

    s = unpack_sections(data)
    h = s.header
    shape = (h.batch,) + tuple(h.shape[-3:])
    mask = unpack_mask(s.mask, shape) if s.mask is not None else None
    nan = unpack_mask(s.nan_mask, shape) if s.nan_mask is not None else None
    saturated = unpack_mask(h.saturated, shape) if h.saturated is not None else None
    return skipped_latents(h, load_model(h.model).latent_stride, mask, nan, saturated)


def golden_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


# A headless QGIS reading a raster layer (argv[1]) into a .npy (argv[2]); prints validity, CRS, band 12's name,
# the origin, the data source and whether the TEC driver names itself: "|"-separated.
QGIS_READER = """
import sys
import numpy as np
from qgis.core import QgsApplication, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
layer = QgsRasterLayer(sys.argv[1], "tec")
provider = layer.dataProvider()
rows = []
for band in range(1, layer.bandCount() + 1):
    block = provider.block(band, layer.extent(), layer.width(), layer.height())
    rows.append([[block.value(r, c) for c in range(layer.width())] for r in range(layer.height())])
np.save(sys.argv[2], np.array(rows))
print(layer.isValid(), layer.crs().authid(), layer.bandName(12), layer.extent().xMinimum(), layer.extent().yMaximum(),
      provider.dataSourceUri(), "TEC learned-compression" in provider.htmlMetadata(), sep="|")
del block, provider, layer  # PyQGIS crashes at exit while layers are still referenced
app.exitQgis()
"""


def seasonal_layout(root: Path, cube: np.ndarray) -> Path:
    """The bundled sample laid out like shared/data under ``root``: two dates as the training place 0080717 (one of
    tec-fp's), two as the first validation place; int16 GeoTIFFs as the SSL4EO-S12 seasonal files are."""
    import rasterio

    from tec_zarr.train import data

    folder = Path(root) / data.SEASONAL
    folder.mkdir(parents=True)
    for t, place in enumerate(["0080717", "0080717", data.VALIDATION_PLACES[0], data.VALIDATION_PLACES[0]]):
        with rasterio.open(folder / f"ssl4eos12_val_{place}_{t}.tif", "w", driver="GTiff", width=cube.shape[3],
                           height=cube.shape[2], count=12, dtype="int16") as dst:
            dst.write(cube[t].astype(np.int16))
    return Path(root)
