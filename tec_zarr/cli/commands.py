"""The ``tec`` command line: ``tec compress IN OUT.zarr|OUT.tec``, ``tec decompress``, ``tec convert``, ``tec to-vrt``,
``tec gdal-plugin``, ``tec info``, ``tec models``, ``tec train``, ``tec thin``, ``tec inpaint``, ``tec demo``.

Every failure prints one line, ``tec: error: <cause>; <fix>`` (:mod:`.failures`), and exits with status 2. Long
commands draw a progress line on stderr where it is a terminal and print a summary with the time taken
(:mod:`.progress`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import textwrap
import time
import warnings
from pathlib import Path

from .. import __version__
from ..errors import TecZarrError
from ..parsing import declared_nodata
from . import failures
from .failures import CommandError
from .inpaint import add_parser as add_inpaint_parser
from .inputs import (GEOTIFF, NETCDF, TEC, ZARR, check_nodata, chunk_count, open_dataset, output_kind, replacing,
                     require_input, require_output)
from .progress import Progress, PsnrMisses, dask_progress
from .termination import Terminated, unwinding_on_termination

DEFAULT_CHUNK = 256
DEFAULT_TILE = 256


def _nodata_arg(text: str | None):
    """--nodata: a number, 'none', or None when not given."""
    if text is None:
        return None
    if text.lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"Expected a number or 'none' for --nodata. Got {text!r} instead.") from None
    return int(value) if value.is_integer() else value


def _overview_levels(n: int | None, shape: tuple[int, ...] | None = None) -> range:
    """--overviews N as levels 1..N; with the raster's shape, refuses levels coarser than the raster (2**N > max(H,
    W))."""
    n = 0 if n is None else n
    if n < 0:
        raise CommandError(f"Expected --overviews N >= 0. Got {n} instead.")
    if shape is not None and n:
        top = max(1, max(shape[-2:]).bit_length() - 1)  # the largest k with 2**k <= max(H, W)
        if 2 ** n > max(shape[-2:]):
            raise CommandError(f"Expected --overviews N in 0..{top} for a {shape[-2]} x {shape[-1]} raster (2**N "
                               f"at most its larger side). Got {n} instead: choose N <= {top}.")
    return range(1, n + 1)


def _size_arg(value: int | None, flag: str, *, low: int, high: int | None = None, multiple: int = 1) -> None:
    """--chunk / --tile: None (not given) or an integer in low..high, a multiple of ``multiple``."""
    if value is None:
        return
    if value < low or (high is not None and value > high) or value % multiple:
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        also = f", a multiple of {multiple}" if multiple > 1 else ""
        raise CommandError(f"Expected {flag} N in {allowed}{also}. Got {value} instead: leave {flag} out for the "
                           "default or give a value in that range.")


def _refuse(args, options: dict[str, str], why: str) -> None:
    """Options given on the command line that do nothing here (their attribute is not None)."""
    given = [flag for attr, flag in options.items() if getattr(args, attr, None) is not None]
    if given:
        many = len(given) > 1
        raise CommandError(f"{' and '.join(given)} {'do' if many else 'does'} nothing {why}: leave "
                           f"{'them' if many else 'it'} out.")


def _bound_args(args) -> dict:
    """--max-error / --lossless / --psnr (the parser makes them exclusive), --float-scale, --dn-offset and --refine
    as codec keyword arguments."""
    out = {} if getattr(args, "float_scale", None) is None else {"float_scale": args.float_scale}
    if getattr(args, "dn_offset", None) is not None:
        out["dn_offset"] = args.dn_offset
    if getattr(args, "refine", None):
        out["refine"] = args.refine
    if args.lossless:
        return {**out, "max_error": 0}
    if args.max_error is not None:
        out["max_error"] = int(args.max_error) if float(args.max_error).is_integer() else args.max_error
    if args.psnr is not None:
        out["psnr"] = args.psnr
    return out


def _say(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text)


# -- tec compress ----------------------------------------------------------------------------------------------------


def cmd_compress(args) -> int:
    out_kind = output_kind(args.output)
    if out_kind not in (ZARR, TEC):
        raise CommandError(f"Expected an output ending in .zarr (a Zarr store) or .tec (a tiled file GDAL and QGIS "
                           f"open). Got {args.output} instead: name the output scene.zarr or scene.tec.")
    if out_kind == TEC:
        _refuse(args, {"chunk": "--chunk", "zarr_format": "--zarr-format", "dates": "--dates"},
                "for a .tec output (it is cut into --tile tiles)")
        _size_arg(args.tile, "--tile", low=16, high=4096, multiple=4)
        in_kind = require_input(args.input, (GEOTIFF,), "compress")
        _refuse(args, {"var": "--var"}, "for a GeoTIFF input to a .tec output (the raster has no variables)")
    else:
        _refuse(args, {"tile": "--tile", "overviews": "--overviews"},
                "for a Zarr output (--chunk sets its chunks; .tec outputs take --tile and --overviews)")
        _size_arg(args.chunk, "--chunk", low=1)
        _size_arg(args.dates, "--dates", low=1, high=64)
        in_kind = require_input(args.input, (GEOTIFF, ZARR, NETCDF), "compress")
    require_output(args.output, overwrite=args.overwrite, inputs=[args.input])
    misses = PsnrMisses(args.psnr)
    with misses.collecting():
        if out_kind == TEC:
            chunks, seconds = _compress_tec(args)
        else:
            chunks, seconds = _compress_zarr(args, in_kind)
    line = misses.summary(chunks, "tiles" if out_kind == TEC else "chunks")
    if line:
        print(line, file=sys.stderr)
    _say(args, f"compressed {args.input} into {args.output} in {seconds:.1f} s")
    if out_kind == TEC:
        from ..gdal.convert import describe

        _say(args, describe(args.output))
    else:
        _say(args, info_text(args.output))
    return 0


def _compress_tec(args) -> tuple[int, float]:
    from ..gdal.convert import geotiff_to_tec

    nodata = _nodata_arg(args.nodata)
    if nodata == "none":
        raise CommandError("Expected a nodata value for a .tec output (edge tiles are padded with it, at no cost). "
                           "Got 'none' instead: leave --nodata out (the GeoTIFF's NoData, else 0) or give a value.")
    import rasterio

    with rasterio.open(args.input) as src:
        shape, dtype, declared = (src.count, src.height, src.width), src.dtypes[0], src.nodata
    check_nodata(nodata if nodata is not None else declared, dtype,
                 "--nodata" if nodata is not None else "the GeoTIFF's NoData")
    levels = _overview_levels(args.overviews, shape)
    tile = DEFAULT_TILE if args.tile is None else args.tile
    with _gdal_cache(args.input, max(tile, 2 ** max(levels, default=0))), \
            Progress("tec compress", "tiles", enabled=not args.quiet) as progress, replacing(args.output) as tmp:
        meta = geotiff_to_tec(args.input, tmp, tile=tile, quality=args.quality,
                              model=args.model, overviews=levels, nodata=nodata, progress=progress, **_bound_args(args))
    return meta.tile_count, progress.seconds


def _geotiff_dn_offset(path) -> int:
    """The DN offset a GeoTIFF's bands state by their scale and offset (0 where they state none)."""
    import rasterio

    from ..gdal.convert import stated_dn_offset

    with rasterio.open(path) as src:
        return stated_dn_offset(src, range(1, src.count + 1))


def _gdal_cache(path, rows: int):
    """GDAL's block cache sized to a few strips of ``rows`` rows of the GeoTIFF (GDAL's default, 5 % of the RAM,
    would keep every block read, up to the whole raster), unless GDAL_CACHEMAX is set."""
    if "GDAL_CACHEMAX" in os.environ:
        return contextlib.nullcontext()
    import numpy as np
    import rasterio

    with rasterio.open(path) as src:
        strip = src.count * src.width * rows * max(np.dtype(t).itemsize for t in src.dtypes)
    return rasterio.Env(GDAL_CACHEMAX=max(64, 3 * strip >> 20))  # MB


def _compress_zarr(args, in_kind: str) -> tuple[int, float]:
    from ..codec.encoding import zarr_encoding

    chunk = DEFAULT_CHUNK if args.chunk is None else args.chunk
    zarr_format = args.zarr_format or 3
    ds, var = open_dataset(args.input, in_kind, args.var, chunk)
    mapping = ds[var].attrs.get("grid_mapping")
    if isinstance(mapping, str) and mapping in ds.data_vars:  # rioxarray's or xarray's own stores: a data variable
        ds = ds.set_coords(mapping)
    # The other variables (a cube's SCL mask, cloud fractions, ...) are copied as they are, with zarr's default
    # compression: a store that lost its masks would be unusable.
    kwargs = {"quality": args.quality, "model": args.model, **_bound_args(args)}
    if in_kind == GEOTIFF and "dn_offset" not in kwargs:  # the file's band scale and offset (a Zarr or NetCDF
        kwargs["dn_offset"] = _geotiff_dn_offset(args.input)  # input's metadata: zarr_encoding reads it)
    nodata = _nodata_arg(args.nodata)
    attrs = dict(ds[var].attrs)
    # The input is opened without CF masking: its _FillValue (or missing_value) is a stored value, its nodata.
    fill = declared_nodata(attrs, ds[var].encoding)
    attrs.pop("_FillValue", None)
    attrs.pop("missing_value", None)
    if fill is not None and attrs.get("nodata") is None:
        attrs["nodata"] = fill
    if nodata is None:  # the input's declared nodata, else 0 (stored exactly; padding of edge chunks costs nothing)
        declared = attrs.get("nodata")
        # A NaN NoData needs no nodata value: float32 NaN is stored as missing in every mode.
        kwargs["nodata"] = 0 if declared is None else None if declared != declared else declared
    else:  # the user declares it: the codec and the variable's attribute say so
        kwargs["nodata"] = None if nodata == "none" or nodata != nodata else nodata  # NaN: as a declared NaN
        attrs.pop("nodata", None)
        if nodata != "none":
            attrs["nodata"] = nodata
    check_nodata(nodata if nodata is not None else kwargs["nodata"], ds[var].dtype,
                 "--nodata" if nodata is not None else "the input's nodata")
    if ("scale_factor" in attrs or "add_offset" in attrs) and attrs.get("nodata") is not None:
        attrs["missing_value"] = attrs["nodata"]  # CF-packed: xarray reads nodata as NaN, not as a value
    ds[var].attrs = attrs
    dims = ds[var].dims
    chunks = {d: chunk for d in dims[-2:]}
    chunks.update({d: 1 for d in dims[:-3]})
    if args.dates is not None:
        if len(dims) < 4:
            raise CommandError(f"--dates does nothing for {args.input}: its variable {var!r} has no time axis before "
                               f"the bands (dims {dims}). Leave it out.")
        chunks[dims[0]] = args.dates  # the leading axis: time, earliest first, as cube builders write it
    for name in ds.variables:  # drop encodings inherited from the input store
        ds[name].encoding = {}
    try:
        import dask  # noqa: F401
    except ImportError:  # without dask the write runs in one go, without progress
        dask_installed = False
    else:  # one dask chunk per Zarr chunk (an input store's own chunks would not line up)
        dask_installed = True
        ds = ds.chunk({**chunks, dims[-3]: -1})
    encoding = zarr_encoding(ds, zarr_format=zarr_format, variables=[var], chunks=chunks, **kwargs)
    zarr_chunks = encoding[var]["chunks"]
    cache = _gdal_cache(args.input, 2 * chunk) if in_kind == GEOTIFF else contextlib.nullcontext()
    with warnings.catch_warnings(), cache:
        # Consolidated metadata lets readers open the store in one request; zarr 3 warns it is not in the v3 spec yet.
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        with Progress("tec compress", enabled=not args.quiet) as progress, replacing(args.output) as tmp:
            if not dask_installed:
                ds.to_zarr(tmp, mode="w", zarr_format=zarr_format, encoding=encoding, consolidated=True)
            else:
                job = ds.to_zarr(tmp, mode="w", zarr_format=zarr_format, encoding=encoding,
                                 consolidated=True, compute=False)
                with dask_progress(progress):
                    job.compute()
    return chunk_count(ds[var].shape, zarr_chunks), progress.seconds


# -- tec info ---------------------------------------------------------------------------------------------------------


def info_text(store: str) -> str:
    import zarr

    from ..gdal.convert import array_codecs, codec_dict

    try:
        group = zarr.open(store, mode="r")  # a group, or an array at the store's root
        arrays = (sorted((path, a) for path, a in group.members(max_depth=None) if isinstance(a, zarr.Array))
                  if isinstance(group, zarr.Group) else [("(root)", group)])  # arrays in groups too
    except TecZarrError:  # the package's own errors already name the cause
        raise
    except Exception as e:  # zarr's own errors: a codec config it cannot build, damaged JSON, ...
        raise _zarr_failure(store, e) from None
    lines = [f"{store}: Zarr format {group.metadata.zarr_format}"]
    for name, arr in arrays:
        codecs = [codec_dict(c) for c in array_codecs(arr)]
        tec = [c for c in codecs if c.get("name", c.get("id")) == "tec_zarr.tec"]
        stored = arr.nbytes_stored()
        raw = arr.nbytes
        shards = getattr(arr, "shards", None)
        line = (f"  {name}: {arr.shape} {arr.dtype} chunks {arr.chunks}" + (f" in shards {shards}" if shards else "")
                + f", {stored:,} bytes stored")
        if tec:
            cfg = tec[0].get("configuration", tec[0])
            line += (f" ({raw / max(stored, 1):.1f}x of {raw:,} raw); TEC model {cfg.get('model')} "
                     f"sha256 {str(cfg.get('model_sha256'))[:12]}... quality {cfg.get('quality')} for new writes "
                     f"nodata {cfg.get('nodata')}" + (f" dn_offset {cfg['dn_offset']}" if cfg.get("dn_offset") else "")
                     + (f" refine {cfg['refine']}" if cfg.get("refine") else ""))
            dates = _dates_per_chunk(cfg.get("model"), arr.chunks)
            if dates:
                line += (f"; {dates} dates per chunk (leading axes), each coded against the date before" if dates > 1
                         else "; 1 date per chunk (leading axes): no date is coded against another")
            line += _parts_note(arr.chunks, arr.dtype)
            bound = cfg.get("max_error")
            if bound is not None:
                line += f" max_error {bound}"
            elif cfg.get("psnr") is not None:
                line += f" psnr {cfg['psnr']}"
        lines.append(line)
    return "\n".join(lines)


def _dates_per_chunk(model, chunks) -> int | None:
    """A temporal model's dates per chunk (its leading axes), None for image models or unknown ones."""
    from ..models import get_card

    try:
        temporal = get_card(str(model)).manifest.get("entropy_model") == "temporal"
    except TecZarrError:
        return None
    return math.prod(chunks[:-3]) if temporal else None


def _parts_note(chunks, dtype) -> str:
    """How the encoder cuts chunks of this shape (chunk format version 5), or nothing where it codes them whole."""
    from types import SimpleNamespace

    from ..pipeline.encode import parts_layout

    layout = parts_layout(SimpleNamespace(shape=tuple(chunks), dtype=dtype))
    if layout is None:
        return ""
    batch, h, w = layout.part
    return (f"; each chunk coded in {layout.count} parts of up to {batch} x {h} x {w} (images x rows x columns), "
            "one at a time (chunk format version 5)")


def _zarr_failure(store, e: Exception) -> CommandError:
    text = failures.one_line(e)
    if isinstance(e, TypeError) and "unexpected keyword argument" in text:
        return CommandError(f"Expected Zarr metadata this tec-zarr can read in {store}. Got {text} instead: the store "
                            "was written by a newer tec-zarr (pip install -U tec-zarr) or its metadata is damaged.")
    return CommandError(f"Expected a readable Zarr store at {store}. Got {type(e).__name__}: {text} instead: check that "
                        "the store is complete and was written by zarr-python 3 or 2.")


def cmd_info(args) -> int:
    found = require_input(args.store, (ZARR, TEC), "info", then_output=False)
    if found == TEC:
        from ..gdal.convert import describe

        print(describe(args.store))
    else:
        print(info_text(args.store))
    return 0


# -- tec decompress -------------------------------------------------------------------------------------------------


def cmd_decompress(args) -> int:
    from ..gdal import convert

    found = require_input(args.input, (TEC, ZARR), "decompress")
    if output_kind(args.output) != GEOTIFF:
        raise CommandError(f"Expected a GeoTIFF output (.tif). Got {args.output} instead: name the output "
                           "scene.tif (tec convert writes a Zarr store from a .tec file).")
    if found == TEC:
        _refuse(args, {"var": "--var", "time_index": "--time-index"}, "for a .tec input (it holds one image)")
    else:
        _refuse(args, {"level": "--level"}, "for a Zarr input (overview levels are a .tec file's)")
    require_output(args.output, overwrite=args.overwrite, inputs=[args.input])
    nodata = _nodata_arg(args.nodata)
    nodata = convert.FROM_INPUT if nodata is None else None if nodata == "none" else nodata
    with Progress("tec decompress", "rows", enabled=not args.quiet) as progress, replacing(args.output) as tmp:
        if found == TEC:
            convert.tec_to_geotiff(args.input, tmp, level=args.level or 0, nodata=nodata, progress=progress)
        else:
            try:
                convert.zarr_to_geotiff(args.input, tmp, variable=args.var, index=args.time_index,
                                        nodata=nodata, progress=progress)
            except TecZarrError:  # e.g. UnsupportedDtypeError, a TypeError that is not damaged metadata
                raise
            except TypeError as e:
                raise _zarr_failure(args.input, e) from None
    _say(args, f"decompressed {args.input} into {args.output} in {progress.seconds:.1f} s")
    return 0


# -- tec convert, to-vrt, models, demo ------------------------------------------------------------------------------


def cmd_convert(args) -> int:
    from ..gdal.convert import describe, tec_to_zarr, zarr_to_tec

    found = require_input(args.input, (TEC, ZARR), "convert")
    wanted = output_kind(args.output)
    if found == TEC and wanted == ZARR:
        _refuse(args, {"overviews": "--overviews"}, "for a Zarr output (a Zarr store has no overviews)")
        require_output(args.output, overwrite=args.overwrite, inputs=[args.input])
        start = time.perf_counter()
        with replacing(args.output) as tmp:
            tec_to_zarr(args.input, tmp, zarr_format=args.zarr_format or 3, variable=args.var or "reflectance")
        _say(args, f"converted {args.input} into {args.output} in {time.perf_counter() - start:.1f} s")
        _say(args, info_text(args.output))
    elif found == ZARR and wanted == TEC:
        _refuse(args, {"zarr_format": "--zarr-format"}, "for a .tec output")
        require_output(args.output, overwrite=args.overwrite, inputs=[args.input])
        start = time.perf_counter()
        levels = _overview_levels(args.overviews, _zarr_shape(args.input, args.var) if args.overviews else None)
        with replacing(args.output) as tmp:
            zarr_to_tec(args.input, tmp, variable=args.var, overviews=levels)
        _say(args, f"converted {args.input} into {args.output} in {time.perf_counter() - start:.1f} s")
        _say(args, describe(args.output))
    else:
        raise CommandError(f"Expected a .tec file on one side and a .zarr store on the other. Got {args.input} "
                           f"({found}) -> {args.output} instead: e.g. tec convert store.zarr scene.tec, or back.")
    return 0


def _zarr_shape(store, variable) -> tuple[int, ...]:
    import zarr

    from ..gdal.convert import _find_array

    return _find_array(zarr.open(store, mode="r"), variable)[1].shape


def cmd_to_vrt(args) -> int:
    from ..gdal import export_lines, sidecar

    require_input(args.input, (TEC,), "to-vrt", then_output=False)
    path = sidecar(args.input)
    print(f"# wrote {path}; for the GDAL command line and QGIS, set first:")
    print(export_lines())
    print(f"# then: gdalinfo {path}")
    return 0


def cmd_gdal_plugin(args) -> int:
    from ..gdal import plugin

    folder = plugin.build(args.dir, force=args.rebuild)
    env = plugin.environment(folder)
    print(f"# {folder / plugin.LIBRARY_NAME}: GDAL {plugin.gdal_version()} driver TEC and the Zarr decompressor "
          "tec_zarr.tec; for the GDAL programs and QGIS, set first:")
    print(plugin.export_lines(env))
    if "TEC_ZARR_PYTHONSO" not in env:
        print("# warning: this Python has no shared libpython, so the GDAL programs cannot run it (QGIS can)")
    print("# then: gdalinfo scene.tec; gdal_translate 'ZARR:\"store.zarr\":/reflectance:3' b04.tif; or qgis scene.tec")
    return 0


def cmd_models(args) -> int:
    from ..models import DEFAULT_MODEL, list_models

    if getattr(args, "models_command", None) == "import":
        return cmd_models_import(args)
    models = list_models()
    if args.json:
        print(json.dumps([m.manifest for m in models], indent=1))
        return 0
    for m in models:
        tr = m.manifest.get("training", {})
        default = ", the default model" if m.name == DEFAULT_MODEL else ""
        print(f"{m.name} v{m.version}  sha256 {m.sha256}{default}")
        stages = [(key, tr[key]) for key in ("steps", "hyperprior_steps", "context_steps", "synthesis_steps") if key in tr]
        trained = ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in stages) or "? steps"
        if "base_training" in tr:
            trained = f"{tr['base_training'].get('steps', '?')} steps ({m.manifest['base_model']['name']}) + {trained}"
        if "imported" in m.manifest:
            imp = m.manifest["imported"]
            trained = f"by {imp.get('from', '?')}, imported from {imp.get('checkpoint', '')} (lambda {imp.get('lambda')})"
        print(f"  {m.manifest.get('architecture', '')}; entropy model {m.manifest.get('entropy_model', 'factorized')}; "
              f"trained {trained}; bands {' '.join(m.bands)}")
        print(f"  validation ({', '.join(tr.get('validation_places') or [])}, never trained on):")
        print(f"  {'quality':>8} {'bpp':>8} {'PSNR dB':>8}")
        for q in m.qualities:
            v = q.get("validation", {})
            default = "  (default)" if q["quality"] == m.default_quality else ""
            print(f"  {q['quality']:>8} {v.get('bpp', float('nan')):>8.3f} {v.get('psnr', float('nan')):>8.2f}{default}")
    return 0


def cmd_models_import(args) -> int:
    from ..train import importer  # the train extra: torch and onnx

    start = time.time()
    folder = importer.import_checkpoint(args.checkpoint, args.name, config=args.config, into=args.into,
                                        data_root=args.data)
    manifest = json.loads((folder / "manifest.json").read_text())
    v = manifest["qualities"][0].get("validation", {})
    print(f"imported {args.checkpoint} as {args.name} into {folder} ({time.time() - start:.1f} s): "
          f"lambda {manifest['imported']['lambda']}, {v.get('bpp', float('nan')):.3f} bpp at "
          f"{v.get('psnr', float('nan')):.2f} dB on {manifest['training'].get('validation', 'validation images')}")
    if args.into is not None:
        print(f"# to use it, put its folder on the model path: export TEC_ZARR_MODEL_PATH={folder.parent}")
    print(f"# then: tec compress scene.tif scene.zarr --model {args.name}")
    return 0


def cmd_train(args) -> int:
    _size_arg(args.steps, "--steps", low=1)
    _size_arg(args.batch, "--batch", low=1, high=4096)
    _size_arg(args.crop, "--crop", low=16, high=2048, multiple=16)  # whole latents and hyperprior cells
    _size_arg(args.val_every, "--val-every", low=1)
    _size_arg(args.threads, "--threads", low=0, high=1024)
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        raise CommandError(f"Expected --minutes above 0. Got {args.minutes} instead: leave it out to stop at --steps.")
    if not (math.isfinite(args.val_fraction) and 0 < args.val_fraction < 1):
        raise CommandError(f"Expected --val-fraction between 0 and 1 (the share of places held out). Got "
                           f"{args.val_fraction} instead.")
    from ..train import user  # the train extra: torch and onnx

    start = time.time()
    folder = user.train(args)
    manifest = json.loads((folder / "manifest.json").read_text())
    print(f"trained {args.name} ({manifest['training']['steps']} steps, {time.time() - start:.0f} s) and installed "
          f"it into {folder}; validation ({manifest['training'].get('validation', '')}):")
    print(f"  {'quality':>8} {'bpp':>8} {'PSNR dB':>8}")
    for q in manifest["qualities"]:
        v = q.get("validation", {})
        print(f"  {q['quality']:>8} {v.get('bpp', float('nan')):>8.3f} {v.get('psnr', float('nan')):>8.2f}")
    if args.into is not None:
        print(f"# to use it, put its folder on the model path: export TEC_ZARR_MODEL_PATH={folder.parent}")
    print(f"# then: tec compress scene.tif scene.zarr --model {args.name}")
    return 0


def _size(n: int) -> str:
    """Bytes with three significant digits in the largest unit that keeps them below 1000 (a small store is not
    "0.00 MB", a large one not "1e+03 MB")."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{3 if n / scale < 999.5 else 4}g} {unit}"
    return f"{n} bytes"


def cmd_thin(args) -> int:
    from ..thinning import thin_store

    if not args.store.exists():
        raise CommandError(f"Expected a Zarr store or a .tec file at {args.store}. Got nothing there instead.")
    progress = Progress("thinning", "chunks")
    try:
        report = thin_store(args.store, args.quality, variables=args.variable, progress=progress)
    finally:
        progress.close()
    for name, why in report.left.items():
        print(f"left {name or '/'} as it was: {why}")
    for name, why in report.already.items():
        print(f"nothing to thin in {name or '/'}: {why}")
    if not report.thinned:
        if report.already:
            return 0  # a rerun, or a cron job over stores of mixed quality: nothing to do is not a failure
        raise CommandError(f"Expected TEC arrays to thin in {args.store}. Got none that can be thinned instead.")
    before, after = report.bytes_before, report.bytes_after
    if report.chunks == 0:
        print(f"nothing to thin in {', '.join(n or '/' for n in report.thinned)}: every chunk at or below quality "
              f"{args.quality} already")
        return 0
    print(f"thinned {', '.join(n or '/' for n in report.thinned)} to quality {args.quality}: {report.chunks} chunks "
          f"rewritten, {_size(before)} -> {_size(after)} of TEC chunks "
          f"({before / max(after, 1):.2f}x smaller) in {progress.seconds:.1f} s")
    if report.sidecar is not None:
        print(f"# rewrote its sidecar {report.sidecar} (the file has a new uuid)")
    return 0


def cmd_demo(args) -> int:
    import imagecodecs  # noqa: F401  (the JPEG 2000 baseline: fail now, not after the TEC half)

    from .demo import main as demo_main

    return demo_main(quality=args.quality)


# -- the parser -------------------------------------------------------------------------------------------------------


def _para(text: str) -> str:
    """A description paragraph, wrapped (the raw formatter keeps the epilogs' columns and wraps nothing)."""
    return textwrap.fill(text, 100)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one ``tec: error:`` line every other failure prints."""

    def error(self, message: str):
        self.exit(2, f"tec: error: {failures.one_line(message)}; '{self.prog} --help' lists the options.\n")


ENVIRONMENT = """\
environment:
  TEC_ZARR_THREADS    onnxruntime threads per network call (default 1: Zarr writes already run one chunk per
                      core through dask; raise it for .tec files, which encode one batch of tiles at a time)
  TEC_ZARR_PROVIDERS  onnxruntime execution providers, e.g. CUDAExecutionProvider,CPUExecutionProvider
  TEC_ZARR_DEBUG=1    print the traceback of an unexpected error"""

MAIN_EPILOG = f"""\
examples:
  tec compress scene.tif scene.zarr                  GeoTIFF -> Zarr store (xr.open_zarr reads it)
  tec compress scene.tif scene.tec --overviews 3     GeoTIFF -> .tec file for GDAL and QGIS
  tec compress scene.tif scene.zarr --max-error 5    every pixel within 5 DN of the input
  tec decompress scene.zarr scene-decoded.tif        back to a GeoTIFF
  tec info scene.zarr                                model, quality, sizes
  tec models                                         installed models with their measured bpp and PSNR
  tec models import CKPT.pt --name NAME              a TerraCodec FP checkpoint as an installed model
  tec train --data archive.zarr --name NAME          fine-tune on your own data and install the model
  tec <command> --help                               the options of one command

{ENVIRONMENT}"""


def _model_help() -> tuple[str, str, str]:
    """Help for --model, --quality of compress and --quality of the demo, from the installed model cards."""
    from ..models import DEFAULT_MODEL, get_card, list_models

    cards = list_models()
    card = get_card(DEFAULT_MODEL)
    levels = [q["quality"] for q in card.qualities]
    model = (f"installed model: {', '.join(c.name for c in cards)} (default {DEFAULT_MODEL}, among the fastest; the "
             "entropy models on a transform decode to its pixels from fewer bits, more slowly: tec-hp, tec-ctx and "
             "tec-tt on tec-fp's, tec-ctx-2 and tec-tt-2 on tec-fp-2's, tec-ctx-3 and tec-tt-3 on tec-fp-3's)")
    psnr = card.qualities[levels.index(card.default_quality)].get("validation", {}).get("psnr", float("nan"))
    quality = (f"quality level {min(levels)}..{max(levels)}, 0 = smallest file (default {card.default_quality}, "
               f"{psnr:.1f} dB on the validation images); 'tec models' lists every level's bpp and PSNR")
    return model, quality + "; with --max-error, the learned base under the coded residual (default 0)", quality


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """``tec train``'s options (run by tec_zarr.train.user, which needs the train extra)."""
    from ..models import DEFAULT_MODEL

    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="Zarr stores, GeoTIFFs or folders of GeoTIFFs (12 L2A bands in the model's order)")
    p.add_argument("--name", required=True, help="the new model's name (lowercase, not an installed model's)")
    p.add_argument("--var", help="the variable of the Zarr stores (default: their one 12-band variable)")
    p.add_argument("--base", default=DEFAULT_MODEL, help="shipped model to fine-tune, tec-fp-3, tec-fp-2 or tec-fp "
                   "(its checkpoint from checkpoints/ of a tec-zarr checkout), or 'none' to train from scratch "
                   f"(default {DEFAULT_MODEL}, the default model)")
    p.add_argument("--init", help="a tec-zarr training checkpoint to start from instead of --base (yours: "
                   "it is unpickled, so never pass one you did not make)")
    p.add_argument("--steps", type=int, default=2000, help="training steps of this run (default 2000)")
    p.add_argument("--minutes", type=float, help="also stop after this many minutes (validated, saved, exported)")
    p.add_argument("--batch", type=int, help="crops per step (default 8 on CPU, 32 on a GPU)")
    p.add_argument("--crop", type=int, help="crop size (default 96 on CPU, 128 on a GPU)")
    p.add_argument("--val-every", type=int, help="validate and save every this many steps (default: at the end)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of places held out (default 0.2)")
    p.add_argument("--augment", choices=("robust", "none"), default="robust",
                   help="robust: the burst trainer's augmentation (resampling kernels, gains, haze, crops); none: "
                        "flips and rotations only (default robust)")
    p.add_argument("--out", help="run folder: checkpoint.pt and log.jsonl (default <models>/.runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run folder's checkpoint")
    p.add_argument("--into", help="model folder to install into (default: first TEC_ZARR_MODEL_PATH folder, else "
                   "~/.local/share/tec-zarr/models)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto (a GPU when torch sees one), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of crops and augmentation (default 0)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="tec", description="Learned TerraCodec compression for Sentinel-2 in Zarr and .tec files.",
                epilog=MAIN_EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"tec-zarr {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    model_help, quality_help, demo_quality_help = _model_help()

    c = sub.add_parser(
        "compress", formatter_class=fmt,
        help="compress a GeoTIFF, Zarr or NetCDF input into a TEC Zarr store, or a GeoTIFF into a .tec file",
        description=_para("Compress a 12-band Sentinel-2 L2A input (GeoTIFF, Zarr or NetCDF) into a Zarr store (OUT ending "
                    "in .zarr), or a GeoTIFF into a .tec file (OUT ending in .tec). The lossy modes (--quality, "
                    "--psnr) bound the mean error, not each pixel: --max-error bounds every pixel."),
        epilog="""\
examples:
  tec compress scene.tif scene.zarr                     quality 2 of tec-fp-3, 256 x 256 chunks, Zarr format 3
  tec compress scene.tif scene.zarr --quality 4         larger file, higher PSNR
  tec compress scene.tif scene.zarr --max-error 10      every pixel within 10 DN (reflectance x 10000)
  tec compress scene.tif scene.zarr --lossless          bit-exact
  tec compress cube.zarr cube-tec.zarr --var refl --chunk 512 --zarr-format 2
  tec compress cube.zarr cube-tt.zarr --model tec-tt-3 --dates 4  4 dates per chunk, each coded against the one before
  tec compress scene.tif scene.tec --overviews 3 --tile 512

""" + ENVIRONMENT)
    c.add_argument("input", help="GeoTIFF (.tif), Zarr store or NetCDF (.nc) with one 12-band variable")
    c.add_argument("output", help="OUT.zarr (Zarr store) or OUT.tec (GeoTIFF input only)")
    c.add_argument("--var", help="variable to compress (default: the one 12-band variable); for a GeoTIFF input, the "
                                 "name of the variable written (default reflectance)")
    c.add_argument("--model", metavar="NAME", help=model_help)
    c.add_argument("--quality", type=int, metavar="Q", help=quality_help)
    c.add_argument("--nodata", metavar="VALUE", help="value stored exactly and read back as missing, or 'none' "
                                                      "(default: the input's NoData, else 0)")
    bound = c.add_mutually_exclusive_group()
    bound.add_argument("--max-error", type=float, metavar="E",
                       help="guarantee |x - decoded| <= E on every pixel, in the data's units (DN for uint16)")
    bound.add_argument("--lossless", action="store_true", help="bit-exact (the same as --max-error 0)")
    bound.add_argument("--psnr", type=float, metavar="DB", help="per chunk, the lowest quality reaching this PSNR "
                                                                "in dB (a mean: no per-pixel bound)")
    c.add_argument("--float-scale", type=float, metavar="S",
                   help="float32 input x S = DN (default 10000: reflectance; 1: DN stored as float)")
    c.add_argument("--dn-offset", type=int, metavar="N",
                   help="the DN of reflectance 0: 1000 for Sentinel-2 of processing baseline 04.00 and later (from "
                        "2022) stored as delivered; decoded values are unchanged, the bits fewer (default: what the "
                        "input's scale/offset or processing-baseline metadata state, else 0)")
    c.add_argument("--refine", type=int, metavar="N",
                   help="rounds of the encoder's symbol search (0-16): about 3-15 %% fewer bits at the same PSNR "
                        "for several times the encode time; reading is unchanged (lossy only; default 0)")
    c.add_argument("--chunk", type=int, metavar="N", help=f"Zarr output: spatial chunk size (default {DEFAULT_CHUNK})")
    c.add_argument("--dates", type=int, metavar="T",
                   help="Zarr output of a time series: dates per chunk along the leading axis (default 1); with "
                        "a temporal model (tec-tt, tec-tt-2, tec-tt-3) each later date in a chunk is coded against the one "
                        "before")
    c.add_argument("--zarr-format", type=int, choices=(2, 3), help="Zarr output: format 2 or 3 (default 3)")
    c.add_argument("--tile", type=int, metavar="T", help=f".tec output: tile size (default {DEFAULT_TILE})")
    c.add_argument("--overviews", type=int, metavar="N",
                   help=".tec output: overview levels 1..N, each downsampled 2**k (default 0)")
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    c.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    c.set_defaults(func=cmd_compress)

    x = sub.add_parser(
        "decompress", formatter_class=fmt, help="decode a .tec file or a TEC Zarr store into a GeoTIFF",
        description=_para("Decode a .tec file (one level) or a Zarr array (one date of a 4-D cube) into a tiled GeoTIFF "
                    "(DEFLATE with predictor), with its CRS, transform and band names. NoData is declared only "
                    "where the input declares it."),
        epilog="""\
examples:
  tec decompress scene.tec scene.tif
  tec decompress scene.tec preview.tif --level 2        overview level 2 (1/4 of the width)
  tec decompress scene.zarr scene.tif
  tec decompress cube.zarr date3.tif --time-index 3     one date of a (time, band, y, x) array

""" + ENVIRONMENT)
    x.add_argument("input", help=".tec file or Zarr store")
    x.add_argument("output", help="OUT.tif")
    x.add_argument("--level", type=int, metavar="K", help=".tec input: overview level to decode (default 0, full "
                                                          "resolution)")
    x.add_argument("--var", help="Zarr input: the array to decode (default: the one TEC array)")
    x.add_argument("--time-index", type=int, metavar="I", help="Zarr input of shape (N, 12, H, W): the index along "
                                                               "the first axis to decode")
    x.add_argument("--nodata", metavar="VALUE", help="NoData the GeoTIFF declares, or 'none' (default: the input's)")
    x.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    x.add_argument("--quiet", action="store_true", help="print nothing but errors")
    x.set_defaults(func=cmd_decompress)

    v = sub.add_parser(
        "convert", formatter_class=fmt,
        help="copy TEC chunks between a Zarr store and a .tec file, without re-encoding",
        description=_para("Copy the TEC chunks of a (12, H, W) Zarr array with square chunks into a .tec file, or a "
                    ".tec file's tiles into a Zarr store, byte for byte."),
        epilog="examples:\n  tec convert store.zarr scene.tec --overviews 2\n  tec convert scene.tec store.zarr "
               "--zarr-format 2")
    v.add_argument("input", help="Zarr store or .tec file")
    v.add_argument("output", help="OUT.tec or OUT.zarr")
    v.add_argument("--var", help="Zarr array (default: the one TEC array; 'reflectance' when writing Zarr)")
    v.add_argument("--zarr-format", type=int, choices=(2, 3), help="Zarr output: format 2 or 3 (default 3)")
    v.add_argument("--overviews", type=int, metavar="N", help=".tec output: overview levels 1..N (encoded anew)")
    v.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    v.add_argument("--quiet", action="store_true", help="print nothing but errors")
    v.set_defaults(func=cmd_convert)

    r = sub.add_parser("to-vrt", help="write X.tec.vrt for GDAL and QGIS, and print the environment it needs",
                       description="Write X.tec.vrt next to X.tec and print the export lines GDAL programs need.",
                       epilog='example:\n  eval "$(tec to-vrt scene.tec | grep ^export)"; gdalinfo scene.tec.vrt',
                       formatter_class=fmt)
    r.add_argument("input", help=".tec file")
    r.set_defaults(func=cmd_to_vrt)

    g = sub.add_parser(
        "gdal-plugin", formatter_class=fmt,
        help="build and install the GDAL plug-in (gdalinfo scene.tec, Zarr stores) and print its environment",
        description=_para("Build the GDAL plug-in gdal_TEC.so against the system GDAL (g++ and libgdal-dev), unless "
                          "an up-to-date one is installed, and print the export lines that make the GDAL programs "
                          "and QGIS read .tec files and TEC Zarr stores (format 2) directly. rasterio's own GDAL "
                          "cannot load it: use tec_zarr.gdal.open or tec to-vrt there."),
        epilog='example:\n  eval "$(tec gdal-plugin | grep ^export)"; gdalinfo scene.tec')
    g.add_argument("--dir", help="plug-in folder (default $TEC_ZARR_GDAL_PLUGIN_DIR or "
                                 "~/.local/share/tec-zarr/gdalplugins); a subfolder per GDAL version")
    g.add_argument("--rebuild", action="store_true", help="compile even if an up-to-date plug-in is installed")
    g.set_defaults(func=cmd_gdal_plugin)

    i = sub.add_parser("info", help="describe a Zarr store's arrays and TEC settings, or a .tec file",
                       description="Describe a Zarr store (arrays, stored size, ratio, model, quality) or a .tec file.",
                       epilog="examples:\n  tec info scene.zarr\n  tec info scene.tec", formatter_class=fmt)
    i.add_argument("store", help="Zarr store or .tec file")
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("models", help="list installed models with their measured rate-distortion",
                       description="List the installed models with the bpp and PSNR each quality level measured on "
                                   "validation images.")
    m.add_argument("--json", action="store_true", help="print the model manifests as JSON")
    m.set_defaults(func=cmd_models)
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", parser_class=_Parser,
                            help="import: convert a TerraCodec checkpoint (without ACTION: list the models)")
    mi = msub.add_parser(
        "import", help="convert a TerraCodec checkpoint into an installed model",
        description=_para("Convert a TerraCodec FP or ELIC checkpoint (a torch state dict; nothing but tensors is "
                          "unpickled) into a model folder: ONNX transforms, integer entropy tables (for ELIC also its "
                          "hyperprior and context networks in exact integers), TerraCodec's normalization, the "
                          "checkpoint's sha256 and lambda, and its measured bpp and PSNR. Needs the train extra. "
                          "TEC-TT and FlexTEC checkpoints are not imported (yet)."),
        epilog="example:\n  tec models import TerraCodec_v1_FP_S2L2A_lambda-10.pt --name tc-fp-10 "
               "--config config_lambda-10.yaml\n  tec compress scene.tif scene.zarr --model tc-fp-10",
        formatter_class=fmt)
    mi.add_argument("checkpoint", type=Path, help="the checkpoint (.pt state dict)")
    mi.add_argument("--name", required=True, help="the new model's name (lowercase, not a shipped model's)")
    mi.add_argument("--config", type=Path, help="its config YAML (architecture, in_channels, N, M, lambda)")
    mi.add_argument("--into", type=Path, help="model folder to write into (default: the first folder of "
                    "TEC_ZARR_MODEL_PATH, else ~/.local/share/tec-zarr/models, which is always searched)")
    mi.add_argument("--data", type=Path, help="shared data folder whose validation places measure the RD (default "
                    "../shared/data where present, else the bundled sample)")
    mi.set_defaults(func=cmd_models)

    t = sub.add_parser(
        "train", help="fine-tune a model on your own Zarr stores or GeoTIFFs and install it",
        description=_para("Fine-tune TEC-FP (from a shipped model's checkpoint, with robust augmentation) or train it "
                          "from scratch on your Zarr stores, GeoTIFFs or folders of GeoTIFFs; validation is held out "
                          "by place (or by tile for a single place). Resumable (--resume), on a GPU when torch sees "
                          "one. The result is exported with its measured bpp and PSNR into your model folder. Needs "
                          "the train extra."),
        epilog="examples:\n  tec train --data archive.zarr scenes/ --name my-fp --steps 2000\n"
               "  tec train --data archive.zarr scenes/ --name my-fp --steps 2000 --resume   (after an interruption)\n"
               "  tec compress scene.tif scene.zarr --model my-fp",
        formatter_class=fmt)
    _train_arguments(t)
    t.set_defaults(func=cmd_train)

    th = sub.add_parser(
        "thin", help="cut a Zarr store's or .tec file's TEC chunks to a lower quality, in place",
        description=_para("Rewrite every TEC chunk of a Zarr store (formats 2 and 3) or tile of a .tec file at a "
                          "lower quality of its model, without decoding the image: smaller, and readable as before "
                          "by xarray, zarr and GDAL. Each chunk is replaced atomically, so readers never see a "
                          "half-written one, and an interrupted run leaves a valid store (run it again to finish); "
                          "sharded arrays are rewritten shard by shard, and must not be read meanwhile (zarr reads "
                          "a shard's index and its chunks apart). "
                          "Thinning costs a few per cent more bits than coding at that quality directly; thinning "
                          "the same data again costs more, so thin from the quality the data was written at. "
                          "Error-bounded arrays (max_error) are left as they are."),
        epilog="examples:\n  tec thin archive.zarr --quality 1                  (every TEC array)\n"
               "  tec thin archive.zarr --quality 0 --variable 2019/refl\n  tec thin scene.tec --quality 2",
        formatter_class=fmt)
    th.add_argument("store", type=Path, help="a Zarr store directory or a .tec file, changed in place")
    th.add_argument("--quality", type=int, required=True, metavar="Q",
                    help="the level to thin to (chunks already at or below it stay as they are)")
    th.add_argument("--variable", action="append", metavar="PATH",
                    help="an array inside the store to thin (repeatable; default: every TEC array)")
    th.set_defaults(func=cmd_thin)
    add_inpaint_parser(sub)

    d = sub.add_parser("demo", help="compress the bundled Sentinel-2 sample with TEC and JPEG 2000 and compare",
                       description=_para("Compress the bundled Sentinel-2 sample (4 dates, 12 bands) with TEC and "
                                         "with JPEG 2000, read both back, and compare size, PSNR and maximum error "
                                         "at equal PSNR. Needs the bench extra (imagecodecs)."),
                       formatter_class=fmt)
    d.add_argument("--quality", type=int, metavar="Q", help=demo_quality_help)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with unwinding_on_termination(), warnings.catch_warnings():
            # rasterio's NotGeoreferencedWarning: a GeoTIFF without a CRS or transform is valid input and output.
            warnings.filterwarnings("ignore", message="Dataset has no geotransform")
            status = args.func(args)
            sys.stdout.flush()  # a closed pipe fails here, not at exit
            return status
    except BrokenPipeError:  # tec info x.zarr | head: the reader has gone, which is no error
        # Python's recommended handling: point stdout at devnull so that flushing it at exit does not fail again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("tec: interrupted", file=sys.stderr)
        return 130
    except Terminated as t:  # SIGTERM, SIGHUP: the temporaries are gone; exit as the shell reports such a death
        with contextlib.suppress(OSError, ValueError):  # after SIGHUP the terminal may be gone
            print(f"tec: terminated by {t.name}", file=sys.stderr)
        return 128 + t.signum
    except Exception as e:
        if failures.debug():
            raise
        print(f"tec: error: {failures.message(e, args.command)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
