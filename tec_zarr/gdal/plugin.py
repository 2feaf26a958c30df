"""The native GDAL plug-in: build ``gdal_TEC.so`` from ``gdal_driver/tec_driver.cpp`` against the system GDAL,
install it in a per-user folder, and the environment that makes GDAL programs and QGIS load it (``tec gdal-plugin``).

The plug-in registers the raster driver ``TEC`` (``gdalinfo scene.tec``) and the ``tec_zarr.tec`` decompressor of
GDAL's Zarr driver (format 2 stores). It calls :mod:`.driver` through the Python it finds in the process, or loads
``TEC_ZARR_PYTHONSO``. A C++ plug-in works only with the GDAL minor version it was built for, so it is built per
version (``gdal-config --version``) into ``<folder>/<X.Y>/``, and rebuilt when the source, GDAL or compiler changes.
rasterio's wheels carry their own GDAL, which cannot load it: rasterio users keep :mod:`.open` (the VRT sidecar).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from ..errors import TecZarrError
from .open import libpython

SOURCE_NAME = "tec_driver.cpp"
LIBRARY_NAME = "gdal_TEC.so"  # GDAL loads gdal_*.so from GDAL_DRIVER_PATH and calls GDALRegister_TEC
STAMP_NAME = "tec_plugin.json"
FOLDER_VARIABLE = "TEC_ZARR_GDAL_PLUGIN_DIR"
# Debian packages providing what the build runs: the compiler and GDAL's headers with gdal-config.
BUILD_TOOLS = {"g++": "g++", "gdal-config": "libgdal-dev"}


class PluginBuildError(TecZarrError):
    """The plug-in cannot be built here (a missing compiler or GDAL headers, or a compiler error)."""


def source() -> Path:
    """``gdal_driver/tec_driver.cpp`` as installed (package data of ``gdal_driver``)."""
    spec = importlib.util.find_spec("gdal_driver")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / SOURCE_NAME).is_file():
            return Path(folder) / SOURCE_NAME
    raise PluginBuildError(f"Expected {SOURCE_NAME} in the installed gdal_driver package. Got none in {folders} "
                           "instead: reinstall tec-zarr (pip install --force-reinstall tec-zarr).")


def missing_packages() -> list[str]:
    """The Debian packages whose programs the build needs and which are not installed."""
    missing = [package for tool, package in BUILD_TOOLS.items() if shutil.which(tool) is None]
    if "libgdal-dev" not in missing:
        includes = [arg[2:] for arg in shlex.split(_gdal_config("--cflags")) if arg.startswith("-I")]
        if not any((Path(d) / "gdal_priv.h").is_file() for d in includes):
            missing.append("libgdal-dev")
    return missing


def _gdal_config(option: str) -> str:
    out = subprocess.run(["gdal-config", option], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise PluginBuildError(f"Expected `gdal-config {option}` to succeed. Got {out.stderr.strip()!r} instead: "
                               "reinstall libgdal-dev.")
    return out.stdout.strip()


def gdal_version() -> str:
    """The system GDAL's version, ``X.Y.Z``."""
    return _gdal_config("--version")


def default_folder() -> Path:
    """Where plug-ins go: ``$TEC_ZARR_GDAL_PLUGIN_DIR``, else ``$XDG_DATA_HOME/tec-zarr/gdalplugins`` (by default
    ``~/.local/share/tec-zarr/gdalplugins``); each GDAL minor version gets its subfolder."""
    if os.environ.get(FOLDER_VARIABLE):
        return Path(os.environ[FOLDER_VARIABLE]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "tec-zarr" / "gdalplugins"


def compile_command(src: Path, out: Path) -> list[str]:
    cflags = shlex.split(_gdal_config("--cflags"))
    libs = shlex.split(_gdal_config("--libs"))
    return ["g++", "-std=c++17", "-O2", "-Wall", "-fPIC", "-shared", *cflags, str(src), "-o", str(out), *libs, "-ldl"]


def build(folder=None, *, force: bool = False) -> Path:
    """``gdal_TEC.so`` for the system GDAL in ``folder/<X.Y>`` (default :func:`default_folder`), compiled unless
    an up-to-date one is there. Returns the folder to put on ``GDAL_DRIVER_PATH``."""
    missing = missing_packages()
    if missing:
        raise PluginBuildError(
            f"Expected a C++ compiler and GDAL's headers to build the GDAL plug-in. Got {', '.join(missing)} missing "
            f"instead: sudo apt-get install {' '.join(missing)} (Debian/Ubuntu), then run tec gdal-plugin again.")
    version = gdal_version()
    target = Path(folder).expanduser() if folder is not None else default_folder()
    target = target / ".".join(version.split(".")[:2])
    src = source()
    library = target / LIBRARY_NAME
    stamp_path = target / STAMP_NAME
    command = compile_command(src, library)
    stamp = {"gdal": version, "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "command": command}
    if not force and library.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return target
        except (OSError, ValueError):
            pass
    target.mkdir(parents=True, exist_ok=True)
    # Compiled beside the target and renamed into place: a GDAL program already running keeps the old file.
    with tempfile.TemporaryDirectory(dir=target, prefix=".build-") as tmp:
        part = Path(tmp) / LIBRARY_NAME
        out = subprocess.run(compile_command(src, part), capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise PluginBuildError(f"Expected {src} to compile against GDAL {version}. Got g++ exit status "
                                   f"{out.returncode} instead: {out.stderr.strip()[-2000:]}")
        os.replace(part, library)
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
    return target


def _system_plugin_folders() -> list[str]:
    """GDAL's own plug-in folders, which GDAL_DRIVER_PATH would otherwise hide (e.g. /usr/lib/<arch>/gdalplugins)."""
    try:
        libs = shlex.split(_gdal_config("--libs"))
    except (PluginBuildError, OSError):
        return []
    folders = [Path(arg[2:]) / "gdalplugins" for arg in libs if arg.startswith("-L")]
    return [str(f) for f in folders if f.is_dir()]


def environment(folder) -> dict[str, str]:
    """Environment variables that make the system GDAL programs and QGIS load the plug-in in ``folder`` (as
    :func:`build` returns it) and run this installation's Python."""
    paths = [str(Path(__file__).resolve().parents[2])]  # tec_zarr and gdal_driver
    paths += [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    env = {"GDAL_DRIVER_PATH": os.pathsep.join(dict.fromkeys([str(folder), *_system_plugin_folders()])),
           "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    so = libpython()
    if so:
        env["TEC_ZARR_PYTHONSO"] = so
        env["TEC_ZARR_PYTHONHOME"] = sys.base_prefix
    else:  # a Python built without a shared libpython: the system's of the same version, with its own stdlib
        import ctypes.util

        so = ctypes.util.find_library(f"python{sys.version_info.major}.{sys.version_info.minor}")
        if so:
            env["TEC_ZARR_PYTHONSO"] = so
    return env


def export_lines(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


__all__ = ["PluginBuildError", "build", "default_folder", "environment", "export_lines", "missing_packages", "source"]
