from __future__ import annotations

import numpy as np
import pytest

from tec_zarr import sample

from common import (
    GDAL_CLI_MISSING,
    GEOTRANSFORM,
    OSGEO_MISSING,
    PLUGIN_MISSING,
    QGIS_MISSING,
    TILE,
    UTM10N_WKT,
)


@pytest.fixture(scope="session")
def cube() -> np.ndarray:
    """The bundled real sample, uint16 (4, 12, 264, 264): a place no model was trained on."""
    return sample.load_array()


@pytest.fixture(scope="session")
def image(cube) -> np.ndarray:
    """One clear date, (12, 264, 264)."""
    return np.ascontiguousarray(cube[1])


@pytest.fixture(scope="session")
def original(image) -> np.ndarray:
    """The image of the ``.tec`` tests: 200 x 150, an odd size (partial edge tiles on both axes)."""
    return np.ascontiguousarray(image[:, :200, :150])


@pytest.fixture(scope="session")
def scene(tmp_path_factory, original):
    """scene.tec (tile 64, overviews 1 and 2, UTM 10N, 10 m) and every level TecFile decodes from it.

    Written and read without GDAL (test_tecfile.py); test_gdal.py reads the same file through GDAL.
    """
    from tec_zarr import tecfile

    path = tmp_path_factory.mktemp("tec") / "scene.tec"
    tecfile.write(path, original, crs_wkt=UTM10N_WKT, geotransform=GEOTRANSFORM, nodata=0, tile=TILE, quality=1,
                  overviews=(1, 2))
    with tecfile.open(path) as f:
        levels = {k: f.read(level=k) for k in (0, 1, 2)}
    return path, levels


# -- what was skipped for want of system packages ---------------------------------------------------------------------

_SYSTEM_PACKAGES = (  # (skip reason, the tests, how to get it)
    (GDAL_CLI_MISSING, "the GDAL command-line tests", "apt-get install gdal-bin"),
    (QGIS_MISSING, "the QGIS test", "apt-get install python3-qgis"),
    (PLUGIN_MISSING, "the GDAL plug-in tests", "apt-get install g++ libgdal-dev gdal-bin"),
    (OSGEO_MISSING, "the osgeo test", "pip install gdal==$(gdal-config --version) into this environment"),
)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """GDAL/QGIS tests skip quietly where a system package is missing: say which, and how CI gets them."""
    skipped = terminalreporter.stats.get("skipped", [])
    lines = []
    for reason, what, remedy in _SYSTEM_PACKAGES:
        names = sorted({r.nodeid for r in skipped if reason in str(getattr(r, "longrepr", ""))})
        if names:
            lines.append(f"SKIPPED {what} ({len(names)}): {reason}; to run them: {remedy}.")
            lines += [f"    {n}" for n in names]
    if lines:
        terminalreporter.write_sep("=", "GDAL/QGIS tests skipped: system packages missing", yellow=True)
        for line in lines:
            terminalreporter.write_line(line, yellow=True)
        terminalreporter.write_line(
            "CI installs gdal-bin, python3-qgis, g++ and libgdal-dev (.ci/run does), so the GDAL command-line, plug-in "
            "and QGIS tests run there; "
            "the osgeo test runs where GDAL's Python bindings are installed in the test environment.", yellow=True)
