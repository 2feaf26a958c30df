"""Open ``.tec`` files through GDAL: rasterio (:func:`open`), osgeo (:func:`open_osgeo`), or the GDAL command line
and QGIS (:func:`gdal_environment`). Thin, like a rioxarray plug-in: the sidecar is :mod:`.vrt`, the pixel
function :mod:`.pixelfunction` (which GDAL imports as the trusted module ``gdal_driver.pixelfunction``).
"""

from __future__ import annotations

import os
import sysconfig
import threading
from pathlib import Path

from ..errors import TecZarrError
from ..bitstream.tecfile import TecTiles
from .vrt import TRUSTED_MODULE, vrt_xml, write_sidecar


def config_options() -> dict[str, str]:
    """GDAL config options that let VRTs run the trusted pixel function (and nothing else)."""
    return {"GDAL_VRT_ENABLE_PYTHON": "TRUSTED_MODULES", "GDAL_VRT_PYTHON_TRUSTED_MODULES": TRUSTED_MODULE}


def libpython() -> str | None:
    """The shared libpython GDAL must load when it runs outside a Python process (None: a static build)."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    for name in (sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LDLIBRARY")):
        if name and (Path(libdir) / name).is_file() and not name.endswith(".a"):
            return str(Path(libdir) / name)
    return None


def gdal_environment() -> dict[str, str]:
    """Environment variables a GDAL command-line or QGIS user needs to read ``.tec.vrt`` sidecars."""
    # The embedded interpreter needs this package (and gdal_driver beside it) and their dependencies.
    paths = [str(Path(__file__).resolve().parents[2])]
    paths += [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **config_options()}
    so = libpython()
    if so:
        env["PYTHONSO"] = so
    return env


def export_lines() -> str:
    """``export NAME=value`` lines for a POSIX shell."""
    import shlex

    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in gdal_environment().items())


def sidecar(path) -> Path:
    """Write or refresh ``path + ".vrt"`` and return its path."""
    return write_sidecar(path)


# The options are set process-wide, once: rasterio.Env sets them for its own thread only, so datasets opened or
# read in other threads (a tile server, a thread pool reading windows) failed, and a read without them leaves the
# band returning zeros afterwards. They enable Python only in the trusted module, beside any the user trusts.
_options_lock = threading.Lock()


def _enable_pixel_function() -> None:
    from rasterio.env import get_gdal_config, set_gdal_config

    with _options_lock:
        enabled = get_gdal_config("GDAL_VRT_ENABLE_PYTHON")  # rasterio reads YES back as True, NO as False
        if enabled is False or str(enabled).upper() in ("NO", "OFF", "FALSE"):
            raise TecZarrError("Expected GDAL to run the trusted pixel function of .tec sidecars. Got "
                               "GDAL_VRT_ENABLE_PYTHON=NO set for this process instead: unset it to read .tec files "
                               "through GDAL (only gdal_driver.pixelfunction is trusted, process-wide), or read them "
                               "without GDAL: tec_zarr.tecfile.open(path).read().")
        if not (enabled is True or str(enabled).upper() in ("YES", "ON", "TRUE")):  # those trust every module
            set_gdal_config("GDAL_VRT_ENABLE_PYTHON", "TRUSTED_MODULES")
        trusted = [m for m in str(get_gdal_config("GDAL_VRT_PYTHON_TRUSTED_MODULES") or "").split(",") if m]
        if TRUSTED_MODULE not in trusted:
            set_gdal_config("GDAL_VRT_PYTHON_TRUSTED_MODULES", ",".join([*trusted, TRUSTED_MODULE]))


def _vrt_source(path) -> str:
    """The sidecar path for a .tec (refreshed), or the XML itself where the sidecar cannot be written."""
    p = Path(path)
    if p.suffix.lower() == ".vrt":
        return str(p)
    try:
        return str(sidecar(p))
    except OSError:
        with TecTiles(p) as f:
            return vrt_xml(p, f.metadata)


def open(path):  # noqa: A001  (rasterio.open-style entry point)
    """A rasterio dataset of a ``.tec`` file (or its ``.tec.vrt``); close it (or use ``with``) when done."""
    source = _vrt_source(path)
    import rasterio

    _enable_pixel_function()
    return rasterio.open(source)


def open_osgeo(path):
    """An ``osgeo.gdal.Dataset`` of a ``.tec`` file; the options are set process-wide (osgeo has no Env)."""
    try:
        from osgeo import gdal
    except ImportError:
        raise TecZarrError("Expected the GDAL Python bindings (osgeo). Got ImportError instead: use tec_zarr.gdal.open "
                           "(rasterio), or install GDAL's bindings.") from None
    for key, value in config_options().items():
        gdal.SetConfigOption(key, value)
    dataset = gdal.Open(_vrt_source(path))
    if dataset is None:
        raise TecZarrError(f"Expected GDAL to open {path}. Got {gdal.GetLastErrorMsg()!r} instead.")
    return dataset


__all__ = ["open", "open_osgeo", "gdal_environment", "export_lines", "sidecar", "config_options"]
