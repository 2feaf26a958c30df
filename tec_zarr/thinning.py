"""Thinning stored data in place: every TEC chunk of a Zarr store (formats 2 and 3) or every tile of a ``.tec`` file
cut to a lower quality (:func:`tec_zarr.thin`), without decoding an image.

Zarr: each chunk file is replaced atomically (written beside it, then renamed over it), so a reader sees the old or
the new chunk, never a part; chunks decode by their own headers, so a store half thinned (interrupted, or read
meanwhile) is a valid store at mixed qualities, and running again finishes it. The array's codec config is left as
it was: it is the setting for chunks written later (dates appended to an archive whose older dates were thinned
keep the quality or ``psnr`` target the array was created with), not a statement about the chunks stored.
``.tec``: the file is written anew beside itself and renamed over it, with a new uuid (readers notice the change);
nothing is written to it later, so its codec config says the new quality.

Only local directory stores and files are thinned. Arrays whose chunks carry a residual section (``max_error``) are
left as they are and reported: their bound would not hold. A sharded array's shards are rebuilt, each replaced
atomically like a chunk, from their inner chunks thinned (:mod:`.shards`). Unlike a chunk, a shard is not safe to
read meanwhile: zarr reads part of a shard as its index first and then byte ranges, which a shard replaced in
between no longer holds (it then reads fill values). Thin a sharded array while nobody reads it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import shards
from .bitstream import tecfile
from .bitstream.chunk import CODEC_ID
from .errors import InvalidInputError, TecZarrError
from .pipeline.decode import read_header
from .pipeline.thin import parse_level, thin_chunk
from .shards import ShardLayout


@dataclass
class ThinReport:
    """What :func:`thin_store` did: arrays thinned, arrays left (with why), arrays already at or below the quality
    (with their stored quality), chunks rewritten and bytes before/after."""

    thinned: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    already: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    sidecar: Path | None = None  # a .tec file's VRT sidecar, rewritten for its new uuid


def thin_store(path, quality: int, *, variables=None, progress: Callable[[int, int], None] | None = None) -> ThinReport:
    """Thin a Zarr store directory or a ``.tec`` file at ``path`` to ``quality`` in place; ``variables``: the Zarr
    arrays to thin (paths inside the store; None: every TEC array). Chunks already at or below ``quality`` stay."""
    path = Path(path)
    quality = parse_level(quality)
    if path.is_file() and path.suffix == ".tec":
        return _thin_tec(path, quality, progress)
    if not path.is_dir():
        raise InvalidInputError(f"Expected a Zarr store directory or a .tec file. Got {path} instead.")
    arrays = _zarr_arrays(path)
    if not arrays:
        raise InvalidInputError(f"Expected a Zarr store with arrays at {path}. Got none instead.")
    if variables is not None:
        wanted = {str(v).strip("/") for v in variables}
        unknown = sorted(wanted - set(arrays))
        if unknown:
            raise InvalidInputError(f"Expected arrays of the store among {sorted(arrays)}. Got {unknown} instead.")
        arrays = {k: v for k, v in arrays.items() if k in wanted}
    report = ThinReport()
    todo = []
    for name, array in sorted(arrays.items()):
        if array.codec is None and variables is None:
            continue  # coordinates and other codecs' arrays: nothing of ours to thin
        _check_readable(array.directory)  # only the arrays thinned: others may use codecs not installed here
        why = array.unthinnable()
        if why:
            report.left[name] = why
            continue
        _check_level(array.codec, quality)  # every array checked before any is touched
        stored = _below(array.codec, quality)
        if stored:
            report.already[name] = stored
            continue
        todo.append((name, array))
    for name, array in todo:
        _remove_leftovers(array.directory)
        _thin_array(array, quality, report, progress)
        report.thinned.append(name)
    return report


def _below(codec: dict, quality: int) -> str | None:
    """Where every chunk written with ``codec`` is below ``quality`` (nothing to thin): how it was stored; else
    None. At the config's own quality the chunks are checked one by one: an older version wrote the thinned quality
    into the config first, so a store it left half thinned says so. Stores coded to a ``psnr`` target have no single
    quality (each chunk has the level that reached it, its config the default level); their chunks are checked too."""
    stored = codec.get("quality")
    if codec.get("psnr") is None and isinstance(stored, int) and not isinstance(stored, bool) and quality > stored:
        return f"stored at quality {stored}, below {quality} already"
    return None


def _check_level(codec: dict, quality: int) -> None:
    """A level the array's model has (a typo such as 5 for a five-level model is an error, not a no-op)."""
    from .models import get_card

    try:
        levels = len(get_card(codec.get("model")).qualities)
    except TecZarrError:
        return  # a model not installed here: its chunks' own headers bound the level
    if quality >= levels:
        raise InvalidInputError(
            f"Expected a quality level of model {codec.get('model')!r}, 0..{levels - 1}. Got {quality} instead.")


# -- Zarr --------------------------------------------------------------------------------------------------------------


@dataclass
class _ZarrArray:
    directory: Path
    metadata_file: Path
    metadata: dict
    zarr_format: int

    @property
    def codec(self) -> dict | None:
        """The TEC codec's config in the metadata (a reference into it), or None."""
        if self.zarr_format == 2:
            compressor = self.metadata.get("compressor")
            return compressor if isinstance(compressor, dict) and compressor.get("id") == CODEC_ID else None
        codecs = list(self.metadata.get("codecs") or [])
        for codec in codecs:  # grows as it goes: TEC inside the shards (and shards inside shards)
            if isinstance(codec, dict) and codec.get("name") == shards.SHARDING:
                config = codec.get("configuration")
                codecs += (config.get("codecs") or []) if isinstance(config, dict) else []
        for codec in codecs:
            if isinstance(codec, dict) and codec.get("name") == CODEC_ID:
                return codec.setdefault("configuration", {})
        return None

    def unthinnable(self) -> str | None:
        codec = self.codec
        if codec is None:
            return "not stored with the TEC codec"
        if codec.get("max_error") is not None:
            return f"error-bounded (max_error={codec['max_error']}): thinning would break the bound"
        codecs = self.metadata.get("codecs") or []
        if self.sharded:
            layout = self.shard_layout
            config = shards.sharding_codecs(self.metadata)[0].get("configuration") or {}
            inner = [c.get("name") if isinstance(c, dict) else None for c in config.get("codecs") or []]
            if isinstance(layout, str) or inner != [CODEC_ID]:
                why = layout if isinstance(layout, str) else f"inner codecs {inner} (TEC alone is thinned)"
                return (f"sharded, with {why}: rewrite the array to thin it, e.g. xr.open_zarr(store).to_zarr(new, "
                        "encoding=tec_zarr.zarr_encoding(ds, quality=q, chunks=..., shards=...))")
            return None
        names = [c.get("name") if isinstance(c, dict) else None for c in codecs]
        if self.zarr_format == 3 and names.index(CODEC_ID) != len(names) - 1:
            return (f"its TEC chunks pass through {names[names.index(CODEC_ID) + 1:]} after the codec, so the stored "
                    "bytes are not TEC chunks")
        return None

    @property
    def sharded(self) -> bool:
        return self.zarr_format == 3 and bool(shards.sharding_codecs(self.metadata))

    @property
    def shard_layout(self) -> ShardLayout | str:
        return ShardLayout.of(self.metadata)

    def chunk_paths(self) -> list[Path]:
        """The array's stored chunk files, found on disk (a sparse array's missing chunks cost nothing), in key
        order; files whose names are no chunk key of the array are not touched."""
        separator, prefix = self._key_encoding()
        ndim = len(self.metadata["shape"])
        pattern = re.compile(re.escape(prefix) + re.escape(separator).join([r"\d+"] * max(ndim, 1)) + r"\Z")
        found = []
        for root, dirs, files in os.walk(self.directory):
            for f in files:
                key = (Path(root) / f).relative_to(self.directory).as_posix()
                if pattern.match(key):
                    found.append(Path(root) / f)
        return sorted(found)

    def _key_encoding(self) -> tuple[str, str]:
        if self.zarr_format == 2:
            return self.metadata.get("dimension_separator") or ".", ""
        encoding = self.metadata.get("chunk_key_encoding") or {"name": "default"}
        separator = (encoding.get("configuration") or {}).get("separator")
        if encoding.get("name") == "v2":
            return separator or ".", ""
        return separator or "/", "c" + (separator or "/")


def _zarr_arrays(root: Path) -> dict[str, _ZarrArray]:
    arrays = {}
    for meta in sorted([*root.rglob(".zarray"), *root.rglob("zarr.json")]):
        data = _read_json(meta)
        if meta.name == "zarr.json" and data.get("node_type") != "array":
            continue
        name = meta.parent.relative_to(root).as_posix()
        arrays["" if name == "." else name] = _ZarrArray(meta.parent, meta, data, 2 if meta.name == ".zarray" else 3)
    return arrays


def _thin_array(array: _ZarrArray, quality: int, report: ThinReport, progress) -> None:
    """Every stored chunk of ``array`` thinned in place; a sharded array's stored objects are shards, each
    rebuilt from its inner chunks thinned (in the order they were stored, with a new index)."""
    paths = array.chunk_paths()
    layout = array.shard_layout if array.sharded else None
    for done, chunk_path in enumerate(paths, 1):
        data = chunk_path.read_bytes()
        if layout is None:
            thinned = _thin_counted(data, quality, report, f"chunk {chunk_path}")
        elif not data:
            thinned = data  # zarr reads an empty shard as fill value: nothing to thin
        else:
            try:
                shard = shards.split(data, layout)
            except TecZarrError as e:
                e.add_note(f"(shard {chunk_path})")
                raise
            inner = [None if c is None else _thin_counted(c, quality, report, f"shard {chunk_path}")
                     for c in shard.chunks]
            # a shard none of whose chunks changed stays as it is (a rerun after an interruption rewrites nothing)
            thinned = data if inner == shard.chunks else shards.join(inner, layout, shard.stored_order)
        if thinned != data:
            _replace_file(chunk_path, thinned)
        if progress is not None:
            progress(done, len(paths))


def _thin_counted(data: bytes, quality: int, report: ThinReport, where: str) -> bytes:
    """The chunk at ``quality`` or its own, whichever is lower, counted in ``report``; errors name ``where``."""
    try:
        thinned = thin_chunk(data, min(quality, _chunk_quality(data)))
    except TecZarrError as e:
        e.add_note(f"({where})")
        raise
    report.bytes_before += len(data)
    report.bytes_after += len(thinned)
    report.chunks += thinned != data
    return thinned


def _chunk_quality(data: bytes) -> int:
    return read_header(data).quality


def _check_readable(directory: Path) -> None:
    """zarr's own reading of an array's metadata (and of our codec's config): what this module walks by hand is
    then well formed; damaged metadata is the package's error, not a KeyError or AttributeError from here."""
    import zarr

    try:
        zarr.open_array(str(directory), mode="r")
    except TecZarrError:
        raise
    except Exception as e:  # zarr's errors on damaged metadata are of many kinds (ValueError, TypeError, ...)
        raise InvalidInputError(f"Expected Zarr array metadata zarr can read in {directory}. Got {type(e).__name__}: "
                                f"{e} instead: the metadata is damaged, or written by a newer zarr.") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InvalidInputError(f"Expected Zarr metadata JSON in {path}. Got {type(e).__name__}: {e} instead.") \
            from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"Expected a JSON object in {path}. Got {type(data).__name__} instead.")
    return data


LEFTOVER = re.compile(r".*\.thin-[0-9a-f]{8}\Z")


def _remove_leftovers(directory: Path) -> None:
    """Temporaries of an interrupted run (never a chunk: the rename is what makes one)."""
    for root, _, files in os.walk(directory):
        for f in files:
            if LEFTOVER.match(f):
                (Path(root) / f).unlink(missing_ok=True)


def _replace_file(path: Path, data: bytes) -> None:
    """``path`` (a link: its target) holds ``data`` afterwards, with its permissions; readers see the old bytes or
    the new ones, never a mixture, and the rename is on disk before the next file is touched."""
    target = path.resolve() if path.is_symlink() else path
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else None
    tmp = target.with_name(f"{target.name}.thin-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        tmp.unlink(missing_ok=True)


# -- .tec ----------------------------------------------------------------------------------------------------------------


def _thin_tec(path: Path, quality: int, progress) -> ThinReport:
    report = ThinReport()
    with tecfile.TecTiles(path) as tiles:
        meta = tiles.metadata
        if meta.codec.get("max_error") is not None:
            report.left[path.name] = (f"error-bounded (max_error={meta.codec['max_error']}): thinning would break "
                                      "the bound")
            return report
        _check_level(meta.codec, quality)
        stored = _below(meta.codec, quality)
        if stored:
            report.already[path.name] = stored
            return report
        positions = [(level, ty, tx) for level in meta.levels for ty in range(meta.grid(level)[0])
                     for tx in range(meta.grid(level)[1])]
        if all(not tiles.tile_entry(*p)[1] or _chunk_quality(tiles.read_tile(*p)) <= quality for p in positions):
            report.already[path.name] = f"every tile at or below quality {quality} already"
            return report  # the file (and its uuid) stays as it is

        def thinned_tiles():  # one tile in memory at a time, written as it comes
            for done, position in enumerate(positions, 1):
                data = tiles.read_tile(*position)
                if data:
                    data = _thin_counted(data, quality, report, f"tile {position} of {path}")
                if progress is not None:
                    progress(done, len(positions))
                yield data or None

        codec = dict(meta.codec, quality=quality)  # at most the config's (else nothing to thin)
        codec.pop("psnr", None)
        tecfile.write_tiles(path, replace(meta, codec=codec, uuid=str(uuidlib.uuid4())), thinned_tiles())
    report.thinned.append(path.name)
    sidecar = path.with_name(path.name + ".vrt")
    if sidecar.exists():  # it names the old uuid: GDAL would refuse the file through it
        from .gdal.vrt import write_sidecar

        write_sidecar(path, sidecar)
        report.sidecar = sidecar
    return report
