"""Every way a ``tec`` command can fail, as the one line it prints: ``tec: error: <cause>; <fix>``.

The package's own errors (:class:`~tec_zarr.errors.TecZarrError`) already name what was expected and what came;
here the rest is translated: a dependency of an extra that is not installed, a file that cannot be opened or
written, a GDAL read error, Zarr metadata the installed zarr or tec-zarr cannot parse. Anything else is a bug:
its line says so, and ``TEC_ZARR_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import os

from ..errors import TecZarrError

DEBUG_VARIABLE = "TEC_ZARR_DEBUG"

# The optional dependencies a command may import, and the extra of pyproject.toml that installs each.
EXTRAS = {
    "rasterio": ("GeoTIFF input and output", "io"),
    "netCDF4": ("NetCDF input", "io"),
    "h5netcdf": ("NetCDF input", "io"),
    "dask": ("progress and chunked writes", "io"),
    "imagecodecs": ("the JPEG 2000 baseline of the demo", "bench"),
    "distributed": ("dask.distributed", "distributed"),
    "torch": ("checkpoint import and training", "train"),
    "onnx": ("exporting models", "train"),
}


class CommandError(TecZarrError):
    """A command line that cannot work as given (a missing input, an existing output, an option that does
    nothing for the chosen format); the message names the fix."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def message(exc: BaseException, command: str) -> str:
    """The ``tec: error:`` line for ``exc`` raised by ``tec <command>``."""
    if isinstance(exc, TecZarrError):
        return one_line(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in EXTRAS:
            what, extra = EXTRAS[top]
            return f"tec {command} needs {top} ({what}), which is not installed: pip install 'tec-zarr[{extra}]'."
        return (f"tec {command} needs the Python module {exc.name}, which is not installed: reinstall tec-zarr "
                "(pip install tec-zarr) into this environment.")
    rasterio_error = _rasterio_error(exc)
    if rasterio_error:
        return rasterio_error
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or one_line(exc)}: no such file or directory; check the path."
    if isinstance(exc, PermissionError):
        return f"{exc.filename or one_line(exc)}: permission denied; choose a path you can write, or fix its permissions."
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{one_line(exc.strerror or exc)}; check the path and the free disk space."
    return (f"unexpected {type(exc).__name__}: {one_line(exc)} (a bug in tec-zarr: please report it; "
            f"{DEBUG_VARIABLE}=1 shows the traceback).")


def _rasterio_error(exc: BaseException) -> str | None:
    module = type(exc).__module__ or ""
    if not module.startswith("rasterio"):
        return None
    return (f"GDAL cannot read or write it: {one_line(exc)}; check that the path is a GeoTIFF (or another raster "
            "GDAL reads) and that its folder is writable.")


def debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
