"""Conversions to and from ``.tec`` files: GeoTIFF (decode / encode), and Zarr (chunk bytes copied, never re-encoded).

A Zarr array converts without re-encoding when its chunks are ``.tec`` tiles: shape (bands, H, W) with chunks
(bands, T, T), stored by the ``tec_zarr.tec`` codec alone (format 3: the serializer with no compressors; format 2:
the compressor with no filters). A (1, bands, T, T) chunk of a 4-D array holds a different header (its shape), so
4-D arrays are refused: select one date first (``tec compress`` writes such an array from a GeoTIFF).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from ..bands import S2_L2A_BANDS, band_order
from ..bitstream import tecfile as layout
from ..codec.config import CODEC_NAME, FILL_VALUE
from ..dn_offset import bands_dn_offset
from ..errors import InvalidInputError, TecFileError
from ..parsing import declared_nodata, nodata_allowed, parse_nodata
from ..radiometry import Radiometry, from_attrs, parse_radiometry, to_attrs
from ..pipeline.decode import read_header
from . import raster

DIMS = ("band", "y", "x")


def geotiff_to_tec(src, dst, *, tile=256, quality=None, model=None, overviews=(), nodata=None, max_error=None,
                   psnr=None, progress=None, float_scale=10000.0, dn_offset=None, refine=0) -> layout.TecMetadata:
    """Encode a GeoTIFF; its CRS, transform and band descriptions are kept, nodata is the file's (else 0), and
    ``dn_offset`` (the DN of reflectance 0) the one its bands' scale and offset state (else 0).

    The GeoTIFF is read a strip of tile rows at a time (:func:`raster.write_rows`), never whole; ``progress(done,
    total)`` is called after each tile."""
    import rasterio
    from rasterio.windows import Window

    with warnings.catch_warnings(), rasterio.open(src) as ds:
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        crs = ds.crs.to_wkt() if ds.crs else None
        geotransform = None if ds.transform.is_identity else ds.transform.to_gdal()
        # Named bands are checked and put in the model's order (the file then names them so); unnamed ones are
        # taken as that order.
        order = band_order(ds.descriptions, S2_L2A_BANDS, source=str(src))
        indexes = [i + 1 for i in order] if order is not None else list(range(1, ds.count + 1))
        names = list(S2_L2A_BANDS) if order is not None else None
        if nodata is None:
            nodata = ds.nodata if ds.nodata is not None else 0
        if isinstance(nodata, float) and math.isnan(nodata) and np.dtype(ds.dtypes[0]).kind == "f":
            nodata = None  # float NaN is stored as missing whatever the nodata: the usual float NoData needs none
        if dn_offset is None:
            dn_offset = stated_dn_offset(ds, indexes)

        def read_rows(y0: int, y1: int) -> np.ndarray:
            return ds.read(indexes, window=Window(0, y0, ds.width, y1 - y0))

        return raster.write_rows(dst, read_rows, shape=(len(indexes), ds.height, ds.width),
                                 dtype=ds.dtypes[indexes[0] - 1], crs_wkt=crs, geotransform=geotransform,
                                 band_names=names, nodata=nodata, tile=tile, quality=quality, model=model,
                                 overviews=overviews, max_error=max_error, psnr=psnr, progress=progress,
                                 float_scale=float_scale, dn_offset=dn_offset,
                                 radiometry=band_radiometry(ds, indexes), refine=refine)


def band_radiometry(src, indexes) -> Radiometry | None:
    """The scales and offsets the bands ``indexes`` (1-based) of an open rasterio dataset state, in that order."""
    return parse_radiometry([src.scales[i - 1] for i in indexes], [src.offsets[i - 1] for i in indexes],
                            len(indexes))


def stated_dn_offset(src, indexes) -> int:
    """The DN offset the bands ``indexes`` (1-based) of an open rasterio dataset state by their scale and offset
    (:func:`~tec_zarr.dn_offset.bands_dn_offset`); 0 where they state none."""
    return bands_dn_offset([src.scales[i - 1] for i in indexes], [src.offsets[i - 1] for i in indexes],
                           src.dtypes[indexes[0] - 1]) or 0


# The nodata a decoded GeoTIFF declares by default: the one its input declares.
FROM_INPUT = "input"


def write_geotiff(dst, read_rows, *, shape, dtype, rows: int, crs_wkt=None, transform=None, band_names=(),
                  nodata=None, progress=None, radiometry: Radiometry | None = None) -> None:
    """A tiled GeoTIFF written a strip of ``rows`` rows at a time (``read_rows(row0, row1)`` -> (bands, n, W)):
    DEFLATE with the horizontal predictor (floating-point predictor for floats), NoData only when given, band
    scales and offsets where ``radiometry`` states them."""
    import rasterio

    bands, height, width = shape
    _check_nodata(nodata, dtype)
    floating = np.dtype(dtype).kind == "f"
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": np.dtype(dtype).name,
               "nodata": nodata, "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               "predictor": 3 if floating else 2, "interleave": "band", "bigtiff": "IF_SAFER"}
    if crs_wkt:
        profile["crs"] = rasterio.crs.CRS.from_wkt(crs_wkt)
    if transform is not None:
        profile["transform"] = transform
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(dst, "w", **profile) as out:
            if radiometry is not None:
                out.scales, out.offsets = radiometry
            _write_strips(out, read_rows, height, width, rows, band_names, progress)


def _check_nodata(nodata, dtype) -> None:
    """Refuses a NoData the GeoTIFF's dtype cannot hold (GDAL would store another value, or fail)."""
    if nodata is None:
        return
    allowed = nodata_allowed(nodata, dtype)
    if allowed is None:
        return
    raise InvalidInputError(f"Expected a NoData value {allowed} for a {dtype} GeoTIFF. Got {nodata} instead "
                            "(tec decompress --nodata: give a value in that range).")


def _write_strips(out, read_rows, height: int, width: int, rows: int, band_names, progress) -> None:
    from rasterio.windows import Window

    for y0 in range(0, height, rows):
        y1 = min(y0 + rows, height)
        out.write(read_rows(y0, y1), window=Window(0, y0, width, y1 - y0))
        if progress is not None:
            progress(y1, height)
    for i, name in enumerate(band_names, 1):
        out.set_band_description(i, name)


def _strip_rows(tile: int) -> int:
    """Rows per written strip: whole tiles (or chunks), and at least one 256-row GeoTIFF block row."""
    return tile * -(-256 // tile)


def tec_to_geotiff(src, dst, *, level: int = 0, nodata=FROM_INPUT, progress=None) -> None:
    """Decode a ``.tec`` (one level) into a tiled, DEFLATE-compressed GeoTIFF with CRS, transform and band names,
    a strip of tile rows at a time; NoData is the file's (``nodata=`` another value, or None for none)."""
    from rasterio.transform import Affine

    with raster.TecFile(src) as f:
        m = f.metadata
        height, width = m.level_shape(level)
        transform = None
        if m.geotransform:
            transform = Affine.from_gdal(*m.geotransform) @ Affine.scale(2**level)
        write_geotiff(dst, lambda y0, y1: f.read(window=(slice(y0, y1), slice(0, width)), level=level),
                      shape=(m.bands, height, width), dtype=m.dtype, rows=_strip_rows(m.tile), crs_wkt=m.crs_wkt,
                      transform=transform, band_names=m.band_names,
                      nodata=m.nodata if nodata == FROM_INPUT else nodata, progress=progress,
                      radiometry=m.radiometry)


def zarr_to_geotiff(store, dst, *, variable: str | None = None, index: int | None = None, nodata=FROM_INPUT,
                    progress=None) -> None:
    """Decode a Zarr array of shape (bands, H, W), or one ``index`` of the leading axis of (N, bands, H, W), into a
    GeoTIFF like :func:`tec_to_geotiff`, a chunk row at a time. Georeferencing as :func:`zarr_to_tec` finds it;
    NoData is the array's ``nodata`` (else ``_FillValue``) attribute, none if it has neither."""
    import zarr
    from rasterio.transform import Affine

    group, array = _find_array(zarr.open(store, mode="r"), variable)
    if array.ndim == 4:
        if index is None and array.shape[0] != 1:
            raise TecFileError(f"Expected an index along the first axis of {array.basename} {array.shape}: which of "
                               f"its {array.shape[0]} dates to write (index=I; tec decompress --time-index I). "
                               "Got none instead.")
        index = 0 if index is None else index
        if not 0 <= index < array.shape[0]:
            raise TecFileError(f"Expected an index in 0..{array.shape[0] - 1} along the first axis of "
                               f"{array.basename} {array.shape}. Got {index} instead.")
    elif array.ndim != 3:
        raise TecFileError(f"Expected a (bands, H, W) or (N, bands, H, W) array. Got {array.basename} "
                           f"{array.shape} instead.")
    elif index is not None:
        raise TecFileError(f"Expected no index for the 3-D array {array.basename} {array.shape}. Got {index} instead.")
    lead = () if array.ndim == 3 else (index,)
    crs, gt = _georef(group, array)
    if nodata == FROM_INPUT:
        nodata = declared_nodata(dict(array.attrs))
    write_geotiff(dst, lambda y0, y1: array[(*lead, slice(None), slice(y0, y1))], shape=array.shape[-3:],
                  dtype=array.dtype, rows=_strip_rows(array.chunks[-2]), crs_wkt=crs,
                  transform=None if gt is None else Affine.from_gdal(*gt),
                  band_names=_band_names(group, array) or (), nodata=nodata, progress=progress,
                  radiometry=_radiometry(array))


# --- Zarr: raw chunk bytes through the store API ---------------------------------------------------------------


def _chunk_bytes(array, coords: tuple[int, ...]) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    path = array.store_path / array.metadata.encode_chunk_key(coords)
    buf = sync(path.get(prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _stored_quality(array, config: dict, chunks: tuple[int, ...]) -> dict:
    """``config`` with the quality its chunks have: ``tec thin`` lowers the chunks, not the config (the setting for
    later writes), and a .tec file's config says what it holds, its overviews coded at that quality. A ``psnr``
    config is left as it is (its chunks' levels vary by design)."""
    if config.get("psnr") is not None or not isinstance(config.get("quality"), int):
        return config
    levels = [read_header(data).quality for ty in range(-(-array.shape[1] // chunks[1]))
              for tx in range(-(-array.shape[2] // chunks[2])) if (data := _chunk_bytes(array, (0, ty, tx)))]
    return dict(config, quality=max(levels)) if levels and max(levels) < config["quality"] else config


def _set_chunk_bytes(array, coords: tuple[int, ...], data: bytes) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    path = array.store_path / array.metadata.encode_chunk_key(coords)
    sync(path.set(default_buffer_prototype().buffer.from_bytes(data)))


def tec_codec_config(array) -> dict | None:
    """The numcodecs-style config of an array stored by the TEC codec alone, else None."""
    md = array.metadata
    if md.zarr_format == 2:
        comp = md.compressor
        if comp is None or getattr(comp, "codec_id", None) != CODEC_NAME or md.filters or md.order != "C":
            return None
        config = dict(comp.get_config())
    else:
        from ..codec.zarr3 import TEC

        if len(md.codecs) != 1 or not isinstance(md.codecs[0], TEC):
            return None
        config = {"id": CODEC_NAME, **md.codecs[0].to_dict()["configuration"]}
        if config["nodata"] == FILL_VALUE:
            config["nodata"] = None if md.fill_value is None else parse_nodata(np.asarray(md.fill_value).item())
    return config


def _dims(array) -> tuple[str, ...] | None:
    md = array.metadata
    names = md.dimension_names if md.zarr_format == 3 else array.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(names) if names and all(names) else None


def array_codecs(array) -> list:
    """The array's codecs, those inside its shards included (format 3 sharding)."""
    md = array.metadata
    if md.zarr_format == 2:
        return [c for c in (md.compressor, *(md.filters or ())) if c is not None]
    codecs = list(md.codecs)
    for c in codecs:  # grows as it goes: shards inside shards too
        codecs += list(getattr(c, "codecs", ()))  # a ShardingCodec's inner codecs
    return codecs


def codec_dict(codec) -> dict:
    """A format 3 codec's ``{"name", "configuration"}``, a format 2 (numcodecs) one's ``{"id", ...}``."""
    return codec.to_dict() if hasattr(codec, "to_dict") else codec.get_config()


def _uses_tec(array) -> bool:
    """Whether TEC codes the array's chunks, alone or inside shards (then readable through zarr, not copyable)."""
    return any(d.get("name", d.get("id")) == CODEC_NAME for d in map(codec_dict, array_codecs(array)))


def _find_array(node, variable: str | None):
    """(the group holding it, the array) of ``variable`` (a path inside the store), else of the one TEC array the
    store holds, in any group."""
    import zarr

    if isinstance(node, zarr.Array):
        return None, node
    if variable is None:
        candidates = [path for path, a in node.members(max_depth=None)
                      if isinstance(a, zarr.Array) and _uses_tec(a)]
        if len(candidates) != 1:
            raise TecFileError(
                f"Expected one array stored with the {CODEC_NAME} codec, or a variable name. Got "
                f"{sorted(candidates)} instead" + (": name one (variable=..., --var on the command line)." if candidates
                                                   else ": the store holds no TEC-coded array (tec compress writes one)."))
        variable = candidates[0]
    try:
        array = node[variable]
    except KeyError:
        arrays = sorted(path for path, a in node.members(max_depth=None) if isinstance(a, zarr.Array))
        raise TecFileError(f"Expected an array {variable!r} in the Zarr store. Got {arrays} instead.") from None
    if not isinstance(array, zarr.Array):
        raise TecFileError(f"Expected an array at {variable!r} in the Zarr store. Got a group instead.")
    parent = variable.strip("/").rpartition("/")[0]
    return (node[parent] if parent else node), array


def _crs_wkt(crs) -> str | None:
    if not crs:
        return None
    crs = str(crs)
    if "[" in crs:  # already WKT
        return crs
    try:
        from rasterio.crs import CRS

        return CRS.from_user_input(crs).to_wkt()
    except Exception:  # no rasterio, or an unknown code: GDAL takes the string as it is
        return crs


def _georef(group, array) -> tuple[str | None, tuple[float, ...] | None]:
    attrs = {**(dict(group.attrs) if group is not None else {}), **dict(array.attrs)}
    crs, gt = attrs.get("crs"), attrs.get("geotransform")
    if group is not None and "spatial_ref" in group:  # the CF / rioxarray grid mapping
        ref = group["spatial_ref"].attrs
        crs = crs or ref.get("crs_wkt") or ref.get("spatial_ref")
        if gt is None and isinstance(ref.get("GeoTransform"), str):
            gt = [float(v) for v in ref["GeoTransform"].split()]
    dims = _dims(array)
    if gt is None and group is not None and dims and dims[-1] in group and dims[-2] in group:
        x, y = group[dims[-1]][...], group[dims[-2]][...]
        if x.ndim == y.ndim == 1 and len(x) > 1 and len(y) > 1:
            dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
            if np.allclose(np.diff(x), dx) and np.allclose(np.diff(y), dy):
                gt = [float(x[0]) - dx / 2, dx, 0.0, float(y[0]) - dy / 2, 0.0, dy]
    return _crs_wkt(crs), None if gt is None else tuple(float(v) for v in gt)


def _radiometry(array) -> Radiometry | None:
    """The scales and offsets a Zarr array's attributes state for its bands (axis -3)."""
    try:
        return from_attrs(dict(array.attrs), array.shape[-3])
    except InvalidInputError as e:
        raise TecFileError(f"Unreadable scale and offset attributes of {array.basename}: {e}") from None


def _band_names(group, array) -> list[str] | None:
    dims = _dims(array)
    if group is None or not dims or len(dims) < 3 or dims[-3] not in group:
        return None
    names = [str(v) for v in group[dims[-3]][...].tolist()]
    return names if len(names) == array.shape[-3] else None


def zarr_to_tec(store, dst, *, variable: str | None = None, overviews=()) -> layout.TecMetadata:
    """Copy a TEC-coded Zarr array's chunk bytes into a ``.tec`` file (overviews, if asked, are encoded anew)."""
    import zarr

    group, array = _find_array(zarr.open(store, mode="r"), variable)
    config = tec_codec_config(array)
    if config is None and _uses_tec(array):
        raise TecFileError(
            "Expected TEC chunks stored one per object to copy into a .tec file. Got a sharded array instead: tec "
            "decompress and xarray read it; for a .tec, write the array again without shards= first.")
    if config is None:
        raise TecFileError(
            f"Expected an array stored by the {CODEC_NAME} codec alone (format 3 serializer without compressors, "
            f"format 2 compressor without filters). Got {array.metadata.to_dict().get('codecs') or array.metadata.compressor} instead."
        )
    shape, chunks = array.shape, array.chunks
    if len(shape) != 3 or chunks[0] != shape[0] or chunks[1] != chunks[2]:
        raise TecFileError(
            f"Expected a (bands, H, W) array with square chunks (bands, T, T). Got shape {shape} chunks {chunks} instead"
            + (" (select one date of a time series first: tec decompress STORE date.tif --time-index N, then tec "
               "compress date.tif date.tec)." if len(shape) == 4 else ".")
        )
    crs, gt = _georef(group, array)
    config = _stored_quality(array, config, chunks)
    meta = layout.TecMetadata.create(
        shape=shape, dtype=array.dtype, band_names=_band_names(group, array), crs_wkt=crs, geotransform=gt,
        nodata=config["nodata"], tile=chunks[1], codec=config, overviews=tuple(overviews),
        radiometry=_radiometry(array),
    )
    fill = array.metadata.fill_value
    fill = 0 if fill is None else np.asarray(fill).item()

    def tiles():
        ny, nx = meta.grid(0)
        for ty in range(ny):
            for tx in range(nx):
                data = _chunk_bytes(array, (0, ty, tx))
                if data is None:
                    if fill != fill and np.dtype(meta.dtype).kind == "f":
                        yield raster.missing_tile(meta)  # NaN in the store, NaN in the file (whatever the nodata)
                        continue
                    if fill != meta.fill:
                        raise TecFileError(
                            f"Expected the fill value of the missing chunk {(0, ty, tx)} to equal nodata {meta.fill}. "
                            f"Got {fill} instead."
                        )
                    yield None
                    continue
                declared = read_header(data)  # verifies the CRC32s (of a chunk in parts: framing and parts)
                shape, dtype = tuple(declared.shape), declared.dtype
                if shape != (meta.bands, meta.tile, meta.tile) or dtype != np.dtype(meta.dtype):
                    raise TecFileError(f"Expected chunk {(0, ty, tx)} of shape {chunks}. Got {shape} instead.")
                yield data
        if meta.overviews:
            yield from raster.encode_tiles(np.ascontiguousarray(array[...]), meta, meta.overviews)

    layout.write_tiles(dst, meta, tiles())
    return meta


GRID_MAPPING = "spatial_ref"


def grid_mapping_attrs(crs_wkt: str | None, geotransform) -> dict:
    """The CF grid-mapping variable's attributes for a CRS and GDAL geotransform, as rioxarray and odc-geo read
    them (``crs_wkt``, its alias ``spatial_ref``, and ``GeoTransform``)."""
    attrs = {}
    if crs_wkt:
        attrs["crs_wkt"] = attrs["spatial_ref"] = crs_wkt
    if geotransform is not None:
        attrs["GeoTransform"] = " ".join(repr(float(v)) for v in geotransform)
    return attrs


def _coords(m: layout.TecMetadata) -> dict:
    coords = {"band": np.array(m.band_names, dtype=object)}
    if m.crs_wkt or m.geotransform is not None:
        coords[GRID_MAPPING] = ((), np.int64(0), grid_mapping_attrs(m.crs_wkt, m.geotransform))
    g = m.geotransform
    if g is not None and g[2] == 0 and g[4] == 0:  # pixel centres; a rotated grid keeps only its geotransform
        coords["x"] = g[0] + g[1] * (np.arange(m.shape[2]) + 0.5)
        coords["y"] = g[3] + g[5] * (np.arange(m.shape[1]) + 0.5)
    return coords


def _grid_mapping_attr(m: layout.TecMetadata) -> dict:
    return {"grid_mapping": GRID_MAPPING} if m.crs_wkt or m.geotransform is not None else {}


def tec_to_zarr(src, store, *, zarr_format: int = 3, variable: str = "reflectance") -> None:
    """Write a Zarr store (``xr.open_zarr`` opens it) whose array's chunks are the ``.tec`` tiles, byte for byte."""
    import xarray as xr
    import zarr

    if zarr_format not in (2, 3):
        raise TecFileError(f"Expected zarr_format 2 or 3. Got {zarr_format!r} instead.")
    with raster.TecFile(src) as f:
        m = f.metadata
        attrs = {"crs": m.crs_wkt or "", "tec_uuid": m.uuid}
        if m.geotransform is not None:
            attrs["geotransform"] = list(m.geotransform)
        # xarray writes the coordinates (it knows how to store strings); zarr then adds the TEC array itself.
        xr.Dataset(coords=_coords(m), attrs=attrs).to_zarr(store, mode="w", zarr_format=zarr_format, consolidated=False)
        group = zarr.open_group(store, mode="r+", zarr_format=zarr_format)
        codec = {k: v for k, v in m.codec.items() if k != "id"}
        # xarray takes a format 2 fill value as _FillValue and would mask nodata to NaN; None reads as 0 there.
        fill = None if zarr_format == 2 and m.fill == 0 else m.fill
        common = {"name": variable, "shape": m.shape, "dtype": m.dtype, "chunks": (m.bands, m.tile, m.tile),
                  "fill_value": fill, "filters": None}
        if zarr_format == 3:
            from ..codec.zarr3 import TEC

            array = group.create_array(**common, serializer=TEC(**codec), compressors=None, dimension_names=DIMS,
                                       attributes={"nodata": m.nodata, **_grid_mapping_attr(m),
                                                   **to_attrs(m.radiometry, m.nodata)})
        else:
            from ..codec.zarr2 import TEC

            array = group.create_array(**common, compressors=TEC(**codec),
                                       attributes={"_ARRAY_DIMENSIONS": list(DIMS), "nodata": m.nodata,
                                                   **_grid_mapping_attr(m), **to_attrs(m.radiometry, m.nodata)})
        ny, nx = m.grid(0)
        for ty in range(ny):
            for tx in range(nx):
                data = f.read_tile(0, ty, tx)
                if data:  # an absent tile stays a missing chunk: both read as the fill value
                    _set_chunk_bytes(array, (0, ty, tx), data)
    with warnings.catch_warnings():  # zarr warns that consolidated metadata is not in the v3 spec yet
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(store)


def describe(path) -> str:
    """A few lines about a ``.tec`` file, for ``tec info``."""
    with raster.TecFile(path) as f:
        m = f.metadata
        stored = Path(path).stat().st_size
        raw = math.prod(m.shape) * np.dtype(m.dtype).itemsize
        absent = int((f.index["length"] == 0).sum())
    c = m.codec
    crs = (m.crs_wkt or "none").split("\n")[0]
    lines = [
        f"{path}: .tec format {layout.FORMAT_VERSION}, uuid {m.uuid}",
        f"  {m.shape} {m.dtype}, bands {' '.join(m.band_names)}, nodata {m.nodata}",
        f"  tiles {m.tile}x{m.tile}, levels {list(m.levels)} ({m.tile_count} tiles, {absent} absent); "
        f"{stored:,} bytes ({raw / max(stored, 1):.1f}x of {raw:,} raw)",
        f"  TEC model {c['model']} sha256 {c['model_sha256'][:12]}... quality {c['quality']}"
        + (f" dn_offset {c['dn_offset']}" if c.get("dn_offset") else ""),
        f"  geotransform {json.dumps(list(m.geotransform)) if m.geotransform else 'none'}",
        f"  crs {crs[:100]}{'...' if len(crs) > 100 else ''}",
    ]
    if m.radiometry is not None:
        lines.append(f"  value = stored x scale + offset: {_describe_radiometry(m.radiometry)}")
    return "\n".join(lines)


def _describe_radiometry(radiometry: Radiometry) -> str:
    pairs = list(zip(*radiometry))
    if len(set(pairs)) == 1:
        return f"scale {pairs[0][0]:g}, offset {pairs[0][1]:g} (every band)"
    return ", ".join(f"{s:g} {o:+g}" for s, o in pairs)

