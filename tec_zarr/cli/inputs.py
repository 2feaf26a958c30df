"""What the ``tec`` commands read and write: the kind of a path (GeoTIFF, Zarr store, NetCDF, ``.tec``), checks
that an input exists and an output may be written, and inputs opened as xarray Datasets (a GeoTIFF read a chunk at
a time through dask where dask is installed)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path

from ..gdal.vrt import TRUSTED_MODULE
from ..parsing import nodata_allowed
from .failures import CommandError

GEOTIFF, ZARR, NETCDF, TEC = "GeoTIFF", "Zarr store", "NetCDF file", ".tec file"
SIDECAR = ".tec file's VRT sidecar"
SUFFIXES = {".tif": GEOTIFF, ".tiff": GEOTIFF, ".zarr": ZARR, ".nc": NETCDF, ".nc4": NETCDF, ".netcdf": NETCDF,
            ".tec": TEC}
_MAGIC = ((b"TECF", TEC), (b"II*\0", GEOTIFF), (b"MM\0*", GEOTIFF), (b"II+\0", GEOTIFF), (b"MM\0+", GEOTIFF),
          (b"CDF", NETCDF), (b"\x89HDF", NETCDF))
_ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray")
# A GDAL VRT: its root element, after an optional byte-order mark, XML declaration and comments.
_VRT = re.compile(rb"(\xef\xbb\xbf)?\s*(<\?xml[^>]*\?>\s*)?(<!--.*?-->\s*)*<VRTDataset[\s>]", re.S)


def kind(path) -> str | None:
    """What ``path`` holds, by its content where it exists (a directory with Zarr metadata, a file's magic bytes),
    else by its suffix; None when neither says."""
    p = Path(path)
    if p.is_dir():
        return ZARR if any((p / name).is_file() for name in _ZARR_METADATA) else None
    if p.is_file():
        try:
            with p.open("rb") as f:
                head = f.read(1 << 16)
        except OSError:
            head = b""
        for magic, found in _MAGIC:
            if head.startswith(magic):
                return found
        if _VRT.match(head):
            # A GDAL VRT (gdalbuildvrt -separate of a SAFE's band files) is read like a GeoTIFF, through rasterio;
            # a .tec file's own sidecar is not a source to compress.
            return SIDECAR if TRUSTED_MODULE.encode() in head else GEOTIFF
    return SUFFIXES.get(p.suffix.lower())


def output_kind(path) -> str | None:
    """What an output path asks for, by its suffix alone."""
    return SUFFIXES.get(Path(path).suffix.lower())


def require_input(path, accepted: tuple[str, ...], command: str, *, then_output: bool = True) -> str:
    """The kind of an existing input among ``accepted``, or a :class:`CommandError` naming the fix."""
    p = Path(path)
    if not p.exists():
        order = f" (tec {command} takes the input first, then the output)" if then_output else ""
        what = SUFFIXES.get(p.suffix.lower(), "input")
        raise CommandError(f"Expected a readable {what} at {path}. Got no such file or directory instead: check the "
                           f"path{order}.")
    found = kind(p)
    if found in accepted:
        return found
    wanted = " or ".join(f"a {k}" for k in accepted)
    if found is None:
        what = "a directory without Zarr metadata (zarr.json, .zgroup)" if p.is_dir() else "a file of unknown type"
    elif found == SIDECAR:
        raise CommandError(f"Expected {wanted} for tec {command}. Got {path}, the VRT sidecar GDAL reads a .tec file "
                           f"through, instead: give the .tec file itself ({p.with_suffix('')}).")
    else:
        what = f"a {found}"
    hint = {
        (GEOTIFF, "info"): f": tec compress {path} scene.zarr (or scene.tec) compresses it; gdalinfo describes it",
        (GEOTIFF, "decompress"): ": it is not compressed by TEC; tec compress compresses it",
        (GEOTIFF, "to-vrt"): ": GDAL opens it directly",
        (GEOTIFF, "convert"): f": convert copies TEC chunks without encoding; tec compress {path} scene.tec encodes it",
        (ZARR, "compress"): f": a .tec output is made from a GeoTIFF; tec convert {path} scene.tec copies a TEC "
                            "store's chunks into one",
    }.get((found, command), "")
    raise CommandError(f"Expected {wanted} for tec {command}. Got {what}, {path}, instead{hint}.")


def require_output(path, *, overwrite: bool, inputs=()) -> None:
    """Refuses to write over an input, over an existing path without ``--overwrite``, and, even with it, over a
    directory that is not a Zarr store (replacing a Zarr store deletes its contents)."""
    p = Path(path)
    for source in inputs:
        if not Path(source).exists():
            continue
        src, dst = Path(source).resolve(), p.resolve()
        if dst == src:
            raise CommandError(f"Expected an output other than the input. Got {path} for both instead: choose "
                               "another output name.")
        if src.is_relative_to(dst):  # replacing the output would delete the input inside it
            raise CommandError(f"Expected an output that does not contain the input. Got {path}, which holds the "
                               f"input {source}, instead: choose an output outside it.")
        if dst.is_relative_to(src):
            raise CommandError(f"Expected an output outside the input. Got {path}, inside the input {source}, "
                               "instead: choose an output outside it.")
    if not (p.exists() or p.is_symlink()):
        return
    if not overwrite:
        raise CommandError(f"Expected a new output path. Got {path}, which exists, instead: pass --overwrite to "
                           "replace it, or choose another name.")
    wanted = output_kind(p)
    if p.is_dir() and (wanted != ZARR or kind(p) != ZARR):
        raise CommandError(f"Expected --overwrite to replace a {wanted or 'file'}. Got {path}, a directory that is "
                           "not a Zarr store, instead: not deleting it; remove it yourself or choose another name.")
    if not p.is_dir() and wanted == ZARR:
        raise CommandError(f"Expected --overwrite to replace a Zarr store. Got {path}, a file, instead: not "
                           "deleting it; remove it yourself or choose another name.")


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary sibling of ``path`` (``NAME.tmp-<random>``, same directory) to write the output into.

    On success the temporary takes the output's name; an existing output is renamed aside first and removed only
    once the new one is in place. On any failure, Ctrl-C included, the temporary is removed and an existing output
    is left as it was: no half-written store or file ever carries the output's name."""
    final = Path(path)
    tag = secrets.token_hex(4)
    tmp = final.with_name(f"{final.name}.tmp-{tag}")
    try:
        yield str(tmp)
        if not (tmp.exists() or tmp.is_symlink()):
            raise CommandError(f"Expected an output written to {tmp}. Got nothing there instead: nothing was "
                               "replaced.")
        if final.exists() or final.is_symlink():
            old = final.with_name(f"{final.name}.old-{tag}")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            _remove(old)
        else:
            os.replace(tmp, final)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def check_nodata(value, dtype, what: str = "--nodata") -> None:
    """Refuses a nodata value the data's dtype cannot hold (an integer dtype's range, a finite float32)."""
    if value is None or value == "none":
        return
    allowed = nodata_allowed(value, dtype)
    if allowed is not None:
        raise CommandError(f"Expected {what} {allowed} for {dtype} data. Got {value} instead: give a value in that "
                           "range.")


# -- inputs as xarray Datasets ---------------------------------------------------------------------------------------


def open_dataset(path: str, found: str, variable: str | None, chunk: int):
    """GeoTIFF, Zarr or NetCDF -> (xarray Dataset, name of the variable to compress)."""
    import xarray as xr

    from ..bands import S2_L2A_BANDS

    if found == GEOTIFF:
        ds = read_geotiff(Path(path), variable or "reflectance", chunk)
    elif found == ZARR:
        with warnings.catch_warnings():  # a store without consolidated metadata opens as well, a little slower
            warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated metadata")
            ds = xr.open_zarr(path, mask_and_scale=False)
    else:  # the stored integers as they are: CF masking would turn a uint16 variable with _FillValue into float32
        ds = xr.open_dataset(path, mask_and_scale=False)
    if variable is None:  # by shape: dask chunks splitting the band axis are rechunked later
        candidates = [name for name, v in ds.data_vars.items() if v.ndim >= 3 and v.shape[-3] == len(S2_L2A_BANDS)]
        if not candidates:  # a cube with bands beside the model's (a STAC cube's scl, aot...): say which
            for name, v in ds.data_vars.items():
                if v.ndim >= 3:
                    in_model_order(ds, name, path)
        if len(candidates) != 1:
            raise CommandError(f"Expected one 12-band variable in {path}, or --var NAME. Got {candidates} instead.")
        variable = candidates[0]
    if variable not in ds:
        raise CommandError(f"Expected variable {variable!r} in {path}. Got {list(ds.data_vars)} instead: pass one "
                           "of them with --var.")
    return in_model_order(ds, variable, path), variable


def in_model_order(ds, variable: str, path: str):
    """``ds`` with ``variable``'s bands in the model's order where they are named (a band coordinate, or
    rioxarray's descriptions), as GeoTIFF bands are put; a CommandError naming the bands that are missing, repeated
    or beside the model's."""
    from ..bands import S2_L2A_BANDS
    from ..codec.encoding import named_band_order
    from ..errors import InvalidInputError

    var = ds[variable]
    try:
        order = named_band_order(var, S2_L2A_BANDS, f"variable {variable!r} of {path}")
    except InvalidInputError as e:
        raise CommandError(str(e)) from None
    if order is None or order == list(range(len(order))):
        return ds
    reordered = ds.isel({var.dims[-3]: order})
    described = var.attrs.get("long_name")
    if isinstance(described, (list, tuple)) and len(described) == len(order):  # descriptions follow their bands
        reordered[variable].attrs["long_name"] = tuple(described[i] for i in order)
    return reordered


def read_geotiff(path: Path, name: str, chunk: int):
    """A 12-band GeoTIFF as a Dataset with CF georeferencing, bands in the model's order; a dask array reading
    (12, chunk, chunk) windows where dask is installed, else the whole raster. The variable's ``nodata``
    attribute is the file's NoData, absent where the file declares none; its bands' scale and offset are CF
    ``scale_factor`` / ``add_offset`` (``band_scales`` / ``band_offsets`` where they differ between bands)."""
    import numpy as np
    import rasterio
    import xarray as xr

    from ..bands import S2_L2A_BANDS, band_order
    from ..errors import InvalidInputError
    from ..gdal.convert import GRID_MAPPING, band_radiometry, grid_mapping_attrs
    from ..radiometry import to_attrs

    with rasterio.open(path) as src:
        t = src.transform
        # Bands named in the file are checked and put in the model's order; unnamed ones are taken as that order.
        try:
            order = band_order(src.descriptions, S2_L2A_BANDS, source=str(path))
        except InvalidInputError as e:
            raise CommandError(str(e)) from None
        if order is None and src.count != len(S2_L2A_BANDS):
            raise CommandError(f"Expected {len(S2_L2A_BANDS)} bands {' '.join(S2_L2A_BANDS)} in {path}. "
                               f"Got {src.count} unnamed bands instead.")
        indexes = [i + 1 for i in order] if order is not None else list(range(1, src.count + 1))
        shape, dtype = (len(indexes), src.height, src.width), np.dtype(src.dtypes[indexes[0] - 1])
        x = t.c + t.a * (np.arange(src.width) + 0.5)
        y = t.f + t.e * (np.arange(src.height) + 0.5)
        wkt = src.crs.to_wkt() if src.crs else ""
        nodata = src.nodata
        radiometry = band_radiometry(src, indexes)
        try:
            import dask.array as da
        except ImportError:
            data = src.read(indexes)
        else:
            data = da.from_array(_GeoTiffWindows(str(path), indexes, shape, dtype), chunks=(shape[0], chunk, chunk),
                                 lock=False, asarray=True, meta=np.empty((0, 0, 0), dtype), name=False)
    # CF georeferencing: a grid-mapping variable that rioxarray (.rio.crs) and odc-geo read.
    # The bands' scale and offset (Sentinel-2 from baseline 04.00: 0.0001 and -0.1) as CF attributes: xarray and
    # rioxarray then read reflectance from the store as they did from the GeoTIFF.
    var_attrs = {"grid_mapping": GRID_MAPPING}
    if nodata is not None:
        var_attrs["nodata"] = int(nodata) if float(nodata).is_integer() else float(nodata)
    var_attrs.update(to_attrs(radiometry, var_attrs.get("nodata")))
    # An identity transform is GDAL's "no georeferencing" (as geotiff_to_tec, none is stored then).
    geotransform = None if t.is_identity else list(t.to_gdal())
    spatial_ref = xr.DataArray(np.int64(0), attrs=grid_mapping_attrs(wkt or None, geotransform))
    attrs = {"crs": wkt} if geotransform is None else {"crs": wkt, "geotransform": geotransform}
    return xr.Dataset({name: (("band", "y", "x"), data, var_attrs)},
                      coords={"band": np.array(S2_L2A_BANDS, dtype=object), "y": y, "x": x, GRID_MAPPING: spatial_ref},
                      attrs=attrs)


class _GeoTiffWindows:
    """Array-like (bands, H, W) view of a GeoTIFF for ``dask.array.from_array``: each block opens the file and
    reads its window (no handle is shared between threads or pickled)."""

    ndim = 3

    def __init__(self, path: str, indexes: list[int], shape: tuple[int, int, int], dtype):
        self.path, self.indexes, self.shape, self.dtype = path, indexes, shape, dtype

    def __getitem__(self, key):
        import rasterio
        from rasterio.windows import Window

        b, y, x = (range(*k.indices(n)) for k, n in zip(key, self.shape))
        with rasterio.open(self.path) as src:
            return src.read([self.indexes[i] for i in b], window=Window(x.start, y.start, len(x), len(y)))


def chunk_count(shape: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    return math.prod(-(-n // c) for n, c in zip(shape, chunks))
