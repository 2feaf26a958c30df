"""Build the xarray ``encoding`` dict that stores a dataset's Sentinel-2 variables with TEC."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..bands import band_name, band_order
from ..dn_offset import stated_dn_offset
from ..errors import BoundRewriteWarning, EdgePaddingWarning, InvalidInputError, TecZarrError
from ..parsing import declared_nodata, is_real, nodata_allowed, plain_number
from .config import CodecConfig, parse_model


def zarr_encoding(
    ds, *, zarr_format: int = 3, variables: list[str] | None = None, chunks: dict[str, int] | None = None,
    shards: dict[str, int] | None = None, **codec_kwargs: Any
) -> dict[str, dict]:
    """``encoding`` for ``ds.to_zarr(..., zarr_format=zarr_format, encoding=...)`` (``ds`` a Dataset, or a
    DataArray such as stackstac returns, for its own ``to_zarr``).

    Picks every variable whose axis -3 has as many entries as the model has bands (or those named in
    ``variables``) and gives it the TEC codec for that format: ``compressors`` for format 2, ``serializer``
    (with ``compressors=None``) for format 3. Note that xarray 2026.9 rejects the old singular ``"compressor"``.
    ``chunks`` (dim -> size) sets the Zarr chunk shape; the band axis is always one chunk. A dask-backed variable
    keeps its dask chunks along the dims ``chunks`` does not name (xarray writes dask chunks whole), and a ``chunks``
    entry that would split them is refused with the ``ds.chunk`` call that fixes it. An in-memory variable's dims
    that ``chunks`` does not name are whole; without ``chunks``: one entry along the leading axes (a date), rows and
    columns whole up to :data:`DEFAULT_TILE`, else in about equal tiles of at most that (:func:`default_tile`;
    zarr's own guess would split the bands).
    Format 2 chunks are at most :func:`~tec_zarr.pipeline.decode.max_chunk_elements` elements: its readers decode a
    chunk without its shape, and refuse larger ones.

    ``shards`` (dim -> size, format 3 only) stores many chunks in one object (zarr's sharding, with TEC coding each
    inner chunk): each named dim's shard a multiple of its chunk (a size reaching the axis: the whole axis), the
    others one chunk; a dask-backed variable's chunks must then hold whole shards (xarray writes each dask chunk
    alone).

    Without a ``dn_offset`` argument, each variable gets the offset its metadata states
    (:func:`tec_zarr.dn_offset.stated_dn_offset`: Sentinel-2 baseline 04.00 and later, 1000), else 0. Without a
    ``nodata`` argument, each variable's declared missing value (``nodata``, ``_FillValue``, ``missing_value``) is
    its nodata, stored exactly, else 0.
    """
    ds = as_dataset(ds)
    card = parse_model(codec_kwargs.get("model"))
    nbands = len(card.bands)
    if zarr_format not in (2, 3):
        raise InvalidInputError(f"Expected zarr_format 2 or 3. Got {zarr_format!r} instead.")
    shards = parse_shards(shards, ds)
    chunks = parse_chunks(chunks, ds)
    if shards and zarr_format != 3:
        raise InvalidInputError(f"Expected zarr_format=3 with shards (format 2 has no sharding). Got zarr_format "
                                f"{zarr_format} instead.")
    params = CodecConfig.create(**codec_kwargs, allow_fill_value=zarr_format == 3).chunk_params()
    names = list(variables) if variables is not None else [
        name for name, var in ds.data_vars.items()
        if var.ndim >= 3 and var.shape[-3] == nbands and _not_bands(name, var) is None
    ]
    for name in names if variables is not None else ds.data_vars:
        check_band_axis(name, ds[name])
        if variables is not None and (why := _not_bands(name, ds[name])):  # auto-selection skipped these already
            raise InvalidInputError(
                f"Expected variable {name!r} to hold the model's {nbands} bands on axis -3 (dims (..., band, y, "
                f"x)). Got {why} instead: {_stacking_hint(ds, card.bands)}")
    if not names:
        for name, var in ds.data_vars.items():  # bands beside the model's (a STAC cube's SCL, AOT, visual...)
            named_band_order(var, card.bands, f"variable {name!r}")
        raise InvalidInputError(
            f"Expected a variable with the model's {nbands} bands on axis -3. Got none among "
            f"{ {name: var.dims for name, var in ds.data_vars.items()} } instead: {_stacking_hint(ds, card.bands)}"
        )
    encoding: dict[str, dict] = {}
    for name in names:
        var = ds[name]
        if var.ndim < 3 or var.shape[-3] != nbands:
            named_band_order(var, card.bands, f"variable {name!r}")  # says what is wrong with named bands
            raise InvalidInputError(
                f"Expected variable {name!r} to have {nbands} bands on axis -3. Got dims {var.dims} shape {var.shape} instead."
            )
        band_dim = var.dims[-3]
        if chunks and chunks.get(band_dim, nbands) != nbands:
            raise InvalidInputError(
                f"Expected chunks[{band_dim!r}] to hold all {nbands} bands of {name!r} (a chunk codes every band "
                f"together). Got {chunks[band_dim]} instead: leave {band_dim!r} out of chunks.")
        stored, by_name = stored_band_names(var)
        order = None if stored is None else band_order(stored, card.bands, source=f"variable {name!r}")
        if order is not None and order != list(range(nbands)):
            fix = (f"ds = ds.sel({band_dim}={[str(stored[i]) for i in order]})" if by_name
                   else f"ds = ds.isel({band_dim}={order})")
            raise InvalidInputError(
                f"Expected the bands of {name!r} in the model's order {' '.join(card.bands)}. Got "
                f"{' '.join(map(str, stored))} instead: {fix}."
            )
        kwargs = dict(codec_kwargs)
        if "dn_offset" not in kwargs:
            kwargs["dn_offset"] = stated_dn_offset(var, params["float_scale"]) or 0
        if "nodata" not in kwargs:
            kwargs["nodata"] = variable_nodata(name, var)
        elif is_real(plain_number(kwargs["nodata"])) and (
                allowed := nodata_allowed(kwargs["nodata"], var.dtype)) is not None:
            raise InvalidInputError(f"Expected nodata for variable {name!r} to be {allowed} for its dtype "
                                    f"{var.dtype}. Got {kwargs['nodata']} instead: no element could equal it.")
        check_values(name, var, {**params, "nodata": kwargs["nodata"]})  # the fill value it declares is nodata
        if zarr_format == 2:
            from .zarr2 import TEC

            enc: dict[str, Any] = {"compressors": TEC(**kwargs), "filters": None}
            if not var.dtype.isnative:  # big-endian data (netCDF 3, FITS): format 2 chunks are native
                enc["dtype"] = var.dtype.newbyteorder("=")
        else:
            from .zarr3 import TEC

            enc = {"serializer": TEC(**kwargs), "compressors": None, "filters": None}
        if var.encoding.get("_FillValue") is not None and "_FillValue" not in var.attrs:
            enc["_FillValue"] = var.encoding["_FillValue"]  # this encoding replaces the variable's: keep its fill
        elif zarr_format == 3 and _is_nodata(var.encoding.get("fill_value"), kwargs["nodata"], var.dtype):
            enc["fill_value"] = var.encoding["fill_value"]  # a store's own fill (this encoding replaces it)
        elif zarr_format == 3 and _pads_with_data(kwargs["nodata"], var):
            # zarr pads edge chunks with its fill value and skips chunks that hold nothing else: as nodata, the
            # padding costs no bits and all-nodata chunks are not written (format 2 would need _FillValue, which
            # xarray reads back as NaN: left to the user, see the README)
            enc["fill_value"] = np.asarray(kwargs["nodata"]).astype(var.dtype).item()
        dask_chunks = dict(zip(var.dims, var.chunks)) if var.chunks is not None else None
        enc["chunks"] = tuple(
            nbands if i == var.ndim - 3 else _chunk(name, dim, size, (chunks or {}).get(dim), dask_chunks,
                                                    spatial=i >= var.ndim - 2, whole=chunks is not None)
            for i, (dim, size) in enumerate(zip(var.dims, var.shape))
        )
        if dask_chunks and len(dask_chunks[band_dim]) > 1:
            raise InvalidInputError(
                f"Expected variable {name!r} to hold all {nbands} bands in one dask chunk. Got chunks "
                f"{dask_chunks[band_dim]} along {band_dim!r} instead: ds = ds.chunk({{{band_dim!r}: -1}})."
            )
        _warn_rewrites(name, var, enc["chunks"], params)
        if zarr_format == 2 and "_FillValue" not in enc:
            _warn_padding(name, var, enc["chunks"], kwargs["nodata"])
        if zarr_format == 2:
            from .zarr2 import check_format2_chunk

            check_format2_chunk(enc["chunks"], f"variable {name!r}")
        if shards:
            enc["shards"] = shard_shape(name, var, enc["chunks"], shards, dask_chunks, chunks)
        encoding[name] = enc
    return encoding


def _warn_rewrites(name: str, var, chunks: tuple[int, ...], params: dict) -> None:
    """Warn where the ``max_error`` bound holds for whole-chunk writes only: above LATTICE_MAX_DN (in DN) with more
    than one date per chunk, appending dates rewrites a chunk from its decoded values (README, error-bounded
    chunks)."""
    from ..residual.bound import LATTICE_MAX_DN

    bound = params["max_error"]
    if bound is None or math.prod(chunks[:-3]) <= 1:
        return
    dn = float(bound) * float(params["float_scale"]) if var.dtype.kind == "f" else math.floor(bound)  # as coded
    if dn > LATTICE_MAX_DN:
        warnings.warn(
            f"max_error={bound:g} of {name!r} is above {LATTICE_MAX_DN} DN, with {math.prod(chunks[:-3])} dates per "
            f"chunk: dates appended into a chunk that is not full (and region= writes of part of a chunk) rewrite it "
            f"from its decoded values, and each rewrite may move a value by up to another {bound:g}. Write whole "
            f"chunks, or keep max_error <= {LATTICE_MAX_DN} DN, whose chunks code to the same values again.",
            BoundRewriteWarning, stacklevel=3)


def _warn_padding(name: str, var, chunks: tuple[int, ...], nodata) -> None:
    """Warn where format 2 pads partial edge chunks of integer data with 0 beside a nonzero nodata: coded as image
    (QA: 2.2x the bytes of format 3 on such chunks, and their pixels up to 1.3 dB worse)."""
    partial = any(size % chunk for size, chunk in zip(var.shape, chunks))  # dates too: a time chunk not full
    if partial and var.dtype.kind in "iu" and _pads_with_data(nodata, var):
        warnings.warn(
            f"Zarr format 2 pads the edge chunks of {name!r} with 0, not its nodata {plain_number(nodata)}: the "
            f"padding is coded as image, which costs bits and the edge pixels' quality. Use zarr_format=3 (its fill "
            f"value is then the nodata), or chunks that divide {tuple(var.shape)}.", EdgePaddingWarning,
            stacklevel=3)


# The variable name DataArray.to_zarr stores an unnamed array under (xarray.backends.api.DATAARRAY_VARIABLE).
DATAARRAY_VARIABLE = "__xarray_dataarray_variable__"


def as_dataset(obj):
    """A Dataset as given; a DataArray (what stackstac and odc-stac return) as the Dataset ``DataArray.to_zarr``
    writes, so that ``da.to_zarr(store, encoding=zarr_encoding(da))`` finds its variable's encoding."""
    import xarray as xr

    if isinstance(obj, xr.Dataset):
        return obj
    if isinstance(obj, xr.DataArray):
        named = obj.name is not None and obj.name not in obj.coords and obj.name not in obj.dims
        return obj.to_dataset(name=obj.name if named else DATAARRAY_VARIABLE)
    raise InvalidInputError(f"Expected an xarray Dataset or DataArray. Got {type(obj).__name__} instead.")


def _is_nodata(fill, nodata, dtype) -> bool:
    """Whether a store's fill value pads with what the codec stores as missing: its nodata, or NaN in float data."""
    fill = plain_number(fill)
    if isinstance(fill, float) and fill != fill:
        return np.dtype(dtype).kind == "f"
    return is_real(fill) and fill == nodata


def _pads_with_data(nodata, var) -> bool:
    """Whether the fill value zarr would take (0 for integers; xarray's NaN for floats, stored as missing) pads
    ``var``'s edge chunks with something other than a nonzero ``nodata`` it can hold."""
    nodata = plain_number(nodata)
    if not is_real(nodata) or nodata == 0 or nodata_allowed(nodata, var.dtype) is not None:
        return False
    return "_FillValue" not in var.attrs


def variable_nodata(name: str, var):
    """The codec's nodata for a variable: the missing value it declares (:func:`~tec_zarr.parsing.declared_nodata`),
    stored exactly, else the codec's default 0 (also for a declared NaN, which float data store as missing anyway:
    xarray declares it for every float variable it reads)."""
    declared = declared_nodata(var.attrs, var.encoding)
    if declared is None or declared != declared:  # NaN is stored as missing anyway: zeros stay nodata, as before
        return 0
    allowed = nodata_allowed(declared, var.dtype)
    if allowed is not None:
        raise InvalidInputError(f"Expected the missing value of variable {name!r} to be {allowed} for its dtype "
                                f"{var.dtype}. Got {declared} instead: fix its _FillValue / nodata attribute, or "
                                "pass nodata=.")
    return int(declared) if var.dtype.kind in "iu" else declared


def parse_chunks(chunks, ds) -> dict[str, int] | None:
    """``chunks`` (dim -> positive int, or -1 / None for the whole axis as in dask and xarray), its dims among
    the dataset's; -1 and None become the dim's size."""
    return None if chunks is None else _axis_sizes("chunks", chunks, ds)


def parse_shards(shards, ds) -> dict[str, int]:
    """``shards`` (dim -> positive int, or -1 / None for the whole axis, as ``chunks`` takes), its dims among the
    dataset's; {} for None."""
    return {} if shards is None else _axis_sizes("shards", shards, ds)


def _axis_sizes(what: str, sizes, ds) -> dict[str, int]:
    """A dim -> size dict of the dataset's dims: positive ints, or -1 / None for the dim's whole size."""
    if not isinstance(sizes, dict):
        raise InvalidInputError(f"Expected {what} as a dict dim -> size. Got {sizes!r} instead.")
    unknown = sorted(set(sizes) - set(ds.dims), key=str)
    if unknown:
        raise InvalidInputError(f"Expected {what} along dims of the dataset {tuple(ds.dims)}. Got {unknown} instead.")
    out = {}
    for dim, size in sizes.items():
        if size is None or (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size == -1):
            out[dim] = int(ds.sizes[dim])
        elif isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise InvalidInputError(f"Expected a positive integer {what}[{dim!r}], or -1 for the whole axis. Got "
                                    f"{size!r} instead.")
        else:
            out[dim] = int(size)
    return out


def shard_shape(name: str, var, chunk: tuple[int, ...], shards: dict[str, int], dask_chunks: dict | None,
                chunks_asked: dict | None) -> tuple[int, ...]:
    """The shard of ``var`` from ``shards`` (dim -> size, dims it lacks ignored): along each named dim the whole
    axis where the size reaches it (rounded up to whole chunks), else a multiple of the chunk; one chunk along the
    others. Refused: a shard along the band dim (its chunk holds every band), one not a multiple of the chunk, and
    dask chunks that would write part of a shard."""
    shape = []
    for i, (dim, size, c) in enumerate(zip(var.dims, var.shape, chunk)):
        asked = shards.get(dim)
        if asked is None:
            shape.append(c)
            continue
        if i == var.ndim - 3:
            raise InvalidInputError(f"Expected no shard along the band dim {dim!r} of {name!r} (its chunk holds every "
                                    f"band). Got shards[{dim!r}] = {asked} instead.")
        if asked > size and i < var.ndim - 3:
            shard = asked  # a leading axis keeps what was asked: a store begun with fewer dates is appended to
        else:
            shard = -(-max(size, 1) // c) * c if asked >= size else asked
        if shard % c:
            fits = sorted({max(c, shard // c * c), (shard // c + 1) * c})
            raise InvalidInputError(f"Expected shards[{dim!r}] of {name!r} to be a multiple of its chunk {c}. Got "
                                    f"{asked} instead: {' or '.join(map(str, fits))}.")
        shape.append(shard)
        blocks = dask_chunks[dim] if dask_chunks else ()
        if any(b % shard for b in blocks[:-1]):
            keep = "" if (chunks_asked or {}).get(dim) else f", and zarr_encoding(..., chunks={{{dim!r}: {c}}})"
            raise InvalidInputError(
                f"Expected the dask chunks of {name!r} along {dim!r} to hold whole shards of {shard}. Got "
                f"{_some(blocks)} instead: ds = ds.chunk({{{dim!r}: {shard}}}){keep}.")
    return tuple(shape)


def _some(blocks: tuple[int, ...]) -> str:
    """Dask block sizes for a message: the first three."""
    return str(tuple(blocks[:3]))[:-1] + (", ...)" if len(blocks) > 3 else ")")


def check_band_axis(name: str, var) -> None:
    """Refuse a variable whose bands, named by a coordinate, lie on another axis than -3 (``to_array`` puts them
    first): coded as they are, another axis (twelve dates, say) would pass for the bands."""
    if var.ndim < 3:
        return
    for i, dim in enumerate(var.dims):
        if i != var.ndim - 3 and dim in var.coords and any(band_name(v) is not None for v in var[dim].values):
            others = [d for d in var.dims if d != dim]  # the bands go just before the last two of the others
            order = [*others[:-2], dim, *others[-2:]]
            raise InvalidInputError(
                f"Expected the bands of {name!r} on axis -3 (dims (..., band, y, x)). Got them on axis {i} of "
                f"{var.dims} instead: ds = ds.transpose{tuple(order)}."
            )


# Dim names cube builders give the time axis (stackstac, odc-stac, xarray's CF decoding).
TIME_DIMS = ("time", "t", "date", "datetime")


def _not_bands(name: str, var) -> str | None:
    """Why axis -3 of ``var`` cannot be its bands, whatever its length: a dim named like time or with a datetime
    coordinate (twelve dates would pass for twelve bands), or a variable named as one band (odc-stac's B02 with
    dims (time, y, x)); None where it may be."""
    if var.ndim < 3:
        return None
    dim = var.dims[-3]
    if dim in TIME_DIMS or (dim in var.coords and np.issubdtype(var[dim].dtype, np.datetime64)):
        return f"dim {dim!r} (dates) on axis -3"
    if band_name(name) is not None:
        return f"a variable named as one band, dims {var.dims}"
    return None


def _stacking_hint(ds, bands: tuple[str, ...]) -> str:
    """What to do with a dataset holding no band axis: where its variables are the bands, one per variable (as
    odc-stac loads them), the code that stacks them in the model's order; else the variables=[...] option."""
    by_band = {band_name(name): name for name, var in ds.data_vars.items() if var.ndim >= 2}
    if all(b in by_band for b in bands):
        names = [by_band[b] for b in bands]
        dims = (*ds[names[0]].dims[:-2], "band", *ds[names[0]].dims[-2:])
        nodata = {plain_number(declared_nodata(ds[n].attrs, ds[n].encoding)) for n in names} - {None}
        keep = (f".assign_attrs(nodata={nodata.pop()!r})" if len(nodata) == 1 else "")  # to_array drops attrs
        others = [n for n in ds.data_vars if n not in names]
        merge = f".merge(ds[{others}])" if others else ""  # to_dataset keeps the stacked bands alone
        return (f"its variables are the bands, one each (as odc-stac loads them): stack them on a band axis, "
                f"ds = ds[{names}].to_array('band').transpose{dims}{keep}.to_dataset(name='reflectance'){merge}.")
    l1c = [name for name, var in ds.data_vars.items() if var.ndim >= 3 and var.shape[-3] == len(bands) + 1]
    if l1c:  # unnamed bands, one more than the model's: Sentinel-2 L1C's 13, B10 (cirrus) 11th
        keep = [i for i in range(len(bands) + 1) if i != L1C_B10_INDEX]
        return (f"{l1c[0]!r} has {len(bands) + 1} bands on axis -3, as a Sentinel-2 L1C product (with B10): if so, "
                f"drop B10, ds = ds.isel({ds[l1c[0]].dims[-3]}={keep}) (the models were trained on L2A reflectance), "
                f"or give the bands a coordinate with their names.")
    return "name it with variables=[...]."


# Where B10 sits among an L1C product's 13 bands (B01 ... B09, B10, B11, B12).
L1C_B10_INDEX = 10


# Values sampled along each spatial axis when zarr_encoding checks a float variable's range: DN mistaken for
# reflectance are so everywhere, and a lazily opened file is read no further than the sample.
RANGE_SAMPLES = 512


def check_values(name: str, var, params: dict) -> None:
    """Before anything is written: the dtype the codec takes, and for lossy coding of float data not held by dask
    the range a float_scale gives DN in, on a sample of the first image (every chunk is checked whole as it is
    encoded)."""
    from ..pipeline.prepare import check_lossy_range, parse_dtype

    try:
        dtype = parse_dtype(var.dtype)
    except TecZarrError as e:
        e.add_note(f"(variable {name!r})")
        raise
    if dtype.kind != "f" or params["max_error"] is not None or var.chunks is not None:
        return
    ydim, xdim = var.dims[-2:]
    sample = var.isel({d: 0 for d in var.dims[:-3]}).isel(
        {ydim: slice(None, None, max(1, var.sizes[ydim] // RANGE_SAMPLES)),
         xdim: slice(None, None, max(1, var.sizes[xdim] // RANGE_SAMPLES))})
    values = np.asarray(sample.values)
    valid = ~np.isnan(values)
    if params["nodata"] is not None:
        valid &= values != params["nodata"]
    try:
        check_lossy_range(values, valid, params["float_scale"])
    except TecZarrError as e:
        e.add_note(f"(variable {name!r}: e.g. tec_zarr.zarr_encoding(ds, float_scale=1, ...))")
        raise


def named_band_order(var, bands: tuple[str, ...], source: str) -> list[int] | None:
    """:func:`~tec_zarr.bands.band_order` of a variable's named bands (:func:`stored_band_names`); None where it
    has no axis -3 or its bands are not named."""
    stored = stored_band_names(var)[0] if var.ndim >= 3 else None
    return None if stored is None else band_order(stored, bands, source=source)


def stored_band_names(var) -> tuple[list | None, bool]:
    """The names of a variable's bands (axis -3) and whether they are its coordinate there (``ds.sel`` picks them
    by name): the coordinate where it names bands, else the band descriptions rioxarray keeps in ``long_name`` (its
    band coordinate holds the numbers 1..n); (None, False) when neither names a band."""
    dim = var.dims[-3]
    if dim in var.coords and any(band_name(v) is not None for v in var[dim].values):
        return list(var[dim].values), True
    described = var.attrs.get("long_name")
    if isinstance(described, (list, tuple)) and len(described) == var.shape[-3]:
        return list(described), False
    return None, False


# Zarr chunks along y and x where neither ``chunks`` nor dask set them: the whole axis up to DEFAULT_TILE pixels,
# else the axis cut into about equal tiles of at most DEFAULT_TILE, each rounded up to a multiple of TILE_MULTIPLE
# (the largest padding multiple of the shipped models). A chunk is coded whole, and the context models need about 85
# times its bytes to encode it (benchmarks/memory.py): 0.5 GB for a 12-band 512 x 512 uint16 chunk, 2 GB at
# 1024 x 1024, per thread. Four tiles of 512 instead of one of 1024 cost 0.02 % (tec-fp) to 0.26 % (tec-ctx) more
# bits (measured at quality 2 on a 1024 x 1024 crop of the desert tile).
DEFAULT_TILE = 512
TILE_MULTIPLE = 16


def default_tile(size: int) -> int:
    """The default Zarr chunk along a spatial axis of ``size`` pixels."""
    if size <= DEFAULT_TILE:
        return size
    tiles = -(-size // DEFAULT_TILE)
    even = -(-size // tiles)
    return min(DEFAULT_TILE, -(-even // TILE_MULTIPLE) * TILE_MULTIPLE)


def _chunk(name: str, dim: str, size: int, asked: int | None, dask_chunks: dict | None, *, spatial: bool,
           whole: bool) -> int:
    """The Zarr chunk along ``dim``: as asked, else the dask chunk, else the whole axis where ``chunks`` names
    other dims (``whole``), else the default (one entry along a leading axis, :func:`default_tile` along y and x);
    checked against dask. Never 0 (zarr cannot append to an array of 0-sized chunks). Along y and x a chunk asked
    larger than the axis is the axis (a smaller chunk pads less); along a leading axis it stays as asked: a store
    begun with fewer dates than ``{"time": T}`` is appended to, and a temporal model codes dates against earlier
    ones only inside a chunk."""
    if dask_chunks is None:
        if asked:
            return max(1, int(min(asked, size) if spatial else asked))
        if whole:
            return max(1, size)
        return max(1, default_tile(size)) if spatial else 1
    blocks = dask_chunks[dim]
    chunk = max(1, int((min(asked, size) if spatial else asked) if asked else blocks[0]))
    if any(b % chunk for b in blocks[:-1]):  # xarray writes each dask chunk whole: it must hold whole zarr chunks
        raise InvalidInputError(
            f"Expected the dask chunks of {name!r} along {dim!r} to be multiples of the Zarr chunk {chunk}. Got "
            f"{_some(blocks)} instead: ds = ds.chunk({{{dim!r}: {chunk}}}) before writing."
        )
    return chunk
