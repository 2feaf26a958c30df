"""Thinning stored data in place: every TEC chunk of a Zarr store (formats 2 and 3) or every tile of a ``.tec`` file
cut to a lower quality (:func:`tec_zarr.thin`), without decoding an image.

Zarr: each chunk file is replaced atomically (written beside it, then renamed over it), so a reader sees the old or
the new chunk, never a part; chunks decode by their own headers, so a store half thinned (interrupted, or read
meanwhile) is a valid store at mixed qualities, and running again finishes it. The array's codec config then says
the new quality (for chunks written later; its ``psnr`` target is dropped, since thinned chunks no longer meet it).
``.tec``: the file is written anew beside itself and renamed over it, with a new uuid (readers notice the change).

Only local directory stores and files are thinned. Arrays whose chunks carry a residual section (``max_error``) are
left as they are and reported: their bound would not hold.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .bitstream import tecfile
from .bitstream.chunk import CODEC_ID
from .errors import InvalidInputError, TecZarrError
from .pipeline.decode import read_header
from .pipeline.thin import thin_chunk


@dataclass
class ThinReport:
    """What :func:`thin_store` did: arrays thinned, arrays left (with why), chunks rewritten and bytes before/after."""

    thinned: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def thin_store(path, quality: int, *, variables=None, progress: Callable[[int, int], None] | None = None) -> ThinReport:
    """Thin a Zarr store directory or a ``.tec`` file at ``path`` to ``quality`` in place; ``variables``: the Zarr
    arrays to thin (paths inside the store; None: every TEC array). Chunks already at or below ``quality`` stay."""
    path = Path(path)
    if isinstance(quality, bool) or not isinstance(quality, int) or quality < 0:
        raise InvalidInputError(f"Expected a quality level (an integer >= 0). Got {quality!r} instead.")
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
    for name, array in sorted(arrays.items()):
        if array.codec is None and variables is None:
            continue  # coordinates and other codecs' arrays: nothing of ours to thin
        why = array.unthinnable()
        if why:
            report.left[name] = why
            continue
        _thin_array(array, quality, report, progress)
        report.thinned.append(name)
    _update_consolidated(path, {n: arrays[n] for n in report.thinned})
    return report


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
        for codec in self.metadata.get("codecs") or []:
            if isinstance(codec, dict) and codec.get("name") == CODEC_ID:
                return codec.setdefault("configuration", {})
        return None

    def unthinnable(self) -> str | None:
        codec = self.codec
        if codec is None:
            return "not stored with the TEC codec"
        if codec.get("max_error") is not None:
            return f"error-bounded (max_error={codec['max_error']}): thinning would break the bound"
        if self.zarr_format == 3 and any(isinstance(c, dict) and c.get("name") == "sharding_indexed"
                                         for c in self.metadata.get("codecs") or []):
            return "sharded: thin its shards' inner chunks by rewriting the array"
        return None

    def chunk_paths(self):
        shape, chunks = self.metadata["shape"], self._chunks()
        grid = [max(1, math.ceil(s / c)) for s, c in zip(shape, chunks)]
        separator, prefix = self._key_encoding()
        for index in _indices(grid):
            key = separator.join(str(i) for i in index) if index else "0"
            yield self.directory / (prefix + key)

    def _chunks(self) -> list[int]:
        if self.zarr_format == 2:
            return list(self.metadata["chunks"])
        return list(self.metadata["chunk_grid"]["configuration"]["chunk_shape"])

    def _key_encoding(self) -> tuple[str, str]:
        if self.zarr_format == 2:
            return self.metadata.get("dimension_separator") or ".", ""
        encoding = self.metadata.get("chunk_key_encoding") or {"name": "default"}
        separator = (encoding.get("configuration") or {}).get("separator")
        if encoding.get("name") == "v2":
            return separator or ".", ""
        return separator or "/", "c" + (separator or "/")


def _indices(grid: list[int]):
    if not grid:
        yield ()
        return
    first, *rest = grid
    for i in range(first):
        for tail in _indices(rest):
            yield (i, *tail)


def _zarr_arrays(root: Path) -> dict[str, _ZarrArray]:
    arrays = {}
    for meta in sorted([*root.rglob(".zarray"), *root.rglob("zarr.json")]):
        try:
            data = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidInputError(f"Expected Zarr metadata JSON in {meta}. Got {type(e).__name__}: {e} instead.") \
                from None
        if meta.name == "zarr.json" and data.get("node_type") != "array":
            continue
        name = meta.parent.relative_to(root).as_posix()
        arrays["" if name == "." else name] = _ZarrArray(meta.parent, meta, data, 2 if meta.name == ".zarray" else 3)
    return arrays


def _thin_array(array: _ZarrArray, quality: int, report: ThinReport, progress) -> None:
    paths = [p for p in array.chunk_paths() if p.is_file()]
    for done, chunk_path in enumerate(paths, 1):
        data = chunk_path.read_bytes()
        try:
            thinned = thin_chunk(data, min(quality, _chunk_quality(data)))
        except TecZarrError as e:
            e.add_note(f"(chunk {chunk_path})")
            raise
        report.bytes_before += len(data)
        report.bytes_after += len(thinned)
        if thinned != data:
            _replace_file(chunk_path, thinned)
            report.chunks += 1
        if progress is not None:
            progress(done, len(paths))
    codec = array.codec
    codec["quality"] = min(quality, int(codec.get("quality", quality)))
    codec.pop("psnr", None)
    _replace_file(array.metadata_file, json.dumps(array.metadata, indent=4).encode())


def _chunk_quality(data: bytes) -> int:
    return read_header(data).quality


def _update_consolidated(root: Path, arrays: dict[str, _ZarrArray]) -> None:
    """Consolidated metadata (format 2 ``.zmetadata``, format 3 in the root ``zarr.json``) says what each array's
    own metadata now says."""
    if not arrays:
        return
    zmetadata = root / ".zmetadata"
    if zmetadata.is_file():
        data = json.loads(zmetadata.read_text())
        for name, array in arrays.items():
            key = f"{name}/.zarray" if name else ".zarray"
            if key in data.get("metadata", {}):
                data["metadata"][key] = array.metadata
        _replace_file(zmetadata, json.dumps(data, indent=4).encode())
    root_json = root / "zarr.json"
    if root_json.is_file():
        data = json.loads(root_json.read_text())
        consolidated = (data.get("consolidated_metadata") or {}).get("metadata")
        if isinstance(consolidated, dict):
            for name, array in arrays.items():
                if name in consolidated:
                    consolidated[name] = array.metadata
            _replace_file(root_json, json.dumps(data, indent=4).encode())


def _replace_file(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` afterwards; readers see the old bytes or the new ones, never a mixture."""
    tmp = path.with_name(f"{path.name}.thin-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
        positions = [(level, ty, tx) for level in meta.levels for ty in range(meta.grid(level)[0])
                     for tx in range(meta.grid(level)[1])]
        new_tiles = []
        for done, (level, ty, tx) in enumerate(positions, 1):
            data = tiles.read_tile(level, ty, tx)
            if data:
                thinned = thin_chunk(data, min(quality, _chunk_quality(data)))
                report.bytes_before += len(data)
                report.bytes_after += len(thinned)
                report.chunks += thinned != data
                data = thinned
            new_tiles.append(data or None)
            if progress is not None:
                progress(done, len(positions))
        codec = dict(meta.codec, quality=min(quality, int(meta.codec["quality"])))
        codec.pop("psnr", None)
        new_meta = replace(meta, codec=codec, uuid=str(uuidlib.uuid4()))
    tecfile.write_tiles(path, new_meta, new_tiles)
    report.thinned.append(path.name)
    return report
