"""The ``tec`` command line: ``tec compress IN OUT.zarr|OUT.tec``, ``tec decompress``, ``tec convert``, ``tec to-vrt``,
``tec info``, ``tec models``, ``tec demo``."""

from __future__ import annotations

import argparse
import contextlib
import json
import warnings
import sys
from pathlib import Path

from .. import __version__
from ..errors import TecZarrError


def _open_input(path: str, variable: str | None):
    """GeoTIFF (rasterio), Zarr or NetCDF -> (xarray Dataset, name of the variable to compress)."""
    import xarray as xr

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        ds = _read_geotiff(p, variable or "reflectance")
    elif suffix == ".zarr" or (p / "zarr.json").exists() or (p / ".zgroup").exists():
        ds = xr.open_zarr(p)
    elif suffix in (".nc", ".nc4", ".netcdf"):
        ds = xr.open_dataset(p)
    else:
        raise TecZarrError(f"Expected a GeoTIFF (.tif), Zarr store or NetCDF (.nc) input. Got {path!r} instead.")
    if variable is None:
        from ..codec.encoding import zarr_encoding

        candidates = list(zarr_encoding(ds, zarr_format=3))
        if len(candidates) != 1:
            raise TecZarrError(f"Expected one 12-band variable in {path}, or --var. Got {candidates} instead.")
        variable = candidates[0]
    if variable not in ds:
        raise TecZarrError(f"Expected variable {variable!r} in {path}. Got {list(ds.data_vars)} instead.")
    return ds, variable


def _read_geotiff(path: Path, name: str):
    import numpy as np
    import rasterio
    import xarray as xr

    from ..bands import S2_L2A_BANDS, band_order
    from ..errors import InvalidInputError
    from ..gdal.convert import GRID_MAPPING, grid_mapping_attrs

    with rasterio.open(path) as src:
        data = src.read()
        t = src.transform
        # Bands named in the file are checked and put in the model's order; unnamed ones are taken as that order.
        try:
            order = band_order(src.descriptions, S2_L2A_BANDS, source=str(path))
        except InvalidInputError as e:
            raise TecZarrError(str(e)) from None
        if order is None and src.count != len(S2_L2A_BANDS):
            raise TecZarrError(f"Expected {len(S2_L2A_BANDS)} bands {' '.join(S2_L2A_BANDS)} in {path}. "
                               f"Got {src.count} unnamed bands instead.")
        if order is not None:
            data = data[order]
        bands = list(S2_L2A_BANDS)
        x = t.c + t.a * (np.arange(src.width) + 0.5)
        y = t.f + t.e * (np.arange(src.height) + 0.5)
        wkt = src.crs.to_wkt() if src.crs else ""
        attrs = {"crs": wkt, "geotransform": list(t.to_gdal())}
        nodata = src.nodata
    # CF georeferencing: a grid-mapping variable that rioxarray (.rio.crs) and odc-geo read.
    var_attrs = {"nodata": nodata if nodata is not None else 0, "grid_mapping": GRID_MAPPING}
    spatial_ref = xr.DataArray(np.int64(0), attrs=grid_mapping_attrs(wkt or None, t.to_gdal()))
    return xr.Dataset({name: (("band", "y", "x"), data, var_attrs)},
                      coords={"band": np.array(bands, dtype=object), "y": y, "x": x, GRID_MAPPING: spatial_ref},
                      attrs=attrs)


def _is_tec(path: str) -> bool:
    """A ``.tec`` file by its suffix, or by its magic bytes."""
    p = Path(path)
    if p.suffix.lower() == ".tec":
        return True
    from ..bitstream.tecfile import MAGIC

    try:
        with p.open("rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _overview_levels(n: int) -> range:
    if n < 0:
        raise TecZarrError(f"Expected --overviews N >= 0. Got {n} instead.")
    return range(1, n + 1)


def _nodata_arg(text: str | None):
    if text is None:
        return None
    if text.lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise TecZarrError(f"Expected a number or 'none' for --nodata. Got {text!r} instead.") from None


def cmd_compress_tec(args) -> int:
    from ..gdal.convert import describe, geotiff_to_tec

    if Path(args.input).suffix.lower() not in (".tif", ".tiff"):
        raise TecZarrError(f"Expected a GeoTIFF (.tif) input for a .tec output. Got {args.input!r} instead.")
    nodata = _nodata_arg(args.nodata)
    if nodata == "none":
        raise TecZarrError("Expected a nodata value for a .tec output (GDAL pads edge tiles with it). Got 'none' instead.")
    geotiff_to_tec(args.input, args.output, tile=args.tile, quality=args.quality, model=args.model,
                   overviews=_overview_levels(args.overviews), nodata=nodata, **_bound_args(args))
    if not args.quiet:
        print(describe(args.output))
    return 0


def _bound_args(args) -> dict:
    """--max-error / --lossless / --psnr as codec keyword arguments (the parser makes them exclusive)."""
    if args.lossless:
        return {"max_error": 0}
    out = {}
    if args.max_error is not None:
        out["max_error"] = int(args.max_error) if float(args.max_error).is_integer() else args.max_error
    if args.psnr is not None:
        out["psnr"] = args.psnr
    return out


def cmd_compress(args) -> int:
    from ..codec.encoding import zarr_encoding

    if Path(args.output).suffix.lower() == ".tec":
        return cmd_compress_tec(args)
    ds, var = _open_input(args.input, args.var)
    ds = ds[[var]]  # keeps the variable's coordinates, its grid mapping among them
    kwargs = {"quality": args.quality, "model": args.model, **_bound_args(args)}
    if args.nodata is not None:
        kwargs["nodata"] = None if args.nodata.lower() == "none" else float(args.nodata)
    else:
        kwargs["nodata"] = ds[var].attrs.get("nodata", 0)
    chunks = {d: args.chunk for d in ds[var].dims[-2:]}
    chunks.update({d: 1 for d in ds[var].dims[:-3]})
    for name in ds.variables:  # drop encodings inherited from the input store
        ds[name].encoding = {}
    try:
        from dask.diagnostics import ProgressBar
    except ImportError:  # progress needs dask; without it the write runs in one go
        ProgressBar = None
    else:  # one dask chunk per Zarr chunk (an input store's own chunks would not line up)
        ds = ds.chunk({**chunks, ds[var].dims[-3]: -1})
    encoding = zarr_encoding(ds, zarr_format=args.zarr_format, variables=[var], chunks=chunks, **kwargs)
    # Consolidated metadata lets readers open the store in one request; zarr 3 warns it is not in the v3 spec yet.
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    if ProgressBar is None:
        ds.to_zarr(args.output, mode="w", zarr_format=args.zarr_format, encoding=encoding, consolidated=True)
    else:
        job = ds.to_zarr(args.output, mode="w", zarr_format=args.zarr_format, encoding=encoding,
                         consolidated=True, compute=False)
        with ProgressBar(out=sys.stderr) if not args.quiet else contextlib.nullcontext():
            job.compute()
    if not args.quiet:
        print(info_text(args.output))
    return 0


def info_text(store: str) -> str:
    import zarr

    group = zarr.open_group(store, mode="r")
    lines = [f"{store}: Zarr format {group.metadata.zarr_format}"]
    for name, arr in sorted(group.arrays()):
        codecs = [c.to_dict() if hasattr(c, "to_dict") else c.get_config() for c in _codecs(arr)]
        tec = [c for c in codecs if c.get("name", c.get("id")) == "tec_zarr.tec"]
        stored = arr.nbytes_stored()
        raw = arr.nbytes
        line = f"  {name}: {arr.shape} {arr.dtype} chunks {arr.chunks}, {stored:,} bytes stored"
        if tec:
            cfg = tec[0].get("configuration", tec[0])
            line += (f" ({raw / max(stored, 1):.1f}x of {raw:,} raw); TEC model {cfg['model']} "
                     f"sha256 {cfg['model_sha256'][:12]}... quality {cfg['quality']} nodata {cfg['nodata']}")
        lines.append(line)
    return "\n".join(lines)


def _codecs(arr):
    md = arr.metadata
    if md.zarr_format == 2:
        return [c for c in (md.compressor, *(md.filters or ())) if c is not None]
    return list(md.codecs)


def cmd_info(args) -> int:
    if _is_tec(args.store) and not Path(args.store).is_dir():
        from ..gdal.convert import describe

        print(describe(args.store))
    else:
        print(info_text(args.store))
    return 0


def cmd_decompress(args) -> int:
    from ..gdal.convert import tec_to_geotiff

    if Path(args.output).suffix.lower() not in (".tif", ".tiff"):
        raise TecZarrError(f"Expected a GeoTIFF (.tif) output. Got {args.output!r} instead.")
    tec_to_geotiff(args.input, args.output, level=args.level)
    return 0


def cmd_convert(args) -> int:
    from ..gdal.convert import describe, tec_to_zarr, zarr_to_tec

    if _is_tec(args.input) and not Path(args.input).is_dir():
        tec_to_zarr(args.input, args.output, zarr_format=args.zarr_format, variable=args.var or "reflectance")
        if not args.quiet:
            print(info_text(args.output))
    elif Path(args.output).suffix.lower() == ".tec":
        zarr_to_tec(args.input, args.output, variable=args.var, overviews=_overview_levels(args.overviews))
        if not args.quiet:
            print(describe(args.output))
    else:
        raise TecZarrError(f"Expected a .tec file on one side (store.zarr -> scene.tec or back). Got {args.input!r} -> "
                           f"{args.output!r} instead.")
    return 0


def cmd_to_vrt(args) -> int:
    from ..gdal import export_lines, sidecar

    path = sidecar(args.input)
    print(f"# wrote {path}; for the GDAL command line and QGIS, set first:")
    print(export_lines())
    print(f"# then: gdalinfo {path}")
    return 0


def cmd_models(args) -> int:
    from ..models import list_models

    models = list_models()
    if args.json:
        print(json.dumps([m.manifest for m in models], indent=1))
        return 0
    for m in models:
        tr = m.manifest.get("training", {})
        print(f"{m.name} v{m.version}  sha256 {m.sha256}")
        stages = [(key, tr[key]) for key in ("steps", "hyperprior_steps", "context_steps") if key in tr]
        trained = ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in stages) or "? steps"
        if "base_training" in tr:
            trained = f"{tr['base_training'].get('steps', '?')} steps ({m.manifest['base_model']['name']}) + {trained}"
        print(f"  {m.manifest.get('architecture', '')}; entropy model {m.manifest.get('entropy_model', 'factorized')}; "
              f"trained {trained}; bands {' '.join(m.bands)}")
        print(f"  validation ({', '.join(tr.get('validation_places') or [])}, never trained on):")
        print(f"  {'quality':>8} {'bpp':>8} {'PSNR dB':>8}")
        for q in m.qualities:
            v = q.get("validation", {})
            default = "  (default)" if q["quality"] == m.default_quality else ""
            print(f"  {q['quality']:>8} {v.get('bpp', float('nan')):>8.3f} {v.get('psnr', float('nan')):>8.2f}{default}")
    return 0


def cmd_demo(args) -> int:
    from .demo import main as demo_main

    return demo_main(quality=args.quality)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tec", description="Learned TerraCodec compression for Sentinel-2 in Zarr.")
    p.add_argument("--version", action="version", version=f"tec-zarr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a GeoTIFF, Zarr or NetCDF input into a TEC Zarr store, or a GeoTIFF "
                                        "into a .tec file (OUT ending in .tec)")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--var", help="variable to compress (default: the one 12-band variable)")
    c.add_argument("--quality", type=int, help="model quality level (tec models lists them)")
    c.add_argument("--model", default=None, help="model name (default tec-fp)")
    c.add_argument("--nodata", help="nodata value, or 'none' (default: the input's, else 0)")
    bound = c.add_mutually_exclusive_group()
    bound.add_argument("--max-error", type=float, help="guarantee |x - decoded| <= E in data units (0: lossless)")
    bound.add_argument("--lossless", action="store_true", help="bit-exact (same as --max-error 0)")
    bound.add_argument("--psnr", type=float, help="per chunk, the lowest quality reaching this PSNR (dB)")
    c.add_argument("--chunk", type=int, default=256, help="spatial chunk size (default 256)")
    c.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    c.add_argument("--tile", type=int, default=256, help=".tec output: tile size (default 256)")
    c.add_argument("--overviews", type=int, default=0, help=".tec output: overview levels 1..N (2**k decimation)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compress)

    x = sub.add_parser("decompress", help="decode a .tec file into a GeoTIFF")
    x.add_argument("input")
    x.add_argument("output")
    x.add_argument("--level", type=int, default=0, help="overview level to decode (default 0, full resolution)")
    x.set_defaults(func=cmd_decompress)

    v = sub.add_parser("convert", help="copy TEC chunks between a Zarr store and a .tec file, without re-encoding")
    v.add_argument("input")
    v.add_argument("output")
    v.add_argument("--var", help="Zarr array (default: the one TEC array; 'reflectance' when writing Zarr)")
    v.add_argument("--zarr-format", type=int, choices=(2, 3), default=3, help="format of a Zarr output")
    v.add_argument("--overviews", type=int, default=0, help=".tec output: overview levels 1..N (encoded anew)")
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=cmd_convert)

    r = sub.add_parser("to-vrt", help="write X.tec.vrt for GDAL and QGIS, and print the environment it needs")
    r.add_argument("input")
    r.set_defaults(func=cmd_to_vrt)

    i = sub.add_parser("info", help="describe a Zarr store's arrays and TEC settings, or a .tec file")
    i.add_argument("store")
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("models", help="list installed models with their measured rate-distortion")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="compress the bundled Sentinel-2 sample with TEC and JPEG 2000 and compare")
    d.add_argument("--quality", type=int)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TecZarrError as e:
        print(f"tec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
