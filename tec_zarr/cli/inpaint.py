"""``tec inpaint IN.zarr OUT.zarr --mask M | --mask-scl SCL``: a cube's cloudy pixels filled by
:func:`tec_zarr.inpainting.inpaint`, written to a new Zarr store.

The mask comes from a Zarr store or array, a ``.npy`` file or a GeoTIFF (one band per date), nonzero = cloud; or
from a scene-classification (SCL) band in any of those, its ``--scl-classes`` (default 3, 8, 9, 10: cloud shadow,
medium and high probability cloud, thin cirrus) = cloud. Pixels missing in the input (NaN, or every band equal to
the variable's ``nodata`` / ``_FillValue``) are filled too. The cube is read whole; the output is written to a
temporary sibling and renamed into place (:func:`~.inputs.replacing`), so no half-written store carries its name.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .failures import CommandError
from .inputs import GEOTIFF, ZARR, open_dataset, replacing, require_input, require_output

SCL_CLOUDS = (3, 8, 9, 10)
NPY = ".npy file"
OUTPUT_CHUNK = 256


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``inpaint`` to the ``tec`` subcommands; returns its parser."""
    from ..inpainting import DEFAULT_MODEL, METHODS

    p = subparsers.add_parser(
        "inpaint", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="fill the cloudy pixels of a Zarr cube from its other dates",
        description="Fill the pixels of a (time, band, y, x) Zarr cube under a cloud mask from the dates around "
                    "them and their clear surroundings (tec_zarr.inpaint: the codec's analysis and synthesis "
                    "transforms and a pixel regression); clear pixels are copied exactly. Writes a new Zarr store.",
        epilog="""\
examples:
  tec inpaint cube.zarr filled.zarr --mask-scl scl.zarr           SCL classes 3, 8, 9, 10 are cloud
  tec inpaint cube.zarr filled.zarr --mask clouds.npy             bool or 0/1, (time, y, x)
  tec inpaint cube.zarr filled.zarr --mask clouds.tif             one band per date, nonzero = cloud
  tec inpaint cube.zarr filled.zarr --mask-scl scl.zarr --scl-classes 8,9 --method latent
""")
    p.add_argument("input", help="Zarr store with one (time, band, y, x) 12-band variable")
    p.add_argument("output", help="OUT.zarr: a new Zarr store (format 3) with the filled variable")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--mask", metavar="PATH", help="cloud mask (Zarr, .npy or GeoTIFF): nonzero = cloud")
    source.add_argument("--mask-scl", metavar="PATH", help="scene classification (Zarr, .npy or GeoTIFF)")
    p.add_argument("--scl-classes", metavar="LIST", default=",".join(map(str, SCL_CLOUDS)),
                   help="SCL classes that are cloud, comma-separated (default 3,8,9,10)")
    p.add_argument("--var", help="variable to fill (default: the one 12-band variable)")
    p.add_argument("--mask-var", metavar="NAME", help="variable of a Zarr mask store (default: its one array)")
    p.add_argument("--method", choices=METHODS, default="hybrid", help="hybrid (default), latent or pixel")
    p.add_argument("--model", metavar="NAME", default=DEFAULT_MODEL,
                   help=f"model whose transforms are used (default {DEFAULT_MODEL})")
    p.add_argument("--dn-offset", type=int, metavar="N",
                   help="the DN of reflectance 0: 1000 for Sentinel-2 of processing baseline 04.00 and later stored "
                        "as delivered (default: what the variable's metadata states, else 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=cmd_inpaint)
    return p


def cmd_inpaint(args) -> int:
    from ..dn_offset import stated_dn_offset
    from ..inpainting import inpaint

    started = time.perf_counter()
    classes = parse_classes(args.scl_classes)
    require_input(args.input, (ZARR,), "inpaint")
    mask_path = args.mask if args.mask is not None else args.mask_scl
    if Path(args.output).suffix.lower() != ".zarr":
        raise CommandError(f"Expected an output ending in .zarr. Got {args.output} instead: name it OUT.zarr.")
    require_output(args.output, overwrite=args.overwrite, inputs=(args.input, mask_path))
    ds, name = open_dataset(args.input, ZARR, args.var, OUTPUT_CHUNK)
    variable = ds[name]
    if variable.ndim != 4:
        raise CommandError(f"Expected a (time, band, y, x) variable {name!r}. Got dims {variable.dims} instead.")
    cube = np.ascontiguousarray(variable.values)
    t, _, h, w = cube.shape
    raw = read_mask(mask_path, args.mask_var, (t, h, w))
    clouds = scl_clouds(raw, classes) if args.mask_scl is not None else raw != 0
    clouds |= missing(cube, variable.attrs)
    offset = args.dn_offset if args.dn_offset is not None else stated_dn_offset(variable) or 0
    filled = inpaint(cube, clouds, model=args.model, method=args.method, dn_offset=offset)
    out = ds[[name]].copy()
    out[name] = variable.copy(data=filled)
    for v in out.variables.values():
        v.encoding = {}
    chunks = (1, cube.shape[1], min(h, OUTPUT_CHUNK), min(w, OUTPUT_CHUNK))
    with replacing(args.output) as tmp:
        out.to_zarr(tmp, zarr_format=3, consolidated=True, encoding={name: {"chunks": chunks}})
    if not args.quiet:
        print(f"{args.output}: filled {int(clouds.sum())} of {clouds.size} pixels ({clouds.mean():.1%}) of {t} "
              f"dates with {args.method}, {time.perf_counter() - started:.1f} s")
    return 0


def parse_classes(text: str) -> tuple[int, ...]:
    try:
        classes = tuple(int(c) for c in text.split(","))
    except ValueError:
        classes = ()
    if not classes or not all(0 <= c <= 255 for c in classes):
        raise CommandError(f"Expected --scl-classes as comma-separated integers in 0..255. Got {text!r} instead.")
    return classes


def scl_clouds(scl: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    if scl.dtype.kind not in "iu":
        raise CommandError(f"Expected an integer scene-classification band. Got {scl.dtype} instead: pass a cloud "
                           "mask with --mask.")
    return np.isin(scl, classes)


def missing(cube: np.ndarray, attrs) -> np.ndarray:
    """(T, H, W): NaN in any band, or every band equal to the variable's nodata."""
    gone = np.isnan(cube).any(axis=1) if cube.dtype.kind == "f" else np.zeros(cube[:, 0].shape, bool)
    nodata = attrs.get("nodata", attrs.get("_FillValue"))
    if nodata is not None and np.isfinite(nodata):
        gone |= (cube == np.asarray(nodata).astype(cube.dtype)).all(axis=1)
    return gone


def read_mask(path: str, variable: str | None, shape: tuple[int, int, int]) -> np.ndarray:
    """The mask or SCL array at ``path`` as (T, H, W); an (H, W) one for a single date."""
    is_npy = Path(path).suffix.lower() == ".npy" and Path(path).is_file()
    found = NPY if is_npy else require_input(path, (ZARR, GEOTIFF), "inpaint", then_output=False)
    if found == NPY:
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise CommandError(f"Expected a numeric .npy array at {path}. Got {e} instead.") from None
    elif found == GEOTIFF:
        import rasterio

        with rasterio.open(path) as src:
            array = src.read()
    else:
        array = _zarr_array(path, variable)
    array = np.asarray(array)
    if array.ndim == 2 and shape[0] == 1:
        array = array[None]
    if array.shape != shape or array.dtype.kind not in "biuf":
        raise CommandError(f"Expected a mask of shape {shape} (time, y, x) of the cube's grid. Got {array.dtype} "
                           f"{array.shape} from {path} instead.")
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise CommandError(f"Expected a mask without NaN. Got NaN in {path} instead: mark those pixels 1 or 0.")
    return array


def _zarr_array(path: str, variable: str | None) -> np.ndarray:
    import zarr

    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        return node[...]
    arrays = {name: a for name, a in node.arrays() if a.ndim >= 2}
    if variable is None:
        wide = [name for name, a in arrays.items() if a.ndim >= 3] or list(arrays)
        if len(wide) != 1:
            raise CommandError(f"Expected one mask array in {path}, or --mask-var NAME. Got {sorted(arrays)} "
                               "instead.")
        variable = wide[0]
    if variable not in arrays:
        raise CommandError(f"Expected array {variable!r} in {path}. Got {sorted(arrays)} instead: pass one of them "
                           "with --mask-var.")
    return arrays[variable][...]
