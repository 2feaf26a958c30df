"""The sidecar ``X.tec.vrt``: one VRTDerivedRasterBand per band calling the trusted pixel function.

Tiles are the VRT blocks. Overviews are declared per band as inline one-band VRTs (XML in ``SourceFilename``) that
call the same function with a ``level`` argument, so one sidecar file is all there is. ``X.tec`` itself is never a
VRT: GDAL rewrites VRTs (statistics), which would destroy the data.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from ..bitstream import tecfile

# GDAL imports the pixel function by this module name: existing sidecars name it, so it never changes.
TRUSTED_MODULE = "gdal_driver.pixelfunction"  # the value of GDAL_VRT_PYTHON_TRUSTED_MODULES
PIXEL_FUNCTION = f"{TRUSTED_MODULE}.tec_band"

GDAL_TYPES = {"uint16": "UInt16", "int16": "Int16", "float32": "Float32"}


def sidecar_path(path) -> Path:
    return Path(f"{os.fspath(path)}.vrt")


def vrt_xml(path, metadata: tecfile.TecMetadata) -> str:
    """The sidecar's XML for the .tec file at ``path`` (stored absolute: the sidecar may be read from anywhere)."""
    tree = _dataset(os.path.abspath(path), metadata, 0, range(1, metadata.bands + 1))
    ET.indent(tree)
    return ET.tostring(tree, encoding="unicode") + "\n"


def _dataset(path: str, m: tecfile.TecMetadata, level: int, bands) -> ET.Element:
    h, w = m.level_shape(level)
    ds = ET.Element("VRTDataset", rasterXSize=str(w), rasterYSize=str(h))
    if m.crs_wkt and level == 0:  # an overview takes its parent's CRS; repeating the WKT only bloats the sidecar
        ET.SubElement(ds, "SRS").text = m.crs_wkt
    if m.geotransform:
        f = 2**level
        g = m.geotransform
        ET.SubElement(ds, "GeoTransform").text = ", ".join(
            repr(v) for v in (g[0], g[1] * f, g[2] * f, g[3], g[4] * f, g[5] * f)
        )
    if level == 0:
        md = ET.SubElement(ds, "Metadata")
        for key, value in (("TEC_FILE", path), ("TEC_UUID", m.uuid), ("TEC_FORMAT_VERSION", tecfile.FORMAT_VERSION),
                           ("TEC_MODEL", m.codec["model"]), ("TEC_QUALITY", m.codec["quality"])):
            ET.SubElement(md, "MDI", key=key).text = str(value)
    for number, band in enumerate(bands, 1):
        b = ET.SubElement(ds, "VRTRasterBand", dataType=GDAL_TYPES[m.dtype], band=str(number),
                          subClass="VRTDerivedRasterBand", blockXSize=str(m.tile), blockYSize=str(m.tile))
        ET.SubElement(b, "Description").text = m.band_names[band - 1]
        if m.nodata is not None:
            ET.SubElement(b, "NoDataValue").text = repr(m.nodata)
        if m.radiometry is not None:  # value = stored x scale + offset, as the source stated
            ET.SubElement(b, "Offset").text = repr(m.offsets[band - 1])
            ET.SubElement(b, "Scale").text = repr(m.scales[band - 1])
        ET.SubElement(b, "PixelFunctionLanguage").text = "Python"
        ET.SubElement(b, "PixelFunctionType").text = PIXEL_FUNCTION
        ET.SubElement(b, "PixelFunctionArguments", path=path, uuid=m.uuid, band=str(band), level=str(level))
        if level == 0:
            for k in m.overviews:
                ov = ET.SubElement(b, "Overview")
                ET.SubElement(ov, "SourceFilename", relativeToVRT="0").text = ET.tostring(
                    _dataset(path, m, k, [band]), encoding="unicode"
                )
                ET.SubElement(ov, "SourceBand").text = "1"
    return ds


def write_sidecar(path, sidecar=None) -> Path:
    """Write (or refresh) ``path + ".vrt"``; left untouched when already up to date. Returns its path."""
    with tecfile.TecTiles(path) as f:
        xml = vrt_xml(path, f.metadata)
    sidecar = sidecar_path(path) if sidecar is None else Path(sidecar)
    try:
        if sidecar.read_text() == xml:
            return sidecar
    except (OSError, UnicodeDecodeError):
        pass
    part = sidecar.with_name(sidecar.name + ".part")
    part.write_text(xml)
    os.replace(part, sidecar)
    return sidecar
